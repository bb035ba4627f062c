"""Validation curves from fairseq-train logs: a table and a PNG plot.

    python -m one_layer_lottery.curves OUT.png NAME=TRAIN_LOG [NAME=TRAIN_LOG ...] [--metric bleu]

Reads the ``valid on 'valid' subset`` lines that fairseq writes (``--log-format simple`` or the
default), prints one row per run (the metric at every validation), and plots metric over updates.
"""
import argparse
import sys

from .atomic import atomic_output, check_output
from .console import quiet_logging, read_text, tool_errors
from .fairseq_logs import LogError, validation_lines


def read_validations(path, metric="bleu"):
    """[(num_updates, value), ...] of every validation in a fairseq-train log, in order."""
    points = []
    text = read_text(path, "a fairseq-train log", LogError)
    for line_no, fields in validation_lines(text):
        if metric not in fields or "num_updates" not in fields:
            raise LogError(f"{path}:{line_no}: validation line without {metric!r} or num_updates")
        points.append((int(fields["num_updates"]), float(fields[metric])))
    if not points:
        raise LogError(f"{path}: no validation lines (\"valid on 'valid' subset\") found")
    return points


def plot(runs, out_png, metric="bleu", title=None, inputs=()):
    """Write a PNG of metric over updates, one line per run ({name: points})."""
    import matplotlib  # here: reading the logs does not need it (a second to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, points in runs.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("updates")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_output(out_png, inputs) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None):
    quiet_logging()
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.curves", description=__doc__.split("\n")[0])
    parser.add_argument("out_png")
    parser.add_argument("runs", nargs="+", metavar="NAME=TRAIN_LOG")
    parser.add_argument("--metric", default="bleu")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    logs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"run must be NAME=TRAIN_LOG, got {spec!r}")
        logs[name] = path
    with tool_errors("curves"):
        check_output(args.out_png, logs.values())  # before the table is printed
        runs = {name: read_validations(path, args.metric) for name, path in logs.items()}
    updates = sorted({u for points in runs.values() for u, _ in points})
    print("| run | " + " | ".join(str(u) for u in updates) + " |")
    print("|---|" + "---|" * len(updates))
    for name, points in runs.items():
        by_update = dict(points)
        print(f"| {name} | " + " | ".join(f"{by_update[u]:.2f}" if u in by_update else "" for u in updates) + " |")
    with tool_errors("curves"):
        plot(runs, args.out_png, args.metric, args.title, inputs=logs.values())


if __name__ == "__main__":
    sys.exit(main())
