#!/usr/bin/env bash
# Decode a test set with beam search and score it twice:
#   1. the paper's tokenised BLEU: fairseq-generate's BLEU4 on the tokenised text, subword units removed;
#   2. sacreBLEU (13a tokenisation, with its signature) on Moses-detokenised (sacremoses) hypotheses
#      against the detokenised references (or against REFERENCE, a raw reference file).
# Every sentence is decoded (--required-batch-size-multiple 1: fairseq drops a short last batch otherwise).
#
# Usage: scripts/evaluate.sh DATA CHECKPOINT [OUT_DIR] [extra fairseq-generate flags...]
#        scripts/evaluate.sh score GENERATE_LOG [OUT_DIR]     score an existing fairseq-generate output
# Environment: SUBSET (test), BEAM (5), LENPEN (1.0), BATCH_SIZE (128),
#   REMOVE_BPE (default: sentencepiece when DATA has spm.model, else subword-nmt's "@@ "),
#   TARGET_LANG (default: from DATA's file names; the detokeniser's language),
#   REFERENCE (raw reference text for sacreBLEU instead of the detokenised targets).
# OUT_DIR (default: next to the checkpoint, CHECKPOINT_NAME.SUBSET/) gets generate.log, hyp.tok,
# ref.tok, hyp.detok, ref.detok and bleu.txt (the two scores).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="usage: $0 DATA CHECKPOINT [OUT_DIR] [fairseq-generate flags...] | $0 score GENERATE_LOG [OUT_DIR]"

# score GENERATE_LOG OUT_DIR TARGET_LANG
score() {
  local gen="$1" out="$2" lang="$3" tok_bleu refs n_hyp n_ref sacre
  mkdir -p "$out"
  grep -E $'^H-[0-9]+\t' "$gen" | sort -t- -k2,2n | cut -f3 > "$out/hyp.tok" || true
  grep -E $'^T-[0-9]+\t' "$gen" | sort -t- -k2,2n | cut -f2 > "$out/ref.tok" || true
  n_hyp="$(count_lines "$out/hyp.tok")"
  n_ref="$(count_lines "$out/ref.tok")"
  ((n_hyp > 0)) || die "$gen has no hypotheses (H-<id> lines)"
  ((n_hyp == n_ref)) || die "$gen has $n_hyp hypotheses but $n_ref references"
  tok_bleu="$(grep -E '^Generate .* BLEU4? = ' "$gen" | tail -n 1 || true)"
  [[ -n "$tok_bleu" ]] || tok_bleu="(no BLEU line in $gen)"
  text_prep detokenize --lang "$lang" < "$out/hyp.tok" > "$out/hyp.detok"
  if [[ -n "${REFERENCE:-}" ]]; then
    [[ -f "$REFERENCE" ]] || die "REFERENCE $REFERENCE not found"
    [[ "$(count_lines "$REFERENCE")" == "$n_hyp" ]] \
      || die "REFERENCE $REFERENCE has $(count_lines "$REFERENCE") lines, the output $n_hyp sentences"
    refs="$REFERENCE"
  else
    text_prep detokenize --lang "$lang" < "$out/ref.tok" > "$out/ref.detok"
    refs="$out/ref.detok"
  fi
  sacre="$("$bin/sacrebleu" "$refs" -i "$out/hyp.detok" -m bleu -w 2 -f text)"
  {
    echo "sentences: $n_hyp"
    echo "tokenised BLEU (fairseq-generate, the paper's): $tok_bleu"
    echo "sacreBLEU (detokenised): $sacre"
  } > "$out/bleu.txt.tmp"
  mv "$out/bleu.txt.tmp" "$out/bleu.txt"
  cat "$out/bleu.txt"
}

infer_target_lang() {  # DATA SUBSET
  local f pairs=()
  for f in "$1/$2".*-*.*.idx; do
    [[ -e "$f" ]] || continue
    f="${f##*/"$2".}"
    pairs+=("${f%%.*}")
  done
  mapfile -t pairs < <(printf '%s\n' "${pairs[@]}" | sort -u)
  ((${#pairs[@]} == 1)) || die "cannot tell the language pair of $1 (found: ${pairs[*]:-none} for $2): set TARGET_LANG"
  printf '%s\n' "${pairs[0]#*-}"
}

case "${1:-}" in
  -h|--help) print_help; exit 0 ;;
  score)
    (($# >= 2 && $# <= 3)) || die "$usage"
    [[ -f "$2" ]] || die "$2 not found"
    [[ -n "${TARGET_LANG:-}" ]] || die "score needs TARGET_LANG (the detokeniser's language)"
    score "$2" "${3:-$(dirname "$2")}" "$TARGET_LANG"
    ;;
  *)
    (($# >= 2)) || die "$usage"
    data="$1" checkpoint="$2"
    shift 2
    out="${1:-}"
    if [[ -n "$out" && "$out" != -* ]]; then shift; else out=""; fi
    subset="${SUBSET:-test}"
    [[ -d "$data" ]] || die "data directory $data not found"
    [[ -f "$checkpoint" ]] || die "checkpoint $checkpoint not found"
    out="${out:-${checkpoint%.pt}.$subset}"
    lang="${TARGET_LANG:-$(infer_target_lang "$data" "$subset")}"
    if [[ -z "${REMOVE_BPE:-}" ]]; then
      if [[ -f "$data/spm.model" ]]; then REMOVE_BPE=sentencepiece; else REMOVE_BPE="@@ "; fi
    fi
    need_tools fairseq-generate sacrebleu
    mkdir -p "$out"
    log "decoding $data ($subset) with $checkpoint -> $out"
    "$bin/fairseq-generate" "$data" --user-dir "$root/one_layer_lottery" --path "$checkpoint" \
      --gen-subset "$subset" --beam "${BEAM:-5}" --lenpen "${LENPEN:-1.0}" --batch-size "${BATCH_SIZE:-128}" \
      --required-batch-size-multiple 1 --remove-bpe "$REMOVE_BPE" "$@" > "$out/generate.log.tmp" 2>&1 \
      || { tail -n 20 "$out/generate.log.tmp" >&2; die "fairseq-generate failed"; }
    mv "$out/generate.log.tmp" "$out/generate.log"
    score "$out/generate.log" "$out" "$lang"
    ;;
esac
