"""Short-run training recipes compared by their mean over seeds (issue 16, "accuracy per CPU-hour").

    python benchmarks/recipe.py [--profile camvid-cpu] [--stage 04_student] [--seeds 12345 12346]
                                [--candidates paper poly-02 cosine-02] [--root outputs/recipe]
                                [--set student.epochs=30 ...]

Each candidate is a set of overrides of the paper's recipe in the profile's training section (the ``CANDIDATES``
table below): every key a candidate sets starts at the paper's value; everything else is the profile's.
Every (candidate, seed) is one real run of the stage through ``python -m fasterseg_core train`` into its own
output root (``<root>/<candidate>/``), so an interrupted comparison resumes: a finished seed is reused, a
half-trained one resumes from its last checkpoint. The table reports per candidate the test mIoU (best
checkpoint) of every seed, the mean and its 95 % Student-t interval (:func:`fasterseg_core.evidence.summarize`),
and the training seconds; candidates are ranked by the mean, never by one run.

Not a timed benchmark: it lives here beside them because it measures what the speed work buys.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from fasterseg_core.config import RunConfig, load_config
from fasterseg_core.evidence import summarize
from fasterseg_core.runs import get_stage, stage_dir

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
    p.add_argument("--seeds", type=int, nargs="+", default=[12345, 12346])
    p.add_argument("--candidates", nargs="+", default=["paper", "poly-02", "cosine-02"], choices=list(CANDIDATES))
    p.add_argument("--root", type=Path, default=Path("outputs/recipe"))
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every candidate, key=value")
    args = p.parse_args()
    section = get_stage(args.stage).section
    paper = _paper_values(section)
    rows = []
    for name in args.candidates:
        overrides = {k if "." in k else f"{section}.{k}": v for k, v in (paper | CANDIDATES[name]).items()}
        overrides |= _parse_set(args.set)
        overrides |= {"output_root": str((args.root / name).resolve()), "seeds": args.seeds}
        cfg = load_config(args.profile, overrides)  # a bad candidate fails here, before anything runs
        cmd = [sys.executable, "-m", "fasterseg_core", "train", "--profile", args.profile, "--stage", args.stage,
               "--overrides", json.dumps(overrides)]  # fmt: skip
        print(f"== {name}: {json.dumps(CANDIDATES[name])} seeds {args.seeds}", flush=True)
        subprocess.run(cmd, check=True)
        for seed in args.seeds:
            metrics = json.loads((stage_dir(cfg, args.stage, seed) / "metrics.json").read_text())
            rows.append({"candidate": name, "seed": seed, "test_miou": 100 * metrics["test"]["best"]["miou"],
                         "val_miou": 100 * metrics["val"]["best"]["miou"],
                         "train_s": metrics.get("seconds_total")})  # fmt: skip
    frame = pd.DataFrame(rows)
    table = []
    for name, group in frame.groupby("candidate", sort=False):
        s = summarize(group.test_miou.to_numpy())
        table.append({"candidate": name, "overrides": json.dumps(CANDIDATES[name]),
                      "test mIoU per seed": ", ".join(f"{v:.1f}" for v in group.test_miou),
                      "mean": s.mean, "95% CI": f"[{s.ci_low:.1f}, {s.ci_high:.1f}]",
                      "val mean": group.val_miou.mean(), "train s (mean)": group.train_s.mean()})  # fmt: skip
    out = pd.DataFrame(table).sort_values("mean", ascending=False)
    print(out.round(1).to_string(index=False))
    args.root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.root / f"{args.stage}_runs.csv", index=False)


if __name__ == "__main__":
    main()
