#!/usr/bin/env bash
# Fill a folder with everything scripts/setup.sh installs, for installing where there is no network:
#   bash scripts/fill_wheelhouse.sh DIR                  # on a machine with network
#   WHEELHOUSE=DIR bash scripts/setup.sh                 # on the target, offline
#   WHEELHOUSE=DIR USE_SYSTEM_TORCH=1 bash scripts/setup.sh   # ... keeping the target's own torch
#
# Wheels are for PYTHON's version and platform: run this with the target's Python version.
# fairseq-fixed goes in as its source distribution, compiled on the target for the target's Python
# and torch; packages published only as source are built into (pure-Python) wheels here.
#   PYTHON      the interpreter whose pip downloads (default: the project's .venv, else python3); it
#               must import torch, numpy and cython, which fairseq-fixed's source needs to be described
#   SKIP_TORCH=1  leave torch out (the target keeps its own: USE_SYSTEM_TORCH=1)
#   TORCH_SPEC  the torch to include (default: the one setup.sh installs)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/requirements.sh
source "$root/scripts/requirements.sh"
dest="${1:?usage: $0 DIR  (fills DIR with the wheels setup.sh installs)}"
default_python=python3
[[ -x "$root/.venv/bin/python" ]] && default_python="$root/.venv/bin/python"
python="${PYTHON:-$default_python}"
skip_torch="${SKIP_TORCH:-0}"
[[ "$skip_torch" == 0 || "$skip_torch" == 1 ]] || { echo "SKIP_TORCH must be 0 or 1, got '$skip_torch'" >&2; exit 2; }
"$python" -c "import torch, numpy, Cython" 2>/dev/null || {
  echo "$python must import torch, numpy and cython (run scripts/setup.sh first, or set PYTHON)" >&2; exit 2; }

mkdir -p "$dest"
pip=("$python" -m pip --disable-pip-version-check)
specs=("${base_reqs[@]}" "${reqs[@]}")
[[ "$skip_torch" == 1 ]] || specs=("$torch_spec" "${specs[@]}")
"${pip[@]}" download --dest "$dest" "${specs[@]}"
# Its source only: compiled on the target, against the target's Python and torch.
"${pip[@]}" download --dest "$dest" --no-deps --no-binary fairseq-fixed --no-build-isolation "$fairseq_spec"
for sdist in "$dest"/*.tar.gz "$dest"/*.zip; do
  [[ -e "$sdist" ]] || continue
  case "$(basename "$sdist")" in fairseq[-_]fixed-*) continue ;; esac
  "${pip[@]}" wheel --no-deps --wheel-dir "$dest" "$sdist"
  rm "$sdist"
done
echo "fill_wheelhouse: $(find "$dest" -maxdepth 1 -type f | wc -l) files in $dest"
