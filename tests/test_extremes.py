"""Extreme settings train a few real updates (fairseq's Trainer, in process) without NaN."""
import math

import pytest
import torch

from conftest import SMALL, train_in_process
from one_layer_lottery.masking import MASK_INITS, PRUNE_METHODS, WEIGHT_INITS, MaskedWeight, RandomWeight, num_kept

CASES = (
    [("--prune-ratio", r) for r in (0.01, 0.99)]
    + [("--prune-method", m, *(("--mask-threshold", 0.5) if m == "sigmoid_threshold" else ())) for m in PRUNE_METHODS]
    + [("--init", i) for i in WEIGHT_INITS]
    + [("--mask-init", i) for i in MASK_INITS]
)


@pytest.mark.parametrize("flags", CASES, ids=lambda f: "-".join(map(str, f)).lstrip("-"))
def test_a_few_updates_stay_finite(sample_bin, flags):
    args = (*SMALL, "--share-decoder-input-output-embed", "--dropout", "0.1", *map(str, flags))
    trainer, logs = train_in_process(sample_bin, *args, updates=3)
    model = trainer.get_model()
    assert len(logs) == 3
    # (fairseq's train_step itself raises FloatingPointError on a NaN/inf gradient norm)
    assert all(math.isfinite(log["loss"]) for log in logs), logs
    assert trainer.get_num_updates() == 3
    randoms = [m.weight for m in model.modules() if isinstance(m, RandomWeight)]
    assert all(torch.isfinite(w).all() for w in randoms)
    masked = [m for m in model.modules() if isinstance(m, MaskedWeight) and m.is_masked]
    assert masked
    opts = model.mask_options.mask
    for m in masked:
        scores = m.score_tensor
        assert torch.isfinite(scores).all()
        kept = int(m.mask().sum())
        if opts.method in ("super_mask", "topk"):
            assert kept == num_kept(scores.numel(), opts.prune_ratio)
        else:
            assert 0 <= kept <= scores.numel()
    if opts.method in ("super_mask", "topk") and opts.prune_ratio == 0.99:
        assert all(int(m.mask().sum()) <= max(1, round(0.01 * m.score_tensor.numel())) for m in masked)
