"""Mask analytics of a trained subnetwork: figures and the same numbers as JSON.

    python -m one_layer_lottery.analyze CHECKPOINT_OR_COMPACT OUT_DIR

writes OUT_DIR/mask_stats.json, OUT_DIR/overlap.png (pairwise Jaccard overlap of the masks of
the virtual layers, encoder and decoder) and OUT_DIR/kept.png (kept fraction per virtual layer
and per weight matrix). Reads the scores of the checkpoint (or the masks of a compact file)
directly: no dictionary and no model are needed.
"""
import argparse
import json
import os
import sys
from typing import Any, Dict, Optional

import torch

from .atomic import atomic_output, check_output, output_directory
from .console import quiet_logging, tool_errors
from .fairseq_checkpoint import config_section
from .masking import select_mask
from .model_files import COMPACT, InputFileError, open_model_file, require_one_layer
from .models.one_layer_transformer.mask_stats import intersections, jaccard
from .models.one_layer_transformer.options import resolve_options, validated_mask_options
from .models.one_layer_transformer.state_keys import (
    STACKS,
    is_scores,
    matrix_sort_key,
    module_of,
    parse_module_path,
    parse_shared_scores,
)
from .subnetwork.mask_figures import FIGURE_FILES, write_figures


def _model_options(model_cfg):
    args = resolve_options(model_cfg)
    return args, validated_mask_options(args)


def read_masks(path: str):
    """(model options, mask options, {score key: boolean mask}) of a checkpoint or compact file."""
    kind, content = open_model_file(path)
    if kind == COMPACT:
        cf = content
        args, opts = _model_options(cf.header["cfg"]["model"])
        masks = {}
        for entry in cf.header["masks"]:
            mask = cf.mask(entry)
            masks.update({name: mask for name in entry["names"]})
        return args, opts, masks
    state = content
    require_one_layer(state, path)
    model_cfg = config_section(state, "model")
    args, opts = _model_options(model_cfg)
    m = opts.mask
    masks = {}
    for key, value in state["model"].items():
        if is_scores(key):
            masks[key] = select_mask(value.float(), m.method, m.prune_ratio, m.threshold)
    if not masks:
        raise InputFileError(f"{path}: the checkpoint holds no mask scores")
    return args, opts, masks


def mask_report(args, opts, masks: Dict[str, torch.Tensor], source: Optional[str] = None) -> Dict[str, Any]:
    """The numbers behind the figures (see the module docstring)."""
    layers = {"encoder": int(args.encoder_layers), "decoder": int(args.decoder_layers)}
    per_layer = {s: {} for s in STACKS}  # stack -> matrix -> {layer: mask}
    shared = {s: {} for s in STACKS}  # stack -> matrix -> mask used by every layer (--share-mask layer_mask)
    embeddings = {}
    for key, mask in masks.items():
        path = module_of(key)
        stack, layer, matrix = parse_module_path(path)
        if layer is not None:
            per_layer[stack].setdefault(matrix, {})[layer] = mask
        elif parse_shared_scores(path):
            stack, matrix = parse_shared_scores(path)
            shared[stack][matrix] = mask
        else:
            embeddings[path] = mask.sum().item() / mask.numel()
    report: Dict[str, Any] = {
        "source": source, "prune_method": opts.mask.method, "prune_ratio": opts.mask.prune_ratio,
        "mask_threshold": opts.mask.threshold, "share_mask": opts.share_mask,
    }
    for stack in STACKS:
        n = layers[stack]
        by_matrix = {}
        for matrix, mask in shared[stack].items():
            by_matrix[matrix] = [mask] * n
        for matrix, found in per_layer[stack].items():
            missing = [i for i in range(n) if i not in found]
            if missing or len(found) != n:
                raise ValueError(f"the {stack}'s {matrix} has masks for layers {sorted(found)}, expected 0..{n - 1}")
            by_matrix[matrix] = [found[i] for i in range(n)]
        matrices = sorted(by_matrix, key=matrix_sort_key)
        kept_per_matrix, overlap_per_matrix = {}, {}
        inter_total = torch.zeros(n, n, dtype=torch.float64)
        numel_total = 0
        for matrix in matrices:
            inter = intersections(by_matrix[matrix])
            numel = by_matrix[matrix][0].numel()
            kept_per_matrix[matrix] = (inter.diagonal() / numel).tolist()
            overlap_per_matrix[matrix] = jaccard(inter).tolist()
            inter_total += inter
            numel_total += numel
        kept_per_layer = (inter_total.diagonal() / max(numel_total, 1)).tolist()
        mean_kept = sum(kept_per_layer) / max(n, 1)
        report[stack] = {
            "layers": n,
            "matrices": matrices,
            # True when the layers' masks select from one shared random weight (--share-mask layer_weights).
            "weights_shared": opts.share_mask == "layer_weights",
            "kept_per_layer": kept_per_layer,
            "kept_per_matrix": kept_per_matrix,
            # Pooled over the layer's matrices: sum of intersections / sum of unions.
            "overlap": jaccard(inter_total).tolist(),
            "overlap_per_matrix": overlap_per_matrix,
            # What two independent random masks keeping this fraction would overlap: p^2 / (2p - p^2).
            "overlap_if_independent": mean_kept / (2 - mean_kept) if mean_kept > 0 else 1.0,
        }
    report["embeddings"] = {k: embeddings[k] for k in sorted(embeddings)}
    return report


def analyze(path: str, out_dir: str) -> Dict[str, str]:
    args, opts, masks = read_masks(path)
    report = mask_report(args, opts, masks, source=os.path.abspath(path))
    output_directory(out_dir)
    json_path = os.path.join(out_dir, "mask_stats.json")
    for out in (json_path, *(os.path.join(out_dir, name) for name in FIGURE_FILES.values())):
        check_output(out, [path])  # none is written unless all can be
    with atomic_output(json_path, inputs=[path]) as tmp:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
    paths = write_figures(report, out_dir, inputs=[path])
    paths["json"] = json_path
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a one_layer_transformer checkpoint or compact file")
    parser.add_argument("out_dir", help="directory for mask_stats.json, overlap.png, kept.png (created)")
    args = parser.parse_args(argv)
    quiet_logging()
    with tool_errors("analyze"):
        paths = analyze(args.source, args.out_dir)
    for name in ("json", "overlap", "kept"):
        print(paths[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
