"""fairseq's text embedding format (``--encoder-embed-path``): reader and writer.

Format: a header line ``<count> <dim>``, then one line per token: the token and ``dim``
numbers separated by spaces. Every problem is reported with the file and line number.
Memory is bounded by the dictionary, not by the header's count.
"""
import math
import re
from typing import Dict, List, Tuple

import torch

from ...console import ToolError
from ...atomic import atomic_output

_DIGITS = re.compile(r"[0-9]+")


class EmbeddingFileError(ToolError):
    pass


def read_embeddings(path: str, expected_dim: int, vocab: Dict[str, int], flag: str = "--encoder-embed-path",
                    max_line_bytes: int = 1 << 20) -> Tuple[torch.Tensor, List[int]]:
    """Rows of ``path`` for the tokens in ``vocab`` (token -> row index).

    Returns (vectors of shape (n, expected_dim), the row index of each vector).
    """
    where = f"{flag} {path}"
    try:
        f = open(path, "rb")
    except OSError as e:
        raise EmbeddingFileError(f"{where}: cannot open the embedding file ({e.strerror})") from None
    vectors, rows = [], []
    with f:
        header = _line(f, where, 1, max_line_bytes)
        if header is None:
            raise EmbeddingFileError(f"{where}: the file is empty (expected a header '<count> <dim>')")
        parts = header.split()
        # ASCII digits only: str.isdigit() also accepts e.g. superscripts, which int() refuses.
        if len(parts) != 2 or not all(_DIGITS.fullmatch(p) for p in parts):
            raise EmbeddingFileError(f"{where}, line 1: expected a header '<count> <dim>', got {header[:80]!r}")
        if any(len(p) > 18 for p in parts):  # int() refuses very long numbers; none is that large
            raise EmbeddingFileError(f"{where}, line 1: the header's numbers are implausibly large: {header[:80]!r}")
        count, dim = int(parts[0]), int(parts[1])
        if dim != expected_dim:
            raise EmbeddingFileError(
                f"{where}, line 1: the file's vectors have dimension {dim}, the model's embedding has {expected_dim}")
        lineno, seen, found = 1, 0, {}
        while True:
            lineno += 1
            line = _line(f, where, lineno, max_line_bytes)
            if line is None:
                break
            if not line.strip():
                continue
            parts = line.rstrip().split(" ")
            if len(parts) != dim + 1:
                raise EmbeddingFileError(
                    f"{where}, line {lineno}: expected a token and {dim} numbers, got {len(parts) - 1} numbers")
            seen += 1
            if seen > count:
                raise EmbeddingFileError(f"{where}, line {lineno}: more vectors than the header's count {count}")
            idx = vocab.get(parts[0])
            if idx is None:
                continue
            if idx in found:  # also keeps memory bounded by the dictionary
                raise EmbeddingFileError(
                    f"{where}, line {lineno}: token {parts[0][:80]!r} already has a vector (line {found[idx]})")
            found[idx] = lineno
            try:
                values = [float(x) for x in parts[1:]]
            except ValueError:
                raise EmbeddingFileError(f"{where}, line {lineno}: a value is not a number") from None
            if not all(math.isfinite(v) for v in values):
                raise EmbeddingFileError(f"{where}, line {lineno}: a value is NaN or infinite")
            vectors.append(values)
            rows.append(idx)
        if seen != count:
            raise EmbeddingFileError(
                f"{where}: the header announces {count} vectors but the file has {seen} (truncated?)")
    if not rows:
        raise EmbeddingFileError(f"{where}: no token of the dictionary has a vector in the file")
    return torch.tensor(vectors, dtype=torch.float32), rows


def _line(f, where, lineno, max_line_bytes):
    raw = f.readline(max_line_bytes + 1)
    if not raw:
        return None
    if len(raw) > max_line_bytes:
        raise EmbeddingFileError(f"{where}, line {lineno}: line longer than {max_line_bytes} bytes")
    try:
        return raw.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
        raise EmbeddingFileError(f"{where}, line {lineno}: not valid UTF-8") from None


def write_embeddings(path: str, tokens: List[str], weight: torch.Tensor, inputs=()) -> None:
    """Write ``weight`` (one row per token) in the format ``read_embeddings`` reads, never over one of
    ``inputs``."""
    if weight.dim() != 2 or weight.shape[0] != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but a weight of shape {tuple(weight.shape)}")
    with atomic_output(path, inputs) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{weight.shape[0]} {weight.shape[1]}\n")
            for tok, row in zip(tokens, weight.tolist()):
                f.write(tok + " " + " ".join(repr(float(v)) for v in row) + "\n")
