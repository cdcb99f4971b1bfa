"""Diagnose CUDA-graph agreement on a GPU: the package's ``cudagraph`` backends vs fp32 eager, and the same
capture done under ``torch.no_grad`` instead of ``inference_mode`` (prints NaN counts, max |diff|, argmax
agreement and ms per replay for each).

    python benchmarks/cudagraph_check.py [--size 512x1024]

Found on an H200 (torch 2.11, 2026-11-27; log in benchmarks/results/cudagraph_check.log): replaying a graph
on its captured input matches eager (fp32 max |diff| 0, fp16 2.9e-5), but copying a new image into the timed
graph's input buffer inside the package gave stale (fp32) or all-NaN (fp16) outputs, while the same copy in
the inline capture here was correct. The backend's ``forward`` (used for agreement) now captures a graph per
image instead; the timed ``run`` path is the verified one.
"""

from __future__ import annotations

import argparse
import time

import torch

from fasterseg_core.latency.backends import OutputOnly, prepare
from fasterseg_core.models.published import build_published


def _capture(net, x, half, grad_ctx):
    dtype = torch.float16 if half else torch.float32
    net = OutputOnly(net).eval()
    if half:
        net = net.to(dtype).to(memory_format=torch.channels_last)
    static_in = x.to(dtype).contiguous(memory_format=torch.channels_last if half else torch.contiguous_format)
    static_in = static_in.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), grad_ctx():
        for _ in range(3):
            net(static_in)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with grad_ctx(), torch.cuda.graph(g):
        out = net(static_in)
    return g, static_in, out


def _report(tag, ref, got, ms):
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
        xs = [torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(i)).to(dev) for i in range(2)]
        with torch.no_grad():
            refs = [OutputOnly(net)(x).float() for x in xs]
        print(f"student deploy={deploy}: ref classes {refs[0].argmax(1).unique().tolist()}", flush=True)
        for backend in ("cudagraph", "cudagraph_fp16"):
            pr = prepare(net, xs[0], backend, dev)
            t = time.perf_counter()
            for _ in range(20):
                out = pr.run()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / 20 * 1e3
            _report(f"  package {backend} run() on its input", refs[0], out, ms)
            _report(f"  package {backend} forward(x1)", refs[1], pr.forward(xs[1].cpu()).to(dev), ms)
            _report(f"  package {backend} forward(x0)", refs[0], pr.forward(xs[0].cpu()).to(dev), ms)
        for half in (False, True):
            for name, ctx in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
                g, sin, sout = _capture(net, xs[0], half, ctx)
                t = time.perf_counter()
                for _ in range(20):
                    g.replay()
                torch.cuda.synchronize()
                ms = (time.perf_counter() - t) / 20 * 1e3
                _report(f"  inline half={half} {name} x0", refs[0], sout, ms)
                sin.copy_(xs[1].to(sin.dtype))
                g.replay()
                _report(f"  inline half={half} {name} x1", refs[1], sout, ms)


if __name__ == "__main__":
    main()
