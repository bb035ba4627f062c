"""python -m one_layer_lottery.average_checkpoints on real fairseq-train checkpoints of the sample corpus."""
import os
import re
import sys

import pytest
import torch

from conftest import ROOT, SMALL, USER_DIR, build, run_cli, run_command
from one_layer_lottery.checkpoints.average import (
    AverageError,
    average_checkpoints,
    is_frozen,
    main,
    select_checkpoints,
)

MODEL = ["--arch", "one_layer_transformer_iwslt_de_en", "--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64,
         "--encoder-layers", 2, "--decoder-layers", 2, "--share-decoder-input-output-embed", "--seed", 3]


def average_cli(*args, check=True):
    """``python -m one_layer_lottery.average_checkpoints ARGS`` in a fresh process."""
    proc = run_command([sys.executable, "-m", "one_layer_lottery.average_checkpoints", *map(str, args)],
                       cwd=ROOT, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def average_main(capsys, *args):
    """The same command line in this process (no second fairseq import): (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def run_dir(sample_bin, tmp_path_factory):
    """Two epochs of a tiny model on the 300 test pairs (a fast epoch): checkpoint1.pt, checkpoint2.pt and update
    checkpoints every 2 updates."""
    save = tmp_path_factory.mktemp("avg-run")
    run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, *MODEL, "--optimizer", "adam", "--lr", 5e-3,
            "--max-tokens", 1000, "--train-subset", "test", "--max-epoch", 2, "--save-interval-updates", 2,
            "--save-dir", save,
            "--num-workers", 0, "--log-format", "simple")
    return save


def _scores(state):
    return {k: v for k, v in state["model"].items() if k.endswith(".scores")}


@pytest.mark.slow
def test_averaging_one_checkpoint_twice_is_the_identity(run_dir, tmp_path):
    out = tmp_path / "avg.pt"
    average_cli("--inputs", run_dir / "checkpoint2.pt", run_dir / "checkpoint2.pt", "--output", out)
    original, averaged = load(run_dir / "checkpoint2.pt"), load(out)
    assert set(averaged["model"]) == set(original["model"])
    for key, tensor in original["model"].items():
        assert torch.equal(averaged["model"][key], tensor), key
        assert averaged["model"][key].dtype == tensor.dtype
    assert "last_optimizer_state" not in averaged
    assert averaged["cfg"] == original["cfg"]


@pytest.mark.slow
def test_average_of_two_epochs(run_dir, tmp_path, capsys):
    out = tmp_path / "avg.pt"
    assert average_main(capsys, "--inputs", run_dir, "--num-epoch-checkpoints", 2, "--output", out)[0] == 0
    first, second, averaged = load(run_dir / "checkpoint1.pt"), load(run_dir / "checkpoint2.pt"), load(out)
    scores = _scores(second)
    assert scores and any(not torch.equal(first["model"][k], v) for k, v in scores.items())
    for key, tensor in second["model"].items():
        if key in scores:
            expected = ((first["model"][key].double() + tensor.double()) / 2).float()
            assert torch.equal(averaged["model"][key], expected), key
        else:  # random weights, options record, versions: identical in both, kept as they are
            assert torch.equal(first["model"][key], tensor), key
            assert torch.equal(averaged["model"][key], tensor), key
    # the frozen random weights really are among the kept tensors
    assert any(is_frozen(k, second["cfg"]["model"]) for k in second["model"])
    # metadata of the most trained input
    assert averaged["optimizer_history"][-1]["num_updates"] == second["optimizer_history"][-1]["num_updates"]
    assert averaged["extra_state"]["averaged_checkpoints"] == ["checkpoint2.pt", "checkpoint1.pt"]


@pytest.mark.slow
def test_checkpoint_selection(run_dir, capsys):
    epochs = select_checkpoints(str(run_dir), num_epochs=2)
    assert [os.path.basename(p) for p in epochs] == ["checkpoint2.pt", "checkpoint1.pt"]
    assert [os.path.basename(p) for p in select_checkpoints(str(run_dir), num_epochs=1, upper_bound=1)] \
        == ["checkpoint1.pt"]
    updates = sorted((int(m.group(2)), m.group(0)) for m in
                     (re.match(r"checkpoint_(\d+)_(\d+)\.pt$", n) for n in os.listdir(run_dir)) if m)
    assert len(updates) >= 2
    chosen = select_checkpoints(str(run_dir), num_updates=2)
    assert [os.path.basename(p) for p in chosen] == [updates[-1][1], updates[-2][1]]
    with pytest.raises(AverageError, match="fewer than the 3 asked for"):
        select_checkpoints(str(run_dir), num_epochs=3)
    code, err = average_main(capsys, "--inputs", run_dir, "--num-epoch-checkpoints", 5, "--output", run_dir / "x.pt")
    assert code == 2 and "has 2 epoch checkpoint(s) (checkpoint1.pt, checkpoint2.pt" in err
    assert not (run_dir / "x.pt").exists()


def _tampered(run_dir, tmp_path, name, change):
    state = load(run_dir / "checkpoint2.pt")
    change(state["model"])
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_refuses_inputs_of_different_runs_and_keeps_the_old_output(run_dir, tmp_path, capsys):
    out = tmp_path / "avg.pt"
    out.write_bytes(b"previous result")
    good = run_dir / "checkpoint1.pt"
    random_key = "encoder.shared.weights.fc1.weight"

    def perturb(model):
        model[random_key] = model[random_key].clone()
        model[random_key][0, 0] += 1.0

    cases = {
        "frozen.pt": (perturb, f"{random_key}: this frozen random tensor differs"),
        "missing.pt": (lambda m: m.pop("decoder.layers.1.fc1.scores"), "different model keys"),
        "shape.pt": (lambda m: m.__setitem__("encoder.layers.0.fc1.scores", torch.zeros(3, 3)),
                     "encoder.layers.0.fc1.scores has shape (3, 3)"),
        "dtype.pt": (lambda m: m.__setitem__("encoder.layers.0.fc1.scores", m["encoder.layers.0.fc1.scores"].double()),
                     "has dtype torch.float64"),
        "options.pt": (lambda m: m.__setitem__("_extra_state", m["_extra_state"] + 1),
                       "record different masking options"),
    }
    for name, (change, message) in cases.items():
        bad = _tampered(run_dir, tmp_path, name, change)
        with pytest.raises(AverageError, match=re.escape(message)):
            average_checkpoints([str(good), str(bad)])
    code, err = average_main(capsys, "--inputs", good, tmp_path / "frozen.pt", "--output", out)
    assert code == 2 and random_key in err
    assert out.read_bytes() == b"previous result"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    code, err = average_main(capsys, "--inputs", good, "--output", good)
    assert code == 2 and "is one of the inputs" in err


@pytest.mark.parametrize("flags", [
    (),
    ("--share-mask", "layer_mask", "--mask-layernorm-type", "normal_layernorm", "--need-bias"),
    ("--share-mask", "none", "--mask-layernorm-type", "frozen_layernorm", "--embed-no-mask"),
    ("--learned-gains", "--mask-coats", 2, "--rerand-interval", 5),
])
def test_frozen_keys_are_exactly_the_parameters_that_are_not_trained(sample_bin, flags):
    model, _, cfg = build(sample_bin, *SMALL, *flags)
    params = dict(model.named_parameters(remove_duplicate=False))
    model_cfg = dict(cfg.model)
    for key in model.state_dict():
        if key in params:
            assert is_frozen(key, model_cfg) == (not params[key].requires_grad), key


@pytest.mark.slow
def test_the_average_decodes(run_dir, sample_bin, tmp_path, capsys):
    out = tmp_path / "avg.pt"
    assert average_main(capsys, "--inputs", run_dir, "--num-update-checkpoints", 2, "--output", out)[0] == 0
    gen = run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", out, "--beam", 5,
                  "--batch-size", 128, "--max-len-a", 0, "--max-len-b", 8, "--required-batch-size-multiple", 1)
    assert re.search(r"BLEU4 = [\d.]+", gen.stdout + gen.stderr)
    assert len(re.findall(r"^H-\d+", gen.stdout, flags=re.M)) == 300
