#!/usr/bin/env bash
# One command to check the project on a CUDA GPU, in under 8 minutes:
#   bash scripts/gpu_check.sh OUT_DIR
# writes OUT_DIR/report.json and OUT_DIR/summary.txt: torch, CUDA and the GPU; the tests marked gpu;
# the masked/dense benchmark on CUDA in fp16 and bf16; a 300-update fp16 training run on Multi30k
# (../shared/data/multi30k-bench-bin when present, else the sample corpus), fairseq-generate and its
# BLEU; peak GPU memory. Without a GPU it says so and exits 0. Set-up first, through scripts/setup.sh
# (USE_SYSTEM_TORCH=1 keeps the machine's CUDA torch; WHEELHOUSE=DIR installs offline).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: $0 OUT_DIR  (writes OUT_DIR/report.json and OUT_DIR/summary.txt)}"
shift
bash "$root/scripts/setup.sh" >&2
exec "${VENV:-$root/.venv}/bin/python" "$root/scripts/gpu_check.py" "$out" "$@"
