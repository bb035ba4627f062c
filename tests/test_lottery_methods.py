"""The strong-lottery-ticket methods as options of the model: today's model at their neutral values,
option errors, recorded options, training with them, and an exact resume of IteRand's rounds."""
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import SMALL, USER_DIR, build, run_cli, train_in_process
from one_layer_lottery.masking import MaskedWeight, RandomWeight
from one_layer_lottery.masking.rerandomize import redraw_values
from one_layer_lottery.model_files import load_checkpoint_state
from one_layer_lottery.models.one_layer_transformer.checkpoint_options import read_record, record_tensor
from test_compact import like_trained

FIXTURES = Path(__file__).with_name("fixtures")
# The model of fixtures/compact-v1.olls and fixtures/compact-v1-outputs.pt, both written by the
# version of this plugin before these options existed (format version 1).
V1_MODEL = (*SMALL, "--need-bias", "--mask-layernorm-type", "normal_layernorm", "--seed", 4)
V1_SCORES_SEED = 4
NEUTRAL = ("--mask-coats", 1, "--rerand-interval", 0, "--qk-init-scale", 1.0)


def test_neutral_values_are_the_model_before_the_options_bit_for_bit(sample_bin):
    """With the options at their neutral values the model computes, bit for bit, what it computes
    without them, and both equal what the plugin computed before the options existed."""
    golden = torch.load(FIXTURES / "compact-v1-outputs.pt", weights_only=True)
    found = []
    for flags in ((), NEUTRAL):
        model, _, _ = build(sample_bin, *V1_MODEL, *flags)
        like_trained(model, seed=V1_SCORES_SEED)
        model.eval()
        with torch.no_grad():
            logits, extra = model(**golden["net_input"])
        model.train()
        torch.manual_seed(0)  # dropout, as when the golden gradients were taken
        out, _ = model(**golden["net_input"])
        out.log_softmax(-1).gather(-1, golden["target"].unsqueeze(-1)).sum().backward()
        params = dict(model.named_parameters())
        found.append({"eval_logits": logits, "eval_attn": extra["attn"][0],
                      **{name: params[name].grad for name in golden["train_score_grads"]}})
        assert not any(k.endswith("gains") or k.startswith("rerandomizer") for k in model.state_dict())
    assert all(torch.equal(found[0][key], found[1][key]) for key in found[0])
    # The golden values were written on another machine, whose CPU kernels round the backward's
    # sums differently in the last bits (up to 1e-6 on gradients of 1 to 4 here); any change of
    # mask, weight or layer moves them by orders of magnitude more.
    expected = {"eval_logits": golden["eval_logits"], "eval_attn": golden["eval_attn"], **golden["train_score_grads"]}
    for key, value in expected.items():
        torch.testing.assert_close(found[0][key], value, rtol=1e-6, atol=2e-6, msg=key)


BAD_VALUES = [
    (("--mask-coats", 0), "--mask-coats must be an integer from 1 to 32, got 0"),
    (("--mask-coats", 33), "--mask-coats must be an integer from 1 to 32, got 33"),
    (("--mask-coats", 2, "--prune-method", "threshold"), "--mask-coats 2 needs a top-k --prune-method"),
    (("--rerand-interval", -1), "--rerand-interval must be a non-negative integer"),
    (("--rerand-interval", 5, "--rerand-fraction", 0), r"--rerand-fraction must be a number in \(0, 1\], got 0.0"),
    (("--rerand-fraction", 1.5), r"--rerand-fraction must be a number in \(0, 1\], got 1.5"),
    (("--rerand-fraction", "nan"), r"--rerand-fraction must be a number in \(0, 1\], got nan"),
    (("--qk-init-scale", 0), "--qk-init-scale must be a finite number above 0, got 0.0"),
    (("--qk-init-scale", -2), "--qk-init-scale must be a finite number above 0, got -2.0"),
    (("--qk-init-scale", "inf"), "--qk-init-scale must be a finite number above 0, got inf"),
    (("--qk-init-scale", "nan"), "--qk-init-scale must be a finite number above 0, got nan"),
]


@pytest.mark.parametrize("flags, message", BAD_VALUES, ids=[" ".join(map(str, f)) for f, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_flag(sample_bin, flags, message):
    with pytest.raises(ValueError, match=message):
        build(sample_bin, *SMALL, *flags)


def test_non_integers_are_refused_by_the_parser(sample_bin, capsys):
    for flag in ("--mask-coats", "--rerand-interval"):
        with pytest.raises(SystemExit):
            build(sample_bin, *SMALL, flag, 2.5)
        assert f"argument {flag}: invalid int value: '2.5'" in capsys.readouterr().err


def test_fairseq_train_reports_a_bad_value_as_a_usage_error(sample_bin, tmp_path):
    proc = run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en",
                   *SMALL, "--max-tokens", 500, "--max-update", 1, "--optimizer", "adam", "--save-dir", tmp_path,
                   "--qk-init-scale", "nan", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last == "fairseq-train: error: --qk-init-scale must be a finite number above 0, got nan"


def _record(state):
    return read_record(state["_extra_state"])


def _with_record(state, record):
    return dict(state, _extra_state=record_tensor(record))


METHOD_FLAGS = ("--mask-coats", 3, "--rerand-interval", 4, "--rerand-fraction", 0.3, "--learned-gains",
                "--qk-init-scale", 0.5)


def test_checkpoints_record_the_methods_and_refuse_other_values(sample_bin):
    model, _, _ = build(sample_bin, *SMALL, *METHOD_FLAGS)
    record = _record(model.state_dict())
    assert {k: record[k] for k in ("--mask-coats", "--rerand-interval", "--rerand-fraction", "--learned-gains",
                                   "--qk-init-scale")} == {
        "--mask-coats": 3, "--rerand-interval": 4, "--rerand-fraction": 0.3, "--learned-gains": True,
        "--qk-init-scale": 0.5}
    for flag, value, saved, mine in (("--mask-coats", 2, "3", "2"), ("--rerand-interval", 5, "4", "5"),
                                     ("--rerand-fraction", 0.2, "0.3", "0.2"), ("--qk-init-scale", 2, "0.5", "2.0")):
        other_flags = list(METHOD_FLAGS)
        other_flags[other_flags.index(flag) + 1] = value
        other, _, _ = build(sample_bin, *SMALL, *other_flags)
        with pytest.raises(ValueError, match=re.escape(f"{flag}: the checkpoint's is {saved}, this model's is {mine}")):
            other.load_state_dict(model.state_dict())


def test_records_from_before_the_methods_read_as_their_defaults(sample_bin):
    plain, _, _ = build(sample_bin, *SMALL)
    new_flags = ("--mask-coats", "--rerand-interval", "--rerand-fraction", "--learned-gains", "--qk-init-scale")
    older = {k: v for k, v in _record(plain.state_dict()).items() if k not in new_flags}
    plain.load_state_dict(_with_record(plain.state_dict(), older))
    coated, _, _ = build(sample_bin, *SMALL, "--mask-coats", 2)
    with pytest.raises(ValueError, match=re.escape("--mask-coats: the checkpoint's is (not recorded), this model's is 2")):
        coated.load_state_dict(_with_record(coated.state_dict(), older))
    # Without rounds the fraction does not matter.
    other_fraction, _, _ = build(sample_bin, *SMALL, "--rerand-fraction", 0.7)
    other_fraction.load_state_dict(plain.state_dict())


def test_qk_init_scale_scales_the_random_queries_and_keys_of_every_attention(sample_bin):
    plain, _, _ = build(sample_bin, *SMALL)
    scaled, _, _ = build(sample_bin, *SMALL, "--qk-init-scale", 3)
    a, b = plain.state_dict(), scaled.state_dict()
    weights = [k for k in a if k.endswith(".weight") and ".shared.weights." in k]
    qk = [k for k in weights if re.search(r"_(q|k)_proj\.weight$", k)]
    assert len(qk) == 2 * 3  # encoder self, decoder self and cross attention
    for key in weights:
        assert torch.equal(b[key], a[key] * 3 if key in qk else a[key]), key


def test_all_methods_train_together(sample_bin):
    """A few real updates: gains and scores move, coats keep their shares, a round redraws."""
    trainer, logs = train_in_process(sample_bin, *SMALL, *METHOD_FLAGS, "--rerand-interval", 2, updates=3)
    model = trainer.model
    initial, _, _ = build(sample_bin, "--cpu", *SMALL, *METHOD_FLAGS, "--rerand-interval", 2)
    assert all(math.isfinite(log["loss"]) for log in logs)
    state, start = model.state_dict(), initial.state_dict()
    gains = [k for k in state if k.endswith(".gains")]
    assert len(gains) == 3 * 6 + 2 * 10 and all(not torch.equal(state[k], start[k]) for k in gains)
    assert not torch.equal(state["encoder.layers.0.fc1.scores"], start["encoder.layers.0.fc1.scores"])
    assert int(state["rerandomizer.rounds"]) == 1  # before update 3 (2 done)
    layers = [m for n, m in model.named_modules() if isinstance(m, MaskedWeight) and ".layers." in n]
    for m in layers:
        values = m.mask_values()
        assert set((values * 3).unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    redrawn = 0
    for name, m in model.named_modules():
        if isinstance(m, RandomWeight) and ".shared.weights." in f"{name}.weight":
            redrawn += int((m.weight != redraw_values(m, 0)).sum())
    assert redrawn > 0


RESUME = ["--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en", *SMALL, "--share-mask", "none",
          "--rerand-interval", 2, "--rerand-fraction", 0.5, "--seed", 2, "--cpu", "--optimizer", "adam", "--lr", 5e-3,
          "--max-tokens", 1000, "--disable-validation", "--no-epoch-checkpoints", "--num-workers", 0,
          "--log-format", "simple"]


@pytest.mark.slow
def test_resumed_rerand_run_equals_the_uninterrupted_run(sample_bin, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli("fairseq-train", sample_bin, *RESUME, "--max-update", 6, "--save-dir", straight)
    run_cli("fairseq-train", sample_bin, *RESUME, "--max-update", 3, "--save-dir", resumed)
    halfway = load_checkpoint_state(resumed / "checkpoint_last.pt")["model"]
    assert int(halfway["rerandomizer.rounds"]) == 1
    run_cli("fairseq-train", sample_bin, *RESUME, "--max-update", 6, "--save-dir", resumed)
    a = load_checkpoint_state(straight / "checkpoint_last.pt")["model"]
    b = load_checkpoint_state(resumed / "checkpoint_last.pt")["model"]
    assert a.keys() == b.keys() and int(a["rerandomizer.rounds"]) == 2
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The second round changed weights the first left alone: both rounds really ran.
    key = "encoder.layers.0.fc1.random.weight"
    assert not torch.equal(a[key], halfway[key])


def test_mask_statistics_count_coats_values_and_gains(sample_bin):
    from one_layer_lottery.models.one_layer_transformer.mask_stats import is_detail, model_mask_stats

    model, _, _ = build(sample_bin, *SMALL, "--mask-coats", 3, "--learned-gains")
    like_trained(model, seed=3)
    scalars, values = model_mask_stats(model)
    fc1 = model.encoder.layers[1].fc1
    layer = [m for n, m in model.named_modules() if n.startswith("encoder.layers.1.") and isinstance(m, MaskedWeight)]
    numel = sum(m.score_tensor.numel() for m in layer)
    assert scalars["mask_kept/encoder.1"] == sum(int((m.mask_values() > 0).sum()) for m in layer) / numel == 0.5
    assert scalars["mask_value/encoder.1"] == pytest.approx(sum(float(m.mask_values().sum()) for m in layer) / numel)
    assert scalars["mask_gain/encoder.1"] == pytest.approx(sum(float(m.gains.detach().sum()) for m in layer)
                                                           / sum(m.gains.numel() for m in layer))
    assert {"mask_value", "mask_gain"} <= scalars.keys() and is_detail("mask_value/encoder.1")
    # The weight with the top score drops to the edge of the outermost coat: its value changes (a flip),
    # the kept fraction does not.
    with torch.no_grad():
        scores = fc1.scores.view(-1)
        top = scores.abs().argmax()
        scores[top] = scores.abs().median() * scores[top].sign() * 1.0001
    after, _ = model_mask_stats(model, values)
    assert after["mask_kept/encoder.1"] == 0.5 and after["mask_flipped/encoder.1"] > 0
    plain, _, _ = build(sample_bin, *SMALL)
    assert not any(k.startswith(("mask_value", "mask_gain")) for k in model_mask_stats(plain)[0])


# -- --layers-no-mask: the control for the mask search ------------------------------------------
def test_layers_no_mask_uses_the_same_random_layers_whole(sample_bin):
    """The layers are the random weights of the masked model, unmasked and with no scores; only the
    embeddings' and output projection's scores train (and, when asked, LayerNorm affine parameters)."""
    masked, _, _ = build(sample_bin, *SMALL)
    control, _, _ = build(sample_bin, *SMALL, "--layers-no-mask")
    layers = {n: m for n, m in control.named_modules() if isinstance(m, MaskedWeight) and ".layers." in n}
    assert len(layers) == 3 * 6 + 2 * 10
    for name, m in layers.items():
        assert not m.is_masked and m.score_tensor is None and torch.equal(m.weight, m.random_weight), name
    assert control.encoder.embed_tokens.is_masked and control.decoder.embed_tokens.is_masked
    trained = {n for n, p in control.named_parameters() if p.requires_grad}
    # SMALL's output projection is not tied to the embeddings: it keeps its own scores, like them
    assert trained == {"encoder.embed_tokens.scores", "decoder.embed_tokens.scores", "decoder.output_projection.scores"}
    ours, theirs = control.state_dict(), masked.state_dict()
    assert set(ours) == {k for k in theirs if not (k.endswith("scores") and ".layers." in k)}
    for key in ours:
        if key != "_extra_state":
            assert torch.equal(ours[key], theirs[key]), key  # the same random body, the same embedding scores
    assert _record(ours)["--layers-no-mask"] is True and _record(theirs)["--layers-no-mask"] is False
    with pytest.raises(ValueError, match=re.escape("--layers-no-mask: the checkpoint's is False, this model's is True")):
        control.load_state_dict(masked.state_dict(), strict=False)
    with_norms, _, _ = build(sample_bin, *SMALL, "--layers-no-mask", "--embed-no-mask",
                             "--mask-layernorm-type", "normal_layernorm")
    trained = [n for n, p in with_norms.named_parameters() if p.requires_grad]
    assert trained and all("layer_norm" in n for n in trained)


@pytest.mark.parametrize("flags, message", [
    (("--learned-gains",), "--learned-gains acts on masked layer matrices, and --layers-no-mask leaves none"),
    (("--rerand-interval", 5), "--rerand-interval acts on masked layer matrices, and --layers-no-mask leaves none"),
    (("--embed-no-mask",), "nothing would train: --layers-no-mask with --embed-no-mask leaves no scores"),
])
def test_layers_no_mask_refuses_what_would_have_no_effect(sample_bin, flags, message):
    from one_layer_lottery.models.one_layer_transformer.options import OptionError

    with pytest.raises(OptionError, match=re.escape(message)):
        build(sample_bin, *SMALL, "--layers-no-mask", *flags)


def test_layers_no_mask_trains_the_embedding_scores_and_leaves_the_layers_random(sample_bin):
    trainer, logs = train_in_process(sample_bin, *SMALL, "--layers-no-mask", updates=2)
    model = trainer.model
    fresh, _, _ = build(sample_bin, *SMALL, "--layers-no-mask")
    now, start = model.state_dict(), fresh.state_dict()
    assert not torch.equal(now["encoder.embed_tokens.scores"], start["encoder.embed_tokens.scores"])
    for key in now:
        if not key.endswith("scores") and key != "_extra_state":
            assert torch.equal(now[key], start[key]), key
    assert all(math.isfinite(log["loss"]) for log in logs)
