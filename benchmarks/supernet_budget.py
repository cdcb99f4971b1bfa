"""How long must the supernet pretrain before its heads score something (issue 28, 1)? Val mIoU against iterations.

    python benchmarks/supernet_budget.py [--profile camvid-cpu] [--iters 400] [--every 100] [--batch 8]
                                         [--val-images 48] [--variants paper student]

Everything as the profile's ``01_search`` pretrains (its data halves, crops, ``base_scale``, OHEM, SGD at
``search.pretrain_lr`` with clipping, ``search.path_sampling``), on real CamVid, except:

* the pretraining runs ``--iters`` iterations of batch ``--batch`` at a constant learning rate (the §3.4 decay
  of 0.978 per epoch barely moves over a CPU budget; the question is how many iterations, not which schedule);
* two variants side by side, each its own supernet, optimiser and generator from the same seed:
  ``paper`` (§3.2: the teacher index's four sandwich passes) and ``student`` (``search.pretrain_student``:
  plus one student pass at random widths, so the student's own stem and decoder learn too);
* the variants take turns every ``--every`` iterations, so load from other processes hits both alike;
  after each turn both indices' five heads are scored on ``--val-images`` evenly spaced val images (teacher at
  full width, student at its argmax widths, argmax paths: the search's own per-epoch evaluation, §3.5, with
  uniform α/β/γ, i.e. before any search step).

Reported per variant and checkpoint: iterations, seconds of training so far, the best head's val mIoU of each
index (and all five). The record goes to ``benchmarks/results/supernet_budget/``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import torch
from torch.utils.data import DataLoader

from fasterseg_core.config import load_config
from fasterseg_core.losses import OhemCrossEntropy, ohem_min_kept
from fasterseg_core.machine import resolve_device, stable_malloc_env
from fasterseg_core.models.network import init_weights_
from fasterseg_core.models.supernet import build_supernet
from fasterseg_core.records import write_record
from fasterseg_core.search.data import epoch_loader, search_data
from fasterseg_core.search.steps import (
    EVAL_WIDTHS,
    eval_path,
    evaluate_heads,
    pretrain_passes,
    train_path,
    weight_step,
)

VARIANTS = {"paper": False, "student": True}  # name → search.pretrain_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="camvid-cpu")
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--every", type=int, default=100, help="iterations per turn (and between evaluations)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    stable_malloc_env()
    cfg = load_config(args.profile)
    cfg = replace(cfg, search=replace(cfg.search, pretrain_batch_size=args.batch, eval_max_images=args.val_images))
    sc, device = cfg.search, resolve_device(cfg.device)
    data = search_data(cfg)
    val = DataLoader(data.val, sc.search_batch_size, shuffle=False)
    crit = OhemCrossEntropy(ohem_min_kept(args.batch, sc.pretrain_crop_hw, loss_stride=8), sc.ohem_thresh)
    path = train_path(sc.path_sampling)
    load = os.getloadavg()[0]
    print(f"{args.profile}: supernet pretraining, batch {args.batch} at {list(sc.pretrain_crop_hw)}, path "
          f"{path}, {args.iters} iterations per variant, val on {len(data.val)} images, {torch.get_num_threads()} "
          f"threads; load average {load:.2f}", flush=True)
    runs = {}
    for name in args.variants:
        torch.manual_seed(sc.seed)
        net = build_supernet(cfg.model, data.num_classes)
        init_weights_(net)
        net.to(device).train()
        opt = torch.optim.SGD(net.weight_parameters(), lr=sc.pretrain_lr, momentum=sc.momentum,
                              weight_decay=sc.weight_decay)
        runs[name] = {"net": net, "opt": opt, "gen": torch.Generator().manual_seed(sc.seed + 1), "seconds": 0.0,
                      "passes": pretrain_passes(VARIANTS[name]), "curve": []}
    done = 0
    while done < args.iters:
        turn = min(args.every, args.iters - done)
        for name, run in runs.items():
            loader = epoch_loader(data.pretrain, data.weight_half, args.batch, turn, sc.seed + done, 0)
            t0 = time.perf_counter()
            for x, y in loader:
                weight_step(run["net"], x.to(device), y.to(device), crit, run["opt"], run["passes"],
                            clip_norm=sc.grad_clip_norm, generator=run["gen"], path=path)
            run["seconds"] += time.perf_counter() - t0
            point = {"iters": done + turn, "seconds": round(run["seconds"], 1)}
            for k, role in enumerate(("teacher", "student")):
                cms = evaluate_heads(run["net"], val, k, EVAL_WIDTHS[k], device, eval_path(path))
                heads = {h: round(float(cm.compute()["miou"]), 4) for h, cm in cms.items()}
                point[role] = {"best": max(heads.values()), "heads": heads}
            run["curve"].append(point)
            print(f"  {name:8s} {point['iters']:5d} it, {point['seconds']:7.1f} s: val mIoU teacher "
                  f"{point['teacher']['best']:.3f}, student {point['student']['best']:.3f}", flush=True)
        done += turn
    payload = {
        "profile": args.profile, "iters": args.iters, "every": args.every, "batch": args.batch,
        "crop_hw": list(sc.pretrain_crop_hw), "path": path, "lr": sc.pretrain_lr, "val_images": len(data.val),
        "load_average_before": load,
        "variants": {n: {"pretrain_student": VARIANTS[n], "passes": [list(p) for p in r["passes"]],
                         "curve": r["curve"]} for n, r in runs.items()},
    }
    last = {n: r["curve"][-1] for n, r in runs.items()}
    headline = "; ".join(f"{n}: {p['iters']} it ({p['seconds'] / 60:.1f} min) → val mIoU teacher "
                         f"{100 * p['teacher']['best']:.1f} %, student {100 * p['student']['best']:.1f} %"
                         for n, p in last.items())
    print(headline)
    print(f"record: {write_record('supernet_budget', payload, headline=headline)}")


if __name__ == "__main__":
    main()
