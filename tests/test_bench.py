import math

import pytest
import torch

from one_layer_lottery import bench
from one_layer_lottery.models.one_layer_transformer import ARCHITECTURES


def test_benchmark_runs_and_reports_every_ratio(monkeypatch, capsys):
    # A small shape under the iwslt name keeps the test fast; the code path is the real one.
    monkeypatch.setitem(ARCHITECTURES, "one_layer_transformer_iwslt_de_en", (64, 128, 4, 2, {}))
    bench.main(["--max-tokens", "512", "--steps", "1", "--warmup", "1", "--mask-reps", "1", "--gen-reps", "1",
                "--gen-sentences", "4", "--gen-len", "5"])
    out = capsys.readouterr().out
    for line in ("train step   masked/dense", "mask compute naive/ours", "generation   masked/dense",
                 "peak memory  masked/dense"):
        assert line in out
    r = bench.run(bench.argparse.Namespace(arch="one_layer_transformer_iwslt_de_en", device="cpu", dtype="bf16",
                                           max_tokens=256, steps=1, warmup=0, mask_reps=1, gen_reps=1,
                                           gen_sentences=2, gen_len=3, skip_memory=True))
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("train_step_ratio", "mask_speedup", "generate_ratio"))
    assert r["mask_elements"] > 0


def test_ratio_is_the_median_of_the_per_repetition_ratios():
    # Repetition 3 ran while the machine was slow for the masked model only: the ratio of the
    # medians (3 / 2 = 1.5) would mix repetitions; the paired median does not.
    ratio, medians = bench.paired({"masked": [2.0, 3.0, 10.0], "dense": [1.0, 3.0, 2.0]})
    assert ratio == 2.0
    assert medians == {"masked": 3.0, "dense": 2.0}


def test_step_peak_counts_what_is_held_at_once():
    def step():
        a = torch.empty(1 << 18)  # 1 MiB
        b = torch.empty(1 << 19)  # 2 MiB while a is alive: the peak
        del a, b
        torch.empty(1 << 19)  # 2 MiB again, after both were freed

    peak = bench.step_peak_bytes(step, torch.device("cpu"))
    assert 3 << 20 <= peak < (3 << 20) + (64 << 10)


def test_peak_memory_needs_a_warm_up_step(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--warmup", "0"])
    assert "--warmup must be at least 1" in capsys.readouterr().err


def test_command_line_prints_results_only(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "one_layer_lottery.bench", "--max-tokens", "128", "--steps", "1",
                           "--warmup", "1", "--mask-reps", "1", "--gen-reps", "1", "--gen-sentences", "1",
                           "--gen-len", "2", "--json", str(out)], capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no Hydra deprecation warnings, DEBUG/INFO lines or profiler start/stop lines
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["arch=one_layer_transformer_iwslt_de_en",
                                                                      "train", "mask", "generation", "peak"]
    assert json.loads(out.read_text())["train_step_ratio"] > 0
