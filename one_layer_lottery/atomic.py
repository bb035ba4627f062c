"""The one way this package writes a file: to a temporary name next to it, then renamed.

Readers never see a half-written file: until the rename the previous file (or none) is in place.
"""
import contextlib
import os


@contextlib.contextmanager
def atomic_output(path):
    """Yields ``<path>.tmp`` to write; on success it is flushed to disk and replaces ``path`` in one step.

    On failure the temporary file is removed and an existing ``path`` is left untouched. A write
    killed outright leaves at most one ``<path>.tmp``, which the next write of ``path`` replaces.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: the directory {directory} does not exist")
    tmp = path + ".tmp"
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before it takes the name
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
