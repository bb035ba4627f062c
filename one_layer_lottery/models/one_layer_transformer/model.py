"""The one-layer randomly weighted Transformer (Shen et al., EMNLP 2021) as a fairseq model."""
import argparse
import collections
import contextlib
import json
import logging

import torch
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModelBase
from fairseq.utils import safe_getattr

from ...embedding_file import read_embeddings
from ...mask_stats import MaskMonitor
from ...masking import ATTENTION_INITS, MaskConfig, RandomWeight, ScoreInit, WeightInit
from .config import ARCHITECTURES, CONFIG_FIELDS, LAYERNORM_TYPES, SHARE_MODES, OneLayerTransformerConfig
from .layers import (
    MaskOptions,
    OneLayerTransformerDecoder,
    OneLayerTransformerEncoder,
    build_masked_embedding,
)

logger = logging.getLogger(__name__)
MODEL_NAME = "one_layer_transformer"
EXTRA_STATE_KEY = "_extra_state"  # where nn.Module.state_dict puts get_extra_state()


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


# The options that decide which random weights exist and which of them the trained scores keep.
# A checkpoint records them (``_extra_state`` in its model state); loading it under other values
# would silently reinterpret its scores, so that is refused.
def mask_identity(opts: MaskOptions) -> dict:
    return {
        "--prune-ratio": float(opts.mask.prune_ratio),
        "--prune-method": opts.mask.method,
        "--mask-threshold": float(opts.mask.threshold),
        "--share-mask": opts.share_mask,
        "--init": opts.weight_init.method,
        "--scale-fan": bool(opts.weight_init.scale_fan),
        "--attention-init": opts.attention_init,
        "--mask-init": opts.score_init.method,
        "--mask-constant": float(opts.score_init.constant),
        "--mask-layernorm-type": opts.layernorm_type,
        "--need-bias": bool(opts.need_bias),
        "--embed-no-mask": bool(opts.embed_no_mask),
        "--seed": int(opts.seed),
    }


def mask_identity_mismatches(saved: dict, current: dict) -> list:
    """'flag: checkpoint X, this model Y' for every option that differs and matters."""
    ignored = set()
    if current.get("--prune-method") not in ("threshold", "sigmoid_threshold"):
        ignored.add("--mask-threshold")
    if current.get("--mask-init") == "standard":
        ignored.add("--mask-constant")
    return [f"{flag}: the checkpoint's is {saved.get(flag, '(not recorded)')}, this model's is {value}"
            for flag, value in current.items() if flag not in ignored and saved.get(flag) != value]


def _decode_extra_state(saved) -> dict:
    """The options a checkpoint recorded with ``get_extra_state``."""
    try:
        codes = saved.detach().double().cpu()
        rounded = codes.round()
        if codes.dim() != 1 or not bool(((codes - rounded).abs() < 0.25).all()) \
                or not bool(((rounded >= 0) & (rounded < 128)).all()):
            raise ValueError("not ASCII codes")
        return json.loads(bytes(int(c) for c in rounded.tolist()).decode("ascii"))["mask_options"]
    except Exception as e:  # what the record holds is not ours to trust
        raise ValueError(
            "the checkpoint's record of its masking options (_extra_state) is unreadable "
            f"({type(e).__name__}: {e}); was it averaged across runs with different options?") from None


def _equal_up_to_half_rounding(a, b) -> bool:
    # fairseq stores the weights of an --fp16 / bf16 run as float32 copies of the rounded values.
    return any(torch.equal(a, b) if dtype is None else torch.equal(a.to(dtype), b.to(dtype))
               for dtype in (None, torch.float16, torch.bfloat16))


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
        model.mask_monitor = MaskMonitor(args.mask_log_interval)
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

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **kwargs):
        # A shared embedding is used up to three times per step; mask it once.
        with contextlib.ExitStack() as stack:
            for emb in {id(e): e for e in (self.encoder.embed_tokens, self.decoder.embed_tokens)}.values():
                stack.enter_context(emb.one_weight_per_forward())
            return super().forward(src_tokens, src_lengths, prev_output_tokens, **kwargs)

    # -- checkpoints ------------------------------------------------------------------------
    # fairseq's trainer passes the *current* run's config to load_state_dict, never the
    # checkpoint's, so the model state itself records the options its scores were trained under
    # (key "_extra_state"). It is a float tensor of the JSON's bytes, not a dict: fairseq's tools
    # and users' scripts treat every model-state value as a tensor (checkpoint averaging sums and
    # divides them, EMA decays them), and small integers survive that and fp16/bf16 exactly.
    def get_extra_state(self):
        opts = getattr(self, "mask_options", None)
        if opts is None:
            return torch.zeros(0)
        text = json.dumps({"mask_options": mask_identity(opts)}, sort_keys=True)
        return torch.tensor(list(text.encode("ascii")), dtype=torch.float32)

    def set_extra_state(self, state):
        pass  # checked in load_state_dict, before anything is copied

    def _check_mask_options(self, saved):
        opts = getattr(self, "mask_options", None)
        if opts is None:
            return
        recorded = _decode_extra_state(saved)
        wrong = mask_identity_mismatches(recorded, mask_identity(opts))
        if wrong:
            raise ValueError(
                "the checkpoint does not match this one_layer_transformer: it was trained under other masking "
                f"options ({'; '.join(wrong)}). Its scores select weights under its own options and cannot be "
                "resumed or decoded under these: use the checkpoint's options, or train from scratch elsewhere.")

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        monitor = getattr(self, "mask_monitor", None)
        if monitor is not None and self.training:
            monitor.step(self, num_updates)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        if EXTRA_STATE_KEY in state_dict:
            self._check_mask_options(state_dict[EXTRA_STATE_KEY])
        elif strict:  # written before the options were recorded, or not by this plugin
            logger.warning("the checkpoint does not record its masking options; they cannot be checked")
        # The record is checked; what gets loaded is this model's own (its length may differ).
        metadata = getattr(state_dict, "_metadata", None)
        state_dict = collections.OrderedDict(state_dict)
        if metadata is not None:
            state_dict._metadata = metadata
        state_dict[EXTRA_STATE_KEY] = self.get_extra_state()
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
        self._warn_if_random_weights_differ(state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def _warn_if_random_weights_differ(self, state_dict):
        # The checkpoint's random weights are used; with equal options they should be exactly the ones
        # this model drew from --seed (not, e.g., after a change of the init code or of an embedding file).
        differ = []
        for prefix, module in self.named_modules():
            if isinstance(module, RandomWeight):
                key = f"{prefix}.weight" if prefix else "weight"
                saved = state_dict.get(key)
                mine = module.weight
                if torch.is_tensor(saved) and saved.dtype == mine.dtype and saved.shape == mine.shape \
                        and not _equal_up_to_half_rounding(saved.to(mine.device), mine):
                    differ.append(key)
        if differ:
            logger.warning(f"{len(differ)} random weights of the checkpoint differ from the ones --seed generates "
                           f"here (e.g. {differ[0]}); the checkpoint's are used")


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
