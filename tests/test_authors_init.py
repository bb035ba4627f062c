"""--authors-init draws every tensor as the authors' code did, and where our flags mean something else.

The expected draws are the table "The authors' initialisation, tensor by tensor" of the paper facts
(std and distribution family per tensor kind, k = the authors' prune flag = fraction KEPT = 1 - our
--prune-ratio). The last tests compare our model with the authors' forward pass (fairseq's dense
Transformer whose weights are the random weights times the masks that the authors' selection picks
from the same scores) and print the measured differences that docs/differences-from-authors.md gives.
Re-run them with ``pytest -s tests/test_authors_init.py``.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import build
from one_layer_lottery.masking import MaskedWeight, RandomWeight, num_kept

RELU_GAIN = math.sqrt(2.0)
D, FFN = 256, 512  # wide enough for the statistics of one tensor to be sharp
WIDE = ("--encoder-embed-dim", D, "--decoder-embed-dim", D, "--encoder-ffn-embed-dim", FFN,
        "--decoder-ffn-embed-dim", FFN, "--encoder-layers", 1, "--decoder-layers", 1,
        "--encoder-attention-heads", 4, "--decoder-attention-heads", 4, "--seed", 5)


def family(w: torch.Tensor):
    """("constant", magnitude), or ("uniform" | "normal", std) by the kurtosis (1.8 uniform, 3 normal)."""
    w = w.detach().double().flatten()
    magnitudes = w.abs().unique()
    if magnitudes.numel() == 1:
        return "constant", float(magnitudes[0])
    std = float(w.std())
    kurtosis = float((w ** 4).mean() / (w ** 2).mean() ** 2)
    if abs(kurtosis - 1.8) < 0.15:
        return "uniform", std
    if abs(kurtosis - 3.0) < 0.25:
        return "normal", std
    return f"kurtosis {kurtosis:.2f}", std


def assert_draw(w, expected_family, expected_std, what):
    kind, std = family(w)
    assert kind == expected_family, f"{what}: {kind}, expected {expected_family}"
    tolerance = 1e-6 if kind == "constant" else 0.03
    assert abs(std - expected_std) / expected_std < tolerance, f"{what}: std {std:.5f}, expected {expected_std:.5f}"


def random_weights(model):
    """{name of the random tensor: tensor} (shared weights once)."""
    return {m.name: m.weight for m in model.modules() if isinstance(m, RandomWeight)}


def without_padding(embedding_weight):
    return embedding_weight[2:]  # row 1 is the zeroed padding row; row 0 (<s>) is random


def expected_ffn(init, scale_fan, removed, fan_in):
    """The authors' FFN / masked-embedding draw: (family, std)."""
    fan = fan_in * (removed if scale_fan and init != "kaiming_uniform" else 1.0)
    std = RELU_GAIN / math.sqrt(fan)
    return {"kaiming_uniform": "uniform", "kaiming_normal": "normal", "signed_constant": "constant"}[init], std


CASES = ([(init, True, p) for init in ("kaiming_uniform", "kaiming_normal", "signed_constant") for p in (0.3, 0.8)]
         + [(init, False, 0.5) for init in ("kaiming_uniform", "kaiming_normal", "signed_constant")])


@pytest.mark.parametrize("init,scale_fan,prune_ratio", CASES)
def test_authors_init_draws_every_tensor_as_the_authors_code(sample_bin, init, scale_fan, prune_ratio):
    flags = (*WIDE, "--authors-init", "--init", init, "--prune-ratio", prune_ratio) + (("--scale-fan",) if scale_fan
                                                                                          else ())
    model, _, _ = build(sample_bin, *flags)
    w = random_weights(model)
    fam, std = expected_ffn(init, scale_fan, prune_ratio, D)
    assert_draw(w["encoder.shared.fc1"], fam, std, "fc1")
    assert_draw(without_padding(w["encoder.embed_tokens"]), fam, std, "masked embedding")
    fam2, std2 = expected_ffn(init, scale_fan, prune_ratio, FFN)
    assert_draw(w["decoder.shared.fc2"], fam2, std2, "fc2")
    xavier = math.sqrt(2.0 / (D + D))  # std of xavier_uniform with gain 1
    for proj in ("q_proj", "k_proj", "v_proj"):
        for side, attn in (("encoder", "self_attn"), ("decoder", "self_attn"), ("decoder", "encoder_attn")):
            assert_draw(w[f"{side}.shared.{attn}.{proj}"], "uniform", xavier / math.sqrt(2.0), f"{side} {attn} {proj}")
    assert_draw(w["encoder.shared.self_attn.out_proj"], "uniform", xavier, "out_proj")
    # The untied output projection: N(0, d^-0.5), masked.
    assert_draw(w["decoder.output_projection"], "normal", D ** -0.5, "output projection")
    assert model.decoder.output_projection.is_masked
    # The scores: kaiming_uniform(a=sqrt 5), U(+-1/sqrt(fan_in)).
    assert_draw(model.encoder.layers[0].fc1.scores, "uniform", 1.0 / math.sqrt(3 * D), "scores")


def test_authors_init_embed_no_mask_and_cross_attention_of_another_width(sample_bin):
    model, _, _ = build(sample_bin, *WIDE, "--authors-init", "--embed-no-mask", "--encoder-embed-dim", 384)
    w = random_weights(model)
    for side, dim in (("encoder", 384), ("decoder", D)):
        assert_draw(without_padding(w[f"{side}.embed_tokens"]), "normal", dim ** -0.5, f"{side} embedding")
        assert not getattr(model, side).embed_tokens.is_masked
    assert_draw(w["decoder.output_projection"], "normal", D ** -0.5, "output projection")
    assert model.decoder.output_projection.is_masked  # stays masked under --embed-no-mask
    # Keys and values of another width than the queries: fairseq's xavier with gain 1 for q, k and v.
    for proj, fan_in in (("q_proj", D), ("k_proj", 384), ("v_proj", 384)):
        assert_draw(w[f"decoder.shared.encoder_attn.{proj}"], "uniform", math.sqrt(2.0 / (fan_in + D)), proj)
    assert_draw(w["decoder.shared.self_attn.q_proj"], "uniform", math.sqrt(2.0 / (2 * D)) / math.sqrt(2.0), "self q")


def _embedding_file(path, dictionary, rows, dim, seed=0):
    vectors = torch.randn(len(rows), dim, generator=torch.Generator().manual_seed(seed))
    with open(path, "w") as f:
        f.write(f"{len(rows)} {dim}\n")
        for i, row in enumerate(rows):
            f.write(dictionary[row] + " " + " ".join(repr(float(v)) for v in vectors[i]) + "\n")
    return vectors


@pytest.mark.parametrize("authors,scale_fan,embed_no_mask,expected_factor", [
    (True, True, False, 0.3 ** -0.5),  # the authors: 1/sqrt(removed fraction), only under --scale-fan
    (True, False, False, 1.0),
    (True, True, True, 1.0),  # and only when masked
    (False, False, False, 0.7 ** -0.5),  # ours: 1/sqrt(kept fraction) whenever masked
    (False, True, True, 1.0),
])
def test_pretrained_embedding_rescaling(sample_bin, tmp_path, authors, scale_fan, embed_no_mask, expected_factor):
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(str(sample_bin / "dict.de.txt"))
    rows = list(range(4, 14))
    vectors = _embedding_file(tmp_path / "emb.txt", dictionary, rows, 32)
    flags = ["--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 1, "--decoder-layers", 1,
             "--encoder-embed-path", tmp_path / "emb.txt", "--prune-ratio", 0.3]
    flags += (["--authors-init"] if authors else []) + (["--scale-fan"] if scale_fan else []) + \
             (["--embed-no-mask"] if embed_no_mask else [])
    model, _, _ = build(sample_bin, *flags)
    table = model.encoder.embed_tokens.random_weight
    assert torch.allclose(table[rows], vectors * expected_factor, rtol=1e-6, atol=1e-7)
    assert model.encoder.embed_tokens.is_masked == (not embed_no_mask)


def test_with_matching_flags_our_model_is_the_authors_model_without_the_switch(sample_bin):
    """The paper's recipe at k = 0.5 (no --scale-fan, tied output projection): --attention-init
    fairseq_xavier alone already draws every tensor as the authors did; --authors-init changes nothing."""
    base = (*WIDE, "--share-decoder-input-output-embed", "--prune-ratio", 0.5)
    ours, _, _ = build(sample_bin, *base, "--attention-init", "fairseq_xavier")
    authors, _, _ = build(sample_bin, *base, "--authors-init")
    a, b = random_weights(ours), random_weights(authors)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the authors' forward pass, for the measurements -------------------------------------------------

SMALL_AUTHORS = ("--encoder-embed-dim", 64, "--decoder-embed-dim", 64, "--encoder-ffn-embed-dim", 128,
                 "--decoder-ffn-embed-dim", 128, "--encoder-layers", 3, "--decoder-layers", 3,
                 "--encoder-attention-heads", 4, "--decoder-attention-heads", 4, "--share-decoder-input-output-embed",
                 "--dropout", 0, "--seed", 7)


def authors_mask(scores, kept, our_count=False):
    """The authors' GetSubnet on |scores|: sort, remove the floor((1 - kept) * n) smallest
    (``our_count``: remove as many as ours does, to compare everything but that count)."""
    flat = scores.detach().abs().flatten()
    removed = flat.numel() - num_kept(flat.numel(), 1 - kept) if our_count else int((1 - kept) * flat.numel())
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[flat.sort().indices[:removed]] = False
    return mask.view(scores.shape)


def authors_forward(sample_bin, model, src, lengths, prev, target, kept, our_count=False):
    """(logits, loss, {score tensor id: gradient}) of the authors' model holding ``model``'s random
    weights and scores: fairseq's dense Transformer of the same shape, every weight = random weight *
    the authors' mask, zero biases, LayerNorms at their identity init; the straight-through score
    gradient is d(loss)/d(masked weight) * weight * sign(score)."""
    dense, _, _ = build(sample_bin, *SMALL_AUTHORS, arch="transformer_iwslt_de_en")
    dense.eval()
    masked = {name: m for name, m in model.named_modules() if isinstance(m, MaskedWeight)}
    params = dict(dense.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if name.endswith(".bias"):
                p.zero_()
            elif "layer_norm" in name:
                p.fill_(1.0)
            elif name.endswith(".weight"):
                m = masked[name[:-len(".weight")]]
                p.copy_(m.random_weight * authors_mask(m.score_tensor, kept, our_count))
    logits, _ = dense(src, lengths, prev)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1))
    loss.backward()
    grads = {}
    for name, p in params.items():
        if name.endswith(".weight") and "layer_norm" not in name:
            m = masked[name[:-len(".weight")]]
            grads[id(m.score_tensor)] = p.grad * m.random_weight * m.score_tensor.detach().sign()
    return logits.detach(), loss.detach(), grads


def our_forward(model, src, lengths, prev, target):
    model.zero_grad()
    logits, _ = model(src, lengths, prev)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1))
    loss.backward()
    grads = {id(m.score_tensor): m.score_tensor.grad for m in model.modules()
             if isinstance(m, MaskedWeight) and m.is_masked}
    return logits.detach(), loss.detach(), grads


def _batch():
    g = torch.Generator().manual_seed(11)
    src = torch.randint(4, 60, (3, 9), generator=g)
    src[:, -1] = 2
    target = torch.randint(4, 60, (3, 8), generator=g)
    prev = torch.cat([torch.full((3, 1), 2), target[:, :-1]], dim=1)
    return src, torch.full((3,), 9), prev, target


def _compare(ours, theirs):
    (logits, loss, grads), (ref_logits, ref_loss, ref_grads) = ours, theirs
    assert grads.keys() == ref_grads.keys() and len(grads) == 3 * 6 + 3 * 10 + 2
    return (float((logits - ref_logits).abs().max()), abs(float(loss - ref_loss)),
            max(float((grads[k] - ref_grads[k]).abs().max()) for k in grads))


@pytest.mark.parametrize("prune_ratio", [0.5, 0.3, 0.8])
def test_our_model_computes_the_authors_outputs_and_score_gradients(sample_bin, prune_ratio):
    model, _, _ = build(sample_bin, *SMALL_AUTHORS, "--authors-init", "--prune-ratio", prune_ratio)
    model.train()
    batch = _batch()
    ours = our_forward(model, *batch)
    # The same count of kept weights as ours: everything else is the authors' computation.
    logit_diff, loss_diff, grad_diff = _compare(ours, authors_forward(sample_bin, model, *batch, 1 - prune_ratio,
                                                                      our_count=True))
    grad_scale = max(float(g.abs().max()) for g in ours[2].values())
    # Their count, floor((1 - k) n) removed: one weight more kept in the matrices where k n is fractional
    # with a fractional part below one half.
    count_effect = _compare(ours, authors_forward(sample_bin, model, *batch, 1 - prune_ratio))[0]
    counts_differ = sum(num_kept(m.score_tensor.numel(), prune_ratio) != int(authors_mask(m.score_tensor,
                                                                                         1 - prune_ratio).sum())
                        for m in model.modules() if isinstance(m, MaskedWeight) and m.is_masked)
    print(f"\n[--prune-ratio {prune_ratio} = their {1 - prune_ratio:g}] same weights, scores and count: max |logit "
          f"difference| {logit_diff:.1e}, max |score-gradient difference| {grad_diff:.1e} (gradients up to "
          f"{grad_scale:.1e}); their count differs in {counts_differ} of 50 matrices, max |logit difference| "
          f"{count_effect:.3f}")
    assert logit_diff < 1e-6 and loss_diff < 1e-6 and grad_diff < 1e-6
    assert (counts_differ == 0) == (count_effect == 0.0)


def test_measured_differences_of_same_named_flags(sample_bin):
    batch = _batch()
    lines = []

    # --scale-fan with kaiming_uniform: ours multiplies the fans by the kept fraction; the authors' did not.
    for ratio in (0.5, 0.3):
        common = (*SMALL_AUTHORS, "--prune-ratio", ratio, "--scale-fan")
        ours, _, _ = build(sample_bin, *common, "--attention-init", "fairseq_xavier")
        theirs, _, _ = build(sample_bin, *common, "--authors-init")
        masks_equal = all(torch.equal(a.mask(), b.mask()) for a, b in zip(
            [m for m in ours.modules() if isinstance(m, MaskedWeight) and m.is_masked],
            [m for m in theirs.modules() if isinstance(m, MaskedWeight) and m.is_masked]))
        with torch.no_grad():
            diff = float((ours.eval()(*batch[:3])[0] - theirs.eval()(*batch[:3])[0]).abs().max())
        ratio_w = float(random_weights(ours)["encoder.shared.fc1"].std() / random_weights(theirs)["encoder.shared.fc1"].std())
        lines.append(f"--scale-fan kaiming_uniform at --prune-ratio {ratio}: same masks {masks_equal}, FFN weights "
                     f"x{ratio_w:.3f}, max |logit difference| {diff:.2f}")
        assert masks_equal and abs(ratio_w - (1 - ratio) ** -0.5) < 0.01 and diff > 0.1

    # The untied output projection: ours --init (kaiming_uniform, fan_in = d), the authors' N(0, d^-0.5).
    untied = [a for a in SMALL_AUTHORS if a != "--share-decoder-input-output-embed"]
    ours, _, _ = build(sample_bin, *untied, "--attention-init", "fairseq_xavier")
    theirs, _, _ = build(sample_bin, *untied, "--authors-init")
    s_ours = float(random_weights(ours)["decoder.output_projection"].std())
    s_theirs = float(random_weights(theirs)["decoder.output_projection"].std())
    lines.append(f"untied output projection: std ours {s_ours:.4f} (kaiming_uniform), the authors' {s_theirs:.4f} "
                 f"(N(0, 64^-0.5) = {64 ** -0.5:.4f})")
    assert abs(s_ours - math.sqrt(2 / 64)) < 0.01 and abs(s_theirs - 0.125) < 0.01
    print("\n" + "\n".join(lines))


def test_the_documented_recipe_builds_the_authors_model(sample_bin):
    import re
    import shlex

    from conftest import ROOT

    doc = (ROOT / "docs" / "differences-from-authors.md").read_text()
    recipe = re.search(r"## The authors' recipe.*?```\n(.*?)```", doc, flags=re.S).group(1)
    flags = shlex.split(recipe.replace("\\\n", " "))
    model, _, _ = build(sample_bin, *WIDE, *flags)
    w = random_weights(model)
    assert_draw(w["encoder.shared.fc1"], "uniform", RELU_GAIN / math.sqrt(D), "fc1 (--scale-fan has no effect)")
    assert_draw(w["encoder.shared.self_attn.q_proj"], "uniform", math.sqrt(2.0 / (2 * D)) / math.sqrt(2.0), "q_proj")
    assert "decoder.output_projection" not in w  # tied to the decoder's embedding
    assert not any(p.requires_grad and "layer_norm" in n for n, p in model.named_parameters())
    assert model.mask_options.authors_init and model.mask_options.mask.prune_ratio == 0.5


def _record(state):
    codes = state["_extra_state"]
    return json.loads(bytes(int(c) for c in codes.round().tolist()).decode("ascii"))["mask_options"]


def _with_record(state, record):
    text = json.dumps({"mask_options": record}, sort_keys=True)
    return dict(state, _extra_state=torch.tensor(list(text.encode("ascii")), dtype=torch.float32))


def test_checkpoints_record_the_switch_and_older_records_read_as_off(sample_bin):
    small = ("--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 1, "--decoder-layers", 1)
    authors, _, _ = build(sample_bin, *small, "--authors-init")
    ours, _, _ = build(sample_bin, *small)
    saved = authors.state_dict()
    assert _record(saved)["--authors-init"] is True and _record(ours.state_dict())["--authors-init"] is False
    with pytest.raises(ValueError, match="--authors-init: the checkpoint's is True, this model's is False"):
        ours.load_state_dict(saved)
    # A record written before the option existed has no entry: it loads as --authors-init off, not on.
    older = {k: v for k, v in _record(ours.state_dict()).items() if k != "--authors-init"}
    ours.load_state_dict(_with_record(ours.state_dict(), older))
    with pytest.raises(ValueError, match="--authors-init: the checkpoint's is \\(not recorded\\), this model's is True"):
        authors.load_state_dict(_with_record(authors.state_dict(), older))
