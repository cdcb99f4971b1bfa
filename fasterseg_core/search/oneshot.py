"""One-shot scores: how well the supernet's shared weights do for one architecture, with no training of its own.

Issue 28 (5) asks whether the supernet ranks networks as stand-alone training does (Kendall τ between the two).
An architecture is given as the student's α/β/γ (a search's own, or a random draw's from :mod:`.random_arch`)
and the second branch's end scale. Its one-shot score:

1. the supernet's student index takes those α/β/γ (:meth:`~fasterseg_core.models.supernet.Supernet.load_arch_state`);
2. **batch norm is recalibrated** on that fixed path: every running mean and variance is reset and recomputed as
   the plain average over a fixed set of training crops, in train mode, without gradients. The shared running
   statistics average over every path and width the supernet was trained with; one path's activations have
   others (the calibration step of slimmable networks, Yu & Huang 2019, and of single-path one-shot NAS, Guo et
   al. 2020). Every architecture is calibrated on the same crops;
3. the five heads are evaluated on val at argmax paths and widths, as the search scores its own candidate after
   every epoch (:func:`.steps.evaluate_heads`, method §3.5), and the score is the head that reads the network's
   branches: ``8s_32s`` for ends [2, 0], ``16s_32s`` for [2, 1] (§3.5, :data:`.derivation.BRANCH_HEADS`).

The supernet leaves :func:`oneshot_scores` as it came in: its weights are never touched, and the running statistics
and the student's α/β/γ are put back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..models.derive import ROLE_INDEX
from ..models.supernet import Supernet
from .data import pad_for_supernet
from .derivation import BRANCH_HEADS
from .steps import evaluate_heads

STUDENT = ROLE_INDEX["student"]  # the supernet's architecture index that is scored


@dataclass(frozen=True)
class OneShot:
    """One architecture's one-shot result: the deciding head's val mIoU, that head, and all five."""

    miou: float
    head: str
    heads: dict[str, float]


def branch_head(lasts: Sequence[int]) -> str:
    """The supernet head that reads a network with these branch ends (§3.5): (2, 0) → 8s_32s, (2, 1) → 16s_32s."""
    return BRANCH_HEADS["02" if lasts[1] == 0 else "12"]


@torch.no_grad()
def recalibrate_batch_norm(net: Supernet, crops: Iterable[torch.Tensor], device: torch.device | str,
                           arch_idx: int = STUDENT, width_mode: str = "argmax", path: str = "argmax") -> int:
    """Reset every batch norm's running statistics and recompute them as the mean over ``crops`` (each
    ``(N, 3, H, W)``) on one fixed path; returns the number of batches seen. Leaves the net in eval mode."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    net.train()
    seen = 0
    try:
        for images in crops:
            net(pad_for_supernet(images.to(device)), arch_idx, width_mode, path=path)
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.eval()
    if seen == 0:
        raise ValueError("batch norm recalibration needs at least one batch of training crops")
    return seen


def oneshot_scores(net: Supernet, archs: Mapping[str, tuple[Mapping[str, torch.Tensor], Sequence[int]]],
                   crops: Sequence[torch.Tensor], val_loader: Iterable, device: torch.device | str
                   ) -> dict[str, OneShot]:
    """The one-shot val mIoU of each architecture (module docstring).

    Args:
        net: the trained supernet (its student index is scored).
        archs: name → (the student's eight α/β/γ tensors as :meth:`Supernet.arch_state` names them, the
            network's branch ends, e.g. ``(2, 1)``).
        crops: training crops ``(N, 3, H, W)`` for the recalibration, the same for every architecture.
        val_loader: batches ``(images (N, 3, H, W), labels (N, H, W))`` of the validation split.
        device: where the supernet lives.
    """
    # only the running statistics and the student's α/β/γ change here: kept once, put back at the end (every
    # architecture's recalibration starts by resetting the statistics, so none needs them back in between)
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    arch_before = net.arch_state(STUDENT)
    was_training = net.training
    out: dict[str, OneShot] = {}
    try:
        for name, (state, lasts) in archs.items():
            net.load_arch_state(dict(state))
            recalibrate_batch_norm(net, crops, device)
            cms = evaluate_heads(net, val_loader, STUDENT, "argmax", torch.device(device), "argmax")
            heads = {h: float(cm.compute()["miou"]) for h, cm in cms.items()}
            head = branch_head(lasts)
            out[name] = OneShot(miou=heads[head], head=head, heads=heads)
    finally:
        with torch.no_grad():
            for n, b in net.named_buffers():
                b.copy_(buffers[n])
        net.load_arch_state(arch_before)
        net.train(was_training)
    return out
