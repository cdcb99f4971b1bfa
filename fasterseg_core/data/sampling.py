"""The training epoch's samples (§9.1): which images, in which order, split over the processes of a group.

An "epoch" is ``iters × global_batch`` samples: the shuffled image list repeated as often as it fits plus
a random remainder, then shuffled again. The order is drawn from a generator seeded by (seed, epoch) alone,
so it is the same on every rank and on every rerun; augmentation is seeded by (seed, epoch, rank). A resumed
run therefore sees exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..distributed import DistInfo


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's sample order (rank-independent) or augmentation (``rank`` mixed in)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % 2**63


def epoch_indices(num_images: int, global_batch: int, iters: int, seed: int, epoch: int) -> list[int]:
    """The §9.1 epoch's ``iters × global_batch`` sample indices (the same on every rank)."""
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


def loader_options(device: torch.device | str, num_workers: int) -> dict[str, Any]:
    """DataLoader settings per device (measured in ``benchmarks/train.py``, which names the bound).

    * CUDA: pinned host memory (the engine copies with ``non_blocking=True``, so the copy overlaps the
      step) and 4 batches prefetched per worker, so that a GPU step never waits on one slow decode.
    * CPU: no pinning (nothing to overlap with) and torch's default prefetch of 2: the workers share the
      cores with the training threads, and batches queued further ahead only hold memory.

    Workers are never persistent: each epoch has its own loader, seeded per (epoch, rank), which makes a
    resumed run draw exactly the batches and augmentations of an uninterrupted one. Starting two forked
    workers costs well under a second per epoch here (the benchmark's loader figure includes it).
    """
    cuda = torch.device(device).type == "cuda"
    options: dict[str, Any] = {"pin_memory": cuda, "persistent_workers": False}
    if num_workers > 0:
        options["prefetch_factor"] = 4 if cuda else 2
    return options


def epoch_loader(dataset: Dataset, batch_size: int, iters: int, seed: int, epoch: int, info: DistInfo,
                 num_workers: int, device: torch.device | str = "cpu") -> DataLoader:
    """This rank's batches of one epoch.

    Augmentation randomness is seeded per (epoch, rank): the main process's torch generator for
    ``num_workers=0``, the loader's generator for its workers otherwise.

    Args:
        dataset: augmented training crops.
        batch_size: the global batch (all ranks together).
        iters: iterations per epoch.
        seed: the run's seed.
        epoch: 1-based epoch.
        info: this process's rank and the group size.
        num_workers: loader processes.
        device: where the batches go (:func:`loader_options`).
    """
    batches = rank_batches(epoch_indices(len(dataset), batch_size, iters, seed, epoch), batch_size, info)
    aug_seed = epoch_seed(seed + 1, epoch, info.rank)
    torch.manual_seed(aug_seed)  # num_workers=0: the transforms draw from the global generator
    g = torch.Generator().manual_seed(aug_seed)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, generator=g,
                      **loader_options(device, num_workers))
