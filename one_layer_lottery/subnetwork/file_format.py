"""The compact subnetwork file format, and how its bytes are written.

A self-describing binary format that is safe to read (no pickle):

    offset  size    content (integers little-endian)
    0       8       magic  b"\\x89OLLSUB\\n"
    8       4       format version (uint32), currently 2 (version 1 files are read too)
    12      8       header length H (uint64)
    20      H       header: a UTF-8 JSON object (the model config, dictionaries, seed and init
                    recipe, the list of sections, the checksum of the random weights)
    20+H    P       payload: the sections the header lists, back to back, each at its
                    (offset, nbytes) relative to the payload start; together they tile it exactly
    20+H+P  32      sha256 of every byte before it

Sections: each dictionary (fairseq's ``dict.txt`` text), each mask, each stored tensor (raw
little-endian bytes) and, for random weights that IteRand redrew, each weight's generation.
Masks and generations are packed fields of ``bits`` bits per weight in row-major order
(``ceil(numel * bits / 8)`` bytes): bit b of weight w is bit ``(w * bits + b) % 8`` of byte
``(w * bits + b) // 8``, least significant first. A mask holds, per weight, how many of the
``--mask-coats`` coats keep it (``bits = ceil(log2(coats + 1))``; one coat: 1 bit, 1 = kept, as in
version 1, whose mask entries have no ``bits``). A generation is the IteRand round whose draw the
weight holds (0: the seed's). Weights shared by several state-dict keys are stored once, with all
their names. Reading: file_reader.py; what the sections mean for a model: compact.py.
"""
import hashlib
import io
import json
import math
import struct
from typing import Any, Dict, List

import numpy as np
import torch

from ..console import ToolError

MAGIC = b"\x89OLLSUB\n"
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # version 1: one bit per mask entry, no generations
FORMAT_NAME = "one_layer_lottery.subnetwork"
PREFIX = struct.Struct("<8sIQ")  # magic, version, header length
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 16 << 20

DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CompactFileError(ToolError):
    """A compact subnetwork file is malformed, corrupt, or does not match what loads it."""


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def encode_floats(value):
    """JSON has no inf/nan: the non-finite floats of a config are tagged (``decode_floats`` undoes it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        return {k: encode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode_floats(v) for v in value]
    return value


def decode_floats(value):
    if isinstance(value, dict):
        if set(value) == {"$float"} and value["$float"] in ("inf", "-inf", "nan"):
            return float(value["$float"])
        return {k: decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_floats(v) for v in value]
    return value


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack_fields(values: torch.Tensor, bits: int) -> bytes:
    """Non-negative integers (or booleans) as ``bits``-bit fields, row-major, least significant bit first."""
    v = values.detach().to("cpu").reshape(-1).numpy().astype(np.int64)
    planes = np.empty((v.size, bits), dtype=np.uint8)
    for b in range(bits):
        planes[:, b] = (v >> b) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_fields(raw, count: int, bits: int):
    """``count`` fields of ``bits`` bits as a numpy array (uint8 for one bit, int64 else); None when
    the padding bits after them are not zero."""
    planes = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    if planes[count * bits:].any():
        return None
    planes = planes[:count * bits].reshape(count, bits)
    if bits == 1:
        return planes[:, 0]
    values = np.zeros(count, dtype=np.int64)
    for b in range(bits):
        values |= planes[:, b].astype(np.int64) << b
    return values


def dictionary_digest(d) -> str:
    """sha256 of a fairseq Dictionary's symbols in index order (what the model's rows mean)."""
    return hashlib.sha256("\n".join(d.symbols).encode("utf-8")).hexdigest()


def dictionary_text(d) -> bytes:
    buf = io.StringIO()
    d.save(buf)
    return buf.getvalue().encode("utf-8")


class Sections:
    """Collects payload sections and hands out their (offset, nbytes)."""

    def __init__(self):
        self.parts: List[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> Dict[str, int]:
        entry = {"offset": self.size, "nbytes": len(data)}
        self.parts.append(data)
        self.size += len(data)
        return entry


def encode(header: Dict[str, Any], sections: List[bytes]) -> bytes:
    """The file's bytes for ``header`` (its sections already listed with offsets) and payload."""
    body = json.dumps(encode_floats(header), allow_nan=False, sort_keys=True, separators=(",", ":")).encode()
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(f"the header is {len(body)} bytes, more than the format's {MAX_HEADER_BYTES}")
    h = hashlib.sha256()
    parts = [PREFIX.pack(MAGIC, VERSION, len(body)), body, *sections]
    for p in parts:
        h.update(p)
    return b"".join(parts) + h.digest()
