"""Subnetworks out of the training checkpoint.

    python -m one_layer_lottery.export compact CHECKPOINT OUT [--data DIR]
        seed + init recipe + bit-packed masks + the few trained tensors (see subnetwork/compact.py)
    python -m one_layer_lottery.export expand COMPACT OUT.pt [--data DIR]
        a normal one_layer_transformer checkpoint again, for fairseq-generate --user-dir ...
    python -m one_layer_lottery.export dense CHECKPOINT|COMPACT OUT.pt [--data DIR]
        a plain fairseq `transformer` checkpoint (masked weights materialised, zeros where
        masked) that stock fairseq-generate / fairseq-interactive load without --user-dir

``--data``: the fairseq-preprocess directory of the run (its dictionaries); by default the
checkpoint's own ``task.data``. Every output is written atomically.
"""
import argparse
import io
import os
import sys
from typing import Any, Dict

import torch
from fairseq import checkpoint_utils

from .atomic import atomic_output
from .console import quiet_logging, tool_errors
from .fairseq_checkpoint import decoding_checkpoint, updates_done
from .fairseq_patches import loading_fairseq_checkpoints
from .model_files import (COMPACT, InputFileError, file_kind, load_checkpoint_state, open_model_file,
                           require_one_layer)
from .subnetwork import compact
from .subnetwork.dense import dense_checkpoint
from .subnetwork.file_reader import read


def load_checkpoint(path: str, data: str = None):
    """(model in eval mode, full cfg, task, checkpoint state) of a fairseq checkpoint, on CPU."""
    path = os.fspath(path)
    require_one_layer(load_checkpoint_state(path), path)  # checks the file first, tensors memory-mapped
    overrides = {"data": os.fspath(data)} if data else None
    with loading_fairseq_checkpoints():
        state = checkpoint_utils.load_checkpoint_to_cpu(path, overrides)
    cfg = state["cfg"]
    first = str(cfg.task.data).split(os.pathsep)[0]
    if not os.path.isdir(first):
        if data:
            raise InputFileError(f"--data {data}: not a directory (expected the fairseq-preprocess output "
                                    "with the run's dictionaries)")
        raise InputFileError(
            f"{path}: its dictionaries are read from task.data {first!r}, which is not a directory here; "
            "pass --data DIR (the fairseq-preprocess output the model was trained on)")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, state=state)
    return models[0].eval(), cfg, task, state


def load_any(path: str, data: str = None):
    """(model, cfg, task, num_updates) of a checkpoint or of a compact file."""
    if file_kind(path) == COMPACT:
        cf = read(path)
        model, cfg, task = compact.load_parsed(cf, data)
        return model, cfg, task, (cf.header.get("source") or {}).get("num_updates")
    model, cfg, task, state = load_checkpoint(path, data)
    return model, cfg, task, updates_done(state)


def state_bytes(state_dict) -> int:
    """Size of ``torch.save(state_dict)``: what a checkpoint spends on the model."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.tell()


def export_compact(checkpoint: str, out: str, data: str = None) -> Dict[str, int]:
    """Write the compact file of ``checkpoint``; returns its size and the model state's size."""
    model, cfg, task, state = load_checkpoint(checkpoint, data)
    source = {"checkpoint": os.path.abspath(checkpoint), "num_updates": updates_done(state)}
    size = compact.write(out, model, cfg, task, source, inputs=[checkpoint])
    return {"compact_bytes": size, "model_state_bytes": state_bytes(state["model"]),
            "checkpoint_bytes": os.path.getsize(checkpoint)}


def expand(path: str, out: str, data: str = None) -> None:
    """Rebuild a normal fairseq checkpoint (for ``fairseq-generate --user-dir ...``) from a compact file.

    The checkpoint's scores are 1/0 (or values either side of the threshold): they select the
    stored masks, but they are not the trained scores, so it is for decoding, not for resuming.
    """
    _, cf = open_model_file(path, (COMPACT,))
    model, cfg, task = compact.load_parsed(cf, data)
    updates = (cf.header.get("source") or {}).get("num_updates")
    _save(decoding_checkpoint(cfg, model.state_dict(), updates, compact_source=os.fspath(path)), out, path)


def export_dense(source: str, out: str, data: str = None) -> Dict[str, Any]:
    """Write a plain fairseq `transformer` checkpoint of a checkpoint or compact file."""
    model, cfg, task, num_updates = load_any(source, data)
    ckpt, info = dense_checkpoint(model, cfg, task, num_updates)
    _save(ckpt, out, source)
    return info


def _save(checkpoint: dict, out: str, source: str) -> None:
    with atomic_output(out, inputs=[source]) as tmp:
        torch.save(checkpoint, tmp)


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
    quiet_logging()
    with tool_errors("export"):
        if args.command == "compact":
            sizes = export_compact(args.source, args.out, args.data)
            ratio = sizes["model_state_bytes"] / sizes["compact_bytes"]
            print(f"wrote {args.out}: {sizes['compact_bytes']} bytes; the checkpoint's model state is "
                  f"{sizes['model_state_bytes']} bytes ({ratio:.1f}x), the checkpoint file "
                  f"{sizes['checkpoint_bytes']} bytes")
        elif args.command == "expand":
            expand(args.source, args.out, args.data)
            print(f"wrote {args.out}")
        else:
            info = export_dense(args.source, args.out, args.data)
            print(f"wrote {args.out}: plain fairseq transformer, {info['layer_weight_zero_fraction']:.4f} of the "
                  f"layer weights are zero; largest logit difference on a probe batch "
                  f"{info['max_logit_difference']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
