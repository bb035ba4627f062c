#!/usr/bin/env bash
# WMT14 English-German: Europarl v7 + Common Crawl + News Commentary v9 for training, newstest2013
# for validation, newstest2014 (the full 3003-sentence set) for test. Moses punctuation
# normalisation and tokenisation with aggressive dash splitting, no escaping (sacremoses); a joint
# sentencepiece BPE model (32k pieces) trained on the tokenised training text; the training pairs
# cleaned on pieces (1-250, ratio 1.5, as fairseq's prepare-wmt14en2de.sh does after BPE); then
# fairseq-preprocess --joined-dictionary (en -> de). Decode with --remove-bpe sentencepiece.
#
# Usage: scripts/prepare_wmt14_en_de.sh [ARCHIVE_DIR]
#   ARCHIVE_DIR holds the five archives below (default WORK_DIR/orig, where missing ones are downloaded):
#     training-parallel-europarl-v7.tgz  training-parallel-commoncrawl.tgz  training-parallel-nc-v9.tgz
#     dev.tgz  test-full.tgz
# Environment: WORK_DIR (default work/wmt14_en_de), DEST (default data-bin/wmt14_en_de; it gets a
#   copy of spm.model), SPM_VOCAB (32000), SPM_SENTENCES (sentences sampled to train the model,
#   default 4000000), WORKERS (CPU count), STATMT_URL (default http://statmt.org).
# Finished steps are skipped on a re-run; every step writes to a temporary path and renames it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

statmt="${STATMT_URL:-http://statmt.org}"
work="${WORK_DIR:-$root/work/wmt14_en_de}"
dest="${DEST:-$root/data-bin/wmt14_en_de}"
vocab="${SPM_VOCAB:-32000}"
spm_sentences="${SPM_SENTENCES:-4000000}"
workers="${WORKERS:-$(nproc)}"

archives=(training-parallel-europarl-v7.tgz training-parallel-commoncrawl.tgz training-parallel-nc-v9.tgz
          dev.tgz test-full.tgz)
urls=("$statmt/wmt13/training-parallel-europarl-v7.tgz" "$statmt/wmt13/training-parallel-commoncrawl.tgz"
      "$statmt/wmt14/training-parallel-nc-v9.tgz" "$statmt/wmt14/dev.tgz" "$statmt/wmt14/test-full.tgz")
# archive -> the members taken from it (name without the .en / .de ending)
corpora=(training/europarl-v7.de-en commoncrawl.de-en training/news-commentary-v9.de-en)
valid_member=dev/newstest2013
test_src=test-full/newstest2014-deen-src.en.sgm
test_ref=test-full/newstest2014-deen-ref.de.sgm

get_archives() {  # [DIR] -> sets archive_dir
  local i missing=()
  archive_dir="${1:-$work/orig}"
  if [[ -n "${1:-}" ]]; then
    [[ -d "$archive_dir" ]] || die "archive folder $archive_dir not found"
  fi
  for i in "${!archives[@]}"; do
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

binarize() {  # $work/spm -> $dest
  binarize_spm en de "$work" "$dest" "$workers"
}

case "${1:-}" in
  -h|--help) print_help; exit 0 ;;
  *)
    (($# <= 1)) || die "usage: $0 [ARCHIVE_DIR] (see --help)"
    need_tools fairseq-preprocess python
    if [[ ! -d "$work/raw" ]]; then
      get_archives "${1:-}"
      extract
    else
      log "skip: $work/raw exists"
    fi
    tokenize_all
    spm_all
    binarize
    ;;
esac
