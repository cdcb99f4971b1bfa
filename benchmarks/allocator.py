"""Training-step time under glibc's default allocator settings and under the pinned ones the pipeline uses.

    python benchmarks/allocator.py [--profile camvid-cpu] [--variants teacher distill student]
                                   [--iters 15] [--rounds 3] [--loader]

glibc reads its ``MALLOC_*`` variables once, at start-up, so each timing is a fresh child process: the same
script with ``--child``, started with the variables of :data:`fasterseg_core.machine.STABLE_MALLOC` set
("pinned") or removed ("default"). Round after round both settings run, in alternating order, so load from
other processes hits both alike. A child times one :func:`fasterseg_core.engine.fit` epoch of ``--iters``
iterations of one stage at the profile's crop, batch, precision and layout (as ``benchmarks/train.py``:
forward, OHEM + aux losses, the frozen teacher's forward for ``distill``, backward, SGD step), after a
2-iteration warm-up epoch, on real training crops held in memory (``--loader``: the profile's real loader,
``data.cache_decoded`` and ``data.num_workers``, instead).

Reported per stage: the median seconds per iteration under each setting and pinned / default as the median
of the per-round ratios (with their range); the record goes to ``benchmarks/results/allocator/``
(:func:`fasterseg_core.records.write_record`). Why the pipeline pins the allocator: with the defaults, glibc
hands every large block (a feature map, a gradient) back to the kernel when it is freed and page-faults it in
again on the next iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace

import torch

# benchmarks/ is a folder of scripts: its siblings import as top-level modules when a script runs
from train import VARIANTS, _camvid_config, build_variant, draw_crops, engine_seconds

from fasterseg_core.data import build_dataset
from fasterseg_core.machine import STABLE_MALLOC, resolve_device
from fasterseg_core.records import write_record

SETTINGS = ("default", "pinned")


def child(profile: str, variant: str, iters: int, loader: bool) -> float:
    """Seconds per iteration of one stage in this process (whatever its allocator settings)."""
    cfg = _camvid_config(profile)
    device = resolve_device(cfg.device)
    spec = getattr(cfg, VARIANTS[variant][0])
    hw = tuple(spec.crop_size_hw)
    if loader:
        data = build_dataset(replace(cfg.data, cache_decoded=True), "train", train=True, crop_hw=hw)
    else:
        data = draw_crops(build_dataset(cfg.data, "train", train=True, crop_hw=hw), 2 * spec.batch_size)
    net, teacher = build_variant(variant, data.num_classes)
    workers = cfg.data.num_workers if loader else 0
    engine_seconds(spec, net, data, device, 2, teacher, workers)  # warm-up: kernels, first touch of weights
    return engine_seconds(spec, net, data, device, iters, teacher, workers) / iters


def environment(setting: str) -> dict[str, str]:
    """This process's environment with the pinned allocator variables set or removed."""
    env = {k: v for k, v in os.environ.items() if k not in STABLE_MALLOC}
    return {**env, **STABLE_MALLOC} if setting == "pinned" else env


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="camvid-cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loader", action="store_true", help="the profile's real (cached) loader, with workers")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps({"s_per_iter": child(args.profile, args.child, args.iters, args.loader)}))
        return

    load = os.getloadavg()[0]
    if load > 1.0:
        print(
            f"WARNING: load average {load:.2f} > 1: another job holds the cores; these numbers are not clean"
        )
    print(
        f"{args.profile}: {', '.join(args.variants)}; {args.iters} iterations per timing, {args.rounds} rounds, "
        f"{'real cached loader' if args.loader else 'in-memory crops'}; torch {torch.__version__}, "
        f"{os.cpu_count()} cores; pinned = {' '.join(f'{k}={v}' for k, v in STABLE_MALLOC.items())}"
    )
    times = {(v, s): [] for v in args.variants for s in SETTINGS}
    for r in range(args.rounds):
        for v in args.variants:
            for s in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
                cmd = [sys.executable, __file__, "--child", v, "--profile", args.profile, "--iters", str(args.iters),
                       *["--loader"] * args.loader]
                out = subprocess.run(cmd, env=environment(s), check=True, capture_output=True, text=True).stdout
                times[v, s].append(json.loads(out.strip().splitlines()[-1])["s_per_iter"])
            print(f"  round {r + 1}: {v} default {times[v, 'default'][-1]:.3f} s, pinned "
                  f"{times[v, 'pinned'][-1]:.3f} s per iteration", flush=True)
    print(
        "\n| stage | default s/iteration | pinned s/iteration | pinned / default (median of rounds [range]) |"
    )
    print("|---|---|---|---|")
    rows = []
    for v in args.variants:
        d, q = times[v, "default"], times[v, "pinned"]
        ratios = [b / a for a, b in zip(d, q)]
        print(f"| {v} | {statistics.median(d):.3f} | {statistics.median(q):.3f} | "
              f"{statistics.median(ratios):.3f} [{min(ratios):.3f}–{max(ratios):.3f}] |")
        rows.append({"stage": v, "default_s_per_iter": statistics.median(d), "pinned_s_per_iter": statistics.median(q),
                     "pinned_over_default": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
                     "default_runs": d, "pinned_runs": q})
    headline = "pinned / default s per iteration (median of rounds): " + ", ".join(
        f"{r['stage']} {r['pinned_over_default']:.3f}×" for r in rows) + (" (real loader)" if args.loader else "")
    payload = {"profile": args.profile, "iters": args.iters, "rounds": args.rounds, "loader": args.loader,
               "load_average_before": load, "pinned": STABLE_MALLOC, "rows": rows}
    print(f"record: {write_record('allocator', payload, headline=headline)}")


if __name__ == "__main__":
    main()
