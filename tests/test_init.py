import math

import pytest
import torch

from one_layer_lottery.masking import ScoreInit, WeightInit, attention_init
from one_layer_lottery.masking.init import WEIGHT_INITS


@pytest.mark.parametrize("method", WEIGHT_INITS)
def test_weights_depend_only_on_seed_name_and_shape(method):
    init = WeightInit(method)
    a = init.sample((64, 32), seed=7, name="encoder.fc1")
    torch.manual_seed(123)  # the global RNG plays no part
    b = init.sample((64, 32), seed=7, name="encoder.fc1")
    assert torch.equal(a, b)
    if method != "unsigned_constant":
        assert not torch.equal(a, init.sample((64, 32), seed=8, name="encoder.fc1"))
        assert not torch.equal(a, init.sample((64, 32), seed=7, name="encoder.fc2"))


@pytest.mark.parametrize("method,expected_std", [
    ("kaiming_uniform", math.sqrt(2 / 256)), ("kaiming_normal", math.sqrt(2 / 256)),
    ("signed_constant", math.sqrt(2 / 256)), ("xavier_normal", math.sqrt(2 / (256 + 512))),
    ("xavier_constant", math.sqrt(2 / (256 + 512))), ("standard", 1 / math.sqrt(3 * 256)),
])
def test_init_scales(method, expected_std):
    w = WeightInit(method).sample((512, 256), seed=0, name="w")
    assert abs(w.std().item() - expected_std) / expected_std < 0.03
    scaled = WeightInit(method, scale_fan=True, fan_factor=0.5).sample((512, 256), seed=0, name="w")
    assert abs(scaled.std().item() / w.std().item() - math.sqrt(2)) < 0.01


def test_constant_inits_have_one_magnitude():
    w = WeightInit("signed_constant").sample((100, 50), seed=0, name="w")
    assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / 50)))
    assert (w > 0).any() and (w < 0).any()
    u = WeightInit("unsigned_constant").sample((100, 50), seed=0, name="w")
    assert (u > 0).all()


def test_attention_init_same_or_authors_xavier():
    base = WeightInit("signed_constant")
    assert attention_init(base, "same", "q_proj") is base
    q = attention_init(base, "fairseq_xavier", "q_proj").sample((64, 64), 0, "q")
    bound = math.sqrt(6 / 128) / math.sqrt(2)
    assert q.abs().max() <= bound and q.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="--attention-init"):
        attention_init(base, "xavier", "q_proj")


def test_score_inits():
    assert torch.equal(ScoreInit("constant", 0.5).sample((3, 4), 0, "s"), torch.full((3, 4), 0.5))
    noisy = ScoreInit("constant_noisy", 0.5).sample((30, 40), 0, "s")
    assert noisy.unique().numel() > 1150 and (noisy - 0.5).abs().max() < 0.05
    std = ScoreInit("standard").sample((64, 100), 0, "s")
    assert std.abs().max() <= 0.1
    with pytest.raises(ValueError, match="--mask-init"):
        ScoreInit("zeros")
    with pytest.raises(ValueError, match="--init"):
        WeightInit("orthogonal")
