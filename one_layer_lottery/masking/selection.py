"""Which weights a mask keeps: exact top-k and threshold rules over score tensors.

Pure PyTorch. Every function returns a mask of the scores' shape, boolean unless a floating
``dtype`` asks for the 1/0 values that multiply the weights (made as such: on CPU a boolean
mask costs several times more to make and to multiply by), and never touches autograd (the
straight-through estimator lives in ``modules.py``).
"""
import math
from typing import Optional

import torch

PRUNE_METHODS = ("super_mask", "topk", "threshold", "sigmoid_threshold")
TOPK_METHODS = ("super_mask", "topk")  # keep a fixed number of weights


def num_kept(numel: int, prune_ratio: float) -> int:
    """Weights kept out of ``numel`` when the fraction ``prune_ratio`` is removed.

    Rounded to nearest and clamped to [1, numel], so that a layer never loses every weight.
    """
    check_prune_ratio(prune_ratio)
    return min(numel, max(1, int(round((1.0 - prune_ratio) * numel))))


def check_prune_ratio(prune_ratio: float) -> None:
    if isinstance(prune_ratio, bool) or not (isinstance(prune_ratio, (int, float)) and 0.0 < prune_ratio < 1.0):
        raise ValueError(
            f"--prune-ratio must be strictly between 0 and 1 (the fraction of weights REMOVED), "
            f"got {prune_ratio!r}"
        )


def check_threshold(method: str, threshold: float) -> None:
    """``--mask-threshold`` is finite and, for sigmoid_threshold, strictly between 0 and 1: outside
    that range sigmoid(score) passes it for no weight, or for every weight, whatever the scores."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"--mask-threshold must be a finite number, got {threshold!r}")
    if method == "sigmoid_threshold" and not 0.0 < threshold < 1.0:
        keeps = "no weight" if threshold >= 1.0 else "every weight"
        raise ValueError(f"--mask-threshold {threshold!r} keeps {keeps} under --prune-method sigmoid_threshold "
                         f"(sigmoid(score) is between 0 and 1): use a value strictly between 0 and 1")


def check_prune_method(method: str) -> None:
    if method not in PRUNE_METHODS:
        raise ValueError(
            f"--prune-method must be one of {', '.join(PRUNE_METHODS)}, got {method!r}"
        )


def selects_on_host(device: torch.device) -> bool:
    """Whether ``topk_mask`` takes its host path for tensors on ``device``: on CPU only.

    The host path reads counts back as Python integers, free on CPU; on an accelerator that
    would stall the stream, so there the selection stays on the device. This function is the
    one place that decides, so tests can drive the accelerator path with CPU tensors.
    """
    return device.type == "cpu"


def topk_mask(values: torch.Tensor, k: int, on_host: Optional[bool] = None,
              dtype: torch.dtype = torch.bool, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mask (of ``dtype``) keeping exactly the ``k`` largest entries of each row of ``values``.

    ``values`` is (rows, n) or (n,). Selection without a full sort: the (n-k)-th smallest
    value is the threshold (``kthvalue`` on the host path, ``topk(sorted=False)`` on the
    device path); ties at the threshold are broken by position (lower index kept first), so
    exactly k survive also with repeated values (constant scores, fp16/bf16 rounding). Both
    paths give the same mask. ``on_host`` picks the path; None leaves it to ``selects_on_host``.
    ``out`` (``values``' shape, of ``dtype``) receives the mask; it may be ``values`` itself,
    which is then overwritten.
    """
    squeeze = values.dim() == 1
    rows = values.unsqueeze(0) if squeeze else values
    if rows.dim() != 2:
        raise ValueError(f"topk_mask expects a 1-D or 2-D tensor, got shape {tuple(values.shape)}")
    if out is not None and (out.shape != values.shape or out.dtype != dtype):
        raise ValueError(f"topk_mask: out is {out.dtype} {tuple(out.shape)}, the mask {dtype} {tuple(values.shape)}")
    target = None if out is None else (out.unsqueeze(0) if squeeze else out)
    n = rows.shape[1]
    if not 0 < k <= n:
        raise ValueError(f"topk_mask: k={k} is outside [1, {n}]")
    if k == n:
        mask = torch.ones_like(rows, dtype=dtype) if target is None else target.fill_(1)
        return mask[0] if squeeze else mask
    if on_host is None:
        on_host = selects_on_host(rows.device)
    # The ties are found before the mask is written: ``out`` may overwrite ``values``.
    if on_host:
        # (n-k)-th smallest: everything strictly above it is kept (k of them without ties).
        found = [_kth_smallest_and_count_above(row, n - k) for row in rows]
        threshold = torch.stack([t for t, _ in found]).unsqueeze(1)
        ties = rows == threshold if any(k != above for _, above in found) else None
        mask = greater(rows, threshold, dtype, target)
        missing = torch.tensor([[k - above] for _, above in found])
    else:
        # Smallest of the k largest: everything strictly above it is kept (k-1 without ties).
        threshold = rows.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
        ties = rows == threshold  # branch-free: no host round-trip
        mask = greater(rows, threshold, dtype, target)
        missing = k - mask.sum(dim=1, keepdim=True, dtype=torch.int64)
    # Rows short of k are filled from the entries equal to the threshold, lowest index first.
    if ties is not None:
        rank = ties.to(torch.int32).cumsum(dim=1)
        mask.masked_fill_(ties & (rank <= missing), 1)
    return mask[0] if squeeze else mask


def greater(values: torch.Tensor, threshold, dtype: torch.dtype = torch.bool,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``values > threshold`` as a mask of ``dtype`` (1/0 for a floating one), written as such,
    into ``out`` when given (which may be ``values``)."""
    if out is None:
        if dtype == torch.bool:
            return values > threshold
        out = torch.empty(values.shape, dtype=dtype, device=values.device)
    return torch.gt(values, threshold, out=out)


# Below this size a plain kthvalue is as fast as narrowing the search first.
_NARROW_MIN = 1 << 16
_SAMPLE = 4096


def kth_smallest(values: torch.Tensor, j: int) -> torch.Tensor:
    """The exact j-th smallest entry (1-based) of a 1-D CPU tensor."""
    return _kth_smallest_and_count_above(values, j)[0]


def _kth_smallest_and_count_above(values: torch.Tensor, j: int):
    """(the exact j-th smallest entry of a 1-D CPU tensor, how many entries are strictly above it).

    A strided sample brackets the answer between two sample quantiles (4 standard errors
    around rank j); one pass counts what lies at or above the bracket's low end, one more
    gathers what lies inside, and ``kthvalue`` runs on that band only (unless counting the ties
    at its ends answers). The count above comes from the band too. When the band misses (it
    cannot be wrong, only unlucky: about once in 10^4 calls), ``kthvalue`` over everything answers.
    """
    n = values.numel()
    if n >= _NARROW_MIN:
        sample = values[::n // _SAMPLE]
        m = sample.numel()
        p = j / n
        spread = 4.0 * math.sqrt(max(p * (1.0 - p), 1.0 / m) / m) + 2.0 / m
        # Two selections on the sample: cheaper than sorting it.
        lo = sample.kthvalue(max(1, int((p - spread) * m) + 1)).values
        hi = sample.kthvalue(min(m, int(math.ceil((p + spread) * m)) + 1)).values
        at_least_lo = values >= lo
        n_below = n - int(torch.count_nonzero(at_least_lo))
        band = values[at_least_lo.logical_and_(values <= hi)]
        r = j - n_below
        if 1 <= r <= band.numel():
            kth = _kth_in_band(band, r, lo, hi)
            # Entries above the band are above kth; so are the band's entries above it.
            above = n - n_below - band.numel() + int(torch.count_nonzero(band > kth))
            return kth, above
    kth = values.kthvalue(j).values
    return kth, int(torch.count_nonzero(values > kth))


def _kth_in_band(band: torch.Tensor, r: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    # With few distinct values (a decoding checkpoint's 1/0 scores) the band is mostly ties at its
    # ends, and counting them answers without a selection over the whole band.
    if r <= int(torch.count_nonzero(band == lo)):
        return lo
    if r > band.numel() - int(torch.count_nonzero(band == hi)):
        return hi
    return band.kthvalue(r).values


def select_mask(
    scores: torch.Tensor,
    method: str,
    prune_ratio: float,
    threshold: float = 0.0,
    dtype: torch.dtype = torch.bool,
) -> torch.Tensor:
    """Mask of the weights a virtual layer keeps, given its scores: boolean, or 1/0 in a floating ``dtype``.

    A new tensor (never a view), which the caller may overwrite. ``scores`` may carry leading
    batch dimensions: for top-k methods the selection is done per entry of dim 0 when ``scores``
    is 3-D or more (one call for N virtual layers), over the whole tensor otherwise.

    - ``super_mask``: the (1 - prune_ratio) fraction with the largest |score| (the paper's).
    - ``topk``: the (1 - prune_ratio) fraction with the largest signed score.
    - ``threshold``: score > threshold.
    - ``sigmoid_threshold``: sigmoid(score) > threshold.
    """
    check_prune_method(method)
    with torch.no_grad():
        if method == "threshold":
            return greater(scores, threshold, dtype)
        if method == "sigmoid_threshold":
            return greater(torch.sigmoid(scores), threshold, dtype)
        values = _ranked_values(scores, method)
        # |scores| is a new tensor: the mask is written over it when it can hold the mask (one
        # weight-sized tensor less per selection; selection runs on every training step).
        reuse = values is not scores and values.dtype == dtype and values.is_contiguous()
        mask = values if reuse else torch.empty(scores.shape, dtype=dtype, device=scores.device)
        rows = _as_rows(values)
        topk_mask(rows, num_kept(rows.shape[-1], prune_ratio), dtype=dtype, out=_as_rows(mask))
        return mask


def ranked_rows(scores: torch.Tensor, method: str) -> torch.Tensor:
    """The values a top-k method ranks (|score| for super_mask), one row per virtual layer when
    ``scores`` is 3-D or more, a single row otherwise (see ``select_mask``)."""
    return _as_rows(_ranked_values(scores, method))


def _ranked_values(scores: torch.Tensor, method: str) -> torch.Tensor:
    return scores.abs() if method == "super_mask" else scores


def _as_rows(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1) if values.dim() >= 3 else values.reshape(-1)


def naive_edge_popup_mask(scores: torch.Tensor, prune_ratio: float) -> torch.Tensor:
    """The reference algorithm: clone, full sort of |scores|, scatter into a float mask.

    The authors' implementation; used by tests and the benchmark as the ground truth.
    Ties are broken by position like ``topk_mask`` (stable sort).
    """
    flat = scores.detach().abs().flatten().clone()
    n = flat.numel()
    # Ascending by value, descending by index among ties: sort the reversed tensor stably.
    _, rev_idx = flat.flip(0).sort(stable=True)
    order = n - 1 - rev_idx
    removed = n - num_kept(n, prune_ratio)
    mask = torch.ones_like(flat)
    mask[order[:removed]] = 0
    return mask.view(scores.shape)
