#!/usr/bin/env bash
# Same-budget Multi30k experiment (DEVELOPERS.md, issue #3): the one-layer masked Transformer at prune
# ratio 0.5 against fairseq's dense `transformer`, both 256 emb / 512 FFN / 4 heads, 6+6 layers,
# 600 updates of 4096 tokens, validation BLEU (beam 5) every 100 updates choosing the checkpoint, then
# test scored once: tokenised BLEU (the paper's) and detokenised sacreBLEU with its signature.
# Usage: scripts/multi30k_bench.sh masked|dense|both [OUT_DIR] [extra fairseq-train flags...]
#   both: runs masked then dense under OUT_DIR/{masked,dense} and plots OUT_DIR/valid_bleu.png.
# Data: MULTI30K_BIN (default ../shared/data/multi30k-bench-bin, or make one with
# scripts/prepare_multi30k.sh); raw references: MULTI30K_RAW (default ../shared/data/multi30k).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:?usage: $0 masked|dense|both [OUT_DIR] [flags...]}"
out="${2:-$root/work/multi30k-$model}"
shift $(( $# >= 2 ? 2 : 1 ))
data="${MULTI30K_BIN:-$root/../shared/data/multi30k-bench-bin}"
raw="${MULTI30K_RAW:-$root/../shared/data/multi30k}"
[[ -f "$data/dict.en.txt" ]] || { echo "no binarized Multi30k at $data (set MULTI30K_BIN)" >&2; exit 2; }
[[ -f "$raw/test.en" ]] || { echo "no raw Multi30k references at $raw/test.en (set MULTI30K_RAW)" >&2; exit 2; }
bash "$root/scripts/setup.sh"
bin="$root/.venv/bin"
export PYTHONWARNINGS=ignore

if [[ "$model" == both ]]; then
  "$0" masked "$out/masked" "$@"
  "$0" dense "$out/dense" "$@"
  "$bin/python" -m one_layer_lottery.curves "$out/valid_bleu.png" --title "Multi30k De-En, same budget" \
    "one-layer masked (50% kept)=$out/masked/train.log" "dense transformer=$out/dense/train.log" \
    | tee "$out/valid_bleu.md"
  cat "$out/masked/result.txt" "$out/dense/result.txt"
  exit 0
fi

shape=(--encoder-embed-dim 256 --encoder-ffn-embed-dim 512 --encoder-attention-heads 4 --encoder-layers 6
       --decoder-embed-dim 256 --decoder-ffn-embed-dim 512 --decoder-attention-heads 4 --decoder-layers 6
       --share-all-embeddings)
case "$model" in
  # The same flags for both (pre-norm, lr 3e-3), except dropout: 0 for the masked model (its weights
  # are frozen; chosen on validation, docs/benchmarks.md), fairseq's 0.1 for the dense one.
  masked) arch=(--arch one_layer_transformer_iwslt_de_en --init signed_constant --prune-ratio 0.5 --dropout 0.0) ;;
  dense)  arch=(--arch transformer_iwslt_de_en --dropout 0.1) ;;
  *) echo "model must be masked, dense or both, got '$model'" >&2; exit 2 ;;
esac

mkdir -p "$out"
"$bin/fairseq-train" "$data" --user-dir "$root/one_layer_lottery" "${arch[@]}" "${shape[@]}" \
  --encoder-normalize-before --decoder-normalize-before --lr 3e-3 \
  --optimizer adam --adam-betas '(0.9,0.98)' --lr-scheduler inverse_sqrt --warmup-updates 100 --warmup-init-lr 1e-7 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 4096 --max-update 600 --seed 1 \
  --save-dir "$out/checkpoints" --no-epoch-checkpoints --validate-interval 1000 \
  --validate-interval-updates 100 --validate-after-updates 99 --save-interval-updates 100 --keep-interval-updates 1 \
  --eval-bleu --eval-bleu-args '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}' --eval-bleu-remove-bpe sentencepiece --eval-tokenized-bleu \
  --best-checkpoint-metric bleu --maximize-best-checkpoint-metric --log-format simple --log-interval 25 \
  "$@" > "$out/train.log" 2>&1 || { tail -n 30 "$out/train.log" >&2; exit 1; }

"$bin/fairseq-generate" "$data" --user-dir "$root/one_layer_lottery" --path "$out/checkpoints/checkpoint_best.pt" \
  --gen-subset test --beam 5 --batch-size 128 --required-batch-size-multiple 1 --remove-bpe sentencepiece > "$out/generate.log" 2>&1
grep ^H- "$out/generate.log" | sort -t- -k2 -n | cut -f3 > "$out/hyp.txt"
"$bin/sacremoses" -l en detokenize < "$out/hyp.txt" > "$out/hyp.detok.txt"
{
  echo "$model: tokenised $(grep -E '^Generate test' "$out/generate.log")"
  # Our output is lowercased: score it against the raw references case-insensitively.
  echo "$model: detokenised $("$bin/sacrebleu" "$raw/test.en" -i "$out/hyp.detok.txt" -lc -f text)"
} | tee "$out/result.txt"
