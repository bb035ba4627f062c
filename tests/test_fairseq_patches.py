"""Importing the plugin registers the model and changes nothing else, except in fairseq's command
lines, which get the patches of one_layer_lottery/fairseq_patches.py."""
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import ROOT, USER_DIR, unsilenced_env
from one_layer_lottery import fairseq_patches

FAIRSEQ_CLI = Path(importlib.util.find_spec("fairseq_cli").origin).parent
TENSORBOARDX_LINE = "Please install tensorboardX"

# Prints, as JSON, which parts of the process importing the plugin changed, and which are still
# changed after undo_fairseq_cli_patches(). {first} runs before anything else.
PROBE = '''
{first}
import json, logging, sys
import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from fairseq.logging import progress_bar
from hydra.core.utils import JobReturn

def state():
    loggers = {{name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}}
    return {{
        "sys.excepthook": sys.excepthook,
        "JobReturn.return_value": JobReturn.__dict__["return_value"],
        "PathManager.copy": PathManager.__dict__["copy"],
        "checkpoint_utils.load_model_ensemble_and_task": checkpoint_utils.load_model_ensemble_and_task,
        "BaseProgressBar._format_stats": progress_bar.BaseProgressBar.__dict__["_format_stats"],
        "JsonProgressBar._format_stats": progress_bar.JsonProgressBar.__dict__["_format_stats"],
        # torch keeps them in a set: their order means nothing and changes when the set is rebuilt.
        "torch safe globals": set(torch.serialization.get_safe_globals()),
        "logger levels": dict(loggers, root=logging.getLogger().level),
    }}

def changed(before, after):
    differ = [k for k in before if k != "logger levels" and before[k] is not after[k] and before[k] != after[k]]
    levels = before["logger levels"]
    if any(after["logger levels"].get(name, 0) != level for name, level in levels.items()) or any(
            level != logging.NOTSET for name, level in after["logger levels"].items() if name not in levels):
        differ.append("logger levels")
    return differ

before = state()
import one_layer_lottery
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
patched = changed(before, state())
one_layer_lottery.fairseq_patches.undo_fairseq_cli_patches()
print(json.dumps({{"changed": patched, "after_undo": changed(before, state()),
                  "registered": "one_layer_transformer" in MODEL_REGISTRY
                  and "one_layer_transformer_iwslt_de_en" in ARCH_MODEL_REGISTRY}}))
'''
FAIRSEQ_CLI_PATCHES = ["sys.excepthook", "JobReturn.return_value", "PathManager.copy",
                       "checkpoint_utils.load_model_ensemble_and_task", "BaseProgressBar._format_stats",
                       "JsonProgressBar._format_stats", "torch safe globals"]


def _probe(tmp_path, first):
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(first=first))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_plugin_registers_the_model_and_changes_nothing_else(tmp_path):
    # Importing fairseq first: what fairseq itself does to logging is not the plugin's doing.
    result = _probe(tmp_path, "import fairseq.models")
    assert result == {"changed": [], "after_undo": [], "registered": True}


def test_a_fairseq_command_line_gets_every_patch_and_undo_restores_them(tmp_path):
    # What the fairseq-train console script holds when fairseq imports the plugin for --user-dir.
    result = _probe(tmp_path, "from fairseq_cli.train import cli_main")
    assert result == {"changed": FAIRSEQ_CLI_PATCHES, "after_undo": [], "registered": True}


def test_importing_fairseq_through_the_plugin_logs_nothing_and_leaves_the_logger_as_it_was():
    code = ("import logging, one_layer_lottery; "
            f"print(logging.getLogger({fairseq_patches.TENSORBOARDX_LOGGER!r}).level)")
    # A fresh interpreter, warnings not silenced: the start-up every tool and fairseq command line
    # makes (the tests run those in forks of a process that imported fairseq already).
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=unsilenced_env())
    assert proc.returncode == 0 and proc.stdout.split() == ["0"], proc.stderr[-3000:]
    assert proc.stderr == ""
    if importlib.util.find_spec("tensorboardX") is None:  # the control: fairseq alone logs the line
        alone = subprocess.run([sys.executable, "-c", "import fairseq.models"], capture_output=True, text=True,
                               timeout=300)
        assert TENSORBOARDX_LINE in alone.stderr


def _main_module(spec=None, cli_main_of=None, file=None):
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=spec) if spec else None
    if cli_main_of:
        main.cli_main = types.FunctionType((lambda: None).__code__, {})
        main.cli_main.__module__ = cli_main_of
    if file:
        main.__file__ = file
    return main


LAUNCHES = {
    "python -m fairseq_cli.train": (dict(spec="fairseq_cli.train", file=str(FAIRSEQ_CLI / "train.py")), True),
    "fairseq-generate": (dict(cli_main_of="fairseq_cli.generate", file="/venv/bin/fairseq-generate"), True),
    "python .../fairseq_cli/hydra_train.py": (dict(cli_main_of="__main__", file=str(FAIRSEQ_CLI / "hydra_train.py")),
                                              True),
    "python -m pytest": (dict(spec="pytest", file="/venv/lib/pytest/__main__.py"), False),
    "python -c": (dict(), False),
    "a script with a cli_main of its own": (dict(cli_main_of="__main__", file="/home/me/train.py"), False),
    "python -m one_layer_lottery.export": (dict(spec="one_layer_lottery.export", file=str(ROOT / "export.py")), False),
}


@pytest.mark.parametrize("launch", sorted(LAUNCHES))
def test_fairseq_command_lines_are_told_from_other_programs(launch, monkeypatch):
    main, expected = LAUNCHES[launch]
    monkeypatch.setitem(sys.modules, "__main__", _main_module(**main))
    assert fairseq_patches.running_fairseq_cli() is expected


def test_python_m_fairseq_cli_train_reports_an_option_error_as_a_usage_error(sample_bin, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", str(sample_bin), "--user-dir", USER_DIR, "--arch",
         "one_layer_transformer_iwslt_de_en", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
         "--max-tokens", "500", "--max-update", "1", "--optimizer", "adam", "--save-dir", str(tmp_path),
         "--prune-ratio", "1.5"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("fairseq-train: error: --prune-ratio must be strictly between 0 and 1"), last
