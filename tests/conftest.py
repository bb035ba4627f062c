import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = ROOT.parent / "shared" / "data"
USER_DIR = str(ROOT / "one_layer_lottery")


def run_cli(name, *args, cwd=None, check=True, timeout=600):
    """Run one of fairseq's console scripts from this environment; returns the CompletedProcess."""
    cmd = [str(BIN / name), *map(str, args)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def sample_bin(tmp_path_factory):
    """The project's sample corpus, binarized by the real fairseq-preprocess (separate dictionaries)."""
    out = tmp_path_factory.mktemp("sample-bin")
    data = ROOT / "data" / "sample"
    run_cli("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en",
            "--trainpref", data / "train", "--validpref", data / "valid", "--testpref", data / "test",
            "--destdir", out, "--workers", "1")
    return out


@pytest.fixture(scope="session")
def sample_bin_joined(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample-bin-joined")
    data = ROOT / "data" / "sample"
    run_cli("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--joined-dictionary",
            "--trainpref", data / "train", "--validpref", data / "valid", "--destdir", out, "--workers", "1")
    return out


def build(data_dir, *flags, arch="one_layer_transformer_iwslt_de_en"):
    """(model, task, cfg) built through fairseq's own argument parsing, as fairseq-train does."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_dir), "--user-dir", USER_DIR, "--arch", arch, *map(str, flags)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return model, task, cfg


SMALL = ("--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 3,
         "--decoder-layers", 2, "--encoder-attention-heads", 4, "--decoder-attention-heads", 4)
