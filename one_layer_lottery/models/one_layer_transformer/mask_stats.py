"""Mask statistics: kept fractions, bit flips, and overlap between virtual layers sharing a weight.

Pure PyTorch over the masks. ``model_mask_stats`` gives them per virtual layer and matrix
(``mask_kept/encoder.3``, ...) and as a short summary (``mask_kept``, ...); during training the
model logs both (models/one_layer_transformer/mask_logging.py). A weight counts as kept when any
coat keeps it (``--mask-coats``); a flip is a change of its mask value.
"""
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ...masking import MaskedWeight
from .state_keys import STACKS, matrix_sort_key, parse_module_path

# Per-layer and per-matrix keys, also as fairseq prefixes them ("train_mask_kept/encoder.0").
_DETAIL = re.compile(r"(^|_)mask_(kept|flipped|jaccard|value|gain)/")


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
    stack's shared matrices. With ``--mask-coats`` above 1 also ``mask_value/<stack>.<layer>`` and
    ``mask_value`` (mean mask value), with ``--learned-gains`` ``mask_gain/<stack>.<layer>`` and
    ``mask_gain`` (mean gain). values: id(score tensor) -> mask values (``previous`` of the next call).
    """
    matrices = [mm for mm in masked_matrices(model) if mm.layer is not None]  # embeddings are no virtual layer
    values: Dict[int, torch.Tensor] = {}
    for mm in matrices:
        key = id(mm.module.score_tensor)
        if key not in values:
            values[key] = mm.module.mask_values()
    masks = {key: v if v.dtype == torch.bool else v != 0 for key, v in values.items()}
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
            flipped[layer] += int((values[key] != previous[key]).sum())
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
    scalars.update(layer_means(matrices, values))
    return scalars, values


def layer_means(matrices: List[MaskedMatrix], values: Dict[int, torch.Tensor]) -> Dict[str, float]:
    """Mean mask value (with several coats) and mean learned gain (with gains), per virtual layer and
    over all of them; nothing for a model with neither."""
    sums = {"mask_value": defaultdict(float), "mask_gain": defaultdict(float)}
    counts = {"mask_value": defaultdict(int), "mask_gain": defaultdict(int)}
    for mm in matrices:
        layer = f"{mm.stack}.{mm.layer}"
        if mm.module.mask_config.coats > 1:
            v = values[id(mm.module.score_tensor)]
            sums["mask_value"][layer] += float(v.sum(dtype=torch.float64))
            counts["mask_value"][layer] += v.numel()
        if mm.module.gains is not None:
            sums["mask_gain"][layer] += float(mm.module.gains.detach().sum(dtype=torch.float64))
            counts["mask_gain"][layer] += mm.module.gains.numel()
    scalars = {}
    for name in sums:
        for layer in counts[name]:
            scalars[f"{name}/{layer}"] = sums[name][layer] / counts[name][layer]
        if counts[name]:
            scalars[name] = sum(sums[name].values()) / sum(counts[name].values())
    return scalars
