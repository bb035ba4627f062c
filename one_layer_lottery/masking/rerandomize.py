"""IteRand (Chijiwa et al., NeurIPS 2021): every K updates, redraw some of the removed random weights.

Round r redraws, in each random weight, exactly round(F * n) of the n weights that no mask over it
keeps (the paper draws each with probability F: the same share on average), chosen by a generator
seeded from (seed, name, r), and gives them the values of a fresh draw of the weight's own init
seeded from (seed, name, r). Kept weights never change, so no virtual layer's function changes at
a redraw.

Every value a weight can hold is therefore the value at its position in draw 0 (the seed's), 1, ...,
R: a weight after R rounds is described by the seed and, per position, which draw it holds (its
generation). That is what a compact file stores; ``weight_generations`` recovers it from the
values, ``redrawn_weight`` rebuilds the values from it.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import nn

from .init import generator_for


@dataclass(frozen=True)
class RerandSchedule:
    """``--rerand-interval`` K (updates between rounds, 0: never) and ``--rerand-fraction`` F."""

    interval: int = 0
    fraction: float = 0.1

    def __post_init__(self):
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 0:
            raise ValueError(f"--rerand-interval must be a non-negative integer (0: off), got {self.interval!r}")
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and 0.0 < f <= 1.0):
            raise ValueError(f"--rerand-fraction must be a number in (0, 1], got {f!r}")

    def rounds_due(self, num_updates: int) -> int:
        """Rounds done before update ``num_updates + 1`` trains: one before update K + 1, 2K + 1, ..."""
        return num_updates // self.interval if self.interval > 0 else 0


def redraw_values(random, round_: int) -> torch.Tensor:
    """Draw ``round_`` of a RandomWeight: its init sampled under (seed, name, round); 0 is the seed's."""
    name = random.name if round_ == 0 else f"{random.name}#redraw{round_}"
    return random.init.sample(random.weight.shape, random.seed, name)


def redraw_removed(random, kept: torch.Tensor, fraction: float, round_: int) -> int:
    """Round ``round_`` on one RandomWeight (in place): round(fraction * removed) of the weights
    ``kept`` does not cover take draw ``round_``'s values. Returns how many were redrawn."""
    removed = (~kept.detach().to("cpu")).reshape(-1).nonzero().squeeze(1)
    count = int(round(fraction * removed.numel()))
    if count == 0:
        return 0
    picks = torch.randperm(removed.numel(), generator=generator_for(random.seed, f"{random.name}#pick{round_}"))
    chosen = removed[picks[:count]]
    fresh = redraw_values(random, round_).reshape(-1)[chosen]
    with torch.no_grad():
        flat = random.weight.view(-1)
        flat[chosen.to(flat.device)] = fresh.to(device=flat.device, dtype=flat.dtype)
    return count


def weight_generations(random, rounds: int) -> torch.Tensor:
    """int64 tensor of the weight's shape: the latest draw (0 to ``rounds``) whose value each weight
    holds. Raises ValueError when a weight holds none of them."""
    values = random.weight.detach().to("cpu")
    generations = torch.full(values.shape, -1, dtype=torch.int64)
    for r in range(rounds, -1, -1):
        match = (generations < 0) & (redraw_values(random, r).to(values.dtype) == values)
        generations[match] = r
    if bool((generations < 0).any()):
        raise ValueError(f"{int((generations < 0).sum())} values of the random weight {random.name} are none of "
                         f"the {rounds + 1} draws seed {random.seed} gives it")
    return generations


def redrawn_weight(random, generations: torch.Tensor) -> torch.Tensor:
    """The weight whose every position holds the value of its generation's draw."""
    out = redraw_values(random, 0)
    last = int(generations.max()) if generations.numel() else 0
    for r in range(1, last + 1):
        pick = generations == r
        if bool(pick.any()):
            out[pick] = redraw_values(random, r)[pick]
    return out.to(random.weight.dtype)


class Rerandomizer(nn.Module):
    """Applies the schedule to groups (RandomWeight, the masked layers over it) during training.

    ``rounds`` (a buffer, only when the schedule is on) counts the rounds done: a resumed run
    loads it and does not redraw twice. fairseq calls ``set_num_updates`` with the updates done
    (also while loading a checkpoint, before the state); the due rounds are applied by
    ``catch_up`` at the next training forward, so loading never redraws.
    """

    def __init__(self, schedule: RerandSchedule, groups: Sequence[Tuple[nn.Module, List[nn.Module]]]):
        super().__init__()
        self.schedule = schedule
        self.groups = list(groups)  # plain references: the modules are registered by the model
        self.due = 0
        self.done = 0  # ``rounds`` as a Python int (reading the buffer on an accelerator would sync)
        if schedule.interval > 0:
            self.register_buffer("rounds", torch.zeros((), dtype=torch.int64))

    def set_num_updates(self, num_updates: int) -> None:
        self.due = self.schedule.rounds_due(num_updates)

    def catch_up(self) -> int:
        """Apply the rounds that are due; returns how many weights were redrawn."""
        if self.schedule.interval == 0:
            return 0
        if self.done is None:  # a state was loaded since
            self.done = int(self.rounds)
        if self.done >= self.due:
            return 0
        redrawn = 0
        for round_ in range(self.done + 1, self.due + 1):
            for random, layers in self.groups:
                kept = torch.zeros(random.weight.shape, dtype=torch.bool, device=random.weight.device)
                for layer in layers:
                    kept |= layer.mask()
                redrawn += redraw_removed(random, kept, self.schedule.fraction, round_)
        self.rounds.fill_(self.due)
        self.done = self.due
        return redrawn

    def _load_from_state_dict(self, *args, **kwargs):
        self.done = None
        return super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self):
        return f"interval={self.schedule.interval}, fraction={self.schedule.fraction}, weights={len(self.groups)}"
