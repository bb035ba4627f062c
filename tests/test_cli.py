"""End to end through the real fairseq CLIs on the project's sample corpus."""
import re

import pytest
import torch

from conftest import ROOT, USER_DIR, build, run_cli

MODEL_FLAGS = [
    "--encoder-embed-dim", 64, "--encoder-ffn-embed-dim", 128, "--encoder-layers", 2, "--decoder-layers", 2,
    "--share-decoder-input-output-embed", "--seed", 7,
]
TRAIN_FLAGS = [
    "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en", *MODEL_FLAGS, "--optimizer", "adam", "--lr", 5e-3, "--max-tokens", 2000,
    "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", 1, "--num-workers", 0,
]


def _model_state(path):
    return torch.load(path, map_location="cpu")["model"]


@pytest.mark.slow
def test_train_resume_generate(sample_bin, tmp_path):
    save = tmp_path / "ckpt"
    run_cli("fairseq-train", sample_bin, *TRAIN_FLAGS, "--max-update", 6, "--save-dir", save)
    first = _model_state(save / "checkpoint_last.pt")

    # Every random weight is bitwise what the seed generates; the scores have moved.
    fresh, _, _ = build(sample_bin, *MODEL_FLAGS)
    initial = fresh.state_dict()
    assert set(initial) == set(first)
    randoms = [k for k in initial if k.endswith(".weight") and "layer_norm" not in k]
    scores = [k for k in initial if k.endswith("scores")]
    assert randoms and scores
    for k in randoms:
        assert torch.equal(first[k], initial[k]), k
    assert all(not torch.equal(first[k], initial[k]) for k in scores)

    # Resume from checkpoint_last.pt: training continues at update 6.
    proc = run_cli("fairseq-train", sample_bin, *TRAIN_FLAGS, "--max-update", 9, "--save-dir", save)
    log = proc.stdout + proc.stderr
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 6 updates\)", log)
    assert "num_updates=7" in log.replace(" ", "") or "num_updates 7" in log
    resumed = _model_state(save / "checkpoint_last.pt")
    for k in randoms:
        assert torch.equal(resumed[k], initial[k]), k

    gen = run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", save / "checkpoint_last.pt",
                  "--beam", 5, "--batch-size", 128, "--max-len-b", 30, "--required-batch-size-multiple", 1)
    out = gen.stdout + gen.stderr
    bleu = re.search(r"BLEU4 = ([\d.]+)", out)
    assert bleu, out[-2000:]
    # All 300: fairseq drops a last batch that is not a multiple of --required-batch-size-multiple.
    assert len(re.findall(r"^H-\d+", gen.stdout, flags=re.M)) == 300
    assert 0.0 <= float(bleu.group(1)) <= 100.0


@pytest.mark.slow
def test_checkpoint_of_a_dense_transformer_is_refused(sample_bin, trained_transformer, tmp_path):
    dense = trained_transformer[1]  # fairseq's own transformer, trained by fairseq-train
    proc = run_cli("fairseq-train", sample_bin, *TRAIN_FLAGS, "--max-update", 2, "--save-dir", tmp_path / "x",
                   "--restore-file", dense, check=False)
    assert proc.returncode != 0
    assert "does not match this one_layer_transformer architecture" in proc.stderr
    assert "dense fairseq model" in proc.stderr
    # A stock fairseq checkpoint still decodes with the plugin loaded (weights_only allow-list).
    gen = run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", dense,
                  "--beam", 2, "--batch-size", 100, "--max-len-b", 5)
    assert "BLEU4 =" in gen.stdout + gen.stderr


@pytest.mark.slow
def test_hydra_yaml_config_trains(sample_bin, tmp_path):
    proc = run_cli("fairseq-hydra-train", "--config-dir", ROOT / "configs", "--config-name", "sample",
                   f"task.data={sample_bin}", f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={tmp_path}",
                   "optimization.max_update=2", f"hydra.run.dir={tmp_path / 'hydra'}")
    log = proc.stdout + proc.stderr
    assert "OneLayerTransformerModel" in log
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")
    assert state["cfg"]["model"]["prune_ratio"] == 0.5
    assert state["model"]["encoder.shared.weights.fc1.weight"].shape == (256, 128)
