"""What a checkpoint records of its masking options, and the checks before one is loaded.

fairseq's trainer passes the *current* run's config to ``load_state_dict``, never the
checkpoint's, so the model state itself records the options its scores were trained under (key
``_extra_state``): the options marked ``RECORDED`` in config.py. Loading under other values would
silently reinterpret the scores, so it is refused. The record is a float tensor of the JSON's
bytes, not a dict: fairseq's tools and users' scripts treat every model-state value as a tensor
(checkpoint averaging sums and divides them, EMA decays them), and small integers survive that
and fp16/bf16 exactly.
"""
import collections
import json
import logging
from dataclasses import fields

import torch

from ...masking import RandomWeight
from .config import RECORDED_OPTIONS, OneLayerTransformerConfig
from .options import OptionError
from .state_keys import EXTRA_STATE_KEY, RERAND_ROUNDS_KEY

logger = logging.getLogger(__name__)

_FIELD_TYPES = {f.name: f.type for f in fields(OneLayerTransformerConfig)}
_AS_JSON = {float: float, bool: bool, int: int}  # choices are stored as their string


def recorded_options(args) -> dict:
    """{flag: value} of the recorded options of resolved ``args``."""
    return {"--" + name.replace("_", "-"): _AS_JSON.get(_FIELD_TYPES[name], str)(getattr(args, name))
            for name in RECORDED_OPTIONS}


def record_tensor(options) -> torch.Tensor:
    """The ``_extra_state`` tensor of ``recorded_options`` (empty for a model built without them)."""
    if options is None:
        return torch.zeros(0)
    text = json.dumps({"mask_options": options}, sort_keys=True)
    return torch.tensor(list(text.encode("ascii")), dtype=torch.float32)


def read_record(saved: torch.Tensor) -> dict:
    """The options a checkpoint recorded in ``_extra_state``."""
    try:
        codes = saved.detach().double().cpu()
        rounded = codes.round()
        if codes.dim() != 1 or not bool(((codes - rounded).abs() < 0.25).all()) \
                or not bool(((rounded >= 0) & (rounded < 128)).all()):
            raise ValueError("not ASCII codes")
        return json.loads(bytes(int(c) for c in rounded.tolist()).decode("ascii"))["mask_options"]
    except Exception as e:  # what the record holds is not ours to trust
        raise OptionError(
            "the checkpoint's record of its masking options (_extra_state) is unreadable "
            f"({type(e).__name__}: {e}); was it averaged across runs with different options?") from None


# Options added after checkpoints began recording theirs, with their defaults: a record without
# one was written before the option existed, when the model behaved as under the default.
ADDED_LATER = {"--authors-init": False, "--mask-coats": 1, "--rerand-interval": 0, "--rerand-fraction": 0.1,
               "--learned-gains": False, "--qk-init-scale": 1.0, "--layers-no-mask": False}


def mismatches(saved: dict, current: dict) -> list:
    """'flag: checkpoint X, this model Y' for every option that differs and matters."""
    ignored = {flag for flag, default in ADDED_LATER.items() if flag not in saved and current.get(flag) == default}
    if current.get("--prune-method") not in ("threshold", "sigmoid_threshold"):
        ignored.add("--mask-threshold")
    if current.get("--mask-init") == "standard":
        ignored.add("--mask-constant")
    if current.get("--rerand-interval") == 0 and saved.get("--rerand-interval", 0) == 0:
        ignored.add("--rerand-fraction")  # no round was ever done
    return [f"{flag}: the checkpoint's is {saved.get(flag, '(not recorded)')}, this model's is {value}"
            for flag, value in current.items() if flag not in ignored and saved.get(flag) != value]


def checked_state_dict(model, state_dict, strict: bool = True):
    """``state_dict`` ready for ``nn.Module.load_state_dict`` on ``model``, after checking that it
    was trained under the model's recorded options and has its keys and shapes; raises OptionError.

    The record is checked; what gets loaded is the model's own (its length may differ).
    """
    if EXTRA_STATE_KEY in state_dict:
        _check_options(model, state_dict[EXTRA_STATE_KEY])
    elif strict:  # written before the options were recorded, or not by this plugin
        logger.warning("the checkpoint does not record its masking options; they cannot be checked")
    metadata = getattr(state_dict, "_metadata", None)
    state_dict = collections.OrderedDict(state_dict)
    if metadata is not None:
        state_dict._metadata = metadata
    state_dict[EXTRA_STATE_KEY] = model.get_extra_state()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if strict and (missing or unexpected):
        hint = ""
        if any(k.endswith(".fc1.weight") for k in unexpected):
            hint = " It looks like a dense fairseq model, not a one_layer_transformer."
        raise OptionError(
            "the checkpoint does not match this one_layer_transformer architecture."
            f"{hint} Missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, tensor in state_dict.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise OptionError(
                f"the checkpoint's {key} has shape {tuple(tensor.shape)}, this model's has "
                f"{tuple(expected[key].shape)}: the checkpoint was trained with another architecture "
                "or dictionary")
    _warn_if_random_weights_differ(model, state_dict)
    return state_dict


def _check_options(model, saved):
    current = getattr(model, "recorded_options", None)
    if current is None:
        return
    wrong = mismatches(read_record(saved), current)
    if wrong:
        raise OptionError(
            "the checkpoint does not match this one_layer_transformer: it was trained under other masking "
            f"options ({'; '.join(wrong)}). Its scores select weights under its own options and cannot be "
            "resumed or decoded under these: use the checkpoint's options, or train from scratch elsewhere.")


def _warn_if_random_weights_differ(model, state_dict):
    # The checkpoint's random weights are used; with equal options they should be exactly the ones
    # the model drew from --seed (not, e.g., after a change of the init code or of an embedding file).
    differ = []
    rerandomizer = getattr(model, "rerandomizer", None)
    rounds = state_dict.get(RERAND_ROUNDS_KEY)
    redrawn = {id(r) for r, _ in rerandomizer.groups} if rerandomizer is not None and rounds is not None \
        and int(rounds) > 0 else set()  # IteRand rounds changed these on purpose
    for prefix, module in model.named_modules():
        if isinstance(module, RandomWeight) and id(module) not in redrawn:
            key = f"{prefix}.weight" if prefix else "weight"
            saved = state_dict.get(key)
            mine = module.weight
            if torch.is_tensor(saved) and saved.dtype == mine.dtype and saved.shape == mine.shape \
                    and not _equal_up_to_half_rounding(saved.to(mine.device), mine):
                differ.append(key)
    if differ:
        logger.warning(f"{len(differ)} random weights of the checkpoint differ from the ones --seed generates "
                       f"here (e.g. {differ[0]}); the checkpoint's are used")


def _equal_up_to_half_rounding(a, b) -> bool:
    # fairseq stores the weights of an --fp16 / bf16 run as float32 copies of the rounded values.
    return any(torch.equal(a, b) if dtype is None else torch.equal(a.to(dtype), b.to(dtype))
               for dtype in (None, torch.float16, torch.bfloat16))
