"""How much a faster backend changes the answer: argmax agreement and mIoU change against fp32 eager.

Low-precision paths (bf16, fp16, int8) and other runtimes are only worth their speed if they predict the
same classes. :func:`agreement` runs a reference and a candidate :class:`~.backends.Prepared` on the same
real images and reports the fraction of pixels whose argmax class agrees and, when labels are given, the
mIoU of each (so the change is visible once a trained model exists).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..metrics import ConfusionMatrix
from .backends import Prepared


def agreement(
    reference: Prepared,
    candidate: Prepared,
    images: Iterable[torch.Tensor],
    labels: Iterable[torch.Tensor] | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Compare two prepared backends on the same inputs.

    Args:
        reference: usually fp32 eager.
        candidate: the backend under test.
        images: (1, 3, H, W) float32 normalised images, of the shape both were prepared with.
        labels: optional (1, H, W) int64 labels with 255 ignored, aligned with ``images``.
        num_classes: classes of the network (needed with labels).

    Returns:
        ``pixel_agreement`` in [0, 1], ``images``, ``logit_rel_error`` (‖candidate − reference‖ /
        ‖reference‖ over all logits), ``reference_classes`` (distinct classes the reference predicts); with
        labels also ``miou_reference``, ``miou_candidate``
        and ``miou_change`` (candidate − reference, fractions).
    """
    if reference.forward is None or candidate.forward is None:
        raise ValueError("both backends must support forward(x) on new inputs")
    same = total = n = 0
    err_sq = ref_sq = 0.0
    classes: set[int] = set()
    cms = None
    label_iter = iter(labels) if labels is not None else None
    for x in images:
        ya, yb = reference.forward(x), candidate.forward(x)
        err_sq += float((yb - ya).pow(2).sum())
        ref_sq += float(ya.pow(2).sum())
        a, b = ya.argmax(1), yb.argmax(1)
        classes.update(a.unique().tolist())
        same += int((a == b).sum())
        total += a.numel()
        n += 1
        if label_iter is not None:
            if num_classes is None:
                raise ValueError("num_classes is required with labels")
            y = next(label_iter)
            cms = cms or (ConfusionMatrix(num_classes), ConfusionMatrix(num_classes))
            cms[0].update(a, y)
            cms[1].update(b, y)
    if n == 0:
        raise ValueError("agreement needs at least one image")
    out = {
        "pixel_agreement": same / total,
        "images": float(n),
        "logit_rel_error": (err_sq / max(ref_sq, 1e-30)) ** 0.5,
        # Untrained networks often predict one or two classes everywhere; then agreement is trivially
        # high, and this count says so.
        "reference_classes": float(len(classes)),
    }
    if cms is not None:
        ref, cand = cms[0].compute()["miou"], cms[1].compute()["miou"]
        out.update(miou_reference=ref, miou_candidate=cand, miou_change=cand - ref)
    return out
