"""One training engine for the three training stages (spec §9): teacher, distilled student, scratch student.

The recipe is the paper's (§9.1-§9.3): iteration-based epochs, SGD (lr 0.01, momentum 0.9, weight decay
5e-4 on every parameter), lr × 0.992 after every epoch, OHEM cross-entropy on ``out`` plus 0.2 × each
aux head, and for distillation the KL term against a frozen teacher in eval mode. What the engine adds:

* **Resumable runs.** After every epoch ``checkpoints/last.pt`` (model, optimiser, scheduler, RNG
  states, epoch, history, best) is written atomically; calling :func:`train` again continues after the
  last completed epoch. Each epoch's sample order and augmentation are drawn from generators seeded by
  (seed, epoch, rank), so a resumed run reproduces an uninterrupted one exactly (CPU, same threads).
* **Divergence guard.** A NaN/inf loss raises :class:`TrainingDiverged` naming the epoch and iteration;
  the last good checkpoint stays on disk.
* **Distributed data parallel** under ``torchrun`` (gloo on CPU, NCCL on GPU): every rank draws the same
  global sample order and takes its slice of each global batch, so N processes of batch B/N compute the
  gradient of one process on batch B (up to batch-norm statistics, which are per rank unless
  ``sync_bn``); metrics are all-reduced; rank 0 logs and writes checkpoints.
* Mixed precision (bf16/fp16 autocast) and ``channels_last`` as options (the paper trained fp32 NCHW).

    result = train(spec, net, train_set, val_set, device, run.dir)
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig
from .evaluate import evaluate
from .losses import OhemCrossEntropy, distillation_kl, sum_over_heads
from .metrics import ConfusionMatrix
from .runs import load_torch, save_torch

_log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fasterseg-train/1"
SCORE_KEYS = ("miou", "miou_no_back", "pixel_acc", "mean_class_acc")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---- distributed ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    """This process's place in the (possibly trivial) process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the ``torchrun`` process group when launched by it (``WORLD_SIZE`` > 1), else a group of one.

    gloo on CPU, NCCL on CUDA; under CUDA each process takes GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def current_dist() -> DistInfo:
    """The :class:`DistInfo` of an already initialised group (or of a single process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


# ---- data ------------------------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's sample order (rank-independent) or augmentation (``rank`` mixed in)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % 2**63


def epoch_indices(num_images: int, global_batch: int, iters: int, seed: int, epoch: int) -> list[int]:
    """The §9.1 epoch: ``iters × global_batch`` sample indices, the shuffled image list repeated as often as
    it fits plus a random remainder, then shuffled. The same on every rank (seeded by seed and epoch).
    """
    if num_images < 1:
        raise ValueError("the training split is empty")
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    total = iters * global_batch
    reps, rest = divmod(total, num_images)
    parts = [torch.randperm(num_images, generator=g) for _ in range(reps)]
    parts.append(torch.randperm(num_images, generator=g)[:rest])
    order = torch.cat(parts)
    return order[torch.randperm(total, generator=g)].tolist()


def rank_batches(indices: Sequence[int], global_batch: int, info: DistInfo) -> list[list[int]]:
    """Split each global batch into contiguous per-rank slices; this rank's slices, one per iteration."""
    if global_batch % info.world:
        raise ValueError(
            f"batch_size {global_batch} is the global batch and must be divisible by the {info.world} "
            "processes; change batch_size or --nproc-per-node"
        )
    local = global_batch // info.world
    starts = range(0, len(indices) - global_batch + 1, global_batch)
    return [list(indices[s + info.rank * local : s + (info.rank + 1) * local]) for s in starts]


def epoch_loader(
    dataset: Dataset, spec: TrainConfig, epoch: int, info: DistInfo, num_workers: int
) -> DataLoader:
    """This rank's batches of one epoch. Augmentation randomness is seeded per (epoch, rank): the main
    process's torch generator for ``num_workers=0``, the loader's generator for its workers otherwise."""
    batches = rank_batches(
        epoch_indices(len(dataset), spec.batch_size, spec.iters_per_epoch, spec.seed, epoch),
        spec.batch_size,
        info,
    )
    aug_seed = epoch_seed(spec.seed + 1, epoch, info.rank)
    torch.manual_seed(aug_seed)  # num_workers=0: the transforms draw from the global generator
    g = torch.Generator().manual_seed(aug_seed)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        generator=g,
        persistent_workers=False,
        pin_memory=False,
    )


# ---- losses ----------------------------------------------------------------------------------------------
def ohem_min_kept(batch_size: int, crop_hw: Sequence[int]) -> int:
    """§9.3: ``min_kept = batch · H · W // 16`` (393,216 for 12 × 512 × 1024), scaled to the crop."""
    return batch_size * int(crop_hw[0]) * int(crop_hw[1]) // 16


def segmentation_loss(
    outputs: dict[str, Any], target: torch.Tensor, criterion: OhemCrossEntropy, aux_weight: float
) -> torch.Tensor:
    """§9.3: ``OHEM(out) + aux_weight · Σ OHEM(aux)`` on fp32 logits at the target's resolution."""
    heads = [outputs["out"], *outputs["aux"]]
    weights = [1.0] + [aux_weight] * (len(heads) - 1)
    return sum_over_heads(criterion, [h.float() for h in heads], target, weights)


# ---- state -----------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every generator's state (Python, NumPy, torch CPU and CUDA), for the checkpoint."""
    # NumPy's key array as a tensor: checkpoints load with weights_only=True (tensors and containers only)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def _scores(cm: ConfusionMatrix) -> dict[str, Any]:
    s = cm.compute()
    return {k: s[k] for k in (*SCORE_KEYS, "iou")}


@dataclass
class TrainResult:
    """What :func:`train` returns: per-epoch history, best/last epochs and scores, timing."""

    history: list[dict[str, Any]]
    best: dict[str, Any]
    last_epoch: int
    seconds_total: float
    resumed_from: int
    checkpoint_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


# ---- the loop --------------------------------------------------------------------------------------------
def train(
    spec: TrainConfig,
    net: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    device: torch.device,
    out_dir: Path,
    *,
    teacher: nn.Module | None = None,
    key: str = "",
    extra_state: dict[str, Any] | None = None,
    num_workers: int = 0,
    eval_max_images: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``net`` for ``spec.epochs`` epochs of ``spec.iters_per_epoch`` iterations, resuming if possible.

    Args:
        spec: the stage's section of the config (teacher, distill or student).
        net: the network (on CPU or ``device``); returns ``{"out": (N, C, H, W), "aux": [(N, C, H, W)…]}``.
        train_set: augmented crops, items (image (3, h, w) float32, label (h, w) int64).
        val_set: whole-image evaluation split, or None (no evaluation).
        device: where to train.
        out_dir: the stage's run folder; checkpoints go to ``out_dir/checkpoints``.
        teacher: distillation only: the frozen teacher (kept in eval mode, never updated).
        key: identifies what the checkpoint was trained from; a ``last.pt`` with another key is moved
            aside to ``checkpoints/stale-<key>/`` and training starts over (nothing is deleted).
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
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    net = net.to(device)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if spec.sync_bn and device.type != "cuda":
        raise ValueError(
            "sync_bn needs CUDA: torch has no CPU SyncBatchNorm; set sync_bn: false for CPU/gloo runs"
        )
    if spec.sync_bn and info.world > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if teacher is not None:
        teacher = teacher.to(device).eval()  # §9.3: frozen, eval-mode batch norm
        teacher.requires_grad_(False)
        if spec.channels_last:  # same layout as the images, so no per-layer reorders
            teacher = teacher.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec.lr_decay_per_epoch)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "val": {}}
    start_epoch, seconds_total = 1, 0.0

    ckpt = _load_last(last_path, key, info)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        history, best = ckpt["history"], ckpt["best"]
        start_epoch, seconds_total = ckpt["epoch"] + 1, float(ckpt.get("seconds_total", 0.0))
        if info.main:
            _log.info("resuming %s after epoch %d", out_dir, ckpt["epoch"])
    resumed_from = start_epoch - 1

    model: nn.Module = net
    if info.world > 1:
        # find_unused_parameters: the FFM's channel-attention weights exist (checkpoint compatibility) but
        # never run (spec §1.5); DDP leaves their grads None on every rank, so SGD skips them as in one process
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    criterion = OhemCrossEntropy(
        ohem_min_kept(spec.batch_size // info.world, spec.crop_size_hw), spec.ohem_thresh
    )
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=spec.amp == "fp16")
    num_classes = getattr(train_set, "num_classes", None) or _unwrap(net).num_classes

    bar = None
    if progress and info.main and start_epoch <= spec.epochs:
        from tqdm.auto import tqdm

        total = (spec.epochs - start_epoch + 1) * spec.iters_per_epoch
        bar = tqdm(total=total, desc=f"train {Path(out_dir).name}", unit="it", dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, spec.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            train_cm = ConfusionMatrix(num_classes)
            train_cm.mat = train_cm.mat.to(device)
            sums = {"loss": 0.0, "seg_loss": 0.0, "kd_loss": 0.0}
            lr = optimizer.param_groups[0]["lr"]
            loader = epoch_loader(train_set, spec, epoch, info, num_workers)
            for it, (images, labels) in enumerate(loader, start=1):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if spec.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = model(images)
                    t_out = None
                    if teacher is not None:
                        with torch.no_grad():
                            t_out = teacher(images)["out"]
                seg = segmentation_loss(outputs, labels, criterion, spec.aux_weight)
                kd = torch.zeros((), device=device)
                if t_out is not None:
                    kd = spec.kd_weight * distillation_kl(
                        outputs["out"].float(), t_out.float(), temperature=spec.kd_temperature,
                        reduction=spec.kd_reduction,
                    )  # fmt: skip
                loss = seg + kd
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"{Path(out_dir).name}: the loss became {float(loss.detach())} at epoch {epoch}, iteration "
                        f"{it} (global step {(epoch - 1) * spec.iters_per_epoch + it}); the last good "
                        f"checkpoint ({last_path if last_path.exists() else 'none yet'}) is kept. Lower the "
                        "learning rate, check the labels, or try amp='none'."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                sums["loss"] += float(loss.detach())
                sums["seg_loss"] += float(seg.detach())
                sums["kd_loss"] += float(kd.detach())
                train_cm.update(outputs["out"].detach().argmax(1), labels)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        epoch=epoch, loss=f"{sums['loss'] / it:.3f}", lr=f"{lr:.2e}", refresh=False
                    )
            scheduler.step()  # §9.2: lr × 0.992 after every epoch
            if info.world > 1:  # log the global batch's loss (DDP averages the ranks' shard gradients)
                reduced = torch.tensor(list(sums.values()), dtype=torch.float64, device=device)
                dist.all_reduce(reduced)
                sums = dict(zip(sums, (reduced / info.world).tolist()))
            train_cm.all_reduce()
            seconds = time.perf_counter() - t0
            n_iters = spec.iters_per_epoch
            row: dict[str, Any] = {
                "epoch": epoch,
                "iters": n_iters,
                "loss": sums["loss"] / n_iters,
                "seg_loss": sums["seg_loss"] / n_iters,
                "kd_loss": sums["kd_loss"] / n_iters if teacher is not None else math.nan,
                "lr": lr,
                "seconds": seconds,
                "train_miou": train_cm.compute()["miou"],
            }
            row.update({f"val_{k}": math.nan for k in ("miou", "miou_no_back", "pixel_acc")})
            # §9.2: validate after epoch 1 and every eval_every epochs; also after the last one
            due = epoch == 1 or epoch % max(1, spec.eval_every_epochs) == 0 or epoch == spec.epochs
            if val_set is not None and due:
                t1 = time.perf_counter()
                if info.world > 1:  # BN running stats differ per rank: every rank evaluates rank 0's
                    for buf in _unwrap(model).buffers():  # (the checkpointed) model
                        dist.broadcast(buf, 0)
                cm = evaluate(
                    _unwrap(model), val_set, device, flip=spec.eval_flip, max_images=eval_max_images
                )
                val = _scores(cm)
                row.update({f"val_{k}": val[k] for k in ("miou", "miou_no_back", "pixel_acc")})
                row["eval_seconds"] = time.perf_counter() - t1
                if best["epoch"] == 0 or val["miou"] > best["val"].get("miou", -1.0):
                    best = {"epoch": epoch, "val": val}
                    if info.main:
                        save_torch(
                            {"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": _unwrap(model).state_dict(),
                             "metrics": val, "key": key, **(extra_state or {})},
                            best_path,
                        )  # fmt: skip
            history.append(row)
            seconds_total += time.perf_counter() - t0
            if info.main:
                save_torch(
                    {
                        "format": CHECKPOINT_FORMAT, "key": key, "epoch": epoch,
                        "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": rng_state(), "history": history,
                        "best": best, "seconds_total": seconds_total, **(extra_state or {}),
                    },
                    last_path,
                )  # fmt: skip
                if on_epoch is not None:
                    on_epoch(row)
                if bar is not None and not math.isnan(row["val_miou"]):
                    bar.write(f"epoch {epoch}: loss {row['loss']:.3f}, val mIoU {row['val_miou']:.3f}")
            _barrier(info)
    finally:
        if bar is not None:
            bar.close()
    if info.main and not best_path.exists() and last_path.exists():
        # no evaluation ran (val_set None): the last weights are the best we know
        save_torch({"format": CHECKPOINT_FORMAT, "epoch": spec.epochs, "model": _unwrap(model).state_dict(),
                    "metrics": {}, "key": key, **(extra_state or {})}, best_path)  # fmt: skip
    _barrier(info)
    return TrainResult(history, best, spec.epochs, seconds_total, resumed_from, ckpt_dir)


def _load_last(path: Path, key: str, info: DistInfo) -> dict[str, Any] | None:
    """The resumable checkpoint if it was trained from the same key; a foreign one is moved aside."""
    if not path.exists():
        return None
    ckpt = load_torch(path)  # on CPU: RNG states must stay there; load_state_dict copies to the device
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a training checkpoint of this package (format {ckpt.get('format')!r})"
        )
    if ckpt.get("key") == key:
        return ckpt
    _barrier(info)  # every rank has read the old key before rank 0 moves the file
    if info.main:
        stale = path.parent / f"stale-{ckpt.get('key') or 'unknown'}"
        stale.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt"):
            if (path.parent / name).exists():
                os.replace(path.parent / name, stale / name)
        _log.warning("%s was trained from another configuration; moved to %s, starting over", path, stale)
    _barrier(info)
    return None
