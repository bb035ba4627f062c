"""Same --seed and options: bitwise the same random weights, initial scores and trained scores."""
import os
import subprocess

import pytest
import torch

from conftest import BIN, ROOT, SMALL, USER_DIR, build, run_command
from one_layer_lottery.masking import RandomWeight, ScoreInit, WeightInit

FLAGS = (*SMALL, "--share-decoder-input-output-embed", "--seed", 11)


def _drawn(model):
    """Every random weight and every score tensor, by state-dict name."""
    return {k: v for k, v in model.state_dict().items() if k.endswith(("scores", ".weight")) and "layer_norm" not in k}


def test_weights_and_scores_do_not_depend_on_global_rng_default_dtype_or_device(sample_bin):
    reference = _drawn(build(sample_bin, *FLAGS)[0])
    assert len(reference) > 20

    torch.manual_seed(12345)
    torch.rand(1000)
    assert _same(reference, _drawn(build(sample_bin, *FLAGS)[0]))

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert _same(reference, _drawn(build(sample_bin, *FLAGS)[0]))
    finally:
        torch.set_default_dtype(previous)

    # Under a default-device context the masked weights are still drawn on CPU (fairseq's own
    # modules land on the context's device; the model is moved as a whole afterwards).
    with torch.device("meta"):
        for init in ("kaiming_uniform", "kaiming_normal", "signed_constant", "unsigned_constant", "standard"):
            w = WeightInit(init).sample((8, 4), 11, "w")
            assert w.device.type == "cpu" and w.dtype == torch.float32
            assert torch.equal(w, WeightInit(init).sample((8, 4), 11, "w").to("cpu"))
        for init in ("standard", "constant", "constant_noisy"):
            assert ScoreInit(init).sample((8, 4), 11, "w").device.type == "cpu"
        on_meta = build(sample_bin, *FLAGS)[0]
    randoms = [m.weight for m in on_meta.modules() if isinstance(m, RandomWeight)]
    assert randoms and all(w.device.type == "cpu" for w in randoms)
    assert _same(reference, {k: v for k, v in _drawn(on_meta).items()})

    # Moving the model (here: to another dtype and back) changes nothing either.
    moved = build(sample_bin, *FLAGS)[0].to(torch.float64).to(torch.float32)
    assert _same(reference, _drawn(moved))


def test_a_tensor_depends_on_its_name_not_on_how_many_layers_exist(sample_bin):
    two = build(sample_bin, *FLAGS)[0].state_dict()
    deeper = build(sample_bin, *FLAGS, "--encoder-layers", 5, "--decoder-layers", 4)[0].state_dict()
    shared = [k for k in two if ".shared." in k or ".layers.0." in k or ".layers.1." in k]
    assert shared
    assert all(torch.equal(two[k], deeper[k]) for k in shared)
    other_seed = build(sample_bin, *SMALL, "--share-decoder-input-output-embed", "--seed", 12)[0].state_dict()
    assert not any(torch.equal(two[k], other_seed[k]) for k in shared if k.endswith("scores"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and b[k].dtype == torch.float32 for k in a)


@pytest.mark.slow
def test_training_twice_with_the_same_seed_gives_identical_scores(sample_bin, tmp_path):
    # Dropout 0.3 (the architecture's default) is on: fairseq reseeds it per update from --seed.
    flags = ["--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en", *FLAGS, "--cpu",
             "--optimizer", "adam", "--lr", 5e-3, "--max-tokens", 1000, "--max-update", 4, "--disable-validation",
             "--no-epoch-checkpoints", "--num-workers", 0]
    # The two runs go side by side (each single-threaded), one in a fresh interpreter, the other
    # (when the tests' commands are served) in a fork of a process that imported fairseq long
    # before: they share nothing, not even how their processes began.
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [str(BIN / "fairseq-train"), str(sample_bin), *map(str, flags), "--save-dir"]
    fresh = subprocess.Popen([*cmd, str(tmp_path / "a")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    other = run_command([*cmd, str(tmp_path / "b")], cwd=ROOT, env=env, timeout=600)
    err = fresh.communicate(timeout=600)[1]
    assert fresh.returncode == 0, err[-5000:]
    assert other.returncode == 0, other.stderr[-5000:]
    a, b = (torch.load(tmp_path / run / "checkpoint_last.pt", map_location="cpu") for run in ("a", "b"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, s in a["last_optimizer_state"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s[name], b["last_optimizer_state"]["state"][i][name]), (i, name)
    # ... and the runs did train: every score moved away from its seeded start.
    initial = build(sample_bin, *FLAGS)[0].state_dict()
    scores = [k for k in initial if k.endswith("scores")]
    assert scores and all(not torch.equal(a["model"][k], initial[k]) for k in scores)
