"""Compiled against eager training (``<section>.compile: true``) at a profile's crop, batch and precision.

    python benchmarks/compile.py [--profile camvid-cpu] [--iters 10] [--epochs 3] [--rounds 2]
                                 [--variants teacher distill student] [--no-compile-teacher]

For each training variant (``teacher``, ``distill`` = student + frozen teacher, ``student``; the published §6
networks) one process runs, round after round and alternately, an eager and a compiled :func:`engine.fit` of
``--epochs`` epochs × ``--iters`` iterations on real training crops held in memory (so the loader is not in
the figure). The compiled run starts from a fresh ``torch._dynamo`` state, so its first epoch holds the whole
compile (cold in round 1; later rounds may hit inductor's on-disk cache, as a second stage of one pipeline
does). Reported per variant: eager and compiled seconds per iteration (epochs 2+), the compile time (epoch 1
minus a steady epoch), and the ratio the issue asks for: iterations per second of a stage of the profile's
length (``epochs × iters_per_epoch`` of the profile, 1,000 for camvid-cpu) with the compile time amortised,
compiled over eager. Outputs of both are checked to agree (mean loss within 5 %). The record goes to
``benchmarks/results/compile/`` (:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from train import VARIANTS, _camvid_config, build_variant, draw_crops

from fasterseg_core.data import build_dataset
from fasterseg_core.engine import fit, training_loss
from fasterseg_core.latency.measure import environment_record
from fasterseg_core.machine import resolve_device, stable_malloc_env
from fasterseg_core.records import write_record


def run(spec, net_state, teacher, crops, device, epochs: int, iters: int) -> tuple[list[float], float, float]:
    """(seconds per epoch, mean loss of the last epoch, wall seconds) of one fit on in-memory crops."""
    net, _ = net_state()
    spec = replace(spec, epochs=epochs, iters_per_epoch=iters, eval_every_epochs=10**9)
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory(prefix="fasterseg-compile-") as tmp:
        t0 = time.perf_counter()
        result = fit(spec, net, training_loss(spec, teacher, device), crops, None, device, Path(tmp), progress=False)
        wall = time.perf_counter() - t0
    return [r["seconds"] for r in result.history], result.history[-1]["loss"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="camvid-cpu")
    p.add_argument("--iters", type=int, default=10, help="iterations per timed epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first holds the compile)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--no-compile-teacher", action="store_true", help="distill: compile the student only")
    args = p.parse_args()
    stable_malloc_env()
    cfg = _camvid_config(args.profile)
    device = resolve_device(cfg.device)
    env = environment_record(device)
    print(f"{args.profile}: {env.get('cpu_model')}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| variant | eager s/it | compiled s/it | step speed-up | cold compile | stage iterations | "
          "stage it/s, compiled / eager (compile amortised) | losses agree |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for v in args.variants:
        section, _, distilled = VARIANTS[v]
        spec = getattr(cfg, section)
        crops = draw_crops(build_dataset(cfg.data, "train", train=True, crop_hw=tuple(spec.crop_size_hw)),
                           2 * spec.batch_size)
        net, teacher = build_variant(v, crops.num_classes)
        state = {k: t.clone() for k, t in net.state_dict().items()}

        def fresh(net=net, state=state):
            net.load_state_dict(state)
            return net, None

        eager_spec, comp_spec = replace(spec, compile=False), replace(spec, compile=True)
        if distilled:
            comp_spec = replace(comp_spec, compile_teacher=not args.no_compile_teacher)
        stage_iters = spec.epochs * spec.iters_per_epoch
        eager_it, comp_it, compile_s, losses = [], [], [], []
        for r in range(args.rounds):
            e, le, _ = run(eager_spec, fresh, teacher, crops, device, args.epochs, args.iters)
            c, lc, _ = run(comp_spec, fresh, teacher, crops, device, args.epochs, args.iters)
            eager_it.append(statistics.median(e[1:]) / args.iters)
            comp_it.append(statistics.median(c[1:]) / args.iters)
            compile_s.append(c[0] - statistics.median(c[1:]))
            losses.append((le, lc))
            print(f"  {v} round {r + 1}: eager {eager_it[-1]:.3f} s/it, compiled {comp_it[-1]:.3f} s/it, "
                  f"compile {compile_s[-1]:.1f} s ({'cold' if r == 0 else 'cache'}), loss {le:.3f} / {lc:.3f}",
                  flush=True)
        e_it, c_it = statistics.median(eager_it), statistics.median(comp_it)
        cold = compile_s[0]
        ratio = (stage_iters * e_it) / (cold + stage_iters * c_it)
        agree = all(abs(a - b) <= 0.05 * abs(a) for a, b in losses)
        print(f"| {v} | {e_it:.3f} | {c_it:.3f} | {e_it / c_it:.2f}× | {cold:.0f} s | {stage_iters} | "
              f"**{ratio:.2f}×** | {'yes' if agree else 'NO'} |")
        rows.append({"variant": v, "eager_s_per_iter": e_it, "compiled_s_per_iter": c_it, "cold_compile_s": cold,
                     "stage_iters": stage_iters, "compiled_over_eager_amortised": ratio, "losses_agree": agree,
                     "eager_runs": eager_it, "compiled_runs": comp_it, "compile_s": compile_s,
                     "losses": losses})
    headline = "compiled / eager stage it/s, compile amortised: " + ", ".join(
        f"{r['variant']} {r['compiled_over_eager_amortised']:.2f}×" for r in rows)
    payload = {"profile": args.profile, "iters": args.iters, "epochs": args.epochs, "rounds": args.rounds,
               "compile_teacher": not args.no_compile_teacher, "rows": rows}
    print(f"record: {write_record('compile', payload, headline=headline, device=device.type)}")


if __name__ == "__main__":
    main()
