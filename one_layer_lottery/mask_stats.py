"""Mask analytics: kept fractions, bit flips, and overlap between virtual layers sharing a weight.

The statistics are pure PyTorch over boolean masks. ``MaskMonitor`` logs them during training
through fairseq's metrics (so ``--tensorboard-logdir`` records them), every
``--mask-log-interval`` updates.
"""
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .masking import MaskedWeight

_LAYER_PATH = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
# Display order of the matrices of a layer.
MATRIX_ORDER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj", "encoder_attn.out_proj",
                "fc1", "fc2")


def matrix_sort_key(name: str):
    return (MATRIX_ORDER.index(name) if name in MATRIX_ORDER else len(MATRIX_ORDER), name)


def parse_module_path(path: str) -> Tuple[str, Optional[int], str]:
    """(stack, virtual layer or None, matrix) of a module path such as ``encoder.layers.3.fc1``."""
    m = _LAYER_PATH.match(path)
    if m:
        return m.group(1), int(m.group(2)), m.group(3)
    stack, _, rest = path.partition(".")
    return stack, None, rest


# -- statistics over masks (pure PyTorch) ------------------------------------------------------

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


# -- the model's masks -------------------------------------------------------------------------

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
    masks of the virtual layers that share that random weight). masks: id(score tensor) -> mask.
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
    groups = sorted(by_weight.values(), key=lambda g: (g[0].stack != "encoder", matrix_sort_key(g[0].matrix)))
    for group in groups:
        distinct = {id(mm.module.score_tensor): mm for mm in group}
        if len(distinct) < 2:  # one weight, one mask: nothing to compare
            continue
        mm = group[0]
        inter = intersections([masks[k] for k in distinct])
        scalars[f"mask_jaccard/{mm.stack}.{mm.matrix}"] = mean_offdiagonal(jaccard(inter))
    return scalars, masks


class MaskMonitor:
    """Logs ``model_mask_stats`` through fairseq's metrics during training.

    fairseq calls ``model.set_num_updates(n)`` at the start of every update (n updates done).
    The statistics are computed from the masks update n+1 trains with, when n+1 is a multiple
    of ``interval`` (and once at the first call, as the reference for the flips); the last
    values are re-logged at every update with weight 0, so that whatever update fairseq's log
    lands on shows the latest values (never an empty meter).
    """

    PRIORITY = 1000  # after fairseq's own statistics in the log line

    def __init__(self, interval: int):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f"--mask-log-interval must be a non-negative integer, got {interval!r}")
        self.interval = interval
        self.previous: Optional[Dict[int, torch.Tensor]] = None
        self.scalars: Dict[str, float] = {}
        self.computed_at: Optional[int] = None

    def step(self, model, num_updates: int) -> None:
        if self.interval <= 0:
            return
        if self.computed_at != num_updates and (self.previous is None or (num_updates + 1) % self.interval == 0):
            with torch.no_grad():
                self.scalars, self.previous = model_mask_stats(model, self.previous)
            self.computed_at = num_updates
        from fairseq.logging import metrics

        for key, value in self.scalars.items():
            # kept, then flipped, then overlap (fairseq orders a log line by priority)
            priority = self.PRIORITY + ("mask_flipped/", "mask_jaccard/").index(key[:13]) + 1 \
                if key.startswith(("mask_flipped/", "mask_jaccard/")) else self.PRIORITY
            metrics.log_scalar(key, value, weight=0, priority=priority, round=4)
