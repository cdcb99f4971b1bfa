"""One fp32 eager CPU training step of the published FasterSeg networks, against torchvision's ResNet-18.

    python benchmarks/train_step.py [--rounds 10] [--warmup 2] [--threads 2] [--batch 4] [--hw 256 512]
                                    [--networks student teacher] [--no-aux] [--seed 0]
    python benchmarks/train_step.py --profile [--profile-steps 3] [--top 25] [--by-shape]
    python benchmarks/train_step.py --baseline DIR   # also time DIR/fasterseg_core's networks (before/after)

Harness (everything in one process, CPU, fp32, eager, ``torch.set_num_threads(--threads)``, glibc's
allocator pinned first by :func:`~fasterseg_core.machine.stable_malloc_env`):

* networks: the published §6 ``student`` and ``teacher`` built as the training engine builds them
  (:func:`~fasterseg_core.models.build_network` of the published architecture, aux heads on, §7.3
  :func:`~fasterseg_core.models.init_weights_`), and ``torchvision.models.resnet18(num_classes=19)`` as the
  yardstick; all in train mode (BN batch statistics, aux heads active);
* input: a fixed seeded batch ``(batch, 3, H, W)`` = 4 × 3 × 256 × 512 and a fixed random label map
  ``(batch, H, W)`` with values in [0, 19);
* one step = ``zero_grad(set_to_none=True)``, forward, loss, backward, ``SGD.step()`` (lr 0.01, momentum
  0.9, weight decay 5e-4, the §9.2 settings). Loss for FasterSeg: ``CE(out) + Σ CE(aux_i)`` (plain
  cross-entropy, unweighted; all logits are at input size), the shape of the engine's loss without OHEM;
  for ResNet-18: CE of its (batch, 19) logits against the first ``batch`` labels of the map's top-left pixel;
* timing: ``--warmup`` untimed rounds, then ``--rounds`` rounds; each round times one step of every network,
  in an order rotated round by round, so load from other processes hits all of them alike. Reported:
  median, min, max and interquartile range of the seconds per step; the ratio to ResNet-18 as the median
  of the per-round ratios (ratios within one round, so slow phases of a shared machine cancel) and as the
  ratio of the minima (the least disturbed round of each).

Published figures (measured at an earlier commit with this harness's settings, ratio to ResNet-18):
student 0.80× (the authors' own implementation of the same architecture: 0.68–0.72×), teacher 1.99×
(authors': 1.72×).

``--baseline DIR`` imports a second copy of the package from ``DIR/fasterseg_core`` (e.g. an unchanged
checkout: ``git archive <commit> fasterseg_core | tar -x -C DIR``) and times its networks in the same rounds,
so before and after are compared under the same load.

``--profile`` runs ``torch.profiler`` over ``--profile-steps`` steps of each network (after one warm-up
step) and prints the top operators by self CPU time, separately for the forward (incl. loss), the
backward and the optimizer step; ``--by-shape`` groups them by input shape too.

A timing run writes its record to ``benchmarks/results/train_step/`` (:func:`fasterseg_core.records.write_record`);
``--profile`` prints only (a profile is read, not cited).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

import fasterseg_core.models as fasterseg_models
from fasterseg_core.config import TrainConfig
from fasterseg_core.latency.measure import environment_record
from fasterseg_core.machine import stable_malloc_env
from fasterseg_core.records import write_record

NUM_CLASSES = 19
PUBLISHED = {"student": 0.80, "teacher": 1.99}  # ours at the earlier commit, × ResNet-18
AUTHORS = {"student": "0.68–0.72", "teacher": "1.72"}
PHASES = ("forward", "backward", "optimizer")


def build(name: str, aux: bool, seed: int, models: ModuleType | None = None) -> nn.Module:
    """A network in train mode: "resnet18" or a published FasterSeg role, built as the engine builds it.

    ``models``: the ``fasterseg_core.models`` package to build from (default: the imported one).
    """
    torch.manual_seed(seed)
    if name == "resnet18":
        from torchvision.models import resnet18

        return resnet18(num_classes=NUM_CLASSES).train()
    m = models or fasterseg_models
    net = m.build_network(m.published_architecture(name), NUM_CLASSES, aux=aux)
    m.init_weights_(net)  # §7.3, as fasterseg_core.training does
    return net.train()


def load_baseline(tree: Path) -> ModuleType:
    """``fasterseg_core.models`` of another checkout (``tree``/fasterseg_core), imported as ``fasterseg_baseline``.

    The package imports itself only relatively, so both copies live side by side in this process.
    """
    init = tree / "fasterseg_core" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "fasterseg_baseline", init, submodule_search_locations=[str(init.parent)]
    )
    if spec is None or not init.is_file():
        raise SystemExit(f"--baseline: no fasterseg_core package under {tree}")
    package = importlib.util.module_from_spec(spec)
    sys.modules["fasterseg_baseline"] = package
    spec.loader.exec_module(package)
    return importlib.import_module("fasterseg_baseline.models")


def fasterseg_loss(outputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """CE(out) + Σ CE(aux): every head's logits are at the label map's size."""
    loss = F.cross_entropy(outputs["out"], labels)
    for logits in outputs["aux"]:
        loss = loss + F.cross_entropy(logits, labels)
    return loss


def make_step(name: str, net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """A closure that runs one training step of ``net``; phases are labelled for the profiler."""
    paper = TrainConfig()  # §9.2's SGD settings, from the config's defaults
    opt = torch.optim.SGD(net.parameters(), lr=paper.lr, momentum=paper.momentum, weight_decay=paper.weight_decay)
    if name == "resnet18":
        targets = labels[:, 0, 0].contiguous()  # one class per image, from the same label map

        def loss_fn() -> torch.Tensor:
            return F.cross_entropy(net(images), targets)
    else:

        def loss_fn() -> torch.Tensor:
            return fasterseg_loss(net(images), labels)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.profiler.record_function("forward"):
            loss = loss_fn()
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            opt.step()

    return step


def time_interleaved(
    steps: dict[str, Callable[[], None]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of one step per network and round; the order of the networks rotates every round."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            steps[n]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[n].append(dt)
    return times


def report(times: dict[str, list[float]], reference: str = "resnet18") -> None:
    """Per network: median, min, max and IQR of the step time; × ResNet-18 as the median of per-round
    ratios (with their range) and as the ratio of minima (the least disturbed rounds of both)."""
    ref = times[reference]
    print(
        f"{'network':13s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'IQR s':>8s}   "
        f"{'× R18 (median of rounds [range])':>33s} {'× R18 (mins)':>12s}"
    )
    for n, ts in times.items():
        ratios = [t / r for t, r in zip(ts, ref)]
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        extra = f"   (earlier: {PUBLISHED[n]:.2f}×, authors': {AUTHORS[n]}×)" if n in PUBLISHED else ""
        print(
            f"{n:13s} {statistics.median(ts):9.4f} {min(ts):8.4f} {max(ts):8.4f} {q[2] - q[0]:8.4f}   "
            f"{statistics.median(ratios):14.3f}× [{min(ratios):.3f}–{max(ratios):.3f}] "
            f"{min(ts) / min(ref):11.3f}×{extra}"
        )
    for n, ts in times.items():
        base = times.get(f"{n}@base")
        if base is not None:
            ratios = [t / b for t, b in zip(ts, base)]
            print(
                f"{n} / {n}@base: {statistics.median(ratios):.3f} (median of rounds, "
                f"[{min(ratios):.3f}–{max(ratios):.3f}]), {min(ts) / min(base):.3f} (mins)"
            )


def ratios_to(times: dict[str, list[float]], reference: str = "resnet18") -> dict[str, dict[str, object]]:
    """Per network: the step time's median and × ``reference`` as :func:`report` prints them, for the record."""
    ref = times[reference]
    out: dict[str, dict[str, object]] = {}
    for n, ts in times.items():
        ratios = [t / r for t, r in zip(ts, ref)]
        out[n] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                  f"x_{reference}": statistics.median(ratios), "range": [min(ratios), max(ratios)],
                  f"x_{reference}_mins": min(ts) / min(ref)}
    return out


def _phase(evt) -> str | None:
    """The labelled phase ("forward", "backward", "optimizer") an event ran under, by its CPU parents."""
    e = evt
    while e is not None:
        if e.name in PHASES:
            return e.name
        e = e.cpu_parent
    return None


def profile(name: str, step: Callable[[], None], n_steps: int, top: int, by_shape: bool) -> None:
    """Top operators by self CPU time, per phase, over ``n_steps`` steps (times per step)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()  # warm-up outside the profile
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape) as prof:
        for _ in range(n_steps):
            step()
    agg: dict[str, dict[tuple, list[float]]] = {p: defaultdict(lambda: [0.0, 0]) for p in PHASES}
    for evt in prof.events():
        phase = _phase(evt)
        if phase is None or evt.name in PHASES:
            continue
        key = (evt.name, str(evt.input_shapes)) if by_shape else (evt.name,)
        agg[phase][key][0] += evt.self_cpu_time_total
        agg[phase][key][1] += 1
    print(f"\n=== {name}: self CPU time per step (ms), {n_steps} profiled steps ===")
    for phase in PHASES:
        rows = sorted(agg[phase].items(), key=lambda kv: -kv[1][0])
        total = sum(v[0] for v in agg[phase].values()) / 1000 / n_steps
        print(f"--- {phase}: {total:.1f} ms self CPU per step")
        for key, (us, count) in rows[:top]:
            label = key[0] if not by_shape else f"{key[0]}  {key[1][:110]}"
            print(f"  {us / 1000 / n_steps:8.2f} ms  {count // n_steps:4d}×  {label}")


def main(argv: Sequence[str] | None = None) -> None:
    stable_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hw", type=int, nargs=2, default=(256, 512))
    p.add_argument("--networks", nargs="+", default=["student", "teacher"], choices=["student", "teacher"])
    p.add_argument("--no-aux", action="store_true", help="build the FasterSeg networks without aux heads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="profile instead of timing")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--by-shape", action="store_true", help="group profiled operators by input shape")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a checkout whose fasterseg_core is timed too, interleaved, as '<role>@base' (before/after)",
    )
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    import fasterseg_core

    env = environment_record("cpu")
    print(f"fasterseg_core: {fasterseg_core.__file__}")
    print(
        f"torch {env['torch_version']}, {env['torch_threads']} threads of {env['cpu_count']} CPUs, "
        f"{env['cpu_model']}, stable malloc: {env['stable_malloc_env']}"
    )
    print(
        f"batch {args.batch} × 3 × {args.hw[0]} × {args.hw[1]}, fp32 eager, train mode, aux heads "
        f"{'off' if args.no_aux else 'on'}"
    )
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, *args.hw, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (args.batch, *args.hw), generator=g)
    steps = {
        n: make_step(n, build(n, not args.no_aux, args.seed), images, labels)
        for n in ["resnet18", *args.networks]
    }
    if args.baseline is not None:
        base = load_baseline(args.baseline)
        print(f"baseline: {base.__file__}")
        for n in args.networks:
            steps[f"{n}@base"] = make_step(n, build(n, not args.no_aux, args.seed, base), images, labels)
    if args.profile:
        for n, step in steps.items():
            profile(n, step, args.profile_steps, args.top, args.by_shape)
        return
    print(f"{args.rounds} rounds after {args.warmup} warm-up rounds, networks interleaved")
    times = time_interleaved(steps, args.rounds, args.warmup)
    report(times)
    summary = ratios_to(times)
    headline = "× ResNet-18 per step (median of rounds): " + ", ".join(
        f"{n} {v['x_resnet18']:.3f}×" for n, v in summary.items() if n != "resnet18")
    payload = {"rounds": args.rounds, "warmup": args.warmup, "threads": args.threads, "batch": args.batch,
               "hw": list(args.hw), "aux": not args.no_aux, "seed": args.seed,
               "baseline": str(args.baseline) if args.baseline else None, "networks": summary,
               "times_s": times}
    print(f"record: {write_record('train_step', payload, headline=headline)}")


if __name__ == "__main__":
    main()
