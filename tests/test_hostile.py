"""Hostile inputs: a fuzzed embedding file, and checkpoints crafted to run code when loaded."""
import os
import pickle
import tempfile
import tracemalloc
from datetime import timedelta

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import USER_DIR, run_cli
from one_layer_lottery.models.one_layer_transformer.embedding_file import EmbeddingFileError, read_embeddings

DIM = 4
VOCAB = {"der": 4, "die": 5, "das": 6, "<unk>": 3}
FLAG = "--encoder-embed-path"
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _read(content: bytes):
    """read_embeddings on a file holding ``content``: (vectors, rows) or the EmbeddingFileError."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "emb.txt")
        with open(path, "wb") as f:
            f.write(content)
        try:
            vectors, rows = read_embeddings(path, DIM, VOCAB, FLAG)
        except EmbeddingFileError as e:
            assert str(e).startswith(f"{FLAG} {path}"), str(e)  # names the flag and the file
            return e
    # Whatever is accepted is sane: one finite row per distinct dictionary token.
    assert vectors.dtype == torch.float32 and vectors.shape == (len(rows), DIM)
    assert len(set(rows)) == len(rows) and set(rows) <= set(VOCAB.values())
    assert torch.isfinite(vectors).all()
    return vectors, rows


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(content):
    _read(content)


_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "1e999", "0x1p3", "1_0", "", "--1", "١٢", "1e", "NaN", "+0.5"]),
    st.text(max_size=6),
)
_token = st.one_of(st.sampled_from(sorted(VOCAB) + ["unknown", "", " "]), st.text(max_size=5))
_line = st.builds(lambda tok, vals, sep: sep.join([tok, *vals]), _token, st.lists(_number, min_size=0, max_size=6),
                  st.sampled_from([" ", "  ", "\t"]))
_count = st.one_of(st.integers(0, 8), st.sampled_from(["10" * 30, "-1", "²", "x"]))
_header = st.builds(lambda n, d: f"{n} {d}", _count, st.sampled_from([DIM, DIM, 3, 5, 10 ** 12]))


@FUZZ
@given(_header, st.lists(_line, max_size=8), st.sampled_from(["\n", "\r\n"]), st.integers(0, 10_000),
       st.booleans())
def test_structured_files_with_truncation(header, lines, newline, cut, truncate):
    content = newline.join([header, *lines]).encode("utf-8", "surrogatepass") + newline.encode()
    if truncate:
        content = content[: cut % (len(content) + 1)]
    _read(content)


def _vector(*values):
    return " ".join(repr(float(v)) for v in values)


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"\xff\xfe 3 4\n", "not valid UTF-8"),
    ("²  4\n".encode(), "expected a header"),  # isdigit() is true, int() would refuse it
    (("9" * 5000 + " 4\n").encode(), "implausibly large"),  # int() refuses > 4300 digits
    (f"2 4\nder {_vector(1, 2, 3, 4)}\nder {_vector(1, 2, 3, 4)}\n".encode(), "line 3: token 'der' already has"),
    (f"1 4\nder {_vector(1, 2, 3, 4)}\ndie {_vector(1, 2, 3, 4)}\n".encode(), "more vectors than the header's count 1"),
    (f"3 4\nder {_vector(1, 2, 3, 4)}\n".encode(), "announces 3 vectors but the file has 1"),
    (f"1 4\nder {_vector(1, 2, 3)}\n".encode(), "expected a token and 4 numbers, got 3"),
    (f"1 4\nder 1 2 inf 4\n".encode(), "NaN or infinite"),
    (f"1 4\nder 1 2 1e999 4\n".encode(), "NaN or infinite"),
    (f"1 4\nder 1 2 x 4\n".encode(), "not a number"),
    (f"1 4\nunknown {_vector(1, 2, 3, 4)}\n".encode(), "no token of the dictionary"),
    (b"1 5\n", "dimension 5, the model's embedding has 4"),
])
def test_each_problem_has_its_message(content, message):
    result = _read(content)
    assert isinstance(result, EmbeddingFileError) and message in str(result), result


def test_huge_counts_and_long_lines_allocate_little(tmp_path):
    # A header announcing 10**17 vectors, and a 3 MiB line without a newline: neither is read
    # into memory beyond the 1 MiB line limit.
    cases = {
        "count.txt": (f"{10 ** 17} 4\nder {_vector(1, 2, 3, 4)}\n".encode(), "announces 100000000000000000 vectors"),
        "line.txt": (b"1 4\nder " + b"1 " * (3 << 19), "line 2: line longer than 1048576 bytes"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        tracemalloc.start()
        try:
            with pytest.raises(EmbeddingFileError, match=message):
                read_embeddings(str(path), DIM, VOCAB, FLAG)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, (name, peak)


def test_a_valid_file_reads_back_exactly():
    vectors, rows = _read(f"3 4\nder {_vector(1, 2, 3, 4)}\nunknown {_vector(0, 0, 0, 0)}\n"
                          f"die {_vector(-0.5, 1e-30, 3e30, 0)}\n".encode())
    assert rows == [4, 5]
    assert torch.equal(vectors, torch.tensor([[1, 2, 3, 4], [-0.5, 1e-30, 3e30, 0]], dtype=torch.float32))


# -- checkpoints that run code when unpickled -------------------------------------------------
class _CreatesADirectory:
    """Unpickling this calls os.mkdir(path): harmless, and visible."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    payload = _CreatesADirectory(marker)
    # The payload is live: a plain unpickler runs it.
    pickle.loads(pickle.dumps(payload))
    assert marker.is_dir()
    marker.rmdir()
    path = tmp_path / "checkpoint_evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra_state": payload, "cfg": None}, path)
    return path, marker


@pytest.mark.slow
def test_generate_refuses_a_code_running_checkpoint(sample_bin, evil_checkpoint):
    path, marker = evil_checkpoint
    proc = run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", path, "--cpu",
                   "--batch-size", 8, check=False)
    assert proc.returncode != 0
    assert "Weights only load failed" in proc.stderr and "posix.mkdir" in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_train_restore_file_refuses_a_code_running_checkpoint(sample_bin, evil_checkpoint, tmp_path):
    path, marker = evil_checkpoint
    proc = run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en",
                   "--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 1,
                   "--decoder-layers", 1,
                   "--optimizer", "adam", "--lr", 1e-3, "--max-tokens", 1000, "--max-update", 1, "--cpu",
                   "--restore-file", path, "--save-dir", tmp_path / "save", "--num-workers", 0, check=False)
    assert proc.returncode != 0
    assert "Weights only load failed" in proc.stderr and "posix.mkdir" in proc.stderr
    assert not marker.exists()
    assert not list((tmp_path / "save").glob("*.pt"))
