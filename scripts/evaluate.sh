#!/usr/bin/env bash
# Decode a test set with beam search and score it twice:
#   1. the paper's tokenised BLEU: fairseq-generate's BLEU4 on the tokenised text, subword units removed;
#   2. sacreBLEU (13a tokenisation, with its signature) on Moses-detokenised (sacremoses) hypotheses
#      against the official references when it can get them: REFERENCE (a raw reference file), else the
#      sacreBLEU test set SACREBLEU_TEST_SET, else the one DATA/SUBSET.sacrebleu names (scripts/
#      prepare_wmt14_en_de.sh writes "wmt14/full en-de" there), fetched by sacrebleu itself (cached in
#      $SACREBLEU, default ~/.sacrebleu; it downloads them once). Otherwise (IWSLT14, or no network) it
#      scores against the detokenised target lines of the binarized data and says so on the line:
#      that is not the standard sacreBLEU.
# Every sentence is decoded (--required-batch-size-multiple 1: fairseq drops a short last batch otherwise).
#
# Usage: scripts/evaluate.sh DATA CHECKPOINT [OUT_DIR] [extra fairseq-generate flags...]
#        scripts/evaluate.sh score GENERATE_LOG [OUT_DIR]     score an existing fairseq-generate output
# Environment: SUBSET (test), BEAM (5), LENPEN (1.0), BATCH_SIZE (128),
#   REMOVE_BPE (default: sentencepiece when DATA has spm.model, else subword-nmt's "@@ "),
#   TARGET_LANG (default: from DATA's file names; the detokeniser's language),
#   REFERENCE (raw reference text for sacreBLEU),
#   SACREBLEU_TEST_SET (e.g. "wmt14/full en-de": a sacreBLEU test set and language pair; "none": do not
#   fetch one), SACREBLEU_TIMEOUT (seconds allowed to fetch it, 300).
# OUT_DIR (default: next to the checkpoint, CHECKPOINT_NAME.SUBSET/) gets generate.log, hyp.tok,
# ref.tok, hyp.detok, ref.detok (or ref.official) and bleu.txt (the two scores).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="usage: $0 DATA CHECKPOINT [OUT_DIR] [fairseq-generate flags...] | $0 score GENERATE_LOG [OUT_DIR]"

# official_refs TEST_SET OUT: the references of a sacreBLEU test set ("NAME LANGPAIR") into OUT/ref.official;
# on failure sets fallback_reason.
official_refs() {
  local name pair extra
  read -r name pair extra <<< "$1"
  if [[ -z "$name" || -z "$pair" || -n "$extra" ]]; then
    die "a sacreBLEU test set is 'NAME LANGPAIR' (e.g. 'wmt14/full en-de'), got '$1'"
  fi
  "$py" - "$name" "$pair" <<'EOF' || die "bad sacreBLEU test set '$1'"
import sys
from sacrebleu.dataset import DATASETS
name, pair = sys.argv[1:]
if name not in DATASETS:
    sys.exit(f"evaluate: error: sacreBLEU knows no test set {name!r}")
if pair not in DATASETS[name].langpairs:
    sys.exit(f"evaluate: error: the sacreBLEU test set {name} has no language pair {pair!r} "
             f"(it has {', '.join(sorted(DATASETS[name].langpairs))})")
EOF
  if timeout "${SACREBLEU_TIMEOUT:-300}" "$bin/sacrebleu" -t "$name" -l "$pair" --echo ref \
      > "$2/ref.official.tmp" 2> "$2/sacrebleu_fetch.log"; then
    mv "$2/ref.official.tmp" "$2/ref.official"
    return 0
  fi
  rm -f "$2/ref.official.tmp"
  fallback_reason="sacrebleu could not get the $name $pair references: $(sed '/^[[:space:]]*$/d' \
    "$2/sacrebleu_fetch.log" | tail -n 1 | cut -c1-200)"
  return 1
}

# score GENERATE_LOG OUT_DIR TARGET_LANG TEST_SET (TEST_SET: "NAME LANGPAIR" or empty)
score() {
  local gen="$1" out="$2" lang="$3" test_set="$4" tok_bleu refs label n_hyp n_ref n_official sacre
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
  rm -f "$out/ref.official" "$out/ref.detok"
  fallback_reason=""
  if [[ -n "${REFERENCE:-}" ]]; then
    [[ -f "$REFERENCE" ]] || die "REFERENCE $REFERENCE not found"
    [[ "$(count_lines "$REFERENCE")" == "$n_hyp" ]] \
      || die "REFERENCE $REFERENCE has $(count_lines "$REFERENCE") lines, the output $n_hyp sentences"
    refs="$REFERENCE" label="against the reference file $REFERENCE"
  elif [[ "${SACREBLEU_TEST_SET:-}" == none ]]; then
    fallback_reason="SACREBLEU_TEST_SET=none"
  elif [[ -z "$test_set" ]]; then
    fallback_reason="no official references known for this test set: give REFERENCE=FILE or SACREBLEU_TEST_SET"
  elif official_refs "$test_set" "$out"; then
    n_official="$(count_lines "$out/ref.official")"
    ((n_official == n_hyp)) || die "the sacreBLEU test set $test_set has $n_official references, the output" \
      "$n_hyp sentences (is SUBSET the whole test set?)"
    refs="$out/ref.official" label="against the official references ($test_set)"
  fi
  if [[ -n "$fallback_reason" ]]; then
    text_prep detokenize --lang "$lang" < "$out/ref.tok" > "$out/ref.detok"
    refs="$out/ref.detok"
    label="against the detokenised target lines, NOT the official references ($fallback_reason)"
    log "warning: sacreBLEU $label"
  fi
  sacre="$("$bin/sacrebleu" "$refs" -i "$out/hyp.detok" -m bleu -w 2 -f text)"
  {
    echo "sentences: $n_hyp"
    echo "tokenised BLEU (fairseq-generate, the paper's): $tok_bleu"
    echo "sacreBLEU $label: $sacre"
  } > "$out/bleu.txt.tmp"
  mv "$out/bleu.txt.tmp" "$out/bleu.txt"
  cat "$out/bleu.txt"
}

# The sacreBLEU test set of DATA's SUBSET: SACREBLEU_TEST_SET ("none": no set), else DATA/SUBSET.sacrebleu.
sacrebleu_test_set() {  # [DATA SUBSET]
  local set="${SACREBLEU_TEST_SET:-}"
  if [[ -z "$set" && $# == 2 && -f "$1/$2.sacrebleu" ]]; then set="$(head -n 1 "$1/$2.sacrebleu")"; fi
  [[ "$set" == none ]] || printf '%s\n' "$set"
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
    score "$2" "${3:-$(dirname "$2")}" "$TARGET_LANG" "$(sacrebleu_test_set)"
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
    score "$out/generate.log" "$out" "$lang" "$(sacrebleu_test_set "$data" "$subset")"
    ;;
esac
