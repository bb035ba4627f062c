"""Export to a plain fairseq Transformer that stock fairseq loads without --user-dir."""
import sys

import pytest
import torch
from fairseq.models.transformer import TransformerModel

from conftest import GENERATE, ROOT, USER_DIR, hypotheses, run_cli, run_command, unsilenced_env
from one_layer_lottery import export
from one_layer_lottery.masking import MaskedWeight
from test_compact import build_case, first_batch, like_trained

CASES = {
    "default": ((), False),
    "shared_scores_unmasked_embeddings": (("--share-mask", "layer_mask", "--embed-no-mask",
                                           "--mask-layernorm-type", "frozen_layernorm"), False),
    "independent_layers_trained_tensors_prenorm": (
        ("--share-mask", "none", "--need-bias", "--mask-layernorm-type", "normal_layernorm",
         "--encoder-normalize-before", "--decoder-normalize-before"), False),
    "shared_all_embeddings_unscaled": (("--share-all-embeddings", "--no-scale-embedding", "--prune-method", "topk",
                                        "--prune-ratio", 0.8), True),
    "sigmoid_threshold_pretrained": (("--prune-method", "sigmoid_threshold", "--mask-threshold", 0.6,
                                      "--encoder-embed-path", "{enc}"), False),
    "coats_gains_qk_scale": (("--mask-coats", 3, "--learned-gains", "--qk-init-scale", 0.5), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_model_computes_the_masked_model(case, sample_bin, sample_bin_joined, tmp_path):
    model, task, cfg = build_case(CASES[case], sample_bin, sample_bin_joined, tmp_path)
    like_trained(model, seed=len(case)).eval()
    ckpt, info = export.dense_checkpoint(model, cfg, task)
    dense = info["model"]
    assert isinstance(dense, TransformerModel) and ckpt["cfg"]["model"]["_name"] == "transformer"
    assert ckpt["cfg"]["common"]["user_dir"] is None

    batch = first_batch(task)
    with torch.no_grad():
        ours = model(**batch["net_input"])[0]
        theirs = dense(**batch["net_input"])[0]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))

    # Zeros exactly where the masks removed a weight, per virtual layer (a layer's random weight has
    # no zero of its own; an embedding's padding row is zero).
    state = ckpt["model"]
    checked = 0
    for name, module in model.named_modules():
        if isinstance(module, MaskedWeight) and module.is_masked and f"{name}.weight" in state:
            nonzero = module.random_weight != 0
            assert ".layers." not in name or nonzero.all()
            assert torch.equal(state[f"{name}.weight"] != 0, module.mask() & nonzero), name
            checked += 1
    assert checked >= 6 * 3 + 10 * 2
    if "trained_tensors" in case:
        ln = model.encoder.layers[0].final_layer_norm
        assert torch.equal(state["encoder.layers.0.final_layer_norm.weight"], ln.weight)
        assert torch.equal(state["encoder.layers.0.fc1.bias"], model.encoder.layers[0].fc1.bias)
    else:
        assert torch.equal(state["encoder.layers.0.fc1.bias"], torch.zeros(64))
        if "frozen" not in case:
            assert torch.equal(state["encoder.layers.0.final_layer_norm.weight"], torch.ones(32))


def _check_plain(value, where="checkpoint"):
    """Only what torch's weights_only loader accepts without any allow-list."""
    if isinstance(value, dict):
        assert type(value) is dict, where
        for k, v in value.items():
            assert isinstance(k, str), where
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool, torch.Tensor), (where, type(value))


@pytest.mark.slow
def test_stock_fairseq_decodes_the_dense_export(trained_sample, trained_sample_generate, tmp_path, capsys):
    dense = tmp_path / "dense.pt"
    assert export.main(["dense", str(trained_sample.checkpoint), str(dense)]) == 0
    assert "plain fairseq transformer, 0.5000 of the layer weights are zero" in capsys.readouterr().out

    saved = torch.load(dense, weights_only=True)
    _check_plain(saved)
    assert saved["cfg"]["common"]["user_dir"] is None and saved["cfg"]["model"]["_name"] == "transformer"
    assert "encoder.layers.1.fc1.weight" in saved["model"] and not any("scores" in k for k in saved["model"])

    # Stock fairseq: no --user-dir, so torch.load runs without the plugin's allow-list.
    gen = run_cli("fairseq-generate", trained_sample.data, "--path", dense, *GENERATE)
    want, got = hypotheses(trained_sample_generate), hypotheses(gen.stdout)
    assert len(want) == 300 and got == want

    sentences = tmp_path / "input.de"
    sentences.write_text("".join((ROOT / "data" / "sample" / "test.de").read_text().splitlines(keepends=True)[:5]))
    common = ("--source-lang", "de", "--target-lang", "en", "--beam", 5, "--input", sentences)
    masked = run_cli("fairseq-interactive", trained_sample.data, "--user-dir", USER_DIR,
                     "--path", trained_sample.checkpoint, *common)
    stock = run_cli("fairseq-interactive", trained_sample.data, "--path", dense, *common)
    assert len(hypotheses(masked.stdout)) == 5 and hypotheses(stock.stdout) == hypotheses(masked.stdout)


def test_failed_export_leaves_existing_output(trained_sample, tmp_path, capsys):
    out = tmp_path / "dense.pt"
    out.write_bytes(b"previous export")
    with pytest.raises(SystemExit) as exit_:
        export.main(["dense", str(trained_sample.checkpoint), str(out), "--data", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2 and "nowhere: not a directory" in capsys.readouterr().err
    assert out.read_bytes() == b"previous export"


@pytest.mark.slow
def test_the_tools_print_their_results_and_nothing_else(trained_sample, tmp_path):
    """Run as users run them, warnings not silenced: the results on stdout, an empty stderr (the
    start-up's silence is test_fairseq_patches's)."""
    def tool(*args):
        proc = run_command([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=unsilenced_env(), timeout=300)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
        return proc.stdout.splitlines()

    sub, figures = tmp_path / "sub.olls", tmp_path / "figures"
    out = tool("one_layer_lottery.export", "compact", trained_sample.checkpoint, sub)
    assert len(out) == 1 and out[0].startswith(f"wrote {sub}: ")
    assert tool("one_layer_lottery.analyze", sub, figures) == [
        str(figures / name) for name in ("mask_stats.json", "overlap.png", "kept.png")]
