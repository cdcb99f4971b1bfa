"""OHEM cross-entropy, the summed-heads helper and the distillation KL (spec §9.3, §3.2)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fasterseg_core.cli import main as cli_main
from fasterseg_core.config import load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.data.stats import split_summary
from fasterseg_core.engine import training_loss
from fasterseg_core.losses import (
    IGNORE_INDEX,
    OhemCrossEntropy,
    class_weights,
    distillation_kl,
    ohem_cross_entropy,
    sum_over_heads,
)
from fasterseg_core.runs import stage_dir


def _logits_with_true_probs(target: torch.Tensor, p_true: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """Logits (N, C, H, W) whose softmax gives each pixel probability ``p_true`` for its label."""
    n, h, w = target.shape
    rest = (1 - p_true) / (num_classes - 1)
    probs = rest[:, None].expand(n, num_classes, h, w).clone()
    probs.scatter_(1, target.clamp(max=num_classes - 1)[:, None], p_true[:, None])
    return probs.log().requires_grad_(True)


def _kept_pixels(logits: torch.Tensor) -> torch.Tensor:
    """Pixels that received gradient: the ones the loss averaged over."""
    return logits.grad.abs().sum(1) > 0


def test_ohem_keeps_at_least_min_kept_hardest_pixels() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 6, 8))
    # every pixel confident (p > 0.7): threshold mining alone would drop them all
    p_true = 0.75 + 0.2 * torch.rand(2, 6, 8)
    logits = _logits_with_true_probs(target, p_true)
    loss = ohem_cross_entropy(logits, target, min_kept=10, thresh=0.7)
    loss.backward()
    kept = _kept_pixels(logits)
    assert int(kept.sum()) == 10
    # exactly the 10 least confident pixels, averaged
    hardest = p_true.flatten().argsort()[:10]
    assert set(kept.flatten().nonzero().flatten().tolist()) == set(hardest.tolist())
    assert loss.item() == pytest.approx(float(-p_true.flatten()[hardest].log().mean()), rel=1e-5)


def test_ohem_threshold_drops_easy_pixels_when_enough_are_hard() -> None:
    target = torch.zeros(1, 4, 5, dtype=torch.long)
    p_true = torch.full((1, 4, 5), 0.9)
    p_true[0, 0, :] = 0.3  # 5 hard pixels
    logits = _logits_with_true_probs(target, p_true)
    ohem_cross_entropy(logits, target, min_kept=3, thresh=0.7).backward()
    kept = _kept_pixels(logits)
    assert kept[0, 0].all() and int(kept.sum()) == 5  # all hard ones, none of the easy ones


def test_ohem_ignores_255_and_counts_ignored_pixels_as_certain() -> None:
    torch.manual_seed(1)
    target = torch.randint(0, 4, (2, 5, 5))
    target[:, :2] = 255
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    loss = ohem_cross_entropy(logits, target, min_kept=1000)  # > #valid: plain CE over valid pixels
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)
    loss.backward()
    assert not _kept_pixels(logits)[:, :2].any()
    # changing the logits of ignored pixels changes nothing
    other = logits.detach().clone()
    other[:, :, :2] = 50 * torch.randn(2, 4, 2, 5)
    for k in (1, 5, 1000):
        a = ohem_cross_entropy(logits.detach(), target, min_kept=k)
        b = ohem_cross_entropy(other, target, min_kept=k)
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_ohem_all_ignored_is_zero_with_graph() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = ohem_cross_entropy(logits, torch.full((1, 2, 2), 255), min_kept=1)
    assert loss.item() == 0.0 and loss.requires_grad


def test_ohem_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="resize the labels"):
        ohem_cross_entropy(torch.randn(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long), min_kept=1)


def test_sum_over_heads_weights_each_head() -> None:
    torch.manual_seed(2)
    target = torch.randint(0, 3, (1, 4, 4))
    preds = {n: torch.randn(1, 3, 4, 4) for n in ("a", "b", "c")}
    crit = OhemCrossEntropy(min_kept=100)
    single = [crit(p, target).item() for p in preds.values()]
    assert sum_over_heads(crit, preds, target).item() == pytest.approx(sum(single), rel=1e-6)
    weighted = sum_over_heads(crit, list(preds.values()), target, weights=(1, 0.2, 0.2)).item()
    assert weighted == pytest.approx(single[0] + 0.2 * single[1] + 0.2 * single[2], rel=1e-6)


def test_distillation_kl_zero_for_equal_logits_positive_otherwise() -> None:
    torch.manual_seed(3)
    s = torch.randn(2, 5, 3, 4, requires_grad=True)
    assert distillation_kl(s, s.detach().clone()).item() == 0.0
    t = torch.randn(2, 5, 3, 4)
    kd = distillation_kl(s, t)
    assert kd.item() > 0
    kd.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_distillation_kl_matches_the_original_mean_reduction() -> None:
    torch.manual_seed(4)
    s, t = torch.randn(2, 19, 3, 4), torch.randn(2, 19, 3, 4)
    # the original: KLDivLoss()(log(softmax(s)), softmax(t)) with 'mean' over all N·C·H·W elements
    p_t = torch.softmax(t, 1)
    original = (p_t * (p_t.log() - torch.softmax(s, 1).log())).mean()
    assert distillation_kl(s, t).item() == pytest.approx(original.item(), rel=1e-5)
    batchmean = distillation_kl(s, t, reduction="batchmean").item()
    assert batchmean == pytest.approx(original.item() * 19 * 3 * 4, rel=1e-5)
    # temperature: softmax(x / T), scaled by T²
    hot = distillation_kl(s, t, temperature=2.0).item()
    p2 = torch.softmax(t / 2, 1)
    expected = 4 * (p2 * (p2.log() - torch.log_softmax(s / 2, 1))).mean().item()
    assert hot == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="differ"):
        distillation_kl(s, t[:, :5])


# ---- per-class weights (TrainConfig.class_weighting) ------------------------------------------------------
def test_class_weights_from_pixel_counts() -> None:
    counts = [600, 300, 100, 0]  # shares 0.6, 0.3, 0.1; the last class is absent
    assert class_weights(counts, "none") is None
    # median of the present shares is 0.3; an absent class weighs 1
    torch.testing.assert_close(class_weights(counts, "median_frequency"), torch.tensor([0.5, 1.0, 3.0, 1.0]))
    expected = [1 / math.log(1.02 + p) for p in (0.6, 0.3, 0.1)] + [1.0]
    torch.testing.assert_close(class_weights(counts, "enet"), torch.tensor(expected))
    with pytest.raises(ValueError, match="pixel_counts"):
        class_weights([0, 0], "enet")
    with pytest.raises(ValueError, match="unknown class weighting 'balanced'"):
        class_weights(counts, "balanced")


def test_weighted_ohem_mines_the_same_pixels_and_averages_them_with_weights() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 6, 7))
    target[0, 0, :3] = IGNORE_INDEX
    weight = torch.tensor([0.5, 2.0, 4.0])
    valid = target != IGNORE_INDEX
    # no mining (min_kept above the valid pixels): the weighted mean of the per-pixel cross-entropy
    logits = torch.randn(2, 3, 6, 7)
    per_pixel = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE_INDEX)
    w = weight[target.clamp(max=2)]
    expected = (per_pixel * w)[valid].sum() / w[valid].sum()
    torch.testing.assert_close(ohem_cross_entropy(logits, target, min_kept=10**6, weight=weight), expected)
    # with mining: the weights change the average, never which pixels are kept
    kept = []
    for wt in (None, weight):
        x = logits.clone().requires_grad_(True)
        ohem_cross_entropy(x, target, min_kept=20, thresh=0.7, weight=wt).backward()
        kept.append(x.grad.abs().sum(1) > 0)
    assert torch.equal(kept[0], kept[1]) and 20 <= int(kept[0].sum()) < int(valid.sum())
    ones = ohem_cross_entropy(logits, target, min_kept=20, weight=torch.ones(3))
    torch.testing.assert_close(ones, ohem_cross_entropy(logits, target, min_kept=20))


def test_a_weighted_stage_needs_its_weights_and_records_them(tmp_path) -> None:
    cfg = load_config("smoke", {"student.class_weighting": "median_frequency", "output_root": str(tmp_path)})
    with pytest.raises(ValueError, match="class_weighting: median_frequency needs the training split"):
        training_loss(cfg.student)
    args = ["train", "--profile", "smoke", "--stage", "04_student", "--seed", "12345", "--overrides",
            json.dumps({"student.class_weighting": "median_frequency", "output_root": str(tmp_path)})]
    assert cli_main(args) == 0
    metrics = json.loads((stage_dir(cfg, "04_student", 12345) / "metrics.json").read_text())
    train_set = build_dataset(cfg.data, "train", train=True, crop_hw=tuple(cfg.student.crop_size_hw))
    expected = class_weights(split_summary(train_set)["pixel_counts"], "median_frequency")
    assert metrics["class_weights"] == pytest.approx(expected.tolist())
    assert len(set(metrics["class_weights"])) > 1  # the synthetic scenes' classes are not equally frequent


def test_history_has_a_column_for_every_part_a_loss_declares():
    """engine writes one history.csv column per part in HISTORY_PARTS, read from the losses (issue 27)."""
    from fasterseg_core.losses import HISTORY_PARTS, DistillationLoss, SegmentationLoss

    for loss in (SegmentationLoss, DistillationLoss):
        assert set(loss.parts) <= set(HISTORY_PARTS), loss
    assert HISTORY_PARTS == ("seg_loss", "kd_loss")  # the columns plots.training and the report read
