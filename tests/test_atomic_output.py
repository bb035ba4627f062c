"""The package's one way of writing a file (atomic.py), and the writers that use it."""
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from one_layer_lottery import atomic, curves, sample_corpus
from one_layer_lottery.atomic import OutputError, atomic_output, check_output


def test_a_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    with atomic_output(path) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write("new")
        assert path.read_text() == "old"  # nobody sees the new bytes before they are complete
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]
    assert path.stat().st_mode & 0o777 == 0o640  # the replaced file's mode, not the temporary file's 0600


def test_a_new_file_gets_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "new.txt") as tmp:
            open(tmp, "w").close()
    finally:
        os.umask(umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640


def test_each_write_has_its_own_temporary_file_and_a_users_tmp_file_is_never_touched(tmp_path):
    path = tmp_path / "out.txt"
    (tmp_path / "out.txt.tmp").write_text("the user's own file")
    with atomic_output(path) as first, atomic_output(path) as second:
        assert first != second
        for tmp in (first, second):
            with open(tmp, "w") as f:
                f.write(tmp)
    assert path.read_text() == first  # the write that finished last
    assert (tmp_path / "out.txt.tmp").read_text() == "the user's own file"
    assert sorted(os.listdir(tmp_path)) == ["out.txt", "out.txt.tmp"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_output(path) as tmp:
            with open(tmp, "w") as f:
                f.write("ne")
            raise RuntimeError("half way")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("output, message", [
    ("missing/out.txt", "the directory .*missing does not exist"),
    ("a-file/out.txt", "the directory .*a-file does not exist"),
    ("a-dir", "names a directory"),
    ("new-dir/", "names a directory"),
    ("", "the output path is empty"),
    ("input.txt", r"is one of the inputs \(.*input.txt\)"),
    ("symlink.txt", r"is one of the inputs \(.*input.txt\)"),
    ("hardlink.txt", r"is one of the inputs \(.*input.txt\)"),
    ("a-dir/../input.txt", r"is one of the inputs"),
])
def test_an_output_that_cannot_be_written_or_is_an_input_is_refused(output, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.txt").write_text("precious")
    (tmp_path / "a-file").write_text("a file")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "symlink.txt").symlink_to("input.txt")
    os.link(tmp_path / "input.txt", tmp_path / "hardlink.txt")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OutputError, match=message):
        with atomic_output(output, inputs=[str(tmp_path / "input.txt")]) as tmp:
            with open(tmp, "w") as f:
                f.write("would destroy it")
    assert (tmp_path / "input.txt").read_text() == "precious" and sorted(os.listdir(tmp_path)) == before


def test_a_directory_that_cannot_be_written_is_one_error(tmp_path, monkeypatch):
    def denied(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)  # root may write anywhere: the refusal, simulated
    with pytest.raises(OutputError, match=f"out.txt: cannot write in {tmp_path} \\(Permission denied\\)"):
        with atomic_output(tmp_path / "out.txt"):
            pass
    assert os.listdir(tmp_path) == []


def test_an_input_that_is_not_there_yet_is_no_conflict(tmp_path):
    check_output(tmp_path / "out.txt", [tmp_path / "missing.txt"])


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    left = {name: tmp_path / name for name in (f".out.txt.{dead}.k1ll3d.tmp",  # a process killed by -9
                                                f".out.txt.{os.getpid()}.busy.tmp",  # a write still going on
                                                ".out.txt.tmp", "out.txt.tmp", f".other.txt.{dead}.x.tmp")}
    for path in left.values():
        path.write_text("x")
    assert atomic.temporary_name_pattern(tmp_path / "out.txt").match(f".out.txt.{dead}.k1ll3d.tmp")
    with atomic_output(tmp_path / "out.txt") as tmp:
        open(tmp, "w").close()
    killed = f".out.txt.{dead}.k1ll3d.tmp"
    assert sorted(os.listdir(tmp_path)) == sorted({"out.txt", *left} - {killed})


# A writer that stops half way and waits to be interrupted.
# Ctrl-C acts as in a terminal even where the test runner ignores or blocks SIGINT (a background
# job, a CI harness); short sleeps let the main thread act on a signal another thread received.
WRITER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
from one_layer_lottery.atomic import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    with open(tmp, "w") as f:
        f.write("half")
    print("writing", flush=True)
    for _ in range(6000):
        time.sleep(0.1)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_writing_leaves_the_old_file_and_no_temporary_file(signum, tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline() == "writing\n"
        assert len(os.listdir(tmp_path)) == 2  # the temporary file is there while it writes
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signum  # dies of it (Python ends an uncaught KeyboardInterrupt by SIGINT too)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_the_sample_corpus_and_the_curves_leave_nothing_behind_when_they_fail(tmp_path, monkeypatch):
    sample_corpus.write(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(sample_corpus, "generate", lambda seed: {"train": [("a .", "b ."), (None, None)]})
    with pytest.raises(TypeError):
        sample_corpus.write(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    import matplotlib.figure

    def savefig_half(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError("disk full")

    png = tmp_path / "curves.png"
    png.write_bytes(b"previous")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_half)
    with pytest.raises(OSError, match="disk full"):
        curves.plot({"run": [(100, 1.0), (200, 2.0)]}, str(png))
    assert png.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "curves.png"])
