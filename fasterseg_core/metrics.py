"""Segmentation metrics from one confusion matrix accumulated over a whole split (§9.4).

Count first, derive at the end: ``hist[gt, pred]`` is summed over every valid pixel of every batch (on the
device, with one ``bincount`` per update), and the scores come from it only in :meth:`ConfusionMatrix.compute`:

* ``IoU_c = hist[c, c] / (Σ_p hist[c, p] + Σ_g hist[g, c] − hist[c, c])``, NaN for a class absent from both
  ground truth and prediction;
* ``miou`` = nanmean of IoU over all C classes;
* ``miou_no_back`` = nanmean of IoU over classes 1…C−1 (what the authors' ``compute_score`` returns as
  "mean IU no back"; for Cityscapes it drops road, §9.4);
* ``pixel_acc`` = correct / labelled over all valid pixels ("mean pixel acc" in the authors' logs);
* ``mean_class_acc`` = nanmean over classes of ``hist[c, c] / Σ_p hist[c, p]`` (NaN where a class has no
  ground-truth pixel).

Deviation: the original drops ground-truth values outside ``[0, C)`` silently; here any value other than
the ignore index outside that range raises, since it means the wrong label encoding reached the metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
import torch.distributed as dist

# The scores every table reports, in this order (fractions 0..1; ``compute()`` also gives per-class IoU).
SCORE_KEYS = ("miou", "miou_no_back", "pixel_acc", "mean_class_acc")


class ConfusionMatrix:
    """Accumulates ``hist[gt, pred]`` (int64, C × C) over pixels whose target is not ``ignore_index``.

    Args:
        num_classes: C, the number of evaluated classes (train ids 0…C−1).
        ignore_index: target value excluded from every count.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            pred: predicted class ids, any integer dtype, any shape (e.g. (N, H, W) argmax), values in [0, C).
            target: ground truth of the same shape, values in [0, C) or ``ignore_index``.

        Raises:
            ValueError: shape mismatch, non-integer tensors, or values out of range.
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}; pass class ids "
                "(e.g. logits.argmax(1)), not logits"
            )
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
        if self.mat.device != target.device:
            self.mat = self.mat.to(target.device)
        c = self.num_classes
        target, pred = target.reshape(-1).long(), pred.reshape(-1).to(target.device).long()
        valid = target != self.ignore_index
        t, p = target[valid], pred[valid]
        # One host sync for both range checks; it is what lets a wrong label encoding fail loudly.
        bad = torch.stack([((t < 0) | (t >= c)).any(), ((p < 0) | (p >= c)).any()]).tolist()
        if bad[0]:
            vals = torch.unique(t[(t < 0) | (t >= c)])[:10].tolist()
            raise ValueError(
                f"target holds values {vals} outside 0..{c - 1} and the ignore index {self.ignore_index}; "
                "map labels to train ids first"
            )
        if bad[1]:
            vals = torch.unique(p[(p < 0) | (p >= c)])[:10].tolist()
            raise ValueError(f"pred holds values {vals} outside 0..{c - 1}; pass argmax class ids")
        self.mat += torch.bincount(t * c + p, minlength=c * c).reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another evaluation shard); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.mat += other.mat.to(self.mat.device)
        return self

    def reset(self) -> None:
        """Zero the counts."""
        self.mat.zero_()

    def all_reduce(self) -> None:
        """Sum the counts over all processes when ``torch.distributed`` is initialised (no-op otherwise).

        With the NCCL backend the matrix must already live on this process's GPU (call after an update).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, float | list[float]]:
        """Scores from the accumulated counts (definitions in the module docstring).

        Returns:
            ``{"miou", "miou_no_back", "pixel_acc", "mean_class_acc"}`` as floats in [0, 1] (NaN when no
            class qualifies), ``"iou"`` and ``"class_acc"`` as per-class lists (NaN where undefined), and
            ``"pixels"``, the number of valid pixels counted.
        """
        h = self.mat.double().cpu()
        tp, gt, pr = h.diagonal(), h.sum(1), h.sum(0)
        union = gt + pr - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        class_acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = h.sum()
        return {
            "miou": _nanmean(iou),
            "miou_no_back": _nanmean(iou[1:]),
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_class_acc": _nanmean(class_acc),
            "iou": iou.tolist(),
            "class_acc": class_acc.tolist(),
            "pixels": int(total),
        }

    def to_frame(self, class_names: Sequence[str]) -> pd.DataFrame:
        """Per-class table: IoU, accuracy (recall), ground-truth and predicted pixel counts, indexed by name."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"got {len(class_names)} class names for {self.num_classes} classes")
        scores = self.compute()
        h = self.mat.cpu()
        return pd.DataFrame(
            {
                "iou": scores["iou"],
                "acc": scores["class_acc"],
                "gt_pixels": h.sum(1).tolist(),
                "pred_pixels": h.sum(0).tolist(),
            },
            index=pd.Index(list(class_names), name="class"),
        )

    def __repr__(self) -> str:
        s = self.compute()
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, pixels={s['pixels']}, miou={s['miou']:.4f}, "
            f"pixel_acc={s['pixel_acc']:.4f})"
        )


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def format_scores(scores: dict, frame: pd.DataFrame) -> str:
    """The scores of :meth:`ConfusionMatrix.compute` and its per-class frame as a plain-text report."""
    pct = frame.copy()
    for col in ("iou", "acc"):
        pct[col] = pct[col] * 100
    pct = pct.rename(columns={"iou": "IoU %", "acc": "acc %"})
    lines = [
        f"mIoU            {scores['miou'] * 100:6.2f} %",
        f"mIoU no back    {scores['miou_no_back'] * 100:6.2f} %   (classes 1…C-1, the authors' 'mean IU no back')",
        f"pixel acc       {scores['pixel_acc'] * 100:6.2f} %",
        f"mean class acc  {scores['mean_class_acc'] * 100:6.2f} %",
        f"pixels          {scores['pixels']}",
        "",
        pct.to_string(float_format=lambda v: f"{v:6.2f}"),
    ]
    return "\n".join(lines)
