import math

from one_layer_lottery import bench
from one_layer_lottery.models.one_layer_transformer import ARCHITECTURES


def test_benchmark_runs_and_reports_every_ratio(monkeypatch, capsys):
    # A small shape under the iwslt name keeps the test fast; the code path is the real one.
    monkeypatch.setitem(ARCHITECTURES, "one_layer_transformer_iwslt_de_en", (64, 128, 4, 2, {}))
    bench.main(["--max-tokens", "512", "--steps", "1", "--warmup", "1", "--mask-reps", "1", "--gen-reps", "1",
                "--gen-sentences", "4", "--gen-len", "5", "--skip-memory"])
    out = capsys.readouterr().out
    for line in ("train step   masked/dense", "mask compute naive/ours", "generation   masked/dense"):
        assert line in out
    r = bench.run(bench.argparse.Namespace(arch="one_layer_transformer_iwslt_de_en", device="cpu", dtype="bf16",
                                           max_tokens=256, steps=1, warmup=0, mask_reps=1, gen_reps=1,
                                           gen_sentences=2, gen_len=3, skip_memory=True))
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("train_step_ratio", "mask_speedup", "generate_ratio"))
    assert r["mask_elements"] > 0
