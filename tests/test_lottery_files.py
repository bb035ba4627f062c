"""The strong-lottery-ticket methods in subnetwork files: compact files (format version 2, and
version 1 files still loading), the dense export, and the same hypotheses from every form."""
import hashlib
import json
import struct

import pytest
import torch

from conftest import GENERATE, SMALL, TINY, USER_DIR, build, hypotheses, run_cli
from one_layer_lottery import export
from one_layer_lottery.masking import MaskedWeight
from one_layer_lottery.masking.coats import level_bits
from one_layer_lottery.masking.rerandomize import redraw_values, weight_generations
from one_layer_lottery.model_files import load_checkpoint_state
from one_layer_lottery.subnetwork import compact, file_format, file_reader
from one_layer_lottery.subnetwork.dense import dense_checkpoint
from test_compact import first_batch, forward, like_trained
from test_lottery_methods import FIXTURES, V1_MODEL, V1_SCORES_SEED

METHODS = {
    "coats": ("--mask-coats", 3),
    "coats_topk_shared_scores": ("--mask-coats", 4, "--prune-method", "topk", "--share-mask", "layer_mask"),
    "rerand": ("--rerand-interval", 2, "--rerand-fraction", 0.5),
    "rerand_independent_layers": ("--rerand-interval", 1, "--share-mask", "none", "--prune-ratio", 0.3),
    "gains": ("--learned-gains", "--need-bias"),
    "qk_scale": ("--qk-init-scale", 0.25, "--attention-init", "fairseq_xavier"),
    "all": ("--mask-coats", 2, "--rerand-interval", 3, "--learned-gains", "--qk-init-scale", 2.0),
    "layers_unmasked": ("--layers-no-mask", "--mask-layernorm-type", "normal_layernorm"),
}


def trained_with_redraws(flags, data, seed):
    """(model, task, cfg) as after training: moved scores and gains and, with --rerand-interval,
    three rounds, after which the scores move again (so that some redrawn weights are kept)."""
    model, task, cfg = build(data, *SMALL, *flags)
    like_trained(model, seed=seed)
    model.train()
    model.set_num_updates(3 * max(1, int(cfg.model.rerand_interval)))
    model.rerandomizer.catch_up()
    like_trained(model, seed=seed + 1)
    return model.eval(), task, cfg


def _masked(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedWeight) and m.is_masked}


def _levels(model):
    return {n: m.mask_config.levels(m.score_tensor.detach()) for n, m in _masked(model).items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_compact_file_of_every_method_rebuilds_the_model(method, sample_bin, tmp_path):
    model, task, cfg = trained_with_redraws(METHODS[method], sample_bin, seed=len(method))
    path = tmp_path / "sub.olls"
    compact.write(path, model, cfg, task)
    rebuilt, _, _ = compact.load(path)
    ours, theirs = _levels(model), _levels(rebuilt)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if not key.endswith("scores"):
            assert torch.equal(a[key], b[key]), key
    batch = first_batch(task)
    for x, y in zip(forward(model, batch), forward(rebuilt, batch)):
        assert torch.equal(x, y)

    header = file_reader.read(path).header
    coats = int(cfg.model.mask_coats)
    for entry in header["masks"]:
        assert entry["bits"] == level_bits(coats) and entry["nbytes"] == -(-torch.Size(entry["shape"]).numel()
                                                                          * entry["bits"] // 8)
    stored = {n for t in header["tensors"] for n in t["names"]}
    assert any(n.endswith(".gains") for n in stored) == ("--learned-gains" in METHODS[method])
    rounds = int(a.get("rerandomizer.rounds", 0))
    assert rounds == (3 if "--rerand-interval" in METHODS[method] else 0)
    assert len(header["generations"]) == (len(model.rerandomizer.groups) if rounds else 0)
    if rounds:
        _check_a_kept_redrawn_weight(model, rebuilt)


def _check_a_kept_redrawn_weight(model, rebuilt):
    """Some weight that a round redrew and a mask keeps now comes back from the file, bit for bit."""
    found = 0
    for (random, layers), (again, _) in zip(model.rerandomizer.groups, rebuilt.rerandomizer.groups):
        kept = torch.stack([m.mask() for m in layers]).any(0)
        redrawn_kept = (weight_generations(random, int(model.rerandomizer.rounds)) > 0) & kept
        if redrawn_kept.any():
            assert torch.equal(again.weight[redrawn_kept], random.weight[redrawn_kept])
            assert not torch.equal(again.weight[redrawn_kept], redraw_values(random, 0)[redrawn_kept])
            found += int(redrawn_kept.sum())
    assert found > 0


def test_version_1_files_still_load(sample_bin, tmp_path):
    """A file written before the methods existed rebuilds the model today's code builds, and its
    masks move unchanged into a version 2 file."""
    old = FIXTURES / "compact-v1.olls"
    parsed = file_reader.read(old)
    assert parsed.version == 1 and "generations" not in parsed.header
    rebuilt, _, task = compact.load(old, data=sample_bin)
    model, _, cfg = build(sample_bin, *V1_MODEL)
    like_trained(model, seed=V1_SCORES_SEED)
    assert all(torch.equal(a, b) for a, b in zip(_levels(model).values(), _levels(rebuilt).values()))
    a, b = model.state_dict(), rebuilt.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith("scores"))
    golden = torch.load(FIXTURES / "compact-v1-outputs.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(**golden["net_input"])[0], golden["eval_logits"])

    new = tmp_path / "v2.olls"
    compact.write(new, rebuilt, cfg, task)
    again = file_reader.read(new)
    assert again.version == file_format.VERSION == 2 and again.header["generations"] == []
    masks_v1 = {tuple(e["names"]): bytes(parsed._section(e)) for e in parsed.header["masks"]}
    masks_v2 = {tuple(e["names"]): bytes(again._section(e)) for e in again.header["masks"]}
    assert masks_v1 == masks_v2 and all(e["bits"] == 1 for e in again.header["masks"])


def _resealed(raw, edit, version):
    """The file's bytes with its header edited, under format ``version``, checksum renewed;
    ``edit(header, payload)`` may return a new payload."""
    header_length = struct.unpack_from("<Q", raw, 12)[0]
    header, payload = json.loads(raw[20:20 + header_length]), raw[20 + header_length:-32]
    payload = edit(header, payload) or payload
    text = json.dumps(header).encode()
    body = file_format.MAGIC + struct.pack("<IQ", version, len(text)) + text + payload
    return body + hashlib.sha256(body).digest()


def test_headers_that_do_not_fit_their_version_are_refused(tmp_path):
    raw = (FIXTURES / "compact-v1.olls").read_bytes()
    bad = tmp_path / "bad.olls"
    cases = [
        (1, lambda h, p: h["masks"][0].update(bits=1), "has a bit width, which format version 1 does not have"),
        (2, lambda h, p: h.update(generations=[]), r"mask .* bits must be an integer"),  # a version 1 header
        (2, lambda h, p: None, "the header has no 'generations' field"),
        (3, lambda h, p: None, "format version 3 is not supported"),
    ]
    for version, edit, message in cases:
        bad.write_bytes(_resealed(raw, edit, version))
        with pytest.raises(file_format.CompactFileError, match=message):
            file_reader.read(bad)


def _without_a_generation_field(header, payload):
    gone = header["generations"].pop()
    start, length = gone["offset"], gone["nbytes"]
    for kind in ("dictionaries", "masks", "tensors", "generations"):
        for entry in header[kind]:
            if entry["offset"] > start:
                entry["offset"] -= length
    return payload[:start] + payload[start + length:]


def test_wrong_levels_and_generations_are_refused(sample_bin, tmp_path):
    model, task, cfg = trained_with_redraws(METHODS["all"], sample_bin, seed=1)
    good = tmp_path / "good.olls"
    compact.write(good, model, cfg, task)
    raw, bad = good.read_bytes(), tmp_path / "bad.olls"
    cases = [
        (lambda h, p: h["masks"][0].update(bits=3), r"bytes for \d+ bits"),
        (lambda h, p: h["generations"][0].update(rounds=4), r"generation field .* bits = 2 is outside \[3, 3\]"),
        (lambda h, p: h["generations"][0].update(names=["encoder.embed_tokens.random.weight"]),
         r"generation field \['encoder.embed_tokens.random.weight'\] is not a redrawable random weight"),
        (_without_a_generation_field, r"1 random weights of a model after 3 IteRand rounds have no generation field"),
        (lambda h, p: h["cfg"]["model"].update(mask_coats=4), r"has 2 bits per weight, --mask-coats 4 needs 3"),
    ]
    for edit, message in cases:
        bad.write_bytes(_resealed(raw, edit, 2))
        with pytest.raises(file_format.CompactFileError, match=message):
            compact.load(bad)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_dense_export_of_every_method_computes_the_masked_model(method, sample_bin):
    model, task, cfg = trained_with_redraws(METHODS[method], sample_bin, seed=len(method))
    ckpt, info = dense_checkpoint(model, cfg, task)
    batch = first_batch(task)
    with torch.no_grad():
        ours = model(**batch["net_input"])[0]
        theirs = info["model"](**batch["net_input"])[0]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5) and torch.equal(ours.argmax(-1), theirs.argmax(-1))
    state = ckpt["model"]
    for name, m in _masked(model).items():
        if ".layers." in name:  # the random weight (redrawn or not) x the coats' share x the gain
            gains = m.gains.detach().unsqueeze(1) if m.gains is not None else 1.0
            expected = m.random_weight * m.mask_values() * gains
            assert torch.equal(state[f"{name}.weight"], expected), name


def test_the_control_without_any_mask_is_a_compact_file_and_a_dense_model(sample_bin, tmp_path):
    """--layers-no-mask with fixed, unmasked pre-trained embeddings: no mask anywhere, only LayerNorms
    train; its compact file and its dense export compute the model."""
    from test_compact import _embedding_file

    _, task0, _ = build(sample_bin, *SMALL)
    enc = _embedding_file(tmp_path / "enc.vec", task0.source_dictionary, 32, 1)
    dec = _embedding_file(tmp_path / "dec.vec", task0.target_dictionary, 32, 2)
    model, task, cfg = build(sample_bin, *SMALL, "--layers-no-mask", "--embed-no-mask", "--encoder-embed-path", enc,
                             "--decoder-embed-path", dec, "--mask-layernorm-type", "normal_layernorm")
    assert not _masked(model)
    like_trained(model, seed=5)
    path = tmp_path / "sub.olls"
    compact.write(path, model, cfg, task)
    assert file_reader.read(path).header["masks"] == []
    rebuilt, _, _ = compact.load(path)
    batch = first_batch(task)
    for x, y in zip(forward(model, batch), forward(rebuilt, batch)):
        assert torch.equal(x, y)
    _, info = dense_checkpoint(model, cfg, task)
    with torch.no_grad():
        ours, theirs = model(**batch["net_input"])[0], info["model"](**batch["net_input"])[0]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5) and torch.equal(ours.argmax(-1), theirs.argmax(-1))


ALL_METHODS = (*TINY, "--mask-coats", 3, "--rerand-interval", 10, "--rerand-fraction", 0.5, "--learned-gains",
               "--qk-init-scale", 0.5)


@pytest.mark.slow
def test_checkpoint_compact_file_and_dense_export_decode_the_same(sample_bin, tmp_path):
    """fairseq-train with every method; fairseq-generate on its checkpoint, on the checkpoint expanded
    from its compact file, and stock fairseq-generate on its dense export print the same hypotheses."""
    save = tmp_path / "ckpt"
    proc = run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en",
                   *ALL_METHODS, "--optimizer", "adam", "--lr", 5e-3, "--max-tokens", 2000, "--max-update", 30,
                   "--save-dir", save, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", 10,
                   "--mask-log-interval", 10, "--num-workers", 0)
    line = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "train_inner" in ln][-1]
    for statistic in ("mask_kept=0.5,", "mask_value=0.3333,", "mask_gain="):  # value: (1/3 + 2/3 + 1) / 6
        assert statistic in line, line
    checkpoint = save / "checkpoint_last.pt"
    state = load_checkpoint_state(checkpoint)["model"]
    assert int(state["rerandomizer.rounds"]) == 2  # before updates 11 and 21

    compact_file, expanded, dense = tmp_path / "sub.olls", tmp_path / "expanded.pt", tmp_path / "dense.pt"
    assert export.main(["compact", str(checkpoint), str(compact_file)]) == 0
    assert export.main(["expand", str(compact_file), str(expanded), "--data", str(sample_bin)]) == 0
    assert export.main(["dense", str(compact_file), str(dense), "--data", str(sample_bin)]) == 0
    want = hypotheses(run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", checkpoint,
                              *GENERATE).stdout)
    assert len(want) == 300
    got = hypotheses(run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", expanded,
                             *GENERATE).stdout)
    stock = hypotheses(run_cli("fairseq-generate", sample_bin, "--path", dense, *GENERATE).stdout)
    assert got == want and stock == want
    generations = file_reader.read(compact_file).header["generations"]
    # One field per shared layer weight: encoder 4 attention projections + 2 FFN, decoder 8 + 2.
    assert {e["rounds"] for e in generations} == {2} and len(generations) == 6 + 10
