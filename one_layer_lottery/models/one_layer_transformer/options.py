"""The model's options as every tool reads them: resolved once, masking options validated once.

Options enter from fairseq's command line, Hydra YAML, a checkpoint's stored config or a compact
file's header; each of those passes through ``resolve_options`` and ``validated_mask_options``,
so every error names the flag, whatever the source. Errors are ``OptionError``: the fairseq command
lines and the tools print them as one usage-error line (console.py).
"""
import argparse

from fairseq.utils import safe_getattr

from ...console import ToolError
from ...masking import ATTENTION_INITS, MaskConfig, ScoreInit, masked_weight_init
from ...masking.init import check_positive
from ...masking.rerandomize import RerandSchedule
from .config import CONFIG_FIELDS, LAYERNORM_TYPES, SHARE_MODES, OneLayerTransformerConfig
from .layers import MaskOptions

# Values of the fields whose defaults interpolate other config groups, for a bare config.
class OptionError(ToolError):
    """An option value the model cannot use; the message names the flag."""


_FALLBACKS = {"seed": 1, "max_source_positions": 1024, "max_target_positions": 1024}


def resolve_options(cfg) -> argparse.Namespace:
    """Every option of the model from an argparse Namespace, a (possibly partial) DictConfig or a
    dict, the dataclass defaults filling in what is missing."""
    defaults = OneLayerTransformerConfig()
    values = {}
    for name in CONFIG_FIELDS:
        value = cfg.get(name) if isinstance(cfg, dict) else safe_getattr(cfg, name, None)
        if value is None:
            value = getattr(defaults, name)
        if isinstance(value, str) and value.startswith("${"):
            value = _FALLBACKS[name]
        values[name] = value
    if values.get("authors_init"):  # the authors' draws include their attention init
        values["attention_init"] = "fairseq_xavier"
    return argparse.Namespace(**values)


def validated_mask_options(args: argparse.Namespace) -> MaskOptions:
    """The masking options of resolved ``args``; raises OptionError naming the flag of a bad one."""
    try:
        return _mask_options(args)
    except OptionError:
        raise
    except (ValueError, TypeError) as e:  # the masking primitives name the flag in their message
        raise OptionError(str(e)) from None


def _mask_options(args: argparse.Namespace) -> MaskOptions:
    mask = MaskConfig(str(args.prune_method), args.prune_ratio, float(args.mask_threshold), args.mask_coats)
    check_positive("--qk-init-scale", args.qk_init_scale)
    authors_init = bool(args.authors_init)
    rerand = RerandSchedule(args.rerand_interval, args.rerand_fraction)
    if args.layers_no_mask:
        for flag, used in (("--learned-gains", args.learned_gains), ("--rerand-interval", rerand.interval)):
            if used:
                raise OptionError(f"{flag} acts on masked layer matrices, and --layers-no-mask leaves none")
    return MaskOptions(
        mask=mask,
        weight_init=masked_weight_init(str(args.init), bool(args.scale_fan), mask.prune_ratio, authors_init),
        attention_init=_choice("--attention-init", args.attention_init, ATTENTION_INITS),
        score_init=ScoreInit(str(args.mask_init), float(args.mask_constant)),
        share_mask=_choice("--share-mask", args.share_mask, SHARE_MODES),
        layernorm_type=_choice("--mask-layernorm-type", args.mask_layernorm_type, LAYERNORM_TYPES),
        need_bias=bool(args.need_bias),
        embed_no_mask=bool(args.embed_no_mask),
        layers_no_mask=bool(args.layers_no_mask),
        seed=int(args.seed),
        scale_fan=bool(args.scale_fan),
        authors_init=authors_init,
        learned_gains=bool(args.learned_gains),
        qk_init_scale=float(args.qk_init_scale),
        rerand=rerand,
    )


def validated_log_interval(args: argparse.Namespace) -> int:
    """``--mask-log-interval``: updates between two computations of the mask statistics (0: never)."""
    return _checked_int("--mask-log-interval", args.mask_log_interval, 0)


def check_transformer_options(args: argparse.Namespace) -> None:
    """The Transformer's own options of resolved ``args`` (fairseq's flags: dropouts, dimensions,
    heads, layers); raises OptionError naming the flag of a bad one."""
    for name in ("dropout", "attention_dropout", "activation_dropout"):
        p = getattr(args, name)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise OptionError(f"--{name.replace('_', '-')} must be a probability in [0, 1), got {p!r}")
    for side in ("encoder", "decoder"):
        dim = _checked_int(f"--{side}-embed-dim", getattr(args, f"{side}_embed_dim"), 1)
        _checked_int(f"--{side}-ffn-embed-dim", getattr(args, f"{side}_ffn_embed_dim"), 1)
        _checked_int(f"--{side}-layers", getattr(args, f"{side}_layers"), 0)
        heads = _checked_int(f"--{side}-attention-heads", getattr(args, f"{side}_attention_heads"), 1)
        if dim % heads:
            raise OptionError(f"--{side}-embed-dim {dim} must be a multiple of --{side}-attention-heads {heads}")


def _checked_int(flag, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{flag} must be a {'non-negative' if minimum == 0 else 'positive'} integer, got {value!r}")
    return value


def _choice(flag, value, choices):
    value = str(value)
    if value not in choices:
        raise OptionError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value
