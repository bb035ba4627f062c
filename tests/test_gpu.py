"""On a CUDA GPU: the selection, masked attention, the eval mask cache and checkpoints, on the device.

Marked ``gpu``: skipped where CUDA is not available (CI); ``scripts/gpu_check.sh`` runs them.
"""
import pytest
import torch

from conftest import GENERATE, SMALL, USER_DIR, build, hypotheses, run_cli
from one_layer_lottery.masking import MaskedWeight, num_kept, select_mask

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _masked(model):
    return [m for m in model.modules() if isinstance(m, MaskedWeight) and m.is_masked]


def _score_cases():
    g = torch.Generator().manual_seed(0)
    return {
        "distinct": torch.randn(96, 80, generator=g),
        "large": torch.randn(512, 1024, generator=g),
        "few values": torch.randint(-4, 4, (300, 200), generator=g).float() * 0.125,
        "all tied": torch.zeros(40, 30),
        "virtual layers": torch.randn(6, 64, 48, generator=g),  # one selection per leading entry
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["super_mask", "topk"])
def test_cuda_selection_equals_the_cpu_selection(dtype, method):
    for name, scores in _score_cases().items():
        scores = scores.to(dtype)
        for ratio in (0.01, 0.3, 0.5, 0.9):
            on_cpu = select_mask(scores, method, ratio)
            on_cuda = select_mask(scores.cuda(), method, ratio)
            assert on_cuda.device.type == "cuda"
            assert torch.equal(on_cuda.cpu(), on_cpu), (name, ratio)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_keeps_exactly_k(dtype):
    g = torch.Generator().manual_seed(1)
    heavy_ties = (torch.randint(-8, 8, (1 << 20,), generator=g) * 0.125).to(dtype).cuda()
    underflow = (torch.randn(512, 300, generator=g) * 1e-8).to(dtype).cuda()
    for scores in (heavy_ties, underflow):
        for ratio in (0.01, 0.5, 0.99):
            assert int(select_mask(scores, "super_mask", ratio).sum()) == num_kept(scores.numel(), ratio)
    batched = torch.randint(0, 3, (6, 512, 512), generator=g).to(dtype).cuda()
    per_layer = select_mask(batched, "super_mask", 0.5).flatten(1).sum(1)
    assert per_layer.tolist() == [num_kept(512 * 512, 0.5)] * 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_masked_attention_on_cuda_in_both_attention_paths(sample_bin, dtype):
    from fairseq.modules import MultiheadAttention

    model, _, _ = build(sample_bin, *SMALL)
    model = model.cuda().to(dtype).eval()
    attn = model.encoder.layers[1].self_attn
    ref = MultiheadAttention(32, 4, self_attention=True).cuda().to(dtype).eval()
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(ref, name).weight.copy_(getattr(attn, name).weight)
            getattr(ref, name).bias.zero_()
    x = torch.randn(5, 2, 32, device="cuda", dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    with torch.no_grad():
        expected, _ = ref(x, x, x)
        fast, _ = attn(x, x, x)  # F.multi_head_attention_forward reads proj.weight
        attn.skip_embed_dim_check = True  # fairseq's module path calls the projections
        slow, _ = attn(x, x, x)
        attn.skip_embed_dim_check = False
    assert torch.allclose(fast, expected, atol=tol) and torch.allclose(slow, expected, atol=tol)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        proj = getattr(attn, name)
        assert proj.weight.is_cuda and int((proj.weight == 0).sum()) >= proj.weight.numel() // 2


def test_eval_mask_cache_on_cuda(sample_bin, monkeypatch):
    import one_layer_lottery.masking.modules as modules
    from fairseq.sequence_generator import SequenceGenerator

    model, task, _ = build(sample_bin, *SMALL, "--share-decoder-input-output-embed")
    model.eval()
    model.encoder.layers[0].fc1.weight  # a mask cached on the CPU ...
    model.cuda()  # ... is dropped by the move
    calls = []
    real = modules.select_mask
    monkeypatch.setattr(modules, "select_mask", lambda *a, **k: calls.append(a[0].device.type) or real(*a, **k))
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=3, max_len_b=8)
    sample = {"net_input": {"src_tokens": torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2]], device="cuda"),
                            "src_lengths": torch.tensor([4, 4], device="cuda")}}
    n_masked = len(_masked(model))
    with torch.no_grad():
        first = gen.generate([model], sample)
        second = gen.generate([model], sample)
    assert calls == ["cuda"] * n_masked  # one selection per masked weight, on the device, for both runs
    assert [h[0]["tokens"].tolist() for h in first] == [h[0]["tokens"].tolist() for h in second]
    for m in _masked(model):
        assert torch.equal(m.weight, m.random_weight * m.mask())


def test_a_checkpoint_saved_on_cuda_loads_on_cpu(sample_bin, tmp_path):
    from fairseq import checkpoint_utils

    run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en",
            *SMALL, "--share-decoder-input-output-embed", "--fp16", "--optimizer", "adam", "--lr", "5e-3",
            "--max-tokens", 1000, "--max-update", 5, "--disable-validation", "--no-epoch-checkpoints",
            "--num-workers", 0, "--save-dir", tmp_path)
    ckpt = tmp_path / "checkpoint_last.pt"
    out = run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", ckpt, "--cpu", *GENERATE).stdout
    assert len(hypotheses(out)) > 0
    (cpu_model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides={"data": str(sample_bin)})
    (gpu_model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides={"data": str(sample_bin)})
    cpu_model.eval()
    gpu_model.cuda().eval()
    assert all(p.device.type == "cpu" for p in cpu_model.parameters())
    for a, b in zip(_masked(cpu_model), _masked(gpu_model)):
        assert torch.equal(a.mask(), b.mask().cpu())
    src, prev = torch.tensor([[5, 6, 7, 8, 2]]), torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        on_cpu, _ = cpu_model(src, torch.tensor([5]), prev)
        on_gpu, _ = gpu_model(src.cuda(), torch.tensor([5]).cuda(), prev.cuda())
    assert torch.allclose(on_cpu, on_gpu.cpu(), atol=1e-3, rtol=1e-3)
