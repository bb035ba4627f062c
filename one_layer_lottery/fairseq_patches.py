"""Every change this plugin makes to fairseq or to the Python process, and when it is made.

``import one_layer_lottery`` registers the model with fairseq and changes nothing else. fairseq's
command lines (fairseq-train, fairseq-generate, fairseq-hydra-train, ..., also run as
``python -m fairseq_cli.train``) import the plugin through ``--user-dir``; in those processes, and
only there (``running_fairseq_cli``), ``patch_fairseq_cli`` makes these changes for the rest of
the run:

- ``sys.excepthook``: an option or file error of this plugin (``ToolError``) that ends the program
  is printed as one line, ``<program>: error: <message>``, with exit status 2, as argparse does for
  a usage error; fairseq's command lines give a plugin no place to catch it. Any other error goes to
  the previous hook. Under fairseq-hydra-train, Hydra catches the job's error before that hook would
  see it; the failed job's ``ToolError`` ends the program in the same way.
- ``fairseq.file_io.PathManager.copy``: local copies are atomic (temporary file, fsync, rename).
  fairseq copies each save to ``checkpoint_last.pt`` and its other names with a plain copy, which
  a kill leaves truncated, and the next run resumes from that file. Remote paths keep fairseq's copy.
- ``fairseq.checkpoint_utils.load_model_ensemble_and_task`` (``--path`` of fairseq-generate,
  fairseq-interactive, fairseq-validate, ...): each model file is checked before fairseq opens it
  (``check_model_file``, from model_files.py), so a missing, empty, truncated or directory path, or
  a compact subnetwork file, is one line naming it instead of a traceback.
- torch's ``weights_only`` allow-list: the few non-tensor types fairseq checkpoints hold
  (``argparse.Namespace`` in old ones, numpy scalars) load under torch's default
  ``weights_only=True``, so that fairseq-train resumes and fairseq-generate decodes them. Nothing
  else becomes loadable: a checkpoint crafted to run code on load is still refused.
- fairseq's text progress bars (simple, tqdm, json) print the summary of the mask statistics, not
  the value per layer and matrix; TensorBoard, which reads the stats before a bar formats them,
  keeps every value.

``undo_fairseq_cli_patches`` puts all of it back. Two changes are scoped, in any process:
``loading_fairseq_checkpoints`` is the same allow-list inside a ``with`` block (the plugin's tools
load checkpoints in one), and ``quiet_fairseq_import`` silences, while the plugin imports fairseq,
the INFO line fairseq logs about tensorboardX (from its text_to_speech task, unused here).
"""
import argparse
import collections
import contextlib
import logging
import os
import shutil
import sys
from importlib.util import find_spec

import numpy as np
import torch

from .atomic import atomic_output
from .console import USAGE_ERROR, ToolError, debugging, print_error

logger = logging.getLogger(__name__)

FAIRSEQ_CLI_PACKAGE = "fairseq_cli"
TENSORBOARDX_LOGGER = "fairseq.tasks.text_to_speech"


def _numpy_types():
    types = [np.dtype, np.ndarray]
    try:  # numpy >= 1.25 / 2.x
        from numpy.core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover
        from numpy._core.multiarray import _reconstruct, scalar
    types += [scalar, _reconstruct]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        types += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                               "BoolDType") if hasattr(dtypes, n)]
    return types


FAIRSEQ_CHECKPOINT_TYPES = (argparse.Namespace, collections.OrderedDict, *_numpy_types())


def loading_fairseq_checkpoints():
    """A ``with`` block inside which torch's ``weights_only`` loader accepts the types fairseq
    checkpoints hold."""
    return torch.serialization.safe_globals(list(FAIRSEQ_CHECKPOINT_TYPES))


@contextlib.contextmanager
def quiet_fairseq_import():
    """Inside the block, importing fairseq does not log its INFO line about tensorboardX."""
    quieted = logging.getLogger(TENSORBOARDX_LOGGER)
    level = quieted.level
    quieted.setLevel(logging.WARNING)
    try:
        yield
    finally:
        quieted.setLevel(level)


def _fairseq_cli_module(name) -> bool:
    return isinstance(name, str) and name.startswith(FAIRSEQ_CLI_PACKAGE + ".")


def _fairseq_cli_folders():
    spec = find_spec(FAIRSEQ_CLI_PACKAGE)  # finds the package without importing it
    return {os.path.realpath(p) for p in (spec.submodule_search_locations or [])} if spec else set()


def _main_module_name():
    return getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)


def running_fairseq_cli() -> bool:
    """Whether this process runs one of fairseq's command lines: ``python -m fairseq_cli.<name>``,
    a script that calls ``fairseq_cli.<name>.cli_main`` (the fairseq-* console scripts), or
    ``python .../fairseq_cli/<name>.py``; also in the worker processes these start."""
    if _fairseq_cli_module(_main_module_name()):
        return True
    main = sys.modules.get("__main__")
    if _fairseq_cli_module(getattr(getattr(main, "cli_main", None), "__module__", None)):
        return True
    path = getattr(main, "__file__", None)
    return bool(path) and os.path.dirname(os.path.realpath(path)) in _fairseq_cli_folders()


def _program_name() -> str:
    """fairseq-train for ``fairseq-train`` and for ``python -m fairseq_cli.train`` alike."""
    module = _main_module_name()
    if _fairseq_cli_module(module):
        return "fairseq-" + module.rsplit(".", 1)[1].replace("_", "-")
    return os.path.basename(sys.argv[0]) or "fairseq"


def _end_with_usage_error(error: ToolError):
    print_error(_program_name(), error)
    os._exit(USAGE_ERROR)  # the process was ending anyway; this sets argparse's status for a usage error


def _report_tool_errors():
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if not issubclass(kind, ToolError) or debugging():
            return previous(kind, value, traceback)
        _end_with_usage_error(value)

    sys.excepthook = hook

    def undo():
        sys.excepthook = previous

    return undo


def _report_tool_errors_of_hydra_jobs():
    from hydra.core.utils import JobReturn, JobStatus

    hydra_property = JobReturn.__dict__["return_value"]

    def return_value(job):  # Hydra reads a job's result here, and re-raises the job's error
        error = job._return_value
        if job.status == JobStatus.FAILED and isinstance(error, ToolError) and not debugging():
            _end_with_usage_error(error)
        return hydra_property.fget(job)

    JobReturn.return_value = property(return_value, hydra_property.fset)

    def undo():
        JobReturn.return_value = hydra_property

    return undo


def _atomic_checkpoint_copies():
    from fairseq.file_io import PathManager

    fairseq_copy = PathManager.__dict__["copy"]
    plain_copy = PathManager.copy

    def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
            return plain_copy(src_path, dst_path, overwrite=overwrite)
        if not overwrite and os.path.exists(dst_path):
            logger.error(f"not copying {src_path} to {dst_path}: the destination exists")
            return False
        with atomic_output(dst_path, inputs=[src_path]) as tmp:
            shutil.copyfile(src_path, tmp)
        return True

    PathManager.copy = staticmethod(atomic_copy)

    def undo():
        PathManager.copy = fairseq_copy

    return undo


def _checked_model_files(check_model_file):
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    fairseq_load = checkpoint_utils.load_model_ensemble_and_task

    def load_checked(filenames, arg_overrides=None, task=None, strict=True, suffix="", num_shards=1, state=None):
        if state is None and num_shards == 1:  # sharded checkpoints: fairseq's own checks
            for filename in filenames:
                path = checkpoint_utils.get_maybe_sharded_checkpoint_filename(filename, suffix, 0, num_shards)
                if not PathManager.path_requires_pathmanager(path):
                    check_model_file(path)
        return fairseq_load(filenames, arg_overrides, task, strict, suffix, num_shards, state)

    checkpoint_utils.load_model_ensemble_and_task = load_checked

    def undo():
        checkpoint_utils.load_model_ensemble_and_task = fairseq_load

    return undo


def _allow_fairseq_checkpoint_types():
    present = torch.serialization.get_safe_globals()
    added = [t for t in FAIRSEQ_CHECKPOINT_TYPES if t not in present]
    torch.serialization.add_safe_globals(added)

    def undo():
        kept = [g for g in torch.serialization.get_safe_globals() if g not in added]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(kept)

    return undo


def _summary_in_log_lines():
    from fairseq.logging import progress_bar

    from .models.one_layer_transformer.mask_stats import is_detail

    # Every text bar formats its stats in one of these two methods.
    bars = (progress_bar.BaseProgressBar, progress_bar.JsonProgressBar)
    fairseq_methods = {bar: bar.__dict__["_format_stats"] for bar in bars}

    def without_detail(format_stats):
        def format_summary(self, stats, *args, **kwargs):
            summary = collections.OrderedDict((k, v) for k, v in stats.items() if not is_detail(k))
            return format_stats(self, summary, *args, **kwargs)

        return format_summary

    for bar, format_stats in fairseq_methods.items():
        bar._format_stats = without_detail(format_stats)

    def undo():
        for bar, format_stats in fairseq_methods.items():
            bar._format_stats = format_stats

    return undo


_PATCHES = (_report_tool_errors, _report_tool_errors_of_hydra_jobs, _atomic_checkpoint_copies,
            _allow_fairseq_checkpoint_types, _summary_in_log_lines)
_undo = []  # one function per applied patch, in the order applied


def patch_fairseq_cli(check_model_file=None) -> None:
    """Apply every patch listed above, once per process; the model files fairseq loads are checked when
    ``check_model_file(path)`` (which raises a ToolError) is given."""
    if not _undo:
        _undo.extend(patch() for patch in _PATCHES)
        if check_model_file is not None:
            _undo.append(_checked_model_files(check_model_file))


def undo_fairseq_cli_patches() -> None:
    """Put back what ``patch_fairseq_cli`` changed, last patch first."""
    while _undo:
        _undo.pop()()
