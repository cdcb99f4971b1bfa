"""CPU speed of the FasterSeg student against a fixed yardstick (torchvision LR-ASPP MobileNetV3-Large).

Issue #3 targets, at batch 1, 2 threads, 512×1024, median of ≥ 20 runs in one process, timed
alternately so that background load hits every model alike:

* our student (eval mode) ≤ 0.9 × LR-ASPP;
* our fused student (``fuse_for_inference``) ≤ 0.75 × our unfused student.

Also timed, for transparency: the unfused student fed a channels-last input (how much of the fused
speed-up is layout rather than BN folding). glibc's allocator returns big freed blocks to the OS and
page-faults them back on every forward pass, which adds noise proportional to activation size, so the
script re-executes itself with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=… MALLOC_TOP_PAD_=…`` set.

Usage: ``python benchmarks/models.py [--runs 25] [--height 512 --width 1024] [--json out.json]``

The record goes to ``benchmarks/results/models/`` (:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_TOP_PAD_": "1000000000",
}


def _ensure_malloc_env() -> bool:
    """Re-exec this script with the allocator settings unless they are set; True if we re-executed."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return os.environ.get("_FASTERSEG_BENCH_REEXEC") == "1"
    env = {**os.environ, **MALLOC_ENV, "_FASTERSEG_BENCH_REEXEC": "1"}
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    raise AssertionError("unreachable")


def _time_alternately(
    models: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(warmup):
        for fn in models.values():
            fn()
    for _ in range(runs):
        for name, fn in models.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=25, help="timed runs per model (median reported; ≥ 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    reexecuted = _ensure_malloc_env()

    import torch
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    from fasterseg_core.models import build_published
    from fasterseg_core.models.fuse import fuse_for_inference
    from fasterseg_core.models.state_dict import keyed_state_dict_for, load_official_state_dict
    from fasterseg_core.records import write_record

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student = build_published("student")
    # Trained-looking BN statistics, so that folding has real work to do and the equality check bites.
    load_official_state_dict(student, keyed_state_dict_for(student))
    student.eval()
    fused = fuse_for_inference(student)
    lraspp = lraspp_mobilenet_v3_large(num_classes=19, weights=None, weights_backbone=None).eval()
    x = torch.randn(1, 3, args.height, args.width)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)

    with torch.inference_mode():
        y, y_fused = student(x)["out"], fused(x)["out"]
        rel = ((y - y_fused).abs().max() / y.abs().max()).item()
        if rel > 1e-4:
            raise RuntimeError(f"fused student differs from the unfused one (max rel. error {rel:.2e})")
        models = {
            "student": lambda: student(x),
            "student_fused": lambda: fused(x),
            "lraspp_mobilenet_v3_large": lambda: lraspp(x),
            "student_nhwc_input": lambda: student(x_nhwc),
        }
        times = _time_alternately(models, args.runs, args.warmup)

    med = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "input": [1, 3, args.height, args.width],
        "threads": args.threads,
        "runs": args.runs,
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "min_ms": {k: round(min(t), 2) for k, t in times.items()},
        "ratios": {
            "student / lraspp (target ≤ 0.9)": round(med["student"] / med["lraspp_mobilenet_v3_large"], 3),
            "fused / student (target ≤ 0.75)": round(med["student_fused"] / med["student"], 3),
            "student_nhwc_input / student": round(med["student_nhwc_input"] / med["student"], 3),
        },
        "fused_max_rel_error": rel,
        "malloc_env_reexec": reexecuted,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average": list(os.getloadavg()),
    }
    if reexecuted:
        print("note: re-executed with " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()))
    print(
        f"input 1x3x{args.height}x{args.width}, batch 1, {args.threads} threads, {args.runs} alternating runs"
    )
    for name in models:
        print(f"  {name:28s} median {med[name]:8.1f} ms   min {min(times[name]):8.1f} ms")
    for name, ratio in result["ratios"].items():
        print(f"  {name:36s} {ratio:.3f}")
    print(f"  fused vs unfused max rel. error {rel:.1e}; load average {result['load_average']}")
    disturbed = [k for k, t in times.items() if med[k] > 1.25 * min(t)]
    result["disturbed"] = disturbed
    if disturbed:
        # Other processes on the cores: OpenMP threads that get preempted stall each other, and
        # the medians stop meaning anything. Alternating the models spreads the noise but cannot remove it.
        print(f"  WARNING: median > 1.25 x min for {disturbed}: the machine looks busy; rerun when idle")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    ratios = list(result["ratios"].values())
    headline = (f"student / LR-ASPP {ratios[0]:.2f} (target ≤ 0.9), fused / unfused {ratios[1]:.2f} (target ≤ 0.75)"
                + (f"; busy machine: {', '.join(disturbed)}" if disturbed else ""))
    print(f"record: {write_record('models', result, headline=headline)}")
    return result


if __name__ == "__main__":
    main()
