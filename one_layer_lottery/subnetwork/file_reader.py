"""Reading a compact subnetwork file (the format: file_format.py).

Reading validates the magic, the version, every length against the file size, the checksum,
then every header field, before anything is allocated from a count in the file; every problem
raises ``CompactFileError`` naming it.
"""
import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Dict

import numpy as np
import torch
from fairseq.data import Dictionary

from .file_format import (
    DIGEST_BYTES,
    DTYPES,
    MAGIC,
    VERSION,
    MAX_HEADER_BYTES,
    PREFIX,
    SUPPORTED_VERSIONS,
    CompactFileError,
    decode_floats,
    dictionary_digest,
    numel,
    unpack_fields,
)
from .header_checks import check_header, fail


@dataclass
class CompactFile:
    """A parsed and validated compact file: the header and a view of the payload."""

    header: Dict[str, Any]
    payload: memoryview
    where: str
    version: int = VERSION

    def _section(self, entry) -> memoryview:
        return self.payload[entry["offset"]:entry["offset"] + entry["nbytes"]]

    def _fields(self, what, entry):
        values = unpack_fields(self._section(entry), numel(entry["shape"]), entry.get("bits", 1))
        if values is None:
            raise CompactFileError(f"{self.where}: {what} {entry['names'][0]}: the padding bits after the "
                                   f"last weight are not zero")
        return values

    def levels(self, entry) -> torch.Tensor:
        """The stored mask of ``entry`` (one of ``header['masks']``): per weight, how many coats keep it (uint8)."""
        levels = self._fields("mask", entry)
        kept = int(np.count_nonzero(levels))
        if kept != entry["kept"]:
            what = "bits set" if entry.get("bits", 1) == 1 else "weights kept"
            raise CompactFileError(f"{self.where}: mask {entry['names'][0]} has {kept} {what} but its "
                                   f"header says {entry['kept']}")
        return torch.from_numpy(levels.astype(np.uint8)).reshape(entry["shape"])

    def mask(self, entry) -> torch.Tensor:
        """The weights the stored mask of ``entry`` keeps (by any coat), boolean."""
        return self.levels(entry) > 0

    def generations(self, entry) -> torch.Tensor:
        """The IteRand generation of every weight of ``entry`` (one of ``header['generations']``), int64."""
        values = torch.from_numpy(self._fields("generation field", entry).astype(np.int64))
        if values.numel() and int(values.max()) > entry["rounds"]:
            raise CompactFileError(f"{self.where}: {entry['names'][0]} names generation {int(values.max())}, "
                                   f"after the file's {entry['rounds']} rounds")
        return values.reshape(entry["shape"])

    def tensor(self, entry) -> torch.Tensor:
        """A copy of the stored tensor of ``entry`` (one of ``header['tensors']``)."""
        dtype = DTYPES[entry["dtype"]]
        data = bytearray(self._section(entry))
        if not data:
            return torch.empty(entry["shape"], dtype=dtype)
        if dtype == torch.bool and any(b > 1 for b in set(data)):
            raise CompactFileError(f"{self.where}: tensor {entry['names'][0]} is boolean but holds other bytes "
                                   "than 0 and 1")
        return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(entry["shape"]).clone()

    def dictionary(self, entry):
        """The fairseq Dictionary stored in ``entry`` (one of ``header['dictionaries']``)."""
        try:
            text = bytes(self._section(entry)).decode("utf-8")
        except UnicodeDecodeError:
            raise CompactFileError(f"{self.where}: the {entry['role']} dictionary is not valid UTF-8") from None
        d = Dictionary()
        try:
            d.add_from_file(io.StringIO(text))
        except (ValueError, RuntimeError) as e:
            raise CompactFileError(f"{self.where}: the {entry['role']} dictionary does not parse: {e}") from None
        if len(d) != entry["size"] or dictionary_digest(d) != entry["sha256"]:
            raise CompactFileError(f"{self.where}: the stored {entry['role']} dictionary does not match its "
                                   f"size/sha256 in the header")
        return d


def parse(data: bytes, where: str = "<bytes>") -> CompactFile:
    """Validate ``data`` completely and return the parsed file; raises CompactFileError."""
    data = memoryview(data)
    size = len(data)
    fixed = PREFIX.size + DIGEST_BYTES
    if size < fixed:
        fail(where, f"truncated: {size} bytes, the smallest valid file has more than {fixed}")
    magic, version, hlen = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        fail(where, "not a one_layer_lottery compact subnetwork file (wrong magic bytes)")
    if version not in SUPPORTED_VERSIONS:
        fail(where, f"format version {version} is not supported (this reader knows versions "
                    f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    if hlen > MAX_HEADER_BYTES:
        fail(where, f"the header length {hlen} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if hlen > size - fixed:
        fail(where, f"truncated: the header needs {hlen} bytes but only {size - fixed} remain")
    if hashlib.sha256(data[:size - DIGEST_BYTES]).digest() != bytes(data[size - DIGEST_BYTES:]):
        fail(where, "checksum mismatch: the file is corrupt or truncated")
    try:
        header = json.loads(bytes(data[PREFIX.size:PREFIX.size + hlen]).decode("utf-8"),
                            parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        fail(where, f"the header is not valid JSON ({type(e).__name__}: {str(e)[:200]})")
    payload = data[PREFIX.size + hlen:size - DIGEST_BYTES]
    check_header(where, header, len(payload), version)
    try:
        header["cfg"] = decode_floats(header["cfg"])
    except RecursionError:
        fail(where, "the header's cfg is nested too deeply")
    return CompactFile(header, payload, where, version)


def read(path: str) -> CompactFile:
    """Read and validate a compact file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()  # the whole file: its real size, never a size read from the file
    except OSError as e:
        raise CompactFileError(f"{path}: cannot read the compact file ({e.strerror})") from None
    return parse(data, path)


def _refuse_constant(name):
    raise ValueError(f"{name} is not allowed")
