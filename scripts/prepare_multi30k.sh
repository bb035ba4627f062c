#!/usr/bin/env bash
# Multi30k German-English (or any folder with train/valid/test .de/.en), binarized the way
# ../shared/data/multi30k-bench-bin was made: lowercase, Moses tokenisation without escaping
# (sacremoses), a joint sentencepiece BPE model (8000 pieces; no bos/eos/pad, unk id 0) trained on
# the tokenised train.de + train.en, then fairseq-preprocess --joined-dictionary (de -> en).
# Decode with --remove-bpe sentencepiece to get tokenised lowercased text.
#
# Usage: scripts/prepare_multi30k.sh [SRC_DIR]    (default ../shared/data/multi30k)
#        scripts/prepare_multi30k.sh tokenize LANG INPUT OUTPUT     lowercase + tokenise, alone
#        scripts/prepare_multi30k.sh encode SPM_MODEL INPUT OUTPUT  sentencepiece pieces, alone
# Environment: WORK_DIR (default work/multi30k: tok/, spm.model, spm/), DEST (default
#   data-bin/multi30k; it gets a copy of spm.model), SPM_VOCAB (8000), WORKERS (CPU count).
# Finished steps are skipped on a re-run; every step writes to a temporary path and renames it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

work="${WORK_DIR:-$root/work/multi30k}"
dest="${DEST:-$root/data-bin/multi30k}"
vocab="${SPM_VOCAB:-8000}"
workers="${WORKERS:-$(nproc)}"
splits=(train valid test)

lowercase_tokenize() {  # LANG < raw > tokenised
  text_prep lowercase | text_prep tokenize --lang "$1" --no-escape --workers "$workers"
}

tokenize() {  # LANG INPUT OUTPUT
  local tmp
  scratch tmp "$3"
  lowercase_tokenize "$1" < "$2" > "$tmp/out"
  publish "$tmp/out" "$3"
}

encode() {  # MODEL INPUT OUTPUT
  local tmp
  scratch tmp "$3"
  text_prep spm-encode --model "$1" < "$2" > "$tmp/out"
  publish "$tmp/out" "$3"
}

run_all() {
  local src="$1" tmp s l missing=()
  for s in "${splits[@]}"; do
    for l in de en; do [[ -f "$src/$s.$l" ]] || missing+=("$src/$s.$l"); done
  done
  ((${#missing[@]} == 0)) || die "missing input files: ${missing[*]} (expected train/valid/test .de/.en)"
  for s in "${splits[@]}"; do
    [[ "$(count_lines "$src/$s.de")" == "$(count_lines "$src/$s.en")" ]] \
      || die "$src/$s.de and $src/$s.en have different line counts"
  done

  if [[ -d "$work/tok" ]]; then
    log "skip: $work/tok exists"
  else
    scratch tmp "$work/tok"
    for s in "${splits[@]}"; do
      for l in de en; do lowercase_tokenize "$l" < "$src/$s.$l" > "$tmp/$s.$l"; done
    done
    publish "$tmp" "$work/tok"
  fi

  if [[ -f "$work/spm.model" ]]; then
    log "skip: $work/spm.model exists"
  else
    scratch tmp "$work/spm.model"
    log "training a $vocab-piece sentencepiece BPE model on train.de + train.en"
    text_prep spm-train --model-prefix "$tmp/spm" --vocab-size "$vocab" "$work/tok/train.de" "$work/tok/train.en"
    publish "$tmp/spm.vocab" "$work/spm.vocab"
    publish "$tmp/spm.model" "$work/spm.model"
  fi

  if [[ -d "$work/spm" ]]; then
    log "skip: $work/spm exists"
  else
    scratch tmp "$work/spm"
    for s in "${splits[@]}"; do
      for l in de en; do text_prep spm-encode --model "$work/spm.model" < "$work/tok/$s.$l" > "$tmp/$s.$l"; done
    done
    publish "$tmp" "$work/spm"
  fi

  binarize_spm de en "$work" "$dest" "$workers"
}

case "${1:-}" in
  tokenize) (($# == 4)) || die "usage: $0 tokenize LANG INPUT OUTPUT"; tokenize "$2" "$3" "$4" ;;
  encode) (($# == 4)) || die "usage: $0 encode SPM_MODEL INPUT OUTPUT"; encode "$2" "$3" "$4" ;;
  -h|--help) print_help; exit 0 ;;
  *)
    (($# <= 1)) || die "usage: $0 [SRC_DIR] (see --help)"
    need_tools fairseq-preprocess python
    run_all "${1:-$root/../shared/data/multi30k}"
    ;;
esac
