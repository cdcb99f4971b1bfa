"""Training throughput of the three training stages through the real engine, and of the loader that feeds them.

    python benchmarks/train.py [--profile camvid-cpu] [--iters 3] [--rounds 3] [--loader-batches 12]
    python benchmarks/train.py --gpu-recipe [--device cuda] [--batch 12] [--hw 512 1024] [--iters 100]
                               [--rounds 4] [--warmup 10] [--amp none bf16] [--json OUT.json]

Default mode (issue 6): at the profile's training crop and batch (``camvid-cpu``: 8 × 160×224 on real
CamVid from ``$FASTERSEG_DATA``, ``data/camvid`` or ``../shared/data``), in one process:

* **training images/s** of ``teacher`` (arch 0), ``distill`` (arch 1 + the frozen teacher's forward) and
  ``student`` (arch 1), the published §6 networks: one :func:`fasterseg_core.engine.fit` epoch of
  ``--iters`` iterations (forward, OHEM + aux losses, backward, SGD step; the engine's own ``seconds``,
  which leave out checkpoint writing) on real training crops drawn beforehand and held in memory, so that
  the loader is not in this figure;
* **loader images/s**: the engine's epoch loader (§9.1 sampling and augmentation of real images: decode,
  pre-resize, flip, scale, normalise, crop, collate) with the profile's ``data.num_workers`` and with 0
  workers, each epoch's worker start-up included (the engine starts its workers every epoch);
* **both together**: the same fit fed by that real loader (``data.num_workers`` workers sharing the cores
  with the training threads), and which of the two bounds the step (the slower one alone).
* **with the cached loader**: the same again with ``data.cache_decoded`` (every pair decoded once before
  the workers fork, so an item costs its augmentation only), and that loader alone; and the cached loader
  with 0 workers (augmentation in the training process, between steps, instead of beside them).

The loader must not be the bottleneck: ``loader / training`` > 1 for every stage. The loader was timed on
its own here; during training its workers share the cores with the training threads. The variants are
timed alternately, round after round, so load from other processes hits all of them alike; medians over
rounds are reported. glibc's allocator is pinned first (:func:`~fasterseg_core.machine.stable_malloc_env`).

``--gpu-recipe`` (what ``benchmarks/gpu_train.sh`` runs on a lent GPU): the paper's recipe (§9.1–§9.3,
batch 12, 512×1024 crops, 19 classes) for the three stages in fp32 and bf16 autocast, through the same
engine, on synthetic street scenes drawn at 512×1024 (no Cityscapes on the GPU machines) and passed through
the §9.1 transform; seconds per 100 iterations, and the paper's 600 epochs × 1000 iterations extrapolated
to GPU-hours next to the reproduction study's RTX 3080 Ti figures. cuDNN benchmark on, as §9.2. The loader
runs in the main process (``num_workers=0``), so each iteration includes collating 12 crops (~75 MB) and
copying them to the GPU: an upper bound for a run whose workers collate in parallel.

Both modes write their record to ``benchmarks/results/train/`` (:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fasterseg_core.config import RunConfig, TrainConfig, load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.data.sampling import epoch_loader
from fasterseg_core.data.stats import split_summary
from fasterseg_core.distributed import DistInfo
from fasterseg_core.engine import fit, training_loss
from fasterseg_core.latency.measure import environment_record
from fasterseg_core.losses import class_weights
from fasterseg_core.machine import resolve_device, stable_malloc_env
from fasterseg_core.models import build_network, init_weights_, published_architecture
from fasterseg_core.records import write_record

REPO = Path(__file__).resolve().parents[1]
# variant → (config section, architecture role, with the frozen teacher)
VARIANTS = {
    "teacher": ("teacher", "teacher", False),
    "distill": ("distill", "student", True),
    "student": ("student", "student", False),
}
# The reproduction study (Lebedys, Galili & Tan 2022; ../shared/reference/reproduction_2022.json
# "training_times_hours.from_log_timestamps"): mean training seconds per 1000-iteration epoch, batch 12 at
# 512×1024, one RTX 3080 Ti, validation excluded. Student: 586.4 (100 epochs) and 593.5 (300 epochs) → 590.
STUDY_S_PER_EPOCH = {"teacher": 662.5, "distill": 884.0, "student": 590.0}
PAPER_EPOCHS, PAPER_ITERS = 600, 1000  # §9.2


class InMemoryCrops(Dataset):
    """Training crops drawn once and served from memory: times the training step, not the loader.

    Args:
        items: (image float32 (3, h, w), label int64 (h, w)) pairs.
        num_classes: the dataset's number of classes.
    """

    def __init__(self, items: Sequence[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> None:
        self.items, self.num_classes = list(items), num_classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def draw_crops(dataset: Dataset, n: int, seed: int = 0) -> InMemoryCrops:
    """``n`` augmented crops of ``dataset`` (items ``0, k, 2k, …`` spread over it), seeded."""
    torch.manual_seed(seed)  # the §9.1 transforms draw from the global generator
    step = max(1, len(dataset) // n)
    return InMemoryCrops([dataset[(i * step) % len(dataset)] for i in range(n)], dataset.num_classes)


def build_variant(variant: str, num_classes: int, seed: int = 0) -> tuple[nn.Module, nn.Module | None]:
    """The trained network of a variant (published §6 architecture, §7.3 init) and its frozen teacher."""
    _, role, distilled = VARIANTS[variant]
    torch.manual_seed(seed)
    net = build_network(published_architecture(role), num_classes)
    init_weights_(net)
    teacher = None
    if distilled:
        teacher = build_network(published_architecture("teacher"), num_classes)
        init_weights_(teacher)
        teacher.eval().requires_grad_(False)
    return net, teacher


def engine_seconds(
    spec: TrainConfig,
    net: nn.Module,
    data: Dataset,
    device: torch.device,
    iters: int,
    teacher: nn.Module | None = None,
    workers: int = 0,
    class_weight: torch.Tensor | None = None,
) -> float:
    """Seconds of one :func:`~fasterseg_core.engine.fit` epoch of ``iters`` iterations on ``data``.

    The engine's history ``seconds``: sampling, collate, host→device copy, forward, loss, backward and step
    of every iteration (the engine reads each loss back, so the device is synchronised); no evaluation (no
    validation set) and no checkpoint writing (timed separately by the engine, left out here).
    """
    spec = replace(spec, epochs=1, iters_per_epoch=iters, eval_every_epochs=10**9)
    with tempfile.TemporaryDirectory(prefix="fasterseg-bench-") as tmp:
        loss = training_loss(spec, teacher, device, class_weight=class_weight)
        result = fit(spec, net, loss, data, None, device, Path(tmp), num_workers=workers, progress=False)
    return float(result.history[0]["seconds"])


def loader_seconds(dataset: Dataset, spec: TrainConfig, workers: int, batches: int, epoch: int) -> float:
    """Seconds for the engine's epoch loader to deliver ``batches`` batches (worker start-up included)."""
    spec = replace(spec, iters_per_epoch=batches)
    t0 = time.perf_counter()
    for _ in epoch_loader(dataset, spec.batch_size, spec.iters_per_epoch, 12345, epoch, DistInfo(), workers):
        pass
    return time.perf_counter() - t0


def _camvid_config(profile: str) -> RunConfig:
    """The profile, reading CamVid from $FASTERSEG_DATA, data/camvid, or ../shared/data (in that order)."""
    cfg = load_config(profile)
    shared = REPO.parent / "shared" / "data" / cfg.data.dataset
    own = cfg.data.root or os.environ.get("FASTERSEG_DATA") or (REPO / "data" / cfg.data.dataset).exists()
    if cfg.data.dataset != "synthetic" and not own and shared.exists():
        cfg = load_config(profile, {"data.root": str(shared)})
    return cfg


def cpu_profile(profile: str, iters: int, rounds: int, loader_batches: int) -> dict[str, Any]:
    """Training and loader throughput at a profile's crop and batch (the default mode; see module doc)."""
    cfg = _camvid_config(profile)
    device = resolve_device(cfg.device)
    specs = {v: getattr(cfg, VARIANTS[v][0]) for v in VARIANTS}
    crops: dict[tuple[int, int], InMemoryCrops] = {}
    for spec in specs.values():
        hw = tuple(spec.crop_size_hw)
        if hw not in crops:  # two batches of real crops per crop size, shared by the variants
            crops[hw] = draw_crops(
                build_dataset(cfg.data, "train", train=True, crop_hw=hw), 2 * spec.batch_size
            )
    teacher_spec = specs["teacher"]
    loader_set = build_dataset(cfg.data, "train", train=True, crop_hw=tuple(teacher_spec.crop_size_hw))
    # the real loader per crop size, for the step and the loader together (workers share the cores)
    real = {hw: build_dataset(cfg.data, "train", train=True, crop_hw=hw) for hw in crops}
    # the same with data.cache_decoded on (decoded once, here, before the workers fork); off in the profile
    # or not, both loaders are timed, so the table says what the cache buys on this machine
    cached_data = replace(cfg.data, cache_decoded=True)
    real_cached = {hw: build_dataset(cached_data, "train", train=True, crop_hw=hw) for hw in crops}
    loader_cached_set = real_cached[tuple(teacher_spec.crop_size_hw)]
    num_classes = loader_set.num_classes
    weight = None  # the profile's class weighting, as stages.run_training computes it (one pass over the labels)
    if teacher_spec.class_weighting != "none":
        weight = class_weights(split_summary(loader_set)["pixel_counts"], teacher_spec.class_weighting)
    models = {v: build_variant(v, num_classes) for v in VARIANTS}
    workers = cfg.data.num_workers
    load = os.getloadavg()[0]
    if load > 1.0:  # 2-thread OpenMP regions lose whole scheduler slices to other jobs (up to 20x here)
        print(
            f"WARNING: load average {load:.2f} > 1: another job holds the cores; these numbers are not clean"
        )
    print(
        f"{profile}: {cfg.data.dataset} ({len(loader_set)} training images), device {device}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores visible, loader workers {workers}"
    )
    for v, spec in specs.items():
        print(
            f"  {v:8s}: batch {spec.batch_size}, crop {spec.crop_size_hw[0]}x{spec.crop_size_hw[1]}, "
            f"{iters} iterations per timing, {rounds} rounds"
        )

    for v, (net, teacher) in models.items():  # warm-up: allocator, kernels, first-touch of weights
        engine_seconds(specs[v], net, crops[tuple(specs[v].crop_size_hw)], device, 1, teacher, class_weight=weight)
    loader_seconds(loader_set, teacher_spec, 0, 1, epoch=0)
    keys = (*VARIANTS, *(f"{v}+loader" for v in VARIANTS), *(f"{v}+cached" for v in VARIANTS),
            *(f"{v}+cached_0" for v in VARIANTS), "loader",
            "loader_0", "loader_cached")
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for v, (net, teacher) in models.items():
            s = engine_seconds(specs[v], net, crops[tuple(specs[v].crop_size_hw)], device, iters, teacher, class_weight=weight)
            times[v].append(iters * specs[v].batch_size / s)
            s = engine_seconds(specs[v], net, real[tuple(specs[v].crop_size_hw)], device, iters, teacher, workers, class_weight=weight)
            times[f"{v}+loader"].append(iters * specs[v].batch_size / s)
            hw = tuple(specs[v].crop_size_hw)
            s = engine_seconds(specs[v], net, real_cached[hw], device, iters, teacher, workers, class_weight=weight)
            times[f"{v}+cached"].append(iters * specs[v].batch_size / s)
            s = engine_seconds(specs[v], net, real_cached[hw], device, iters, teacher, 0, class_weight=weight)
            times[f"{v}+cached_0"].append(iters * specs[v].batch_size / s)
        for key, w, dataset in (("loader", workers, loader_set), ("loader_0", 0, loader_set),
                                ("loader_cached", workers, loader_cached_set)):
            s = loader_seconds(dataset, teacher_spec, w, loader_batches, epoch=r + 1)
            times[key].append(loader_batches * teacher_spec.batch_size / s)
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items())
            + " img/s",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n| stage | training img/s (in-memory crops) | with the real loader | s/iteration | one epoch of the "
        f"profile | loader ({workers} workers) / training | loader (0 workers) / training | bound | with the "
        f"cached loader (data.cache_decoded) | the same, 0 workers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for v, spec in specs.items():
        s_it = spec.batch_size / med[v]
        rows.append(
            {
                "stage": v,
                "images_per_s": med[v],
                "s_per_iter": s_it,
                "batch": spec.batch_size,
                "crop_hw": list(spec.crop_size_hw),
                "ratio_loader": med["loader"] / med[v],
                "ratio_loader_0": med["loader_0"] / med[v],
                "images_per_s_with_loader": med[f"{v}+loader"],
                # the slower of the two alone bounds the pair; sharing the cores costs the rest
                "bound": "loader" if med["loader"] < med[v] else "step",
                "runs": times[v],
                "runs_with_loader": times[f"{v}+loader"],
                "images_per_s_with_cached_loader": med[f"{v}+cached"],
                "runs_with_cached_loader": times[f"{v}+cached"],
                "images_per_s_with_cached_loader_0_workers": med[f"{v}+cached_0"],
                "runs_with_cached_loader_0_workers": times[f"{v}+cached_0"],
            }
        )
        print(
            f"| {v} | {med[v]:.2f} | {med[f'{v}+loader']:.2f} | {s_it:.2f} s | "
            f"{s_it * spec.iters_per_epoch / 60:.1f} min | {med['loader'] / med[v]:.1f}× | "
            f"{med['loader_0'] / med[v]:.1f}× | {rows[-1]['bound']} | {med[f'{v}+cached']:.2f} | "
            f"{med[f'{v}+cached_0']:.2f} |"
        )
    print(
        f"\nloader: {med['loader']:.1f} img/s with {workers} workers, {med['loader_0']:.1f} img/s with 0 "
        f"(batches of {teacher_spec.batch_size}, {loader_batches} per epoch, start-up included); "
        f"{med['loader_cached']:.1f} img/s with {workers} workers and data.cache_decoded"
    )
    slowest_margin = min(r["ratio_loader"] for r in rows)
    print(
        f"loader bottleneck: {'no' if slowest_margin > 1 else 'YES'} (smallest loader/training ratio "
        f"{slowest_margin:.1f}×)"
    )
    return {
        "mode": "profile",
        "profile": profile,
        "environment": environment_record(device),
        "load_average_before": load,
        "loader": {
            "workers": workers,
            "images_per_s": med["loader"],
            "images_per_s_0_workers": med["loader_0"],
            "batches": loader_batches,
            "runs": times["loader"],
            "runs_0_workers": times["loader_0"],
            "images_per_s_cached": med["loader_cached"],
            "runs_cached": times["loader_cached"],
        },
        "rows": rows,
    }


def gpu_recipe(
    device: torch.device,
    batch: int = 12,
    hw: tuple[int, int] = (512, 1024),
    iters: int = 100,
    rounds: int = 4,
    warmup: int = 10,
    amps: Sequence[str] = ("none", "bf16"),
    variants: Sequence[str] = tuple(VARIANTS),
    channels_last: bool = False,
) -> dict[str, Any]:
    """Seconds per 100 iterations of the paper's recipe per (stage, precision), and the 600-epoch cost.

    Args:
        device: where to train (``cuda`` on the lent GPU; ``cpu`` for the test at a tiny size).
        batch: global batch (12, §9.1).
        hw: crop and synthetic scene size (512×1024, §9.1).
        iters: timed iterations per (stage, precision), split evenly over ``rounds`` alternating rounds.
        rounds: alternating rounds; seconds per 100 iterations = the median round's seconds per iteration × 100.
        warmup: untimed iterations per (stage, precision) first (cuDNN autotuning, allocator).
        amps: "none" (fp32; convolutions may use TF32, see the record) and/or "bf16"/"fp16" autocast.
        variants: a subset of ``teacher``, ``distill``, ``student``.
        channels_last: the engine's channels-last option.

    Returns:
        A JSON-ready dict: ``environment``, ``recipe``, and ``rows`` with one entry per (stage, precision):
        ``s_per_100_iters``, ``images_per_s``, ``peak_memory_gib`` (CUDA), ``gpu_hours_600_epochs`` and the
        study's figures (``study_s_per_1000_iters``, ``study_gpu_hours_600_epochs``, ``speedup_vs_study``).
    """
    if iters < rounds:
        raise ValueError(
            f"iters ({iters}) must be at least rounds ({rounds}): each round times iters // rounds"
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # §9.2
    sections = {VARIANTS[v][0] for v in variants}
    over: dict[str, Any] = {"device": str(device), "data.dataset": "synthetic", "data.synthetic_hw": list(hw)}
    for s in sections:
        over.update(
            {f"{s}.batch_size": batch, f"{s}.crop_size_hw": list(hw), f"{s}.channels_last": channels_last}
        )
    cfg = load_config("cityscapes-paper", over)
    t0 = time.perf_counter()
    # one global batch of synthetic scenes through the §9.1 transform (flip, scale, crop; padded with 255)
    data = draw_crops(build_dataset(cfg.data, "train", train=True, crop_hw=hw), batch)
    print(
        f"synthetic data: {batch} scenes at {hw[0]}x{hw[1]} in {time.perf_counter() - t0:.1f} s", flush=True
    )
    models = {v: build_variant(v, data.num_classes) for v in variants}
    combos = [(v, a) for v in variants for a in amps]
    specs = {(v, a): replace(getattr(cfg, VARIANTS[v][0]), amp=a) for v, a in combos}
    peak: dict[tuple[str, str], float | None] = {}
    for v, a in combos:
        net, teacher = models[v]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        s = engine_seconds(specs[v, a], net, data, device, warmup, teacher)
        peak[v, a] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        print(f"warm-up {v:8s} {a:5s}: {warmup} it in {s:.1f} s", flush=True)
    per_round = iters // rounds
    times: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    for r in range(rounds):
        for v, a in combos:
            net, teacher = models[v]
            times[v, a].append(engine_seconds(specs[v, a], net, data, device, per_round, teacher) / per_round)
        print(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{v}/{a} {times[v, a][-1] * 100:.1f}" for v, a in combos)
            + " s per 100 it",
            flush=True,
        )
    rows = []
    for v, a in combos:
        s_it = statistics.median(times[v, a])
        hours = s_it * PAPER_EPOCHS * PAPER_ITERS / 3600
        study = STUDY_S_PER_EPOCH[v]
        rows.append(
            {
                "stage": v,
                "amp": a,
                "s_per_100_iters": 100 * s_it,
                "s_per_1000_iters": 1000 * s_it,
                "images_per_s": batch / s_it,
                "round_s_per_iter": times[v, a],
                "peak_memory_gib": peak[v, a],
                "gpu_hours_600_epochs": hours,
                "study_s_per_1000_iters": study,
                "study_gpu_hours_600_epochs": study * PAPER_EPOCHS / 3600,
                "speedup_vs_study": study / (1000 * s_it),
            }
        )
    recipe = {
        "batch": batch,
        "crop_hw": list(hw),
        "iters": per_round * rounds,
        "rounds": rounds,
        "warmup": warmup,
        "epochs_extrapolated": PAPER_EPOCHS,
        "iters_per_epoch": PAPER_ITERS,
        "channels_last": channels_last,
        "num_classes": data.num_classes,
        "loader_workers": 0,
        "data": f"synthetic street scenes drawn at {hw[0]}x{hw[1]} through the §9.1 transform, "
        f"{batch} crops held in memory (no Cityscapes on the GPU machine)",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "study_gpu": "RTX 3080 Ti 12 GB (reproduction study, 2022)",
    }
    return {"mode": "gpu-recipe", "profile": "cityscapes-paper", "overrides": over,
            "environment": environment_record(device), "recipe": recipe, "rows": rows}


def print_gpu_table(result: dict[str, Any]) -> None:
    """The ``--gpu-recipe`` rows as a Markdown table."""
    print(
        "\n| stage | precision | s / 100 it | img/s | peak GiB | 600 epochs (GPU-h) | study 3080 Ti (GPU-h) "
        "| speed-up |\n|---|---|---|---|---|---|---|---|"
    )
    for r in result["rows"]:
        mem = "–" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        print(
            f"| {r['stage']} | {'fp32' if r['amp'] == 'none' else r['amp']} | {r['s_per_100_iters']:.1f} | "
            f"{r['images_per_s']:.1f} | {mem} | {r['gpu_hours_600_epochs']:.1f} | "
            f"{r['study_gpu_hours_600_epochs']:.1f} | {r['speedup_vs_study']:.2f}× |"
        )


def headline(result: dict[str, Any]) -> str:
    """One line for ``python -m fasterseg_core results``: seconds per 100 iterations (``--gpu-recipe``) or
    training and loader images per second (the default mode)."""
    if result["mode"] == "gpu-recipe":
        by_amp: dict[str, list[str]] = {}
        for r in result["rows"]:
            by_amp.setdefault("fp32" if r["amp"] == "none" else r["amp"], []).append(
                f"{r['stage']} {r['s_per_100_iters']:.1f}")
        return (f"paper recipe, batch {result['recipe']['batch']} at {result['recipe']['crop_hw'][0]}x"
                f"{result['recipe']['crop_hw'][1]}, s per 100 iterations: "
                + "; ".join(f"{a} {', '.join(v)}" for a, v in by_amp.items()))
    rows = {r["stage"]: r for r in result["rows"]}
    return (f"{result['profile']} training img/s " + ", ".join(f"{s} {r['images_per_s']:.1f}" for s, r in rows.items())
            + "; with the real loader " + ", ".join(f"{r['images_per_s_with_loader']:.1f}" for r in rows.values())
            + f"; loader alone {result['loader']['images_per_s']:.0f} img/s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="camvid-cpu")
    parser.add_argument(
        "--iters",
        type=int,
        default=0,
        help="timed iterations per timing (default: 3; --gpu-recipe: 100 per stage in total)",
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="alternating rounds (default: 3; --gpu-recipe 4)"
    )
    parser.add_argument("--loader-batches", type=int, default=12, help="batches per loader timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--gpu-recipe", action="store_true", help="the paper's recipe on a GPU (see above)")
    parser.add_argument("--device", default="cuda", help="--gpu-recipe: cuda, cuda:1 … (cpu for a dry run)")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--hw", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"])
    parser.add_argument("--stages", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    stable_malloc_env()  # re-executes this program once with the allocator pinned (see module doc)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu_recipe:
        result = gpu_recipe(
            torch.device(args.device),
            args.batch,
            tuple(args.hw),
            args.iters or 100,
            args.rounds or 4,
            args.warmup,
            args.amp,
            args.stages,
            args.channels_last,
        )
        print_gpu_table(result)
    else:
        result = cpu_profile(args.profile, args.iters or 3, args.rounds or 3, args.loader_batches)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    device = torch.device(result["environment"]["device"]).type
    print(f"record: {write_record('train', result, headline=headline(result), device=device)}")
    return result


if __name__ == "__main__":
    main()
