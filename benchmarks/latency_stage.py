"""Where the ``05_latency`` stage's time goes: per network and backend, preparing (export, compile,
quantise), timing and the agreement check, plus the stage's fixed costs.

    python benchmarks/latency_stage.py [--profile camvid-cpu] [--json outputs/bench_latency_stage.json]

Runs the stage's own suite (``measure_suite``) with the profile's latency settings and candidate list
(published teacher and student, the torchvision peers, and the searched pair when ``--searched`` is given:
their cost is like the published pair's). Weights are random: preparing and timing cost the same whatever
the weights; only the agreement figures differ, and they are not the point here. The record goes to
``benchmarks/results/latency_stage/`` (:func:`fasterseg_core.records.write_record`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from fasterseg_core.config import load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.latency.suite import candidate_networks, measure_suite, real_images
from fasterseg_core.models.published import published_architecture
from fasterseg_core.records import write_record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="camvid-cpu")
    ap.add_argument("--searched", action="store_true", help="also time a 'searched' pair (the published archs)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = load_config(args.profile)
    lc = cfg.latency
    if lc.num_threads > 0:
        torch.set_num_threads(lc.num_threads)
    start = time.perf_counter()
    val = build_dataset(cfg.data, "val", train=False)
    candidates = candidate_networks(val.num_classes, None, lc.include_peers)
    if args.searched:  # same cost as a real searched pair of this size
        for c in [c for c in candidates if c.name.startswith("published")]:
            copy = type(c)(c.name.replace("published", "searched"), c.net, published_architecture(c.name.split()[1]),
                           "published architecture standing in for a searched one")
            candidates.append(copy)
    images, labels = real_images(val, tuple(lc.input_hw), lc.agreement_images)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    record = measure_suite(candidates, lc.backends, tuple(lc.input_hw), torch.device("cpu"), "bench", val.num_classes,
                           images=images, labels=labels, warmup=lc.warmup_iters, min_loop_s=lc.min_loop_seconds,
                           timed_s=lc.timed_seconds, num_threads=lc.num_threads, progress=True)
    suite_s = time.perf_counter() - start
    rows = pd.DataFrame(record.rows)
    cost = ["complexity_s", "prepare_s", "timing_s", "agreement_s"]
    for c in cost:
        rows[c] = pd.to_numeric(rows.get(c), errors="coerce").fillna(0.0)
    rows["row_s"] = rows[cost].sum(axis=1)
    pd.set_option("display.width", 160)
    print(f"\n{args.profile}: {len(candidates)} networks x {len(lc.backends)} backends at "
          f"{lc.input_hw[0]}x{lc.input_hw[1]}, {torch.get_num_threads()} threads")
    print(f"setup (dataset, images) {setup_s:.1f} s; LUT {record.environment['lut_build_s']:.1f} s; "
          f"suite {suite_s:.1f} s (rows sum {rows.row_s.sum():.1f} s)\n")
    by_backend = rows.groupby("backend")[cost + ["row_s"]].sum().round(1).sort_values("row_s", ascending=False)
    by_network = rows.groupby("network")[cost + ["row_s"]].sum().round(1).sort_values("row_s", ascending=False)
    by_phase = rows[cost].sum().round(1).to_dict()
    print("by backend (s):")
    print(by_backend)
    print("\nby network (s):")
    print(by_network)
    print("\nby phase (s):", by_phase)
    out = {"profile": args.profile, "setup_s": setup_s, "suite_s": suite_s,
           "lut_build_s": record.environment["lut_build_s"], "rows": rows.to_dict("records")}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
    headline = (f"{args.profile}: {len(candidates)} networks × {len(lc.backends)} backends, suite {suite_s:.0f} s "
                f"(prepare {by_phase['prepare_s']:.0f}, timing {by_phase['timing_s']:.0f}, agreement "
                f"{by_phase['agreement_s']:.0f} s)")
    # the rows hold numpy and config values: recorded as the --json file writes them (str for what JSON lacks)
    extra = {"by_backend_s": by_backend.to_dict("index"), "by_network_s": by_network.to_dict("index"),
             "by_phase_s": by_phase}
    payload = json.loads(json.dumps(out | extra, default=str))
    print(f"record: {write_record('latency_stage', payload, headline=headline)}")


if __name__ == "__main__":
    main()
