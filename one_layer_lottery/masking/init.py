"""Initialisation of the frozen random weights and of the mask scores.

Every tensor is drawn on CPU from its own ``torch.Generator`` seeded by (seed, name), so a
weight depends only on the seed, its name, its shape and its recipe: not on construction
order, the global RNG or the device the model is later moved to.
"""
import hashlib
import math
from dataclasses import dataclass, replace
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
# Draws used internally, never chosen by --init: xavier_uniform (the authors' attention
# projections) and fairseq's embedding init N(0, 1/sqrt(dim)) (the authors' unmasked
# embeddings and untied output projection under --authors-init).
INTERNAL_INITS = ("xavier_uniform", "embedding_normal")
# The --init methods whose fan the authors' code scaled under --scale-fan (by the REMOVED
# fraction); their kaiming_uniform, xavier and standard draws ignored the flag.
AUTHORS_SCALED_INITS = ("kaiming_normal", "signed_constant", "unsigned_constant")
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

    With ``scale_fan`` every fan is multiplied by ``fan_factor``: this project passes the
    fraction of weights the mask keeps (the masked layer sees that many inputs, as in
    edge-popup); ``masked_weight_init`` under ``--authors-init`` passes the fraction removed, as
    the authors' code did.
    ``gain`` applies to the kaiming, constant and xavier_uniform inits (ReLU gain by default).
    ``scale`` multiplies whatever was drawn (``--qk-init-scale`` for the query and key projections).
    """

    method: str = "kaiming_uniform"
    scale_fan: bool = False
    fan_factor: float = 1.0
    gain: float = _RELU_GAIN
    scale: float = 1.0

    def __post_init__(self):
        if self.method not in WEIGHT_INITS and self.method not in INTERNAL_INITS:
            raise ValueError(f"--init must be one of {', '.join(WEIGHT_INITS)}, got {self.method!r}")
        if not (isinstance(self.fan_factor, (int, float)) and 0.0 < self.fan_factor <= 1.0):
            raise ValueError(f"the fan factor of a scaled init must be in (0, 1], got {self.fan_factor!r}")
        check_positive("the scale of an init", self.scale)

    def sample(self, shape: Tuple[int, ...], seed: int, name: str) -> torch.Tensor:
        drawn = self._draw(tuple(int(s) for s in shape), generator_for(seed, name))
        return drawn if self.scale == 1.0 else drawn.mul_(self.scale)  # scale 1: the draw untouched

    def _draw(self, shape: Tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        fan_in, fan_out = _fans(shape)
        if self.scale_fan:
            fan_in = fan_in * self.fan_factor
            fan_out = fan_out * self.fan_factor
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
        if m == "embedding_normal":
            return torch.empty(shape, **_CPU_FP32).normal_(0.0, fan_in ** -0.5, generator=gen)
        # "standard": torch's nn.Linear default, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(fan_in)
        return torch.empty(shape, **_CPU_FP32).uniform_(-bound, bound, generator=gen)


def attention_init(base: WeightInit, attention: str, projection: str, qkv_same_dim: bool = True,
                   qk_scale: float = 1.0) -> WeightInit:
    """The init of an attention projection (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``).

    ``same`` applies ``--init`` like everywhere else; ``fairseq_xavier`` reproduces the authors'
    code, where fairseq's MultiheadAttention re-initialised the projections and overrode --init:
    gain 1/sqrt(2) for q/k/v when keys and values have the query's width (``qkv_same_dim``),
    gain 1 otherwise (cross-attention to an encoder of another width) and for ``out_proj``.
    ``qk_scale`` (``--qk-init-scale``) then multiplies the query and key projections.
    """
    if attention not in ATTENTION_INITS:
        raise ValueError(
            f"--attention-init must be one of {', '.join(ATTENTION_INITS)}, got {attention!r}"
        )
    check_positive("--qk-init-scale", qk_scale)
    init = base
    if attention == "fairseq_xavier":
        gain = 1.0 if projection == "out_proj" or not qkv_same_dim else 1.0 / math.sqrt(2.0)
        init = WeightInit("xavier_uniform", scale_fan=False, gain=gain)
    if projection in ("q_proj", "k_proj") and qk_scale != 1.0:
        init = replace(init, scale=init.scale * float(qk_scale))
    return init


def check_positive(flag: str, value) -> None:
    """``value`` is a finite number above 0; else a ValueError naming ``flag``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} must be a finite number above 0, got {value!r}")


def masked_weight_init(method: str, scale_fan: bool, prune_ratio: float, authors_init: bool = False) -> WeightInit:
    """The init of the masked FFN weights and masked embeddings under ``--init`` / ``--scale-fan``.

    Ours: ``--scale-fan`` multiplies every fan by the kept fraction ``1 - prune_ratio``, for every
    method. ``authors_init``: the authors' code, where ``--scale-fan`` multiplied the fan by the
    REMOVED fraction ``prune_ratio``, and only for the methods in ``AUTHORS_SCALED_INITS``.
    """
    if authors_init:
        return WeightInit(method, scale_fan=bool(scale_fan) and method in AUTHORS_SCALED_INITS,
                          fan_factor=prune_ratio)
    return WeightInit(method, scale_fan=bool(scale_fan), fan_factor=1.0 - prune_ratio)


def pretrained_embedding_scale(prune_ratio: float, masked: bool, scale_fan: bool, authors_init: bool = False) -> float:
    """The factor on fixed pre-trained embedding rows.

    Ours: 1/sqrt(kept fraction) whenever they are masked, so the masked rows keep their norm.
    ``authors_init``: 1/sqrt(REMOVED fraction), and only when masked and ``--scale-fan`` is set.
    """
    if not masked:
        return 1.0
    if authors_init:
        return prune_ratio ** -0.5 if scale_fan else 1.0
    return (1.0 - prune_ratio) ** -0.5


def embedding_normal_init() -> WeightInit:
    """fairseq's embedding init, N(0, 1/sqrt(dim)): the authors' unmasked embeddings and their
    untied output projection."""
    return WeightInit("embedding_normal")


@dataclass(frozen=True)
class ScoreInit:
    """How the mask scores start: ``standard`` is kaiming_uniform(a=sqrt(5)) like the authors'."""

    method: str = "standard"
    constant: float = 1.0

    def __post_init__(self):
        if self.method not in MASK_INITS:
            raise ValueError(f"--mask-init must be one of {', '.join(MASK_INITS)}, got {self.method!r}")
        c = self.constant
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ValueError(f"--mask-constant must be a finite number, got {c!r}")

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
