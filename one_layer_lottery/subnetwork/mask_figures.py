"""The figures of a mask report (analyze.py): layer-to-layer overlap and kept fractions."""
import os
from typing import Any, Dict

from ..atomic import atomic_output, output_directory
from ..models.one_layer_transformer.state_keys import STACKS

FIGURE_FILES = {"overlap": "overlap.png", "kept": "kept.png"}  # what write_figures writes in its folder


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


def write_figures(report: Dict[str, Any], out_dir: str, inputs=()) -> Dict[str, str]:
    """overlap.png and kept.png in ``out_dir`` (never over one of ``inputs``); returns their paths."""
    import matplotlib  # here: the mask report itself does not need it (a second to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_directory(out_dir)
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
    paths["overlap"] = _save(fig, os.path.join(out_dir, FIGURE_FILES["overlap"]), inputs)
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
    paths["kept"] = _save(fig, os.path.join(out_dir, FIGURE_FILES["kept"]), inputs)
    plt.close(fig)
    return paths


def _save(fig, path, inputs):
    with atomic_output(path, inputs) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    return path
