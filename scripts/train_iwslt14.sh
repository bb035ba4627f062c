#!/usr/bin/env bash
# Train the one-layer randomly weighted Transformer on IWSLT14 De-En with the paper's recipe (one GPU):
# Adam (0.9, 0.98), lr 5e-4, inverse_sqrt with 4000 warm-up updates, dropout 0.3, weight decay 1e-4,
# label smoothing 0.1, 4096 tokens per batch, gradient clipping 0.5, 55 epochs, seed 1; validation
# BLEU (beam 5, max_len_a 1.2, max_len_b 10, BPE removed, Moses detokenised) picks checkpoint_best.pt.
# Masks: one random weight set per stack (layer_weights), super_mask (top-k by |score|), scores
# initialised kaiming_uniform(a=sqrt 5), non-affine LayerNorm, tied decoder input/output embedding.
# --fp16 when CUDA is available; without CUDA it stops unless ALLOW_CPU=1. Decode and score with
# scripts/evaluate.sh.
#
# Usage: scripts/train_iwslt14.sh [extra fairseq-train flags...]   (they override the recipe's)
# Environment (defaults: the paper's headline run, 29.45 BLEU):
#   DATA            data-bin/iwslt14.tokenized.de-en (scripts/prepare_iwslt14.sh makes it)
#   ARCH            one_layer_transformer_big_iwslt_de_en ("wide", 1024/2048/4, 6+6); also
#                   one_layer_transformer_iwslt_de_en (small), _deep_iwslt_de_en, _bigdeep_iwslt_de_en
#   PRUNE_RATIO     0.5 (the fraction of each weight matrix removed)
#   INIT            kaiming_uniform (weights), ATTENTION_INIT fairseq_xavier (what the authors' code did)
#   SHARE_MASK      layer_weights (layer_mask, none)
#   ENCODER_EMBED_PATH, DECODER_EMBED_PATH  fixed pre-trained embeddings (fairseq text format, see
#                   python -m one_layer_lottery.dump_embeddings); empty: random embeddings
#   EMBED_NO_MASK   0 (1: pre-trained embeddings are used unmasked)
#   SEED 1, MAX_EPOCH 55, FP16 auto (1 / 0 to force)
#   ALLOW_CPU       0 (1: train on CPU when there is no CUDA device, e.g. a smoke test)
#   SAVE_DIR        checkpoints/iwslt14/ARCH-pPRUNE_RATIO[-emb]; the log goes to SAVE_DIR/train.log
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then print_help; exit 0; fi
data="${DATA:-$root/data-bin/iwslt14.tokenized.de-en}"
arch="${ARCH:-one_layer_transformer_big_iwslt_de_en}"
prune_ratio="${PRUNE_RATIO:-0.5}"
encoder_embed="${ENCODER_EMBED_PATH:-}"
decoder_embed="${DECODER_EMBED_PATH:-}"
save_dir="${SAVE_DIR:-$(default_save_dir iwslt14 "$arch" "$prune_ratio")}"

need_tools fairseq-train
[[ -f "$data/dict.de.txt" && -f "$data/dict.en.txt" ]] \
  || die "no binarized IWSLT14 at $data: run scripts/prepare_iwslt14.sh first (or set DATA)"
need_cuda "$(cuda_device_count)" weeks

set_fp16
set_paper_masking "$prune_ratio"
set_embed "$encoder_embed" "$decoder_embed"

mkdir -p "$save_dir"
log "training $arch (prune ratio $prune_ratio) on $data -> $save_dir"
"$bin/fairseq-train" "$data" --user-dir "$root/one_layer_lottery" --arch "$arch" "${masking[@]}" "${embed[@]}" \
  --seed "${SEED:-1}" "${fp16[@]}" --max-epoch "${MAX_EPOCH:-55}" \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.5 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 \
  --dropout 0.3 --weight-decay 0.0001 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 4096 \
  --eval-bleu --eval-bleu-args '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}' \
  --eval-bleu-detok moses --eval-bleu-remove-bpe \
  --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --save-dir "$save_dir" --keep-last-epochs 5 --no-progress-bar --log-format simple --log-interval 100 \
  "$@" 2>&1 | tee -a "$save_dir/train.log"
log "done; checkpoint_best.pt (by validation BLEU) is in $save_dir"
