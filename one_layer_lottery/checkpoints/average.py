"""Average fairseq checkpoints (fairseq's pip package lacks its scripts/average_checkpoints.py).

    python -m one_layer_lottery.average_checkpoints --inputs A.pt B.pt ... --output avg.pt
    python -m one_layer_lottery.average_checkpoints --inputs SAVE_DIR --num-epoch-checkpoints 10 --output avg.pt
    python -m one_layer_lottery.average_checkpoints --inputs SAVE_DIR --num-update-checkpoints 10 --output avg.pt

The trained floating-point tensors (the scores, and trained biases or LayerNorm parameters) are
averaged. The frozen random weights of a one_layer_transformer (and LayerNorm parameters under
``--mask-layernorm-type frozen_layernorm``) are not trained: they must be bitwise identical in
every input, as they are across the checkpoints of one run; anything else is refused, as are
inputs whose keys, shapes or dtypes differ, or that were trained under other masking options.
Checkpoints of other fairseq models average every floating-point tensor, as fairseq's script does.

The output is the most trained input (by update count) with its model state replaced by the
average and without the optimizer state (which belongs to one input, not to the average); it is
written to a temporary file and renamed, so an existing output is never left half written. Inputs are loaded one at a
time with ``torch.load(weights_only=True)``; a bad input stops the tool with one line naming it.
"""
import argparse
import os
import re
from typing import Dict, List, Optional

import torch

from ..atomic import atomic_output, check_output
from ..console import ToolError, quiet_logging, tool_errors
from ..fairseq_checkpoint import config_section, updates_done
from ..model_files import load_checkpoint_state
from ..models.one_layer_transformer.state_keys import EXTRA_STATE_KEY, is_layer_norm, is_random_weight

EPOCH_FILE = re.compile(r"^checkpoint(\d+)\.pt$")
UPDATE_FILE = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")


class AverageError(ToolError):
    pass


def is_frozen(key: str, model_cfg: dict) -> bool:
    """True for the tensors a one_layer_transformer never trains: its random weights (owned by a
    RandomWeight module: ``...random.weight`` or ``<stack>.shared.weights.<name>.weight``), its
    record of masking options, and LayerNorm parameters when they are frozen."""
    if key == EXTRA_STATE_KEY or is_random_weight(key):
        return True
    return model_cfg.get("mask_layernorm_type") == "frozen_layernorm" and is_layer_norm(key)


def select_checkpoints(folder: str, num_epochs: Optional[int] = None, num_updates: Optional[int] = None,
                       upper_bound: Optional[int] = None) -> List[str]:
    """The last ``num_epochs`` epoch checkpoints (checkpointN.pt) or the last ``num_updates``
    update checkpoints (checkpoint_E_U.pt) of a save dir, newest first; ``upper_bound`` leaves
    out epochs (updates) above it."""
    if (num_epochs is None) == (num_updates is None):
        raise AverageError("give exactly one of --num-epoch-checkpoints and --num-update-checkpoints")
    if not os.path.isdir(folder):
        raise AverageError(f"--inputs {folder}: with --num-*-checkpoints, --inputs must be one save directory")
    pattern, wanted, kind = (EPOCH_FILE, num_epochs, "epoch") if num_epochs is not None \
        else (UPDATE_FILE, num_updates, "update")
    if wanted < 1:
        raise AverageError(f"--num-{kind}-checkpoints must be at least 1, got {wanted}")
    found = []
    for name in os.listdir(folder):
        m = pattern.match(name)
        if m:
            step = int(m.group(m.lastindex))
            if upper_bound is None or step <= upper_bound:
                found.append((step, name))
    found.sort(reverse=True)
    if len(found) < wanted:
        raise AverageError(
            f"{folder} has {len(found)} {kind} checkpoint(s) "
            f"({', '.join(n for _, n in sorted(found)) or 'none'}"
            f"{'' if upper_bound is None else f', at most {upper_bound}'}), fewer than the {wanted} asked for")
    return [os.path.join(folder, name) for _, name in found[:wanted]]


def average_checkpoints(paths: List[str]) -> dict:
    """The averaged checkpoint (a state dict for torch.save) of the fairseq checkpoints ``paths``."""
    if not paths:
        raise AverageError("no input checkpoints")
    first_path = paths[0]
    sums: Dict[str, torch.Tensor] = {}
    reference: Dict[str, torch.Tensor] = {}
    model_cfg = None
    meta, meta_updates = None, -1
    for path in paths:
        state = load_checkpoint_state(path)
        model = state.pop("model")
        state.pop("last_optimizer_state", None)  # belongs to one input, not to the average
        if model_cfg is None:
            model_cfg = config_section(state, "model")
            for key, tensor in model.items():
                if not torch.is_tensor(tensor):
                    raise AverageError(f"{path}: model state entry {key} is not a tensor")
                if tensor.is_floating_point() and not is_frozen(key, model_cfg):
                    sums[key] = tensor.to(torch.float64)
                reference[key] = tensor
        else:
            _check_same_layout(first_path, reference, path, model)
            for key, tensor in model.items():
                if key in sums:
                    sums[key] += tensor.to(torch.float64)
                elif not torch.equal(tensor, reference[key]):
                    raise AverageError(f"{path} and {first_path}: {key}: {_difference(key, model_cfg)}; only "
                                       "checkpoints of one run can be averaged")
        updates = int(updates_done(state) or 0)
        if updates >= meta_updates:  # keep the metadata (cfg, progress) of the most trained input
            meta, meta_updates = state, updates
    n = len(paths)
    meta["model"] = {key: (sums[key] / n).to(tensor.dtype) if key in sums else tensor
                     for key, tensor in reference.items()}
    if isinstance(meta.get("extra_state"), dict):
        meta["extra_state"]["averaged_checkpoints"] = [os.path.basename(p) for p in paths]
    return meta


def _difference(key, model_cfg) -> str:
    if key == EXTRA_STATE_KEY:
        return "the checkpoints record different masking options"
    if is_frozen(key, model_cfg):
        return "this frozen random tensor differs (another seed, init or run?)"
    return "this non-floating-point tensor differs"


def _check_same_layout(first_path, reference, path, model):
    missing = sorted(set(reference) - set(model))
    extra = sorted(set(model) - set(reference))
    if missing or extra:
        raise AverageError(f"{path}: different model keys from {first_path}: missing in {path}: {missing[:5]}; "
                           f"only in {path}: {extra[:5]} (different architectures?)")
    for key, tensor in model.items():
        ref = reference[key]
        if not torch.is_tensor(tensor) or tuple(tensor.shape) != tuple(ref.shape):
            shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
            raise AverageError(f"{path}: {key} has shape {shape}, {first_path} has {tuple(ref.shape)}")
        if tensor.dtype != ref.dtype:
            raise AverageError(f"{path}: {key} has dtype {tensor.dtype}, {first_path} has {ref.dtype}")


def save(state, output: str, inputs=()) -> None:
    """Write the averaged checkpoint ``state`` to ``output``, never over one of ``inputs``."""
    with atomic_output(output, inputs) as tmp:
        torch.save(state, tmp)


def main(argv=None):
    quiet_logging()
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.average_checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="checkpoint files, or one save directory with --num-*-checkpoints")
    parser.add_argument("--output", required=True, help="the averaged checkpoint")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpointE.pt of the directory")
    group.add_argument("--num-update-checkpoints", type=int,
                       help="average the last N checkpoint_E_U.pt of the directory")
    parser.add_argument("--checkpoint-upper-bound", type=int,
                        help="with --num-*-checkpoints: ignore checkpoints after this epoch (update)")
    args = parser.parse_args(argv)
    with tool_errors("average_checkpoints"):
        if args.num_epoch_checkpoints is not None or args.num_update_checkpoints is not None:
            if len(args.inputs) != 1:
                raise AverageError("with --num-*-checkpoints, --inputs must be one save directory")
            paths = select_checkpoints(args.inputs[0], args.num_epoch_checkpoints, args.num_update_checkpoints,
                                       args.checkpoint_upper_bound)
        else:
            if args.checkpoint_upper_bound is not None:
                raise AverageError("--checkpoint-upper-bound needs --num-epoch-checkpoints or --num-update-checkpoints")
            paths = args.inputs
        check_output(args.output, paths)  # before the inputs are read
        state = average_checkpoints(paths)
        save(state, args.output, paths)
    print(f"averaged {len(paths)} checkpoint(s) into {args.output}: {', '.join(paths)}")
