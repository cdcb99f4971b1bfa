"""Reading what the stages wrote and the published numbers; nothing here computes a result.

* :func:`load_artifacts`: every stage's manifest and metrics under ``outputs/<profile>/`` with a status
  ("complete", "other config", "incomplete", "not run"), the latency records of every machine
  (:func:`fasterseg_core.latency.suite.load_records`) and the pipeline record ``pipeline.json``.
* :func:`load_published`: ``reproduction_2022.json`` (the 2022 reproduction study, "the study") and
  ``fasterseg_reference_figures.json`` (the paper's numbers) from ``../shared/reference``; ``None`` for an
  absent file, and :attr:`Published.note` says so in every caption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RunConfig, project_root
from ..latency.suite import load_records
from ..runs import STAGES as _STAGE_TABLE
from ..runs import TRAINING_STAGES, load_manifest, stage_dir, stage_identity
from ..storage import load_json

# the stages the analysis reads: every stage before it
STAGES = tuple(name for name in _STAGE_TABLE if name != "06_analysis")
# training stage → (row label, role of its network, section of the config)
TRAINED = {n: (_STAGE_TABLE[n].label, _STAGE_TABLE[n].role, _STAGE_TABLE[n].section) for n in TRAINING_STAGES}
STUDY_FILE, PAPER_FILE = "reproduction_2022.json", "fasterseg_reference_figures.json"
# The paper's "epoch" (§9.1): 1000 iterations of batch 12 crops of 512×1024; used as the common unit.
PAPER_EPOCHS, PAPER_ITERS, PAPER_BATCH, PAPER_CROP_HW = 600, 1000, 12, (512, 1024)
# The study's logged runs behind each of our training stages (training_curves.runs keys).
NOT_RUN = "not run"


@dataclass
class StageArtifacts:
    """What one stage left in ``outputs/<profile>/<stage>/``.

    ``status``: "complete" (finished for this config), "other config" (finished, but for another resolved
    config, e.g. other overrides), "incomplete" (started, never finished: failed or running) or "not run".
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


@dataclass
class Artifacts:
    """Every stage's artifacts of one profile, the latency records and the pipeline record."""

    cfg: RunConfig
    stages: dict[str, StageArtifacts]
    latency: pd.DataFrame
    pipeline: dict[str, Any] | None

    def trained(self, stage: str) -> dict[str, Any] | None:
        """The training stage's ``metrics.json`` when it ran, else ``None``."""
        s = self.stages[stage]
        return s.metrics if s.ran else None


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


@dataclass
class Published:
    """The study's and the paper's numbers (``None`` when ``../shared/reference`` is absent)."""

    study: dict[str, Any] | None
    paper: dict[str, Any] | None
    folder: Path

    @property
    def note(self) -> str:
        """A caption sentence about the published columns."""
        if self.study is not None and self.paper is not None:
            return (
                f"Published numbers: the 2022 reproduction study ({STUDY_FILE}) and the paper "
                f"({PAPER_FILE}), from {self.folder.name}/."
            )
        missing = [n for n, d in ((STUDY_FILE, self.study), (PAPER_FILE, self.paper)) if d is None]
        return f"Published columns are empty: {', '.join(missing)} not found in {self.folder}."


def load_published(folder: str | Path | None = None) -> Published:
    """Read ``reproduction_2022.json`` and ``fasterseg_reference_figures.json`` from ``folder``
    (default ``../shared/reference`` beside the repository); a missing file leaves its field ``None``."""
    folder = Path(folder) if folder is not None else project_root().parent / "shared" / "reference"

    def read(name: str) -> dict[str, Any] | None:
        path = folder / name
        return json.loads(path.read_text()) if path.exists() else None

    return Published(read(STUDY_FILE), read(PAPER_FILE), folder)


def pct(value: Any) -> float:
    """A 0..1 score as percent; ``None``/NaN → NaN."""
    return float("nan") if value is None else 100.0 * float(value)


def norm_class(name: str) -> str:
    """Class names as keys across sources ("traffic light" = "trafficlight")."""
    return "".join(c for c in name.lower() if c.isalnum())
