"""Exact top-k selection and the straight-through estimator (pure PyTorch)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from one_layer_lottery.masking import (
    MaskConfig, MaskedLinear, RandomWeight, SharedScores, WeightInit, naive_edge_popup_mask, num_kept, select_mask,
    straight_through_mask, topk_mask,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prune_ratio", [0.01, 0.3, 0.5, 0.9, 0.99])
def test_super_mask_keeps_exactly_k_and_matches_the_sorting_reference(dtype, prune_ratio):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(96, 80, generator=g).to(dtype)
    mask = select_mask(scores, "super_mask", prune_ratio)
    assert mask.dtype == torch.bool
    assert int(mask.sum()) == num_kept(scores.numel(), prune_ratio)
    assert torch.equal(mask, naive_edge_popup_mask(scores, prune_ratio).bool())


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_still_keep_exactly_k_lowest_index_first(dtype):
    scores = torch.zeros(10, 10, dtype=dtype)  # every score tied
    mask = select_mask(scores, "super_mask", 0.3)
    assert int(mask.sum()) == 70
    assert mask.flatten()[:70].all() and not mask.flatten()[70:].any()
    few_values = torch.randint(0, 3, (50, 40), generator=torch.Generator().manual_seed(1)).to(dtype)
    for ratio in (0.2, 0.5, 0.77):
        m = select_mask(few_values, "super_mask", ratio)
        assert int(m.sum()) == num_kept(2000, ratio)
        assert torch.equal(m, naive_edge_popup_mask(few_values, ratio).bool())


@pytest.mark.parametrize("on_host", [True, False], ids=["host path", "device path"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_floating_mask_is_the_boolean_mask_as_ones_and_zeros(dtype, on_host):
    """What multiplies the weights (1/0 in their dtype) keeps the same weights as the boolean mask,
    ties included, on both selection paths and for every rule."""
    g = torch.Generator().manual_seed(3)
    tied = torch.randint(0, 3, (4, 70_000), generator=g).float()  # narrowing path, ties at the threshold
    for values in (torch.randn(5, 300, generator=g), tied, torch.zeros(2, 50)):
        for k in (1, values.shape[1] // 3, values.shape[1]):
            plain = topk_mask(values, k, on_host=on_host)
            ones = topk_mask(values, k, on_host=on_host, dtype=dtype)
            assert ones.dtype == dtype and torch.equal(ones, plain.to(dtype)), (values.shape, k)
    scores = torch.randn(3, 40, 30, generator=g)
    for method in ("super_mask", "topk", "threshold", "sigmoid_threshold"):
        plain = select_mask(scores, method, 0.4, 0.55 if method == "sigmoid_threshold" else 0.1)
        ones = select_mask(scores, method, 0.4, 0.55 if method == "sigmoid_threshold" else 0.1, dtype)
        assert ones.dtype == dtype and torch.equal(ones, plain.to(dtype)) and 0 < int(plain.sum()) < plain.numel()


@pytest.mark.parametrize("on_host", [True, False], ids=["host path", "device path"])
def test_a_mask_written_over_its_values_is_the_same_mask(on_host):
    """``out=values``: the selection reads every value it needs (ties included) before the mask overwrites them."""
    g = torch.Generator().manual_seed(4)
    tied = torch.randint(0, 3, (3, 70_000), generator=g).float()
    for values in (torch.randn(5, 300, generator=g), tied, torch.zeros(2, 50), torch.randn(77, generator=g)):
        for k in (1, values.shape[-1] // 3, values.shape[-1]):
            scratch = values.clone()
            mask = topk_mask(scratch, k, on_host=on_host, dtype=torch.float32, out=scratch)
            assert mask.data_ptr() == scratch.data_ptr()
            assert torch.equal(scratch, topk_mask(values, k, on_host=on_host).float()), (values.shape, k)
    with pytest.raises(ValueError, match="out is torch.float16"):
        topk_mask(torch.randn(10), 3, dtype=torch.float32, out=torch.empty(10, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float16])
@pytest.mark.parametrize("method", ["super_mask", "topk", "threshold", "sigmoid_threshold"])
def test_a_mask_is_a_new_tensor_and_leaves_the_scores_alone(method, dtype):
    """Callers write over the mask (the masked weight is the mask times the weight): it is never a view,
    and selecting one never changes the scores, transposed ones included."""
    g = torch.Generator().manual_seed(5)
    for scores in (torch.randn(40, 30, generator=g), torch.randn(30, 40, generator=g).t(),
                   torch.randn(3, 20, 10, generator=g), torch.randn(12, 8, generator=g).half()):
        before = scores.clone()
        mask = select_mask(scores, method, 0.4, 0.55 if method == "sigmoid_threshold" else 0.1, dtype)
        assert mask._base is None and mask.shape == scores.shape and mask.dtype == dtype
        assert torch.equal(scores, before)
        expected = {"super_mask": naive_edge_popup_mask(scores.float(), 0.4).bool(), "topk": None,
                    "threshold": scores > 0.1, "sigmoid_threshold": torch.sigmoid(scores) > 0.55}[method]
        if expected is not None and scores.dim() == 2:
            assert torch.equal(mask, expected.to(dtype))


def test_batched_selection_equals_per_layer_selection():
    scores = torch.randn(6, 30, 20)
    batched = select_mask(scores, "super_mask", 0.5)
    for i in range(6):
        assert torch.equal(batched[i], select_mask(scores[i], "super_mask", 0.5))
        assert int(batched[i].sum()) == 300


def test_topk_uses_signed_scores_and_thresholds_compare():
    scores = torch.tensor([[-5.0, -1.0], [0.5, 2.0]])
    assert select_mask(scores, "topk", 0.5).tolist() == [[False, False], [True, True]]
    assert select_mask(scores, "super_mask", 0.5).tolist() == [[True, False], [False, True]]
    assert select_mask(scores, "threshold", 0.5, threshold=0.0).tolist() == [[False, False], [True, True]]
    assert select_mask(scores, "sigmoid_threshold", 0.5, threshold=0.6).tolist() == [[False, False],
                                                                                     [True, True]]


def test_topk_mask_rejects_bad_k():
    with pytest.raises(ValueError, match="outside"):
        topk_mask(torch.randn(10), 0)
    assert topk_mask(torch.randn(10), 10).all()


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.5"])
def test_prune_ratio_outside_open_interval_is_refused(bad):
    with pytest.raises(ValueError, match="prune-ratio"):
        MaskConfig(prune_ratio=bad)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="prune-method"):
        MaskConfig(method="magnitude")


@pytest.mark.parametrize("method", ["super_mask", "topk", "threshold", "sigmoid_threshold"])
def test_straight_through_gradient_is_the_upstream_gradient(method):
    """The selection step passes d(loss)/d(mask) unchanged; only the rule's own smooth part
    (|s| for super_mask, sigmoid for sigmoid_threshold) adds its derivative."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(7, 5, generator=g)
    scores = torch.randn(7, 5, generator=g, requires_grad=True)
    x = torch.randn(4, 5, generator=g)
    config = MaskConfig(method, 0.5, threshold=0.5 if method == "sigmoid_threshold" else 0.0)
    mask = config.kept(scores)
    assert 0 < int(mask.sum()) < mask.numel()
    (x @ straight_through_mask(weight, scores, config).t()).pow(2).sum().backward()

    float_mask = mask.float().requires_grad_()
    (x @ (weight * float_mask).t()).pow(2).sum().backward()
    upstream = float_mask.grad
    s = scores.detach()
    expected = {"super_mask": upstream * s.sign(), "topk": upstream, "threshold": upstream,
                "sigmoid_threshold": upstream * torch.sigmoid(s) * (1 - torch.sigmoid(s))}[method]
    assert torch.allclose(scores.grad, expected, rtol=1e-6, atol=1e-6)
    assert scores.grad.abs().sum() > 0


class _NewTensorBytes(TorchDispatchMode):
    """Bytes of the new tensors of at least ``numel`` entries that the operators run inside it make
    (outputs written into an input, as by ``out=`` or in-place operators, are not new)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.bytes = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = tree_leaves((args, kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.numel and t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.untyped_storage().nbytes()
        return out


@pytest.mark.parametrize("method", ["super_mask", "topk", "threshold"])
def test_a_masked_training_step_makes_few_weight_sized_tensors_beyond_a_dense_one(method):
    """What the masks add to a training step is the selection: the mask, written over |scores| and then
    multiplied by the weight in place, and one tensor for the scores' gradient. Every weight-sized
    tensor more is memory the allocator fetches again on every step (page faults on CPU)."""
    shape = (512, 256)
    weight_bytes = 512 * 256 * 4
    layer = MaskedLinear(RandomWeight(shape, WeightInit(), seed=1, name="fc"), MaskConfig(method, 0.5),
                         torch.nn.Parameter(torch.randn(shape)))
    dense = torch.nn.Linear(256, 512, bias=False)
    made = {}
    for name, module in (("masked", layer), ("dense", dense)):
        with _NewTensorBytes(512 * 256) as counter:
            module(torch.randn(8, 256)).sum().backward()
        made[name] = counter.bytes
    assert made["dense"] == weight_bytes  # its weight's gradient
    # the mask and the scores' gradient (4 bytes an entry each), two boolean bands of the selection
    assert made["masked"] - made["dense"] <= 2.5 * weight_bytes, made
    assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0


def test_masked_linear_forward_and_gradients_match_the_naive_reference():
    rw = RandomWeight((16, 12), WeightInit(), seed=5, name="fc")
    scores = torch.nn.Parameter(torch.randn(16, 12))
    layer = MaskedLinear(rw, MaskConfig(prune_ratio=0.4), scores)
    x = torch.randn(3, 12)
    layer(x).sum().backward()

    ref_scores = scores.detach().clone().requires_grad_()

    class Naive(torch.autograd.Function):  # the authors' GetSubnet: float mask, STE backward
        @staticmethod
        def forward(ctx, s):
            return naive_edge_popup_mask(s, 0.4)

        @staticmethod
        def backward(ctx, g):
            return g

    y = x @ (rw.weight * Naive.apply(ref_scores.abs())).t()
    y.sum().backward()
    assert torch.allclose(layer(x), y)
    assert torch.allclose(scores.grad, ref_scores.grad)
    assert rw.weight.grad is None and not rw.weight.requires_grad


def _aten_ops(fn):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    ops = []
    with Record():
        out = fn()
    return out, ops


# time x batch x channels as fairseq lays them out: a plain input, a transposed one (the decoder's
# output), a decoding step of length 1 transposed from batch-first, a time-first step, a 2-D input.
LAYOUTS = {
    "contiguous": lambda: torch.randn(5, 3, 12),
    "transposed": lambda: torch.randn(3, 5, 12).transpose(0, 1),
    "one step, transposed": lambda: torch.randn(3, 1, 12).transpose(0, 1),
    "one step": lambda: torch.randn(1, 3, 12),
    "matrix": lambda: torch.randn(4, 12),
}


@pytest.mark.parametrize("bias", ["none", "trained"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_masked_linear_is_one_matrix_multiply_in_every_layout(layout, training, bias):
    """However its input lies in memory, a masked linear layer runs one 2-D matrix multiply (never a
    batched one over a broadcast weight), bit for bit the product of the input's rows."""
    torch.manual_seed(0)
    rw = RandomWeight((16, 12), WeightInit(), seed=5, name="fc")
    layer = MaskedLinear(rw, MaskConfig(), torch.nn.Parameter(torch.randn(16, 12)), bias=bias).train(training)
    if bias == "trained":
        with torch.no_grad():
            layer.bias.normal_()
    x = LAYOUTS[layout]()
    weight = layer.weight.detach()
    with torch.no_grad():
        out, ops = _aten_ops(lambda: layer(x))
    rows = x.reshape(-1, 12).contiguous()
    expected = (torch.addmm(layer.bias.detach(), rows, weight.t()) if bias == "trained" else rows @ weight.t())
    assert torch.equal(out, expected.view(*x.shape[:-1], 16))
    assert "bmm" not in ops and ops.count("mm") + ops.count("addmm") == 1, ops


def test_eval_mode_computes_the_mask_once_and_recomputes_after_changes(monkeypatch):
    import one_layer_lottery.masking.modules as modules

    calls = []
    real = modules.select_mask
    monkeypatch.setattr(modules, "select_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    rw = RandomWeight((8, 8), WeightInit(), seed=1, name="w")
    layer = MaskedLinear(rw, MaskConfig(), torch.nn.Parameter(torch.randn(8, 8)))
    layer.eval()
    first = layer.weight
    assert layer.weight is first and layer.weight is first
    assert len(calls) == 1
    layer.train()
    layer.weight
    layer.weight
    assert len(calls) == 3  # every access while training
    layer.eval()
    layer.weight
    layer.load_state_dict({"scores": -layer.scores.detach(), "random.weight": rw.weight.detach().clone()})
    after_load = layer.weight
    assert len(calls) == 5
    assert torch.equal(after_load != 0, select_mask(-layer.scores.detach(), "super_mask", 0.5) & (rw.weight != 0))
    with torch.no_grad():
        layer.scores.mul_(-1)  # in-place edit in eval mode is noticed too
    layer.weight
    assert len(calls) == 6


def test_eval_cache_follows_the_shared_weight_and_replaced_tensors():
    rw = RandomWeight((8, 8), WeightInit(), seed=1, name="w")
    shared = SharedScores(torch.randn(8, 8))
    layer = MaskedLinear(rw, MaskConfig(), shared, own_random=False)  # neither tensor is its own
    layer.eval()
    first = layer.weight
    assert layer.weight is first
    rw.double()  # the owner alone: new storage and dtype, same Parameter object, same version
    assert layer.weight.dtype == torch.float64
    assert torch.equal(layer.weight, first.double())
    shared.scores = torch.nn.Parameter(-shared.scores.detach())  # a new score object
    assert torch.equal(layer.weight != 0, select_mask(shared.scores.detach(), "super_mask", 0.5) & (rw.weight != 0))
    rw.weight = torch.nn.Parameter(torch.ones(8, 8, dtype=torch.float64), requires_grad=False)  # a new weight
    assert torch.equal(layer.weight, select_mask(shared.scores.detach(), "super_mask", 0.5).double())


@pytest.mark.parametrize("kind", ["normal", "few_values", "ones_and_zeros", "bf16", "sorted"])
def test_narrowed_kth_smallest_is_exact(kind):
    from one_layer_lottery.masking.selection import kth_smallest

    g = torch.Generator().manual_seed(11)
    n = 200_003
    x = {"normal": torch.randn(n, generator=g), "few_values": torch.randint(0, 4, (n,), generator=g).float(),
         "ones_and_zeros": torch.randint(0, 2, (n,), generator=g).float(),
         "bf16": torch.randn(n, generator=g).bfloat16(), "sorted": torch.arange(n).float()}[kind].abs()
    for j in (1, 2, n // 10, n // 2, n - 5, n):
        assert torch.equal(kth_smallest(x, j), x.kthvalue(j).values)
    for k in (1, n // 3, n // 2, n - 1):  # the count above the threshold decides the ties: exactly k kept
        assert torch.equal(topk_mask(x, k), naive_edge_popup_mask(x, 1 - k / n).bool())


def test_kth_smallest_stays_exact_when_the_sample_misleads():
    # Every sampled position holds the minimum, so the sample brackets a band of zeros only and
    # the answer lies outside it: the full selection must take over.
    from one_layer_lottery.masking import selection

    n = 1 << 17
    x = torch.arange(n, dtype=torch.float32)
    x[:: n // selection._SAMPLE] = 0.0
    for j in (1, n // 2, n):
        assert torch.equal(selection.kth_smallest(x, j), x.kthvalue(j).values)
    mask = selection.topk_mask(x, n // 4)
    assert int(mask.sum()) == n // 4 and bool(x[mask].min() >= x[~mask].max())
