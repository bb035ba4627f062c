"""Run the missing runs of a study: train (resuming from ``checkpoint_last.pt``), score the test
set once with the best checkpoint, write the result file, optionally commit it."""
import os
import subprocess
import sys
import time
from typing import Callable, List, Optional

import sacrebleu
from fairseq.data import data_utils
from sacremoses import MosesDetokenizer

from .. import fairseq_logs
from ..atomic import atomic_output
from ..console import ToolError
from ..export import export_compact
from . import embeddings, results
from .spec import Run, Study, StudyError, cli_flags

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)


class RunError(RuntimeError):
    """A run that could not finish; the message says which step failed and where its log is."""


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True)


def code_version() -> dict:
    head = _git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "one_layer_lottery", "configs")
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _call(argv: List[str], log_path: str, step: str, mode: str = "a") -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(log_path, mode, encoding="utf-8") as log:
        log.write(f"# {' '.join(argv)}\n")
        log.flush()
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise RunError(f"{step} failed (exit {code}); last lines of {log_path}:\n{_tail(log_path)}")


def _embedding_flags(study: Study, run: Run, run_dir: str, ensure: Callable[[Run], None]):
    """The flags that fix ``run``'s embeddings to its source run's, and where they came from."""
    source = study.run(run.embeddings_from)
    ensure(source)
    table = study.embeddings_path(source)
    if not os.path.isfile(table):
        checkpoint = _best_checkpoint(study, source)
        if not os.path.isfile(checkpoint):
            raise RunError(f"{run.id} takes its embeddings from {source.id}, but neither its embedding table {table} "
                           f"nor its checkpoint {checkpoint} is there: move {study.result_path(source)} aside to "
                           "train it again")
        _keep_embeddings(study, source)
    try:
        written = embeddings.write_text_files(table, os.path.join(run_dir, "embeddings"))
    except ToolError as e:
        raise RunError(f"{run.id}: {e}") from e
    origin = {"run": source.id, "checkpoint_update": results.read(study.result_path(source))["test"]["checkpoint_update"],
              "table": study.relative(table), "sha256": embeddings.digest(table)}
    if run.flags.get("share-all-embeddings"):
        return ["--encoder-embed-path", written["encoder"]], origin
    return ["--encoder-embed-path", written["encoder"], "--decoder-embed-path", written["decoder"]], origin


def _best_checkpoint(study: Study, run: Run) -> str:
    return os.path.join(study.run_dir(run), "checkpoints", "checkpoint_best.pt")


def _compact_bytes(study: Study, run: Run, checkpoint: str):
    """The size of the compact subnetwork file of a one-layer run's best checkpoint (written beside
    its checkpoints); None for a dense run."""
    if not str(run.flags.get("arch", "")).startswith("one_layer"):
        return None
    try:
        return export_compact(checkpoint, os.path.join(study.run_dir(run), "subnetwork.olls"),
                              study.data)["compact_bytes"]
    except ToolError as e:
        raise RunError(f"{run.id}: cannot write the compact file of {checkpoint}: {e}") from e


def _keep_embeddings(study: Study, run: Run) -> None:
    try:
        embeddings.save(_best_checkpoint(study, run), study.embeddings_path(run), study.data)
    except ToolError as e:  # a bad checkpoint file, or one that is not a dense Transformer
        raise RunError(f"{run.id}: cannot keep the embeddings of its best checkpoint: {e}") from e


def _sacrebleu(study: Study, hypotheses: List[str]) -> dict:
    if not study.references or not os.path.isfile(study.references):
        raise RunError(f"the raw test references {study.references} are missing (study key 'references')")
    with open(study.references, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    if len(refs) != len(hypotheses):
        raise RunError(f"{study.references} has {len(refs)} lines but fairseq-generate decoded "
                       f"{len(hypotheses)} test sentences")
    _, target = data_utils.infer_language_pair(study.data)
    detok = MosesDetokenizer(lang=target or "en")
    detokenised = [detok.detokenize(h.split()) for h in hypotheses]
    metric = sacrebleu.metrics.BLEU(lowercase=study.lowercase)
    score = metric.corpus_score(detokenised, [refs])
    return {"sacrebleu": round(score.score, 2), "sacrebleu_signature": str(metric.get_signature())}


def generate_test_set(data: str, checkpoint: str, generate_flags: List[str], seed: int, log_path: str,
                      python: str = sys.executable) -> None:
    """Decode the test set as a study scores it: fairseq-generate's output goes to ``log_path`` (atomically)."""
    with atomic_output(log_path) as partial:
        _call([python, "-m", "fairseq_cli.generate", data, "--user-dir", PACKAGE_DIR, "--path", checkpoint,
               *generate_flags, "--seed", str(seed)], partial, "fairseq-generate", mode="w")


def read_generation(log_path: str, run_id: str) -> dict:
    """The tokenised BLEU and hypotheses of a fairseq-generate log (fairseq_logs.generation)."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        try:
            return fairseq_logs.generation(f.read())
        except fairseq_logs.LogError as e:
            raise RunError(f"{run_id}: {log_path}: {e}") from e


def _best_update(log_text: str, valid: List[dict]) -> int:
    scored = [v for v in valid if v["bleu"] is not None]
    if not scored:
        raise RunError("no validation BLEU in the training log: the study needs --eval-bleu")
    return max(scored, key=lambda v: (v["bleu"], -v["update"]))["update"]


def run_one(study: Study, run: Run, ensure: Callable[[Run], None], python: str = sys.executable,
            say: Callable[[str], None] = print, probed: Optional[dict] = None) -> dict:
    """Train ``run`` (unless its folder says it was trained), score it, write its result file.
    ``probed``: the result of this run as a probe, now to be tested: its training is kept, so the
    new file records that training's code version and adds the scoring to its wall time."""
    run_dir = study.run_dir(run)
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    train_log, trained = os.path.join(run_dir, "train.log"), os.path.join(run_dir, "train.done")
    started = time.time() - (probed["wall_s"] if probed else 0)
    version = probed["commit"] if probed else code_version()
    extra, origin = _embedding_flags(study, run, run_dir, ensure) if run.embeddings_from else ([], None)
    train_argv = [python, "-m", "fairseq_cli.train", study.data, "--user-dir", PACKAGE_DIR,
                  *cli_flags(run.flags), *extra, "--seed", str(run.seed), "--save-dir", checkpoints]
    if not os.path.isfile(trained):
        resumed = os.path.isfile(os.path.join(checkpoints, "checkpoint_last.pt"))
        say(f"study: {run.id}: {'resuming' if resumed else 'training'} (log: {train_log})")
        _call(train_argv, train_log, "fairseq-train")
        open(trained, "w").close()
    with open(train_log, encoding="utf-8", errors="replace") as f:
        log_text = f.read()
    try:
        valid = fairseq_logs.validations(log_text)
        train = fairseq_logs.training_summary(log_text)
        train_curve = fairseq_logs.training_curve(log_text)
    except fairseq_logs.LogError as e:
        raise RunError(f"{run.id}: {train_log}: {e}") from e
    best = _best_checkpoint(study, run)
    if not os.path.isfile(best):
        raise RunError(f"{run.id}: training ended without {best}")

    test = None if run.probe else _score_test_set(study, run, best, log_text, valid, python, say)
    result = {"id": run.id, "experiment": run.name, "seed": run.seed, "about": run.about, "flags": run.flags,
              "command": [_recorded(study, arg) for arg in train_argv[3:]], "commit": version, "valid": valid,
              "test": test, "train": train, "train_curve": train_curve, "embeddings": origin,
              "compact_bytes": None if run.probe else _compact_bytes(study, run, best), "probe": run.probe,
              "wall_s": round(time.time() - started, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if study.is_embeddings_source(run):
        _keep_embeddings(study, run)
    results.write(study.result_path(run), result)
    return result


def _score_test_set(study: Study, run: Run, best: str, log_text: str, valid: list, python: str,
                    say: Callable[[str], None]) -> dict:
    gen_log = os.path.join(study.run_dir(run), "generate.log")
    if not os.path.isfile(gen_log):
        say(f"study: {run.id}: scoring the test set")
        generate_test_set(study.data, best, cli_flags(study.generate), run.seed, gen_log, python)
    gen = read_generation(gen_log, run.id)
    return {"bleu_tokenised": gen["bleu"], **_sacrebleu(study, gen["hypotheses"]),
            "length_ratio": gen["length_ratio"], "brevity_penalty": gen["brevity_penalty"],
            "sentences": len(gen["hypotheses"]), "checkpoint_update": _best_update(log_text, valid),
            "generate_flags": cli_flags(study.generate)}


def _recorded(study: Study, arg: str) -> str:
    """A command-line argument as a result file keeps it: a path relative to the study's root, so the
    file says nothing about the machine it ran on."""
    return study.relative(arg) if os.path.isabs(arg) else arg


def commit_result(paths: List[str], run_id: str, bleu: Optional[float]) -> str:
    """Commit one run's files (its result, and the embedding table it lends) alone; returns a warning,
    or '' when committed. ``bleu``: the test BLEU, None for a probe."""
    message = f"study: {run_id}: test BLEU {bleu}" if bleu is not None else f"study: {run_id}: probe (validation only)"
    add = _git("add", "--", *paths)
    done = add.returncode == 0 and _git("commit", "-q", "-m", message, "--", *paths).returncode == 0
    return "" if done else f"could not commit {' '.join(paths)} (written; commit by hand)"


def _check_chosen_probe(study: Study, run: Run, probed: dict, path: str) -> None:
    """A probe's result becomes a tested run's only for the same training, still on disk: the test
    set then scores the very checkpoint that validation chose the setting with."""
    taken = (probed["embeddings"] or {}).get("run")
    if probed["flags"] != run.flags or probed["seed"] != run.seed or taken != run.embeddings_from:
        raise RunError(f"{run.id}: {path} is a probe's result with other flags, seed or embeddings than this "
                       "tested run's; move it aside to train the tested run")
    checkpoint = _best_checkpoint(study, run)
    if not os.path.isfile(os.path.join(study.run_dir(run), "train.done")) or not os.path.isfile(checkpoint):
        raise RunError(f"{run.id}: {path} is a probe's result, but its training is no longer in "
                       f"{study.run_dir(run)} to score: move the result aside to train and score the run again")


def _done(run: Run, result: dict) -> bool:
    """Whether ``result`` finishes ``run``: a probe's result finishes a probe only."""
    return run.probe or not result["probe"]


def _finished(study: Study, run: Run) -> bool:
    path = study.result_path(run)
    if not os.path.exists(path):
        return False
    try:
        return _done(run, results.read(path))
    except results.ResultError:
        return True  # reported by name when its turn comes


def check_inputs(study: Study, runs: List[Run]) -> None:
    """Raise StudyError, in one line, when runs still to do would not find the study's data or test
    references: before the first run starts, not in each run's log after its training."""
    if all(_finished(study, run) for run in runs):
        return
    if not os.path.isdir(study.data):
        raise StudyError(f"{study.path}: data: {study.data} is not a directory (expected the fairseq-preprocess "
                         "output the runs train on)")
    languages = data_utils.infer_language_pair(study.data)
    dictionaries = [os.path.join(study.data, f"dict.{lang}.txt") for lang in languages if lang]
    if not dictionaries or not all(os.path.isfile(d) for d in dictionaries):
        raise StudyError(f"{study.path}: data: {study.data} holds no fairseq-preprocess output (its "
                         "<split>.<src>-<tgt>.* files and dict.<lang>.txt)")
    if not study.references:
        raise StudyError(f"{study.path}: no 'references' (the raw target side of the test set, which the "
                         "runs are scored against)")
    if not os.path.isfile(study.references):
        problem = "is a directory" if os.path.isdir(study.references) else "no such file"
        raise StudyError(f"{study.path}: references: {study.references}: {problem} (expected the raw target side "
                         "of the test set)")


def run_study(study: Study, runs: List[Run], commit: bool = False, say: Callable[[str], None] = print) -> int:
    """Run each missing run in order; returns the number of runs that failed. The study's data and
    references are checked before the first (check_inputs)."""
    check_inputs(study, runs)
    failed, done = [], set()

    def ensure(run: Run) -> None:
        if run.id in done:
            return
        path = study.result_path(run)
        earlier = results.read(path) if os.path.exists(path) else None  # a corrupt file is reported, not overwritten
        if earlier is not None and _done(run, earlier):
            say(f"study: {run.id}: done ({path})")
        else:
            if earlier is not None:
                _check_chosen_probe(study, run, earlier, path)
                say(f"study: {run.id}: a probe, now tested: scoring its test set once")
            result = run_one(study, run, ensure, say=say, probed=earlier)
            if run.probe:
                bleu, update = results.best_validation(result)
                say(f"study: {run.id}: probe: best validation BLEU {bleu} at update {update}, test set not "
                    f"scored -> {path}")
            else:
                say(f"study: {run.id}: test BLEU {result['test']['bleu_tokenised']} (tokenised), "
                    f"{result['test']['sacrebleu']} (sacreBLEU) -> {path}")
            if commit:
                kept = [path] + ([study.embeddings_path(run)] if study.is_embeddings_source(run) else [])
                warning = commit_result(kept, run.id, result["test"]["bleu_tokenised"] if not run.probe else None)
                if warning:
                    say(f"study: warning: {warning}")
        done.add(run.id)

    for run in runs:
        try:
            ensure(run)
        except (RunError, results.ResultError) as e:
            failed.append(run.id)
            say(f"study: {run.id}: error: {e}")
    if failed:
        say(f"study: {len(failed)} run(s) failed: {', '.join(failed)}")
    return len(failed)
