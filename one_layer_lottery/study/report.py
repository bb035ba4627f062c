"""Table and figure of a study, from its result files alone (no checkpoints or logs needed)."""
import os
import statistics
from typing import Dict, List

from ..atomic import atomic_output, output_directory, write_text
from . import results
from .results import best_validation
from .spec import Study


def collect(study: Study) -> Dict[str, List[dict]]:
    """{experiment: [result per finished seed]} in study order; a broken result file is an error naming it."""
    rows: Dict[str, List[dict]] = {}
    errors = []
    for run in study.runs:
        path = study.result_path(run)
        if not os.path.exists(path):
            continue
        try:
            rows.setdefault(run.name, []).append(results.read(path))
        except results.ResultError as e:
            errors.append(str(e))
    if errors:
        raise results.ResultError("\n".join(errors))
    if not rows:
        raise results.ResultError(f"no result files in {study.results} yet: run the study first")
    return rows


def _mean_sd(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _test(runs: List[dict], key: str) -> List[float]:
    return [r["test"][key] for r in runs]


def _probes(rows: Dict[str, List[dict]]) -> Dict[str, List[dict]]:
    return {name: runs for name, runs in rows.items() if runs[0].get("probe")}


def markdown(study: Study, rows: Dict[str, List[dict]]) -> str:
    """The study's table; below it, the probes' (validation only), if any finished."""
    probes = _probes(rows)
    rows = {name: runs for name, runs in rows.items() if name not in probes}
    text = _tested_table(study, rows) if rows else ""
    if probes:
        text += ("\n" if text else "") + _probe_table(study, probes)
    return text


def _probe_table(study: Study, probes: Dict[str, List[dict]]) -> str:
    lines = ["Probes (validation only; the test set is not scored):", "",
             "| probe | what | seeds | best valid BLEU | at update | valid BLEU at the last update |",
             "|---|---|---|---|---|---|"]
    for name, runs in probes.items():
        best = [best_validation(r) for r in runs]
        last = [[v for v in r["valid"] if v["bleu"] is not None][-1]["bleu"] for r in runs]
        lines.append(f"| {name} | {runs[0]['about']} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{_mean_sd([b for b, _ in best])} | {', '.join(str(u) for _, u in best)} | {_mean_sd(last)} |")
    return "\n".join(lines) + "\n"


def _tested_table(study: Study, rows: Dict[str, List[dict]]) -> str:
    expected = {}
    for run in study.runs:
        expected[run.name] = expected.get(run.name, 0) + 1
    ref = rows.get(study.reference_experiment) if study.reference_experiment else None
    ref_bleu = statistics.mean(_test(ref, "bleu_tokenised")) if ref else None
    show_share = study.reference_experiment is not None
    head = ["experiment", "what", "seeds", "trained / frozen params", "best valid BLEU",
            "test BLEU (tokenised)", "sacreBLEU", "length ratio", "train wall min", "train words/s"]
    if show_share:
        head.insert(7, f"% of {study.reference_experiment}")
    show_compact = any(r.get("compact_bytes") for runs in rows.values() for r in runs)
    if show_compact:
        head.append("compact file")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in rows.items():
        bleu = _test(runs, "bleu_tokenised")
        seeds = ", ".join(str(r["seed"]) for r in runs)
        if len(runs) < expected.get(name, 0):
            seeds += f" ({len(runs)} of {expected[name]})"
        per_seed = f" ({' / '.join(f'{b:.2f}' for b in bleu)})" if len(bleu) > 1 else ""
        train = runs[0]["train"]
        cells = [name, runs[0]["about"], seeds,
                 f"{train['params_trained'] / 1e6:.2f}M / {train['params_frozen'] / 1e6:.2f}M",
                 _mean_sd([best_validation(r)[0] for r in runs]),
                 f"**{_mean_sd(bleu)}**{per_seed}", _mean_sd(_test(runs, "sacrebleu")),
                 _mean_sd(_test(runs, "length_ratio")),
                 f"{statistics.mean(r['train']['train_wall_s'] for r in runs) / 60:.0f}",
                 f"{statistics.mean(r['train']['train_words_per_s'] or 0 for r in runs):.0f}"]
        if show_share:
            cells.insert(7, f"{100 * statistics.mean(bleu) / ref_bleu:.0f}%" if ref_bleu else "n/a")
        if show_compact:
            sizes = [r["compact_bytes"] for r in runs if r.get("compact_bytes")]
            cells.append(f"{statistics.mean(sizes) / 2**10:.0f} KiB" if sizes else "–")
        lines.append("| " + " | ".join(cells) + " |")
    signatures = sorted({r["test"]["sacrebleu_signature"] for runs in rows.values() for r in runs})
    lines.append("")
    lines.append(f"sacreBLEU signature: `{'`, `'.join(signatures)}`. Mean ± sample standard deviation over "
                 "seeds, per-seed values in brackets."
                 + (" Compact file: the subnetwork file of the best checkpoint (`export compact`); – where a "
                    "run did not record it." if show_compact else ""))
    return "\n".join(lines) + "\n"


def markers(study: Study) -> tuple:
    """The markers a page puts a study's table between, named after the study file, so that one page
    can hold the tables of several studies."""
    name = os.path.splitext(os.path.basename(study.path))[0]
    return f"<!-- study table: {name} -->", f"<!-- /study table: {name} -->"


def fill_between_markers(path: str, text: str, study: Study) -> None:
    """Replace what lies between the study's table markers of a Markdown file (the rest is kept)."""
    BEGIN, END = markers(study)
    try:
        with open(path, encoding="utf-8") as f:
            doc = f.read()
    except OSError as e:
        raise results.ResultError(f"cannot read {path}: {e.strerror}") from e
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise results.ResultError(f"{path} has no '{BEGIN}' ... '{END}' markers to put the table between")
    write_text(path, doc[:start + len(BEGIN)] + "\n" + text + doc[end:])


def plot(study: Study, rows: Dict[str, List[dict]], out_png: str, inputs=()) -> None:
    """Left: validation BLEU over updates (mean over seeds, band min-max); right: test BLEU per
    experiment. Probes, which have no test score, are left out."""
    probes = _probes(rows)
    rows = {name: runs for name, runs in rows.items() if name not in probes}
    if not rows:
        raise results.ResultError("only probes have finished: nothing scored on the test set to plot yet")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, gridspec_kw={"width_ratios": [1.1, 1]},
                                       layout="constrained")
    colours = len(plt.rcParams["axes.prop_cycle"])  # past that many lines the colours repeat
    for i, (name, runs) in enumerate(rows.items()):
        by_update: Dict[int, List[float]] = {}
        for r in runs:
            for v in r["valid"]:
                if v["bleu"] is not None:
                    by_update.setdefault(v["update"], []).append(v["bleu"])
        xs = sorted(by_update)
        line, = curves.plot(xs, [statistics.mean(by_update[x]) for x in xs], marker="o", ms=3, label=name,
                              linestyle=("-", "--", ":")[i // colours % 3])
        if len(runs) > 1:
            curves.fill_between(xs, [min(by_update[x]) for x in xs], [max(by_update[x]) for x in xs],
                                color=line.get_color(), alpha=0.15)
    curves.set_xlabel("updates")
    curves.set_ylabel("validation BLEU (beam 5)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=7, ncol=2)
    names = list(rows)
    means = [statistics.mean(_test(rows[n], "bleu_tokenised")) for n in names]
    bars.barh(range(len(names)), means, color="#9ab")
    for i, n in enumerate(names):
        seeds = _test(rows[n], "bleu_tokenised")
        bars.plot(seeds, [i] * len(seeds), "k.", ms=6)
        bars.annotate(f"{means[i]:.2f}", (max(means[i], *seeds), i), xytext=(4, 0), textcoords="offset points",
                      va="center", fontsize=8)  # right of every dot, whatever the scale of the axis
    bars.margins(x=0.12)  # room for the labels inside the axes
    bars.set_yticks(range(len(names)), names, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("test BLEU, tokenised (bar: mean; dots: seeds)")
    bars.grid(axis="x", alpha=0.3)
    fig.suptitle(study.title)
    output_directory(os.path.dirname(os.path.abspath(out_png)))
    with atomic_output(out_png, inputs) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
