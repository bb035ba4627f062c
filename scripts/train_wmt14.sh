#!/usr/bin/env bash
# Train the one-layer randomly weighted Transformer on WMT14 En-De with the paper's recipe
# (8 GPUs with fairseq's own distributed training, 4096 tokens per GPU): Adam (0.9, 0.98),
# lr 1e-3, inverse_sqrt with 4000 warm-up updates from 1e-7, dropout 0.2, no weight decay, no
# clipping, label smoothing 0.1, 100 epochs, seed 1, DDP backend no_c10d (legacy_ddp); then the
# last 10 epoch checkpoints are averaged into SAVE_DIR/checkpoint_avg_last10.pt (the model the
# paper scores). Masks as in scripts/train_iwslt14.sh. --fp16 when CUDA is available.
# Fewer GPUs: the update frequency becomes 8 / GPUS, so an update still sees 8 x 4096 tokens.
#
# Usage: scripts/train_wmt14.sh [extra fairseq-train flags...]   (they override the recipe's)
# Environment (defaults: the paper's headline run, 17.29 BLEU):
#   DATA            data-bin/wmt14_en_de (scripts/prepare_wmt14_en_de.sh makes it; joined dictionary)
#   ARCH            one_layer_transformer_wmt_en_de_big ("wider", 1024/4096/16); or
#                   one_layer_transformer_wmt_en_de (base, 512/2048/8)
#   PRUNE_RATIO 0.5, INIT kaiming_uniform, ATTENTION_INIT fairseq_xavier, SHARE_MASK layer_weights,
#   ENCODER_EMBED_PATH, DECODER_EMBED_PATH, EMBED_NO_MASK 0, SEED 1, MAX_EPOCH 100, FP16 auto:
#                   as in scripts/train_iwslt14.sh
#   GPUS            the visible CUDA devices (distributed world size; 0 or 1: one process)
#   UPDATE_FREQ     8 / GPUS (8 on CPU)
#   AVERAGE_LAST    10 (epoch checkpoints averaged at the end; 0: none)
#   SAVE_DIR        checkpoints/wmt14/ARCH-pPRUNE_RATIO[-emb]; the log goes to SAVE_DIR/train.log
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then print_help; exit 0; fi
data="${DATA:-$root/data-bin/wmt14_en_de}"
arch="${ARCH:-one_layer_transformer_wmt_en_de_big}"
prune_ratio="${PRUNE_RATIO:-0.5}"
encoder_embed="${ENCODER_EMBED_PATH:-}"
decoder_embed="${DECODER_EMBED_PATH:-}"
save_dir="${SAVE_DIR:-$(default_save_dir wmt14 "$arch" "$prune_ratio")}"
average_last="${AVERAGE_LAST:-10}"

need_tools fairseq-train python
[[ -f "$data/dict.en.txt" && -f "$data/dict.de.txt" ]] \
  || die "no binarized WMT14 at $data: run scripts/prepare_wmt14_en_de.sh first (or set DATA)"

gpus="${GPUS:-$(cuda_device_count)}"
[[ "$gpus" =~ ^[0-9]+$ ]] || die "GPUS must be a number, got '$gpus'"
world_size=$((gpus > 1 ? gpus : 1))
if [[ -z "${UPDATE_FREQ:-}" ]]; then
  if ((8 % world_size == 0)); then
    update_freq=$((8 / world_size))
  else
    update_freq=1
    log "warning: $world_size GPUs do not divide the paper's 8; one update sees $world_size x 4096 tokens"
  fi
else
  update_freq="$UPDATE_FREQ"
fi

set_fp16
set_paper_masking "$prune_ratio"
set_embed "$encoder_embed" "$decoder_embed"

mkdir -p "$save_dir"
log "training $arch (prune ratio $prune_ratio) on $data with $world_size process(es), update frequency" \
    "$update_freq -> $save_dir"
"$bin/fairseq-train" "$data" --user-dir "$root/one_layer_lottery" --arch "$arch" "${masking[@]}" "${embed[@]}" \
  --seed "${SEED:-1}" "${fp16[@]}" --max-epoch "${MAX_EPOCH:-100}" \
  --distributed-world-size "$world_size" --ddp-backend legacy_ddp --update-freq "$update_freq" \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-init-lr 1e-7 --warmup-updates 4000 \
  --dropout 0.2 --weight-decay 0.0 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 4096 \
  --save-dir "$save_dir" --keep-last-epochs "$((average_last > 10 ? average_last : 10))" \
  --keep-interval-updates 20 --no-progress-bar --log-format simple --log-interval 50 \
  "$@" 2>&1 | tee -a "$save_dir/train.log"

if ((average_last > 0)); then
  "$py" -m one_layer_lottery.average_checkpoints --inputs "$save_dir" --num-epoch-checkpoints "$average_last" \
    --output "$save_dir/checkpoint_avg_last$average_last.pt"
  log "done; score $save_dir/checkpoint_avg_last$average_last.pt (scripts/evaluate.sh)"
else
  log "done; checkpoints are in $save_dir"
fi
