"""Process groups for ``torchrun``: joining one, this process's rank, and the few collectives the loops use.

A process not launched by ``torchrun`` (``WORLD_SIZE`` unset or 1) is a group of one: every helper here
then does nothing, so the training loop and the search read the same with and without a group. gloo on
CPU, NCCL on CUDA; under CUDA each process takes GPU ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the (possibly trivial) process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the ``torchrun`` process group when launched by it (``WORLD_SIZE`` > 1), else a group of one."""
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


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """This rank's device: ``cuda:<local rank>`` in a multi-GPU group, else ``device``."""
    return torch.device("cuda", info.local_rank) if device.type == "cuda" and info.world > 1 else device


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a group of one)."""
    if info.world > 1:
        dist.barrier()


def mean_over_ranks(values: Sequence[float], info: DistInfo, device: torch.device) -> list[float]:
    """The mean of each value over the ranks (as is in a group of one)."""
    if info.world <= 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / info.world).tolist()


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BN running statistics differ per rank without SyncBN)."""
    if info.world > 1:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def broadcast_parameters(model: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's parameters and buffers (no-op in a group of one), as DDP does when it wraps."""
    if info.world > 1:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t, 0)


def average_gradients(params: Sequence[torch.Tensor], info: DistInfo, bucket_numel: int = 1 << 24) -> None:
    """Replace each ``.grad`` by its mean over the ranks (what DDP's reducer computes; no-op in a group of one).

    For loops DDP cannot wrap: the search backpropagates several passes into disjoint parameter subsets of
    one module (``backward(inputs=...)``), which DDP's reducer does not follow. Parameters whose grad is
    ``None`` are skipped, so every rank must leave the same ones ``None`` (the search's sampled paths agree
    because every rank draws them from identically seeded generators). Grads are flattened into buckets of
    ``bucket_numel`` elements per dtype, one ``all_reduce`` each, in parameter order on every rank.
    """
    if info.world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for g in [*group, None]:
            if g is not None and (not bucket or size + g.numel() <= bucket_numel):
                bucket.append(g)
                size += g.numel()
                continue
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            flat /= info.world
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            if g is not None:
                bucket, size = [g], g.numel()


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def with_sync_bn(net: nn.Module, device: torch.device, info: DistInfo, enabled: bool) -> nn.Module:
    """``net`` with SyncBatchNorm in a group of several when ``enabled`` (call before building the optimizer:
    the conversion replaces the BN modules and their parameters).

    Raises:
        ValueError: ``enabled`` on the CPU (torch has no CPU SyncBatchNorm).
    """
    if enabled and device.type != "cuda":
        raise ValueError("sync_bn needs CUDA: torch has no CPU SyncBatchNorm; set sync_bn: false for CPU/gloo runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(net) if enabled and info.world > 1 else net


def wrap(net: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """``net`` in ``DistributedDataParallel`` in a group of several, ``net`` itself in a group of one."""
    if info.world <= 1:
        return net
    # find_unused_parameters: the FFM's channel-attention weights exist (checkpoint compatibility) but never
    # run (§1.5); DDP leaves their grads None on every rank, so SGD skips them as in one process
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the current group, (0, 1) without one."""
    info = current_dist()
    return info.rank, info.world
