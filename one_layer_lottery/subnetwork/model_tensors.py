"""A one_layer_transformer's tensors as a compact file sees them: masks, random, stored."""
import hashlib
import json
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from ..masking import RandomWeight
from ..models.one_layer_transformer.state_keys import embedding_prefix, is_scores
from .file_format import raw_bytes


@dataclass
class ModelTensors:
    """The state-dict keys of a model, grouped by tensor (a shared tensor has several names):
    scores (stored as masks), random weights (regenerated from the seed), and the rest (stored)."""

    scores: List[List[str]]
    random: List[List[str]]
    stored: List[List[str]]
    tensors: Dict[str, torch.Tensor]


def group_tensors(model, pretrained_prefixes=()) -> ModelTensors:
    """``pretrained_prefixes``: the embeddings whose rows come from a file; they are stored."""
    state = model.state_dict(keep_vars=True)
    random_keys = {f"{name}.weight" if name else "weight"
                   for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, RandomWeight)}
    names_of: Dict[int, List[str]] = {}
    for key, value in state.items():
        names_of.setdefault(id(value), []).append(key)
    scores, random, stored = [], [], []
    for names in names_of.values():
        names = sorted(names)
        if all(is_scores(n) for n in names):
            scores.append(names)
        elif all(n in random_keys for n in names) and not any(
                n.startswith(p) for n in names for p in pretrained_prefixes):
            random.append(names)
        else:
            stored.append(names)
    order = list(state)
    key = lambda names: order.index(names[0])  # noqa: E731  (state-dict order)
    return ModelTensors(sorted(scores, key=key), sorted(random, key=key), sorted(stored, key=key), state)


def pretrained_prefixes(model_cfg: dict) -> Tuple[str, ...]:
    """The embeddings of ``model_cfg`` that read pre-trained rows (``--encoder-embed-path``, ...)."""
    prefixes = []
    if model_cfg.get("encoder_embed_path"):
        prefixes.append(embedding_prefix("encoder"))
        if model_cfg.get("share_all_embeddings"):
            prefixes.append(embedding_prefix("decoder"))
    if model_cfg.get("decoder_embed_path"):
        prefixes.append(embedding_prefix("decoder"))
    return tuple(prefixes)


def random_digest(state: Dict[str, torch.Tensor], groups: List[List[str]]) -> Tuple[str, int]:
    """sha256 (and element count) of the random weights, by name, dtype, shape and bytes."""
    h = hashlib.sha256()
    count = 0
    for names in sorted(groups):
        t = state[names[0]]
        h.update(json.dumps([names, str(t.dtype), list(t.shape)]).encode())
        h.update(raw_bytes(t))
        count += t.numel()
    return h.hexdigest(), count
