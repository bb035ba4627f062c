"""Crash-safe checkpoint copies for fairseq-train.

fairseq-fixed 0.12.3.1 writes the first file of a save atomically (``<name>.tmp``, then a
rename) but copies it to the other names of the same save (``checkpoint_last.pt``,
``checkpoint_best.pt``, ...) with ``PathManager.copy``, a plain ``shutil.copyfile`` when the
path is local: a process killed during that copy leaves a truncated ``checkpoint_last.pt``,
and the next run, which resumes from that file, cannot load it.

Importing this module (the plugin does) makes local copies atomic: the bytes go to
``<destination>.tmp`` in the same directory, are flushed to disk, and ``os.replace`` puts the
file in place. A kill leaves either the previous complete file or the new complete file.
Remote paths (ioPath handlers) keep fairseq's behaviour.
"""
import logging
import os
import shutil

import torch
from fairseq.file_io import PathManager

logger = logging.getLogger(__name__)

# fairseq's own copy, also when this module is imported a second time (another --user-dir path).
_fairseq_copy = getattr(PathManager.copy, "fairseq_copy", PathManager.copy)


def load_state(path: str, error=ValueError) -> dict:
    """A fairseq checkpoint's saved dict, on CPU with ``weights_only=True``; every problem is raised
    as ``error`` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{path}: no such checkpoint") from None
    except Exception as e:
        raise error(f"{path}: cannot be loaded as a fairseq checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise error(f"{path}: not a fairseq checkpoint (no 'model' state)")
    return state


def config_section(state: dict, section: str) -> dict:
    """``cfg[section]`` of a loaded fairseq checkpoint as a dict (old checkpoints: their ``args``);
    {} when it has neither."""
    cfg = state.get("cfg")
    if cfg is not None and cfg.get(section) is not None:
        return dict(cfg[section])
    args = state.get("args")
    return vars(args) if args is not None else {}


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """Copy ``src_path`` to ``dst_path`` so that ``dst_path`` is never seen half written."""
    if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
        return _fairseq_copy(src_path, dst_path, overwrite=overwrite)
    if not overwrite and os.path.exists(dst_path):
        logger.error(f"not copying {src_path} to {dst_path}: the destination exists")
        return False
    tmp = dst_path + ".tmp"
    try:
        shutil.copyfile(src_path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


atomic_copy.fairseq_copy = _fairseq_copy
PathManager.copy = staticmethod(atomic_copy)
