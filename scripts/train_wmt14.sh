#!/usr/bin/env bash
# Train the one-layer randomly weighted Transformer on WMT14 En-De with the paper's recipe: 8 x 4096
# tokens per update (the authors: 8 GPUs, 4096 tokens each, fairseq's own distributed training),
# Adam (0.9, 0.98), lr 1e-3, inverse_sqrt with 4000 warm-up updates from 1e-7, dropout 0.2, no
# weight decay, no clipping, label smoothing 0.1, 100 epochs, seed 1, DDP backend no_c10d
# (legacy_ddp); then the last 10 epoch checkpoints are averaged into
# SAVE_DIR/checkpoint_avg_last10.pt (the model the paper scores). Masks as in
# scripts/train_iwslt14.sh. --fp16 when CUDA is available. Without CUDA it stops unless ALLOW_CPU=1.
# Any number of GPUs: update frequency ceil(8 / GPUS); when GPUS does not divide 8, the tokens per
# GPU shrink to ceil(8 x 4096 / (GPUS x update frequency)), so that an update still sees about
# 8 x 4096 tokens (3 GPUs: update frequency 3, 3641 tokens; 16 GPUs: 1 and 2048).
#
# Usage: scripts/train_wmt14.sh [extra fairseq-train flags...]   (they override the recipe's)
# Environment (defaults: the paper's headline run, 17.29 BLEU):
#   DATA            data-bin/wmt14_en_de_joined_dict (scripts/prepare_wmt14_en_de.sh makes it with
#                   fairseq's recipe, the paper's data; RECIPE=spm makes data-bin/wmt14_en_de)
#   ARCH            one_layer_transformer_wmt_en_de_big_as_run ("wider" as the authors ran it:
#                   1536/6144/24, attention dropout 0.1); one_layer_transformer_wmt_en_de_big (the
#                   1024/4096/16 model they meant); one_layer_transformer_wmt_en_de (base, 512/2048/8)
#   PRUNE_RATIO 0.5, INIT kaiming_uniform, ATTENTION_INIT fairseq_xavier, SHARE_MASK layer_weights,
#   ENCODER_EMBED_PATH, DECODER_EMBED_PATH, EMBED_NO_MASK 0, SEED 1, MAX_EPOCH 100, FP16 auto:
#                   as in scripts/train_iwslt14.sh
#   GPUS            the number of GPUs to use (default: every visible CUDA device; the distributed
#                   world size)
#   UPDATE_FREQ, MAX_TOKENS  override the update frequency / tokens per GPU; given one, the other
#                   keeps an update at about 8 x 4096 tokens (MAX_TOKENS=2048 on 8 GPUs: update
#                   frequency 2); given UPDATE_FREQ alone, MAX_TOKENS is 4096
#   ALLOW_CPU       0 (1: train on CPU when there is no CUDA device, e.g. a smoke test)
#   AVERAGE_LAST    10 (epoch checkpoints averaged at the end; 0: none)
#   SAVE_DIR        checkpoints/wmt14/ARCH-pPRUNE_RATIO[-emb]; the log goes to SAVE_DIR/train.log
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then print_help; exit 0; fi
data="${DATA:-$root/data-bin/wmt14_en_de_joined_dict}"
arch="${ARCH:-one_layer_transformer_wmt_en_de_big_as_run}"
prune_ratio="${PRUNE_RATIO:-0.5}"
encoder_embed="${ENCODER_EMBED_PATH:-}"
decoder_embed="${DECODER_EMBED_PATH:-}"
save_dir="${SAVE_DIR:-$(default_save_dir wmt14 "$arch" "$prune_ratio")}"
average_last="${AVERAGE_LAST:-10}"

need_tools fairseq-train python
[[ -f "$data/dict.en.txt" && -f "$data/dict.de.txt" ]] \
  || die "no binarized WMT14 at $data: run scripts/prepare_wmt14_en_de.sh first (or set DATA)"

devices="$(cuda_device_count)"
need_cuda "$devices" months
gpus="${GPUS:-$devices}"
[[ "$gpus" =~ ^[0-9]+$ ]] || die "GPUS must be a number, got '$gpus'"
((gpus <= devices || gpus <= 1)) \
  || die "GPUS=$gpus, but torch sees $devices CUDA device(s) (fairseq-train runs one process per GPU of this machine)"
world_size=$((gpus > 1 ? gpus : 1))
paper_tokens=$((8 * 4096))  # tokens per update in the paper: 8 GPUs x 4096
ceil_div() { echo $((($1 + $2 - 1) / $2)); }
for name in UPDATE_FREQ MAX_TOKENS; do
  [[ -z "${!name:-}" || "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive number, got '${!name}'"
done
if [[ -n "${UPDATE_FREQ:-}" ]]; then
  update_freq="$UPDATE_FREQ"
  max_tokens="${MAX_TOKENS:-4096}"
elif [[ -n "${MAX_TOKENS:-}" ]]; then
  max_tokens="$MAX_TOKENS"
  update_freq="$(ceil_div "$paper_tokens" $((world_size * max_tokens)))"
else
  update_freq="$(ceil_div "$paper_tokens" $((world_size * 4096)))"
  max_tokens="$(ceil_div "$paper_tokens" $((world_size * update_freq)))"
fi
tokens=$((world_size * update_freq * max_tokens))
log "$world_size process(es) x update frequency $update_freq x $max_tokens tokens = $tokens tokens per update" \
    "(the paper: 8 x 1 x 4096 = $paper_tokens)"

set_fp16
set_paper_masking "$prune_ratio"
set_embed "$encoder_embed" "$decoder_embed"

mkdir -p "$save_dir"
log "training $arch (prune ratio $prune_ratio) on $data -> $save_dir"
"$bin/fairseq-train" "$data" --user-dir "$root/one_layer_lottery" --arch "$arch" "${masking[@]}" "${embed[@]}" \
  --seed "${SEED:-1}" "${fp16[@]}" --max-epoch "${MAX_EPOCH:-100}" \
  --distributed-world-size "$world_size" --ddp-backend legacy_ddp --update-freq "$update_freq" \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-init-lr 1e-7 --warmup-updates 4000 \
  --dropout 0.2 --weight-decay 0.0 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens "$max_tokens" \
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
