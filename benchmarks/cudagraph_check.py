"""Check the ``cudagraph`` backends on a GPU against fp32 eager: NaN count, max |diff|, argmax agreement and
ms per replay, for the timed ``run`` (replay on its captured input) and for ``forward`` on other images.

    python benchmarks/cudagraph_check.py [--size 512x1024]

History (H200, torch 2.11, 2026-11-27; log in benchmarks/results/cudagraph_check.log): replay on the captured
input matched eager (fp32 max |diff| 0, fp16 2.9e-5), but ``forward`` then copied new images into the timed
graph's input buffer and returned stale (fp32) or all-NaN (fp16) outputs, while the same copy in a graph
captured outside the package was correct. ``forward`` now captures a graph per image; rerun this to confirm.
"""

from __future__ import annotations

import argparse
import time

import torch

from fasterseg_core.latency.backends import BACKENDS, OutputOnly, prepare
from fasterseg_core.models.published import build_published


def _report(tag: str, ref: torch.Tensor, got: torch.Tensor, ms: float) -> None:
    got = got.float()
    nan = int(torch.isnan(got).sum())
    diff = float((got - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    print(f"{tag:42s} nan {nan:8d}  max|diff| {diff:10.4g}  agreement {agree:.4f}  {ms:6.2f} ms", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="512x1024")
    args = p.parse_args()
    h, w = map(int, args.size.split("x"))
    dev = torch.device("cuda")
    for deploy in (True, False):
        net = build_published("student", deploy=deploy).eval().to(dev)
        xs = [torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        with torch.no_grad():
            refs = [OutputOnly(net)(x.to(dev)).float().cpu() for x in xs]
        print(f"student deploy={deploy}: ref classes {refs[0].argmax(1).unique().tolist()}", flush=True)
        for backend in (name for name, b in BACKENDS.items() if b.cuda_graph):
            pr = prepare(net, xs[0], backend, dev)
            t = time.perf_counter()
            for _ in range(20):
                out = pr.run()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / 20 * 1e3
            _report(f"  {backend} run() on its input", refs[0], out.cpu(), ms)
            for i in (1, 0):
                _report(f"  {backend} forward(x{i})", refs[i], pr.forward(xs[i]), ms)


if __name__ == "__main__":
    main()
