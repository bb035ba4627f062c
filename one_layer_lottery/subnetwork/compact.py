"""Compact subnetwork files: the seed, the init recipe and one bit per weight per virtual layer.

A found subnetwork is fully described by the random seed, the init recipe, its masks (a level per
weight with several coats), the IteRand round each redrawn weight holds (redraws.py) and the few
tensors that were trained or read from a file (LayerNorm affine parameters, trained biases, learned
gains, pre-trained embeddings). This module writes exactly that for a model, and builds the model of
a file again (the format: file_format.py).

Loading bounds what the stored config would allocate, rebuilds the model on CPU from it (the
random weights are regenerated from the seed), checks that the file lists exactly that model's
tensors, checks the regenerated weights' sha256 against the file (a torch that draws other random
numbers is refused), draws the redrawn weights again, sets every score so that the model's mask is
the stored one, and checks that it is, bit for bit.
"""
import os
import sys
from typing import Any, Dict, Optional

import torch
from fairseq import models
from omegaconf import OmegaConf

from ..atomic import atomic_output
from ..fairseq_checkpoint import plain
from ..masking.coats import level_bits
from ..models.one_layer_transformer.model import OneLayerTransformerModel
from ..models.one_layer_transformer.state_keys import RERAND_ROUNDS_KEY
from .file_format import (
    DTYPE_NAMES,
    FORMAT_NAME,
    CompactFileError,
    Sections,
    dictionary_digest,
    dictionary_text,
    encode,
    pack_fields,
    raw_bytes,
)
from .file_reader import CompactFile, read
from .header_checks import fail
from .model_tensors import group_tensors, pretrained_prefixes, random_digest
from .rebuild_checks import check_layout, check_levels, check_model_cfg, elements_bound, make_task, scores_for_mask
from .redraws import generation_entries, redrawn_state

DEFAULT_MAX_ELEMENTS = 1 << 32  # random weights + scores a loaded model may have (16 GiB in fp32)
RECIPE = ("every random weight is drawn on CPU by one_layer_lottery.masking.init.WeightInit.sample "
          "from a torch.Generator seeded with sha256(f'{seed}/{tensor name}')[:8] (little-endian, "
          "masked to 63 bits); pre-trained embedding rows are stored, not drawn")


def _build_model(cfg: Dict[str, Any], task):
    return models.build_model(OmegaConf.create(cfg)["model"], task)


def encode_model(model, cfg, task, source: Optional[Dict[str, Any]] = None) -> bytes:
    """The compact file's bytes for a loaded ``one_layer_transformer`` model.

    ``cfg`` is the run's full fairseq config and ``task`` its translation task (dictionaries).
    Refuses (ValueError) a model whose random weights are not what its seed regenerates here.
    """
    if not isinstance(model, OneLayerTransformerModel):
        raise ValueError(f"a compact file holds a one_layer_transformer, not a {type(model).__name__}")
    if sys.byteorder != "little":  # raw tensor bytes are little-endian
        raise ValueError("writing compact files needs a little-endian machine")
    cfg = plain(cfg)
    model_cfg = cfg["model"]
    opts = model.mask_options
    parts = group_tensors(model, pretrained_prefixes(model_cfg))

    # The loader regenerates the random weights: check here that this gives the model's own
    # (IteRand's redrawn weights: that each value is one of the draws of its seed).
    sections = Sections()
    generations, redrawn = generation_entries(model, parts.random, sections)
    stored_model_cfg = dict(model_cfg, encoder_embed_path=None, decoder_embed_path=None)
    fresh = _build_model(dict(cfg, model=stored_model_cfg), task)
    fresh_state = fresh.state_dict()
    for names in parts.random:
        if names[0] in redrawn:
            continue
        a, b = parts.tensors[names[0]].detach().cpu(), fresh_state[names[0]]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            raise ValueError(
                f"the model's random weight {names[0]} is not what seed {opts.seed} regenerates with this "
                f"torch ({torch.__version__}): it cannot be stored as a seed (trained in another precision, "
                "or with a torch that draws other random numbers?)")
    rnd_sha, rnd_numel = random_digest(fresh_state, parts.random)
    del fresh, fresh_state

    dictionaries = []
    for role, d in (("source", task.source_dictionary), ("target", task.target_dictionary)):
        lang = task.cfg.source_lang if role == "source" else task.cfg.target_lang
        entry = {"role": role, "lang": lang, "size": len(d), "sha256": dictionary_digest(d),
                 "path": os.path.join(str(task.cfg.data).split(os.pathsep)[0], f"dict.{lang}.txt")}
        entry.update(sections.add(dictionary_text(d)))
        dictionaries.append(entry)

    masks = []
    m = opts.mask
    for names in parts.scores:
        levels = m.levels(parts.tensors[names[0]].detach().cpu())
        entry = {"names": names, "shape": list(levels.shape), "bits": level_bits(m.coats),
                 "kept": int(levels.count_nonzero())}
        entry.update(sections.add(pack_fields(levels, entry["bits"])))
        masks.append(entry)

    tensors = []
    for names in parts.stored:
        t = parts.tensors[names[0]].detach().cpu()
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"{names[0]} has dtype {t.dtype}, which the compact format does not store")
        entry = {"names": names, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
        entry.update(sections.add(raw_bytes(t)))
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
        "generations": generations,
        "random_weights": {"sha256": rnd_sha, "numel": rnd_numel, "names": [n for g in parts.random for n in g]},
        "torch_version": torch.__version__,
        "source": source or {},
    }
    return encode(header, sections.parts)


def write(path: str, model, cfg, task, source: Optional[Dict[str, Any]] = None, inputs=()) -> int:
    """Write the compact file of ``model`` to ``path`` (atomically, never over one of ``inputs``); returns its
    size in bytes."""
    data = encode_model(model, cfg, task, source)
    with atomic_output(path, inputs) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return len(data)


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
    args = check_model_cfg(where, cfg["model"])
    try:
        task = make_task(cf, cfg, data)
    except CompactFileError:
        raise
    except Exception as e:  # a task config fairseq refuses: report it as this file's problem
        raise CompactFileError(f"{where}: the stored task configuration does not load: "
                               f"{type(e).__name__}: {e}") from None
    bound = elements_bound(args, len(task.source_dictionary), len(task.target_dictionary))
    if bound > max_elements:
        fail(where, f"the stored config would allocate up to {bound} weights, more than the limit {max_elements}")

    try:
        model = _build_model(cfg, task)
    except Exception as e:  # a config fairseq refuses: report it as this file's problem
        raise CompactFileError(f"{where}: the stored model configuration does not build: "
                               f"{type(e).__name__}: {e}") from None
    model.eval()
    check_layout(where, header, model)
    m = model.mask_options.mask
    stated = header["mask"]
    if (m.method, m.prune_ratio, m.threshold) != (stated["method"], stated["prune_ratio"], stated["threshold"]):
        fail(where, f"the header's mask rule {stated} disagrees with the stored config's "
                    f"({m.method}, {m.prune_ratio}, {m.threshold})")
    state = model.state_dict()
    stored_names = {n for t in header["tensors"] for n in t["names"]}
    rnd_groups = [g for g in group_tensors(model).random if g[0] not in stored_names]
    digest, _ = random_digest(state, rnd_groups)
    if digest != header["random_weights"]["sha256"]:
        fail(where, f"the random weights regenerated from seed {header['seed']} do not match the file's "
                    f"checksum: this torch ({torch.__version__}) draws other random numbers than the one that "
                    f"wrote the file ({header.get('torch_version')}), or the init code changed")

    new_state = dict(state)
    masks = {}
    for entry in header["masks"]:
        levels = check_levels(where, entry, cf.levels(entry), m, cf.version)
        scores = scores_for_mask(levels, m.method, m.threshold, state[entry["names"][0]].dtype)
        new_state.update({n: scores for n in entry["names"]})
        masks[entry["names"][0]] = levels
    for entry in header["tensors"]:
        value = cf.tensor(entry)
        for n in entry["names"]:
            if value.dtype != state[n].dtype:
                fail(where, f"tensor {n} is stored as {entry['dtype']}, the model's is {state[n].dtype}")
            new_state[n] = value
    rounds = int(new_state[RERAND_ROUNDS_KEY]) if RERAND_ROUNDS_KEY in new_state else 0
    new_state.update(redrawn_state(where, cf, model, rounds))
    model.load_state_dict(new_state, strict=True)
    # The masks the rebuilt model computes must be the stored ones, bit for bit.
    rebuilt = model.state_dict()
    for name, levels in masks.items():
        got = m.levels(rebuilt[name])
        if not torch.equal(got, levels):
            fail(where, f"mask {name} cannot be reproduced by --prune-method {m.method} "
                        f"(threshold {m.threshold}): {int((got != levels).sum())} bits differ")
    return model, cfg, task
