#!/usr/bin/env bash
# Create .venv in the checkout and install everything the project needs.
# Idempotent: when the pinned requirements are already installed it returns in seconds.
#
#   VENV=DIR            the virtual environment to create or complete (default: .venv in the checkout)
#   PYTHON=python3      the interpreter that creates it
#   TORCH_SPEC=SPEC     the torch to install where none >= 2.6 is importable (default torch==2.13.0)
#   USE_SYSTEM_TORCH=1  use the torch PYTHON already imports (a cluster module, a container's CUDA
#                       build): the venv is created with --system-site-packages and no torch is installed
#   WHEELHOUSE=DIR      install offline, only from DIR (fill it with scripts/fill_wheelhouse.sh)
#
# A torch >= 2.6 that the venv already imports is kept, and pinned while the rest is installed, so
# an existing (CUDA) build is never replaced by another one. Set TORCH_SPEC to install one anyway.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/requirements.sh
source "$root/scripts/requirements.sh"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.one_layer_lottery-setup"
die() { echo "setup: $*" >&2; exit 2; }
# A venv is whole once python -m venv has finished: a creation cut short leaves no bin/activate.
venv_whole() { [[ -x "$venv/bin/python" && -f "$venv/bin/activate" ]]; }

want="$(printf '%s\n' "$torch_spec" "${base_reqs[@]}" "$fairseq_spec" "${reqs[@]}" | sha256sum | cut -c1-16)"
# Up to date: the stamp matches, the venv is whole, fairseq is installed and one_layer_lottery is
# this checkout's (found without importing them, which would take seconds).
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && venv_whole && "$venv/bin/python" -c '
import importlib.util as util, os, sys
ours = util.find_spec("one_layer_lottery")
sys.exit(not (util.find_spec("fairseq") and ours and ours.origin
              and os.path.dirname(os.path.dirname(os.path.realpath(ours.origin))) == os.path.realpath(sys.argv[1])))
' "$root" >/dev/null 2>&1; then
  echo "setup: $venv is up to date"
  exit 0
fi

use_system_torch="${USE_SYSTEM_TORCH:-0}"
[[ "$use_system_torch" == 0 || "$use_system_torch" == 1 ]] \
  || die "USE_SYSTEM_TORCH must be 0 or 1, got '$use_system_torch'"
source_args=()
if [[ -n "${WHEELHOUSE:-}" ]]; then
  [[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE=$WHEELHOUSE is not a directory (fill one with scripts/fill_wheelhouse.sh)"
  source_args=(--no-index --find-links "$(cd "$WHEELHOUSE" && pwd)")
fi

# "VERSION ok", "VERSION old" (older than min_torch) or nothing, for the torch that $1 imports.
torch_status() {
  "$1" - "$min_torch" 2>/dev/null <<'PY' || true
import sys
import torch
v = torch.__version__
major, minor = (int(x) for x in v.split("+")[0].split(".")[:2])
need = tuple(int(x) for x in sys.argv[1].split("."))
print(v, "ok" if (major, minor) >= need else "old")
PY
}

# A system torch is checked before a venv is made around it: a refusal leaves nothing behind.
if [[ "$use_system_torch" == 1 ]] && ! venv_whole; then
  read -r system_torch system_verdict <<< "$(torch_status "$python")" || true
  [[ -n "${system_torch:-}" ]] \
    || die "USE_SYSTEM_TORCH=1: $python cannot import torch (load the module that provides it, or set PYTHON)"
  [[ "$system_verdict" == ok ]] \
    || die "USE_SYSTEM_TORCH=1: $python imports $system_torch; this project needs torch >= $min_torch"
fi

mkdir -p "$venv"
log_file="$venv/setup.log"
: > "$log_file"
# step WHAT COMMAND...: one line on the console; the command's output goes to the log, shown when it fails.
step() {
  local what="$1"
  shift
  echo "setup: $what"
  if ! "$@" >> "$log_file" 2>&1; then
    tail -n 30 "$log_file" >&2
    die "$what failed (full output: $log_file)"
  fi
}

if ! venv_whole; then
  if [[ "$use_system_torch" == 1 ]]; then
    step "creating $venv (with the system's site-packages)" "$python" -m venv --system-site-packages "$venv"
  else
    step "creating $venv" "$python" -m venv "$venv"
  fi
fi

read -r present verdict <<< "$(torch_status "$venv/bin/python")" || true
pin=()
if [[ "$use_system_torch" == 1 && "${verdict:-}" != ok ]]; then
  die "USE_SYSTEM_TORCH=1: $venv imports ${present:-no torch}; this project needs torch >= $min_torch"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q ${source_args[@]+"${source_args[@]}"})
# Offline, the venv's own pip does: there is no index to upgrade it from.
[[ -n "${WHEELHOUSE:-}" ]] || step "upgrading pip" "${pip[@]}" --upgrade pip
if [[ "${verdict:-}" == ok && ( "$use_system_torch" == 1 || -z "${TORCH_SPEC:-}" ) ]]; then
  echo "setup: keeping torch $present"
  pin_file="$(mktemp)"
  trap 'rm -f "$pin_file"' EXIT
  echo "torch==$present" > "$pin_file"
  pin=(--constraint "$pin_file")
else
  [[ -z "${present:-}" ]] || echo "setup: replacing torch $present with $torch_spec"
  step "installing $torch_spec" "${pip[@]}" "$torch_spec"
fi
pip+=(${pin[@]+"${pin[@]}"})
step "installing the build requirements" "${pip[@]}" "${base_reqs[@]}"
"$venv/bin/python" -c "import fairseq" >/dev/null 2>&1 \
  || step "installing $fairseq_spec (compiles its extensions)" "${pip[@]}" --no-deps --no-build-isolation "$fairseq_spec"
step "installing fairseq's requirements and the tools" "${pip[@]}" "${reqs[@]}"
step "installing one_layer_lottery (editable)" "${pip[@]}" --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" -c "import one_layer_lottery, torch, fairseq; print('setup: torch', torch.__version__, 'fairseq', fairseq.__version__)"
echo "$want" > "$stamp"
