#!/usr/bin/env bash
# IWSLT14 German-English as fairseq's examples/translation/prepare-iwslt14.sh makes it, with pip tools:
# Moses tokenisation with escaping (sacremoses), lowercasing, cleaning (1-175 tokens, ratio 1.5),
# valid = every 23rd cleaned training pair, test = dev2010 + TEDX.dev2012 + tst2010 + tst2011 + tst2012,
# joint BPE (subword-nmt, 10000 merges), then fairseq-preprocess.
#
# Usage: scripts/prepare_iwslt14.sh [ARCHIVE]     the whole pipeline; ARCHIVE is a local de-en.tgz
#                                                 (default: download it, or reuse WORK_DIR/orig/de-en.tgz)
#        scripts/prepare_iwslt14.sh apply-bpe CODE INPUT OUTPUT      the BPE step alone
#        scripts/prepare_iwslt14.sh tokenize LANG INPUT OUTPUT       tokenise + lowercase (as for dev/test)
#        scripts/prepare_iwslt14.sh test-set LANG TMP_DIR OUTPUT     concatenate the five test sets
# Environment: WORK_DIR (default work/iwslt14: orig/ and iwslt14.tokenized.de-en/ with tmp/),
#   DEST (default data-bin/iwslt14.tokenized.de-en), JOINED_DICTIONARY (0; 1 for one dictionary),
#   BPE_TOKENS (10000), WORKERS (CPU count), IWSLT14_URL (the archive's address).
# Finished steps are skipped on a re-run; every step writes to a temporary path and renames it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

url="${IWSLT14_URL:-http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz}"
work="${WORK_DIR:-$root/work/iwslt14}"
dest="${DEST:-$root/data-bin/iwslt14.tokenized.de-en}"
bpe_tokens="${BPE_TOKENS:-10000}"
workers="${WORKERS:-$(nproc)}"
prep="$work/iwslt14.tokenized.de-en"
test_sets=(IWSLT14.TED.dev2010 IWSLT14.TEDX.dev2012 IWSLT14.TED.tst2010 IWSLT14.TED.tst2011 IWSLT14.TED.tst2012)

apply_bpe() {  # CODE INPUT OUTPUT
  local tmp
  scratch tmp "$3"
  "$bin/subword-nmt" apply-bpe -c "$1" < "$2" > "$tmp/out"
  publish "$tmp/out" "$3"
}

tokenize() {  # LANG INPUT OUTPUT: tokenizer.perl -l LANG | lowercase.perl
  local tmp
  scratch tmp "$3"
  text_prep tokenize --lang "$1" --lowercase --workers "$workers" < "$2" > "$tmp/out"
  publish "$tmp/out" "$3"
}

test_set() {  # LANG TMP_DIR OUTPUT
  local tmp name files=()
  for name in "${test_sets[@]}"; do files+=("$2/$name.de-en.$1"); done
  scratch tmp "$3"
  cat "${files[@]}" > "$tmp/out"
  publish "$tmp/out" "$3"
}

# The talk metadata lines fairseq's recipe drops from the training files, and the tags it strips.
train_text() {
  sed -e '/<url>/d' -e '/<talkid>/d' -e '/<keywords>/d' \
      -e 's/<title>//g' -e 's/<\/title>//g' -e 's/<description>//g' -e 's/<\/description>//g' "$1"
}

get_archive() {  # [ARCHIVE] -> sets archive (a local de-en.tgz)
  local given="${1:-}" tmp
  if [[ -n "$given" ]]; then
    [[ -f "$given" ]] || die "archive $given not found"
    archive="$given"
  elif [[ -f "$work/orig/de-en.tgz" ]]; then
    archive="$work/orig/de-en.tgz"
  else
    tmp="$(mktemp -d)"
    _scratch_paths+=("$tmp")
    fetch "$url" "$tmp/de-en.tgz" || die "could not download $url (no network?).
  On a machine with network, fetch that file (de-en.tgz, about 20 MB), then either put it at
  $work/orig/de-en.tgz or pass its path: $0 /path/to/de-en.tgz"
    mkdir -p "$work/orig"
    mv "$tmp/de-en.tgz" "$work/orig/de-en.tgz.part"
    mv "$work/orig/de-en.tgz.part" "$work/orig/de-en.tgz"
    archive="$work/orig/de-en.tgz"
  fi
}

extract() {  # ARCHIVE -> $work/orig/de-en
  local archive="$1" tmp l name missing=()
  scratch tmp "$work/orig/de-en"
  tar -xzf "$archive" -C "$tmp" || die "cannot unpack $archive (not a .tgz?)"
  [[ -d "$tmp/de-en" ]] || die "$archive has no de-en/ folder (is it the IWSLT14 de-en.tgz?)"
  for l in de en; do
    [[ -f "$tmp/de-en/train.tags.de-en.$l" ]] || missing+=("de-en/train.tags.de-en.$l")
    for name in "${test_sets[@]}"; do
      [[ -f "$tmp/de-en/$name.de-en.$l.xml" ]] || missing+=("de-en/$name.de-en.$l.xml")
    done
  done
  ((${#missing[@]} == 0)) || die "$archive lacks: ${missing[*]}"
  publish "$tmp/de-en" "$work/orig/de-en"
}

tokenize_all() {  # $work/orig/de-en -> $prep/tmp
  local orig="$work/orig/de-en" tmp l xml name
  [[ -d "$prep/tmp" ]] && { log "skip: $prep/tmp exists"; return; }
  scratch tmp "$prep/tmp"
  for l in de en; do
    log "tokenising train.tags.de-en.$l"
    train_text "$orig/train.tags.de-en.$l" \
      | text_prep tokenize --lang "$l" --workers "$workers" > "$tmp/train.tags.de-en.tok.$l"
  done
  text_prep clean --ratio 1.5 "$tmp/train.tags.de-en.tok" de en "$tmp/train.tags.de-en.clean" 1 175
  for l in de en; do
    text_prep lowercase < "$tmp/train.tags.de-en.clean.$l" > "$tmp/train.tags.de-en.$l"
    # Same set of files as the recipe's `ls IWSLT14.TED*.$l.xml` (TEDX included).
    for xml in "$orig"/IWSLT14.TED*."$l".xml; do
      name="$(basename "$xml" .xml)"
      xml_segments "$xml" | text_prep tokenize --lang "$l" --lowercase > "$tmp/$name"
    done
    awk 'NR % 23 == 0' "$tmp/train.tags.de-en.$l" > "$tmp/valid.$l"
    awk 'NR % 23 != 0' "$tmp/train.tags.de-en.$l" > "$tmp/train.$l"
    test_set "$l" "$tmp" "$tmp/test.$l"
  done
  log "train $(count_lines "$tmp/train.de"), valid $(count_lines "$tmp/valid.de"), test $(count_lines "$tmp/test.de") pairs"
  publish "$tmp" "$prep/tmp"
}

bpe_all() {  # $prep/tmp -> $prep/{code,train,valid,test}
  local f l incomplete=0 tmp
  for f in code {train,valid,test}.{de,en}; do [[ -f "$prep/$f" ]] || incomplete=1; done
  ((incomplete)) || { log "skip: BPE files in $prep exist"; return; }
  scratch tmp "$prep/bpe"
  log "learning $bpe_tokens BPE merges on train.de + train.en"
  cat "$prep/tmp/train.de" "$prep/tmp/train.en" > "$tmp/train.en-de"
  "$bin/subword-nmt" learn-bpe -s "$bpe_tokens" < "$tmp/train.en-de" > "$tmp/code"
  for l in de en; do
    for f in train valid test; do
      "$bin/subword-nmt" apply-bpe -c "$tmp/code" < "$prep/tmp/$f.$l" > "$tmp/$f.$l"
    done
  done
  # The code goes last: it marks the step as done only when every BPE file is in place.
  for f in {train,valid,test}.{de,en} code; do mv "$tmp/$f" "$prep/$f"; done
}

binarize() {  # $prep -> $dest
  local tmp joined=()
  [[ -d "$dest" ]] && { log "skip: $dest exists (delete it to binarize again)"; return; }
  [[ "${JOINED_DICTIONARY:-0}" == 1 ]] && joined=(--joined-dictionary)
  scratch tmp "$dest"
  "$bin/fairseq-preprocess" --source-lang de --target-lang en "${joined[@]}" \
    --trainpref "$prep/train" --validpref "$prep/valid" --testpref "$prep/test" \
    --destdir "$tmp" --workers "$workers" > "$tmp/preprocess.log" 2>&1 \
    || { tail -n 20 "$tmp/preprocess.log" >&2; die "fairseq-preprocess failed"; }
  publish "$tmp" "$dest"
  log "binarized data in $dest"
}

case "${1:-}" in
  apply-bpe) (($# == 4)) || die "usage: $0 apply-bpe CODE INPUT OUTPUT"; apply_bpe "$2" "$3" "$4" ;;
  tokenize) (($# == 4)) || die "usage: $0 tokenize LANG INPUT OUTPUT"; tokenize "$2" "$3" "$4" ;;
  test-set) (($# == 4)) || die "usage: $0 test-set LANG TMP_DIR OUTPUT"; test_set "$2" "$3" "$4" ;;
  -h|--help) print_help; exit 0 ;;
  *)
    (($# <= 1)) || die "usage: $0 [ARCHIVE] (see --help)"
    need_tools subword-nmt fairseq-preprocess python
    if [[ ! -d "$work/orig/de-en" ]]; then
      get_archive "${1:-}"
      extract "$archive"
    else
      log "skip: $work/orig/de-en exists"
    fi
    tokenize_all
    bpe_all
    binarize
    ;;
esac
