"""Mask analytics: statistics logged during training (TensorBoard) and the analyze command."""
import itertools
import json

import numpy as np
import pytest
import torch
from fairseq.logging import metrics

from conftest import SMALL, build
from one_layer_lottery import analyze, export, fairseq_patches
from one_layer_lottery.fairseq_checkpoint import plain
from one_layer_lottery.masking import MaskedWeight, naive_edge_popup_mask, num_kept
from test_compact import like_trained

PNG = b"\x89PNG\r\n\x1a\n"


def _jaccard(a, b):
    a, b = np.asarray(a, bool).ravel(), np.asarray(b, bool).ravel()
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _masks_by_layer(model, stack):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, MaskedWeight) and name.startswith(f"{stack}.layers."):
            layer, matrix = name.split(".", 3)[2:]
            out.setdefault(int(layer), {})[matrix] = m.mask().clone()
    return out


def test_monitor_logs_exact_statistics(sample_bin):
    model, _, _ = build(sample_bin, *SMALL, "--mask-log-interval", 5)
    model.train()
    with metrics.aggregate(new_root=True) as agg:
        model.set_num_updates(0)  # first call: reference masks, kept fractions, overlaps
        first = agg.get_smoothed_values()
        before = _masks_by_layer(model, "encoder")
        like_trained(model, seed=5)
        model.set_num_updates(1)  # not a multiple: the last values again
        assert agg.get_smoothed_values() == first
        model.set_num_updates(4)  # update 5 trains with these masks: recomputed
        values = agg.get_smoothed_values()
    after = _masks_by_layer(model, "encoder")

    assert not any(k.startswith("mask_flipped/") for k in first)
    layers = ["encoder.0", "encoder.1", "encoder.2", "decoder.0", "decoder.1"]
    assert {k for k in values if k.startswith("mask_kept/")} == {f"mask_kept/{layer}" for layer in layers}
    assert values["mask_kept/encoder.1"] == 0.5
    for layer in range(3):
        numel = sum(m.numel() for m in after[layer].values())
        flipped = sum(int((after[layer][k] != before[layer][k]).sum()) for k in after[layer])
        assert 0 < flipped and values[f"mask_flipped/encoder.{layer}"] == round(flipped / numel, 4)
    for matrix in ("fc1", "self_attn.q_proj"):
        pairs = [_jaccard(after[i][matrix], after[j][matrix]) for i, j in itertools.combinations(range(3), 2)]
        assert values[f"mask_jaccard/encoder.{matrix}"] == round(float(np.mean(pairs)), 4)
    assert len([k for k in values if k.startswith("mask_jaccard/decoder.")]) == 10


def test_monitor_interval_zero_and_bad_values(sample_bin):
    model, _, _ = build(sample_bin, *SMALL, "--mask-log-interval", 0)
    model.train()
    with metrics.aggregate(new_root=True) as agg:
        model.set_num_updates(0)
        model.set_num_updates(99)
        assert not any(k.startswith("mask_") for k in agg.get_smoothed_values())
    with pytest.raises(ValueError, match="--mask-log-interval must be a non-negative integer, got -1"):
        build(sample_bin, *SMALL, "--mask-log-interval", -1)


@pytest.mark.slow
def test_fairseq_train_writes_mask_scalars_to_tensorboard(trained_sample):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_sample.tensorboard / "train_inner"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    layers = [f"{s}.{i}" for s in ("encoder", "decoder") for i in range(2)]
    enc = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]
    dec = enc[:4] + [m.replace("self", "encoder") for m in enc[:4]] + enc[4:]
    expected = {f"mask_kept/{layer}" for layer in layers} | {f"mask_flipped/{layer}" for layer in layers}
    expected |= {f"mask_jaccard/encoder.{m}" for m in enc} | {f"mask_jaccard/decoder.{m}" for m in dec}
    assert expected <= tags, expected - tags
    kept = acc.Scalars("mask_kept/encoder.0")
    assert [e.step for e in kept] == [10, 20, 30] and all(e.value == 0.5 for e in kept)
    flips = [e.value for layer in layers for e in acc.Scalars(f"mask_flipped/{layer}")]
    assert all(0.0 <= v < 0.5 for v in flips) and max(flips) > 0
    overlaps = [e.value for t in tags if t.startswith("mask_jaccard/") for e in acc.Scalars(t)]
    assert all(0.0 < v < 1.0 for v in overlaps)
    log = trained_sample.log.replace(" ", "")
    assert "mask_kept=0.5" in log and "mask_kept/" not in log


def _check_report(report, state, prune_ratio):
    for stack, n in (("encoder", 2), ("decoder", 2)):
        r = report[stack]
        assert r["layers"] == n and r["weights_shared"]
        overlap = np.array(r["overlap"])
        assert np.allclose(np.diag(overlap), 1.0) and np.allclose(overlap, overlap.T)
        inter_sum = union_sum = 0
        for matrix in r["matrices"]:
            masks = [naive_edge_popup_mask(state[f"{stack}.layers.{i}.{matrix}.scores"], prune_ratio).numpy() > 0
                     for i in range(n)]
            numel = masks[0].size
            assert r["kept_per_matrix"][matrix] == [num_kept(numel, prune_ratio) / numel] * n
            assert r["overlap_per_matrix"][matrix][0][1] == pytest.approx(_jaccard(masks[0], masks[1]), abs=1e-12)
            inter_sum += np.count_nonzero(masks[0] & masks[1])
            union_sum += np.count_nonzero(masks[0] | masks[1])
        assert r["overlap"][0][1] == pytest.approx(inter_sum / union_sum, abs=1e-12)
        assert r["kept_per_layer"] == pytest.approx([1 - prune_ratio] * n, abs=1e-3)
    assert report["embeddings"]["encoder.embed_tokens"] == pytest.approx(1 - prune_ratio, abs=1e-3)


@pytest.mark.slow
def test_analyze_checkpoint_and_compact_file(trained_sample, tmp_path, capsys):
    out = tmp_path / "figures"
    assert analyze.main([str(trained_sample.checkpoint), str(out)]) == 0
    report = json.loads((out / "mask_stats.json").read_text())
    state = torch.load(trained_sample.checkpoint, map_location="cpu")["model"]
    _check_report(report, state, 0.5)
    assert report["encoder"]["matrices"][:4] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.out_proj"]
    for name in ("overlap.png", "kept.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000

    # The compact file's masks give the same numbers.
    sub = tmp_path / "sub.olls"
    export.export_compact(trained_sample.checkpoint, sub)
    assert analyze.main([str(sub), str(tmp_path / "from-compact")]) == 0
    again = json.loads((tmp_path / "from-compact" / "mask_stats.json").read_text())
    assert {k: v for k, v in again.items() if k != "source"} == {k: v for k, v in report.items() if k != "source"}


def test_analyze_threshold_and_shared_scores(sample_bin, tmp_path):
    for flags in (("--prune-method", "threshold", "--mask-threshold", 0.3), ("--share-mask", "layer_mask")):
        model, _, cfg = build(sample_bin, *SMALL, *flags)
        like_trained(model, seed=3)
        ckpt = tmp_path / "ckpt.pt"
        torch.save({"cfg": plain(cfg), "model": model.state_dict()}, ckpt)
        report = analyze.mask_report(*analyze.read_masks(str(ckpt)))
        fc1 = [model.encoder.layers[i].fc1 for i in range(3)]
        kept = [m.mask().float().mean().item() for m in fc1]
        assert report["encoder"]["kept_per_matrix"]["fc1"] == pytest.approx(kept, abs=1e-12)
        if "threshold" in flags:
            assert kept == [pytest.approx((m.scores > 0.3).float().mean().item()) for m in fc1]
            assert len(set(kept)) > 1  # a threshold keeps what it keeps
        else:  # one score tensor for every layer: identical masks, each over its own random weight
            assert report["encoder"]["overlap"] == [[1.0] * 3] * 3 and not report["encoder"]["weights_shared"]
        paths = analyze.write_figures(report, str(tmp_path))
        assert all((tmp_path / p.split("/")[-1]).read_bytes().startswith(PNG) for p in paths.values())


def test_log_lines_show_the_summary_and_tensorboard_every_value(sample_bin, tmp_path, caplog):
    from fairseq.logging.progress_bar import JsonProgressBar, NoopProgressBar, SimpleProgressBar
    from fairseq.logging.progress_bar import TensorboardProgressBarWrapper
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, _, _ = build(sample_bin, *SMALL, "--mask-log-interval", 1)
    model.train()
    with metrics.aggregate(new_root=True) as agg:
        model.set_num_updates(0)
        like_trained(model, seed=5)
        model.set_num_updates(1)
        stats = agg.get_smoothed_values()
    detail = [k for k in stats if k.startswith(("mask_kept/", "mask_flipped/", "mask_jaccard/"))]
    assert len(detail) == 5 + 5 + 6 + 10
    # The summary: kept fraction and flipped bits over every virtual layer, overlap per stack.
    numel = {f"{stack}.{i}": sum(m.numel() for m in masks.values())
             for stack in ("encoder", "decoder") for i, masks in _masks_by_layer(model, stack).items()}
    assert stats["mask_kept"] == 0.5
    flipped = sum(stats[f"mask_flipped/{layer}"] * n for layer, n in numel.items()) / sum(numel.values())
    assert 0 < stats["mask_flipped"] == pytest.approx(flipped, abs=1e-4)
    for stack in ("encoder", "decoder"):
        overlaps = [v for k, v in stats.items() if k.startswith(f"mask_jaccard/{stack}.")]
        assert stats[f"mask_jaccard_{stack}"] == pytest.approx(np.mean(overlaps), abs=1e-4)

    # In fairseq's command lines, text formats print the summary only; TensorBoard gets every value.
    simple = SimpleProgressBar([0], log_interval=1)
    list(simple)
    fairseq_patches.patch_fairseq_cli()
    try:
        with caplog.at_level("INFO"):
            simple.log(stats, tag="train_inner", step=1)
            JsonProgressBar([0], epoch=1).print(stats, tag="train")
    finally:
        fairseq_patches.undo_fairseq_cli_patches()
    assert "mask_kept=0.5, mask_flipped=" in caplog.text and '"train_mask_kept": "0.5"' in caplog.text
    assert "mask_jaccard_decoder" in caplog.text and "mask_kept/" not in caplog.text
    assert "mask_jaccard/" not in caplog.text and "mask_flipped/" not in caplog.text
    TensorboardProgressBarWrapper(NoopProgressBar([0]), str(tmp_path)).log(stats, tag="mask-detail", step=1)
    acc = EventAccumulator(str(tmp_path / "mask-detail"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) >= set(detail) | {"mask_kept", "mask_flipped", "mask_jaccard_encoder"}
