"""scripts/gpu_check.sh: says so and exits 0 without a GPU; every step runs in a CPU rehearsal; --steps."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_command


def gpu_check(out, *args, set_up=True, timeout=900):
    """scripts/gpu_check.sh OUT ARGS; without set_up, only the Python script it ends in (the set-up
    step, scripts/setup.sh, is the one thing the shell script adds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU_CHECK_BUDGET_S": "1800", "PYTHONWARNINGS": "ignore"}
    if set_up:
        return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), *args], capture_output=True,
                              text=True, timeout=timeout, env=env)
    # served: so are the fairseq and plugin commands it starts (see conftest.run_command)
    return run_command([sys.executable, ROOT / "scripts" / "gpu_check.py", out, *args], timeout=timeout, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check runs for real")
def test_without_a_gpu_the_check_says_so_and_exits_0(tmp_path):
    proc = gpu_check(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no CUDA GPU is available" in proc.stdout and "nothing was checked" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["environment"]["gpu"] is False and report["ok"] is True and "gpu_tests" not in report
    assert (tmp_path / "out" / "summary.txt").read_text().startswith("gpu_check: no CUDA GPU")


def rehearse(out, steps):
    proc = gpu_check(out, "--rehearse-on-cpu", "--steps", steps, set_up=False)  # the set-up step: the test above
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["rehearsal"] is True and report["ok"] is True
    summary = (out / "summary.txt").read_text()
    assert "CPU REHEARSAL" in summary and proc.stdout == summary
    return report, summary


# Every step of the check, rehearsed on the CPU in two halves (each about as long as the other).
@pytest.mark.slow
def test_the_tests_and_benchmark_steps_run_in_a_cpu_rehearsal(tmp_path):
    report, summary = rehearse(tmp_path, "bench,tests")
    assert report["steps"] == ["tests", "bench"] and "training" not in report
    tests = report["gpu_tests"]
    assert tests["tests"] >= 10 and tests["skipped"] == tests["tests"]  # collected, skipped without CUDA
    for dtype in ("fp16", "bf16"):
        bench = report[f"bench_{dtype}"]
        assert bench["ok"] and bench["train_step_ratio"] > 0 and bench["generate_ratio"] > 0
        assert set(report["targets"][f"train_step_ratio {dtype}"]) == {"value", "limit", "met"}
    for line in ("tests marked gpu:", "bench fp16:", "bench bf16:", "target generate_ratio bf16 <= 1.03",
                 "steps tests, bench ran"):
        assert line in summary, line
    assert "training" not in summary


@pytest.mark.slow
def test_the_training_step_runs_in_a_cpu_rehearsal(tmp_path):
    report, summary = rehearse(tmp_path, "training")
    assert report["steps"] == ["training"] and "gpu_tests" not in report and "bench_fp16" not in report
    training = report["training"]
    assert training["corpus"] == "sample" and training["updates"] == 3
    assert training["generate"]["sentences"] == 300 and training["generate"]["bleu"] is not None
    assert set(report["targets"].values()) == {None}
    for line in ("training: 3 updates on sample", "fairseq-generate: BLEU", "steps training ran"):
        assert line in summary, line
    assert "bench" not in summary and "tests marked gpu" not in summary


def test_all_steps_by_default_and_an_unknown_step_is_refused(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.main.__defaults__ == (None,) and check.STEPS == ("tests", "bench", "training")
    with pytest.raises(SystemExit) as exit_:
        check.main([str(tmp_path / "out"), "--rehearse-on-cpu", "--steps", "tests,warmup"])
    assert exit_.value.code == 2 and "warmup: not a step; the steps are tests, bench, training" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    summary = check.summary({"environment": {"torch": "x", "cuda": None}, "rehearsal": True, "steps": list(check.STEPS),
                             "gpu_tests": {"seconds": 1}, "bench_fp16": {"ok": False, "exit": 1},
                             "bench_bf16": {"ok": False, "exit": 1}, "training": {"ok": False, "corpus": "sample"},
                             "targets": {}, "seconds": 2, "ok": True})
    assert summary.endswith("total 2 s; all steps ran\n")
