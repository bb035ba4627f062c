"""Compact subnetwork files: the seed, the init recipe and one bit per weight per virtual layer.

A found subnetwork is fully described by the random seed, the init recipe, its masks and the
few tensors that were trained or read from a file (LayerNorm affine parameters, trained biases,
pre-trained embeddings). This module writes and reads exactly that, in a self-describing binary
format that is safe to read (no pickle):

    offset  size    content (integers little-endian)
    0       8       magic  b"\\x89OLLSUB\\n"
    8       4       format version (uint32), currently 1
    12      8       header length H (uint64)
    20      H       header: a UTF-8 JSON object (the model config, dictionaries, seed and init
                    recipe, the list of sections, the checksum of the random weights)
    20+H    P       payload: the sections the header lists, back to back, each at its
                    (offset, nbytes) relative to the payload start; together they tile it exactly
    20+H+P  32      sha256 of every byte before it

Sections: each dictionary (fairseq's ``dict.txt`` text), each mask (``ceil(numel / 8)`` bytes,
bit i of byte j is weight ``8 j + i`` in row-major order, 1 = kept) and each stored tensor (raw
little-endian bytes). Weights shared by several state-dict keys are stored once, with all
their names.

Reading validates the magic, the version, every length against the file size, the checksum,
then every header field, before anything is allocated from a count in the file; every problem
raises ``CompactFileError`` naming it. Loading bounds what the stored config would allocate,
rebuilds the model on CPU from it (the random weights are regenerated from the seed), checks
that the file lists exactly that model's tensors, checks the regenerated weights' sha256 against
the file (a torch that draws other random numbers is refused), sets every score so that the
model's mask is the stored one, and checks that it is, bit for bit.
"""
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import struct
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .masking import PRUNE_METHODS, RandomWeight, num_kept, select_mask

logger = logging.getLogger(__name__)

MAGIC = b"\x89OLLSUB\n"
VERSION = 1
FORMAT_NAME = "one_layer_lottery.subnetwork"
_PREFIX = struct.Struct("<8sIQ")  # magic, version, header length
_DIGEST = 32
MAX_HEADER_BYTES = 16 << 20
_MAX_NDIM = 8
_MAX_DIM = 1 << 40
# Checked before a model is built from a file's config: a legitimate model is far inside these.
_MAX_LAYERS = 1024
_MAX_WIDTH = 1 << 16
_MAX_POSITIONS = 1 << 20
DEFAULT_MAX_ELEMENTS = 1 << 32  # random weights + scores a loaded model may have (16 GiB in fp32)

DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

RECIPE = ("every random weight is drawn on CPU by one_layer_lottery.masking.init.WeightInit.sample "
          "from a torch.Generator seeded with sha256(f'{seed}/{tensor name}')[:8] (little-endian, "
          "masked to 63 bits); pre-trained embedding rows are stored, not drawn")


class CompactFileError(ValueError):
    """A compact subnetwork file is malformed, corrupt, or does not match what loads it."""


# -- plain values ----------------------------------------------------------------------------

def plain(value: Any, where: str = "cfg") -> Any:
    """``value`` as JSON-like Python (dict/list/str/int/float/bool/None); raises on anything else.

    Namespaces (fairseq's legacy model configs) become dicts, enums their string value.
    """
    import argparse

    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Enum):
        return str(value.value) if isinstance(value.value, str) else str(value.name)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string")
            out[k] = plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where}: a value of type {type(value).__name__} cannot be stored in a plain file")


def _encode_floats(value):
    # JSON has no inf/nan: non-finite floats of a config are tagged, and restored by _decode_floats.
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        return {k: _encode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode_floats(v) for v in value]
    return value


def _decode_floats(value):
    if isinstance(value, dict):
        if set(value) == {"$float"} and value["$float"] in ("inf", "-inf", "nan"):
            return float(value["$float"])
        return {k: _decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_floats(v) for v in value]
    return value


@contextlib.contextmanager
def atomic_output(path: str):
    """Yields a temporary path next to ``path``; on success it replaces ``path`` in one step.

    On failure the temporary file is removed and an existing ``path`` is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: the directory {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


# -- the file format -------------------------------------------------------------------------

def pack_mask(mask: torch.Tensor) -> bytes:
    """Row-major bits, least significant bit first, 1 = kept."""
    return np.packbits(mask.detach().to("cpu").reshape(-1).numpy().astype(np.uint8), bitorder="little").tobytes()


def encode(header: Dict[str, Any], sections: List[bytes]) -> bytes:
    """The file's bytes for ``header`` (its sections already listed with offsets) and payload."""
    body = json.dumps(_encode_floats(header), allow_nan=False, sort_keys=True, separators=(",", ":")).encode()
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(f"the header is {len(body)} bytes, more than the format's {MAX_HEADER_BYTES}")
    h = hashlib.sha256()
    parts = [_PREFIX.pack(MAGIC, VERSION, len(body)), body, *sections]
    for p in parts:
        h.update(p)
    return b"".join(parts) + h.digest()


class _Sections:
    """Collects payload sections and hands out their (offset, nbytes)."""

    def __init__(self):
        self.parts: List[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> Dict[str, int]:
        entry = {"offset": self.size, "nbytes": len(data)}
        self.parts.append(data)
        self.size += len(data)
        return entry


@dataclass
class CompactFile:
    """A parsed and validated compact file: the header and a view of the payload."""

    header: Dict[str, Any]
    payload: memoryview
    where: str

    def _section(self, entry) -> memoryview:
        return self.payload[entry["offset"]:entry["offset"] + entry["nbytes"]]

    def mask(self, entry) -> torch.Tensor:
        """The stored boolean mask of ``entry`` (one of ``header['masks']``)."""
        numel = _numel(entry["shape"])
        raw = np.frombuffer(self._section(entry), dtype=np.uint8)
        bits = np.unpackbits(raw, bitorder="little")
        if bits[numel:].any():
            raise CompactFileError(f"{self.where}: mask {entry['names'][0]}: the padding bits after the "
                                   f"last weight are not zero")
        bits = bits[:numel]
        kept = int(np.count_nonzero(bits))
        if kept != entry["kept"]:
            raise CompactFileError(f"{self.where}: mask {entry['names'][0]} has {kept} bits set but its "
                                   f"header says {entry['kept']}")
        return torch.from_numpy(bits.astype(np.bool_)).reshape(entry["shape"])

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
        from fairseq.data import Dictionary

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


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def _fail(where, msg):
    raise CompactFileError(f"{where}: {msg}")


def _check_int(where, what, value, lo=0, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"{what} must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        _fail(where, f"{what} = {value} is outside [{lo}, {hi if hi is not None else 'inf'}]")
    return value


def _check_type(where, what, value, types):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        _fail(where, f"{what} has the wrong type (bool)")
    if not isinstance(value, types):
        _fail(where, f"{what} has the wrong type ({type(value).__name__})")
    return value


def _check_float(where, what, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(where, f"{what} must be a finite number, got {value!r}")
    return float(value)


def _check_shape(where, what, shape, min_dim):
    _check_type(where, f"{what} shape", shape, list)
    if len(shape) > _MAX_NDIM:
        _fail(where, f"{what} has {len(shape)} dimensions (at most {_MAX_NDIM})")
    for d in shape:
        _check_int(where, f"{what} dimension", d, min_dim, _MAX_DIM)
    return shape


def _check_names(where, what, names, seen):
    _check_type(where, f"{what} names", names, list)
    if not names:
        _fail(where, f"{what} has no name")
    for n in names:
        _check_type(where, f"{what} name", n, str)
        if n in seen:
            _fail(where, f"the name {n!r} appears twice")
        seen.add(n)


def _check_sha(where, what, value):
    _check_type(where, what, value, str)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        _fail(where, f"{what} is not a sha256 hex digest")
    return value


def parse(data: bytes, where: str = "<bytes>") -> CompactFile:
    """Validate ``data`` completely and return the parsed file; raises CompactFileError."""
    data = memoryview(data)
    size = len(data)
    fixed = _PREFIX.size + _DIGEST
    if size < fixed:
        _fail(where, f"truncated: {size} bytes, the smallest valid file has more than {fixed}")
    magic, version, hlen = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        _fail(where, "not a one_layer_lottery compact subnetwork file (wrong magic bytes)")
    if version != VERSION:
        _fail(where, f"format version {version} is not supported (this reader knows version {VERSION})")
    if hlen > MAX_HEADER_BYTES:
        _fail(where, f"the header length {hlen} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if hlen > size - fixed:
        _fail(where, f"truncated: the header needs {hlen} bytes but only {size - fixed} remain")
    if hashlib.sha256(data[:size - _DIGEST]).digest() != bytes(data[size - _DIGEST:]):
        _fail(where, "checksum mismatch: the file is corrupt or truncated")
    try:
        header = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + hlen]).decode("utf-8"),
                            parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        _fail(where, f"the header is not valid JSON ({type(e).__name__}: {str(e)[:200]})")
    payload = data[_PREFIX.size + hlen:size - _DIGEST]
    _check_header(where, header, len(payload))
    try:
        header["cfg"] = _decode_floats(header["cfg"])
    except RecursionError:
        _fail(where, "the header's cfg is nested too deeply")
    return CompactFile(header, payload, where)


def _check_header(where, header, payload_size):
    _check_type(where, "the header", header, dict)
    for key in ("format", "cfg", "mask", "dictionaries", "masks", "tensors", "random_weights", "seed"):
        if key not in header:
            _fail(where, f"the header has no {key!r} field")
    if header["format"] != FORMAT_NAME:
        _fail(where, f"the header's format is {header['format']!r}, expected {FORMAT_NAME!r}")
    cfg = _check_type(where, "cfg", header["cfg"], dict)
    for group in ("model", "task"):
        _check_type(where, f"cfg.{group}", cfg.get(group), dict)
    _check_int(where, "seed", header["seed"], -(1 << 63), (1 << 64) - 1)
    mask = _check_type(where, "mask", header["mask"], dict)
    if mask.get("method") not in PRUNE_METHODS:
        _fail(where, f"mask.method must be one of {', '.join(PRUNE_METHODS)}, got {mask.get('method')!r}")
    ratio = _check_float(where, "mask.prune_ratio", mask.get("prune_ratio"))
    if not 0.0 < ratio < 1.0:
        _fail(where, f"mask.prune_ratio = {ratio} is not strictly between 0 and 1")
    _check_float(where, "mask.threshold", mask.get("threshold"))

    spans = []
    seen = set()
    dicts = _check_type(where, "dictionaries", header["dictionaries"], list)
    roles = set()
    for d in dicts:
        _check_type(where, "a dictionary entry", d, dict)
        if d.get("role") not in ("source", "target") or d["role"] in roles:
            _fail(where, f"a dictionary has role {d.get('role')!r} (expected source and target once each)")
        roles.add(d["role"])
        _check_type(where, f"the {d['role']} dictionary's lang", d.get("lang"), (str, type(None)))
        _check_int(where, f"the {d['role']} dictionary's size", d.get("size"), 1, 1 << 32)
        _check_sha(where, f"the {d['role']} dictionary's sha256", d.get("sha256"))
        spans.append(_check_span(where, f"the {d['role']} dictionary", d, payload_size))
    if roles != {"source", "target"}:
        _fail(where, "the file must hold a source and a target dictionary")

    for m in _check_type(where, "masks", header["masks"], list):
        _check_type(where, "a mask entry", m, dict)
        _check_names(where, "a mask", m.get("names"), seen)
        what = f"mask {m['names'][0]}"
        numel = _numel(_check_shape(where, what, m.get("shape"), 1))
        _check_int(where, f"{what} kept count", m.get("kept"), 0, numel)
        spans.append(_check_span(where, what, m, payload_size))
        if m["nbytes"] != (numel + 7) // 8:
            _fail(where, f"{what}: {m['nbytes']} bytes for {numel} bits (expected {(numel + 7) // 8})")

    for t in _check_type(where, "tensors", header["tensors"], list):
        _check_type(where, "a tensor entry", t, dict)
        _check_names(where, "a tensor", t.get("names"), seen)
        what = f"tensor {t['names'][0]}"
        if not isinstance(t.get("dtype"), str) or t["dtype"] not in DTYPES:
            _fail(where, f"{what}: unknown dtype {t.get('dtype')!r}")
        numel = _numel(_check_shape(where, what, t.get("shape"), 0))
        spans.append(_check_span(where, what, t, payload_size))
        itemsize = torch.empty((), dtype=DTYPES[t["dtype"]]).element_size()
        if t["nbytes"] != numel * itemsize:
            _fail(where, f"{what}: {t['nbytes']} bytes for {numel} elements of {t['dtype']}")

    rnd = _check_type(where, "random_weights", header["random_weights"], dict)
    _check_sha(where, "random_weights.sha256", rnd.get("sha256"))
    _check_names(where, "random_weights", rnd.get("names"), seen)
    _check_int(where, "random_weights.numel", rnd.get("numel"), 0, 1 << 62)

    # The sections tile the payload: no gap, no overlap, nothing after the last one.
    end = 0
    for offset, nbytes, what in sorted(spans):
        if offset != end:
            _fail(where, f"{what} starts at payload offset {offset}, expected {end} (sections must tile the payload)")
        end = offset + nbytes
    if end != payload_size:
        _fail(where, f"the sections cover {end} bytes of a {payload_size}-byte payload")


def _check_span(where, what, entry, payload_size):
    offset = _check_int(where, f"{what} offset", entry.get("offset"), 0, payload_size)
    nbytes = _check_int(where, f"{what} length", entry.get("nbytes"), 0, payload_size)
    if offset + nbytes > payload_size:
        _fail(where, f"{what} ends at payload byte {offset + nbytes}, past the payload's {payload_size} bytes")
    return offset, nbytes, what


def read(path: str) -> CompactFile:
    """Read and validate a compact file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()  # the whole file: its real size, never a size read from the file
    except OSError as e:
        raise CompactFileError(f"{path}: cannot read the compact file ({e.strerror})") from None
    return parse(data, path)


def is_compact_file(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


# -- models <-> files ------------------------------------------------------------------------

def dictionary_digest(d) -> str:
    """sha256 of a fairseq Dictionary's symbols in index order (what the model's rows mean)."""
    return hashlib.sha256("\n".join(d.symbols).encode("utf-8")).hexdigest()


def _dictionary_text(d) -> bytes:
    buf = io.StringIO()
    d.save(buf)
    return buf.getvalue().encode("utf-8")


@dataclass
class _Parts:
    """The state-dict keys of a model, grouped by tensor: masks (scores), random, stored."""

    scores: List[List[str]]
    random: List[List[str]]
    stored: List[List[str]]
    tensors: Dict[str, torch.Tensor]


def _groups(model) -> Dict[int, List[str]]:
    groups: Dict[int, List[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(value), []).append(key)
    return groups


def _classify(model, pretrained_prefixes=()) -> _Parts:
    state = model.state_dict(keep_vars=True)
    random_keys = {f"{name}.weight" if name else "weight"
                   for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, RandomWeight)}
    scores, random, stored = [], [], []
    for names in _groups(model).values():
        names = sorted(names)
        if all(n == "scores" or n.endswith(".scores") for n in names):
            scores.append(names)
        elif all(n in random_keys for n in names) and not any(
                n.startswith(p) for n in names for p in pretrained_prefixes):
            random.append(names)
        else:
            stored.append(names)
    order = list(state)
    key = lambda names: order.index(names[0])  # noqa: E731  (state-dict order)
    return _Parts(sorted(scores, key=key), sorted(random, key=key), sorted(stored, key=key), state)


def random_digest(state: Dict[str, torch.Tensor], groups: List[List[str]]) -> Tuple[str, int]:
    """sha256 (and element count) of the random weights, by name, dtype, shape and bytes."""
    h = hashlib.sha256()
    numel = 0
    for names in sorted(groups):
        t = state[names[0]]
        h.update(json.dumps([names, str(t.dtype), list(t.shape)]).encode())
        h.update(_raw_bytes(t))
        numel += t.numel()
    return h.hexdigest(), numel


def _pretrained_prefixes(model_cfg) -> Tuple[str, ...]:
    prefixes = []
    if _get(model_cfg, "encoder_embed_path"):
        prefixes.append("encoder.embed_tokens.")
        if _get(model_cfg, "share_all_embeddings"):
            prefixes.append("decoder.embed_tokens.")
    if _get(model_cfg, "decoder_embed_path"):
        prefixes.append("decoder.embed_tokens.")
    return tuple(prefixes)


def _get(cfg, name, default=None):
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def build_header_and_payload(model, cfg, task, source: Optional[Dict[str, Any]] = None) -> bytes:
    """The compact file's bytes for a loaded ``one_layer_transformer`` model.

    ``cfg`` is the run's full fairseq config and ``task`` its translation task (dictionaries).
    Refuses (ValueError) a model whose random weights are not what its seed regenerates here.
    """
    from .models.one_layer_transformer.model import OneLayerTransformerModel

    if not isinstance(model, OneLayerTransformerModel):
        raise ValueError(f"a compact file holds a one_layer_transformer, not a {type(model).__name__}")
    if sys.byteorder != "little":  # raw tensor bytes are little-endian
        raise ValueError("writing compact files needs a little-endian machine")
    cfg = plain(cfg)
    model_cfg = cfg["model"]
    opts = model.mask_options
    parts = _classify(model, _pretrained_prefixes(model_cfg))

    # The loader regenerates the random weights: check here that this gives the model's own.
    stored_model_cfg = dict(model_cfg, encoder_embed_path=None, decoder_embed_path=None)
    fresh = _build_model(dict(cfg, model=stored_model_cfg), task)
    fresh_state = fresh.state_dict()
    for names in parts.random:
        a, b = parts.tensors[names[0]].detach().cpu(), fresh_state[names[0]]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            raise ValueError(
                f"the model's random weight {names[0]} is not what seed {opts.seed} regenerates with this "
                f"torch ({torch.__version__}): it cannot be stored as a seed (trained in another precision, "
                "or with a torch that draws other random numbers?)")
    rnd_sha, rnd_numel = random_digest(fresh_state, parts.random)
    del fresh, fresh_state

    sections = _Sections()
    dictionaries = []
    for role, d in (("source", task.source_dictionary), ("target", task.target_dictionary)):
        lang = task.cfg.source_lang if role == "source" else task.cfg.target_lang
        entry = {"role": role, "lang": lang, "size": len(d), "sha256": dictionary_digest(d),
                 "path": os.path.join(str(task.cfg.data).split(os.pathsep)[0], f"dict.{lang}.txt")}
        entry.update(sections.add(_dictionary_text(d)))
        dictionaries.append(entry)

    masks = []
    m = opts.mask
    for names in parts.scores:
        mask = select_mask(parts.tensors[names[0]].detach().cpu(), m.method, m.prune_ratio, m.threshold)
        entry = {"names": names, "shape": list(mask.shape), "kept": int(mask.sum())}
        entry.update(sections.add(pack_mask(mask)))
        masks.append(entry)

    tensors = []
    for names in parts.stored:
        t = parts.tensors[names[0]].detach().cpu()
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"{names[0]} has dtype {t.dtype}, which the compact format does not store")
        entry = {"names": names, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
        entry.update(sections.add(_raw_bytes(t)))
        tensors.append(entry)

    header = {
        "format": FORMAT_NAME,
        "arch": model_cfg.get("_name") or model_cfg.get("arch"),
        "cfg": dict(cfg, model=stored_model_cfg,
                    task=dict(cfg["task"], source_lang=dictionaries[0]["lang"], target_lang=dictionaries[1]["lang"])),
        "seed": opts.seed,
        "init": {"weight_init": opts.weight_init.method, "scale_fan": opts.weight_init.scale_fan,
                 "attention_init": opts.attention_init, "score_init": opts.score_init.method,
                 "recipe": RECIPE},
        "mask": {"method": m.method, "prune_ratio": m.prune_ratio, "threshold": m.threshold,
                 "share_mask": opts.share_mask},
        "pretrained_embeddings": {k: model_cfg.get(k) for k in ("encoder_embed_path", "decoder_embed_path")
                                  if model_cfg.get(k)},
        "dictionaries": dictionaries,
        "masks": masks,
        "tensors": tensors,
        "random_weights": {"sha256": rnd_sha, "numel": rnd_numel, "names": [n for g in parts.random for n in g]},
        "torch_version": torch.__version__,
        "source": source or {},
    }
    return encode(header, sections.parts)


def write(path: str, model, cfg, task, source: Optional[Dict[str, Any]] = None) -> int:
    """Write the compact file of ``model`` to ``path`` (atomically); returns its size in bytes."""
    data = build_header_and_payload(model, cfg, task, source)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    logger.info(f"wrote {path}: {len(data)} bytes")
    return len(data)


# -- loading ---------------------------------------------------------------------------------

def _build_model(cfg: Dict[str, Any], task):
    from fairseq import models
    from omegaconf import OmegaConf

    return models.build_model(OmegaConf.create(cfg)["model"], task)


def _check_model_cfg(where, model_cfg):
    """The stored model config, completed by its architecture, with every shape option in bounds.

    Checked before any model is built from a file's config; returns the resolved options.
    """
    import argparse

    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    from .models.one_layer_transformer.model import OneLayerTransformerModel, _resolve

    name = model_cfg.get("_name")
    if not isinstance(name, str) or ARCH_MODEL_REGISTRY.get(name) is not OneLayerTransformerModel:
        _fail(where, f"cfg.model._name is {name!r}, not a one_layer_transformer architecture")
    try:
        ns = argparse.Namespace(**model_cfg)
        ARCH_CONFIG_REGISTRY[name](ns)
        args = _resolve(ns)
    except Exception as e:  # a config the architecture cannot complete
        raise CompactFileError(f"{where}: the stored model configuration is not valid: "
                               f"{type(e).__name__}: {e}") from None
    limits = {"encoder_layers": (1, _MAX_LAYERS), "decoder_layers": (1, _MAX_LAYERS),
              "encoder_embed_dim": (1, _MAX_WIDTH), "decoder_embed_dim": (1, _MAX_WIDTH),
              "encoder_ffn_embed_dim": (1, _MAX_WIDTH), "decoder_ffn_embed_dim": (1, _MAX_WIDTH),
              "encoder_attention_heads": (1, _MAX_WIDTH), "decoder_attention_heads": (1, _MAX_WIDTH),
              "max_source_positions": (1, _MAX_POSITIONS), "max_target_positions": (1, _MAX_POSITIONS)}
    for field, (lo, hi) in limits.items():
        _check_int(where, f"cfg.model.{field}", getattr(args, field), lo, hi)
    return args


def _elements_bound(args, src_size: int, tgt_size: int) -> int:
    """An upper bound on the elements (random weights, scores, position tables) the model allocates."""
    de, dd = args.encoder_embed_dim, args.decoder_embed_dim
    fe, fd = args.encoder_ffn_embed_dim, args.decoder_ffn_embed_dim
    enc_layer = 4 * de * de + 2 * de * fe
    dec_layer = 2 * dd * dd + 2 * dd * de + 2 * dd * dd + 2 * dd * fd
    # Every layer its own random weight and scores, plus one shared copy; embeddings and output.
    weights = (args.encoder_layers + 1) * enc_layer + (args.decoder_layers + 1) * dec_layer
    weights += src_size * de + 2 * tgt_size * dd
    positions = (args.max_source_positions + 2) * de + (args.max_target_positions + 2) * dd
    return 2 * weights + positions


def _make_task(cf: CompactFile, cfg, data: Optional[str]):
    """The translation task: from ``data`` (its dictionaries must match the file's) or from the file."""
    from fairseq import tasks
    from fairseq.tasks import TASK_REGISTRY
    from fairseq.tasks.translation import TranslationTask
    from omegaconf import OmegaConf

    where = cf.where
    name = cfg["task"].get("_name")
    task_cls = TASK_REGISTRY.get(name) if isinstance(name, str) else None
    if task_cls is None or not issubclass(task_cls, TranslationTask):
        _fail(where, f"cfg.task._name is {name!r}; compact files hold translation models")
    entries = {d["role"]: d for d in cf.header["dictionaries"]}
    if data is None:
        task_cfg = OmegaConf.create(cfg)["task"]
        return task_cls(task_cfg, cf.dictionary(entries["source"]), cf.dictionary(entries["target"]))
    cfg["task"]["data"] = os.fspath(data)
    try:
        task = tasks.setup_task(OmegaConf.create(cfg)["task"])
    except FileNotFoundError as e:
        raise CompactFileError(f"--data {data}: cannot read the dictionaries ({e})") from None
    for role, d in (("source", task.source_dictionary), ("target", task.target_dictionary)):
        entry = entries[role]
        if dictionary_digest(d) != entry["sha256"]:
            dict_path = os.path.join(os.fspath(data), f"dict.{entry['lang']}.txt")
            raise CompactFileError(
                f"wrong dictionary: {dict_path} "
                f"({len(d)} symbols) is not the {role} dictionary the subnetwork in {where} was trained "
                f"with ({entry['size']} symbols{_first_difference(d, cf.dictionary(entry))})")
    return task


def _first_difference(d, stored) -> str:
    for i, (a, b) in enumerate(zip(d.symbols, stored.symbols)):
        if a != b:
            return f"; index {i} is {a!r} here, {b!r} in the file"
    return ""


def scores_for_mask(mask: torch.Tensor, method: str, threshold: float, dtype=torch.float32) -> torch.Tensor:
    """Scores whose mask under ``method`` is exactly ``mask`` (the top-k methods need the
    mask to keep exactly their k). Kept weights get 1 and removed 0 for the top-k rules; for the
    threshold rules values on either side of the threshold (saturated for the sigmoid)."""
    if method in ("super_mask", "topk"):
        return mask.to(dtype)
    if method == "threshold":
        t = torch.tensor(threshold, dtype=dtype)
        hi = t + 1 if bool(t + 1 > t) else torch.nextafter(t, torch.tensor(math.inf, dtype=dtype))
        return torch.where(mask, hi, t - 1)
    # sigmoid(100) rounds to 1 and sigmoid(-1000) to 0 in every float type.
    return torch.where(mask, torch.tensor(100.0, dtype=dtype), torch.tensor(-1000.0, dtype=dtype))


def load(path: str, data: Optional[str] = None, max_elements: int = DEFAULT_MAX_ELEMENTS):
    """Rebuild the model of a compact file on CPU: returns (model in eval mode, cfg dict, task).

    ``data``: a data directory whose dictionaries must be the file's (checked); without it the
    file's own dictionaries are used. A config that would allocate more than ``max_elements``
    weights is refused before anything is built.
    """
    return load_parsed(read(path), data, max_elements)


def load_parsed(cf: CompactFile, data: Optional[str] = None, max_elements: int = DEFAULT_MAX_ELEMENTS):
    where, header = cf.where, cf.header
    cfg = header["cfg"]
    args = _check_model_cfg(where, cfg["model"])
    try:
        task = _make_task(cf, cfg, data)
    except CompactFileError:
        raise
    except Exception as e:  # a task config fairseq refuses: report it as this file's problem
        raise CompactFileError(f"{where}: the stored task configuration does not load: "
                               f"{type(e).__name__}: {e}") from None
    bound = _elements_bound(args, len(task.source_dictionary), len(task.target_dictionary))
    if bound > max_elements:
        _fail(where, f"the stored config would allocate up to {bound} weights, more than the limit {max_elements}")

    try:
        model = _build_model(cfg, task)
    except Exception as e:  # a config fairseq refuses: report it as this file's problem
        raise CompactFileError(f"{where}: the stored model configuration does not build: "
                               f"{type(e).__name__}: {e}") from None
    model.eval()
    _check_layout(where, header, model)
    m = model.mask_options.mask
    stated = header["mask"]
    if (m.method, m.prune_ratio, m.threshold) != (stated["method"], stated["prune_ratio"], stated["threshold"]):
        _fail(where, f"the header's mask rule {stated} disagrees with the stored config's "
                     f"({m.method}, {m.prune_ratio}, {m.threshold})")
    state = model.state_dict()
    stored_names = {n for t in header["tensors"] for n in t["names"]}
    rnd_groups = [g for g in _classify(model).random if g[0] not in stored_names]
    digest, _ = random_digest(state, rnd_groups)
    if digest != header["random_weights"]["sha256"]:
        _fail(where, f"the random weights regenerated from seed {header['seed']} do not match the file's "
                     f"checksum: this torch ({torch.__version__}) draws other random numbers than the one that "
                     f"wrote the file ({header.get('torch_version')}), or the init code changed")

    new_state = dict(state)
    masks = {}
    for entry in header["masks"]:
        mask = cf.mask(entry)
        if m.method in ("super_mask", "topk"):
            k = num_kept(mask.numel(), m.prune_ratio)
            if entry["kept"] != k:
                _fail(where, f"mask {entry['names'][0]} keeps {entry['kept']} of {mask.numel()} weights, but "
                             f"--prune-ratio {m.prune_ratio} with {m.method} keeps exactly {k}")
        scores = scores_for_mask(mask, m.method, m.threshold, state[entry["names"][0]].dtype)
        new_state.update({n: scores for n in entry["names"]})
        masks[entry["names"][0]] = mask
    for entry in header["tensors"]:
        value = cf.tensor(entry)
        for n in entry["names"]:
            if value.dtype != state[n].dtype:
                _fail(where, f"tensor {n} is stored as {entry['dtype']}, the model's is {state[n].dtype}")
            new_state[n] = value
    model.load_state_dict(new_state, strict=True)
    # The masks the rebuilt model computes must be the stored ones, bit for bit.
    rebuilt = model.state_dict()
    for name, mask in masks.items():
        got = select_mask(rebuilt[name], m.method, m.prune_ratio, m.threshold)
        if not torch.equal(got, mask):
            _fail(where, f"mask {name} cannot be reproduced by --prune-method {m.method} "
                         f"(threshold {m.threshold}): {int((got != mask).sum())} bits differ")
    return model, cfg, task


def _check_layout(where, header, model):
    """The file's masks, tensors and random weights are exactly the tensors of the model built
    from its config."""
    state = model.state_dict()
    parts = _classify(model)
    kind_of = {}
    for kind, groups in (("mask", parts.scores), ("random", parts.random), ("tensor", parts.stored)):
        for g in groups:
            kind_of[tuple(g)] = kind
    listed = [(tuple(sorted(e["names"])), "mask", e["shape"]) for e in header["masks"]]
    listed += [(tuple(sorted(e["names"])), "tensor", e["shape"]) for e in header["tensors"]]
    covered = {n for names, _, _ in listed for n in names}
    for names, kind, shape in listed:
        expected = kind_of.get(names)
        # A random weight may be stored as a tensor (pre-trained embeddings); nothing else moves.
        if expected is None or (expected != kind and not (expected == "random" and kind == "tensor")):
            _fail(where, f"the file's {kind} {list(names)} is not a {kind} of the model built from the stored "
                         f"config (there: {expected or 'absent'})")
        if list(shape) != list(state[names[0]].shape):
            _fail(where, f"{kind} {names[0]} has shape {list(shape)}, the model built from the stored config "
                         f"has {list(state[names[0]].shape)}")
    random_expected = sorted(n for g in parts.random for n in g if n not in covered)
    if sorted(header["random_weights"]["names"]) != random_expected:
        _fail(where, "the file's list of random weights is not this model's")
    missing = sorted(set(state) - covered - set(random_expected))
    if missing:
        _fail(where, f"the file does not hold the model's tensors {missing[:3]}")


def expand(path: str, out: str, data: Optional[str] = None) -> None:
    """Rebuild a normal fairseq checkpoint (for ``fairseq-generate --user-dir ...``) from a compact file.

    The checkpoint's scores are 1/0 (or values either side of the threshold): they select the
    stored masks, but they are not the trained scores, so it is for decoding, not for resuming.
    """
    cf = read(path)
    model, cfg, task = load_parsed(cf, data)
    source = cf.header.get("source") or {}
    ckpt = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {}, "num_updates": int(source.get("num_updates") or 0)}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "compact_source": os.fspath(path)},
        "last_optimizer_state": None,
    }
    with atomic_output(out) as tmp:
        torch.save(ckpt, tmp)
