"""Subnetworks out of the training checkpoint.

    python -m one_layer_lottery.export compact CHECKPOINT OUT [--data DIR]
        seed + init recipe + bit-packed masks + the few trained tensors (see compact.py)
    python -m one_layer_lottery.export expand COMPACT OUT.pt [--data DIR]
        a normal one_layer_transformer checkpoint again, for fairseq-generate --user-dir ...
    python -m one_layer_lottery.export dense CHECKPOINT|COMPACT OUT.pt [--data DIR]
        a plain fairseq `transformer` checkpoint (masked weights materialised, zeros where
        masked) that stock fairseq-generate / fairseq-interactive load without --user-dir

``--data``: the fairseq-preprocess directory of the run (its dictionaries); by default the
checkpoint's own ``task.data``. Every output is written atomically.
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, Tuple

import torch
from torch import nn

from . import compact
from .masking import MaskedLinear, MaskedWeight, TiedLinear

logger = logging.getLogger("one_layer_lottery.export")

# Options of our model that mean the same in fairseq's `transformer`.
_TRANSFORMER_FIELDS = (
    "activation_fn", "dropout", "attention_dropout", "activation_dropout",
    "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
    "encoder_normalize_before", "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers",
    "decoder_attention_heads", "decoder_normalize_before", "share_decoder_input_output_embed",
    "share_all_embeddings", "no_scale_embedding", "no_token_positional_embeddings",
    "max_source_positions", "max_target_positions",
)


def load_checkpoint(path: str, data: str = None):
    """(model in eval mode, full cfg, task, checkpoint state) of a fairseq checkpoint, on CPU."""
    from fairseq import checkpoint_utils

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    overrides = {"data": os.fspath(data)} if data else None
    state = checkpoint_utils.load_checkpoint_to_cpu(path, overrides)
    cfg = state["cfg"]
    first = str(cfg.task.data).split(os.pathsep)[0]
    if not os.path.isdir(first):
        if data:
            raise FileNotFoundError(f"--data {data}: not a directory (expected the fairseq-preprocess output "
                                    "with the run's dictionaries)")
        raise FileNotFoundError(
            f"{path}: its dictionaries are read from task.data {first!r}, which is not a directory here; "
            "pass --data DIR (the fairseq-preprocess output the model was trained on)")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, state=state)
    return models[0].eval(), cfg, task, state


def load_any(path: str, data: str = None):
    """(model, cfg, task, num_updates) of a checkpoint or of a compact file."""
    if compact.is_compact_file(path):
        cf = compact.read(path)
        model, cfg, task = compact.load_parsed(cf, data)
        return model, cfg, task, (cf.header.get("source") or {}).get("num_updates")
    model, cfg, task, state = load_checkpoint(path, data)
    history = state.get("optimizer_history") or [{}]
    return model, cfg, task, history[-1].get("num_updates")


# -- compact -----------------------------------------------------------------------------------

def export_compact(checkpoint: str, out: str, data: str = None) -> Dict[str, int]:
    """Write the compact file of ``checkpoint``; returns its size and the model state's size."""
    model, cfg, task, state = load_checkpoint(checkpoint, data)
    history = state.get("optimizer_history") or [{}]
    source = {"checkpoint": os.path.abspath(checkpoint), "num_updates": history[-1].get("num_updates")}
    size = compact.write(out, model, cfg, task, source)
    return {"compact_bytes": size, "model_state_bytes": state_bytes(state["model"]),
            "checkpoint_bytes": os.path.getsize(checkpoint)}


def state_bytes(state_dict) -> int:
    """Size of ``torch.save(state_dict)``: what a checkpoint spends on the model."""
    import io

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.tell()


# -- dense -------------------------------------------------------------------------------------

def dense_model_cfg(model_cfg) -> Dict[str, Any]:
    """fairseq `transformer` options (a plain dict) with the shape of our ``model_cfg``."""
    from fairseq.models.transformer.transformer_legacy import base_architecture

    from .models.one_layer_transformer.model import _resolve

    ours = _resolve(argparse.Namespace(**model_cfg) if isinstance(model_cfg, dict) else model_cfg)
    ns = argparse.Namespace(**{name: getattr(ours, name) for name in _TRANSFORMER_FIELDS})
    ns.decoder_input_dim = ns.decoder_output_dim = ours.decoder_embed_dim
    # The embedding tables are in the state (pre-trained rows included): no file to read.
    ns.encoder_embed_path = ns.decoder_embed_path = None
    base_architecture(ns)
    return dict(compact.plain(vars(ns), "model"), _name="transformer", arch="transformer")


def dense_state(model, dense: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict of the plain ``dense`` Transformer holding ``model``'s masked weights.

    Every masked matrix becomes its random weight times its mask (zeros where masked), per
    virtual layer; missing biases are zeros, LayerNorms without affine parameters get weight 1
    and bias 0, everything else (trained biases, LayerNorm affine, buffers) is copied.
    """
    model.eval()
    ours = dict(model.named_modules(remove_duplicate=False))
    our_state = model.state_dict()
    copies: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # id(source) -> (source kept alive, copy)
    state = {}
    with torch.no_grad():
        for key, ref in dense.state_dict().items():
            prefix, _, leaf = key.rpartition(".")
            module = ours.get(prefix)
            if isinstance(module, (MaskedWeight, TiedLinear)) and leaf == "weight":
                value = module.weight
            elif isinstance(module, MaskedLinear) and leaf == "bias":
                value = module.bias if module.bias is not None else torch.zeros_like(ref)
            elif isinstance(module, nn.LayerNorm) and not module.elementwise_affine and leaf in ("weight", "bias"):
                value = torch.ones_like(ref) if leaf == "weight" else torch.zeros_like(ref)
            elif key in our_state:
                value = our_state[key]
            else:
                raise ValueError(f"the plain Transformer's {key} has no counterpart in the masked model")
            if tuple(value.shape) != tuple(ref.shape):
                raise ValueError(f"{key}: the masked model gives shape {tuple(value.shape)}, the plain "
                                 f"Transformer expects {tuple(ref.shape)}")
            # Tied tensors (shared embeddings) stay one tensor in the file.
            if id(value) not in copies:
                copies[id(value)] = (value, value.detach().to(device="cpu", dtype=ref.dtype).clone().contiguous())
            state[key] = copies[id(value)][1]
    return state


def _probe_batch(task, n=3, src_len=9, tgt_len=7):
    gen = torch.Generator().manual_seed(0)
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    src = torch.randint(src_dict.nspecial, len(src_dict), (n, src_len), generator=gen)
    src[:, -1] = src_dict.eos()
    prev = torch.randint(tgt_dict.nspecial, len(tgt_dict), (n, tgt_len), generator=gen)
    prev[:, 0] = tgt_dict.eos()
    return src, torch.full((n,), src_len, dtype=torch.long), prev


def check_same_outputs(model, dense, task, tolerance=1e-4) -> float:
    """Largest difference of the two models' output logits on a probe batch; raises above tolerance."""
    src, lengths, prev = _probe_batch(task)
    with torch.no_grad():
        a = model(src, lengths, prev)[0]
        b = dense(src, lengths, prev)[0]
    diff = float((a - b).abs().max())
    if not diff <= tolerance * max(1.0, float(a.abs().max())):
        raise RuntimeError(f"the exported plain Transformer's outputs differ from the masked model's by {diff}")
    return diff


def dense_checkpoint(model, cfg, task, num_updates=None):
    """(plain checkpoint dict, info) of the fairseq `transformer` equivalent to ``model``."""
    from fairseq import models
    from omegaconf import OmegaConf

    full = compact.plain(cfg)
    dense_cfg = dense_model_cfg(full["model"])
    dense = models.build_model(OmegaConf.create(dense_cfg), task).eval()
    state = dense_state(model, dense)
    dense.load_state_dict(state, strict=True)
    diff = check_same_outputs(model, dense, task)

    full["model"] = dense_cfg
    full["common"] = dict(full.get("common") or {}, user_dir=None)
    ckpt = {
        "args": None,
        "cfg": full,
        "model": state,
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {}, "num_updates": int(num_updates or 0)}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    compact.plain({k: v for k, v in ckpt.items() if k != "model"}, "checkpoint")  # refuses anything not plain
    layer_weights = [t for k, t in state.items()
                     if ".layers." in k and k.endswith(("_proj.weight", "fc1.weight", "fc2.weight"))]
    zeros = sum(int((t == 0).sum()) for t in layer_weights)
    total = sum(t.numel() for t in layer_weights)
    return ckpt, {"max_logit_difference": diff, "layer_weight_zero_fraction": zeros / max(total, 1), "model": dense}


def export_dense(source: str, out: str, data: str = None) -> Dict[str, Any]:
    """Write a plain fairseq `transformer` checkpoint of a checkpoint or compact file."""
    model, cfg, task, num_updates = load_any(source, data)
    ckpt, info = dense_checkpoint(model, cfg, task, num_updates)
    with compact.atomic_output(out) as tmp:
        torch.save(ckpt, tmp)
    return info


# -- command line ------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, src_help, out_help in (
            ("compact", "a one_layer_transformer checkpoint", "the compact file to write"),
            ("expand", "a compact file", "the checkpoint (.pt) to write"),
            ("dense", "a one_layer_transformer checkpoint or compact file", "the plain checkpoint (.pt) to write")):
        p = sub.add_parser(name)
        p.add_argument("source", help=src_help)
        p.add_argument("out", help=out_help)
        p.add_argument("--data", default=None,
                       help="fairseq-preprocess directory with the run's dictionaries (checked against a compact "
                            "file's; default: the checkpoint's task.data, or the compact file's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import one_layer_lottery  # noqa: F401  (registers the model, allow-lists checkpoint types)

    try:
        if args.command == "compact":
            sizes = export_compact(args.source, args.out, args.data)
            ratio = sizes["model_state_bytes"] / sizes["compact_bytes"]
            print(f"wrote {args.out}: {sizes['compact_bytes']} bytes; the checkpoint's model state is "
                  f"{sizes['model_state_bytes']} bytes ({ratio:.1f}x), the checkpoint file "
                  f"{sizes['checkpoint_bytes']} bytes")
        elif args.command == "expand":
            compact.expand(args.source, args.out, args.data)
            print(f"wrote {args.out}")
        else:
            info = export_dense(args.source, args.out, args.data)
            print(f"wrote {args.out}: plain fairseq transformer, {info['layer_weight_zero_fraction']:.4f} of the "
                  f"layer weights are zero; largest logit difference on a probe batch "
                  f"{info['max_logit_difference']:.3g}")
    except (ValueError, FileNotFoundError) as e:  # CompactFileError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
