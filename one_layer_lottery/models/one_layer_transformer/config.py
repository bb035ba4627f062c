"""Options of the one-layer masked Transformer (a flat dataclass: CLI flags and Hydra YAML)."""
from dataclasses import dataclass, field, fields
from typing import Optional

from fairseq import utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from ...masking import ATTENTION_INITS, MASK_INITS, PRUNE_METHODS, WEIGHT_INITS

SHARE_MODES = ("layer_weights", "layer_mask", "none")
LAYERNORM_TYPES = ("masked_layernorm", "normal_layernorm", "frozen_layernorm")
# Marks the options a checkpoint records (checkpoint_options.py): they decide which random weights
# exist and which of them the trained scores keep, so loading under other values is refused.
RECORDED = {"recorded": True}


@dataclass
class OneLayerTransformerConfig(FairseqDataclass):
    # -- Transformer shape (defaults: the iwslt_de_en shape) ----------------------------------
    activation_fn: ChoiceEnum(utils.get_available_activation_fns()) = field(
        default="relu", metadata={"help": "activation function"})
    dropout: float = field(default=0.3, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension"})
    encoder_ffn_embed_dim: int = field(default=1024, metadata={"help": "encoder FFN dimension"})
    encoder_layers: int = field(default=6, metadata={"help": "encoder virtual layers"})
    encoder_attention_heads: int = field(default=4, metadata={"help": "encoder attention heads"})
    encoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm encoder"})
    encoder_embed_path: Optional[str] = field(
        default=None, metadata={"help": "pre-trained encoder embeddings (fairseq text format), kept fixed"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension"})
    decoder_ffn_embed_dim: int = field(default=1024, metadata={"help": "decoder FFN dimension"})
    decoder_layers: int = field(default=6, metadata={"help": "decoder virtual layers"})
    decoder_attention_heads: int = field(default=4, metadata={"help": "decoder attention heads"})
    decoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm decoder"})
    decoder_embed_path: Optional[str] = field(
        default=None, metadata={"help": "pre-trained decoder embeddings (fairseq text format), kept fixed"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "decoder output projection reuses the input embedding (weight and scores)"})
    share_all_embeddings: bool = field(
        default=False, metadata={"help": "encoder and decoder share one embedding (needs a joined dictionary)"})
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings by sqrt(dim)"})
    no_token_positional_embeddings: bool = field(
        default=False, metadata={"help": "no sinusoidal positional embeddings"})
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")

    # -- masking -----------------------------------------------------------------------------
    prune_ratio: float = field(
        default=0.5,
        metadata={"help": "fraction of each weight matrix REMOVED by the mask, in (0, 1); 0.5 keeps half. "
                          "(The authors' --prune-ratio meant the fraction kept.)", **RECORDED})
    prune_method: ChoiceEnum(PRUNE_METHODS) = field(
        default="super_mask",
        metadata={"help": "super_mask: keep the top-k by |score| (the paper's); topk: by signed score; "
                          "threshold / sigmoid_threshold: score or sigmoid(score) above --mask-threshold", **RECORDED})
    mask_threshold: float = field(default=0.0, metadata={"help": "threshold of the threshold methods", **RECORDED})
    share_mask: ChoiceEnum(SHARE_MODES) = field(
        default="layer_weights",
        metadata={"help": "layer_weights: one random weight set per stack, scores per virtual layer; "
                          "layer_mask: scores shared, weights per layer; none: independent random layers", **RECORDED})
    init: ChoiceEnum(WEIGHT_INITS) = field(
        default="kaiming_uniform", metadata={"help": "init of every random weight (attention included)", **RECORDED})
    scale_fan: bool = field(default=False, metadata={"help": "scale the init's fan by the kept fraction", **RECORDED})
    attention_init: ChoiceEnum(ATTENTION_INITS) = field(
        default="same",
        metadata={"help": "same: attention projections use --init; fairseq_xavier: the authors' code "
                          "(xavier_uniform, gain 1/sqrt(2) for q/k/v), for exact paper runs", **RECORDED})
    authors_init: bool = field(
        default=False,
        metadata={"help": "draw every random weight as the authors' code did, at any ratio: --scale-fan by the "
                          "removed fraction and only for kaiming_normal / constant inits, their xavier attention, "
                          "N(0, 1/sqrt(dim)) unmasked embeddings and untied output projection (kept masked), "
                          "pre-trained embeddings rescaled only under --scale-fan (docs/differences-from-authors.md)",
                          **RECORDED})
    mask_init: ChoiceEnum(MASK_INITS) = field(
        default="standard", metadata={"help": "init of the scores: standard is kaiming_uniform(a=sqrt(5))", **RECORDED})
    mask_constant: float = field(default=1.0, metadata={"help": "score value of the constant mask inits", **RECORDED})
    mask_layernorm_type: ChoiceEnum(LAYERNORM_TYPES) = field(
        default="masked_layernorm",
        metadata={"help": "masked_layernorm: no affine parameters; normal_layernorm: trained affine; "
                          "frozen_layernorm: affine kept at its init", **RECORDED})
    embed_no_mask: bool = field(
        default=False, metadata={"help": "embeddings are fixed and not masked (no scores)", **RECORDED})
    need_bias: bool = field(
        default=False, metadata={"help": "add trained biases to the masked linear layers", **RECORDED})
    layers_no_mask: bool = field(
        default=False,
        metadata={"help": "the control for the mask search: the layers' random weights are used whole (no scores); "
                          "what trains is what else the flags make trainable (masked embeddings, LayerNorm affine, "
                          "biases)", **RECORDED})
    # -- strong-lottery-ticket methods since the paper (README.md, Options) ----------------------
    mask_coats: int = field(
        default=1,
        metadata={"help": "multicoated supermask (Okoshi et al. 2022): C nested top-k masks over the same scores, "
                          "the outermost keeping what --prune-ratio keeps, coat c the top (C-c+1)/C of that; a "
                          "weight is multiplied by the share of coats that keep it; 1 is the plain mask", **RECORDED})
    rerand_interval: int = field(
        default=0,
        metadata={"help": "IteRand (Chijiwa et al. 2021): every K updates, redraw --rerand-fraction of the random "
                          "weights of the layers that no mask keeps, from (seed, name, round); 0 never", **RECORDED})
    rerand_fraction: float = field(
        default=0.1, metadata={"help": "share of the removed weights each --rerand-interval round redraws, in (0, 1]",
                               **RECORDED})
    learned_gains: bool = field(
        default=False,
        metadata={"help": "a trained scale per output row of every masked layer matrix of every virtual layer, "
                          "starting at 1 (in the spirit of biprop, Diffenderfer & Kailkhura 2021)", **RECORDED})
    qk_init_scale: float = field(
        default=1.0,
        metadata={"help": "multiply the random query and key projections by S at init (Otsuka et al. 2025); "
                          "any finite S > 0", **RECORDED})
    mask_log_interval: int = field(
        default=100,
        metadata={"help": "compute mask statistics every N updates: the log line shows their mean (kept "
                          "fraction, flipped bits, overlap of the layers sharing a weight), "
                          "--tensorboard-logdir records them per layer and matrix; 0 disables"})
    seed: int = field(default=II("common.seed"), metadata=RECORDED)


CONFIG_FIELDS = tuple(f.name for f in fields(OneLayerTransformerConfig))
RECORDED_OPTIONS = tuple(f.name for f in fields(OneLayerTransformerConfig) if f.metadata.get("recorded"))

# name -> (embed dim, FFN dim, heads, virtual layers per stack, extra defaults)
ARCHITECTURES = {
    "one_layer_transformer_iwslt_de_en": (512, 1024, 4, 6, {}),
    "one_layer_transformer_big_iwslt_de_en": (1024, 2048, 4, 6, {}),
    "one_layer_transformer_deep_iwslt_de_en": (512, 1024, 4, 12, {}),
    "one_layer_transformer_bigdeep_iwslt_de_en": (1024, 2048, 4, 12, {}),
    "one_layer_transformer_wmt_en_de": (512, 2048, 8, 6, {"dropout": 0.1}),
    "one_layer_transformer_wmt_en_de_big": (1024, 4096, 16, 6, {"dropout": 0.3}),
    # What the authors' masked_transformer_wmt_en_de_big built (a name collision in their code):
    # the model behind the paper's WMT14 "wider" 17.29.
    "one_layer_transformer_wmt_en_de_big_as_run": (1536, 6144, 24, 6, {"dropout": 0.3, "attention_dropout": 0.1}),
}
