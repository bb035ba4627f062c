"""The fairseq model: shapes, sharing, frozen weights, masking in every projection, bad input."""
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL, build
from one_layer_lottery.masking import MaskedLinear, RandomWeight
from one_layer_lottery.models.one_layer_transformer import ARCHITECTURES


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_exactly_its_shape(sample_bin, arch):
    embed, ffn, heads, layers, extra = ARCHITECTURES[arch]
    model, _, cfg = build(sample_bin, arch=arch)
    for stack in (model.encoder, model.decoder):
        assert len(stack.layers) == layers
        layer = stack.layers[0]
        assert layer.fc1.in_features == embed and layer.fc1.out_features == ffn
        assert layer.self_attn.num_heads == heads and layer.self_attn.embed_dim == embed
    assert model.encoder.embed_tokens.embedding_dim == embed
    assert cfg.model.dropout == extra.get("dropout", 0.3)


def _weight_sizes(d, f, enc_attn=1):
    return 4 * d * d * enc_attn + 2 * d * f


def test_parameter_counts_match_the_formula(sample_bin):
    model, task, _ = build(sample_bin, *SMALL)
    d, f, n_enc, n_dec = 32, 64, 3, 2
    v_src, v_tgt = len(task.source_dictionary), len(task.target_dictionary)
    w_enc, w_dec = _weight_sizes(d, f), _weight_sizes(d, f, enc_attn=2)
    frozen = w_enc + w_dec + (v_src + v_tgt + v_tgt) * d  # shared layer weights once, embeddings, output
    scores = n_enc * w_enc + n_dec * w_dec + (v_src + v_tgt + v_tgt) * d
    params = list(model.parameters())
    assert sum(p.numel() for p in params if not p.requires_grad) == frozen
    assert sum(p.numel() for p in params if p.requires_grad) == scores


def test_layer_weights_sharing_one_tensor_many_scores(sample_bin, tmp_path):
    model, _, _ = build(sample_bin, *SMALL)
    for stack in (model.encoder, model.decoder):
        fc1 = [layer.fc1 for layer in stack.layers]
        assert all(m.random_weight is fc1[0].random_weight for m in fc1)
        assert all(not torch.equal(m.scores, fc1[0].scores) for m in fc1[1:])
        q = [layer.self_attn.q_proj for layer in stack.layers]
        assert all(m.random_weight is q[0].random_weight for m in q)
    keys = model.state_dict().keys()
    assert [k for k in keys if k.endswith("fc1.weight")] == ["encoder.shared.weights.fc1.weight",
                                                             "decoder.shared.weights.fc1.weight"]
    assert not any(k.startswith("encoder.layers.") and k.endswith(".weight") for k in keys)
    # Saved and reloaded, the shared tensor is still one entry.
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    assert list(torch.load(buf).keys()) == list(keys)


@pytest.mark.parametrize("mode", ["layer_mask", "none"])
def test_other_share_modes(sample_bin, mode):
    model, _, _ = build(sample_bin, *SMALL, "--share-mask", mode)
    fc1 = [layer.fc1 for layer in model.encoder.layers]
    weights = {id(m.random_weight) for m in fc1}
    scores = {id(m.score_tensor) for m in fc1}
    assert len(weights) == 3
    assert len(scores) == (1 if mode == "layer_mask" else 3)
    assert not torch.equal(fc1[0].random_weight, fc1[1].random_weight)


def test_no_random_weight_is_trainable(sample_bin):
    model, _, _ = build(sample_bin, *SMALL, "--share-decoder-input-output-embed")
    randoms = [m.weight for m in model.modules() if isinstance(m, RandomWeight)]
    assert randoms and all(not w.requires_grad for w in randoms)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("scores") for n in trainable)
    # Tied output projection: the decoder's embedding weight and scores, nothing of its own.
    assert model.decoder.output_projection.weight.shape == model.decoder.embed_tokens.weight.shape
    assert not list(model.decoder.output_projection.parameters())


def test_weights_and_scores_reproducible_from_seed(sample_bin):
    a, _, _ = build(sample_bin, *SMALL, "--seed", 3)
    b, _, _ = build(sample_bin, *SMALL, "--seed", 3)
    c, _, _ = build(sample_bin, *SMALL, "--seed", 4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["encoder.shared.weights.fc1.weight"], sc["encoder.shared.weights.fc1.weight"])


def test_attention_init_applies_init_or_the_authors_xavier(sample_bin):
    model, _, _ = build(sample_bin, *SMALL, "--init", "signed_constant")
    q = model.encoder.layers[0].self_attn.q_proj.random_weight
    assert q.abs().unique().numel() == 1  # --init reached the attention projection
    model, _, _ = build(sample_bin, *SMALL, "--init", "signed_constant", "--attention-init", "fairseq_xavier")
    assert model.encoder.layers[0].self_attn.q_proj.random_weight.abs().unique().numel() > 100
    assert model.encoder.layers[0].fc1.random_weight.abs().unique().numel() == 1


def _reference_attention(masked, embed_dim, heads):
    """A stock fairseq attention whose projections hold our masked weights (zero biases)."""
    from fairseq.modules import MultiheadAttention

    ref = MultiheadAttention(embed_dim, heads, self_attention=True)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(ref, name).weight.copy_(getattr(masked, name).weight)
            getattr(ref, name).bias.zero_()
    return ref.eval()


def test_masking_reaches_every_projection_in_both_attention_paths(sample_bin):
    model, _, _ = build(sample_bin, *SMALL)
    attn = model.encoder.layers[1].self_attn
    attn.eval()
    ref = _reference_attention(attn, 32, 4)
    x = torch.randn(5, 2, 32)
    fast, _ = attn(x, x, x)  # F.multi_head_attention_forward path
    attn.skip_embed_dim_check = True  # forces fairseq's module path
    slow, _ = attn(x, x, x)
    attn.skip_embed_dim_check = False
    expected, _ = ref(x, x, x)
    assert torch.allclose(fast, expected, atol=1e-5) and torch.allclose(slow, expected, atol=1e-5)
    # And the masks matter: the unmasked random weights give another result.
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        proj = getattr(attn, name)
        assert (proj.weight == 0).float().mean() >= 0.45
        with torch.no_grad():
            getattr(ref, name).weight.copy_(proj.random_weight)
        unmasked, _ = ref(x, x, x)
        assert not torch.allclose(unmasked, expected, atol=1e-3)
        with torch.no_grad():
            getattr(ref, name).weight.copy_(proj.weight)


def test_masks_are_computed_once_while_decoding(sample_bin, monkeypatch):
    import one_layer_lottery.masking.modules as modules
    from fairseq.sequence_generator import SequenceGenerator

    model, task, _ = build(sample_bin, *SMALL)
    model.eval()
    calls = []
    real = modules.select_mask
    monkeypatch.setattr(modules, "select_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=3, max_len_b=8)
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2]])
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([4, 4])}}
    gen.generate([model], sample)
    n_masked = sum(1 for m in model.modules() if isinstance(m, modules.MaskedWeight) and m.is_masked)
    assert len(calls) == n_masked  # one selection per masked weight, not per decoding step
    gen.generate([model], sample)
    assert len(calls) == n_masked
    model.train()
    model.eval()
    gen.generate([model], sample)
    assert len(calls) == 2 * n_masked


@pytest.mark.parametrize("kind,affine,trainable", [("masked_layernorm", False, False),
                                                   ("normal_layernorm", True, True),
                                                   ("frozen_layernorm", True, False)])
def test_layernorm_types(sample_bin, kind, affine, trainable):
    model, _, _ = build(sample_bin, *SMALL, "--mask-layernorm-type", kind)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 * 2 + 2 * 3
    for norm in norms:
        assert norm.elementwise_affine == affine
        if affine:
            assert norm.weight.requires_grad == trainable


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_affine_layernorm_is_a_plain_layernorm_without_parameters(dtype):
    from one_layer_lottery.models.one_layer_transformer.layers import NonAffineLayerNorm

    norm = NonAffineLayerNorm(16, eps=1e-6).to(dtype)
    assert list(norm.parameters()) == [] and norm.state_dict() == {}
    x = torch.randn(3, 5, 16).to(dtype) * 7 + 2
    # The constant weight of ones changes the speed, not one bit of the output.
    assert torch.equal(norm(x), F.layer_norm(x, (16,), eps=1e-6))
    assert norm(x.float()).dtype == torch.float32  # an input of another dtype than the module's


def test_need_bias_adds_trained_biases(sample_bin):
    model, _, _ = build(sample_bin, *SMALL)
    assert model.encoder.layers[0].fc1.bias is None
    assert "bias" not in " ".join(model.state_dict())
    model, _, _ = build(sample_bin, *SMALL, "--need-bias")
    fc1 = model.encoder.layers[0].fc1
    assert fc1.bias.requires_grad and "encoder.layers.0.fc1.bias" in model.state_dict()


def test_embed_no_mask_and_pretrained_embeddings(sample_bin, tmp_path):
    from one_layer_lottery.models.one_layer_transformer.embedding_file import write_embeddings

    model, task, _ = build(sample_bin, *SMALL)
    d = task.source_dictionary
    tokens = [d[i] for i in range(4, 10)]
    vectors = torch.randn(6, 32)
    path = tmp_path / "emb.txt"
    write_embeddings(str(path), tokens, vectors)
    model, _, _ = build(sample_bin, *SMALL, "--encoder-embed-path", path, "--embed-no-mask")
    emb = model.encoder.embed_tokens
    assert not emb.is_masked and emb.scores is None
    assert torch.allclose(emb.weight[4:10], vectors)
    assert not emb.random_weight.requires_grad
    model, _, _ = build(sample_bin, *SMALL, "--encoder-embed-path", path)
    emb = model.encoder.embed_tokens
    assert emb.is_masked
    assert torch.allclose(emb.random_weight[4:10], vectors * 2 ** 0.5)  # 1/sqrt(kept fraction)


def test_bad_flags_give_errors_that_name_them(sample_bin, capsys):
    for ratio in ("0", "1", "1.5", "-0.2"):
        with pytest.raises(ValueError, match="--prune-ratio"):
            build(sample_bin, *SMALL, "--prune-ratio", ratio)
    for flag, value in (("--prune-method", "magnitude"), ("--init", "orthogonal"), ("--share-mask", "all")):
        with pytest.raises(SystemExit):
            build(sample_bin, *SMALL, flag, value)
        assert flag in capsys.readouterr().err
    with pytest.raises(ValueError, match="joined dictionary"):
        build(sample_bin, *SMALL, "--share-all-embeddings")


def test_share_all_embeddings_with_a_joined_dictionary(sample_bin_joined):
    model, _, _ = build(sample_bin_joined, *SMALL, "--share-all-embeddings")
    assert model.encoder.embed_tokens is model.decoder.embed_tokens
    assert model.decoder.output_projection.weight.data_ptr() != 0



def test_shared_embedding_is_masked_once_per_training_forward(sample_bin_joined, monkeypatch):
    import one_layer_lottery.masking.modules as modules
    from fairseq.models.transformer import TransformerModelBase

    model, _, _ = build(sample_bin_joined, *SMALL, "--share-all-embeddings", "--dropout", 0)
    model.train()
    emb = model.encoder.embed_tokens
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2]])
    prev = torch.tensor([[2, 11, 12], [2, 13, 14]])

    def scores_grad(forward):
        model.zero_grad(set_to_none=True)
        forward(model, src, torch.tensor([4, 4]), prev)[0].logsumexp(-1).sum().backward()
        return emb.scores.grad.clone()

    calls = []
    real = modules.select_mask
    monkeypatch.setattr(modules, "select_mask", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    pinned = scores_grad(type(model).forward)
    assert calls.count(emb.scores.shape) == 1  # encoder input, decoder input and output: one mask
    calls.clear()
    unpinned = scores_grad(TransformerModelBase.forward)  # fairseq's forward: one mask per use
    assert calls.count(emb.scores.shape) == 3
    assert torch.allclose(pinned, unpinned, rtol=1e-5, atol=1e-7)
    assert pinned.abs().sum() > 0
    assert emb._pinned is None  # nothing kept alive after the step

def test_embedding_file_errors_name_the_line(sample_bin, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("2 32\nder " + " ".join(["0.1"] * 32) + "\ndie " + " ".join(["0.1"] * 31) + "\n")
    with pytest.raises(ValueError, match=r"--encoder-embed-path .*line 3: expected a token and 32 numbers, got 31"):
        build(sample_bin, *SMALL, "--encoder-embed-path", bad)
    wrong_dim = tmp_path / "dim.txt"
    wrong_dim.write_text("1 16\nder " + " ".join(["0.1"] * 16) + "\n")
    with pytest.raises(ValueError, match="line 1: the file's vectors have dimension 16, the model's embedding has 32"):
        build(sample_bin, *SMALL, "--encoder-embed-path", wrong_dim)
    with pytest.raises(ValueError, match="cannot open"):
        build(sample_bin, *SMALL, "--decoder-embed-path", tmp_path / "missing.txt")
    nan = tmp_path / "nan.txt"
    nan.write_text("1 32\nder " + " ".join(["nan"] * 32) + "\n")
    with pytest.raises(ValueError, match="line 2: a value is NaN"):
        build(sample_bin, *SMALL, "--encoder-embed-path", nan)


def test_loading_a_checkpoint_of_another_architecture_is_refused(sample_bin):
    model, _, _ = build(sample_bin, *SMALL)
    other, _, _ = build(sample_bin, *SMALL, "--share-mask", "none")
    with pytest.raises(ValueError, match="does not match this one_layer_transformer"):
        model.load_state_dict(other.state_dict())
    wider, _, _ = build(sample_bin, *SMALL[:2], "--encoder-ffn-embed-dim", 128, *SMALL[4:])
    with pytest.raises(ValueError, match=r"fc1\.(weight|scores) has shape \(128, 32\), this model.s has \(64, 32\)"):
        model.load_state_dict(wider.state_dict())


def test_checkpoints_load_with_weights_only_and_code_is_refused(tmp_path):
    import argparse

    import numpy as np

    from one_layer_lottery.fairseq_patches import loading_fairseq_checkpoints

    path = tmp_path / "ck.pt"
    torch.save({"args": argparse.Namespace(lr=[0.1]), "best": np.float64(3.5), "model": {"w": torch.ones(2)}}, path)
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(path)  # torch's default, weights_only=True, without the allow-list
    with loading_fairseq_checkpoints():
        state = torch.load(path)
    assert state["args"].lr == [0.1] and float(state["best"]) == 3.5

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)  # torch.save's protocol: no warning about it
    with loading_fairseq_checkpoints(), pytest.raises(pickle.UnpicklingError):
        torch.load(evil)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_training_step_keeps_exactly_k(sample_bin, dtype):
    model, _, _ = build(sample_bin, *SMALL, "--share-decoder-input-output-embed")
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("scores")}
    model.to(dtype).train()
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 11, 12, 2]])
    prev = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10]])
    logits, _ = model(src, torch.tensor([5, 5]), prev)
    loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), prev.view(-1))
    loss.backward()
    assert torch.isfinite(loss)
    masked = [m for m in model.modules() if isinstance(m, MaskedLinear) and m.is_masked]
    for m in masked:
        assert m.scores.grad is not None and torch.isfinite(m.scores.grad.float()).all()
        assert int(m.mask().sum()) == m.scores.numel() // 2
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k].to(dtype))
