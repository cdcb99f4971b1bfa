"""Where the student's fp32 CPU time goes: convolutions against everything else, beside the arithmetic floor.

    python benchmarks/latency_breakdown.py [--size 1024x2048] [--threads 2] [--backend compile]

Issue #4 asks for the best fp32 student path within 1.1x of the arithmetic floor (2 x conv multiply-adds /
peak FLOP/s of a 2048^2 fp32 matrix product, measured in this process). This script profiles one forward
pass of that path (torch.profiler; ``compile`` = inductor with frozen weights in channels_last, the fastest
fp32 torch path here) and splits its time into the oneDNN convolution calls and the rest (resizes, the
final x8 upsampling to full resolution, concatenations, elementwise ops), then prints

* the convolutions alone against the floor (how close oneDNN's convs come to matrix-product speed), and
* the rest as a fraction of the floor (time the floor does not count at all).

If the convolutions alone already need ~1.0x the floor, the rest decides whether 1.1x is reachable. The
record goes to ``benchmarks/results/latency_breakdown/`` (:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from latency import peak_gflops  # benchmarks/latency.py: run as a script, its folder is on sys.path

from fasterseg_core.latency import prepare
from fasterseg_core.latency.flops import count_complexity
from fasterseg_core.machine import stable_malloc_env
from fasterseg_core.models.published import build_published
from fasterseg_core.records import write_record


def main() -> None:
    stable_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1024x2048")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="compile", choices=("eager", "channels_last", "compile"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    net = build_published("student").eval()
    macs = count_complexity(net, (1, 3, *size)).conv_macs
    prepared = prepare(net, torch.randn(1, 3, *size), args.backend)
    for _ in range(2):
        prepared.run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        prepared.run()
        times.append(time.perf_counter() - t0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        prepared.run()
    peak = peak_gflops(torch.float32)
    floor_ms = 2 * macs / (peak * 1e9) * 1000
    total_ms = statistics.median(times) * 1000

    per_op: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        per_op[evt.key] += evt.self_cpu_time_total / 1000  # µs → ms
    profiled_ms = sum(per_op.values())
    conv_ms = sum(v for k, v in per_op.items() if "conv" in k.lower())
    # the profiled pass is slower than an unprofiled one (bookkeeping); scale its split to the timed median
    scale = total_ms / profiled_ms if profiled_ms else float("nan")
    conv_ms, rest_ms = conv_ms * scale, (profiled_ms - conv_ms) * scale

    print(f"student {args.size}, {args.backend}, {args.threads} threads; conv MACs {macs / 1e9:.2f} G")
    print(f"peak fp32 matmul {peak:.0f} GFLOP/s (best of 5 1-s loops) -> arithmetic floor {floor_ms:.1f} ms")
    print(f"forward median {total_ms:.1f} ms = x{total_ms / floor_ms:.2f} floor (target <= 1.1x)")
    print(
        f"  convolutions {conv_ms:6.1f} ms = x{conv_ms / floor_ms:.2f} floor ({conv_ms / floor_ms * peak:.0f} GFLOP/s)"
    )
    print(f"  everything else {rest_ms:6.1f} ms = {rest_ms / floor_ms:.0%} of the floor; largest:")
    largest = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
    for name, ms in largest:
        print(f"    {name[:60]:60s} {ms * scale:7.1f} ms")
    headline = (f"student {args.size} {args.backend}: {total_ms:.0f} ms = {total_ms / floor_ms:.2f}× the floor; "
                f"convolutions {conv_ms / floor_ms:.2f}× the floor, the rest {rest_ms / floor_ms:.0%} of it")
    payload = {"size": args.size, "backend": args.backend, "threads": args.threads, "repeats": args.repeats,
               "conv_macs": macs, "peak_gflops_fp32": peak, "floor_ms": floor_ms, "forward_ms": total_ms,
               "conv_ms": conv_ms, "rest_ms": rest_ms, "largest_ops_ms": {n: ms * scale for n, ms in largest}}
    print(f"record: {write_record('latency_breakdown', payload, headline=headline)}")


if __name__ == "__main__":
    main()
