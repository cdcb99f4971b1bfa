"""Segmentation and distillation losses of FasterSeg: OHEM cross-entropy and the KL distillation term.

Method: ``docs/method.md`` §9.3 (written from the method, in place of the authors' ``ProbOhemCrossEntropy2d`` and the
``KLDivLoss`` of ``train/train.py``) and §3.2 (the search's loss, summed over all supernet heads).

* :func:`ohem_cross_entropy` — online hard example mining: cross-entropy averaged over the pixels the
  network is least sure of (probability of the true class ≤ a threshold), keeping at least ``min_kept``.
* :func:`sum_over_heads` — Σ_h w_h · criterion(pred_h, target): the search sums all five supernet heads
  with weight 1 (§3.2); training weights the aux heads 0.2 (§9.3).
* :func:`distillation_kl` — KL(softmax(t) ‖ softmax(s)) with the original's ``'mean'`` reduction.
* :func:`ohem_min_kept` — how many pixels OHEM keeps at least, for training and for the search.
* :class:`SegmentationLoss` and :class:`DistillationLoss` — the training stages' objectives (§9.3): OHEM on
  ``out`` plus 0.2 × each aux head, and for the distilled student that plus the KL term against a frozen
  teacher. The training loop takes either; distillation is a loss, not a mode of the loop.

Every loss takes logits (N, C, H, W) float and labels (N, H, W) int64 holding class ids 0…C−1 and the
ignore index (255) at the same resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.labels import IGNORE_INDEX  # one definition: the label maps set it

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(
            f"expected logits (N, C, H, W) and target (N, H, W); got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree in batch or size; "
            "resize the labels to the logits (nearest) or the logits to the labels first"
        )
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    min_kept: int,
    thresh: float = 0.7,
    ignore_index: int = IGNORE_INDEX,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the hard pixels (§9.3, the authors' ``ProbOhemCrossEntropy2d``).

    Algorithm: softmax probabilities; each valid pixel's probability of its label (ignored pixels count
    as probability 1); sort ascending; ``t`` = the value at rank ``min(N, min_kept) − 1`` (N = all pixels,
    ignored included); threshold = ``max(thresh, t)``; pixels with probability > threshold are ignored;
    mean cross-entropy over the rest. When ``min_kept`` exceeds the number of valid pixels no mining is
    done (plain mean CE over the valid pixels). Because pixels *equal* to the threshold are kept, at least
    ``min(min_kept, #valid)`` pixels always contribute.

    Args:
        logits: (N, C, H, W) float.
        target: (N, H, W) int64, class ids in [0, C) or ``ignore_index``.
        min_kept: the minimum number of pixels kept (e.g. ``batch·H·W // 16`` in training, §9.3).
        thresh: probability threshold (0.7 in the paper).
        ignore_index: label excluded from the loss.
        weight: (C,) float per-class weights (:func:`class_weights`), or None (§9.3: all 1). Mining is
            unchanged; the kept pixels' cross-entropy is then averaged with weights (``Σ w_y·ℓ / Σ w_y``).

    Returns:
        A scalar tensor. Deviation: when every pixel is ignored it is ``0`` (connected to the graph)
        instead of PyTorch's NaN, so one empty crop cannot poison a run. ``min_kept <= 0`` mines with
        ``thresh`` alone (the original would index rank −1, i.e. keep every pixel).
    """
    _check_pair(logits, target)
    target = target.long()
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0:
        return logits.sum() * 0.0
    if min_kept <= num_valid:
        with torch.no_grad():  # mining decides which pixels count; it is not differentiated
            prob = torch.softmax(logits.float(), dim=1)
            safe_target = torch.where(valid, target, torch.zeros_like(target))
            true_prob = prob.gather(1, safe_target[:, None]).squeeze(1)
            true_prob = torch.where(valid, true_prob, torch.ones_like(true_prob))
            threshold = thresh
            if min_kept > 0:
                flat = true_prob.flatten()
                k = min(flat.numel(), min_kept)
                kth = torch.kthvalue(flat, k).values  # = sorted ascending [k − 1]
                threshold = max(thresh, float(kth))
            target = torch.where(true_prob > threshold, torch.full_like(target, ignore_index), target)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def class_weights(pixel_counts: Sequence[int], method: str) -> torch.Tensor | None:
    """Per-class loss weights from a training split's pixel count per class (``TrainConfig.class_weighting``).

    Args:
        pixel_counts: (C,) labelled pixels per class (``data.stats.split_summary(...)["pixel_counts"]``).
        method: ``"none"`` (returns None: §9.3), ``"median_frequency"`` (median(p) / p_c over the classes
            present) or ``"enet"`` (1 / ln(1.02 + p_c)), with p_c = the class's share of labelled pixels.

    Returns:
        (C,) float32, or None. A class absent from the split weighs 1: it has no pixel to weigh, and a finite
        value keeps the loss defined should it appear.
    """
    if method == "none":
        return None
    counts = torch.as_tensor(list(pixel_counts), dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() == 0 or bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError(f"pixel_counts must be non-negative per-class counts with some pixels, got {pixel_counts!r}")
    share = counts / counts.sum()
    present = share > 0
    if method == "median_frequency":
        weights = share[present].median() / share.clamp_min(1e-12)
    elif method == "enet":
        weights = 1.0 / torch.log(1.02 + share)
    else:
        raise ValueError(f"unknown class weighting {method!r}; use 'none', 'median_frequency' or 'enet'")
    return torch.where(present, weights, torch.ones_like(weights)).float()


class OhemCrossEntropy:
    """:func:`ohem_cross_entropy` with fixed settings, usable as a ``criterion(logits, target)``.

    Args:
        min_kept: minimum number of pixels kept per call.
        thresh: probability threshold (0.7).
        ignore_index: label excluded from the loss (255).
        weight: (C,) per-class weights on the logits' device, or None (all 1).
    """

    def __init__(self, min_kept: int, thresh: float = 0.7, ignore_index: int = IGNORE_INDEX,
                 weight: torch.Tensor | None = None) -> None:
        self.min_kept, self.thresh, self.ignore_index = int(min_kept), float(thresh), int(ignore_index)
        self.weight = weight

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(
            logits, target, min_kept=self.min_kept, thresh=self.thresh, ignore_index=self.ignore_index,
            weight=self.weight,
        )

    def __repr__(self) -> str:
        return f"OhemCrossEntropy(min_kept={self.min_kept}, thresh={self.thresh}, ignore={self.ignore_index})"


def sum_over_heads(
    criterion: Criterion,
    predictions: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    target: torch.Tensor,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Σ_h w_h · criterion(pred_h, target) over several heads' logits.

    Args:
        criterion: e.g. :class:`OhemCrossEntropy`.
        predictions: logits (N, C, H, W) per head, all at the target's resolution; a dict (the supernet's
            ``"heads"``) is taken in its order.
        target: (N, H, W) int64 labels.
        weights: one weight per head; default 1 each (the search, §3.2). Training uses (1, 0.2, 0.2)
            for ``out`` and the two aux heads (§9.3).
    """
    preds = list(predictions.values()) if isinstance(predictions, Mapping) else list(predictions)
    if not preds:
        raise ValueError("no predictions to sum the loss over")
    if weights is None:
        weights = [1.0] * len(preds)
    if len(weights) != len(preds):
        raise ValueError(f"{len(weights)} weights for {len(preds)} heads")
    total = weights[0] * criterion(preds[0], target)
    for w, p in zip(weights[1:], preds[1:]):
        total = total + w * criterion(p, target)
    return total


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Distillation term of §9.3: ``KLDivLoss(reduction)(log softmax(s/T), softmax(t/T)) · T²``.

    With the paper's settings (T = 1, ``reduction="mean"``) this is the original's
    ``KLDivLoss()(log(softmax(s)), softmax(t))``: Σ p_t (log p_t − log p_s) averaged over **all**
    N·C·H·W elements, i.e. the per-pixel KL divided by C (§12.1-12: switching to ``"batchmean"``, the sum
    divided by N, multiplies the effective distillation weight by C·H·W).

    Args:
        student_logits: (N, C, H, W) float, with gradient.
        teacher_logits: (N, C, H, W) float; detached here (the teacher is frozen).
        temperature: softmax temperature T; the loss is multiplied by T² so gradients keep their scale
            (Hinton et al.); 1 in the paper, where the factor is 1.
        reduction: ``"mean"`` (over all elements, the paper) or ``"batchmean"`` (sum / N, the true KL
            per image summed over pixels).

    Returns:
        A scalar; exactly 0 when the two logits are equal.

    Deviation: ``log_softmax`` replaces ``log(softmax)`` (equal wherever the latter is finite; it avoids
    −inf when a probability underflows in float32).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; both must be (N, C, H, W) at the same resolution"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if reduction not in ("mean", "batchmean"):
        raise ValueError(f"reduction must be 'mean' or 'batchmean', got {reduction!r}")
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    # log_target: p_t·(log p_t − log p_s) from the same log-probabilities, so equal logits give exactly 0.
    # Reduced by hand: PyTorch announces that kl_div's 'mean' will change meaning to 'batchmean'.
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True)
    kl = kl.mean() if reduction == "mean" else kl.sum() / student_logits.shape[0]
    return kl * temperature**2


def ohem_min_kept(batch_size: int, crop_hw: Sequence[int], loss_stride: int = 1) -> int:
    """1/16 of the pixels the loss sees: ``batch · H · W // (16 · loss_stride²)``.

    Training computes its loss at the crop's resolution (``loss_stride`` 1: 393,216 for 12 × 512 × 1024,
    §9.3); the search at the supernet's 1/8 resolution (``loss_stride`` 8, §3.2).
    """
    return batch_size * int(crop_hw[0]) * int(crop_hw[1]) // (16 * loss_stride * loss_stride)


class SegmentationLoss:
    """§9.3: ``OHEM(out) + aux_weight · Σ OHEM(aux)`` on fp32 logits at the labels' resolution.

    Args:
        min_kept: OHEM's minimum of kept pixels per (per-process) batch (:func:`ohem_min_kept`).
        thresh: OHEM's probability threshold.
        aux_weight: weight of each auxiliary head (0.2).
        class_weight: (C,) per-class weights of the cross-entropy (:func:`class_weights`), or None.
    """

    parts = ("seg_loss",)  # what __call__ reports beside the total (history.csv columns)

    def __init__(self, min_kept: int, thresh: float, aux_weight: float,
                 class_weight: torch.Tensor | None = None) -> None:
        self.criterion = OhemCrossEntropy(min_kept, thresh, weight=class_weight)
        self.aux_weight = aux_weight

    def __call__(self, outputs: Mapping[str, Any], target: torch.Tensor, images: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch.

        Args:
            outputs: the network's ``{"out": (N, C, H, W), "aux": [(N, C, H, W), …]}``.
            target: (N, H, W) int64 labels.
            images: (N, 3, H, W), the network's input (unused here; distillation feeds it to the teacher).

        Returns:
            (total loss, {"seg_loss": the same}).
        """
        heads = [outputs["out"], *outputs["aux"]]
        weights = [1.0] + [self.aux_weight] * (len(heads) - 1)
        seg = sum_over_heads(self.criterion, [h.float() for h in heads], target, weights)
        return seg, {"seg_loss": seg}


class DistillationLoss:
    """§9.3 for the distilled student: the segmentation loss plus ``weight · KL(t ‖ s)`` of ``out``.

    Args:
        segmentation: the student's :class:`SegmentationLoss`.
        teacher: the frozen teacher (eval mode, no gradients, on the images' device and layout).
        weight, temperature, reduction: the KL term (:func:`distillation_kl`).
        amp_dtype: the autocast dtype the student runs in (``None``: fp32); the teacher runs in the same.
    """

    parts = ("seg_loss", "kd_loss")

    def __init__(self, segmentation: SegmentationLoss, teacher: nn.Module, weight: float, temperature: float,
                 reduction: str, amp_dtype: torch.dtype | None = None) -> None:
        self.segmentation, self.teacher = segmentation, teacher
        self.weight, self.temperature, self.reduction, self.amp_dtype = weight, temperature, reduction, amp_dtype

    def __call__(self, outputs: Mapping[str, Any], target: torch.Tensor, images: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch: (total, {"seg_loss", "kd_loss"}); shapes as :class:`SegmentationLoss`."""
        with torch.no_grad(), torch.autocast(images.device.type, dtype=self.amp_dtype,
                                             enabled=self.amp_dtype is not None):
            t_out = self.teacher(images)["out"]
        seg, parts = self.segmentation(outputs, target, images)
        kd = self.weight * distillation_kl(outputs["out"].float(), t_out.float(), temperature=self.temperature,
                                           reduction=self.reduction)
        return seg + kd, parts | {"kd_loss": kd}


# every loss part history.csv has a column for: one column set for every stage (NaN where a stage's loss lacks
# the part, e.g. kd_loss without a teacher), read from the losses' declared parts
HISTORY_PARTS: tuple[str, ...] = tuple(dict.fromkeys(SegmentationLoss.parts + DistillationLoss.parts))
