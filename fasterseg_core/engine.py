"""The training loop of the three training stages (method §9): ``train_one_epoch``, ``evaluate``, ``fit``.

The recipe is the paper's (§9.1–§9.3): iteration-based epochs, SGD (lr 0.01, momentum 0.9, weight decay
5e-4 on every parameter), lr × 0.992 after every epoch (``lr_schedule: exponential``; a profile may choose a
per-iteration ``poly`` or ``cosine`` schedule with linear warm-up instead, see :func:`lr_schedule`), and a loss
function passed in: OHEM on ``out`` plus
0.2 × each aux head (:class:`~fasterseg_core.losses.SegmentationLoss`), for the distilled student that plus
the KL term against a frozen teacher (:class:`~fasterseg_core.losses.DistillationLoss`). What ``fit`` adds:

* **Resumable runs.** After every epoch ``checkpoints/last.pt`` (:mod:`fasterseg_core.checkpoints`) is
  written atomically; calling :func:`fit` again continues after the last completed epoch. ``last.pt`` is the
  commit point: a new best is written to ``best.next.pt`` first and published as ``best.pt`` only after the
  ``last.pt`` that records it, so no fault leaves a ``best.pt`` from an epoch ``last.pt`` does not know. Each epoch's
  samples come from :mod:`fasterseg_core.data.sampling`, seeded by (seed, epoch, rank), so a resumed run
  reproduces an uninterrupted one exactly (CPU, same threads).
* **Divergence guard.** A NaN/inf loss, or an epoch whose mean loss exceeds ``divergence_factor`` (10) ×
  the best epoch mean so far, raises :class:`TrainingDiverged` naming the epoch and iteration; the last
  good checkpoint stays on disk (the diverged epoch is never saved).
* **Distributed data parallel** under ``torchrun`` (:mod:`fasterseg_core.distributed`): every rank draws
  the same global sample order and takes its slice of each global batch, so N processes of batch B/N
  compute the gradient of one process on batch B (up to batch-norm statistics, per rank unless
  ``sync_bn``); metrics are all-reduced; rank 0 logs and writes checkpoints.
* **Live curves**: each iteration's losses and lr, each epoch's history row, as TensorBoard scalars in
  ``out_dir/tensorboard/`` (:mod:`fasterseg_core.scalars`; ``history.csv`` stays the record).
* Mixed precision (bf16/fp16 autocast) and ``channels_last`` as options (the paper trained fp32 NCHW).

    result = fit(spec, net, loss_fn, train_set, val_set, device, run.dir, key=identity)
"""

# Length (~455 lines, at the house limit of ~450) on purpose: the three functions of the loop and the
# helpers fit calls (resume, divergence, schedule, evaluation due) belong to one read, top to bottom.

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .checkpoints import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import DistillConfig, TrainConfig
from .data.sampling import epoch_loader
from .distributed import (
    DistInfo,
    barrier,
    broadcast_buffers,
    current_dist,
    mean_over_ranks,
    rank_world,
    unwrap,
    with_sync_bn,
    wrap,
)
from .losses import HISTORY_PARTS, DistillationLoss, SegmentationLoss, ohem_min_kept
from .machine import resolve_amp
from .metrics import SCORE_KEYS, ConfusionMatrix
from .predictions import predict_logits
from .progress import bar as progress_bar
from .scalars import Scalars, iteration_tags, training_tags

_log = logging.getLogger(__name__)

LossFn = Callable[[dict[str, Any], torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`fit` returns: per-epoch history, best/last epochs and scores, timing."""

    history: list[dict[str, Any]]
    best: dict[str, Any]
    last_epoch: int
    seconds_total: float
    resumed_from: int
    checkpoint_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


def compiled(module: nn.Module) -> nn.Module:
    """``torch.compile`` (inductor, default mode) of a module; its parameters stay the module's own.

    Deviation (``train.compile``): the paper trained eagerly. Shapes are fixed (one crop size, one batch), so
    one graph serves the whole run; evaluation, at whole-image sizes, stays eager.
    """
    return torch.compile(module)


def freeze(module: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """A frozen network for distillation (§9.3): on ``device``, eval-mode batch norm, no gradients, and the
    training images' memory layout (so no per-layer reorders)."""
    module = module.to(device).eval()
    module.requires_grad_(False)
    return module.to(memory_format=torch.channels_last) if channels_last else module


def training_loss(spec: TrainConfig, teacher: nn.Module | None = None, device: torch.device | str = "cpu",
                  world: int = 1, class_weight: torch.Tensor | None = None) -> LossFn:
    """The stage's objective (§9.3): the segmentation loss, plus the KL term when a teacher is given.

    Args:
        spec: the stage's section; a :class:`~fasterseg_core.config.DistillConfig` when ``teacher`` is given.
        teacher: the distillation teacher (frozen here on ``device``, in the training layout), or None.
        world: processes in the group (OHEM's ``min_kept`` is per process batch).
        class_weight: (C,) per-class weights of the segmentation loss (``spec.class_weighting``, computed by
            :func:`~fasterseg_core.losses.class_weights` from the training split), or None.
    """
    if class_weight is None and spec.class_weighting != "none":
        raise ValueError(f"class_weighting: {spec.class_weighting} needs the training split's class weights; "
                         "pass class_weight=losses.class_weights(pixel_counts, spec.class_weighting)")
    weight = None if class_weight is None else class_weight.to(device)
    seg = SegmentationLoss(ohem_min_kept(spec.batch_size // world, spec.crop_size_hw), spec.ohem_thresh,
                           spec.aux_weight, weight)
    if teacher is None:
        return seg
    if not isinstance(spec, DistillConfig):
        raise TypeError(f"a teacher needs the distill section's settings, got {type(spec).__name__}")
    frozen = freeze(teacher, torch.device(device), spec.channels_last)
    fast = spec.compile and spec.compile_teacher
    dtype = AMP_DTYPES[resolve_amp(spec.amp, torch.device(device))]
    return DistillationLoss(seg, compiled(frozen) if fast else frozen, spec.kd_weight, spec.kd_temperature,
                            spec.kd_reduction, dtype)


# ---- one epoch -----------------------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, loader: Iterable,
                    device: torch.device, spec: TrainConfig, *, scaler: torch.amp.GradScaler, num_classes: int,
                    epoch: int, where: str = "", bar: Any = None, ceiling: float = math.inf,
                    per_iteration: Any = None, scalars: Scalars | None = None
                    ) -> tuple[dict[str, float], ConfusionMatrix]:
    """One epoch of SGD over ``loader``.

    Args:
        model: the network (DDP-wrapped under torchrun), in train mode.
        loss_fn: (outputs, labels (N, H, W) int64, images (N, 3, H, W)) → (loss, {"seg_loss", ["kd_loss"]}).
        loader: batches of (images (N, 3, H, W) float32, labels (N, H, W) int64).
        spec: the stage's section (channels_last, amp, iters_per_epoch).
        scaler: the fp16 gradient scaler (a no-op for fp32/bf16).
        num_classes: for the running training confusion matrix.
        where: the run folder's name, for error messages.
        bar: a tqdm bar to advance, or None.
        ceiling: a loss above this is noted: ``sums["first_over"]`` is the first iteration past it (0: none).
        per_iteration: an lr scheduler stepped after every optimiser step (poly/cosine), or None.
        scalars: TensorBoard scalars of the run: each iteration's losses and lr, at the stage's global step.

    Returns:
        (sums of the per-iteration losses, the training confusion matrix).

    Raises:
        TrainingDiverged: the loss became NaN/inf (names the epoch, iteration and global step).
    """
    amp_dtype = AMP_DTYPES[resolve_amp(spec.amp, device)]
    train_cm = ConfusionMatrix(num_classes)
    train_cm.mat = train_cm.mat.to(device)
    sums = {"loss": 0.0}  # and one sum per part the loss reports
    first_over = 0
    lr = optimizer.param_groups[0]["lr"]
    for it, (images, labels) in enumerate(loader, start=1):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if spec.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(images)
        loss, parts = loss_fn(outputs, labels, images)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{where}: the loss became {float(loss.detach())} at epoch {epoch}, iteration {it} (global "
                f"step {(epoch - 1) * spec.iters_per_epoch + it})"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        step_lr = optimizer.param_groups[0]["lr"]  # the rate of this step (a per-iteration schedule moves it)
        scaler.step(optimizer)
        scaler.update()
        if per_iteration is not None:
            per_iteration.step()
        value = float(loss.detach())
        sums["loss"] += value
        first_over = first_over or (it if value > ceiling else 0)
        if scalars is not None:
            scalars.add(iteration_tags(value, {n: float(v.detach()) for n, v in parts.items()}, step_lr),
                        (epoch - 1) * spec.iters_per_epoch + it)
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        train_cm.update(outputs["out"].detach().argmax(1), labels)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{sums['loss'] / it:.3f}", lr=f"{lr:.2e}", refresh=False)
    return sums | {"first_over": first_over}, train_cm


# ---- evaluation ----------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(net: nn.Module, dataset: Dataset, device: torch.device | str, *, flip: bool = False,
             max_images: int = 0, progress: bool = False, desc: str = "eval") -> ConfusionMatrix:
    """Confusion matrix of the network over a split, whole images at batch 1 (§9.4).

    Args:
        net: the network (its training mode is restored afterwards).
        dataset: (image (3, H, W) float, label (H, W) int64) items with the evaluation transform; the
            number of classes is ``dataset.num_classes`` when present, else the network's.
        device: where to run.
        flip: add the flipped prediction (§9.4 ``eval_flip``).
        max_images: evaluate images ``i · len / max_images`` only (evenly spaced: video datasets list
            consecutive frames); 0 = all.
        progress: show a tqdm bar (rank 0 only).
        desc: the bar's label.

    Returns:
        The confusion matrix, summed over the processes of a distributed group (each rank evaluates every
        world-size-th image).
    """
    num_classes = getattr(dataset, "num_classes", None) or net.num_classes
    net_classes = getattr(net, "num_classes", None)
    if net_classes is not None and net_classes != num_classes:
        raise ValueError(
            f"the network predicts {net_classes} classes but the dataset has {num_classes}; evaluate it on "
            "the dataset it was trained for (profile / data.dataset), or build it with matching num_classes"
        )
    n = len(dataset)
    indices: Iterable[int] = range(n)
    if 0 < max_images < n:
        indices = [i * n // max_images for i in range(max_images)]
    rank, world = rank_world()
    indices = list(indices)[rank::world]
    cm = ConfusionMatrix(num_classes)
    cm.mat = cm.mat.to(device)
    was_training = net.training
    net.eval()
    if progress and rank == 0:
        indices = progress_bar(indices, desc=desc, leave=False)
    try:
        for i in indices:
            image, label = dataset[i]
            logits = predict_logits(net, image[None].to(device), flip=flip)
            cm.update(logits.argmax(1), label[None].to(device))
    finally:
        net.train(was_training)
    cm.all_reduce()
    cm.mat = cm.mat.cpu()
    return cm


def _scores(cm: ConfusionMatrix) -> dict[str, Any]:
    s = cm.compute()
    return {k: s[k] for k in (*SCORE_KEYS, "iou")}


# ---- the whole run -------------------------------------------------------------------------------------
@dataclass
class _State:
    """What a resumed run continues from."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val": {}})
    start_epoch: int = 1
    seconds_total: float = 0.0


def fit(spec: TrainConfig, net: nn.Module, loss_fn: LossFn, train_set: Dataset, val_set: Dataset | None,
        device: torch.device, out_dir: Path, *, seed: int = 12345, key: str = "",
        extra_state: dict[str, Any] | None = None,
        num_workers: int = 0, eval_max_images: int = 0, progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``net`` for ``spec.epochs`` epochs of ``spec.iters_per_epoch`` iterations, resuming if possible.

    Args:
        spec: the stage's section of the config (teacher, distill or student).
        net: the network (on CPU or ``device``); returns ``{"out": (N, C, H, W), "aux": [(N, C, H, W)…]}``.
        loss_fn: the stage's objective (``losses.SegmentationLoss`` or ``losses.DistillationLoss``).
        train_set: augmented crops, items (image (3, h, w) float32, label (h, w) int64).
        val_set: whole-image evaluation split, or None (no evaluation).
        device: where to train.
        out_dir: the run folder; checkpoints go to ``out_dir/checkpoints``.
        seed: the run's seed: each epoch's sample order and augmentation derive from it (§9.2: 12345).
        key: identifies what the checkpoint was trained from (the stage's resume key); a ``last.pt`` of
            another key is an error (``lifecycle.start_run`` sets such results aside before a stage starts).
        extra_state: stored in both checkpoints (e.g. the architecture).
        num_workers: data-loader processes.
        eval_max_images: evaluate only this many evenly spaced validation images (0 = all).
        progress: tqdm bars (rank 0).
        on_epoch: called with each epoch's history row (rank 0), e.g. for live plots.

    Returns:
        A :class:`TrainResult`. On rank 0 ``checkpoints/last.pt`` and ``checkpoints/best.pt`` exist.

    Raises:
        TrainingDiverged: the loss became NaN/inf (message names epoch and iteration).
    """
    info = current_dist()
    ckpt_dir = Path(out_dir) / "checkpoints"
    last_path, best_path, best_next = ckpt_dir / "last.pt", ckpt_dir / "best.pt", ckpt_dir / "best.next.pt"
    net, optimizer, scheduler = _optimised(spec, net, device, info)
    state = _resume(last_path, key, info, net, optimizer, scheduler, spec.epochs)
    if info.main:
        _reconcile_best(best_path, best_next, state)
    extra = extra_state or {}
    model = wrap(net, device, info)
    forward = compiled(model) if spec.compile else model  # checkpoints keep saving net's own state dict
    scaler = torch.amp.GradScaler(device.type, enabled=spec.amp == "fp16")
    num_classes = getattr(train_set, "num_classes", None) or net.num_classes
    bar = _bar(spec, state.start_epoch, Path(out_dir).name) if progress and info.main else None
    scalars = Scalars(out_dir, info=info)  # live curves in out_dir/tensorboard/ (rank 0)
    try:
        for epoch in range(state.start_epoch, spec.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            loader = epoch_loader(train_set, spec.batch_size, spec.iters_per_epoch, seed, epoch, info, num_workers,
                                  device)
            best_mean = min((r["loss"] for r in state.history), default=math.inf)
            kept = f"the last good checkpoint ({last_path if last_path.exists() else 'none yet'}) is kept"
            try:
                sums, train_cm = train_one_epoch(forward, loss_fn, optimizer, loader, device, spec, scaler=scaler,
                                                 num_classes=num_classes, epoch=epoch, where=Path(out_dir).name,
                                                 bar=bar, ceiling=spec.divergence_factor * best_mean,
                                                 per_iteration=None if spec.lr_schedule == "exponential"
                                                 else scheduler, scalars=scalars)
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{e}; {kept}. Lower the learning rate, check the labels, or try "
                                       "amp='none'.") from None
            if spec.lr_schedule == "exponential":
                scheduler.step()  # §9.2: lr × 0.992 after every epoch
            # log the global batch's loss (DDP averages the ranks' shard gradients)
            first_over = sums.pop("first_over")
            sums = dict(zip(sums, mean_over_ranks(list(sums.values()), info, device)))
            _check_divergence(sums["loss"] / spec.iters_per_epoch, best_mean, spec, epoch, first_over,
                              Path(out_dir).name, kept)
            train_cm.all_reduce()
            row = _epoch_row(epoch, spec.iters_per_epoch, sums, getattr(loss_fn, "parts", ()), lr,
                             time.perf_counter() - t0, train_cm)
            new_best = False
            if val_set is not None and _evaluation_due(epoch, spec):
                val = _validate(model, val_set, device, spec, eval_max_images, info, row)
                if state.best["epoch"] == 0 or val["miou"] > state.best["val"].get("miou", -1.0):
                    state.best, new_best = {"epoch": epoch, "val": val}, True
                    if info.main:  # published as best.pt once last.pt (the commit point) records it
                        save_checkpoint(best_next, "train", key, epoch, unwrap(model).state_dict(), metrics=val,
                                        **extra)
            state.history.append(row)
            state.seconds_total += time.perf_counter() - t0
            if info.main:
                # before the checkpoint: a run killed in between redoes this epoch and replaces its curves
                scalars.add(training_tags(row), epoch * spec.iters_per_epoch)
                save_checkpoint(last_path, "train", key, epoch, unwrap(model).state_dict(),
                                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng_state(),
                                history=state.history, best=state.best, seconds_total=state.seconds_total,
                                **extra)
                if new_best:
                    os.replace(best_next, best_path)
                _report_epoch(row, bar, on_epoch)
            barrier(info)
    finally:
        scalars.close()
        if bar is not None:
            bar.close()
    if info.main and not best_path.exists() and last_path.exists():
        # no evaluation ran (val_set None): the last weights are the best we know
        save_checkpoint(best_path, "train", key, spec.epochs, unwrap(model).state_dict(), metrics={}, **extra)
    barrier(info)
    return TrainResult(state.history, state.best, spec.epochs, state.seconds_total, state.start_epoch - 1,
                       ckpt_dir)


def _check_divergence(mean: float, best_mean: float, spec: TrainConfig, epoch: int, first_over: int,
                      where: str, kept: str) -> None:
    """A finite blow-up: the epoch's mean loss above ``divergence_factor`` × the best epoch mean so far."""
    if mean > spec.divergence_factor * best_mean:
        at = f" (the loss first exceeded {spec.divergence_factor:g}× at iteration {first_over})" if first_over else ""
        raise TrainingDiverged(
            f"{where}: training diverged at epoch {epoch}: its mean loss {mean:.4g} is {mean / best_mean:.3g}× the "
            f"best epoch mean so far ({best_mean:.4g}), above the limit divergence_factor = "
            f"{spec.divergence_factor:g}{at}; {kept}, this epoch was not saved. Lower the learning rate."
        )


def _optimised(spec: TrainConfig, net: nn.Module, device: torch.device, info: DistInfo
               ) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """The network on its device and layout (SyncBN when asked), its SGD and its lr schedule."""
    net = net.to(device)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net = with_sync_bn(net, device, info, spec.sync_bn)
    optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return net, optimizer, lr_schedule(optimizer, spec)


def lr_schedule(optimizer: torch.optim.Optimizer, spec: TrainConfig) -> Any:
    """§9.2's ExponentialLR (stepped after every epoch), or a per-iteration poly/cosine decay to 0 over the run
    after a linear warmup (stepped after every iteration; ``lr_schedule``)."""
    if spec.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec.lr_decay_per_epoch)
    total, warm = spec.epochs * spec.iters_per_epoch, spec.warmup_iters

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        done = min(1.0, (t - warm) / max(1, total - warm))
        return (1 - done) ** spec.poly_power if spec.lr_schedule == "poly" else 0.5 * (1 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _report_epoch(row: dict[str, Any], bar: Any, on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    if on_epoch is not None:
        on_epoch(row)
    if bar is not None and not math.isnan(row["val_miou"]):
        bar.write(f"epoch {row['epoch']}: loss {row['loss']:.3f}, val mIoU {row['val_miou']:.3f}")


def _epoch_row(epoch: int, iters: int, sums: dict[str, float], parts: tuple[str, ...], lr: float,
               seconds: float, train_cm: ConfusionMatrix) -> dict[str, Any]:
    """One ``history.csv`` row: mean losses (a part the loss function lacks is NaN, e.g. ``kd_loss`` without
    a teacher), lr, time, running train mIoU; val columns NaN until an evaluation fills them."""
    row: dict[str, Any] = {"epoch": epoch, "iters": iters, "loss": sums["loss"] / iters}
    row |= {p: sums[p] / iters if p in parts else math.nan for p in HISTORY_PARTS}
    row |= {"lr": lr, "seconds": seconds, "train_miou": train_cm.compute()["miou"]}
    return row | {f"val_{k}": math.nan for k in ("miou", "miou_no_back", "pixel_acc")}


def _evaluation_due(epoch: int, spec: TrainConfig) -> bool:
    """§9.2: validate after epoch 1 and every ``eval_every_epochs`` epochs; also after the last one."""
    return epoch == 1 or epoch % max(1, spec.eval_every_epochs) == 0 or epoch == spec.epochs


def _validate(model: nn.Module, val_set: Dataset, device: torch.device, spec: TrainConfig, max_images: int,
              info: DistInfo, row: dict[str, Any]) -> dict[str, Any]:
    """Evaluate on the validation split and fill the row's val columns; returns the scores."""
    t1 = time.perf_counter()
    broadcast_buffers(unwrap(model), info)  # every rank evaluates rank 0's (the checkpointed) model
    val = _scores(evaluate(unwrap(model), val_set, device, flip=spec.eval_flip, max_images=max_images))
    row.update({f"val_{k}": val[k] for k in ("miou", "miou_no_back", "pixel_acc")})
    row["eval_seconds"] = time.perf_counter() - t1
    return val


def _bar(spec: TrainConfig, start_epoch: int, name: str) -> Any:
    if start_epoch > spec.epochs:
        return None
    total = (spec.epochs - start_epoch + 1) * spec.iters_per_epoch
    return progress_bar(total=total, desc=f"train {name}", unit="it", dynamic_ncols=True)


def _reconcile_best(best_path: Path, best_next: Path, state: _State) -> None:
    """Make ``best.pt`` the best epoch ``last.pt`` records: publish a ``best.next.pt`` whose ``last.pt`` was
    written before the run stopped, drop one whose epoch never committed (and a ``best.pt`` with no ``last.pt``).

    Raises:
        ValueError: ``best.pt`` holds another epoch than ``last.pt`` records (written by hand or by another
            version); the message names both and the fix.
    """
    committed = state.start_epoch - 1
    if best_next.exists():
        pending = load_checkpoint(best_next, "train", mmap=True)["epoch"]
        if committed and pending == state.best["epoch"]:
            os.replace(best_next, best_path)
        else:
            best_next.unlink()
            _log.info("dropped %s: its epoch %d never committed to last.pt", best_next, pending)
    if not committed:
        best_path.unlink(missing_ok=True)
    elif best_path.exists() and state.best["epoch"]:
        held = load_checkpoint(best_path, "train", mmap=True)["epoch"]
        if held != state.best["epoch"]:
            raise ValueError(
                f"{best_path} holds epoch {held} but {best_path.with_name('last.pt')} records epoch "
                f"{state.best['epoch']} as the best; rerun the stage with --force (make report FORCE=1), which sets "
                "the folder aside and retrains"
            )


def _resume(path: Path, key: str, info: DistInfo, net: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, epochs: int) -> _State:
    """Continue from ``last.pt`` when it exists (it must have been trained from ``key``, for at most ``epochs``:
    a shorter run never reports a longer one's weights)."""
    if not path.exists():
        return _State()
    ckpt = load_checkpoint(path, "train")  # on CPU: RNG states stay there; load_state_dict copies to the device
    if ckpt.get("key") != key:
        # lifecycle.start_run sets results of other settings aside before a stage starts; a foreign last.pt here
        # means files were copied in by hand, and training over it would overwrite them
        raise ValueError(
            f"{path} was trained from other settings (key {ckpt.get('key')!r}, this run {key!r}); move it away "
            "or start the stage through its notebook / `python -m fasterseg_core train`, which sets it aside"
        )
    if ckpt["epoch"] > epochs:
        raise ValueError(
            f"{path} holds {ckpt['epoch']} epochs, past this run's end ({epochs}); start the stage through its "
            "notebook / `python -m fasterseg_core train`, which sets the longer run aside (and brings it back when "
            "its epochs are asked for again)"
        )
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    if info.main:
        _log.info("resuming %s after epoch %d", path.parent.parent, ckpt["epoch"])
    return _State(ckpt["history"], ckpt["best"], ckpt["epoch"] + 1, float(ckpt.get("seconds_total", 0.0)))
