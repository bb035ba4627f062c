"""A stand-in for .venv/bin (the scripts' VENV) where the commands a GPU or a long run would need are
stubs: the real python and tools are reached through wrappers, so the scripts' decisions can be
checked on a machine without GPUs."""
import stat
from pathlib import Path

from conftest import BIN

# lib.sh's CUDA query answered with $STUB_CUDA_DEVICES; every other call goes to the real python.
PYTHON = f"""#!/usr/bin/env bash
if [[ "${{1:-}}" == -c && "${{2:-}}" == *torch.cuda.device_count* ]]; then
  echo "${{STUB_CUDA_DEVICES:-0}}"
  exit 0
fi
exec {BIN / "python"} "$@"
"""

# Records its arguments, one per line, in $STUB_ARGS (a file that must not exist yet).
RECORD_ARGS = """#!/usr/bin/env bash
[[ ! -e "$STUB_ARGS" ]] || { echo "stub called twice" >&2; exit 3; }
printf '%s\\n' "$@" > "$STUB_ARGS"
"""


def _write(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def make(folder, stubs, real=()):
    """A VENV folder whose bin/ has python (the CUDA query stubbed), the ``stubs`` (name -> bash
    script) and wrappers of the ``real`` tools of this environment. Returns the folder."""
    folder = Path(folder)
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    _write(bin_dir / "python", PYTHON)
    for name in real:
        _write(bin_dir / name, f'#!/usr/bin/env bash\nexec {BIN / name} "$@"\n')
    for name, text in stubs.items():
        _write(bin_dir / name, text)
    return folder


def recorded_args(path):
    """The arguments a RECORD_ARGS stub received (None when it was not called)."""
    path = Path(path)
    return path.read_text().split("\n")[:-1] if path.exists() else None


def flag(args, name):
    """The value after the last ``name`` in an argument list (fairseq: the last one wins)."""
    positions = [i for i, a in enumerate(args) if a == name]
    assert positions, f"{name} not in {args}"
    return args[positions[-1] + 1]
