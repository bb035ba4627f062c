"""Initialisation of the frozen random weights and of the mask scores.

Every tensor is drawn on CPU from its own ``torch.Generator`` seeded by (seed, name), so a
weight depends only on the seed, its name, its shape and its recipe: not on construction
order, the global RNG or the device the model is later moved to.
"""
import hashlib
import math
from dataclasses import dataclass
from typing import Tuple

import torch

WEIGHT_INITS = (
    "kaiming_uniform",
    "kaiming_normal",
    "signed_constant",
    "unsigned_constant",
    "xavier_normal",
    "xavier_constant",
    "standard",
)
# The authors' attention projections: xavier_uniform, gain 1/sqrt(2) for q/k/v and 1 for out.
ATTENTION_INITS = ("same", "fairseq_xavier")
MASK_INITS = ("standard", "constant", "constant_noisy")

# Gain of the ReLU nonlinearity, as edge-popup uses for every masked layer.
_RELU_GAIN = math.sqrt(2.0)
# Explicit, so that neither torch.set_default_device / a device context nor
# torch.set_default_dtype changes the drawn values (they are moved afterwards).
_CPU_FP32 = {"dtype": torch.float32, "device": "cpu"}


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for tensor ``name`` under the run seed ``seed`` (stable across versions)."""
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator_for(seed: int, name: str) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, name))
    return gen


def _fans(shape: Tuple[int, ...]) -> Tuple[int, int]:
    # (fan_in, fan_out) of a Linear weight (out, in) or an Embedding (num, dim): fan_in is dim 1.
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D weight shape, got {shape}")
    return shape[1], shape[0]


def _signs(shape, gen):
    return torch.randint(0, 2, shape, generator=gen, device="cpu").float().mul_(2).sub_(1)


@dataclass(frozen=True)
class WeightInit:
    """How a frozen random weight is drawn.

    ``keep_fraction`` is the fraction of weights the mask keeps; with ``scale_fan`` every fan
    is multiplied by it (the masked layer sees that many inputs), as edge-popup does.
    ``gain`` applies to the kaiming and constant inits (ReLU gain by default).
    """

    method: str = "kaiming_uniform"
    scale_fan: bool = False
    keep_fraction: float = 1.0
    gain: float = _RELU_GAIN

    def __post_init__(self):
        if self.method not in WEIGHT_INITS and self.method not in ("xavier_uniform",):
            raise ValueError(f"--init must be one of {', '.join(WEIGHT_INITS)}, got {self.method!r}")

    def sample(self, shape: Tuple[int, ...], seed: int, name: str) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        gen = generator_for(seed, name)
        fan_in, fan_out = _fans(shape)
        if self.scale_fan:
            fan_in = fan_in * self.keep_fraction
            fan_out = fan_out * self.keep_fraction
        m = self.method
        if m == "kaiming_uniform":
            bound = self.gain * math.sqrt(3.0 / fan_in)
            return torch.empty(shape, **_CPU_FP32).uniform_(-bound, bound, generator=gen)
        if m == "kaiming_normal":
            return torch.empty(shape, **_CPU_FP32).normal_(0.0, self.gain / math.sqrt(fan_in), generator=gen)
        if m == "signed_constant":
            return _signs(shape, gen).mul_(self.gain / math.sqrt(fan_in))
        if m == "unsigned_constant":
            return torch.full(shape, self.gain / math.sqrt(fan_in), **_CPU_FP32)
        if m == "xavier_normal":
            return torch.empty(shape, **_CPU_FP32).normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=gen)
        if m == "xavier_constant":
            return _signs(shape, gen).mul_(math.sqrt(2.0 / (fan_in + fan_out)))
        if m == "xavier_uniform":
            bound = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
            return torch.empty(shape, **_CPU_FP32).uniform_(-bound, bound, generator=gen)
        # "standard": torch's nn.Linear default, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(fan_in)
        return torch.empty(shape, **_CPU_FP32).uniform_(-bound, bound, generator=gen)


def attention_init(base: WeightInit, attention: str, projection: str) -> WeightInit:
    """The init of an attention projection (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``).

    ``same`` applies ``--init`` like everywhere else; ``fairseq_xavier`` reproduces the authors'
    code, where fairseq's MultiheadAttention re-initialised the projections and overrode --init.
    """
    if attention not in ATTENTION_INITS:
        raise ValueError(
            f"--attention-init must be one of {', '.join(ATTENTION_INITS)}, got {attention!r}"
        )
    if attention == "same":
        return base
    gain = 1.0 if projection == "out_proj" else 1.0 / math.sqrt(2.0)
    return WeightInit("xavier_uniform", scale_fan=False, keep_fraction=1.0, gain=gain)


@dataclass(frozen=True)
class ScoreInit:
    """How the mask scores start: ``standard`` is kaiming_uniform(a=sqrt(5)) like the authors'."""

    method: str = "standard"
    constant: float = 1.0

    def __post_init__(self):
        if self.method not in MASK_INITS:
            raise ValueError(f"--mask-init must be one of {', '.join(MASK_INITS)}, got {self.method!r}")

    def sample(self, shape: Tuple[int, ...], seed: int, name: str) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        gen = generator_for(seed, name + "#scores")
        if self.method == "constant":
            return torch.full(shape, float(self.constant), **_CPU_FP32)
        if self.method == "constant_noisy":
            # 1% relative noise breaks the ties of a constant start.
            noise = torch.empty(shape, **_CPU_FP32).normal_(0.0, 1.0, generator=gen)
            return noise.mul_(0.01 * max(abs(self.constant), 1e-3)).add_(self.constant)
        bound = 1.0 / math.sqrt(_fans(shape)[0])
        return torch.empty(shape, **_CPU_FP32).uniform_(-bound, bound, generator=gen)
