"""Mask analytics of a trained subnetwork: figures and the same numbers as JSON.

    python -m one_layer_lottery.analyze CHECKPOINT_OR_COMPACT OUT_DIR

writes OUT_DIR/mask_stats.json, OUT_DIR/overlap.png (pairwise Jaccard overlap of the masks of
the virtual layers, encoder and decoder) and OUT_DIR/kept.png (kept fraction per virtual layer
and per weight matrix). Reads the scores of the checkpoint (or the masks of a compact file)
directly: no dictionary and no model are needed.
"""
import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional

import torch

from . import compact
from .mask_stats import _LAYER_PATH, intersections, jaccard, matrix_sort_key
from .masking import select_mask

logger = logging.getLogger("one_layer_lottery.analyze")
STACKS = ("encoder", "decoder")


def _model_options(model_cfg):
    from .models.one_layer_transformer.model import _resolve, mask_options

    if isinstance(model_cfg, dict):
        model_cfg = argparse.Namespace(**model_cfg)
    args = _resolve(model_cfg)
    return args, mask_options(args)


def read_masks(path: str):
    """(model options, mask options, {score key: boolean mask}) of a checkpoint or compact file."""
    if compact.is_compact_file(path):
        cf = compact.read(path)
        args, opts = _model_options(cf.header["cfg"]["model"])
        masks = {}
        for entry in cf.header["masks"]:
            mask = cf.mask(entry)
            masks.update({name: mask for name in entry["names"]})
        return args, opts, masks
    import one_layer_lottery  # noqa: F401  (allow-lists the types fairseq checkpoints hold)

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file: mmap is not possible
        state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = state.get("cfg") or {}
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None)
    if model_cfg is None and state.get("args") is not None:
        model_cfg = state["args"]
    if model_cfg is None:
        raise ValueError(f"{path}: the checkpoint has no model configuration")
    args, opts = _model_options(model_cfg)
    m = opts.mask
    masks = {}
    for key, value in state["model"].items():
        if key.endswith(".scores"):
            masks[key] = select_mask(value.float(), m.method, m.prune_ratio, m.threshold)
    if not masks:
        raise ValueError(f"{path}: the checkpoint holds no mask scores (is it a one_layer_transformer?)")
    return args, opts, masks


def _matrix_of_shared_key(key: str) -> str:
    # SharedWeights stores "self_attn.q_proj" under the key "self_attn_q_proj".
    for prefix in ("self_attn_", "encoder_attn_"):
        if key.startswith(prefix):
            return prefix[:-1] + "." + key[len(prefix):]
    return key


def mask_report(args, opts, masks: Dict[str, torch.Tensor], source: Optional[str] = None) -> Dict[str, Any]:
    """The numbers behind the figures (see the module docstring)."""
    layers = {"encoder": int(args.encoder_layers), "decoder": int(args.decoder_layers)}
    per_layer = {s: {} for s in STACKS}  # stack -> matrix -> {layer: mask}
    shared = {s: {} for s in STACKS}  # stack -> matrix -> mask used by every layer (--share-mask layer_mask)
    embeddings = {}
    for key, mask in masks.items():
        base = key[:-len(".scores")]
        match = _LAYER_PATH.match(base)
        if match:
            per_layer[match.group(1)].setdefault(match.group(3), {})[int(match.group(2))] = mask
            continue
        stack, _, rest = base.partition(".")
        if stack in STACKS and rest.startswith("shared.scores."):
            shared[stack][_matrix_of_shared_key(rest[len("shared.scores."):])] = mask
        else:
            embeddings[base] = mask.sum().item() / mask.numel()
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


# -- figures -----------------------------------------------------------------------------------

def _heatmap(ax, values, xlabels, ylabels, title, vmin, vmax, fmt="{:.2f}"):
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xlabels)), labels=xlabels, rotation=45 if max(map(len, xlabels)) > 3 else 0,
                  ha="right" if max(map(len, xlabels)) > 3 else "center", fontsize=8)
    ax.set_yticks(range(len(ylabels)), labels=ylabels, fontsize=8)
    ax.set_title(title, fontsize=10)
    rows, cols = len(values), len(values[0]) if values else 0
    if rows * cols <= 400:
        mid = (vmin + vmax) / 2
        for i in range(rows):
            for j in range(cols):
                ax.text(j, i, fmt.format(values[i][j]), ha="center", va="center", fontsize=7,
                        color="black" if values[i][j] > mid else "white")
    return im


def write_figures(report: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    for ax, stack in zip(axes, STACKS):
        r = report[stack]
        labels = [str(i) for i in range(r["layers"])]
        what = "one shared weight per matrix" if r["weights_shared"] else f"--share-mask {report['share_mask']}"
        title = (f"{stack}: mask overlap (Jaccard), {what}\n"
                 f"independent random masks would give {r['overlap_if_independent']:.2f}")
        im = _heatmap(ax, r["overlap"], labels, labels, title, 0.0, 1.0)
        ax.set_xlabel("virtual layer")
        ax.set_ylabel("virtual layer")
    fig.colorbar(im, ax=axes, shrink=0.8)
    paths["overlap"] = _save(fig, os.path.join(out_dir, "overlap.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    values_all = [v for s in STACKS for row in report[s]["kept_per_matrix"].values() for v in row]
    lo, hi = min(values_all), max(values_all)
    if hi - lo < 1e-3:  # top-k keeps the same fraction everywhere: centre the scale on it
        lo, hi = lo - 0.05, hi + 0.05
    for ax, stack in zip(axes, STACKS):
        r = report[stack]
        cols = r["matrices"] + ["whole layer"]
        rows = [[r["kept_per_matrix"][m][i] for m in r["matrices"]] + [r["kept_per_layer"][i]]
                for i in range(r["layers"])]
        im = _heatmap(ax, rows, cols, [str(i) for i in range(r["layers"])],
                      f"{stack}: kept fraction ({report['prune_method']}, --prune-ratio {report['prune_ratio']})",
                      lo, hi, fmt="{:.3f}")
        ax.set_ylabel("virtual layer")
    fig.colorbar(im, ax=axes, shrink=0.8)
    paths["kept"] = _save(fig, os.path.join(out_dir, "kept.png"))
    plt.close(fig)
    return paths


def _save(fig, path):
    with compact.atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    return path


def analyze(path: str, out_dir: str) -> Dict[str, str]:
    args, opts, masks = read_masks(path)
    report = mask_report(args, opts, masks, source=os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "mask_stats.json")
    with compact.atomic_output(json_path) as tmp:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
    paths = write_figures(report, out_dir)
    paths["json"] = json_path
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a one_layer_transformer checkpoint or compact file")
    parser.add_argument("out_dir", help="directory for mask_stats.json, overlap.png, kept.png (created)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font search logs at DEBUG
    if not os.path.isfile(args.source):
        print(f"error: {args.source} does not exist", file=sys.stderr)
        return 1
    try:
        paths = analyze(args.source, args.out_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name in ("json", "overlap", "kept"):
        print(paths[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
