#!/usr/bin/env bash
# Shared helpers of the prepare/train/evaluate scripts; `source` it, don't run it.
# Sets: root (the checkout), bin (the tools: $VENV/bin, default .venv/bin), py (its python).

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${VENV:-$root/.venv}/bin"
py="$bin/python"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

# The calling script's header comment (its --help).
print_help() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# Default SAVE_DIR of a training script: checkpoints/CORPUS/ARCH-pPRUNE_RATIO, "-emb" with
# pre-trained embeddings (ENCODER_EMBED_PATH / DECODER_EMBED_PATH).
default_save_dir() {
  local suffix=""
  [[ -z "${ENCODER_EMBED_PATH:-}${DECODER_EMBED_PATH:-}" ]] || suffix="-emb"
  printf '%s\n' "$root/checkpoints/$1/$2-p$3$suffix"
}

log() { printf '%s: %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_tools() {
  local tool
  for tool in "$@"; do
    [[ -x "$bin/$tool" ]] || die "$bin/$tool not found: run scripts/setup.sh first (or set VENV)"
  done
}

# scratch VAR FINAL: a fresh temporary folder next to FINAL (same file system, so the final mv is
# atomic), its path stored in VAR; removed on exit unless its content was published.
_scratch_paths=()
_cleanup_scratch() {
  local p
  for p in "${_scratch_paths[@]}"; do rm -rf -- "$p"; done
}
trap _cleanup_scratch EXIT
trap 'exit 130' INT  # an interrupted run cleans up too (the EXIT trap runs)
trap 'exit 143' TERM
scratch() {
  local final="$2" dir
  mkdir -p "$(dirname "$final")"
  dir="$(mktemp -d "${final%/}.tmp.XXXXXX")"
  chmod "$(umask -S)" "$dir"  # mktemp makes it private; the published result follows the umask
  _scratch_paths+=("$dir")
  printf -v "$1" '%s' "$dir"
}
# Move a finished temporary file or folder into place (replacing an older one).
publish() {
  local tmp="$1" final="$2" parent
  rm -rf -- "$final"
  mv -- "$tmp" "$final"
  parent="$(dirname "$tmp")"
  if [[ "$parent" == *.tmp.* ]]; then rmdir -- "$parent" 2>/dev/null || true; fi  # an emptied scratch folder
}

# fetch URL DEST: download to DEST.part, then rename; fails fast without network.
fetch() {
  local url="$1" dest="$2"
  log "downloading $url"
  if curl -fL --retry 2 --connect-timeout "${FETCH_CONNECT_TIMEOUT:-20}" -o "$dest.part" "$url"; then
    mv -- "$dest.part" "$dest"
  else
    rm -f -- "$dest.part"
    return 1
  fi
}

# The number of CUDA devices torch sees (0 without CUDA).
cuda_device_count() {
  "$py" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0
}

cuda_available() { (($(cuda_device_count) > 0)); }

# need_cuda DEVICES DURATION: a paper recipe does not start without CUDA (DEVICES = 0) unless
# ALLOW_CPU=1; DURATION says how long it would take on CPU.
need_cuda() {
  (($1 > 0)) && return
  case "${ALLOW_CPU:-0}" in
    1) log "warning: no CUDA device: training on CPU (ALLOW_CPU=1), which is only good for a short test" ;;
    0) die "no CUDA device visible to torch: the paper's recipe would take $2 on CPU. Run it on a GPU" \
           "machine, or set ALLOW_CPU=1 to train on CPU anyway (e.g. a smoke test with --max-update 10)" ;;
    *) die "ALLOW_CPU must be 0 or 1, got '${ALLOW_CPU}'" ;;
  esac
}

# set_fp16: sets the array fp16 to (--fp16) when FP16=1, or FP16=auto (default) and CUDA is available.
# shellcheck disable=SC2034  # the array is for the caller
set_fp16() {
  fp16=()
  case "${FP16:-auto}" in
    1|yes|true) fp16=(--fp16) ;;
    0|no|false) ;;
    auto) if cuda_available; then fp16=(--fp16); fi ;;
    *) die "FP16 must be auto, 1 or 0, got '${FP16}'" ;;
  esac
}

# set_paper_masking PRUNE_RATIO: sets the array masking to the paper's masking flags (one random weight
# set per stack, super_mask, non-affine LayerNorm, tied decoder embedding); SHARE_MASK, INIT and
# ATTENTION_INIT override their defaults.
# shellcheck disable=SC2034  # the array is for the caller
set_paper_masking() {
  masking=(--prune-ratio "$1" --prune-method super_mask --share-mask "${SHARE_MASK:-layer_weights}"
           --init "${INIT:-kaiming_uniform}" --attention-init "${ATTENTION_INIT:-fairseq_xavier}"
           --mask-init standard --mask-layernorm-type masked_layernorm --share-decoder-input-output-embed)
}

# set_embed ENCODER_PATH DECODER_PATH: sets the array embed to the pre-trained embedding flags
# (none for empty paths; --embed-no-mask when EMBED_NO_MASK=1).
# shellcheck disable=SC2034  # the array is for the caller
set_embed() {
  embed=()
  if [[ -n "$1" ]]; then
    [[ -f "$1" ]] || die "ENCODER_EMBED_PATH $1 not found"
    embed+=(--encoder-embed-path "$1")
  fi
  if [[ -n "$2" ]]; then
    [[ -f "$2" ]] || die "DECODER_EMBED_PATH $2 not found"
    embed+=(--decoder-embed-path "$2")
  fi
  case "${EMBED_NO_MASK:-0}" in
    1) embed+=(--embed-no-mask) ;;
    0) ;;
    *) die "EMBED_NO_MASK must be 0 or 1, got '${EMBED_NO_MASK}'" ;;
  esac
}

# text_prep ARGS...: scripts/text_prep.py (Moses-compatible tokenise / lowercase / clean).
text_prep() { "$py" "$root/scripts/text_prep.py" "$@"; }

# Lines of the <seg id="N"> elements of an IWSLT/WMT xml or sgm file, as fairseq's recipes
# take them: tags and surrounding blanks removed, ’ turned into '.
xml_segments() {
  sed -n -e '/<seg id/{' -e 's/<seg id="[0-9]*">\s*//g' -e 's/\s*<\/seg>\s*//g' -e "s/’/'/g" -e 'p' -e '}' "$1"
}

count_lines() { wc -l < "$1" | tr -d ' '; }

# binarize_joined SRC TGT TEXT DEST WORKERS [FILE...]: fairseq-preprocess --joined-dictionary of
# TEXT/{train,valid,test}.{SRC,TGT} into DEST with WORKERS processes, the FILEs copied beside the
# binaries; skipped when DEST exists.
binarize_joined() {
  local src=$1 tgt=$2 text=$3 dest=$4 workers=$5 tmp
  if [[ -d "$dest" ]]; then
    log "skip: $dest exists (delete it to binarize again)"
    return
  fi
  scratch tmp "$dest"
  "$bin/fairseq-preprocess" --source-lang "$src" --target-lang "$tgt" --joined-dictionary \
    --trainpref "$text/train" --validpref "$text/valid" --testpref "$text/test" \
    --destdir "$tmp" --workers "$workers" > "$tmp/preprocess.log" 2>&1 \
    || { tail -n 20 "$tmp/preprocess.log" >&2; die "fairseq-preprocess failed"; }
  (($# <= 5)) || cp "${@:6}" "$tmp/"
  publish "$tmp" "$dest"
  log "binarized data in $dest"
}

# binarize_spm SRC TGT WORK DEST WORKERS: binarize_joined of WORK/spm/, with WORK/spm.model.
binarize_spm() { binarize_joined "$1" "$2" "$3/spm" "$4" "$5" "$3/spm.model"; }
