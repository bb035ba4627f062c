"""The one-layer randomly weighted Transformer (Shen et al., EMNLP 2021) as a fairseq model."""
import argparse
import logging

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModelBase
from fairseq.utils import safe_getattr

from ...embedding_file import read_embeddings
from ...masking import ATTENTION_INITS, MaskConfig, ScoreInit, WeightInit
from .config import ARCHITECTURES, CONFIG_FIELDS, LAYERNORM_TYPES, SHARE_MODES, OneLayerTransformerConfig
from .layers import (
    MaskOptions,
    OneLayerTransformerDecoder,
    OneLayerTransformerEncoder,
    build_masked_embedding,
)

logger = logging.getLogger(__name__)
MODEL_NAME = "one_layer_transformer"


# Values of the fields whose defaults interpolate other config groups, for a bare config.
_FALLBACKS = {"seed": 1, "max_source_positions": 1024, "max_target_positions": 1024}


def _resolve(cfg) -> argparse.Namespace:
    """Our options from an argparse Namespace or a (possibly partial) DictConfig, with defaults."""
    defaults = OneLayerTransformerConfig()
    values = {}
    for name in CONFIG_FIELDS:
        value = safe_getattr(cfg, name, None)
        if value is None:
            value = getattr(defaults, name)
        if isinstance(value, str) and value.startswith("${"):
            value = _FALLBACKS[name]
        values[name] = value
    return argparse.Namespace(**values)


def mask_options(args: argparse.Namespace) -> MaskOptions:
    """Validate the masking options (also when they come from YAML); every error names its flag."""
    mask = MaskConfig(str(args.prune_method), args.prune_ratio, float(args.mask_threshold))
    return MaskOptions(
        mask=mask,
        weight_init=WeightInit(str(args.init), bool(args.scale_fan), mask.keep_fraction),
        attention_init=_choice("--attention-init", args.attention_init, ATTENTION_INITS),
        score_init=ScoreInit(str(args.mask_init), float(args.mask_constant)),
        share_mask=_choice("--share-mask", args.share_mask, SHARE_MODES),
        layernorm_type=_choice("--mask-layernorm-type", args.mask_layernorm_type, LAYERNORM_TYPES),
        need_bias=bool(args.need_bias),
        embed_no_mask=bool(args.embed_no_mask),
        seed=int(args.seed),
    )


def _choice(flag, value, choices):
    value = str(value)
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


@register_model(MODEL_NAME, dataclass=OneLayerTransformerConfig)
class OneLayerTransformerModel(TransformerModelBase):
    """Encoder-decoder Transformer whose virtual layers are learned masks over frozen random weights."""

    @classmethod
    def add_args(cls, parser):
        # No defaults on the parser, so that the --arch functions can fill them in.
        gen_parser_from_dataclass(parser, OneLayerTransformerConfig(), delete_default=True)

    @classmethod
    def build_model(cls, cfg, task):
        args = _resolve(cfg)
        opts = mask_options(args)
        flat = vars(args).copy()
        flat.update(decoder_input_dim=args.decoder_embed_dim, decoder_output_dim=args.decoder_embed_dim,
                    tpu=False)
        tcfg = TransformerConfig.from_namespace(argparse.Namespace(**flat))
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings requires a joined dictionary "
                                 "(fairseq-preprocess --joined-dictionary): source and target dictionaries differ")
            if args.encoder_embed_dim != args.decoder_embed_dim:
                raise ValueError("--share-all-embeddings requires --encoder-embed-dim == --decoder-embed-dim")
            if args.decoder_embed_path and args.decoder_embed_path != args.encoder_embed_path:
                raise ValueError("--share-all-embeddings is not compatible with a different --decoder-embed-path")
            tcfg.share_decoder_input_output_embed = True
            enc_emb = cls.build_masked_embedding(opts, src_dict, args.encoder_embed_dim,
                                                 args.encoder_embed_path, "encoder", "--encoder-embed-path")
            dec_emb = enc_emb
        else:
            enc_emb = cls.build_masked_embedding(opts, src_dict, args.encoder_embed_dim,
                                                 args.encoder_embed_path, "encoder", "--encoder-embed-path")
            dec_emb = cls.build_masked_embedding(opts, tgt_dict, args.decoder_embed_dim,
                                                 args.decoder_embed_path, "decoder", "--decoder-embed-path")
        encoder = OneLayerTransformerEncoder(tcfg, src_dict, enc_emb, opts)
        decoder = OneLayerTransformerDecoder(tcfg, tgt_dict, dec_emb, opts)
        model = cls(tcfg, encoder, decoder)
        model.mask_options = opts
        return model

    @staticmethod
    def build_masked_embedding(opts, dictionary, dim, path, side, flag):
        pretrained = rows = None
        if path:
            vocab = {dictionary[i]: i for i in range(len(dictionary))}
            pretrained, rows = read_embeddings(path, dim, vocab, flag)
            logger.info(f"{flag} {path}: {len(rows)} of {len(dictionary)} tokens have a pre-trained vector")
        return build_masked_embedding(opts, len(dictionary), dim, dictionary.pad(), f"{side}.embed_tokens",
                                      pretrained, rows)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if strict and (missing or unexpected):
            hint = ""
            if any(k.endswith(".fc1.weight") for k in unexpected):
                hint = " It looks like a dense fairseq model, not a one_layer_transformer."
            raise ValueError(
                "the checkpoint does not match this one_layer_transformer architecture."
                f"{hint} Missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                f"unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        for key, tensor in state_dict.items():
            if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"the checkpoint's {key} has shape {tuple(tensor.shape)}, this model's has "
                    f"{tuple(expected[key].shape)}: the checkpoint was trained with another architecture "
                    "or dictionary")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def _make_architecture(name, embed_dim, ffn_dim, heads, layers, extra):
    def arch(args):
        args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", embed_dim)
        args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", ffn_dim)
        args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", heads)
        args.encoder_layers = safe_getattr(args, "encoder_layers", layers)
        args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", args.encoder_embed_dim)
        args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
        args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", heads)
        args.decoder_layers = safe_getattr(args, "decoder_layers", layers)
        for key, value in extra.items():
            setattr(args, key, safe_getattr(args, key, value))

    arch.__name__ = name
    register_model_architecture(MODEL_NAME, name)(arch)


for _name, _shape in ARCHITECTURES.items():
    _make_architecture(_name, *_shape)
