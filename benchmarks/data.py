"""Loader throughput for CamVid training crops (images/s) with 0 and 2 DataLoader workers.

    python benchmarks/data.py [--profile camvid-cpu] [--root DIR] [--batches 12]

Uses the profile's data section (CamVid, base_scale) and teacher crop/batch size, the §9.1 training
transform, shuffling and drop_last as in training. The first batch (worker start-up) is not timed.
Prints one result line per setting and a Markdown table row; the record goes to ``benchmarks/results/data/``
(:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import torch

from fasterseg_core.config import load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.records import write_record


def measure(dataset: torch.utils.data.Dataset, batch_size: int, workers: int, batches: int) -> float:
    """Images per second over ``batches`` batches, after one untimed batch."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers
    )
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="camvid-cpu")
    parser.add_argument("--root", default="", help="CamVid folder (default: the profile's data root)")
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    cfg = load_config(args.profile)
    data = dataclasses.replace(cfg.data, root=args.root) if args.root else cfg.data
    crop, batch = cfg.teacher.crop_size_hw, cfg.teacher.batch_size
    dataset = build_dataset(data, "train", train=True, crop_hw=crop)
    load_before = os.getloadavg()[0]
    results = {}
    # (workers, intra-op threads of the loading process); workers always run 1 thread (torch's default).
    for workers, threads in ((0, torch.get_num_threads()), (0, 1), (2, 1)):
        if workers == 0:
            torch.set_num_threads(threads)
        results[workers, threads] = measure(dataset, batch, workers, args.batches)
        print(
            f"{data.dataset} train, base_scale {data.base_scale}, crop {crop[0]}x{crop[1]}, batch {batch}, "
            f"{workers} workers, {threads} torch thread(s) per loading process: "
            f"{results[workers, threads]:.1f} images/s"
        )
    default = results[0, max(t for w, t in results if w == 0)]
    print(
        f"(1-min load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    print("| setting | 0 workers | 0 workers, 1 thread | 2 workers | machine |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| {data.dataset} train crops {crop[0]}x{crop[1]}, base_scale {data.base_scale}, batch {batch} "
        f"| {default:.0f} img/s | {results[0, 1]:.0f} img/s | {results[2, 1]:.0f} img/s "
        f"| {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__} |"
    )
    headline = (f"{data.dataset} crops {crop[0]}x{crop[1]}, batch {batch}: {default:.0f} img/s with 0 workers, "
                f"{results[0, 1]:.0f} with 0 workers and 1 thread, {results[2, 1]:.0f} with 2 workers")
    payload = {"profile": args.profile, "dataset": data.dataset, "base_scale": data.base_scale, "crop_hw": list(crop),
               "batch": batch, "batches": args.batches, "load_average_before": load_before,
               "settings": [{"workers": w, "threads": t, "images_per_s": v} for (w, t), v in results.items()]}
    print(f"record: {write_record('data', payload, headline=headline)}")


if __name__ == "__main__":
    main()
