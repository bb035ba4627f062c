"""The code that differs on CUDA, driven on CPU tensors through its seams: the LayerNorm class fairseq
picks where apex is installed, the accelerator path of the top-k selection, autocast fp16/bf16, the
eval-mode mask cache, the benchmark's CUDA runtime, and no host round-trip in a training or
decoding step."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import one_layer_lottery.masking.selection as selection
from conftest import SMALL, build, train_in_process
from one_layer_lottery.masking import (
    MaskConfig, MaskedLinear, MaskedWeight, RandomWeight, ScoreInit, WeightInit, num_kept, select_mask, topk_mask,
)

PACKAGE_DIR = str(Path(selection.__file__).resolve().parents[1])
HALF = [torch.float16, torch.bfloat16]


@pytest.fixture
def accelerator_selection(monkeypatch):
    """Top-k selection takes the path it takes on CUDA, for CPU tensors; kthvalue (host path only) raises."""
    monkeypatch.setattr(selection, "selects_on_host", lambda device: False)

    def host_path_used(*args, **kwargs):
        raise AssertionError("the host selection path ran")

    monkeypatch.setattr(torch.Tensor, "kthvalue", host_path_used)


def _masked(model):
    return [m for m in model.modules() if isinstance(m, MaskedWeight) and m.is_masked]


# -- 1. LayerNorm: fairseq's class choice does not reach the model -------------------------------------

class StandInFusedLayerNorm(torch.nn.Module):
    """What apex's FusedLayerNorm looks like to the model: not a torch.nn.LayerNorm, affine parameters."""

    built = 0

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True):
        super().__init__()
        StandInFusedLayerNorm.built += 1
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight = torch.nn.Parameter(torch.ones(self.normalized_shape))
        self.bias = torch.nn.Parameter(torch.zeros(self.normalized_shape))

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


@pytest.mark.parametrize("kind", ["masked_layernorm", "normal_layernorm", "frozen_layernorm"])
@pytest.mark.parametrize("normalize_before", [False, True])
def test_every_layer_norm_is_decided_by_the_plugin_whatever_fairseq_builds(sample_bin, monkeypatch, kind,
                                                                            normalize_before):
    from fairseq.modules import layer_norm

    flags = (*SMALL, "--mask-layernorm-type", kind, "--dropout", "0")
    if normalize_before:  # adds the stacks' final LayerNorms
        flags += ("--encoder-normalize-before", "--decoder-normalize-before")
    reference, _, _ = build(sample_bin, *flags)

    # What fairseq.modules.LayerNorm does where apex is installed and CUDA is available.
    monkeypatch.setattr(layer_norm, "has_fused_layernorm", True, raising=False)
    monkeypatch.setattr(layer_norm, "FusedLayerNorm", StandInFusedLayerNorm, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    StandInFusedLayerNorm.built = 0
    model, _, _ = build(sample_bin, *flags)
    monkeypatch.undo()

    expected_norms = 3 * 2 + 2 * 3 + (2 if normalize_before else 0)
    assert StandInFusedLayerNorm.built == expected_norms  # fairseq did build the fused class
    assert not any(isinstance(m, StandInFusedLayerNorm) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == expected_norms
    assert all(n.elementwise_affine == (kind != "masked_layernorm") for n in norms)
    # The same parameters, trainable or not, as where fairseq builds torch's class, and the same function.
    assert {k: p.requires_grad for k, p in model.named_parameters()} == \
           {k: p.requires_grad for k, p in reference.named_parameters()}
    assert list(model.state_dict()) == list(reference.state_dict())
    src, prev = torch.tensor([[5, 6, 7, 2]]), torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model.eval()(src, torch.tensor([4]), prev)[0],
                           reference.eval()(src, torch.tensor([4]), prev)[0])


def test_a_layer_norm_without_its_shape_is_refused_by_name():
    from one_layer_lottery.models.one_layer_transformer.layers import apply_layernorm_type

    class OddLayerNorm(torch.nn.Module):
        pass

    holder = torch.nn.Module()
    holder.norm = OddLayerNorm()
    with pytest.raises(TypeError, match="norm .*OddLayerNorm.*normalized_shape"):
        apply_layernorm_type(holder, "masked_layernorm")


# -- 2. the accelerator path of the selection ----------------------------------------------------------

def _selection_cases():
    g = torch.Generator().manual_seed(0)
    return {
        "distinct": torch.randn(3000, generator=g),
        "large": torch.randn(1 << 17, generator=g),  # the host path narrows its search here
        "few values": torch.randint(-4, 4, (5000,), generator=g).float(),
        "all tied": torch.zeros(300),
        "rows": torch.randn(4, 64 * 33, generator=g),
        "tied rows": torch.randint(0, 3, (4, 500), generator=g).float(),
    }


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_accelerator_path_keeps_exactly_k_and_selects_the_host_paths_mask(dtype):
    for name, values in _selection_cases().items():
        values = values.to(dtype)
        n = values.shape[-1]
        for k in sorted({1, n // 3, n // 2, n - 1, n}):
            on_device = topk_mask(values, k, on_host=False)
            on_host = topk_mask(values, k, on_host=True)
            assert torch.equal(on_device, on_host), (name, k)
            assert (on_device.sum(-1) == k).all(), (name, k)


@pytest.mark.parametrize("method", ["super_mask", "topk"])
def test_the_seam_routes_select_mask_to_the_accelerator_path(accelerator_selection, method):
    scores = torch.randn(6, 40, 30, generator=torch.Generator().manual_seed(3)).half()
    mask = select_mask(scores, method, 0.3)  # kthvalue would raise: the accelerator path ran
    assert mask.flatten(1).sum(1).tolist() == [num_kept(1200, 0.3)] * 6
    values = scores.abs() if method == "super_mask" else scores
    k = num_kept(1200, 0.3)
    for i in range(6):  # the k largest by a stable sort: ties broken by position, lowest index first
        order = values[i].flatten().float().sort(descending=True, stable=True).indices
        expected = torch.zeros(1200, dtype=torch.bool)
        expected[order[:k]] = True
        assert torch.equal(mask[i].flatten(), expected)


# -- 3. autocast fp16 / bf16 ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_mask_and_straight_through_gradient_under_autocast(accelerator_selection, dtype):
    rw = RandomWeight((48, 32), WeightInit(), seed=2, name="fc")
    scores = torch.nn.Parameter(ScoreInit().sample((48, 32), 2, "fc"))
    layer = MaskedLinear(rw, MaskConfig(), scores)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 7, 32, generator=g)
    upstream = torch.randn(5, 7, 48, generator=g)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    (y.float() * upstream).sum().backward()

    # The same step with the masked weight as an explicit leaf: the straight-through estimator gives
    # the scores d(loss)/d(masked weight) * weight * sign(score), for kept and removed weights alike.
    mask = select_mask(scores.detach(), "super_mask", 0.5)
    assert int(mask.sum()) == 48 * 16
    effective = (rw.weight * mask).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y_ref = F.linear(x, effective)
    assert torch.equal(y, y_ref)
    (y_ref.float() * upstream).sum().backward()
    expected = effective.grad * rw.weight * scores.detach().sign()
    assert torch.equal(scores.grad, expected)
    assert (scores.grad[~mask] != 0).any()  # removed weights get a gradient too


@pytest.mark.parametrize("dtype", HALF)
def test_model_training_step_under_autocast_keeps_exactly_k(sample_bin, accelerator_selection, dtype):
    model, _, _ = build(sample_bin, *SMALL, "--share-decoder-input-output-embed", "--dropout", "0")
    model.train()
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 11, 12, 2]])
    prev = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10]])
    with torch.autocast("cpu", dtype=dtype):
        logits, _ = model(src, torch.tensor([5, 5]), prev)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), prev.view(-1))
    assert logits.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    for m in _masked(model):
        scores = m.score_tensor
        assert scores.dtype == torch.float32 and torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
        assert int(m.mask().sum()) == num_kept(scores.numel(), 0.5)


# -- 4. the eval-mode mask cache -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_eval_mask_cache_on_the_accelerator_path_under_autocast(sample_bin, accelerator_selection, monkeypatch,
                                                                dtype):
    import one_layer_lottery.masking.modules as modules
    from fairseq.sequence_generator import SequenceGenerator

    model, task, _ = build(sample_bin, *SMALL, "--share-decoder-input-output-embed")
    model.eval()
    masks = {id(m): m.mask() for m in _masked(model)}
    calls = []
    real = modules.select_mask
    monkeypatch.setattr(modules, "select_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=3, max_len_b=6)
    sample = {"net_input": {"src_tokens": torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2]]),
                            "src_lengths": torch.tensor([4, 4])}}
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        first = gen.generate([model], sample)
        assert len(calls) == len(masks)  # one selection per masked weight for the whole decoding
        second = gen.generate([model], sample)
        assert len(calls) == len(masks)
        # Matrix multiplies get the cached weight already in autocast's type; the embedding lookup does not.
        for m in [m for m in _masked(model) if isinstance(m, MaskedLinear)] + [model.decoder.output_projection]:
            assert m.weight.dtype == dtype and m.weight is m.weight
        assert model.encoder.embed_tokens.weight.dtype == torch.float32
    assert [h[0]["tokens"].tolist() for h in first] == [h[0]["tokens"].tolist() for h in second]
    for m in _masked(model):  # the cached masked weight is the weight times the current mask
        assert torch.equal(m.weight, m.random_weight * masks[id(m)])
        assert m.weight.dtype == torch.float32  # autocast casts it per operation, as for a dense model
    model.to(torch.bfloat16)  # moving or casting the model drops the cache
    for m in _masked(model):
        assert m.weight.dtype == torch.bfloat16
    assert len(calls) == 2 * len(masks)


class WeightCasts(TorchDispatchMode):
    """Counts the casts of float32 tensors of the given shapes to a half type."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes, self.count = shapes, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ == "_to_copy" and args[0].dtype == torch.float32 \
                and kwargs.get("dtype") in HALF and tuple(args[0].shape) in self.shapes:
            self.count += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("dtype", HALF)
def test_decoding_under_autocast_casts_each_masked_weight_once(sample_bin, accelerator_selection, dtype):
    model, _, _ = build(sample_bin, *SMALL, "--share-decoder-input-output-embed", "--dropout", "0")
    shapes = {tuple(m.random_weight.shape) for m in _masked(model)}
    batch = (torch.tensor([[5, 6, 7, 8, 2], [9, 10, 11, 12, 2]]), torch.tensor([5, 5]),
             torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10]]))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        with WeightCasts(shapes) as training_casts:
            trained = model.train()(*batch)[0]  # masked weights recomputed: autocast casts them per use
        model.eval()
        model(*batch)  # fills the cache
        with WeightCasts(shapes) as decoding_casts:
            decoded = model(*batch)[0]
    assert training_casts.count > 0 and decoding_casts.count == 0
    assert torch.equal(decoded, trained)  # the same numbers: the copy is the cast autocast would make


# -- 5. the benchmark's CUDA runtime -------------------------------------------------------------------

class StandInCuda:
    """The part of torch.cuda the benchmark uses, with an allocator that reports a scripted peak."""

    def __init__(self):
        self.calls = []
        self.allocated = 1000

    def synchronize(self):
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self):
        self.calls.append("reset_peak_memory_stats")

    def memory_allocated(self):
        return self.allocated

    def max_memory_allocated(self):
        return self.allocated + 4096

    def get_device_name(self):
        return "Stand-in GPU"


def test_benchmark_cuda_path_runs_on_cpu_tensors(monkeypatch):
    from one_layer_lottery import bench
    from one_layer_lottery.models.one_layer_transformer import ARCHITECTURES

    monkeypatch.setitem(ARCHITECTURES, "one_layer_transformer_iwslt_de_en", (32, 64, 4, 2, {}))
    cuda = StandInCuda()
    runtime = bench.CudaRuntime(device="cpu", cuda=cuda)
    args = bench.argparse.Namespace(arch="one_layer_transformer_iwslt_de_en", device="cuda", dtype="bf16",
                                    max_tokens=128, steps=2, warmup=1, mask_reps=1, gen_reps=1, gen_sentences=2,
                                    gen_len=3, skip_memory=False)
    r = bench.run(args, runtime=runtime)
    assert r["gpu"] == "Stand-in GPU" and r["device"] == "cuda"
    # Peak memory: the allocator's peak since its reset, minus what was allocated before the step.
    assert r["peak_memory_bytes"] == {"masked": 4096, "dense": 4096} and r["peak_memory_ratio"] == 1.0
    assert cuda.calls.count("reset_peak_memory_stats") == 2
    # Every timed call waits for the device before and after: 2 models x 2 steps, 1+1 mask timings
    # plus a warm-up, 2 models x 2 generation rounds; plus 2 per peak measurement.
    timed_calls = 2 * 2 + 3 + 2 * 2
    assert cuda.calls.count("synchronize") == 2 * timed_calls + 2 * 2
    assert all(r[k] > 0 for k in ("train_step_ratio", "mask_speedup", "generate_ratio"))


def test_benchmark_picks_the_runtime_of_the_device():
    from one_layer_lottery import bench

    assert isinstance(bench.runtime_for("cpu"), bench.CpuRuntime)
    assert isinstance(bench.runtime_for("cuda"), bench.CudaRuntime)  # built without touching the GPU
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        bench.runtime_for("meta")


# -- 6. no host round-trip in a training step or a decoding step ---------------------------------------

# aten operations that make the host wait for the device: reading a value, sizes that depend on values.
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "unique", "_unique",
               "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"}
PYTHON_READS = ("item", "tolist", "cpu", "nonzero", "numpy", "__bool__", "__int__", "__float__", "__index__")


def _ours(frame):
    """Whether the innermost frame outside torch (and this file's wrappers) is this project's code."""
    torch_dir = str(Path(torch.__file__).resolve().parent)
    here = str(Path(__file__).resolve())
    while frame is not None:
        filename = str(Path(frame.f_code.co_filename).resolve())
        if not filename.startswith(torch_dir) and filename != here:
            return filename.startswith(PACKAGE_DIR)
        frame = frame.f_back
    return False


class HostRoundTrips(TorchDispatchMode):
    """Records every host round-trip (Python reads of tensor values and syncing aten operations)
    made by this project's code while active; fairseq's own (its generator and trainer make many)
    are left to fairseq."""

    def __init__(self):
        super().__init__()
        self.found = []
        self.patches = pytest.MonkeyPatch()

    def _record(self, what):
        frame = sys._getframe(2)
        if _ours(frame):
            while frame is not None and not str(Path(frame.f_code.co_filename).resolve()).startswith(PACKAGE_DIR):
                frame = frame.f_back
            self.found.append(f"{what} at {frame.f_code.co_filename}:{frame.f_lineno}")

    def __enter__(self):
        for name in PYTHON_READS:
            real = getattr(torch.Tensor, name)

            def wrapper(t, *args, _real=real, _name=name, **kwargs):
                self._record(f"Tensor.{_name}")
                return _real(t, *args, **kwargs)

            self.patches.setattr(torch.Tensor, name, wrapper)
        real_nonzero = torch.nonzero
        self.patches.setattr(torch, "nonzero", lambda *a, **k: self._record("torch.nonzero") or real_nonzero(*a, **k))
        return super().__enter__()

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self.patches.undo()
        return result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name in ("index", "index_put", "index_put_") and any(
            torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8)
            for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
        if name in SYNCING_OPS or bool_index:
            self._record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


def test_the_round_trip_detector_sees_the_host_selection_path():
    # The CPU path of the selection reads counts on the host (free on CPU): the detector must see it.
    scores = torch.randn(1 << 17)
    with HostRoundTrips() as trips:
        select_mask(scores, "super_mask", 0.5)
    assert trips.found and all("selection.py" in t for t in trips.found)


@pytest.mark.parametrize("methods", [(), ("--mask-coats", 3, "--learned-gains", "--rerand-interval", 10)],
                         ids=["plain", "coats_gains_rerand"])
def test_a_masked_training_step_makes_no_host_round_trip(sample_bin, accelerator_selection, methods):
    flags = ("--share-decoder-input-output-embed", "--dropout", "0.1", "--mask-log-interval", "100", *methods)
    trainer, _ = train_in_process(sample_bin, *SMALL, *flags, updates=2)  # the mask monitor's reference is taken
    sample = next(iter(trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)))
    with HostRoundTrips() as trips:
        log = trainer.train_step([sample])
    assert log is not None and trainer.get_num_updates() == 3
    assert trips.found == []


def test_decoding_makes_no_host_round_trip(sample_bin, accelerator_selection):
    from fairseq.sequence_generator import SequenceGenerator

    model, task, _ = build(sample_bin, *SMALL, "--share-decoder-input-output-embed")
    model.eval()
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=3, max_len_b=6)
    sample = {"net_input": {"src_tokens": torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2]]),
                            "src_lengths": torch.tensor([4, 4])}}
    with torch.no_grad(), HostRoundTrips() as trips:
        hypos = gen.generate([model], sample)  # includes selecting every mask for the eval cache
        encoder_out = model.encoder(sample["net_input"]["src_tokens"], src_lengths=sample["net_input"]["src_lengths"])
        state = {}
        prev = torch.tensor([[2], [2]])
        for _ in range(3):  # single incremental decoding steps
            logits, _ = model.decoder(prev, encoder_out=encoder_out, incremental_state=state)
            prev = torch.cat([prev, logits[:, -1:].argmax(-1)], dim=1)
    assert len(hypos) == 2
    assert trips.found == []
