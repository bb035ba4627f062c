"""scripts/gpu_check.sh: says so and exits 0 without a GPU; every step runs in a CPU rehearsal."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


def gpu_check(out, *args, set_up=True, timeout=900):
    """scripts/gpu_check.sh OUT ARGS; without set_up, only the Python script it ends in (the set-up
    step, scripts/setup.sh, is the one thing the shell script adds)."""
    command = ["bash", str(ROOT / "scripts" / "gpu_check.sh")] if set_up else [
        sys.executable, str(ROOT / "scripts" / "gpu_check.py")]
    return subprocess.run([*command, str(out), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "GPU_CHECK_BUDGET_S": "1800"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check runs for real")
def test_without_a_gpu_the_check_says_so_and_exits_0(tmp_path):
    proc = gpu_check(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no CUDA GPU is available" in proc.stdout and "nothing was checked" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["environment"]["gpu"] is False and report["ok"] is True and "gpu_tests" not in report
    assert (tmp_path / "out" / "summary.txt").read_text().startswith("gpu_check: no CUDA GPU")


@pytest.mark.slow
def test_every_step_of_the_check_runs_in_a_cpu_rehearsal(tmp_path):
    out = tmp_path / "out"
    proc = gpu_check(out, "--rehearse-on-cpu", set_up=False)  # the set-up step: the test above
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["rehearsal"] is True and report["ok"] is True
    tests = report["gpu_tests"]
    assert tests["tests"] >= 10 and tests["skipped"] == tests["tests"]  # collected, skipped without CUDA
    for dtype in ("fp16", "bf16"):
        bench = report[f"bench_{dtype}"]
        assert bench["ok"] and bench["train_step_ratio"] > 0 and bench["generate_ratio"] > 0
        assert set(report["targets"][f"train_step_ratio {dtype}"]) == {"value", "limit", "met"}
    training = report["training"]
    assert training["corpus"] == "sample" and training["updates"] == 3
    assert training["generate"]["sentences"] == 300 and training["generate"]["bleu"] is not None
    summary = (out / "summary.txt").read_text()
    for line in ("CPU REHEARSAL", "tests marked gpu:", "bench fp16:", "bench bf16:", "training: 3 updates on sample",
                 "fairseq-generate: BLEU", "target generate_ratio bf16 <= 1.03", "all steps ran"):
        assert line in summary, line
