"""``fairseq-train`` whose Nth checkpoint write stops half-way, so that a test can kill it there.

Usage: ``python stalled_train.py <fairseq-train arguments>`` with, in the environment,
``STALL_MARK`` (a file created once the write is half done), ``STALL_SAVE=N`` (stall in the Nth
``torch.save``: fairseq's own write of ``<checkpoint>.tmp``) or ``STALL_COPY=N`` (stall in the Nth
file copy: ``checkpoint_last.pt`` and the other names of a save), and optionally ``STOCK_COPY=1``
to put back fairseq's own (non-atomic) copy instead of the plugin's.
"""
import io
import os
import shutil
import sys
import time

import torch

STALL_SAVE = int(os.environ.get("STALL_SAVE", "0"))
STALL_COPY = int(os.environ.get("STALL_COPY", "0"))
MARK = os.environ.get("STALL_MARK", "")
_calls = {"save": 0, "copy": 0}
_save, _copyfile = torch.save, shutil.copyfile


def _write_half_and_wait(kind, name, data, f):
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    with open(MARK, "w") as m:
        m.write(f"{kind} {name}\n")
    time.sleep(3600)  # the test kills the process here


def slow_save(obj, f, *args, **kwargs):
    _calls["save"] += 1
    if _calls["save"] != STALL_SAVE:
        return _save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    _write_half_and_wait("save", getattr(f, "name", f), buf.getvalue(), f)


def slow_copyfile(src, dst, *args, **kwargs):
    _calls["copy"] += 1
    if _calls["copy"] != STALL_COPY:
        return _copyfile(src, dst, *args, **kwargs)
    with open(src, "rb") as s, open(dst, "wb") as d:
        _write_half_and_wait("copy", dst, s.read(), d)


torch.save = slow_save
shutil.copyfile = slow_copyfile

if __name__ == "__main__":
    from fairseq.file_io import PathManager
    from fairseq_cli.train import cli_main

    sys.argv = ["fairseq-train", *sys.argv[1:]]
    if os.environ.get("STOCK_COPY"):
        fairseq_copy = PathManager.__dict__["copy"]
        import one_layer_lottery  # noqa: F401  (a fairseq command line: the plugin patches fairseq here)

        PathManager.copy = fairseq_copy
    cli_main()
