#!/usr/bin/env bash
# WMT14 English-German (en -> de) by one of two recipes (RECIPE):
#
# fairseq (default): the data of the paper's WMT14 numbers, as fairseq's
#   examples/translation/prepare-wmt14en2de.sh --icml17 makes it, with pip tools (sacremoses,
#   subword-nmt). Training text: Europarl v7 + Common Crawl + News Commentary v9, every line
#   punctuation-normalised, non-printing characters removed, Moses-tokenised with aggressive dash
#   splitting and escaping; valid = every 100th line of that stream, train = the rest. Test: the full
#   newstest2014 (3003 sentences), tokenised the same way without normalisation. Joint BPE with
#   40000 merges learned on train.en + train.de; train and valid cleaned on BPE units (1-250, length
#   ratio 1.5), test kept whole; fairseq-preprocess --joined-dictionary into DEST (default
#   data-bin/wmt14_en_de_joined_dict, the authors' folder name; it gets a copy of the BPE code).
#   The text files are in WORK_DIR/fairseq/ (tmp/: tokenised; code; bpe/: what is binarized).
#   Decode with --remove-bpe.
# spm: newstest2013 for validation, the full newstest2014 for test; Moses punctuation normalisation
#   and tokenisation with aggressive dash splitting, no escaping, on every split; a joint
#   sentencepiece BPE model (32k pieces) trained on the tokenised training text; the training pairs
#   cleaned on pieces (1-250, ratio 1.5); fairseq-preprocess --joined-dictionary into DEST (default
#   data-bin/wmt14_en_de; it gets a copy of spm.model). Decode with --remove-bpe sentencepiece.
#
# Both write DEST/test.sacrebleu ("wmt14/full en-de"): scripts/evaluate.sh then scores sacreBLEU
# against the official newstest2014 references.
#
# Usage: scripts/prepare_wmt14_en_de.sh [ARCHIVE_DIR]
#   ARCHIVE_DIR holds the archives below (default WORK_DIR/orig, where missing ones are downloaded):
#     training-parallel-europarl-v7.tgz  training-parallel-commoncrawl.tgz  training-parallel-nc-v9.tgz
#     test-full.tgz, and for RECIPE=spm also dev.tgz
# Environment: RECIPE (fairseq or spm), WORK_DIR (default work/wmt14_en_de), DEST, WORKERS (CPU count),
#   STATMT_URL (default http://statmt.org); fairseq: BPE_TOKENS (40000 merges);
#   spm: SPM_VOCAB (32000), SPM_SENTENCES (sentences sampled to train the model, default 4000000).
# Finished steps are skipped on a re-run; every step writes to a temporary path and renames it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

statmt="${STATMT_URL:-http://statmt.org}"
recipe="${RECIPE:-fairseq}"
work="${WORK_DIR:-$root/work/wmt14_en_de}"
case "$recipe" in
  fairseq) dest="${DEST:-$root/data-bin/wmt14_en_de_joined_dict}" ;;
  spm) dest="${DEST:-$root/data-bin/wmt14_en_de}" ;;
  *) die "RECIPE must be fairseq (the paper's data) or spm, got '$recipe'" ;;
esac
fq="$work/fairseq"
bpe_tokens="${BPE_TOKENS:-40000}"
vocab="${SPM_VOCAB:-32000}"
spm_sentences="${SPM_SENTENCES:-4000000}"
workers="${WORKERS:-$(nproc)}"
# The sacreBLEU test set whose references are the test split's, in order (the full newstest2014).
sacrebleu_test_set="wmt14/full en-de"

archives=(training-parallel-europarl-v7.tgz training-parallel-commoncrawl.tgz training-parallel-nc-v9.tgz
          dev.tgz test-full.tgz)
urls=("$statmt/wmt13/training-parallel-europarl-v7.tgz" "$statmt/wmt13/training-parallel-commoncrawl.tgz"
      "$statmt/wmt14/training-parallel-nc-v9.tgz" "$statmt/wmt14/dev.tgz" "$statmt/wmt14/test-full.tgz")
# archive -> the members taken from it (name without the .en / .de ending)
corpora=(training/europarl-v7.de-en commoncrawl.de-en training/news-commentary-v9.de-en)
valid_member=dev/newstest2013
test_src=test-full/newstest2014-deen-src.en.sgm
test_ref=test-full/newstest2014-deen-ref.de.sgm

# The archives a recipe reads (indices into archives): fairseq's recipe takes its valid set from the
# training text and needs no dev.tgz.
if [[ "$recipe" == fairseq ]]; then needed=(0 1 2 4); else needed=(0 1 2 3 4); fi

get_archives() {  # [DIR] -> sets archive_dir
  local i missing=()
  archive_dir="${1:-$work/orig}"
  if [[ -n "${1:-}" ]]; then
    [[ -d "$archive_dir" ]] || die "archive folder $archive_dir not found"
  fi
  for i in "${needed[@]}"; do
    [[ -f "$archive_dir/${archives[i]}" ]] || missing+=("$i")
  done
  ((${#missing[@]} == 0)) && return
  if [[ -z "${1:-}" ]]; then
    for i in "${missing[@]}"; do
      local tmp
      tmp="$(mktemp -d)"
      _scratch_paths+=("$tmp")
      if fetch "${urls[i]}" "$tmp/${archives[i]}"; then
        mkdir -p "$archive_dir"
        mv "$tmp/${archives[i]}" "$archive_dir/${archives[i]}.part"
        mv "$archive_dir/${archives[i]}.part" "$archive_dir/${archives[i]}"
      else
        break  # no network: report every missing archive at once
      fi
    done
  fi
  local msg=""
  for i in "${missing[@]}"; do
    [[ -f "$archive_dir/${archives[i]}" ]] || msg+=$'\n'"  ${archives[i]}  from  ${urls[i]}"
  done
  [[ -z "$msg" ]] || die "missing WMT14 archives (no network?). On a machine with network, fetch:$msg
then put them into $archive_dir (or any folder, and pass it: $0 FOLDER)"
}

untar() {  # DEST ARCHIVE MEMBER...: the named members of $archive_dir/ARCHIVE, into DEST
  tar -xzf "$archive_dir/$2" -C "$1" "${@:3}" || die "$archive_dir/$2 lacks ${*:3} (is it the WMT14 archive?)"
}

extract() {  # $archive_dir -> $work/raw/{train,valid,test}.{en,de}
  local tmp c l
  [[ -d "$work/raw" ]] && { log "skip: $work/raw exists"; return; }
  scratch tmp "$work/raw"
  mkdir "$tmp/x"
  untar "$tmp/x" "${archives[0]}" "${corpora[0]}".{de,en}
  untar "$tmp/x" "${archives[1]}" "${corpora[1]}".{de,en}
  untar "$tmp/x" "${archives[2]}" "${corpora[2]}".{de,en}
  untar "$tmp/x" "${archives[3]}" "$valid_member".{de,en}
  untar "$tmp/x" "${archives[4]}" "$test_src" "$test_ref"
  for c in "${corpora[@]}"; do
    [[ "$(count_lines "$tmp/x/$c.de")" == "$(count_lines "$tmp/x/$c.en")" ]] \
      || die "$c.de and $c.en have different line counts"
  done
  for l in en de; do
    for c in "${corpora[@]}"; do cat "$tmp/x/$c.$l"; done > "$tmp/train.$l"
    cp "$tmp/x/$valid_member.$l" "$tmp/valid.$l"
  done
  xml_segments "$tmp/x/$test_src" > "$tmp/test.en"
  xml_segments "$tmp/x/$test_ref" > "$tmp/test.de"
  rm -rf "$tmp/x"
  publish "$tmp" "$work/raw"
}

tokenize_all() {  # $work/raw -> $work/tok
  local tmp s l
  [[ -d "$work/tok" ]] && { log "skip: $work/tok exists"; return; }
  scratch tmp "$work/tok"
  for s in train valid test; do
    for l in en de; do
      log "tokenising $s.$l"
      text_prep tokenize --lang "$l" --normalize-punct --aggressive-dash-splits --no-escape --workers "$workers" \
        < "$work/raw/$s.$l" > "$tmp/$s.$l"
    done
  done
  publish "$tmp" "$work/tok"
}

spm_all() {  # $work/tok -> $work/spm.model, $work/spm/
  local tmp s l
  if [[ -f "$work/spm.model" ]]; then
    log "skip: $work/spm.model exists"
  else
    scratch tmp "$work/spm.model"
    log "training a $vocab-piece sentencepiece BPE model on train.en + train.de"
    text_prep spm-train --model-prefix "$tmp/spm" --vocab-size "$vocab" --input-sentence-size "$spm_sentences" \
      --num-threads "$workers" "$work/tok/train.en" "$work/tok/train.de"
    publish "$tmp/spm.vocab" "$work/spm.vocab"
    publish "$tmp/spm.model" "$work/spm.model"
  fi
  [[ -d "$work/spm" ]] && { log "skip: $work/spm exists"; return; }
  scratch tmp "$work/spm"
  for s in train valid test; do
    for l in en de; do
      text_prep spm-encode --model "$work/spm.model" < "$work/tok/$s.$l" > "$tmp/$s.raw.$l"
    done
  done
  text_prep clean --ratio 1.5 --keep-bars "$tmp/train.raw" en de "$tmp/train" 1 250
  for l in en de; do
    mv "$tmp/valid.raw.$l" "$tmp/valid.$l"
    mv "$tmp/test.raw.$l" "$tmp/test.$l"
    rm "$tmp/train.raw.$l"
  done
  publish "$tmp" "$work/spm"
}

# -- the fairseq recipe --------------------------------------------------------------------------

fairseq_tokenize() {  # $archive_dir -> $fq/tmp/{train,valid,test}.{en,de}
  local tmp i l name
  scratch tmp "$fq/tmp"
  for i in 0 1 2; do
    for l in en de; do
      log "tokenising ${corpora[i]}.$l"
      tar -xzOf "$archive_dir/${archives[i]}" "${corpora[i]}.$l" \
        | text_prep tokenize --lang "$l" --normalize-punct --aggressive-dash-splits --workers "$workers" \
        > "$tmp/part$i.$l" || die "$archive_dir/${archives[i]} lacks ${corpora[i]}.$l (is it the WMT14 archive?)"
    done
    [[ "$(count_lines "$tmp/part$i.en")" == "$(count_lines "$tmp/part$i.de")" ]] \
      || die "${corpora[i]}.en and ${corpora[i]}.de have different line counts"
  done
  mkdir "$tmp/x"
  untar "$tmp/x" "${archives[4]}" "$test_src" "$test_ref"
  for l in en de; do
    name="$tmp/train.tags.en-de.tok.$l"
    cat "$tmp"/part{0,1,2}."$l" > "$name"
    rm "$tmp"/part{0,1,2}."$l"
    awk 'NR % 100 == 0' "$name" > "$tmp/valid.$l"
    awk 'NR % 100 != 0' "$name" > "$tmp/train.$l"
  done
  xml_segments "$tmp/x/$test_src" | text_prep tokenize --lang en --aggressive-dash-splits > "$tmp/test.en"
  xml_segments "$tmp/x/$test_ref" | text_prep tokenize --lang de --aggressive-dash-splits > "$tmp/test.de"
  rm -rf "$tmp/x"
  log "train $(count_lines "$tmp/train.en"), valid $(count_lines "$tmp/valid.en"), test $(count_lines "$tmp/test.en") pairs"
  publish "$tmp" "$fq/tmp"
}

fairseq_learn_bpe() {  # $fq/tmp/train.{en,de} -> $fq/code
  local tmp
  [[ -f "$fq/code" ]] && { log "skip: $fq/code exists"; return; }
  scratch tmp "$fq/code"
  log "learning $bpe_tokens BPE merges on train.en + train.de"
  cat "$fq/tmp/train.en" "$fq/tmp/train.de" > "$tmp/train.en-de"
  # One process: the parallel word count can order equally frequent words differently.
  "$bin/subword-nmt" learn-bpe -s "$bpe_tokens" --input "$tmp/train.en-de" --output "$tmp/code"
  publish "$tmp/code" "$fq/code"
}

fairseq_apply_bpe() {  # $fq/code, $fq/tmp -> $fq/bpe/{train,valid,test}.{en,de}
  local tmp s l
  [[ -d "$fq/bpe" ]] && { log "skip: $fq/bpe exists"; return; }
  scratch tmp "$fq/bpe"
  for s in train valid test; do
    for l in en de; do
      "$bin/subword-nmt" apply-bpe -c "$fq/code" --num-workers "$workers" \
        --input "$fq/tmp/$s.$l" --output "$tmp/bpe.$s.$l"
    done
  done
  text_prep clean --ratio 1.5 "$tmp/bpe.train" en de "$tmp/train" 1 250
  text_prep clean --ratio 1.5 "$tmp/bpe.valid" en de "$tmp/valid" 1 250
  for l in en de; do
    mv "$tmp/bpe.test.$l" "$tmp/test.$l"
    rm "$tmp/bpe.train.$l" "$tmp/bpe.valid.$l"
  done
  publish "$tmp" "$fq/bpe"
}

binarize() {  # TEXT_DIR FILE... -> $dest with the FILEs and test.sacrebleu
  local marker=""
  if [[ ! -d "$dest" ]]; then
    scratch marker "$dest"
    printf '%s\n' "$sacrebleu_test_set" > "$marker/test.sacrebleu"
    marker="$marker/test.sacrebleu"
  fi
  binarize_joined en de "$1" "$dest" "$workers" "${@:2}" ${marker:+"$marker"}
}

case "${1:-}" in
  -h|--help) print_help; exit 0 ;;
  *)
    (($# <= 1)) || die "usage: $0 [ARCHIVE_DIR] (see --help)"
    need_tools fairseq-preprocess python
    if [[ "$recipe" == fairseq ]]; then
      need_tools subword-nmt
      if [[ ! -d "$fq/tmp" ]]; then
        get_archives "${1:-}"
        fairseq_tokenize
      else
        log "skip: $fq/tmp exists"
      fi
      fairseq_learn_bpe
      fairseq_apply_bpe
      binarize "$fq/bpe" "$fq/code"
    else
      if [[ ! -d "$work/raw" ]]; then
        get_archives "${1:-}"
        extract
      else
        log "skip: $work/raw exists"
      fi
      tokenize_all
      spm_all
      binarize "$work/spm" "$work/spm.model"
    fi
    ;;
esac
