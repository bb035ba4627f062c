"""Mask statistics in fairseq-train's log and TensorBoard.

``MaskMonitor`` logs ``model_mask_stats`` through fairseq's metrics: a summary (``mask_kept``,
``mask_flipped``, ``mask_jaccard_<stack>``) and about 40 values per virtual layer and matrix.
In fairseq-train, log lines show the summary only and TensorBoard every value (fairseq_patches.py).
"""
from typing import Dict, Optional

import torch
from fairseq.logging import metrics

from .mask_stats import model_mask_stats


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
        for key, value in self.scalars.items():
            # kept, then flipped, then overlap (fairseq orders a log line by priority)
            rank = 2 if key.startswith("mask_jaccard") else 1 if key.startswith("mask_flipped") else 0
            metrics.log_scalar(key, value, weight=0, priority=self.PRIORITY + rank, round=4)

