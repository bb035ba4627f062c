"""Multicoated supermasks (Okoshi et al., ICML 2022): C nested top-k masks over one score tensor.

Coat 1 keeps what ``--prune-ratio`` keeps (k weights); coat c keeps the k (C - c + 1) / C weights
with the largest scores, so each coat lies inside the previous one. A weight's level is the
number of coats that keep it (0 to C) and its mask value is level / C: the kept weights are split
into C equal groups by score, valued 1/C, 2/C, ..., 1. With C = 1 this is the plain mask. (The
paper's own configurations make the inner coats sparser than an even split, e.g. sparsities 0.7,
0.921 and 0.969 for three coats, and sum the coats unnormalised; the even split and the share keep
one parameter, --prune-ratio, and weights no larger than the random ones.)

Pure PyTorch, no autograd (the straight-through estimator lives in ``modules.py``).
"""
from typing import List

import torch

from .selection import TOPK_METHODS, num_kept, ranked_rows, select_mask, topk_mask

MAX_COATS = 32  # every coat is one more top-k selection per forward pass


def check_coats(coats, method: str) -> None:
    if isinstance(coats, bool) or not isinstance(coats, int) or not 1 <= coats <= MAX_COATS:
        raise ValueError(f"--mask-coats must be an integer from 1 to {MAX_COATS}, got {coats!r}")
    if coats > 1 and method not in TOPK_METHODS:
        raise ValueError(f"--mask-coats {coats} needs a top-k --prune-method ({', '.join(TOPK_METHODS)}), "
                         f"got {method!r}")


def level_bits(coats: int) -> int:
    """Bits that hold a level from 0 to ``coats``: ceil(log2(coats + 1))."""
    return int(coats).bit_length()


def coat_kept_counts(numel: int, prune_ratio: float, coats: int) -> List[int]:
    """Weights each coat keeps, outermost (densest) first; non-increasing, each at least 1."""
    k = num_kept(numel, prune_ratio)
    return [max(1, int(round(k * (coats - c) / coats))) for c in range(coats)]


def mask_levels(scores: torch.Tensor, method: str, prune_ratio: float, coats: int,
                threshold: float = 0.0) -> torch.Tensor:
    """uint8 tensor of the scores' shape: how many of the ``coats`` nested masks keep each weight.

    Batched like ``select_mask`` (per entry of dim 0 for 3-D scores or more); one coat gives
    ``select_mask``'s mask as 0/1.
    """
    check_coats(coats, method)
    if coats == 1:
        return select_mask(scores, method, prune_ratio, threshold).to(torch.uint8)
    with torch.no_grad():
        flat = ranked_rows(scores, method)
        levels = torch.zeros(flat.shape, dtype=torch.uint8, device=scores.device)
        for k in coat_kept_counts(flat.shape[-1], prune_ratio, coats):
            levels += topk_mask(flat, k)
        return levels.view(scores.shape)

