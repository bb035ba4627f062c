"""Masked layers: a frozen random weight, a score per weight, a straight-through estimator.

A ``RandomWeight`` holds one frozen tensor. A ``MaskedLinear`` / ``MaskedEmbedding`` refers to
a ``RandomWeight`` that may be shared by many of them (the virtual layers of one physical
layer) without registering it, so the shared tensor lives once in the state dict, under
its owner. The module's ``weight`` attribute is the *masked* weight, so code that reads
``module.weight`` directly (fairseq's attention fast path) sees the mask too.
"""
import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .coats import check_coats, mask_levels
from .init import WeightInit
from .selection import check_prune_method, check_prune_ratio, check_threshold, select_mask


@dataclass(frozen=True)
class MaskConfig:
    """Which weights a mask keeps and what it multiplies them by: see ``selection.select_mask``
    and, for several coats, ``coats.mask_values``."""

    method: str = "super_mask"
    prune_ratio: float = 0.5  # fraction of weights REMOVED
    threshold: float = 0.0  # for the threshold methods
    coats: int = 1  # nested masks (--mask-coats); 1 is the plain mask

    def __post_init__(self):
        check_prune_method(self.method)
        check_prune_ratio(self.prune_ratio)
        check_coats(self.coats, self.method)
        check_threshold(self.method, self.threshold)

    @property
    def keep_fraction(self) -> float:
        return 1.0 - self.prune_ratio

    def kept(self, scores: torch.Tensor) -> torch.Tensor:
        """Boolean: the weights any coat keeps (the outermost coat)."""
        return select_mask(scores, self.method, self.prune_ratio, self.threshold)

    def levels(self, scores: torch.Tensor) -> torch.Tensor:
        """uint8: how many coats keep each weight (0 or 1 for one coat)."""
        return mask_levels(scores, self.method, self.prune_ratio, self.coats, self.threshold)

    def values(self, scores: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """What multiplies each weight, in a new tensor of ``dtype``: the plain mask as 1/0 for one coat,
        multiples of 1/coats else."""
        if self.coats == 1:
            return select_mask(scores, self.method, self.prune_ratio, self.threshold, dtype)
        return self.levels(scores).to(dtype).div_(self.coats)


class RandomWeight(nn.Module):
    """A frozen random tensor, drawn on CPU from (seed, name): never updated, never in the optimizer."""

    def __init__(self, shape, init: WeightInit, seed: int, name: str):
        super().__init__()
        self.init = init
        self.seed = seed
        self.name = name
        self.weight = nn.Parameter(init.sample(shape, seed, name), requires_grad=False)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, init={self.init.method}, name={self.name!r}"


class _StraightThroughMask(torch.autograd.Function):
    """weight * mask, where the mask is selected from the scores by a ``MaskConfig``.

    Backward: the gradient the mask receives (upstream gradient times weight) is passed
    straight through the selection step, then through the differentiable part of the rule
    (|score| for super_mask, sigmoid for sigmoid_threshold) to the scores. Only tensors that
    already exist (the shared weight, the scores) are saved; the forward and the super_mask
    backward each make one weight-sized tensor (this runs for every virtual layer on every step).
    """

    @staticmethod
    def forward(ctx, weight, scores, config):
        ctx.method = config.method
        ctx.save_for_backward(weight, scores)
        return _masked(weight, scores, config)

    @staticmethod
    def backward(ctx, grad_output):
        weight, scores = ctx.saved_tensors
        if ctx.method == "super_mask":  # d|s|/ds = sign(s)
            return None, torch.sign(scores).mul_(weight).mul_(grad_output), None
        grad = grad_output * weight
        if ctx.method == "sigmoid_threshold":
            sig = torch.sigmoid(scores)
            grad = grad * sig * (1 - sig)
        return None, grad, None


def _masked(weight: torch.Tensor, scores: torch.Tensor, config: "MaskConfig") -> torch.Tensor:
    """``weight`` times the mask ``config`` selects from ``scores``, without autograd.

    The mask holds the weight's dtype (a boolean one would be promoted element by element, several
    times slower on CPU) and is new, so the product is written over it. Removed weights become
    +-0, which every consumer treats as zero.
    """
    with torch.no_grad():
        return config.values(scores, weight.dtype).mul_(weight)


def straight_through_mask(weight, scores, config: "MaskConfig"):
    """``weight`` times the mask ``config`` selects from ``scores``, with the straight-through
    gradient to ``scores`` (see above)."""
    return _StraightThroughMask.apply(weight, scores, config)


def _linear(x, weight, bias=None):
    # One matrix multiply over all leading dims. torch folds them by itself for a contiguous input
    # with a bias, or one whose leading dims lie in memory as one matrix (checked on 3-D input,
    # fairseq's time x batch x channels). Otherwise (no bias and a transposed input: fairseq's decoder
    # output, a decoding step of length 1) torch's matmul folds only when the weight requires grad:
    # with a frozen or cached weight it would broadcast the weight into a batched multiply, several
    # times slower. Either way the same matrix multiply runs.
    dims = x.dim()
    if dims == 2 or (x.is_contiguous()
                     and (bias is not None or (dims == 3 and x.stride(0) == x.stride(1) * x.size(1)))):
        return F.linear(x, weight, bias)
    out = F.linear(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*x.shape[:-1], out.shape[-1])


class _Ref:
    """Holds a module without registering it as a child (it is registered by its owner)."""

    __slots__ = ("module",)

    def __init__(self, module):
        self.module = module


class _EvalCache:
    """A masked weight computed while not training, and what it was computed from.

    It is current while the same tensor objects sit in their modules' parameter dicts with the
    same data pointer, version and dtype: in-place edits (``load_state_dict``, ``copy_``) bump the
    version, ``.to()``/``.half()`` on the owner change the pointer, ``module.scores = ...`` the object.
    Checked on every read while decoding, so kept to plain attribute reads.
    """

    __slots__ = ("weight_params", "weight", "weight_version", "weight_pointer", "weight_dtype", "score_params",
                 "scores", "score_version", "score_pointer", "score_dtype", "gain_params", "gains", "gains_key",
                 "masked", "autocast_device", "autocast_copies")

    def __init__(self, weight_owner: nn.Module, score_owner: nn.Module, masked: torch.Tensor, layer: nn.Module):
        self.weight_params, self.score_params = weight_owner._parameters, score_owner._parameters
        self.weight, self.scores = self.weight_params["weight"], self.score_params["scores"]
        self.weight_version, self.weight_pointer, self.weight_dtype = _key(self.weight)
        self.score_version, self.score_pointer, self.score_dtype = _key(self.scores)
        self.gain_params = layer._parameters  # the layer's learned gains, if any (--learned-gains)
        self.gains = self.gain_params.get("gains")
        self.gains_key = None if self.gains is None else _key(self.gains)
        self.masked = masked
        # only an fp32 weight is cast under autocast
        self.autocast_device = masked.device.type if masked.dtype == torch.float32 else None
        self.autocast_copies = {}

    def cast_for_autocast(self) -> torch.Tensor:
        """The masked weight as autocast's matrix multiplies use it, cast once.

        Autocast casts a parameter once per autocast region, but a tensor that is not a parameter
        (this masked weight) at every operation: while decoding, one extra kernel per matrix and step.
        """
        device = self.autocast_device
        if device is None or not torch.is_autocast_enabled(device):
            return self.masked
        dtype = torch.get_autocast_dtype(device)
        copy = self.autocast_copies.get(dtype)
        if copy is None:
            copy = self.autocast_copies[dtype] = self.masked.to(dtype)
        return copy

    def is_current(self) -> bool:
        weight, scores, gains = self.weight, self.scores, self.gains
        return (weight._version == self.weight_version and scores._version == self.score_version
                and self.weight_params.get("weight") is weight and self.score_params.get("scores") is scores
                and weight.data_ptr() == self.weight_pointer and scores.data_ptr() == self.score_pointer
                and weight.dtype == self.weight_dtype and scores.dtype == self.score_dtype
                and (gains is None or (self.gain_params.get("gains") is gains and _key(gains) == self.gains_key)))


def _key(t):
    return t._version, t.data_ptr(), t.dtype


class MaskedWeight(nn.Module):
    """Base of the masked layers: ``weight`` is the random weight times the current mask.

    ``random`` is registered here when ``own_random`` is true, otherwise only referenced.
    ``scores`` is a Parameter (this virtual layer's own, made by the caller with
    ``ScoreInit.sample`` under the layer's name), a ``SharedScores`` module (referenced: several
    layers share one score tensor), or None (a frozen, unmasked weight).

    While training, the mask is selected on every access (scores change every step).
    While not training, mask and masked weight are computed once and reused until the module
    trains again, its state is loaded, or it is moved or cast.

    ``gains`` (``--learned-gains``): a trained scale per output row, starting at 1, multiplies the
    masked weight.
    """

    def __init__(self, random: RandomWeight, mask: MaskConfig, scores=None, own_random: bool = True,
                 gains: bool = False):
        super().__init__()
        self.mask_config = mask
        if own_random:
            self.random = random
        else:
            self._random = _Ref(random)
        if isinstance(scores, nn.Parameter) and scores.shape != random.weight.shape:
            raise ValueError(
                f"scores of shape {tuple(scores.shape)} do not match weight {random.name!r} "
                f"of shape {tuple(random.weight.shape)}"
            )
        if isinstance(scores, nn.Parameter):
            self.scores = scores
        else:
            self.scores = None
            self._shared_scores = _Ref(scores) if scores is not None else None
        if gains and scores is None:
            raise ValueError(f"learned gains need a masked weight; {random.name!r} has no scores")
        self.gains = nn.Parameter(torch.ones(random.weight.shape[0])) if gains else None
        self._eval_cache = None
        self._pinned = None

    # -- the tensors ------------------------------------------------------------------
    @property
    def _random_owner(self) -> RandomWeight:
        rnd = self._modules.get("random")
        return rnd if rnd is not None else self._random.module

    @property
    def _score_owner(self) -> Optional[nn.Module]:
        # The module whose ``scores`` Parameter this layer uses: itself, a SharedScores, or None.
        if self.scores is not None:
            return self
        shared = getattr(self, "_shared_scores", None)
        return shared.module if shared is not None else None

    @property
    def random_source(self) -> RandomWeight:
        """The RandomWeight module this layer masks (its own or a shared one)."""
        return self._random_owner

    @property
    def random_weight(self) -> torch.Tensor:
        return self._random_owner.weight

    @property
    def score_tensor(self) -> Optional[torch.Tensor]:
        owner = self._score_owner
        return owner.scores if owner is not None else None

    @property
    def is_masked(self) -> bool:
        return self.score_tensor is not None

    def mask(self) -> torch.Tensor:
        """The current boolean mask: the weights any coat keeps (all ones for an unmasked weight)."""
        scores = self.score_tensor
        if scores is None:
            return torch.ones_like(self.random_weight, dtype=torch.bool)
        return self.mask_config.kept(scores.detach())

    def mask_values(self) -> torch.Tensor:
        """What multiplies the random weight, in its dtype: ``mask()`` as 1/0 for one coat, multiples
        of 1/coats for more."""
        scores = self.score_tensor
        if scores is None:
            return torch.ones_like(self.random_weight)
        return self.mask_config.values(scores.detach(), self.random_weight.dtype)

    def _current_cache(self) -> Optional[_EvalCache]:
        """The eval cache, when a read may use it: not pinned, not training, still current."""
        cache = self._eval_cache
        if cache is not None and self._pinned is None and not self.training and cache.is_current():
            return cache  # decoding: no module look-ups, a few attribute reads
        return None

    @property
    def weight(self) -> torch.Tensor:
        cache = self._current_cache()
        if cache is not None:
            return cache.masked
        if self._pinned is not None:
            return self._pinned
        weight = self.random_weight
        scores = self.score_tensor
        if scores is None:
            return weight
        if self.training:
            self._eval_cache = None
            return self._with_gains(straight_through_mask(weight, scores, self.mask_config))
        with torch.no_grad():
            masked = self._with_gains(_masked(weight, scores, self.mask_config))
            self._eval_cache = _EvalCache(self._random_owner, self._score_owner, masked, self)
        return self._eval_cache.masked

    def _with_gains(self, masked: torch.Tensor) -> torch.Tensor:
        return masked if self.gains is None else masked * self.gains.unsqueeze(1)

    def matmul_weight(self) -> torch.Tensor:
        """``weight`` as an input of a matrix multiply: the same, except while decoding under
        autocast, where it is the cached masked weight already cast to autocast's type."""
        cache = self._current_cache()
        if cache is not None:
            return cache.cast_for_autocast()  # decoding: read for every matrix multiply of every step
        weight = MaskedWeight.weight.fget(self)
        cache = self._eval_cache
        return cache.cast_for_autocast() if cache is not None and weight is cache.masked else weight

    @contextlib.contextmanager
    def one_weight_per_forward(self):
        """Within the block every use of ``weight`` gets the same masked weight: one selection
        and one straight-through backward however often it is used (a tied embedding: up to 3)."""
        if self._pinned is not None:
            yield
            return
        self._pinned = self.weight
        try:
            yield
        finally:
            self._pinned = None

    # -- cache invalidation -----------------------------------------------------------
    def train(self, mode: bool = True):
        if mode:  # eval() -> eval() keeps the cache (fairseq's generator calls eval() again)
            self._eval_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._eval_cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._eval_cache = None
        return super()._load_from_state_dict(*args, **kwargs)


class SharedScores(nn.Module):
    """One score tensor used by several virtual layers (``--share-mask layer_mask``)."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = nn.Parameter(scores)


class MaskedLinear(MaskedWeight):
    """y = x (W * M)^T + b with W frozen random, M selected from trained scores.

    Its ``weight`` only feeds matrix multiplies (``forward`` and fairseq's attention fast path), so
    while decoding under autocast it is the cached masked weight already in autocast's type.
    """

    def __init__(self, random: RandomWeight, mask: MaskConfig, scores=None,
                 own_random: bool = True, bias: str = "none", gains: bool = False):
        super().__init__(random, mask, scores, own_random, gains)
        self.out_features, self.in_features = random.weight.shape
        if bias == "trained":
            self.bias = nn.Parameter(torch.zeros(self.out_features))
        elif bias == "zero":
            # A constant zero bias, for callers that need a bias tensor (fairseq's attention
            # fast path concatenates the q/k/v biases); not stored in the state dict.
            self.register_buffer("bias", torch.zeros(self.out_features), persistent=False)
        elif bias == "none":
            self.bias = None
        else:
            raise ValueError(f"bias must be 'none', 'trained' or 'zero', got {bias!r}")

    weight = property(MaskedWeight.matmul_weight)

    def forward(self, x):
        return _linear(x, self.matmul_weight(), self.bias)

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, "
                f"masked={self.is_masked}")


class MaskedEmbedding(MaskedWeight):
    """An embedding table whose rows are masked random (or fixed pre-trained) vectors."""

    def __init__(self, random: RandomWeight, mask: MaskConfig, padding_idx: Optional[int],
                 scores=None, own_random: bool = True):
        super().__init__(random, mask, scores, own_random)
        self.num_embeddings, self.embedding_dim = random.weight.shape
        self.padding_idx = padding_idx

    def forward(self, tokens):
        return F.embedding(tokens, self.weight, self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, masked={self.is_masked}"


class TiedLinear(nn.Module):
    """Output projection that reuses an embedding's masked weight (same weight AND scores)."""

    def __init__(self, embedding: MaskedEmbedding):
        super().__init__()
        self._embedding = _Ref(embedding)

    @property
    def weight(self):
        return self._embedding.module.matmul_weight()

    def forward(self, x):
        return _linear(x, self.weight)
