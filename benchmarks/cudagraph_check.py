"""Check the ``cudagraph`` backends on a GPU against fp32 eager: NaN count, max |diff|, argmax agreement and
ms per replay, for the timed ``run`` (replay on its captured input) and for ``forward`` on other images.

    python benchmarks/cudagraph_check.py [--size 512x1024]

``forward`` once copied new images into the timed graph's input buffer and returned stale (fp32) or all-NaN
(fp16) outputs (the H200 record under ``benchmarks/results/cudagraph_check/``); it now captures a graph per
image, which a rerun on a GPU confirms or refutes. The record goes to ``benchmarks/results/cudagraph_check/``
(:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from fasterseg_core.latency.backends import BACKENDS, OutputOnly, prepare
from fasterseg_core.models.published import build_published
from fasterseg_core.records import write_record

AGREEING = 0.999  # argmax agreement that counts as the same prediction


def _report(tag: str, ref: torch.Tensor, got: torch.Tensor, ms: float) -> dict[str, Any]:
    got = got.float()
    nan = int(torch.isnan(got).sum())
    diff = float((got - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    print(f"{tag:42s} nan {nan:8d}  max|diff| {diff:10.4g}  agreement {agree:.4f}  {ms:6.2f} ms", flush=True)
    return {"check": tag.strip(), "nan": nan, "max_abs_diff": diff, "argmax_agreement": agree, "ms_per_replay": ms}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="512x1024")
    args = p.parse_args()
    h, w = map(int, args.size.split("x"))
    dev = torch.device("cuda")
    rows = []
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
            checks = [_report(f"  {backend} run() on its input", refs[0], out.cpu(), ms)]
            for i in (1, 0):
                checks.append(_report(f"  {backend} forward(x{i})", refs[i], pr.forward(xs[i]), ms))
            rows += [{"deploy": deploy, "backend": backend} | c for c in checks]
    bad = [f"{r['check']}{' (deploy)' if r['deploy'] else ''}" for r in rows
           if r["nan"] or r["argmax_agreement"] < AGREEING]
    headline = (f"{len(rows) - len(bad)}/{len(rows)} CUDA-graph outputs agree with fp32 eager (argmax ≥ {AGREEING}, "
                f"no NaN)" + (f"; not: {', '.join(bad)}" if bad else ""))
    path = write_record("cudagraph_check", {"size": args.size, "rows": rows}, headline=headline, device="cuda")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
