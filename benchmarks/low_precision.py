"""bf16 against the best fp32 inference path, interleaved in one process, with a trained checkpoint.

    python benchmarks/low_precision.py [--profile camvid-cpu] [--stage 03_distill] [--size 1024x2048]
                                       [--rounds 5] [--seconds 3] [--images 8] [--json OUT.json]

Two earlier runs disagreed (bf16 2.24x and 1.12x faster than the best fp32 path), each timing one backend
after the other once. Here every backend is prepared once (fp32: eager, channels_last, compile, ort; low
precision: bf16, ort_int8), then timed round after round in turn, so load from other processes hits all of
them alike. Per backend: the median of the per-round medians and the spread (min-max of the round
medians); per round: the best fp32 path's median over bf16's, so the ratio comes with its own spread.

The weights are the pipeline's own: the profile's trained student (``--stage``, best checkpoint, first
seed), so the argmax agreement with fp32 eager is measured where it matters, on real CamVid validation
images resized to ``--size`` (the paper's 1024x2048 by default). Target (issue 16): bf16 >= 2x faster than
the best fp32 path with agreement >= 99 %. The record goes to ``benchmarks/results/low_precision/``
(:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from fasterseg_core.backend_table import BACKENDS
from fasterseg_core.checkpoints import load_stage_model
from fasterseg_core.config import load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.latency import prepare
from fasterseg_core.latency.agreement import agreement
from fasterseg_core.latency.measure import environment_record, time_prepared
from fasterseg_core.latency.suite import real_images
from fasterseg_core.machine import stable_malloc_env
from fasterseg_core.records import write_record

# The backend table's CPU paths: the fp32 ones, and the low-precision ones checked against fp32 eager.
FP32 = tuple(n for n, b in BACKENDS.items() if b.device != "cuda" and not b.low_precision)
LOW = tuple(n for n, b in BACKENDS.items() if b.device != "cuda" and b.low_precision)


def main() -> None:
    stable_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="camvid-cpu")
    p.add_argument("--stage", default="03_distill", choices=["02_teacher", "03_distill", "04_student"])
    p.add_argument("--size", default="1024x2048")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per backend and round")
    p.add_argument("--images", type=int, default=8, help="CamVid val images for the agreement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    cfg = load_config(args.profile)
    net, info = load_stage_model(cfg, args.stage, "best")
    val = build_dataset(cfg.data, "val", train=False)
    images, labels = real_images(val, size, args.images)
    print(f"{args.stage} best checkpoint ({info['path']}, seed {info['seed']}), {args.size}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}", flush=True)
    prepared = {}
    for backend in (*FP32, *LOW):
        prepared[backend] = prepare(net, images[0], backend, "cpu", num_threads=args.threads,
                                    calibration_images=images[:4])
        print(f"  prepared {backend}: {prepared[backend].info.get('dtype', '')}", flush=True)
    rounds: dict[str, list[float]] = {b: [] for b in prepared}
    for r in range(args.rounds):
        for backend, prep in prepared.items():
            times = time_prepared(prep.run, prep.sync, warmup=2, min_loop_s=0.5, timed_s=args.seconds, min_iters=3)
            rounds[backend].append(statistics.median(times))
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{b} {v[-1]:.0f}" for b, v in rounds.items()) + " ms",
              flush=True)
    median = {b: statistics.median(v) for b, v in rounds.items()}
    best32 = min(FP32, key=median.get)
    per_round = [f / b for f, b in zip(rounds[best32], rounds["bf16"], strict=True)]
    ref = prepared["eager"]
    agree = {b: agreement(ref, prepared[b], images, labels, num_classes=val.num_classes) for b in LOW}
    print(f"\n| backend | median ms (of {args.rounds} round medians) | min-max | vs best fp32 | argmax agreement |")
    print("|---|---|---|---|---|")
    for b in prepared:
        lo, hi = min(rounds[b]), max(rounds[b])
        ag = f"{agree[b]['pixel_agreement']:.4f}" if b in agree else ""
        print(f"| {b}{' (best fp32)' if b == best32 else ''} | {median[b]:.1f} | {lo:.1f}-{hi:.1f} | "
              f"{median[best32] / median[b]:.2f}x | {ag} |")
    print(f"\nbf16 vs best fp32 ({best32}) per round: median {statistics.median(per_round):.2f}x, "
          f"min {min(per_round):.2f}x, max {max(per_round):.2f}x; agreement "
          f"{agree['bf16']['pixel_agreement']:.4f}, mIoU change {agree['bf16'].get('miou_change', float('nan')):+.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment_record(torch.device("cpu")), "size": args.size,
                                         "checkpoint": str(info["path"]), "rounds": rounds, "median_ms": median,
                                         "best_fp32": best32, "bf16_ratio_per_round": per_round,
                                         "agreement": agree}, indent=1, default=str))
    ratio = statistics.median(per_round)
    headline = (f"bf16 {ratio:.2f}× as fast as the best fp32 path ({best32}; rounds {min(per_round):.2f}–"
                f"{max(per_round):.2f}×), argmax agreement {agree['bf16']['pixel_agreement']:.3f}")
    payload = {"profile": args.profile, "stage": args.stage, "checkpoint": str(info["path"]), "seed": info["seed"],
               "size": args.size, "rounds": args.rounds, "seconds": args.seconds, "images": args.images,
               "threads": args.threads, "round_medians_ms": rounds, "median_ms": median, "best_fp32": best32,
               "bf16_ratio_per_round": per_round, "agreement": json.loads(json.dumps(agree, default=str))}
    print(f"record: {write_record('low_precision', payload, headline=headline)}")


if __name__ == "__main__":
    main()
