"""A study: a shared base of fairseq flags plus named experiments, read from YAML.

Flags are written as a mapping ``flag-name: value`` (without the leading ``--``): ``true`` is a bare
switch, ``false`` or ``null`` removes a flag set by a layer below, anything else is its value.
Layers, later ones winning: ``train`` (every experiment), the experiment's ``model`` (an entry of
``models``), then the experiment's own ``flags``. Each seed of an experiment is one run, named
``<name>-s<seed>``. An experiment with ``probe: true`` is a probe: its runs train and record their
validation scores but never decode the test set, for choosing a setting on validation only; made a
tested experiment later, its runs score the test set from the probe's training (runner).
"""
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import yaml

from ..console import ToolError, read_text

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_TOP_KEYS = {"title", "root", "data", "references", "lowercase", "results", "work", "reference_experiment",
             "train", "generate", "models", "experiments"}
_EXPERIMENT_KEYS = {"name", "model", "seeds", "flags", "embeddings_from", "about", "probe"}


class StudyError(ToolError):
    """A study file that cannot be used; the message names the file and the entry."""


@dataclass
class Run:
    id: str                       # <name>-s<seed>: the result file's and run folder's name
    name: str                     # the experiment (rows of the table group its seeds)
    seed: int
    flags: Dict[str, object]      # merged fairseq-train flags (without --seed and paths)
    embeddings_from: Optional[str] = None  # a run id whose best checkpoint's embeddings are fixed here
    about: str = ""
    probe: bool = False           # validation only: the test set is not scored


@dataclass
class Study:
    path: str
    root: str                     # the folder its relative paths start from; result files record paths from it
    title: str
    data: str
    references: Optional[str]     # raw target side of the test set, for detokenised sacreBLEU
    lowercase: bool               # sacreBLEU case-insensitive (for a lowercased system)
    results: str
    work: str
    reference_experiment: Optional[str]
    generate: Dict[str, object]
    runs: List[Run] = field(default_factory=list)

    def run(self, run_id: str) -> Run:
        for run in self.runs:
            if run.id == run_id:
                return run
        raise StudyError(f"{self.path}: no run named {run_id!r} (runs: {', '.join(r.id for r in self.runs)})")

    def select(self, names: List[str]) -> List[Run]:
        """The runs named (a run id, or an experiment name for all its seeds), in the order given."""
        if not names:
            return list(self.runs)
        chosen = []
        for name in names:
            matches = [r for r in self.runs if name in (r.id, r.name)]
            if not matches:
                raise StudyError(f"{self.path}: no experiment or run named {name!r}")
            chosen += [r for r in matches if r not in chosen]
        return chosen

    def result_path(self, run: Run) -> str:
        return os.path.join(self.results, f"{run.id}.json")

    def run_dir(self, run: Run) -> str:
        return os.path.join(self.work, run.id)

    def embeddings_path(self, run: Run) -> str:
        """Where the embedding table of a run that other runs take embeddings from is kept (committed
        beside its result, so those runs do not need its checkpoint)."""
        return os.path.join(self.results, f"{run.id}.embeddings.npz")

    def is_embeddings_source(self, run: Run) -> bool:
        return any(r.embeddings_from == run.id for r in self.runs)

    def relative(self, path: str) -> str:
        """``path`` as the result files record it: relative to the study's root."""
        return os.path.relpath(path, self.root)


def read_parsed(path: str, parse: Callable, parse_errors: tuple, error: type, invalid: str):
    """``parse`` of the file's text; a missing file or a parse error becomes ``error`` naming the file."""
    text = read_text(path, "the file", error)
    try:
        return parse(text)
    except parse_errors as e:
        raise error(f"{path} {invalid}: {e}") from e


def cli_flags(flags: Dict[str, object]) -> List[str]:
    """``{"lr": 0.003, "share-all-embeddings": True, "x": False}`` -> ``["--lr", "0.003", "--share-all-embeddings"]``."""
    argv = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        argv.append(f"--{name}")
        if value is not True:
            argv.append(str(value))
    return argv


def _flag_map(value, where: str) -> Dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping of flag: value, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or key.startswith("-") or not key:
            raise StudyError(f"{where}: flag names are written without dashes, got {key!r}")
        if isinstance(item, (list, dict)):
            raise StudyError(f"{where}: flag {key!r} must have a single value, got {item!r}")
    return dict(value)


def load(path: str) -> Study:
    doc = read_parsed(path, yaml.safe_load, (yaml.YAMLError,), StudyError, "is not valid YAML")
    if not isinstance(doc, dict):
        raise StudyError(f"{path}: the study must be a YAML mapping")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    for key in ("data", "results", "work", "experiments"):
        if key not in doc:
            raise StudyError(f"{path}: missing {key!r}")
    # Relative paths are relative to `root`, itself relative to the study file.
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), str(doc.get("root", "."))))

    def place(p):
        return None if p is None else os.path.normpath(os.path.join(root, os.path.expanduser(str(p))))

    base = _flag_map(doc.get("train"), f"{path}: train")
    models = doc.get("models") or {}
    if not isinstance(models, dict):
        raise StudyError(f"{path}: models must be a mapping of name: flags")
    study = Study(path=path, root=root, title=str(doc.get("title", os.path.basename(path))), data=place(doc["data"]),
                  references=place(doc.get("references")), lowercase=bool(doc.get("lowercase", False)),
                  results=place(doc["results"]), work=place(doc["work"]),
                  reference_experiment=doc.get("reference_experiment"),
                  generate=_flag_map(doc.get("generate"), f"{path}: generate"))
    if not isinstance(doc["experiments"], list) or not doc["experiments"]:
        raise StudyError(f"{path}: experiments must be a non-empty list")
    for i, exp in enumerate(doc["experiments"]):
        where = f"{path}: experiments[{i}]"
        if not isinstance(exp, dict) or "name" not in exp:
            raise StudyError(f"{where} must be a mapping with a name")
        unknown = set(exp) - _EXPERIMENT_KEYS
        if unknown:
            raise StudyError(f"{where} ({exp['name']}): unknown keys {sorted(unknown)}")
        name = str(exp["name"])
        if not _NAME.match(name):
            raise StudyError(f"{where}: name {name!r} must be letters, digits and _ . + - only")
        model = exp.get("model")
        if model is not None and model not in models:
            raise StudyError(f"{where} ({name}): model {model!r} is not in models ({', '.join(models)})")
        flags = dict(base)
        flags.update(_flag_map(models.get(model), f"{path}: models.{model}"))
        flags.update(_flag_map(exp.get("flags"), f"{where} ({name}): flags"))
        for reserved in ("seed", "save-dir"):
            if reserved in flags:
                raise StudyError(f"{where} ({name}): --{reserved} is set by the runner, not in flags")
        probe = exp.get("probe", False)
        if not isinstance(probe, bool):
            raise StudyError(f"{where} ({name}): probe must be true or false, got {probe!r}")
        seeds = exp.get("seeds", [1])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
            raise StudyError(f"{where} ({name}): seeds must be a non-empty list of integers, got {seeds!r}")
        for seed in seeds:
            run = Run(id=f"{name}-s{seed}", name=name, seed=seed, flags=flags,
                      embeddings_from=exp.get("embeddings_from"), about=str(exp.get("about", "")), probe=probe)
            if any(r.id == run.id for r in study.runs):
                raise StudyError(f"{where}: run {run.id} is defined twice")
            study.runs.append(run)
    ids = {r.id for r in study.runs}
    for run in study.runs:
        if run.embeddings_from is not None and run.embeddings_from not in ids:
            raise StudyError(f"{path}: {run.id} takes embeddings from {run.embeddings_from!r}, which is not a run "
                             "of this study")
    if study.reference_experiment is not None and study.reference_experiment not in {r.name for r in study.runs
                                                                                     if not r.probe}:
        raise StudyError(f"{path}: reference_experiment {study.reference_experiment!r} is not an experiment "
                         "that scores the test set")
    for run in study.runs:
        if run.embeddings_from is not None and study.run(run.embeddings_from).probe:
            raise StudyError(f"{path}: {run.id} takes embeddings from {run.embeddings_from}, a probe (its "
                             "checkpoint is chosen on validation but never tested)")
    return study
