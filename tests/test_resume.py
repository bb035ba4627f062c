"""Crash-safe resume: fairseq-train killed (SIGKILL) while writing checkpoints, then restarted;
what the optimizer holds; checkpoints refused under other masking options."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SMALL, USER_DIR, build, run_cli
from one_layer_lottery.atomic import temporary_name_pattern

MODEL = (*SMALL, "--share-decoder-input-output-embed", "--mask-layernorm-type", "normal_layernorm", "--need-bias",
         "--seed", 5)
TRAIN = ["--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en", *MODEL, "--cpu", "--optimizer", "adam",
         "--lr", 5e-3, "--max-tokens", 1000, "--max-update", 6, "--save-interval-updates", 2, "--disable-validation",
         "--no-epoch-checkpoints", "--num-workers", 0, "--log-format", "simple"]
STALLED = Path(__file__).with_name("stalled_train.py")


@pytest.fixture(scope="module")
def reference(sample_bin, tmp_path_factory):
    """An uninterrupted run: 6 updates, a checkpoint every 2."""
    save = tmp_path_factory.mktemp("reference")
    run_cli("fairseq-train", sample_bin, *TRAIN, "--save-dir", save)
    return save


def _updates(state):
    return state["optimizer_history"][-1]["num_updates"]


def _load_all(save_dir):
    """{file name: updates} of every checkpoint*.pt; torch.load raises on a truncated file."""
    return {p.name: _updates(torch.load(p, map_location="cpu")) for p in sorted(save_dir.glob("checkpoint*.pt"))}


def _kill_mid_write(data, save_dir, **stall):
    """Run fairseq-train until the chosen checkpoint write is half done, then SIGKILL it."""
    mark = save_dir.parent / f"stalled-{'-'.join(f'{k}{v}' for k, v in stall.items())}"
    env = dict(os.environ, PYTHONWARNINGS="ignore", STALL_MARK=str(mark), **{k: str(v) for k, v in stall.items()})
    log_path = mark.with_suffix(".log")
    with open(log_path, "w") as log:
        cmd = [sys.executable, str(STALLED), str(data), *map(str, TRAIN), "--save-dir", str(save_dir)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        try:
            while not mark.exists():
                if proc.poll() is not None:
                    raise AssertionError(
                        f"exited ({proc.returncode}) before the stall:\n{log_path.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no stall within 300 s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return mark.read_text().split(), log_path.read_text()


def _loaded_at(log):
    m = re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", log)
    return int(m.group(1)) if m else None


@pytest.mark.slow
def test_killed_while_writing_checkpoints_resumes_from_the_last_complete_one(sample_bin, reference, tmp_path):
    save = tmp_path / "ckpt"
    # 1. Killed half-way through fairseq's own write of checkpoint_1_4.pt (to its .tmp name).
    (kind, name), _ = _kill_mid_write(sample_bin, save, STALL_SAVE=2)
    assert kind == "save" and name.endswith("checkpoint_1_4.pt.tmp")
    with pytest.raises(Exception):
        torch.load(name, map_location="cpu")  # the interrupted write really is half a file
    assert _load_all(save) == {"checkpoint_1_2.pt": 2, "checkpoint_last.pt": 2}

    # 2. Restarted with the same command, killed half-way through copying checkpoint_1_4.pt to
    #    checkpoint_last.pt: fairseq's plain copy would leave checkpoint_last.pt truncated; the
    #    plugin's copy writes a temporary file and replaces checkpoint_last.pt only when complete.
    (kind, name), log = _kill_mid_write(sample_bin, save, STALL_COPY=1)
    assert _loaded_at(log) == 2
    assert kind == "copy" and temporary_name_pattern(save / "checkpoint_last.pt").match(os.path.basename(name))
    assert _load_all(save) == {"checkpoint_1_2.pt": 2, "checkpoint_1_4.pt": 4, "checkpoint_last.pt": 2}

    # 3. Restarted once more, it continues from the last complete checkpoint_last.pt to the end.
    proc = run_cli("fairseq-train", sample_bin, *TRAIN, "--save-dir", save)
    assert _loaded_at(proc.stdout + proc.stderr) == 2
    assert _load_all(save) == {"checkpoint_1_2.pt": 2, "checkpoint_1_4.pt": 4, "checkpoint_1_6.pt": 6,
                               "checkpoint_last.pt": 6}
    assert not list(save.glob("*.tmp")), "a temporary file was left behind"  # the next copy removed the killed one's

    # The interrupted run ends bitwise where the uninterrupted one did, and its random weights
    # are still exactly what the seed generates.
    final = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    expected = torch.load(reference / "checkpoint_last.pt", map_location="cpu")
    assert final["model"].keys() == expected["model"].keys()
    for k, v in expected["model"].items():
        assert torch.equal(final["model"][k], v), k
    for i, s in expected["last_optimizer_state"]["state"].items():
        assert torch.equal(final["last_optimizer_state"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"]), i
    fresh = build(sample_bin, *MODEL)[0].state_dict()
    randoms = [k for k in fresh if k.endswith(".weight") and "layer_norm" not in k]
    assert randoms and all(torch.equal(final["model"][k], fresh[k]) for k in randoms)


@pytest.mark.slow
def test_without_the_plugin_copy_a_kill_leaves_a_truncated_checkpoint_last(sample_bin, tmp_path):
    # The control for the test above: fairseq-fixed 0.12.3.1's own copy is not atomic.
    save = tmp_path / "ckpt"
    (kind, name), _ = _kill_mid_write(sample_bin, save, STALL_COPY=1, STOCK_COPY=1)
    assert kind == "copy" and name.endswith("checkpoint_last.pt")
    with pytest.raises(Exception):
        torch.load(save / "checkpoint_last.pt", map_location="cpu")


def test_optimizer_state_covers_exactly_the_trained_tensors(sample_bin, reference):
    ckpt = torch.load(reference / "checkpoint_last.pt", map_location="cpu")
    model = build(sample_bin, *MODEL)[0]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kinds = {n.rsplit(".", 1)[-1] for n, _ in trainable}
    assert kinds == {"scores", "weight", "bias"}  # scores, LayerNorm affine, trained biases
    assert all(n.endswith(("scores", ".bias")) or "layer_norm." in n for n, _ in trainable)
    state = ckpt["last_optimizer_state"]["state"]
    assert ckpt["last_optimizer_state"]["param_groups"][0]["params"] == list(range(len(trainable)))
    assert [tuple(state[i]["exp_avg"].shape) for i in range(len(trainable))] == [tuple(p.shape) for _, p in trainable]
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    held = sum(s["exp_avg"].numel() for s in state.values())
    assert frozen > 0 and held == sum(p.numel() for _, p in trainable)


@pytest.mark.slow
def test_resuming_or_decoding_under_other_mask_options_is_refused(sample_bin, reference, tmp_path):
    save = tmp_path / "ckpt"
    shutil.copytree(reference, save)
    before = {p.name: p.read_bytes() for p in save.iterdir()}
    proc = run_cli("fairseq-train", sample_bin, *TRAIN, "--prune-ratio", 0.3, "--max-update", 8, "--save-dir", save,
                   check=False)
    assert proc.returncode != 0
    assert "--prune-ratio: the checkpoint's is 0.5, this model's is 0.3" in proc.stderr
    assert {p.name: p.read_bytes() for p in save.iterdir()} == before  # nothing written

    gen = run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", save / "checkpoint_last.pt",
                  "--model-overrides", "{'prune_method': 'topk', 'init': 'signed_constant'}", "--cpu",
                  "--batch-size", 64, "--beam", 1, "--required-batch-size-multiple", 1, check=False)
    assert gen.returncode != 0
    assert "--prune-method: the checkpoint's is super_mask, this model's is topk" in gen.stderr
    assert "--init: the checkpoint's is kaiming_uniform, this model's is signed_constant" in gen.stderr


@pytest.mark.parametrize("flag, value, saved, mine", [
    ("--prune-ratio", 0.3, "0.5", "0.3"),
    ("--prune-method", "topk", "super_mask", "topk"),
    ("--init", "signed_constant", "kaiming_uniform", "signed_constant"),
    ("--seed", 6, "5", "6"),
    ("--share-mask", "layer_mask", "layer_weights", "layer_mask"),
    ("--mask-init", "constant", "standard", "constant"),
    ("--attention-init", "fairseq_xavier", "same", "fairseq_xavier"),
    ("--mask-layernorm-type", "frozen_layernorm", "normal_layernorm", "frozen_layernorm"),
])
def test_load_state_dict_names_both_values_of_a_changed_option(sample_bin, flag, value, saved, mine):
    trained = build(sample_bin, *MODEL)[0].state_dict()
    other = build(sample_bin, *MODEL, flag, value)[0]
    with pytest.raises(ValueError, match=re.escape(f"{flag}: the checkpoint's is {saved}, this model's is {mine}")):
        other.load_state_dict(trained)


def test_unrelated_or_missing_records_and_unreadable_ones(sample_bin, caplog):
    trained = build(sample_bin, *MODEL)[0].state_dict()
    # --mask-threshold only matters to the threshold methods: not a reason to refuse.
    build(sample_bin, *MODEL, "--mask-threshold", 0.2)[0].load_state_dict(trained)
    model = build(sample_bin, *MODEL)[0]
    old = {k: v for k, v in trained.items() if k != "_extra_state"}  # a checkpoint from before the record
    with caplog.at_level("WARNING"):
        model.load_state_dict(old)
    assert "does not record its masking options" in caplog.text
    garbled = dict(trained, _extra_state=trained["_extra_state"] * 1.37)  # e.g. averaged across runs
    with pytest.raises(ValueError, match="record of its masking options .* is unreadable"):
        model.load_state_dict(garbled)


def test_the_record_holds_the_options_the_config_marks_recorded(sample_bin):
    from one_layer_lottery.models.one_layer_transformer.checkpoint_options import read_record
    from one_layer_lottery.models.one_layer_transformer.config import RECORDED_OPTIONS

    record = read_record(build(sample_bin, *MODEL)[0].state_dict()["_extra_state"])
    # Names and values as every checkpoint records them (older records lack --authors-init).
    assert record == {
        "--prune-ratio": 0.5, "--prune-method": "super_mask", "--mask-threshold": 0.0, "--share-mask": "layer_weights",
        "--init": "kaiming_uniform", "--scale-fan": False, "--authors-init": False, "--attention-init": "same",
        "--mask-init": "standard", "--mask-constant": 1.0, "--mask-layernorm-type": "normal_layernorm",
        "--need-bias": True, "--embed-no-mask": False, "--layers-no-mask": False, "--mask-coats": 1,
        "--rerand-interval": 0, "--rerand-fraction": 0.1, "--learned-gains": False, "--qk-init-scale": 1.0, "--seed": 5}
    assert sorted(record) == sorted("--" + name.replace("_", "-") for name in RECORDED_OPTIONS)
