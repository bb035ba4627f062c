"""Mixed precision: fairseq's fp16/bf16 optimizer wrappers never hold or touch the frozen weights,
and top-k in half precision keeps exactly k, also with many ties."""
import math

import pytest
import torch
from fairseq.optim import FP16Optimizer, MemoryEfficientFP16Optimizer

from conftest import SMALL, USER_DIR, build, run_cli, train_in_process
from one_layer_lottery.masking import MaskedWeight, RandomWeight, num_kept, select_mask

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("method", ["super_mask", "topk"])
def test_half_precision_top_k_with_heavy_ties_keeps_exactly_k(dtype, method):
    g = torch.Generator().manual_seed(0)
    # 2**17 scores (the narrowed selection path) over only 16 distinct values, signs mixed.
    big = (torch.randint(-8, 8, (1 << 17,), generator=g).to(dtype) * 0.125)
    # Tiny values that underflow to zero (fp16) or round together (bf16).
    tiny = (torch.randn(512, 300, generator=g) * 1e-8).to(dtype)
    batched = torch.randint(0, 3, (4, 64, 33), generator=g).to(dtype)  # one selection per leading entry
    for ratio in (0.01, 0.5, 0.99):
        for scores in (big, tiny):
            mask = select_mask(scores, method, ratio)
            assert mask.dtype == torch.bool and int(mask.sum()) == num_kept(scores.numel(), ratio)
        per_layer = select_mask(batched, method, ratio).flatten(1).sum(1)
        assert per_layer.tolist() == [num_kept(64 * 33, ratio)] * 4
    # Every kept entry ranks at least as high as every removed one.
    mask = select_mask(big, method, 0.5)
    values = big.abs() if method == "super_mask" else big
    assert values[mask].min() >= values[~mask].max()


def _trainable_and_frozen(model):
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = {id(m.weight): m.weight for m in model.modules() if isinstance(m, RandomWeight)}
    return trainable, list(frozen.values())


FLAGS = (*SMALL, "--share-decoder-input-output-embed", "--dropout", "0", "--mask-layernorm-type",
         "normal_layernorm", "--need-bias")


# fairseq's handler of an fp16 gradient overflow calls .cuda() (trainer.py), so on CPU an overflow
# crashes instead of halving the loss scale; start at scale 1, where these gradients fit in fp16.
NO_OVERFLOW = ("--fp16-init-scale", "1")


def _bf16(cfg):
    cfg.common.bf16 = True  # fairseq's argparse --bf16 also sets --tpu (options.py); Hydra's common.bf16 does not


def _memory_efficient_bf16(cfg):
    _bf16(cfg)
    cfg.common.memory_efficient_bf16 = True


@pytest.mark.parametrize("mode", ["fp16", "fp16-flat", "memory-efficient-fp16", "bf16", "memory-efficient-bf16"])
def test_fp16_wrappers_hold_only_trainable_parameters_and_leave_weights_bitwise(sample_bin, mode, monkeypatch):
    flags, configure = {
        "fp16": (("--fp16", "--fp16-no-flatten-grads"), None),
        # The flattened fp32 master copy (fairseq's default on GPUs) is allocated on the parameters'
        # device, keyed by torch.cuda.current_device(), matched to p.device.index (None on CPU).
        "fp16-flat": (("--fp16",), None),
        "memory-efficient-fp16": (("--memory-efficient-fp16",), None),
        "bf16": (("--fp16-no-flatten-grads",), _bf16),
        "memory-efficient-bf16": ((), _memory_efficient_bf16),
    }[mode]
    if mode == "fp16-flat":
        monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    trainer, logs = train_in_process(sample_bin, *FLAGS, *flags, *NO_OVERFLOW, updates=3, configure=configure)
    model = trainer.get_model()
    dtype = torch.bfloat16 if "bf16" in mode else torch.float16
    trainable, frozen = _trainable_and_frozen(model)
    assert trainable and frozen and all(p.dtype == dtype for p in trainable)

    opt = trainer.optimizer
    expected_cls = MemoryEfficientFP16Optimizer if "memory-efficient" in mode else FP16Optimizer
    assert isinstance(opt, expected_cls)
    held = list(opt.fp16_params if isinstance(opt, FP16Optimizer) else opt.params)
    assert {id(p) for p in held} == {id(p) for p in trainable}
    assert not {id(p) for p in held} & {id(w) for w in frozen}
    if isinstance(opt, FP16Optimizer):  # the fp32 master copy covers exactly the trainable numbers
        masters = opt.fp32_params.values() if isinstance(opt.fp32_params, dict) else opt.fp32_params
        assert sum(m.numel() for m in masters) == sum(p.numel() for p in trainable)
        assert all(m.dtype == torch.float32 for m in masters)
    inner = opt.fp32_optimizer if isinstance(opt, FP16Optimizer) else opt.wrapped_optimizer
    inner_state = inner.state_dict()
    assert sum(s["exp_avg"].numel() for s in inner_state["state"].values()) == sum(p.numel() for p in trainable)

    # After real updates: losses finite, the frozen weights are the seed's weights rounded to the
    # half type, bit for bit, every mask keeps exactly k.
    assert len(logs) == 3 and all(math.isfinite(log["loss"]) for log in logs)
    fresh, _, _ = build(sample_bin, *FLAGS)
    fresh_frozen = {k: v for k, v in fresh.state_dict().items() if k.endswith(".weight") and "layer_norm" not in k}
    state = model.state_dict()
    assert fresh_frozen
    for k, v in fresh_frozen.items():
        assert torch.equal(state[k], v.to(dtype)), k
    moved = [k for k, v in fresh.state_dict().items()
             if k.endswith("scores") and not torch.equal(state[k], v.to(dtype))]
    assert moved, "the scores did not train"
    for m in model.modules():
        if isinstance(m, MaskedWeight) and m.is_masked:
            assert int(m.mask().sum()) == num_kept(m.score_tensor.numel(), 0.5)


@pytest.mark.slow
def test_fairseq_train_memory_efficient_fp16_on_cpu(sample_bin, tmp_path):
    # fairseq-train accepts --memory-efficient-fp16 (and --fp16 --fp16-no-flatten-grads) with --cpu.
    run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en",
            *FLAGS, "--cpu", "--memory-efficient-fp16", *NO_OVERFLOW, "--optimizer", "adam", "--lr", "5e-3",
            "--max-tokens", 1000, "--max-update", 3, "--disable-validation", "--no-epoch-checkpoints",
            "--num-workers", 0, "--save-dir", tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")
    fresh, _, _ = build(sample_bin, *FLAGS)
    # fairseq stores half tensors as float32 (utils.move_to_cpu): the seed's weights rounded to fp16.
    for k, v in fresh.state_dict().items():
        if k.endswith(".weight") and "layer_norm" not in k:
            assert torch.equal(ckpt["model"][k], v.half().float()), k
    trainable = [p for p in fresh.parameters() if p.requires_grad]
    state = ckpt["last_optimizer_state"]["state"]
    assert [tuple(s["exp_avg"].shape) for _, s in sorted(state.items())] == [tuple(p.shape) for p in trainable]
    assert ckpt["last_optimizer_state"]["loss_scale"] > 0
