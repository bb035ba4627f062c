"""Checks of a compact file against the model its config builds, before and after building it.

Before: the stored config is bounded (shape options, and an upper bound of the weights it would
allocate), and the dictionaries are the file's. After: the file lists exactly the model's
tensors, and a mask can be set through scores (``scores_for_mask``).
"""
import argparse
import math
import os
from typing import Optional

import torch
from fairseq import tasks
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY
from fairseq.tasks.translation import TranslationTask
from omegaconf import OmegaConf

from ..masking import MaskConfig
from ..masking.coats import coat_kept_counts, level_bits
from ..masking.selection import TOPK_METHODS
from ..models.one_layer_transformer.model import OneLayerTransformerModel
from ..models.one_layer_transformer.options import resolve_options
from ..models.one_layer_transformer.state_keys import EXTRA_STATE_KEY
from .file_format import CompactFileError, dictionary_digest
from .file_reader import CompactFile
from .header_checks import check_int, fail
from .model_tensors import group_tensors

# A legitimate model is far inside these.
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 16
MAX_POSITIONS = 1 << 20


def check_model_cfg(where, model_cfg):
    """The stored model config, completed by its architecture, with every shape option in bounds.

    Checked before any model is built from a file's config; returns the resolved options.
    """
    name = model_cfg.get("_name")
    if not isinstance(name, str) or ARCH_MODEL_REGISTRY.get(name) is not OneLayerTransformerModel:
        fail(where, f"cfg.model._name is {name!r}, not a one_layer_transformer architecture")
    try:
        ns = argparse.Namespace(**model_cfg)
        ARCH_CONFIG_REGISTRY[name](ns)
        args = resolve_options(ns)
    except Exception as e:  # a config the architecture cannot complete
        raise CompactFileError(f"{where}: the stored model configuration is not valid: "
                               f"{type(e).__name__}: {e}") from None
    limits = {"encoder_layers": (1, MAX_LAYERS), "decoder_layers": (1, MAX_LAYERS),
              "encoder_embed_dim": (1, MAX_WIDTH), "decoder_embed_dim": (1, MAX_WIDTH),
              "encoder_ffn_embed_dim": (1, MAX_WIDTH), "decoder_ffn_embed_dim": (1, MAX_WIDTH),
              "encoder_attention_heads": (1, MAX_WIDTH), "decoder_attention_heads": (1, MAX_WIDTH),
              "max_source_positions": (1, MAX_POSITIONS), "max_target_positions": (1, MAX_POSITIONS)}
    for field, (lo, hi) in limits.items():
        check_int(where, f"cfg.model.{field}", getattr(args, field), lo, hi)
    return args


def elements_bound(args, src_size: int, tgt_size: int) -> int:
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


def make_task(cf: CompactFile, cfg, data: Optional[str]):
    """The translation task: from ``data`` (its dictionaries must match the file's) or from the file."""
    where = cf.where
    name = cfg["task"].get("_name")
    task_cls = TASK_REGISTRY.get(name) if isinstance(name, str) else None
    if task_cls is None or not issubclass(task_cls, TranslationTask):
        fail(where, f"cfg.task._name is {name!r}; compact files hold translation models")
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


def scores_for_mask(levels: torch.Tensor, method: str, threshold: float, dtype=torch.float32) -> torch.Tensor:
    """Scores whose mask under ``method`` is exactly ``levels`` (how many coats keep each weight;
    0/1 or boolean for one coat). The top-k rules get the level itself (the top-k of each coat is
    then exactly the weights at or above its level, when ``check_levels`` passed); the threshold
    rules values on either side of the threshold (saturated for the sigmoid)."""
    if method in TOPK_METHODS:
        return levels.to(dtype)
    mask = levels > 0
    if method == "threshold":
        t = torch.tensor(threshold, dtype=dtype)
        hi = t + 1 if bool(t + 1 > t) else torch.nextafter(t, torch.tensor(math.inf, dtype=dtype))
        return torch.where(mask, hi, t - 1)
    # sigmoid(100) rounds to 1 and sigmoid(-1000) to 0 in every float type.
    return torch.where(mask, torch.tensor(100.0, dtype=dtype), torch.tensor(-1000.0, dtype=dtype))


def check_levels(where, entry, levels: torch.Tensor, mask: MaskConfig, version: int) -> torch.Tensor:
    """``levels`` (a stored mask) is one the model's rule can select: the bit width of its coats, and
    for the top-k rules exactly as many weights in each coat as the coat keeps."""
    name = entry["names"][0]
    bits = entry.get("bits", 1) if version >= 2 else 1
    if bits != level_bits(mask.coats):
        fail(where, f"mask {name} has {bits} bits per weight, --mask-coats {mask.coats} needs {level_bits(mask.coats)}")
    if int(levels.max()) > mask.coats:
        fail(where, f"mask {name} holds level {int(levels.max())}, above --mask-coats {mask.coats}")
    if mask.method in TOPK_METHODS:
        counts = coat_kept_counts(levels.numel(), mask.prune_ratio, mask.coats)
        for coat, k in enumerate(counts, 1):
            kept = int((levels >= coat).sum())
            if kept != k:
                what = f"mask {name}" if mask.coats == 1 else f"coat {coat} of mask {name}"
                coats = "" if mask.coats == 1 else f" in coat {coat} of --mask-coats {mask.coats}"
                fail(where, f"{what} keeps {kept} of {levels.numel()} weights, but --prune-ratio "
                            f"{mask.prune_ratio} with {mask.method} keeps exactly {k}{coats}")
    return levels


def check_layout(where, header, model):
    """The file's masks, tensors and random weights are exactly the tensors of the model built
    from its config."""
    state = model.state_dict()
    parts = group_tensors(model)
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
            fail(where, f"the file's {kind} {list(names)} is not a {kind} of the model built from the stored "
                        f"config (there: {expected or 'absent'})")
        # The record of the options grows with every option added; loading checks what it says.
        if list(shape) != list(state[names[0]].shape) and names != (EXTRA_STATE_KEY,):
            fail(where, f"{kind} {names[0]} has shape {list(shape)}, the model built from the stored config "
                        f"has {list(state[names[0]].shape)}")
    random_expected = sorted(n for g in parts.random for n in g if n not in covered)
    if sorted(header["random_weights"]["names"]) != random_expected:
        fail(where, "the file's list of random weights is not this model's")
    missing = sorted(set(state) - covered - set(random_expected))
    if missing:
        fail(where, f"the file does not hold the model's tensors {missing[:3]}")
