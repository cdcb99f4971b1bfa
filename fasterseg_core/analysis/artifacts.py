"""Reading what the stages wrote; nothing here computes a result.

:func:`load_artifacts` gives every stage's manifest and metrics under ``outputs/<profile>/`` with a status
("complete", "other config", "incomplete", "not run"), the training stages' per-seed runs
(``<stage>/seed-<s>/``: metrics, ``history.csv``, ``per_class_iou.csv``), the latency records of every
machine (:func:`fasterseg_core.latency.suite.load_records`) and the pipeline record ``pipeline.json``. The
published numbers come from the package (:func:`fasterseg_core.analysis.published.load_published`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..latency.suite import load_records
from ..runs import STAGES as _STAGE_TABLE
from ..runs import TRAINING_STAGES, load_manifest, stage_dir, stage_identity
from ..storage import load_json

# the stages the analysis reads: every stage before it
STAGES = tuple(name for name in _STAGE_TABLE if name != "06_analysis")
# training stage → (row label, role of its network, section of the config)
TRAINED = {n: (_STAGE_TABLE[n].label, _STAGE_TABLE[n].role, _STAGE_TABLE[n].section) for n in TRAINING_STAGES}
# The paper's "epoch" (§9.1): 1000 iterations of batch 12 crops of 512×1024; used as the common unit.
PAPER_EPOCHS, PAPER_ITERS, PAPER_BATCH, PAPER_CROP_HW = 600, 1000, 12, (512, 1024)
NOT_RUN = "not run"


@dataclass
class StageArtifacts:
    """What one stage left in ``outputs/<profile>/<stage>/``.

    ``status``: "complete" (finished for this config), "other config" (finished, but for another resolved
    config, e.g. other overrides), "incomplete" (started, never finished: failed or running) or "not run".
    A training stage's ``metrics`` is its seed aggregate (``seeds``, ``per_seed``, ``summary``).
    """

    stage: str
    folder: Path
    status: str
    manifest: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    @property
    def ran(self) -> bool:
        """Finished with results (for this or another config)."""
        return self.metrics is not None and self.status in ("complete", "other config")

    def read_csv(self, name: str) -> pd.DataFrame | None:
        path = self.folder / name
        return pd.read_csv(path) if self.ran and path.exists() else None

    def read_json(self, name: str) -> Any:
        path = self.folder / name
        return load_json(path) if self.ran and path.exists() else None

    @property
    def per_seed(self) -> dict[int, dict[str, Any]]:
        """A training stage's metrics of each seed (seed → ``metrics.json`` of ``seed-<s>/``)."""
        if not self.ran or "per_seed" not in self.metrics:
            return {}
        return {int(s): m for s, m in self.metrics["per_seed"].items()}

    def seed_table(self, name: str) -> pd.DataFrame | None:
        """A CSV every seed run wrote (``history.csv``, ``per_class_iou.csv``), with a ``seed`` column."""
        frames = [pd.read_csv(p).assign(seed=s) for s in self.per_seed
                  if (p := self.folder / f"seed-{s}" / name).exists()]
        return pd.concat(frames, ignore_index=True) if frames else None


@dataclass
class Artifacts:
    """Every stage's artifacts of one profile, the latency records and the pipeline record."""

    cfg: RunConfig
    stages: dict[str, StageArtifacts]
    latency: pd.DataFrame
    pipeline: dict[str, Any] | None

    def stage_seconds(self, stage: str) -> float | None:
        """The one wall time the report quotes for a stage: its notebook's time in this pipeline run
        (``pipeline.json``, what the front page's pipeline table shows), else its last run's (manifest: start_run
        to finish) when the pipeline skipped it or ran without the driver."""
        for r in (self.pipeline or {}).get("stages", []):
            if r.get("stage") == stage and r.get("status") in ("ok", "failed") and r.get("seconds"):
                return float(r["seconds"])
        seconds = (self.stages[stage].manifest or {}).get("seconds")
        return None if seconds is None else float(seconds)

    def trained(self, stage: str) -> dict[str, Any] | None:
        """The training stage's aggregate ``metrics.json`` when it ran, else ``None``."""
        s = self.stages[stage]
        return s.metrics if s.ran else None

    def seed_values(self, stage: str, split: str, which: str, key: str = "miou") -> dict[int, float]:
        """Seed → one score (fraction) of a training stage, e.g. the test mIoU of the best checkpoint."""
        out = {}
        for seed, m in self.stages[stage].per_seed.items():
            v = ((m.get(split) or {}).get(which) or {}).get(key)
            if v is not None:
                out[seed] = float(v)
        return out


def load_stage(cfg: RunConfig, stage: str) -> StageArtifacts:
    """One stage's folder, manifest, metrics and status (see :class:`StageArtifacts`)."""
    folder = stage_dir(cfg, stage)
    manifest = load_manifest(cfg, stage)
    if manifest is None:
        return StageArtifacts(stage, folder, NOT_RUN)
    metrics_path = folder / "metrics.json"
    metrics = load_json(metrics_path) if metrics_path.exists() else None
    if manifest.get("status") != "complete":
        status = "incomplete"
    else:
        status = "complete" if manifest.get("identity") == stage_identity(cfg, stage) else "other config"
    return StageArtifacts(stage, folder, status, manifest, metrics)


def load_artifacts(cfg: RunConfig) -> Artifacts:
    """Everything the earlier stages of ``cfg.profile`` wrote; absent stages are marked "not run"."""
    pipeline = cfg.output_dir / "pipeline.json"
    return Artifacts(
        cfg,
        {stage: load_stage(cfg, stage) for stage in STAGES},
        load_records(cfg.output_dir / "latency"),
        load_json(pipeline) if pipeline.exists() else None,
    )


def pct(value: Any) -> float:
    """A 0..1 score as percent; ``None``/NaN → NaN."""
    return float("nan") if value is None else 100.0 * float(value)


def norm_class(name: str) -> str:
    """Class names as keys across sources ("traffic light" = "trafficlight")."""
    return "".join(c for c in name.lower() if c.isalnum())
