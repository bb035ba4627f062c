"""What a study needs from fairseq's output: validations, parameter counts and speed from a
``fairseq-train --log-format simple`` log, hypotheses and BLEU from ``fairseq-generate``."""
import re
from datetime import datetime
from typing import Dict, Iterator, List, Tuple

from .console import ToolError

_VALID = re.compile(r"valid on 'valid' subset \| (.*)$")
_TRAIN_INNER = re.compile(r"\| train_inner \| epoch \d+: +\d+ / \d+ (.*)$")
_TRAIN_EPOCH = re.compile(r"\| train \| epoch \d+ \| (.*)$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| ")
_TRAIN_START = re.compile(r"\| fairseq_cli\.train \| \{'_name'")  # the config dump each fairseq-train starts with
_PARAMS = re.compile(r"num\. shared model params: ([\d,]+) \(num\. trained: ([\d,]+)\)")
_GENERATE = re.compile(r"^Generate (\S+) with beam=(\d+): BLEU4 = ([\d.]+), .*?\(BP=([\d.]+), ratio=([\d.]+), "
                       r"syslen=(\d+), reflen=(\d+)\)")


class LogError(ToolError):
    pass


def _fields(text: str) -> Dict[str, str]:
    out = {}
    for item in text.split(" | "):
        key, _, value = item.strip().partition(" ")
        if key and value:
            out[key] = value
    return out


def validation_lines(log_text: str) -> Iterator[Tuple[int, Dict[str, str]]]:
    """(line number, {field: value}) of every ``valid on 'valid' subset`` line, in order."""
    for line_no, line in enumerate(log_text.splitlines(), 1):
        m = _VALID.search(line)
        if m:
            yield line_no, _fields(m.group(1))


def validations(log_text: str) -> List[dict]:
    """One entry per update validated, in update order; a validation repeated after a resume keeps the last."""
    by_update = {}
    for _, f in validation_lines(log_text):
        if "num_updates" in f:
            by_update[int(f["num_updates"])] = {
                "update": int(f["num_updates"]), "loss": float(f["loss"]),
                "nll_loss": float(f["nll_loss"]) if "nll_loss" in f else None,
                "bleu": float(f["bleu"]) if "bleu" in f else None}
    return [by_update[u] for u in sorted(by_update)]


def training_curve(log_text: str) -> List[dict]:
    """Training loss at every logged update (``--log-interval``), in update order; an update logged
    again after a resume keeps the last value."""
    by_update = {}
    for line in log_text.splitlines():
        m = _TRAIN_INNER.search(line)
        if not m:
            continue
        f = dict(item.split("=", 1) for item in m.group(1).split(", ") if "=" in item)
        if "num_updates" in f and "loss" in f:
            update = int(f["num_updates"])
            by_update[update] = {"update": update, "loss": float(f["loss"]),
                                 "nll_loss": float(f["nll_loss"]) if "nll_loss" in f else None}
    return [by_update[u] for u in sorted(by_update)]


def process_seconds(log_text: str) -> float:
    """Wall time of the fairseq-train processes of a log: first to last timestamp of each, summed.

    A process begins at the study runner's ``# <command>`` line or, in a log without them, at
    fairseq-train's config dump. fairseq's own `wall` reads 0 after a resume, so it cannot be summed
    across one.
    """
    lines = log_text.splitlines()
    by_header = any(line.startswith("# ") for line in lines)
    spans, start, last = [], None, None
    for line in lines:
        if line.startswith("# ") if by_header else _TRAIN_START.search(line):
            if start is not None:
                spans.append((last - start).total_seconds())
            start = None
        stamp = _TIMESTAMP.match(line)
        if stamp:
            last = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")
            start = last if start is None else start
    if start is not None:
        spans.append((last - start).total_seconds())
    return float(sum(spans))


def training_summary(log_text: str) -> dict:
    """Parameter counts, the last update, train wall time (summed over resumes) and words/s."""
    params = _PARAMS.findall(log_text)
    if not params:
        raise LogError("no 'num. shared model params' line: fairseq-train did not build the model")
    total, trained = (int(x.replace(",", "")) for x in params[-1])
    epochs = [_fields(m.group(1)) for m in map(_TRAIN_EPOCH.search, log_text.splitlines()) if m]
    if not epochs:
        raise LogError("no end-of-epoch training line: fairseq-train did not finish an epoch")
    words = sum(float(e["wps"]) * float(e["train_wall"]) for e in epochs if "wps" in e and "train_wall" in e)
    seconds = sum(float(e["train_wall"]) for e in epochs if "train_wall" in e)
    return {"params_total": total, "params_trained": trained, "params_frozen": total - trained,
            "updates": int(epochs[-1]["num_updates"]), "train_wall_s": process_seconds(log_text),
            "train_words_per_s": round(words / seconds, 1) if seconds else None}


def generation(stdout: str) -> dict:
    """Tokenised BLEU line and the hypotheses (detokenised-BPE text) in sentence order."""
    hyps = {}
    for line in stdout.splitlines():
        if line.startswith("H-"):
            head, _, text = line.partition("\t")
            _score, _, text = text.partition("\t")
            hyps[int(head[2:])] = text
    score = None
    for line in stdout.splitlines():
        m = _GENERATE.match(line)
        if m:
            score = m
    if score is None:
        raise LogError("no 'Generate ... BLEU4 = ...' line in fairseq-generate's output")
    if sorted(hyps) != list(range(len(hyps))):
        raise LogError(f"fairseq-generate's hypotheses are not numbered 0..{len(hyps) - 1}")
    return {"subset": score.group(1), "beam": int(score.group(2)), "bleu": float(score.group(3)),
            "brevity_penalty": float(score.group(4)), "length_ratio": float(score.group(5)),
            "sys_len": int(score.group(6)), "ref_len": int(score.group(7)),
            "hypotheses": [hyps[i] for i in range(len(hyps))]}
