"""The package's one way of writing a file (atomic.py), and the writers that use it."""
import os

import pytest

from one_layer_lottery import curves, sample_corpus
from one_layer_lottery.atomic import atomic_output


def test_a_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_output(path) as tmp:
        assert tmp == f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write("new")
        assert path.read_text() == "old"  # nobody sees the new bytes before they are complete
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_output(path) as tmp:
            with open(tmp, "w") as f:
                f.write("ne")
            raise RuntimeError("half way")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with pytest.raises(FileNotFoundError, match="the directory .*missing does not exist"):
        with atomic_output(tmp_path / "missing" / "out.txt"):
            pass


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
