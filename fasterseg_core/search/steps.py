"""One step of the search (method §3.2–§3.4): the passes, the architecture step, the weight step, and the
per-epoch evaluation of the supernet's five heads.

Symbols: α (operator logits per cell), β (input choice of two-input cells), γ (width logits per feature
row); architecture index k = 0 teacher, 1 student (they share every cell weight).

Pretraining sums four passes of index 0 with the sandwich rule (widths all max, all min, two random
draws). A search iteration is (1) an architecture step on an arch-half batch: four passes (teacher max,
student Gumbel, student max, student min; OHEM summed over the five heads) plus λ·latency for the student,
one Adam per index; (2) **all** gradients zeroed (the May-2021 fix), the same loss on a weight-half batch,
gradient clipping, SGD.

Under ``torchrun`` (``info`` of a group of several) each rank runs both steps on its slice of the global
batch and the gradients are averaged over the ranks before the optimisers step: the architecture step's
α/β/γ gradients (the data part; the latency term is the same on every rank), the weight step's before
clipping, so every rank clips and steps identically.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..distributed import DistInfo, average_gradients
from ..losses import OhemCrossEntropy, sum_over_heads
from ..metrics import ConfusionMatrix
from ..models.supernet import HEAD_NAMES, Supernet
from .data import labels_at, pad_for_supernet
from .objective import SupernetLatency

# §3.2: the passes whose losses are summed for one step, as (architecture index, width mode).
PRETRAIN_PASSES = ((0, "max"), (0, "min"), (0, "random"), (0, "random"))  # sandwich rule
SEARCH_PASSES = ((0, "max"), (1, "gumbel"), (1, "max"), (1, "min"))
# search.pretrain_student (a deviation, opt-in): the student's stem and decoder train from the start too
PRETRAIN_STUDENT_PASS = (1, "random")


def pretrain_passes(pretrain_student: bool) -> tuple[tuple[int, str], ...]:
    """The passes of one pretraining iteration: §3.2's sandwich rule on the teacher index, plus one student
    pass at random widths with ``search.pretrain_student``."""
    return PRETRAIN_PASSES + ((PRETRAIN_STUDENT_PASS,) if pretrain_student else ())


# How each index is evaluated after a search epoch: the teacher at full width, the student at the widths
# derivation keeps (argmax γ, §4.3).
EVAL_WIDTHS = {0: "max", 1: "argmax"}


def train_path(path_sampling: bool) -> str:
    """The supernet path mode of the training passes: "sample" with ``search.path_sampling``, else "mix"."""
    return "sample" if path_sampling else "mix"


def eval_path(path: str) -> str:
    """Evaluation runs the mixture (the paper) or, for a sampled search, the most likely path."""
    return "argmax" if path == "sample" else "mix"


def supernet_loss_backward(net: Supernet, images: torch.Tensor, labels: torch.Tensor, criterion: OhemCrossEntropy,
                           passes: Iterable[tuple[int, str]], *, inputs: Sequence[torch.Tensor],
                           generator: torch.Generator | None = None, path: str = "mix") -> float:
    """Σ over ``passes`` of the OHEM loss summed over the five heads (§3.2), backpropagated into ``inputs``.

    Each pass is backpropagated as soon as it is computed (gradients accumulate, so the result equals one
    backward of the sum while only one pass's activations are held in memory). Only ``inputs`` receive
    gradient: the architecture step never computes weight gradients and vice versa.

    Args:
        images: (N, 3, H, W) float crops; labels: (N, H, W) int64 at crop size (resized to the logits here).
        passes: (architecture index, width mode) per forward pass.
        path: the supernet's path mode, "mix" (the paper) or "sample" (``search.path_sampling``).

    Returns:
        The summed loss (a float).
    """
    total = 0.0
    target = None
    for arch_idx, mode in passes:
        heads = net(images, arch_idx, mode, generator=generator, path=path)["heads"]
        if target is None:
            target = labels_at(labels, next(iter(heads.values())).shape[-2:])
        loss = sum_over_heads(criterion, heads, target)
        loss.backward(inputs=list(inputs))
        total += float(loss.detach())
    return total


def arch_step(net: Supernet, images: torch.Tensor, labels: torch.Tensor, criterion: OhemCrossEntropy,
              arch_optimizers: Sequence[torch.optim.Optimizer], latency: SupernetLatency | None, lam: float, *,
              latency_scale: float = 1.0, generator: torch.Generator | None = None,
              path: str = "mix", info: DistInfo | None = None) -> dict[str, float]:
    """One first-order architecture update (§3.4 step 1) on an arch-half batch.

    Loss = the four search passes + ``lam · latency_scale · latency`` (student only; λ_teacher = 0, §3.3).
    ``info``: the process group; the passes' α/β/γ gradients are averaged over its ranks.

    Returns:
        ``{"loss": CE part, "latency": decoupled latency (ms), "lat_alpha"/"lat_beta"/"lat_gamma": terms}``.
    """
    for opt in arch_optimizers:
        opt.zero_grad(set_to_none=True)
    arch_params = net.arch_parameters()
    out = {"loss": supernet_loss_backward(net, images, labels, criterion, SEARCH_PASSES, inputs=arch_params,
                                          generator=generator, path=path)}
    if info is not None:
        average_gradients(arch_params, info)
    if latency is not None:
        lat, terms = latency(generator)
        if lam > 0:
            (lam * latency_scale * lat).backward(inputs=net.arch_parameters(latency.arch_idx))
        out.update(latency=float(lat.detach()), **{f"lat_{k}": v for k, v in terms.items()})
    for opt in arch_optimizers:
        opt.step()
    return out


def weight_step(net: Supernet, images: torch.Tensor, labels: torch.Tensor, criterion: OhemCrossEntropy,
                optimizer: torch.optim.Optimizer, passes: Iterable[tuple[int, str]], *, clip_norm: float,
                generator: torch.Generator | None = None, path: str = "mix",
                info: DistInfo | None = None) -> float:
    """One weight update (§3.4 step 2): zero **all** gradients, loss, backward, clip, SGD. Returns the loss
    (this rank's). ``info``: the process group; the gradients are averaged over its ranks before clipping.

    With ``path="sample"`` the operators no pass ran keep ``grad = None`` and SGD leaves them (and their
    momentum and weight decay) untouched this step, as in single-path supernet training.
    """
    # The May-2021 fix: without zeroing every parameter's gradient here, gradients the architecture step
    # left on the weights leak into this SGD step. (Our arch step computes none, but the rule stays explicit.)
    net.zero_grad(set_to_none=True)
    weights = net.weight_parameters()
    loss = supernet_loss_backward(net, images, labels, criterion, passes, inputs=weights, generator=generator,
                                  path=path)
    if info is not None:
        average_gradients(weights, info)
    nn.utils.clip_grad_norm_(weights, clip_norm)  # "all model parameters": the arch grads are None here
    optimizer.step()
    return loss


@torch.no_grad()
def evaluate_heads(net: Supernet, loader: Iterable, arch_idx: int, width_mode: str, device: torch.device,
                   path: str = "mix") -> dict[str, ConfusionMatrix]:
    """Confusion matrix of each of the five heads of one index over a whole split (eval mode, §3.5).

    ``path``: "mix" (the paper) or "argmax" (the most likely operator and input; a sampled search).
    Images are zero-padded to supernet-compatible sides and the logits cropped back to the label size.
    """
    was_training = net.training
    net.eval()
    cms = {name: ConfusionMatrix(net.num_classes) for name in HEAD_NAMES}
    try:
        for images, labels in loader:
            h, w = images.shape[-2:]
            heads = net(pad_for_supernet(images.to(device)), arch_idx, width_mode, path=path)["heads"]
            labels = labels.to(device)
            for name, logits in heads.items():
                cms[name].update(logits[..., :h, :w].argmax(1), labels)
    finally:
        net.train(was_training)
    return cms
