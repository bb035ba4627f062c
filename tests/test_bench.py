import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import unsilenced_env
from one_layer_lottery import bench

# Tiny shapes keep the benchmark's tests fast; the code path is the real one (iwslt's 6+6 layers, 4 heads).
TINY = ["--dims", "16", "32", "--max-tokens", "128", "--steps", "2", "--warmup", "1", "--mask-reps", "1",
        "--gen-reps", "1", "--gen-sentences", "2", "--gen-len", "3"]


def test_benchmark_reports_every_ratio_with_its_spread_at_each_shape(tmp_path):
    out, scratch = tmp_path / "bench.json", tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-m", "one_layer_lottery.bench", *TINY, "--json", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**unsilenced_env(),
                               # torch's compiler keeps its own cache, in TMPDIR unless told
                               "TMPDIR": str(scratch), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "torch-cache")})
    assert proc.returncode == 0, proc.stderr
    assert list(scratch.iterdir()) == []  # the dictionaries it built the models from are gone
    assert proc.stderr == ""  # no Hydra deprecation warnings, DEBUG/INFO lines or profiler start/stop lines
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["arch=one_layer_transformer_iwslt_de_en", "train", "mask",
                                                   "generation", "peak"] * 2
    assert "shape=16/32/4,6+6" in lines[0] and "shape=32/64/4,6+6" in lines[5]
    assert "over 2 pairs" in lines[1] and "over 1 pairs" in lines[3]
    assert "page faults per step" in lines[1] and "page faults" not in lines[3]
    shapes = json.loads(out.read_text())["shapes"]
    assert [r["shape"] for r in shapes] == [[16, 32, 4, 6], [32, 64, 4, 6]]
    for r in shapes:
        for key in ("train_step", "generate"):
            low, high = r[f"{key}_spread"]
            assert low <= r[f"{key}_ratio"] <= high and math.isfinite(high)
            assert (low, high) == bench.spread(r[f"{key}_all_s"])
        assert r["mask_elements"] > 0 and r["peak_memory_ratio"] > 0
        faults = r["train_step_minor_faults"]  # one count per timed step, as the times
        assert [len(v) for v in faults.values()] == [len(v) for v in r["train_step_all_s"].values()] == [2, 2]
        assert all(isinstance(n, int) and n >= 0 for v in faults.values() for n in v)
    assert shapes[1]["mask_elements"] > shapes[0]["mask_elements"]  # the larger shape has more scores


def test_benchmark_runs_in_bf16_without_memory():
    r = bench.run(bench.argparse.Namespace(arch="one_layer_transformer_iwslt_de_en", embed_dim=16, device="cpu",
                                           dtype="bf16", max_tokens=64, steps=1, warmup=0, mask_reps=1, gen_reps=1,
                                           gen_sentences=2, gen_len=3, skip_memory=True))
    assert r["shape"] == (16, 32, 4, 6)
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("train_step_ratio", "mask_speedup", "generate_ratio"))
    assert "peak_memory_ratio" not in r


def test_model_flags_reach_the_masked_model_only(tmp_path):
    """--model-flags measures a method beyond the paper: its masked model has them, dense does not."""
    args = bench.argparse.Namespace(arch="one_layer_transformer_iwslt_de_en", embed_dim=16, device="cpu",
                                    dtype="fp32", max_tokens=64, steps=1, warmup=0, mask_reps=1, gen_reps=1,
                                    gen_sentences=2, gen_len=3, skip_memory=True, model_flags="--mask-coats 3")
    r = bench.run(args)
    assert r["model_flags"] == ["--mask-coats", "3"] and r["train_step_ratio"] > 0
    assert bench.report(r)[0].startswith("arch=one_layer_transformer_iwslt_de_en flags='--mask-coats 3' shape=16/")
    bench.write_dictionaries(tmp_path)
    masked, _ = bench.build("masked", args.arch, str(tmp_path), 16, ["--mask-coats", "3"])
    dense, _ = bench.build("dense", args.arch, str(tmp_path), 16, ["--mask-coats", "3"])
    assert masked.cfg.mask_coats == 3 and not hasattr(dense.cfg, "mask_coats")


def test_ratio_is_the_median_of_the_per_repetition_ratios():
    # Repetition 3 ran while the machine was slow for the masked model only: the ratio of the
    # medians (3 / 2 = 1.5) would mix repetitions; the paired median does not.
    times = {"masked": [2.0, 3.0, 10.0], "dense": [1.0, 3.0, 2.0]}
    ratio, medians = bench.paired(times)
    assert ratio == 2.0
    assert medians == {"masked": 3.0, "dense": 2.0}
    assert bench.spread(times) == (1.0, 5.0)


def test_step_peak_counts_what_is_held_at_once():
    def step():
        a = torch.empty(1 << 18)  # 1 MiB
        b = torch.empty(1 << 19)  # 2 MiB while a is alive: the peak
        del a, b
        torch.empty(1 << 19)  # 2 MiB again, after both were freed

    peak = bench.step_peak_bytes(step, torch.device("cpu"))
    assert 3 << 20 <= peak < (3 << 20) + (64 << 10)


@pytest.mark.parametrize("argv, message", [
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--steps", "0"], "--steps and --gen-reps must be at least 1"),
    (["--dims", "30"], "--dims 30: an embedding size must be a positive multiple of the 4 heads"),
    (["--dims", "16", "--model-flags=--mask-coats three"], "--model-flags: argument --mask-coats: invalid int value"),
    (["--dims", "16", "--model-flags=--no-such-option"], "--model-flags: unrecognized arguments: --no-such-option"),
])
def test_bad_arguments_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
