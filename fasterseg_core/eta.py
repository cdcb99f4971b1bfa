"""One overall ETA for ``make report``: how long the stages still to run will take.

A stage's own bars only know their own work (one seed's epochs), so the driver estimates each stage from a
measured run of the same profile: this machine's previous ``pipeline.json`` where a stage ran to the end
there, else the newest committed record ``benchmarks/results/report/<profile>-*.json`` (a fresh-clone ``make
report``, written by ``benchmarks/report_time.py``; it names its machine). Once a stage has finished here,
the estimates of the rest are scaled by how much faster or slower this machine ran the finished ones than
estimated: the record's machine is seldom this one. Profiles without a record get no overall ETA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import RunConfig, project_root

REPORT_TIMES = Path("benchmarks") / "results" / "report"  # in the project folder
_SCALE_LIMITS = (0.2, 5.0)  # a first stage far off its estimate says little about the rest


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_estimates(cfg: RunConfig) -> tuple[dict[str, float], str]:
    """Seconds per stage from measured runs of this profile, and where they come from ("" when none)."""
    estimates: dict[str, float] = {}
    sources = []
    previous = _read(cfg.output_dir / "pipeline.json") or {}
    if previous.get("profile") == cfg.profile:
        for row in previous.get("stages", []):
            if row.get("status") == "ok" and row.get("seconds"):
                estimates[row["stage"]] = float(row["seconds"])
        if estimates:
            sources.append("this machine's previous run")
    # the newest record first; a stage another job slowed down there (disturbed_stages) comes from an older one
    for path in sorted((project_root() / REPORT_TIMES).glob(f"{cfg.profile}-*.json"), reverse=True):
        record = _read(path) or {}
        if record.get("profile") != cfg.profile:
            continue
        disturbed = set(record.get("disturbed_stages", []))
        missing = {s: float(v) for s, v in record.get("stages", {}).items()
                   if s not in estimates and s not in disturbed}
        if missing:
            estimates |= missing
            machine = record.get("machine", {})
            sources.append(f"{path.relative_to(project_root())} ({machine.get('cpu_model', '?')}, "
                           f"{machine.get('cpu_isa', '?')}, {machine.get('cpu_count', '?')} cores)")
        if not disturbed - set(estimates):
            break
    return estimates, " and ".join(sources)


class Eta:
    """The pipeline's remaining time: the running stage's estimate less its elapsed time (never less than its
    own bar says), plus the estimates of the stages after it, all scaled by this machine's measured pace.

    Args:
        estimates: seconds per stage (:func:`stage_estimates`).
        todo: the stages this invocation will run, in order (complete ones are skipped and cost nothing).
    """

    def __init__(self, estimates: dict[str, float], todo: list[str]) -> None:
        self.estimates, self.todo = estimates, list(todo)
        self._done_estimate = self._done_actual = 0.0

    @property
    def known(self) -> bool:
        """Whether every stage to run has an estimate (otherwise no overall ETA is shown)."""
        return bool(self.todo) and all(s in self.estimates for s in self.todo)

    @property
    def scale(self) -> float:
        if self._done_estimate <= 0:
            return 1.0
        low, high = _SCALE_LIMITS
        return min(high, max(low, self._done_actual / self._done_estimate))

    def finished(self, stage: str, seconds: float) -> None:
        """Record a stage that ran to its end here: its time against its estimate sets the pace."""
        if stage in self.todo:
            self.todo.remove(stage)
            if stage in self.estimates and seconds > 0:
                self._done_estimate += self.estimates[stage]
                self._done_actual += seconds

    def remaining(self, stage: str | None = None, elapsed: float = 0.0, bar_left: float = 0.0) -> float | None:
        """Seconds left in all while ``stage`` runs (``elapsed`` seconds in; its current bar says ``bar_left``);
        None when some stage has no estimate."""
        if not self.known:
            return None
        later = sum(self.estimates[s] for s in self.todo if s != stage) * self.scale
        if stage is None or stage not in self.todo:
            return later
        return later + max(self.estimates[stage] * self.scale - elapsed, bar_left, 0.0)


def minutes(seconds: float) -> str:
    """"about 41 min" / "under a minute"."""
    return "under a minute" if seconds < 60 else f"about {seconds / 60:.0f} min"
