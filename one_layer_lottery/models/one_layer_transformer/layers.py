"""Encoder / decoder whose virtual layers are masks over shared random weights.

fairseq's Transformer classes are reused as they are; only their builder hooks
(``build_fc1``, ``build_self_attention``, ...) are overridden to return masked layers.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from fairseq.modules import MultiheadAttention
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from torch import nn

from ...masking import (
    MaskConfig,
    MaskedEmbedding,
    MaskedLinear,
    RandomWeight,
    ScoreInit,
    SharedScores,
    TiedLinear,
    WeightInit,
    attention_init,
    embedding_normal_init,
    pretrained_embedding_scale,
)
from ...masking.rerandomize import RerandSchedule


@dataclass(frozen=True)
class MaskOptions:
    """The masking part of the model config, resolved and validated."""

    mask: MaskConfig
    weight_init: WeightInit
    attention_init: str
    score_init: ScoreInit
    share_mask: str
    layernorm_type: str
    need_bias: bool
    embed_no_mask: bool
    seed: int
    scale_fan: bool = False  # the flag as given (``weight_init`` holds what it means for each init)
    authors_init: bool = False  # every tensor drawn as in the authors' code (see ``masking.init``)
    learned_gains: bool = False  # a trained scale per output row of every layer matrix
    qk_init_scale: float = 1.0  # multiplies the random query and key projections
    rerand: RerandSchedule = RerandSchedule()  # IteRand redraws of removed layer weights
    layers_no_mask: bool = False  # the layers' random weights used whole: the control for the mask search

    def new_scores(self, shape, name):
        return nn.Parameter(self.score_init.sample(shape, self.seed, name))


class SharedWeights(nn.Module):
    """The random tensors (and, with ``layer_mask``, the scores) shared by the virtual layers
    of one stack. Each shared tensor is registered here once."""

    def __init__(self, side: str, opts: MaskOptions):
        super().__init__()
        self.side = side
        self.opts = opts
        self.weights = nn.ModuleDict()
        self.scores = nn.ModuleDict()
        self.num_virtual_layers = 0

    def next_layer(self) -> "LayerBuilder":
        builder = LayerBuilder(self, self.num_virtual_layers)
        self.num_virtual_layers += 1
        return builder

    def linear(self, index: int, name: str, in_dim: int, out_dim: int, init: WeightInit,
               zero_bias: bool = False) -> MaskedLinear:
        opts, shape, key = self.opts, (out_dim, in_dim), name.replace(".", "_")
        layer_name = f"{self.side}.layers.{index}.{name}"
        shared_name = f"{self.side}.shared.{name}"
        if opts.share_mask == "layer_weights":
            if key not in self.weights:
                self.weights[key] = RandomWeight(shape, init, opts.seed, shared_name)
            random, own_random = self.weights[key], False
        else:
            random, own_random = RandomWeight(shape, init, opts.seed, layer_name), True
        if opts.layers_no_mask:
            scores = None
        elif opts.share_mask == "layer_mask":
            if key not in self.scores:
                self.scores[key] = SharedScores(opts.score_init.sample(shape, opts.seed, shared_name))
            scores = self.scores[key]
        else:
            scores = opts.new_scores(shape, layer_name)
        bias = "trained" if opts.need_bias else ("zero" if zero_bias else "none")
        return MaskedLinear(random, opts.mask, scores, own_random=own_random, bias=bias, gains=opts.learned_gains)


class LayerBuilder:
    """Makes the masked sub-modules of one virtual layer (a plain object, not a module)."""

    def __init__(self, shared: SharedWeights, index: int):
        self.shared = shared
        self.index = index

    def fc(self, name, in_dim, out_dim):
        return self.shared.linear(self.index, name, in_dim, out_dim, self.shared.opts.weight_init)

    def attention(self, name, embed_dim, num_heads, dropout, kdim=None, vdim=None, **kwargs):
        opts = self.shared.opts
        in_dims = {"q_proj": embed_dim, "k_proj": kdim or embed_dim, "v_proj": vdim or embed_dim,
                   "out_proj": embed_dim}
        qkv_same_dim = in_dims["k_proj"] == embed_dim and in_dims["v_proj"] == embed_dim
        projections = {
            proj: self.shared.linear(
                self.index, f"{name}.{proj}", in_dim, embed_dim,
                attention_init(opts.weight_init, opts.attention_init, proj, qkv_same_dim, opts.qk_init_scale),
                zero_bias=True)
            for proj, in_dim in in_dims.items()
        }
        return MaskedMultiheadAttention(embed_dim, num_heads, projections, kdim=kdim, vdim=vdim,
                                        dropout=dropout, **kwargs)


class MaskedMultiheadAttention(MultiheadAttention):
    """fairseq's attention with masked q/k/v/out projections.

    Both of fairseq's code paths see the mask: the module path calls the projections, and the
    fast path (``F.multi_head_attention_forward``) reads ``proj.weight`` / ``proj.bias``, which
    are the masked weight and a (zero or trained) bias tensor.
    """

    def __init__(self, embed_dim, num_heads, projections, **kwargs):
        super().__init__(embed_dim, num_heads, bias=False, **kwargs)
        for name, module in projections.items():
            setattr(self, name, module)

    def reset_parameters(self):
        # The projections are frozen random weights drawn by RandomWeight; nothing to reset.
        pass


class NonAffineLayerNorm(nn.LayerNorm):
    """LayerNorm without parameters (``--mask-layernorm-type masked_layernorm``).

    The kernel gets a constant weight of ones: the output is the same bit for bit, but torch's
    CPU kernel is about 2x slower when it has no weight at all.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=False)
        self.register_buffer("ones", torch.ones(self.normalized_shape), persistent=False)

    def forward(self, x):
        ones = self.ones
        if ones.dtype != x.dtype:
            ones = ones.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, ones, None, self.eps)


def build_layer_norm(kind: str, normalized_shape, eps: float) -> nn.Module:
    """The LayerNorm ``--mask-layernorm-type kind`` asks for, always one of torch's: without
    parameters (masked_layernorm), with trained (normal_layernorm) or frozen (frozen_layernorm)
    affine parameters at their init (ones, zeros)."""
    if kind == "masked_layernorm":
        norm = NonAffineLayerNorm(normalized_shape, eps=eps)
    else:
        norm = nn.LayerNorm(normalized_shape, eps=eps)
        if kind == "frozen_layernorm":
            norm.requires_grad_(False)
    norm.layernorm_type = kind  # marks it as decided here (re-applying keeps it)
    return norm


def fairseq_layer_norm_classes() -> tuple:
    """The classes fairseq's ``LayerNorm`` factory may return: torch's, and where apex is installed
    and CUDA is available, apex's ``FusedLayerNorm``, which is not a ``torch.nn.LayerNorm``."""
    from fairseq.modules import layer_norm

    fused = getattr(layer_norm, "FusedLayerNorm", None)
    return (nn.LayerNorm,) + ((fused,) if isinstance(fused, type) else ())


def apply_layernorm_type(module: nn.Module, kind: str) -> None:
    """Replace every LayerNorm fairseq built inside ``module`` by ``build_layer_norm(kind, ...)``.

    Whatever class fairseq chose (its choice depends on apex and CUDA) is replaced, so the model
    is the same everywhere: with apex's fused class left in place, a masked_layernorm model would
    train affine parameters that the paper's model does not have.
    """
    classes = fairseq_layer_norm_classes()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if getattr(child, "layernorm_type", None) == kind:
                continue
            # The class name catches other fused variants fairseq might return in the future.
            if isinstance(child, classes) or "LayerNorm" in type(child).__name__:
                if not hasattr(child, "normalized_shape") or not hasattr(child, "eps"):
                    raise TypeError(f"cannot apply --mask-layernorm-type {kind} to {name} "
                                    f"({type(child).__qualname__}): it has no normalized_shape / eps")
                setattr(parent, name, build_layer_norm(kind, child.normalized_shape, child.eps))


class _MaskedFeedForward:
    """fairseq's FFN builder hooks, returning masked layers from the layer's builder.

    ``self._builder`` (a plain object) is set before fairseq's layer ``__init__`` runs the hooks.
    """

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        return self._builder.fc("fc1", input_dim, output_dim)

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return self._builder.fc("fc2", input_dim, output_dim)


class OneLayerTransformerEncoderLayer(_MaskedFeedForward, TransformerEncoderLayerBase):
    def __init__(self, cfg, builder: LayerBuilder):
        self._builder = builder
        super().__init__(cfg)
        del self._builder
        apply_layernorm_type(self, builder.shared.opts.layernorm_type)

    def build_self_attention(self, embed_dim, cfg):
        return self._builder.attention(
            "self_attn", embed_dim, cfg.encoder.attention_heads, cfg.attention_dropout,
            self_attention=True)


class OneLayerTransformerDecoderLayer(_MaskedFeedForward, TransformerDecoderLayerBase):
    def __init__(self, cfg, builder: LayerBuilder, no_encoder_attn=False):
        self._builder = builder
        super().__init__(cfg, no_encoder_attn)
        del self._builder
        apply_layernorm_type(self, builder.shared.opts.layernorm_type)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return self._builder.attention(
            "self_attn", embed_dim, cfg.decoder.attention_heads, cfg.attention_dropout,
            add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
            self_attention=not cfg.cross_self_attention)

    def build_encoder_attention(self, embed_dim, cfg):
        return self._builder.attention(
            "encoder_attn", embed_dim, cfg.decoder.attention_heads, cfg.attention_dropout,
            kdim=cfg.encoder.embed_dim, vdim=cfg.encoder.embed_dim, encoder_decoder_attention=True)


class OneLayerTransformerEncoder(TransformerEncoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, opts: MaskOptions):
        self._opts = opts
        super().__init__(cfg, dictionary, embed_tokens)
        del self._opts
        apply_layernorm_type(self, opts.layernorm_type)

    def build_encoder_layer(self, cfg):
        if "shared" not in self._modules:
            self.shared = SharedWeights("encoder", self._opts)
        return OneLayerTransformerEncoderLayer(cfg, self.shared.next_layer())


class OneLayerTransformerDecoder(TransformerDecoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, opts: MaskOptions, no_encoder_attn=False):
        self._opts = opts
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        del self._opts
        apply_layernorm_type(self, opts.layernorm_type)

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        if "shared" not in self._modules:
            self.shared = SharedWeights("decoder", self._opts)
        return OneLayerTransformerDecoderLayer(cfg, self.shared.next_layer(), no_encoder_attn)

    def build_output_projection(self, cfg, dictionary, embed_tokens):
        if cfg.adaptive_softmax_cutoff is not None:
            raise ValueError("one_layer_transformer does not support --adaptive-softmax-cutoff")
        if self.share_input_output_embed:
            if not isinstance(embed_tokens, MaskedEmbedding):
                raise TypeError("a shared output projection needs the decoder's MaskedEmbedding")
            self.output_projection = TiedLinear(embed_tokens)
            return
        opts = self._opts
        shape = (len(dictionary), self.output_embed_dim)
        name = "decoder.output_projection"
        # The authors drew an untied output projection from N(0, 1/sqrt(dim)) and kept it masked
        # also under --embed-no-mask.
        init = embedding_normal_init() if opts.authors_init else opts.weight_init
        masked = opts.authors_init or not opts.embed_no_mask
        random = RandomWeight(shape, init, opts.seed, name)
        scores = opts.new_scores(shape, name) if masked else None
        self.output_projection = MaskedLinear(random, opts.mask, scores)


def build_masked_embedding(opts: MaskOptions, num_embeddings: int, embed_dim: int, padding_idx: int,
                           name: str, pretrained: torch.Tensor = None, found_rows=None) -> MaskedEmbedding:
    """A random (or partly pre-trained) embedding table, masked unless ``--embed-no-mask``.

    Pre-trained rows replace the random ones, scaled by ``pretrained_embedding_scale``.
    """
    # The authors' unmasked embeddings: fairseq's N(0, 1/sqrt(dim)); masked ones use --init.
    init = embedding_normal_init() if opts.authors_init and opts.embed_no_mask else opts.weight_init
    random = RandomWeight((num_embeddings, embed_dim), init, opts.seed, name)
    with torch.no_grad():
        if pretrained is not None:
            rows = torch.as_tensor(found_rows, dtype=torch.long)
            scale = pretrained_embedding_scale(opts.mask.prune_ratio, not opts.embed_no_mask, opts.scale_fan,
                                               opts.authors_init)
            random.weight[rows] = pretrained.to(random.weight.dtype) * scale
        if padding_idx is not None:
            random.weight[padding_idx].zero_()
    scores = None if opts.embed_no_mask else opts.new_scores(random.weight.shape, name)
    return MaskedEmbedding(random, opts.mask, padding_idx, scores)
