"""Validation of a compact file's header, before anything is allocated from a count in it.

Types, bounds, sections that tile the payload exactly, mask sizes; every problem raises
``CompactFileError`` naming it. What the options in the header mean is checked where they enter
the model (models/one_layer_transformer/options.py), when the file is loaded.
"""
import math

import torch

from .file_format import DTYPES, FORMAT_NAME, CompactFileError, numel, packed_bytes

MAX_NDIM = 8
MAX_DIM = 1 << 40
MAX_MASK_BITS = 8  # up to 255 coats
MAX_ROUNDS = (1 << 31) - 1


def fail(where, msg):
    raise CompactFileError(f"{where}: {msg}")


def check_int(where, what, value, lo=0, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"{what} must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        fail(where, f"{what} = {value} is outside [{lo}, {hi if hi is not None else 'inf'}]")
    return value


def check_type(where, what, value, types):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        fail(where, f"{what} has the wrong type (bool)")
    if not isinstance(value, types):
        fail(where, f"{what} has the wrong type ({type(value).__name__})")
    return value


def check_float(where, what, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(where, f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_shape(where, what, shape, min_dim):
    check_type(where, f"{what} shape", shape, list)
    if len(shape) > MAX_NDIM:
        fail(where, f"{what} has {len(shape)} dimensions (at most {MAX_NDIM})")
    for d in shape:
        check_int(where, f"{what} dimension", d, min_dim, MAX_DIM)
    return shape


def check_names(where, what, names, seen):
    check_type(where, f"{what} names", names, list)
    if not names:
        fail(where, f"{what} has no name")
    for n in names:
        check_type(where, f"{what} name", n, str)
        if n in seen:
            fail(where, f"the name {n!r} appears twice")
        seen.add(n)


def check_sha(where, what, value):
    check_type(where, what, value, str)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        fail(where, f"{what} is not a sha256 hex digest")
    return value


def check_header(where, header, payload_size, version):
    check_type(where, "the header", header, dict)
    for key in ("format", "cfg", "mask", "dictionaries", "masks", "tensors", "random_weights", "seed",
                *(("generations",) if version >= 2 else ())):
        if key not in header:
            fail(where, f"the header has no {key!r} field")
    if header["format"] != FORMAT_NAME:
        fail(where, f"the header's format is {header['format']!r}, expected {FORMAT_NAME!r}")
    cfg = check_type(where, "cfg", header["cfg"], dict)
    for group in ("model", "task"):
        check_type(where, f"cfg.{group}", cfg.get(group), dict)
    check_int(where, "seed", header["seed"], -(1 << 63), (1 << 64) - 1)
    mask = check_type(where, "mask", header["mask"], dict)
    check_type(where, "mask.method", mask.get("method"), str)  # loading compares the rule with cfg.model's
    check_float(where, "mask.prune_ratio", mask.get("prune_ratio"))
    check_float(where, "mask.threshold", mask.get("threshold"))

    spans = []
    seen = set()
    dicts = check_type(where, "dictionaries", header["dictionaries"], list)
    roles = set()
    for d in dicts:
        check_type(where, "a dictionary entry", d, dict)
        if d.get("role") not in ("source", "target") or d["role"] in roles:
            fail(where, f"a dictionary has role {d.get('role')!r} (expected source and target once each)")
        roles.add(d["role"])
        check_type(where, f"the {d['role']} dictionary's lang", d.get("lang"), (str, type(None)))
        check_int(where, f"the {d['role']} dictionary's size", d.get("size"), 1, 1 << 32)
        check_sha(where, f"the {d['role']} dictionary's sha256", d.get("sha256"))
        spans.append(check_span(where, f"the {d['role']} dictionary", d, payload_size))
    if roles != {"source", "target"}:
        fail(where, "the file must hold a source and a target dictionary")

    for m in check_type(where, "masks", header["masks"], list):
        check_type(where, "a mask entry", m, dict)
        check_names(where, "a mask", m.get("names"), seen)
        what = f"mask {m['names'][0]}"
        count = numel(check_shape(where, what, m.get("shape"), 1))
        check_int(where, f"{what} kept count", m.get("kept"), 0, count)
        spans.append(check_span(where, what, m, payload_size))
        if version >= 2:
            bits = check_int(where, f"{what} bits", m.get("bits"), 1, MAX_MASK_BITS)
        elif "bits" in m:
            fail(where, f"{what} has a bit width, which format version 1 does not have")
        else:
            bits = 1
        check_packed(where, what, m["nbytes"], count, bits)

    redrawn = set()  # generation fields name random weights, which random_weights lists too
    for g in check_type(where, "generations", header.get("generations", []), list):
        check_type(where, "a generation entry", g, dict)
        check_names(where, "a generation field", g.get("names"), redrawn)
        what = f"generation field {g['names'][0]}"
        count = numel(check_shape(where, what, g.get("shape"), 1))
        rounds = check_int(where, f"{what} rounds", g.get("rounds"), 1, MAX_ROUNDS)
        bits = check_int(where, f"{what} bits", g.get("bits"), rounds.bit_length(), rounds.bit_length())
        spans.append(check_span(where, what, g, payload_size))
        check_packed(where, what, g["nbytes"], count, bits)

    for t in check_type(where, "tensors", header["tensors"], list):
        check_type(where, "a tensor entry", t, dict)
        check_names(where, "a tensor", t.get("names"), seen)
        what = f"tensor {t['names'][0]}"
        if not isinstance(t.get("dtype"), str) or t["dtype"] not in DTYPES:
            fail(where, f"{what}: unknown dtype {t.get('dtype')!r}")
        count = numel(check_shape(where, what, t.get("shape"), 0))
        spans.append(check_span(where, what, t, payload_size))
        itemsize = torch.empty((), dtype=DTYPES[t["dtype"]]).element_size()
        if t["nbytes"] != count * itemsize:
            fail(where, f"{what}: {t['nbytes']} bytes for {count} elements of {t['dtype']}")

    rnd = check_type(where, "random_weights", header["random_weights"], dict)
    check_sha(where, "random_weights.sha256", rnd.get("sha256"))
    check_names(where, "random_weights", rnd.get("names"), seen)
    check_int(where, "random_weights.numel", rnd.get("numel"), 0, 1 << 62)

    # The sections tile the payload: no gap, no overlap, nothing after the last one.
    end = 0
    for offset, nbytes, what in sorted(spans):
        if offset != end:
            fail(where, f"{what} starts at payload offset {offset}, expected {end} (sections must tile the payload)")
        end = offset + nbytes
    if end != payload_size:
        fail(where, f"the sections cover {end} bytes of a {payload_size}-byte payload")


def check_packed(where, what, nbytes, count, bits):
    if nbytes != packed_bytes(count, bits):
        fail(where, f"{what}: {nbytes} bytes for {count * bits} bits ({count} weights of {bits} bits; "
                    f"expected {packed_bytes(count, bits)} bytes)")


def check_span(where, what, entry, payload_size):
    offset = check_int(where, f"{what} offset", entry.get("offset"), 0, payload_size)
    nbytes = check_int(where, f"{what} length", entry.get("nbytes"), 0, payload_size)
    if offset + nbytes > payload_size:
        fail(where, f"{what} ends at payload byte {offset + nbytes}, past the payload's {payload_size} bytes")
    return offset, nbytes, what
