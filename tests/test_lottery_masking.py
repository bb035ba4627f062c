"""The strong-lottery-ticket methods' masking parts (pure PyTorch): multicoated masks, IteRand
redraws, learned gains, the query/key init scale."""
import math

import pytest
import torch

from one_layer_lottery.masking import (
    MaskConfig, MaskedLinear, RandomWeight, WeightInit, attention_init, select_mask, topk_mask,
)
from one_layer_lottery.masking.coats import coat_kept_counts, level_bits
from one_layer_lottery.masking.rerandomize import (
    RerandSchedule, redraw_removed, redraw_values, redrawn_weight, weight_generations,
)


def _scores(shape, seed=0, distinct=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) if distinct else torch.randint(-2, 3, shape, generator=g).float()


# -- multicoated supermasks --------------------------------------------------------------------------

@pytest.mark.parametrize("coats", [2, 3, 5])
@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("distinct", [True, False])
def test_coats_are_nested_top_k_masks_and_values_are_multiples_of_one_over_c(coats, prune_ratio, distinct):
    scores = _scores((48, 40), seed=coats, distinct=distinct)
    config = MaskConfig(prune_ratio=prune_ratio, coats=coats)
    levels = config.levels(scores)
    counts = coat_kept_counts(scores.numel(), prune_ratio, coats)
    # Every coat, selected on its own, is the weights at or above its level; each lies in the denser one.
    coat_masks = [topk_mask(scores.abs().reshape(-1), k).view(scores.shape) for k in counts]
    for c, coat in enumerate(coat_masks, 1):
        assert torch.equal(levels >= c, coat) and int(coat.sum()) == counts[c - 1]
        if c > 1:
            assert not (coat & ~coat_masks[c - 2]).any()
    assert counts[0] == round((1 - prune_ratio) * scores.numel()) and counts == sorted(counts, reverse=True)
    assert torch.equal(levels > 0, select_mask(scores, "super_mask", prune_ratio))  # the outermost: --prune-ratio
    values = config.values(scores)
    assert values.dtype == torch.float32 and torch.equal(values * coats, levels.float())
    assert set((values * coats).unique().tolist()) <= set(range(coats + 1))


def test_three_coats_at_half_kept_split_the_kept_weights_evenly():
    scores = _scores((60, 50), seed=1)
    values = MaskConfig(prune_ratio=0.5, coats=3).values(scores)
    shares = {v: int((values == v).sum()) for v in (0.0, 1 / 3, 2 / 3, 1.0)}
    assert shares == {0.0: 1500, 1 / 3: 500, 2 / 3: 500, 1.0: 500}
    # The highest |scores| get the full weight.
    order = scores.abs().reshape(-1).argsort(descending=True)
    assert bool((values.reshape(-1)[order[:500]] == 1.0).all())


def test_one_coat_is_the_plain_mask():
    scores = _scores((30, 20), seed=2)
    for method in ("super_mask", "topk", "threshold", "sigmoid_threshold"):
        config = MaskConfig(method=method, prune_ratio=0.4, threshold=0.3)
        plain = select_mask(scores, method, 0.4, 0.3)
        assert config.values(scores).dtype == torch.float32 and torch.equal(config.values(scores), plain.float())
        assert torch.equal(config.values(scores, torch.float16), plain.half())
        assert torch.equal(config.levels(scores), plain.to(torch.uint8))
    assert [level_bits(c) for c in (1, 2, 3, 4, 7, 8)] == [1, 2, 2, 3, 3, 4]  # ceil(log2(C + 1))


def test_batched_coats_equal_per_layer_coats():
    scores = _scores((4, 12, 10), seed=3)
    config = MaskConfig(prune_ratio=0.5, coats=3)
    batched = config.levels(scores)
    for i in range(4):
        assert torch.equal(batched[i], config.levels(scores[i]))


@pytest.mark.parametrize("bad", [0, 33, 2.5, True, "3"])
def test_coats_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match="--mask-coats must be an integer from 1 to 32"):
        MaskConfig(coats=bad)


def test_coats_need_a_top_k_method():
    for method in ("threshold", "sigmoid_threshold"):
        with pytest.raises(ValueError, match=f"--mask-coats 2 needs a top-k --prune-method .* got '{method}'"):
            MaskConfig(method=method, coats=2)
    MaskConfig(method="topk", coats=2)


def test_coats_train_through_the_straight_through_estimator():
    """The forward pass multiplies by the coats' share; the scores' gradient is today's: the
    upstream gradient times the weight (times sign(score) for super_mask)."""
    rw = RandomWeight((12, 9), WeightInit(), seed=4, name="fc")
    scores = torch.nn.Parameter(_scores((12, 9), seed=4))
    layer = MaskedLinear(rw, MaskConfig(prune_ratio=0.5, coats=3), scores)
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(5))
    values = MaskConfig(prune_ratio=0.5, coats=3).values(scores.detach())
    effective = (rw.weight * values).requires_grad_()
    (x @ effective.t()).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()
    assert torch.equal(layer.weight.detach(), rw.weight * values)
    assert torch.allclose(scores.grad, effective.grad * rw.weight * scores.detach().sign())
    assert bool((scores.grad[values == 0] != 0).any())  # removed weights still learn


# -- IteRand -------------------------------------------------------------------------------------------

def _random(name="encoder.shared.fc1", init="kaiming_uniform", shape=(40, 30)):
    return RandomWeight(shape, WeightInit(init), seed=9, name=name)


def test_redraws_are_deterministic_touch_only_removed_weights_and_the_right_fraction():
    kept = select_mask(_scores((40, 30), seed=6), "super_mask", 0.6)
    removed = int((~kept).sum())
    a, b = _random(), _random()
    before = a.weight.clone()
    n = redraw_removed(a, kept, 0.25, 1)
    assert n == round(0.25 * removed) == redraw_removed(b, kept, 0.25, 1)
    assert torch.equal(a.weight, b.weight)  # from (seed, name, round) alone
    changed = a.weight != before
    assert int(changed.sum()) == n and not (changed & kept).any()
    assert torch.equal(a.weight[changed], redraw_values(a, 1)[changed])
    # Another round, another name or another seed picks and draws differently.
    for other in (_random(), _random(name="encoder.shared.fc2")):
        redraw_removed(other, kept, 0.25, 2 if other.name == a.name else 1)
        assert not torch.equal(other.weight != before, changed)
    assert redraw_removed(_random(), torch.ones(40, 30, dtype=torch.bool), 0.5, 1) == 0


@pytest.mark.parametrize("init", ["kaiming_uniform", "signed_constant"])
def test_generations_give_back_every_redrawn_weight_bit_for_bit(init):
    rw = _random(init=init)
    for round_ in (1, 2, 3):
        redraw_removed(rw, select_mask(_scores((40, 30), seed=round_), "super_mask", 0.5), 0.5, round_)
    generations = weight_generations(rw, 3)
    assert set(generations.unique().tolist()) <= {0, 1, 2, 3} and (generations > 0).any()
    assert torch.equal(redrawn_weight(rw, generations), rw.weight)
    with torch.no_grad():
        rw.weight[0, 0] = 123.0  # no draw gives this value
    with pytest.raises(ValueError, match="1 values of the random weight encoder.shared.fc1 are none of the 4 draws"):
        weight_generations(rw, 3)


def test_rerand_schedule_counts_rounds_and_refuses_bad_values():
    schedule = RerandSchedule(interval=3, fraction=0.2)
    assert [schedule.rounds_due(n) for n in (0, 2, 3, 5, 6, 10)] == [0, 0, 1, 1, 2, 3]
    assert RerandSchedule().rounds_due(1000) == 0
    for interval in (-1, 1.5, True):
        with pytest.raises(ValueError, match="--rerand-interval must be a non-negative integer"):
            RerandSchedule(interval=interval)
    for fraction in (0, -0.1, 1.5, math.nan, math.inf, "0.1"):
        with pytest.raises(ValueError, match=r"--rerand-fraction must be a number in \(0, 1\]"):
            RerandSchedule(interval=2, fraction=fraction)


# -- learned gains -------------------------------------------------------------------------------------

def test_gains_start_at_one_and_both_gains_and_scores_learn():
    rw = RandomWeight((10, 8), WeightInit(), seed=2, name="fc")
    scores = _scores((10, 8), seed=7)
    plain = MaskedLinear(rw, MaskConfig(), torch.nn.Parameter(scores.clone()), own_random=False)
    gained = MaskedLinear(rw, MaskConfig(), torch.nn.Parameter(scores.clone()), own_random=False, gains=True)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(gained.gains, torch.ones(10)) and torch.equal(gained(x), plain(x))
    with torch.no_grad():
        gained.gains.copy_(torch.linspace(0.5, 2.0, 10))
    gained(x).pow(2).sum().backward()

    mask = select_mask(scores, "super_mask", 0.5)
    gains = gained.gains.detach().clone().requires_grad_()
    masked = (rw.weight * mask).requires_grad_()
    (x @ (gains.unsqueeze(1) * masked).t()).pow(2).sum().backward()
    assert torch.allclose(gained.gains.grad, gains.grad) and bool((gained.gains.grad != 0).all())
    # Scores: the straight-through gradient of the gained weight.
    assert torch.allclose(gained.scores.grad, masked.grad * rw.weight * scores.sign())
    assert bool((gained.scores.grad != 0).any())
    with pytest.raises(ValueError, match="learned gains need a masked weight"):
        MaskedLinear(rw, MaskConfig(), None, own_random=False, gains=True)


def test_eval_cache_follows_the_gains():
    rw = RandomWeight((6, 5), WeightInit(), seed=2, name="fc")
    layer = MaskedLinear(rw, MaskConfig(), torch.nn.Parameter(_scores((6, 5))), gains=True).eval()
    first = layer.weight
    assert layer.weight is first
    with torch.no_grad():
        layer.gains.mul_(3.0)
    assert torch.equal(layer.weight, first * 3.0)


# -- query/key init scale ---------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["same", "fairseq_xavier"])
def test_qk_init_scale_multiplies_only_queries_and_keys(attention):
    base = WeightInit("kaiming_uniform")
    for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
        plain = attention_init(base, attention, projection).sample((16, 16), 3, projection)
        scaled = attention_init(base, attention, projection, qk_scale=2.5).sample((16, 16), 3, projection)
        factor = 2.5 if projection in ("q_proj", "k_proj") else 1.0
        assert torch.equal(scaled, plain * factor)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True])
def test_qk_init_scale_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="--qk-init-scale must be a finite number above 0"):
        attention_init(WeightInit(), "same", "q_proj", qk_scale=bad)
