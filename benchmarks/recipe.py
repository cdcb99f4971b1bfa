"""Short-run training recipes compared on val, by their mean over seeds the study never uses.

    python benchmarks/recipe.py [--profile camvid-cpu] [--stage 04_student] [--seeds 101 102 103]
                                [--candidates paper cosine-02-enet] [--root outputs/recipe]
                                [--set student.epochs=30 ...]

Each candidate is a set of overrides of the paper's recipe in the profile's training section (the ``CANDIDATES``
table below): every key a candidate sets starts at the paper's value; everything else is the profile's.
Every (candidate, seed) is one real run of the stage through ``python -m fasterseg_core train`` into its own
output root (``<root>/<candidate>/``), so an interrupted comparison resumes: a finished seed is reused, a
half-trained one resumes from its last checkpoint.

Sound selection: the runs are scored on **val only** (``data.score_test: false``: test is never evaluated), and
the seeds must be disjoint from the profile's, which the study then tests. The table reports per candidate the
val mIoU (best checkpoint) of every seed, the mean and its 95 % Student-t interval, the paired difference to the
first candidate (same seed) with its interval and power (:mod:`fasterseg_core.evidence`), and the training
seconds; candidates are ranked by the mean, never by one run. The record goes to
``benchmarks/results/recipe/<hardware tag>-<date>-<stage>.json`` with the commit, the machine and the command
(:func:`fasterseg_core.records.write_record`: ``-2``, ``-3`` … when that name is taken by another comparison; a
record is never overwritten by another command).

A teacher comparison (``--stage 02_teacher``) also records each candidate's **lead** over the scratch students on
the same seeds (teacher − student val mIoU, paired by seed), read from the newest ``04_student`` record whose
chosen recipe ran on those seeds: distillation is worth testing only when the teacher is measurably stronger
(issue 26 asks for ≥ 3 points on val). Typical use, the camvid-cpu teacher's length::

    python benchmarks/recipe.py --stage 02_teacher --seeds 101 102 --candidates cosine-02-enet --set teacher.epochs=60

Not a timed benchmark: it lives here beside them because it measures what the speed work buys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from fasterseg_core.config import RunConfig, load_config
from fasterseg_core.evidence import power_analysis, summarize
from fasterseg_core.machine import hardware_tag
from fasterseg_core.records import load_records, write_record
from fasterseg_core.runs import get_stage, stage_dir

MARGIN_POINTS = 1.0  # as the claims ledger's "on par"

# name → overrides of the paper's recipe (see _paper_values): of the stage's section (its name is filled in:
# "lr" → "student.lr"), or of another section when the key names it ("data.color_jitter").
CANDIDATES: dict[str, dict[str, object]] = {
    "paper": {},  # lr 0.01 × 0.992 per epoch, unweighted OHEM
    "poly-01": {"lr_schedule": "poly", "warmup_iters": 50},
    "poly-02": {"lr_schedule": "poly", "warmup_iters": 50, "lr": 0.02},
    "poly-04": {"lr_schedule": "poly", "warmup_iters": 50, "lr": 0.04},
    "cosine-02": {"lr_schedule": "cosine", "warmup_iters": 50, "lr": 0.02},
    "medfreq": {"class_weighting": "median_frequency"},
    "enet": {"class_weighting": "enet"},
    "cosine-02-enet": {"lr_schedule": "cosine", "warmup_iters": 50, "lr": 0.02, "class_weighting": "enet"},
    "jitter": {"data.color_jitter": 0.4},
}


def _paper_values(section: str) -> dict[str, object]:
    """The paper's value (the config dataclasses' default) of every key some candidate sets. Every candidate
    starts from these, whatever the profile sets, so that a name means the same run in every profile
    (camvid-cpu's students train with "cosine-02-enet")."""
    paper = RunConfig()
    keys = {k for overrides in CANDIDATES.values() for k in overrides}
    values = {}
    for key in keys:
        sec, _, name = key.rpartition(".")
        values[key] = getattr(getattr(paper, sec or section), name)
    return values


def _student_runs(seeds: list[int]) -> tuple[str, str, dict[int, float]] | None:
    """The newest val 04_student record's chosen candidate's val mIoU on these seeds: (record, candidate, {seed:
    mIoU}). Records of the test split (comparisons made before selection moved to val) never count."""
    records = [r for r in load_records() if r.benchmark == "recipe" and r.data.get("stage") == "04_student"
               and r.data.get("split") == "val"]
    for rec in reversed(records):
        record = rec.data
        runs = {r["seed"]: r["val_miou"] for r in record["runs"] if r["candidate"] == record["chosen"]}
        if set(seeds) <= set(runs):
            return rec.shown, record["chosen"], {s: runs[s] for s in seeds}
    return None


def _lead(frame: pd.DataFrame, seeds: list[int]) -> dict[str, object] | None:
    """Each teacher candidate's val lead over the scratch students of the same seeds, with its interval."""
    students = _student_runs(seeds)
    if students is None:
        print("no 04_student record covers these seeds: the teacher's lead is not recorded", flush=True)
        return None
    path, candidate, student = students
    out = {"students_record": path, "students_candidate": candidate,
           "students_val_miou": [round(student[s], 2) for s in seeds], "by_candidate": {}}
    for name, group in frame.groupby("candidate", sort=False):
        d = [float(v) - student[s] for s, v in zip(group.seed, group.val_miou, strict=True)]
        s = summarize(d)
        out["by_candidate"][name] = {"per_seed": [round(x, 2) for x in d], "mean": s.mean, "ci": [s.ci_low, s.ci_high]}
    return out


def headline(stage: str, split: str, table: list[dict[str, Any]], chosen: str, record: dict[str, Any] | None = None) -> str:
    """One line for ``python -m fasterseg_core results``: the chosen candidate's mean, interval and difference,
    and for a teacher the settings it ran with (``--set``) and its lead over the scratch students."""
    best = next(r for r in table if r["candidate"] == chosen)
    n = len(best[f"{split} mIoU per seed"])
    vs = f", {best['difference mean']:+.1f} points vs {best['vs']}" if "vs" in best else ""
    among = f"chosen among {len(table)}" if len(table) > 1 else "the only candidate"
    line = (f"{stage}: {chosen} ({among}), {split} mIoU {best['mean']:.1f} "
            f"[{best['ci'][0]:.1f}, {best['ci'][1]:.1f}] over {n} seeds{vs}")
    record = record or {}
    if record.get("set"):
        line += " (" + ", ".join(f"{k} {v}" for k, v in record["set"].items()) + ")"
    lead = (record.get("lead_over_students") or {}).get("by_candidate", {}).get(chosen)
    return line + (f"; {lead['mean']:+.1f} points over the scratch students" if lead else "")


def _parse_set(items: list[str]) -> dict[str, object]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value[:1] in "[{0123456789-tfn" else value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="camvid-cpu")
    p.add_argument("--stage", default="04_student", choices=["02_teacher", "03_distill", "04_student"])
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103],
                   help="selection seeds, disjoint from the profile's (the study's) seeds")
    p.add_argument("--candidates", nargs="+", default=["paper", "cosine-02-enet"], choices=list(CANDIDATES))
    p.add_argument("--root", type=Path, default=Path("outputs/recipe"))
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every candidate, key=value")
    args = p.parse_args()
    section = get_stage(args.stage).section
    study = set(load_config(args.profile, _parse_set(args.set)).seeds)
    if study & set(args.seeds):
        p.error(f"--seeds {sorted(study & set(args.seeds))} are the study's seeds: choose a recipe with other seeds")
    paper = _paper_values(section)
    rows = []
    for name in args.candidates:
        overrides = {k if "." in k else f"{section}.{k}": v for k, v in (paper | CANDIDATES[name]).items()}
        overrides |= _parse_set(args.set)
        overrides |= {"output_root": str((args.root / name).resolve()), "seeds": args.seeds, "data.score_test": False}
        if args.stage == "02_teacher":  # a shared teacher trains with the first seed only: compare a teacher per seed
            overrides["teacher_per_seed"] = True
        cfg = load_config(args.profile, overrides)  # a bad candidate fails here, before anything runs
        cmd = [sys.executable, "-m", "fasterseg_core", "train", "--profile", args.profile, "--stage", args.stage,
               "--overrides", json.dumps(overrides)]
        print(f"== {name}: {json.dumps(CANDIDATES[name])} seeds {args.seeds}", flush=True)
        subprocess.run(cmd, check=True)
        for seed in args.seeds:
            metrics = json.loads((stage_dir(cfg, args.stage, seed) / "metrics.json").read_text())
            assert "test" not in metrics, "a selection run must not be scored on test"
            rows.append({"candidate": name, "seed": seed, "val_miou": 100 * metrics["val"]["best"]["miou"],
                         "best_epoch": metrics["val"]["best"]["epoch"], "train_s": metrics.get("seconds_total")})
    frame = pd.DataFrame(rows)
    base = frame[frame.candidate == args.candidates[0]].set_index("seed").val_miou
    table = []
    for name, group in frame.groupby("candidate", sort=False):
        s = summarize(group.val_miou.to_numpy())
        row = {"candidate": name, "overrides": CANDIDATES[name], "val mIoU per seed": group.val_miou.round(2).tolist(),
               "mean": s.mean, "ci": [s.ci_low, s.ci_high], "train s (mean)": group.train_s.mean()}
        if name != args.candidates[0]:
            d = (group.set_index("seed").val_miou - base).to_numpy()
            sd = summarize(d)
            pw = power_analysis(d, MARGIN_POINTS)
            row |= {"vs": args.candidates[0], "paired difference per seed": [round(float(x), 2) for x in d],
                    "difference mean": sd.mean, "difference ci": [sd.ci_low, sd.ci_high],
                    "power": pw.sentence() if pw else "n < 2 or sd = 0"}
        table.append(row)
    # The choice: the best mean over the seeds, kept only when val supports it against the first candidate (the
    # paired difference's interval lies above 0); otherwise the first candidate (the paper's recipe) stays.
    best = max(table, key=lambda r: r["mean"])
    supported = best is table[0] or best["difference ci"][0] > 0
    chosen = best["candidate"] if supported else table[0]["candidate"]
    out = pd.DataFrame(table).sort_values("mean", ascending=False)
    print(out.drop(columns=["overrides"]).round(2).to_string(index=False))
    args.root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.root / f"{args.stage}_runs.csv", index=False)
    record = {"stage": args.stage, "profile": args.profile, "split": "val",
              "seeds": args.seeds, "study_seeds": sorted(study), "margin_points": MARGIN_POINTS,
              "set": _parse_set(args.set), "runs": rows, "candidates": table, "chosen": chosen,
              "chosen_overrides": CANDIDATES[chosen],
              "rule": "the best mean over the seeds when its paired difference to the first candidate has a 95 % "
                      "interval above 0, else the first candidate"}
    if args.stage == "02_teacher" and (lead := _lead(frame, args.seeds)) is not None:
        record["lead_over_students"] = lead
        for name, v in lead["by_candidate"].items():
            print(f"{name}: teacher − scratch student (val, same seeds) {v['per_seed']}, mean {v['mean']:+.2f}")
    print(f"chosen: {chosen} ({'val supports it' if supported else 'val does not support ' + best['candidate']})")
    date = dt.date.today().isoformat()
    path = write_record("recipe", record, headline=headline(args.stage, "val", table, chosen, record), date=date,
                        name=f"{hardware_tag()}-{date}-{args.stage}")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
