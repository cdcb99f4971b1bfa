"""Command line: time FasterSeg networks and peers, count their cost, build latency lookup tables.

Examples::

    python -m fasterseg_core.latency --arch student --size 1024x2048 --backend ort \
        --hardware-tag cpu-2core --json out.json
    python -m fasterseg_core.latency --arch teacher --arch lraspp_mobilenet_v3_large --backend all
    python -m fasterseg_core.latency --build-lut --size 128x256 --json outputs/lut_cpu.json

``--arch`` takes ``student``/``teacher`` (published, Fig. 6), a path to an architecture JSON written by the
search, or a torchvision peer name. Unavailable backends are reported as such; nothing is substituted.
The stable-allocator environment (see ``measure.stable_malloc_env``) is set by re-executing once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..flops import count_complexity
from ..models.architecture import Architecture
from ..models.network import build_network
from ..models.published import build_published
from .agreement import agreement
from .backends import BACKENDS, prepare
from .lut import LatencyTable, build_lut, estimate_latency
from .measure import measure, stable_malloc_env
from .peers import PEERS, build_peer


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x2048 (HxW), got {text!r}") from None
    return h, w


def build_named(name: str, num_classes: int, deploy: bool = False) -> torch.nn.Module:
    """A network from a CLI/notebook name: published role, architecture JSON path, or peer."""
    if name in ("student", "teacher"):
        return build_published(name, num_classes=num_classes, deploy=deploy).eval()
    if name in PEERS:
        return build_peer(name, num_classes)
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return build_network(Architecture.from_json(path), num_classes=num_classes, deploy=deploy).eval()
    raise SystemExit(
        f"--arch {name!r}: expected student, teacher, an architecture .json file or one of {PEERS}"
    )


def _agreement(net: torch.nn.Module, backend: str, args: argparse.Namespace, row: dict) -> float:
    """Argmax agreement of ``backend`` with fp32 eager on ``args.agreement`` seeded random inputs."""
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, *args.size, generator=gen) for _ in range(args.agreement)]
    ref = prepare(net, inputs[0], "eager", args.device)
    cand = prepare(net, inputs[0], backend, args.device, calibration_images=inputs[:2])
    return agreement(ref, cand, inputs)["pixel_agreement"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fasterseg_core.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", action="append", default=None, help="network(s) to time (repeatable)")
    p.add_argument("--size", type=parse_size, default=(1024, 2048), help="input HxW (default 1024x2048)")
    p.add_argument(
        "--backend",
        action="append",
        default=None,
        help=f"one of {list(BACKENDS)} or 'all' (repeatable; default eager)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch/ORT intra-op threads (0 = default)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--deploy", action="store_true", help="§10 TensorRT-friendly variant (nearest resizes)")
    p.add_argument("--hardware-tag", default="", help="name of this machine/runtime in reports")
    p.add_argument("--timed-seconds", type=float, default=3.0, help="length of the timed loop (§10: 3 s)")
    p.add_argument("--build-lut", action="store_true", help="build a latency lookup table instead of timing")
    p.add_argument("--lut", type=Path, default=None, help="a table to estimate the networks' latency with")
    p.add_argument(
        "--agreement",
        type=int,
        default=0,
        metavar="N",
        help="also report argmax agreement of each backend with fp32 eager on N random inputs",
    )
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)
    if argv is None:  # a real command line: re-run once under the stable allocator settings
        stable_malloc_env()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.build_lut:
        backend = (args.backend or ["eager"])[0]
        lut = build_lut(args.device, backend, args.size, args.hardware_tag)
        out = args.json or Path(f"lut_{lut.hardware_tag}_{args.size[0]}x{args.size[1]}.json")
        lut.save(out)
        print(f"{len(lut.entries)} entries in {lut.record['build_seconds']} s → {out}")
        return 0

    backends = args.backend or ["eager"]
    if "all" in backends:
        backends = list(BACKENDS)
    lut = LatencyTable.load(args.lut) if args.lut else None
    results = []
    for name in args.arch or ["student"]:
        net = build_named(name, args.num_classes, args.deploy)
        cx = count_complexity(net, (1, 3, *args.size))
        for backend in backends:
            calib = [
                torch.randn(1, 3, *args.size, generator=torch.Generator().manual_seed(i)) for i in range(2)
            ]
            r = measure(
                net,
                (1, 3, *args.size),
                args.device,
                backend,
                name=name,
                num_threads=args.threads,
                timed_s=args.timed_seconds,
                calibration_images=calib,
            )
            d = r.to_dict()
            d.update(
                params=cx.params,
                conv_macs=cx.conv_macs,
                thop_macs=cx.thop_macs,
                hardware_tag=args.hardware_tag,
            )
            if args.agreement and r.status == "ok" and backend != "eager":
                d["argmax_agreement"] = _agreement(net, backend, args, d)
            if lut is not None and name in ("student", "teacher"):
                from ..models.published import published_architecture

                d["lut_estimate_ms"] = estimate_latency(published_architecture(name), lut)
            results.append(d)
            if args.json:  # written after every row, so a run stopped at a time limit keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))
            figure = (
                f"{r.median_ms:8.2f} ms  {r.fps:7.1f} FPS" if r.status == "ok" else f"{r.status}: {r.reason}"
            )
            if "argmax_agreement" in d:
                figure += f"  agreement {d['argmax_agreement']:.4f}"
            print(
                f"{name:30s} {backend:14s} {figure}  ({cx.params / 1e6:.2f} M params, "
                f"{cx.thop_macs / 1e9:.2f} G MACs thop)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
