"""The search's data (method §3.1): two halves of the training split, epoch loaders, supernet-sized inputs.

One permutation of the training split: the first half trains the weights, the second half the
architecture. Images are pre-downsampled by ``search.base_scale`` (2 in the paper) and cropped; the
supernet's loss is computed at 1/8 resolution, so labels are resized there by nearest neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ..config import RunConfig
from ..data import build_dataset
from ..distributed import DistInfo


def split_search_data(num_images: int, seed: int) -> tuple[list[int], list[int]]:
    """§3.1: one random permutation; the first ⌊n/2⌋ images train the weights, the rest the architecture."""
    if num_images < 2:
        raise ValueError(f"the search needs at least 2 training images to split, got {num_images}")
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).tolist()
    half = num_images // 2
    return perm[:half], perm[half:]


def iterations_per_epoch(iters: int, min_iters: int, num_train: int, batch_size: int) -> int:
    """``iters`` if positive, else the authors' ``max(num_train // 2 // batch, min_iters)`` (§3.4)."""
    return iters if iters > 0 else max(num_train // 2 // batch_size, min_iters)


def check_supernet_input(hw: Sequence[int], what: str) -> None:
    """Raise unless both sides are multiples of 32 and at least 64 (what the supernet's ops need)."""
    if any(d % 32 or d < 64 for d in hw):
        fix = [max(64, 32 * math.ceil(d / 32)) for d in hw]
        raise ValueError(
            f"{what} {list(hw)}: the supernet needs sides that are multiples of 32 and at least 64 (the "
            f"stride-2 skip needs even sizes at strides 8 and 16, the zoomed convs halve the stride-32 "
            f"features); use e.g. {fix}"
        )


def epoch_seed(seed: int, phase: str, epoch: int) -> int:
    """The seed of one epoch of a phase ("pretrain" or "search"): data order, augmentation, Gumbel draws."""
    return seed + {"pretrain": 100_003, "search": 200_003}[phase] + 7_919 * epoch


def epoch_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, iters: int, seed: int,
                 workers: int) -> DataLoader:
    """``iters`` batches drawn from ``indices``, repeating shuffled passes as needed (§9.1 epoch rule)."""
    g = torch.Generator().manual_seed(seed)
    subset = Subset(dataset, list(indices))
    if len(subset) < batch_size:
        raise ValueError(f"a search half has {len(subset)} images, fewer than the batch size {batch_size}")
    sampler = RandomSampler(subset, num_samples=iters * batch_size, generator=g)
    # The same generator seeds the workers, so their augmentation is reproducible too.
    return DataLoader(subset, batch_size, sampler=sampler, num_workers=workers, drop_last=True, generator=g)


def check_batch_split(cfg: RunConfig, info: DistInfo) -> None:
    """Raise unless both search batch sizes (global batches) split evenly over the ``info.world`` processes."""
    sc = cfg.search
    for name in ("pretrain_batch_size", "search_batch_size"):
        batch = getattr(sc, name)
        if batch % info.world:
            raise ValueError(
                f"search.{name} {batch} is the global batch and must be divisible by the {info.world} processes; "
                f"change it (e.g. {info.world * max(1, batch // info.world)}) or --nproc-per-node"
            )


def rank_slice(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous share of a global batch (N, ...) → (N / world, ...); the batch itself alone.

    Every rank loads the whole global batch (the same loader, the same augmentation draws as one process)
    and keeps its slice: search batches are small (2 in the paper), and this keeps the data, the global
    RNG stream and therefore every rank's Gumbel/path draws identical to a single process's.
    """
    if info.world <= 1:
        return batch
    local = batch.shape[0] // info.world
    return batch[info.rank * local : (info.rank + 1) * local]


def rank_share(dataset: Dataset, info: DistInfo) -> Dataset:
    """Every ``world``-th image from ``rank`` on (the evaluation's share; counts are summed over ranks)."""
    return dataset if info.world <= 1 else Subset(dataset, list(range(info.rank, len(dataset), info.world)))


def labels_at(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, H, W) int64 labels → (N, h, w) by nearest neighbour (the supernet's loss is at 1/8, §3.1)."""
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def pad_for_supernet(images: torch.Tensor) -> torch.Tensor:
    """Zero-pad (N, 3, H, W) at the bottom/right to sides that are multiples of 32, at least 64."""
    h, w = images.shape[-2:]
    th, tw = (max(64, 32 * math.ceil(d / 32)) for d in (h, w))
    return F.pad(images, (0, tw - w, 0, th - h)) if (th, tw) != (h, w) else images


@dataclass
class SearchData:
    """Datasets of one search: augmented crops for both phases, the two halves, the evaluation split."""

    pretrain: Dataset
    search: Dataset
    val: Dataset
    weight_half: list[int]
    arch_half: list[int]
    num_classes: int


def search_data(cfg: RunConfig) -> SearchData:
    """The search's datasets for a configuration (``data`` and ``search`` sections)."""
    sc = cfg.search

    def crops(crop_hw: Sequence[int]) -> Dataset:
        return build_dataset(cfg.data, "train", train=True, crop_hw=tuple(crop_hw), base_scale=sc.base_scale)

    pretrain, search_ = crops(sc.pretrain_crop_hw), crops(sc.search_crop_hw)
    val = build_dataset(cfg.data, "val", train=False, base_scale=sc.base_scale)
    if 0 < sc.eval_max_images < len(val):
        # evenly spaced over the split (video datasets list consecutive frames; the first N are one scene)
        k = sc.eval_max_images
        val = Subset(val, [i * len(val) // k for i in range(k)])
    weight_half, arch_half = split_search_data(len(pretrain), sc.seed)
    return SearchData(pretrain, search_, val, weight_half, arch_half, pretrain.num_classes)
