"""Record a ``make report``'s stage times, for the pipeline's overall ETA (:mod:`fasterseg_core.eta`).

    python benchmarks/report_time.py outputs/camvid-cpu/pipeline.json [--command "make report"]

Reads the run's ``pipeline.json`` (per-stage status and seconds, the commit) and writes
``benchmarks/results/report/<profile>-<hardware tag>-<date>.json`` with this machine (run it where the report
ran; :func:`fasterseg_core.records.write_record`, which never overwrites another command's record). Only a run
in which every stage ran to its end is a record: a skipped or failed stage's time says nothing of its cost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from fasterseg_core.machine import hardware_tag
from fasterseg_core.records import write_record


def headline(stages: dict[str, float], total_s: float, disturbed: list[str] | None = None) -> str:
    """``72.7 min: 00 0.3, 01 5.4, …, 06 0.3``: the whole report and each stage (by its number), in minutes;
    a stage another job slowed down is starred."""
    parts = ", ".join(f"{stage[:2]} {seconds / 60:.1f}{'*' if stage in (disturbed or []) else ''}"
                      for stage, seconds in stages.items())
    return f"{total_s / 60:.1f} min: {parts}" + ("; * slowed by another job" if disturbed else "")


def latency_seconds(latency_record: Path) -> dict[str, dict[str, float]]:
    """Where ``05_latency``'s time went, per backend over every network: preparing (export, compile, quantise)
    and timing (timed loop, warm-up, agreement), in seconds, from the stage's ``latency/<hardware tag>.json``."""
    out: dict[str, dict[str, float]] = {}
    for row in json.loads(latency_record.read_text()).get("rows", []):
        spent = out.setdefault(row["backend"], {"prepare_s": 0.0, "timing_s": 0.0})
        for key in spent:
            spent[key] = round(spent[key] + float(row.get(key) or 0.0), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", type=Path, help="the run's <output_root>/<profile>/pipeline.json")
    p.add_argument("--command", default="make report", help="the command that ran it")
    p.add_argument("--disturbed", nargs="*", default=[], metavar="STAGE",
                   help="stages another job slowed down: kept in the record, left out of the ETA's estimates")
    p.add_argument("--note", default="", help="what happened during the run (e.g. what disturbed it)")
    args = p.parse_args()
    run = json.loads(args.pipeline.read_text())
    not_ran = [r["stage"] for r in run["stages"] if r["status"] != "ok"]
    if not_ran or "seconds" not in run:
        raise SystemExit(f"error: {args.pipeline}: stages {not_ran} did not run to their end here (or the report "
                         "did not render): record a run in which every stage ran (make report FORCE=1)")
    date = run.get("started_at", dt.date.today().isoformat())[:10]
    stages = {r["stage"]: r["seconds"] for r in run["stages"]}
    record = {"profile": run["profile"], "overrides": run.get("overrides", {}), "stages": stages,
              "total_s": run["seconds"]}
    unknown = sorted(set(args.disturbed) - set(stages))
    if unknown:
        raise SystemExit(f"error: --disturbed {unknown}: not stages of this run; its stages are {list(stages)}")
    if args.disturbed:
        record["disturbed_stages"] = args.disturbed
    if args.note:
        record["notes"] = args.note
    latency = args.pipeline.parent / "latency" / f"{hardware_tag()}.json"
    if latency.exists():  # what a backend costs the stage (a profile's backends are chosen on it)
        record["latency_backend_seconds"] = latency_seconds(latency)
    # the record describes the report's run: its command and commit, not this script's
    path = write_record("report", record, headline=headline(stages, run["seconds"], args.disturbed), command=args.command,
                        git=run.get("git") or {"sha": None, "dirty": None}, date=date,
                        name=f"{run['profile']}-{hardware_tag()}-{date}")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
