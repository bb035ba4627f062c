"""Crash-safe checkpoint copies for fairseq-train.

fairseq-fixed 0.12.3.1 writes the first file of a save atomically (``<name>.tmp``, then a
rename) but copies it to the other names of the same save (``checkpoint_last.pt``,
``checkpoint_best.pt``, ...) with ``PathManager.copy``, a plain ``shutil.copyfile`` when the
path is local: a process killed during that copy leaves a truncated ``checkpoint_last.pt``,
and the next run, which resumes from that file, cannot load it.

Importing this module (the plugin does) makes local copies atomic (``atomic_output``): the bytes
go to ``<destination>.tmp``, are flushed to disk, and ``os.replace`` puts the file in place. A
kill leaves either the previous complete file or the new complete file. Remote paths (ioPath
handlers) keep fairseq's behaviour.
"""
import logging
import os
import shutil

from fairseq.file_io import PathManager

from .atomic import atomic_output

logger = logging.getLogger(__name__)

# fairseq's own copy, also when this module is imported a second time (another --user-dir path).
fairseq_copy = getattr(PathManager.copy, "fairseq_copy", PathManager.copy)


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """Copy ``src_path`` to ``dst_path`` so that ``dst_path`` is never seen half written."""
    if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
        return fairseq_copy(src_path, dst_path, overwrite=overwrite)
    if not overwrite and os.path.exists(dst_path):
        logger.error(f"not copying {src_path} to {dst_path}: the destination exists")
        return False
    with atomic_output(dst_path) as tmp:
        shutil.copyfile(src_path, tmp)
    return True


atomic_copy.fairseq_copy = fairseq_copy
PathManager.copy = staticmethod(atomic_copy)
