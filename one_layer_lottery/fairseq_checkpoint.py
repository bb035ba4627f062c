"""What a fairseq checkpoint holds: its config and progress, and making one for decoding; configs as
plain values. Reading one: one_layer_lottery/model_files.py."""
import argparse
from enum import Enum
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf


def config_section(state: dict, section: str) -> dict:
    """``cfg[section]`` of a loaded fairseq checkpoint as a dict (old checkpoints: their ``args``);
    {} when it has neither."""
    cfg = state.get("cfg")
    value = cfg.get(section) if cfg is not None else None
    if value is None:
        value = state.get("args")
    if value is None:
        return {}
    # fairseq keeps the model section of its own architectures as a Namespace
    return vars(value) if isinstance(value, argparse.Namespace) else dict(value)


def updates_done(state: dict) -> Optional[int]:
    """The updates the checkpoint's training had done (None when it does not say)."""
    history = state.get("optimizer_history") or [{}]
    return history[-1].get("num_updates")


def decoding_checkpoint(cfg: dict, model_state: dict, updates: Optional[int] = None, **extra_state) -> dict:
    """A checkpoint that ``fairseq-generate`` loads: the model, no optimizer or training state."""
    return {
        "args": None,
        "cfg": cfg,
        "model": model_state,
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {}, "num_updates": int(updates or 0)}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, **extra_state},
        "last_optimizer_state": None,
    }


def plain(value: Any, where: str = "cfg") -> Any:
    """``value`` as JSON-like Python (dict/list/str/int/float/bool/None); raises on anything else.

    Namespaces (fairseq's legacy model configs) become dicts, enums their string value.
    """
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Enum):
        return str(value.value) if isinstance(value.value, str) else str(value.name)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string")
            out[k] = plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where}: a value of type {type(value).__name__} cannot be stored in a plain file")
