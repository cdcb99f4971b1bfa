"""Seconds per search iteration (architecture + weight step) and peak memory, against a teacher training step.

    python benchmarks/search.py [--profile camvid-cpu] [--iters 3] [--threads 0] [--layers 0] [--paths mix sample]

At the profile's search crop and batch (``search.search_crop_hw``, ``search.search_batch_size``) and
supernet depth (``model.num_layers``), on the profile's device, in one process:

1. one training step of the published teacher (``build_published("teacher", num_classes=11)``; OHEM on
   ``out`` + 0.2 × the two aux heads, SGD) — the yardstick;
2. one search iteration (spec §3.4): the architecture step (four passes + the student's latency term,
   Adam) and the weight step (four passes, clipping, SGD), for each path mode asked: ``mix`` (the paper:
   all five operators of every cell, both inputs of every two-input cell) and ``sample`` (the opt-in
   ``search.path_sampling`` deviation: one sampled operator and input per cell).

Inputs are random tensors (data loading is not timed). The latency term uses a table with one made-up
value per entry: its cost does not depend on the values. Peak memory is the process's maximum resident
set size (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA), read after the teacher's warm-up step and
again after each path mode's warm-up (cumulative: it includes the teacher's ~1 GB). The timed repetitions
alternate teacher step and search iterations; each ratio (target ≤ 6×) is the median of per-repetition ratios.
The record goes to ``benchmarks/results/search/`` (:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import statistics
import time

import torch

from fasterseg_core.config import TrainConfig, load_config
from fasterseg_core.latency.lut import LatencyTable, lut_entries
from fasterseg_core.losses import OhemCrossEntropy, ohem_min_kept, sum_over_heads
from fasterseg_core.machine import resolve_device
from fasterseg_core.models.published import build_published
from fasterseg_core.models.supernet import build_supernet
from fasterseg_core.records import write_record
from fasterseg_core.search.objective import SupernetLatency
from fasterseg_core.search.steps import SEARCH_PASSES, arch_step, weight_step

NUM_CLASSES = 11  # CamVid


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _teacher_step_fn(x: torch.Tensor, y: torch.Tensor, device: torch.device):  # type: ignore[no-untyped-def]
    """One training step of the published teacher (§9: OHEM on out + 0.2 × the aux heads, SGD)."""
    torch.manual_seed(0)
    teacher = build_published("teacher", num_classes=NUM_CLASSES).to(device).train()
    paper = TrainConfig()  # §9.2's SGD settings, from the config's defaults
    opt = torch.optim.SGD(teacher.parameters(), lr=paper.lr, momentum=paper.momentum, weight_decay=paper.weight_decay)
    crit = OhemCrossEntropy(x.shape[0] * x.shape[2] * x.shape[3] // 16)  # §9.3 min_kept at crop resolution

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = teacher(x)
        sum_over_heads(crit, [out["out"], *out["aux"]], y, weights=(1, 0.2, 0.2)).backward()
        opt.step()

    return step


def _seconds(fn, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="camvid-cpu")
    parser.add_argument(
        "--iters", type=int, default=3, help="timed repetitions of each part (after one warm-up)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument(
        "--layers", type=int, default=0, help="supernet layers L (0 = the profile's model.num_layers)"
    )
    parser.add_argument(
        "--paths", nargs="+", choices=("mix", "sample"), default=["mix", "sample"], help="path modes to time"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.profile, {"model.num_layers": args.layers} if args.layers else {})
    sc, device = cfg.search, resolve_device(cfg.device)
    batch, crop = sc.search_batch_size, tuple(sc.search_crop_hw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *crop, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch, *crop), generator=g).to(device)
    print(
        f"{args.profile}: batch {batch}, crop {crop[0]}x{crop[1]}, supernet L={cfg.model.num_layers}, "
        f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores visible)"
    )

    # The teacher is built and warmed up first, so the first memory figure is its own peak; the timed
    # repetitions then alternate teacher step and search iteration, so that load from other processes on
    # a shared machine hits both alike (the ratio is the median of the per-repetition ratios).
    teacher_step = _teacher_step_fn(x, y, device)
    teacher_step()
    mem_teacher = _peak_mb(device)

    torch.manual_seed(0)
    net = build_supernet(cfg.model, NUM_CLASSES).to(device).train()
    lut = LatencyTable({e.key: 1.0 for e in lut_entries(tuple(sc.latency_input_hw), num_classes=NUM_CLASSES)},
                       tuple(sc.latency_input_hw), "constant", "none")
    latency = SupernetLatency(net, lut, faithful_quirks=sc.faithful_quirks, weights=sc.latency_weights)
    crit = OhemCrossEntropy(ohem_min_kept(batch, crop, loss_stride=8), sc.ohem_thresh)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=sc.search_lr, momentum=sc.momentum,
                            weight_decay=sc.weight_decay)
    a_opts = [
        torch.optim.Adam(net.arch_parameters(k), lr=sc.arch_lr, betas=tuple(sc.arch_betas)) for k in (0, 1)
    ]
    gen = torch.Generator().manual_seed(1)

    def arch(path: str) -> None:
        arch_step(net, x, y, crit, a_opts, latency, sc.latency_lambda_init, generator=gen, path=path)

    def weights(path: str) -> None:
        weight_step(
            net, x, y, crit, w_opt, SEARCH_PASSES, clip_norm=sc.grad_clip_norm, generator=gen, path=path
        )

    mem_search = {}
    for path in args.paths:  # warm-up; memory after each (cumulative: the process's peak so far)
        arch(path), weights(path)
        mem_search[path] = _peak_mb(device)
    t_teacher: list[float] = []
    t_arch: dict[str, list[float]] = {path: [] for path in args.paths}
    t_weight: dict[str, list[float]] = {path: [] for path in args.paths}
    for _ in range(args.iters):
        t_teacher.append(_seconds(teacher_step, device))
        for path in args.paths:
            t_arch[path].append(_seconds(functools.partial(arch, path), device))
            t_weight[path].append(_seconds(functools.partial(weights, path), device))

    med_t = statistics.median(t_teacher)
    print(f"teacher training step : {med_t:8.3f} s   peak memory {mem_teacher:8.0f} MiB")
    print(f"(profile {args.profile}: search.path_sampling = {str(sc.path_sampling).lower()})")
    paths = {}
    for path in args.paths:
        t_search = [a + w for a, w in zip(t_arch[path], t_weight[path])]
        ratio = statistics.median([s / t for s, t in zip(t_search, t_teacher)])
        med_s = statistics.median(t_search)
        print(
            f"search iteration {path:6s}: {med_s:8.3f} s   peak memory {mem_search[path]:8.0f} MiB   (arch step "
            f"{statistics.median(t_arch[path]):.3f} s + weight step {statistics.median(t_weight[path]):.3f} s)"
        )
        print(f"ratio search / teacher: {ratio:8.2f}×   target ≤ 6×: {'met' if ratio <= 6 else 'missed'}")
        print(
            f"| {args.profile} | {path} | {batch}×{crop[0]}×{crop[1]} | L={cfg.model.num_layers} | {med_t:.2f} s | "
            f"{med_s:.2f} s | {ratio:.1f}× | {mem_search[path]:.0f} MiB |"
        )
        paths[path] = {"search_s": med_s, "arch_step_s": statistics.median(t_arch[path]),
                       "weight_step_s": statistics.median(t_weight[path]), "search_over_teacher": ratio,
                       "peak_memory_mib": mem_search[path], "runs_s": t_search}
    headline = "search iteration / teacher step: " + ", ".join(
        f"{p} {v['search_over_teacher']:.1f}×" for p, v in paths.items()) + f" (target ≤ 6×; {device.type})"
    payload = {"profile": args.profile, "batch": batch, "crop_hw": list(crop), "layers": cfg.model.num_layers,
               "iters": args.iters, "threads": torch.get_num_threads(), "teacher_step_s": med_t,
               "teacher_peak_memory_mib": mem_teacher, "teacher_runs_s": t_teacher, "paths": paths}
    print(f"record: {write_record('search', payload, headline=headline, device=device.type)}")


if __name__ == "__main__":
    main()
