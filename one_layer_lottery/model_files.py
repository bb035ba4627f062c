"""The one way every tool opens a model file: a fairseq checkpoint or a compact subnetwork file.

The kind of a file is told from its first bytes before anything is unpickled; checkpoints are read
with ``weights_only=True`` (the allow-list: fairseq_patches.py). Every problem raises an
``InputFileError`` whose message is ``<file>: <what is wrong>`` and says what was expected; torch's
advice to turn ``weights_only`` off is never passed on.
"""
import os
import pickle
import re
import zipfile
from typing import Tuple

import torch

from .console import ToolError
from .fairseq_checkpoint import config_section
from .fairseq_patches import loading_fairseq_checkpoints
from .subnetwork.file_format import MAGIC as COMPACT_MAGIC
from .subnetwork.file_reader import read as read_compact

CHECKPOINT = "checkpoint"
COMPACT = "compact"
WHAT = {CHECKPOINT: "a fairseq checkpoint", COMPACT: "a compact subnetwork file"}
ONE_LAYER_MODEL = "one_layer_transformer"

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_MAGIC = b"\x80"  # torch.save's legacy format starts with a pickle protocol opcode


class InputFileError(ToolError):
    """A model file that cannot be used: missing, unreadable, corrupt, or of the wrong kind."""


def _expected(accept) -> str:
    return " or ".join(WHAT[kind] for kind in accept)


def file_kind(path, accept=(CHECKPOINT, COMPACT)) -> str:
    """CHECKPOINT or COMPACT, from the first bytes of ``path``; raises InputFileError for anything
    else, and for a kind not in ``accept``."""
    path = os.fspath(path)
    expected = _expected(accept)
    if os.path.isdir(path):
        raise InputFileError(f"{path}: is a directory (expected {expected})")
    try:
        with open(path, "rb") as f:
            head = f.read(len(COMPACT_MAGIC))
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file (expected {expected})") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot be read ({e.strerror}; expected {expected})") from None
    if not head:
        raise InputFileError(f"{path}: the file is empty (expected {expected})")
    if head.startswith(COMPACT_MAGIC):
        kind = COMPACT
    elif head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
        kind = CHECKPOINT
    else:
        raise InputFileError(f"{path}: not {_expected((CHECKPOINT, COMPACT))} (unknown leading bytes {head[:4]!r})")
    if kind not in accept:
        hint = (f"; `python -m one_layer_lottery.export expand {path} CHECKPOINT.pt` turns it into one"
                if kind == COMPACT else "")
        raise InputFileError(f"{path}: is {WHAT[kind]}, but {expected} is expected here{hint}")
    return kind


def _unpickle_problem(error: Exception) -> str:
    text = str(error)
    if "Weights only load failed" not in text:
        return f"is corrupt ({_first_line(error)}; expected {WHAT[CHECKPOINT]})"
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    uses = f" (it uses {found.group(1)})" if found else ""
    return (f"holds Python objects that need code to unpickle{uses}; it is refused, as loading it could run "
            "untrusted code")


def load_checkpoint_state(path) -> dict:
    """The saved dict of a fairseq checkpoint, on CPU, with ``weights_only=True``; tensors of the
    current file format are memory-mapped, so checking a large file costs little."""
    path = os.fspath(path)
    file_kind(path, (CHECKPOINT,))
    mmap = zipfile.is_zipfile(path)
    try:
        with loading_fairseq_checkpoints():
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise InputFileError(f"{path}: {_unpickle_problem(e)}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise _unreadable(path, e) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise InputFileError(f"{path}: a torch file but not {WHAT[CHECKPOINT]} (no 'model' state)")
    return state


def _unreadable(path: str, error: Exception) -> InputFileError:
    detail = _first_line(error) or type(error).__name__
    return InputFileError(f"{path}: truncated or corrupt, torch cannot read it ({detail}; expected "
                          f"{WHAT[CHECKPOINT]})")


def check_checkpoint_file(path) -> None:
    """Raise InputFileError unless ``path`` is a whole fairseq checkpoint file, as far as its first
    bytes and (current format) its zip directory tell: cheap, nothing is unpickled. fairseq's own
    command lines run it on every --path (fairseq_patches.py)."""
    path = os.fspath(path)
    file_kind(path, (CHECKPOINT,))
    with open(path, "rb") as f:
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return  # the legacy format has no directory to check
    try:
        zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _unreadable(path, e) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().split("\n")[0]
    return text.split(". ")[0][:160]


def open_model_file(path, accept=(CHECKPOINT, COMPACT)):
    """(kind, content): a checkpoint's saved dict, or a parsed and validated compact file."""
    kind = file_kind(path, accept)
    if kind == COMPACT:
        return kind, read_compact(path)
    return kind, load_checkpoint_state(path)


def model_name(state: dict) -> Tuple[str, str]:
    """(registered model name, --arch) that a loaded checkpoint records; "" where it does not say."""
    model = config_section(state, "model")
    name, arch = str(model.get("_name") or ""), str(model.get("arch") or "")
    return name or arch, arch or name


def require_one_layer(state: dict, path) -> None:
    """Raise InputFileError unless the checkpoint holds a one_layer_transformer."""
    name, arch = model_name(state)
    if not (name == ONE_LAYER_MODEL or arch.startswith(ONE_LAYER_MODEL)):
        raise InputFileError(f"{os.fspath(path)}: a checkpoint of the {arch or 'unknown'!r} model; a "
                             f"{ONE_LAYER_MODEL} checkpoint (fairseq-train --user-dir ... --arch "
                             f"{ONE_LAYER_MODEL}_*) is expected here")
