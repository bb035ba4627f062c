"""Mask statistics: kept fractions, bit flips, and overlap between virtual layers sharing a weight.

Pure PyTorch over boolean masks. ``model_mask_stats`` gives them per virtual layer and matrix
(``mask_kept/encoder.3``, ...) and as a short summary (``mask_kept``, ...); during training the
model logs both (models/one_layer_transformer/mask_logging.py).
"""
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ...masking import MaskedWeight
from .state_keys import STACKS, matrix_sort_key, parse_module_path

# Per-layer and per-matrix keys, also as fairseq prefixes them ("train_mask_kept/encoder.0").
_DETAIL = re.compile(r"(^|_)mask_(kept|flipped|jaccard)/")


def is_detail(key: str) -> bool:
    """A per-layer or per-matrix statistic (not one of the summary's)."""
    return bool(_DETAIL.search(key))


def intersections(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """N x N matrix of |M_i & M_j| (exact integer counts, float64) for same-shaped boolean masks."""
    flat = torch.stack([m.reshape(-1) for m in masks])
    # 0/1 products summed in float32 are exact while every count stays below 2**24.
    dtype = torch.float32 if flat.shape[1] < (1 << 24) else torch.float64
    x = flat.to(dtype)
    return (x @ x.T).to(torch.float64)


def jaccard(inter: torch.Tensor) -> torch.Tensor:
    """Pairwise |A & B| / |A | B| from an intersection matrix (two empty masks overlap fully)."""
    sizes = inter.diagonal()
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def mean_offdiagonal(matrix: torch.Tensor) -> float:
    n = matrix.shape[0]
    if n < 2:
        return 1.0
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * (n - 1)))


@dataclass
class MaskedMatrix:
    path: str
    stack: str
    layer: Optional[int]
    matrix: str
    module: MaskedWeight


def masked_matrices(model) -> List[MaskedMatrix]:
    """Every masked matrix of the model (a shared embedding once)."""
    out = []
    for path, module in model.named_modules():
        if isinstance(module, MaskedWeight) and module.is_masked:
            stack, layer, matrix = parse_module_path(path)
            out.append(MaskedMatrix(path, stack, layer, matrix, module))
    return out


def model_mask_stats(model, previous: Optional[Dict[int, torch.Tensor]] = None):
    """(scalars, masks) of the model's current masks.

    scalars: ``mask_kept/<stack>.<layer>`` (kept fraction of the virtual layer),
    ``mask_flipped/<stack>.<layer>`` (fraction of its mask bits that differ from ``previous``,
    when given) and ``mask_jaccard/<stack>.<matrix>`` (mean pairwise Jaccard overlap of the
    masks of the virtual layers that share that random weight); then the summary: ``mask_kept``
    and ``mask_flipped`` over every virtual layer, ``mask_jaccard_<stack>`` the mean over the
    stack's shared matrices. masks: id(score tensor) -> mask.
    """
    matrices = [mm for mm in masked_matrices(model) if mm.layer is not None]  # embeddings are no virtual layer
    masks: Dict[int, torch.Tensor] = {}
    for mm in matrices:
        key = id(mm.module.score_tensor)
        if key not in masks:
            masks[key] = mm.module.mask()
    kept = defaultdict(int)
    flipped = defaultdict(int)
    numel = defaultdict(int)
    by_weight = defaultdict(list)
    for mm in matrices:
        layer = f"{mm.stack}.{mm.layer}"
        key = id(mm.module.score_tensor)
        mask = masks[key]
        kept[layer] += int(mask.sum())
        numel[layer] += mask.numel()
        if previous is not None and key in previous:
            flipped[layer] += int((mask != previous[key]).sum())
        by_weight[id(mm.module.random_weight)].append(mm)
    scalars = {}
    for layer in sorted(numel, key=lambda s: (s.split(".")[0] != "encoder", int(s.split(".")[1]))):
        scalars[f"mask_kept/{layer}"] = kept[layer] / numel[layer]
        if previous is not None:
            scalars[f"mask_flipped/{layer}"] = flipped[layer] / numel[layer]
    overlaps = defaultdict(list)
    groups = sorted(by_weight.values(), key=lambda g: (g[0].stack != "encoder", matrix_sort_key(g[0].matrix)))
    for group in groups:
        distinct = {id(mm.module.score_tensor): mm for mm in group}
        if len(distinct) < 2:  # one weight, one mask: nothing to compare
            continue
        mm = group[0]
        overlap = mean_offdiagonal(jaccard(intersections([masks[k] for k in distinct])))
        scalars[f"mask_jaccard/{mm.stack}.{mm.matrix}"] = overlap
        overlaps[mm.stack].append(overlap)
    if numel:
        total = sum(numel.values())
        scalars["mask_kept"] = sum(kept.values()) / total
        if previous is not None:
            scalars["mask_flipped"] = sum(flipped.values()) / total
    for stack in STACKS:
        if overlaps[stack]:
            scalars[f"mask_jaccard_{stack}"] = sum(overlaps[stack]) / len(overlaps[stack])
    return scalars, masks
