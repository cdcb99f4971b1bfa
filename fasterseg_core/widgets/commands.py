"""The commands the control panel launches, as plain functions (no widgets): usable from a terminal or a
script as well, e.g. ``subprocess.run(stage_command("04_student", "smoke", {"student.epochs": 3}))``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import load_config, project_root
from ..pipeline import notebooks_dir, stage_notebooks
from ..runs import STAGES, TRAINING_STAGES

TRAINING_SECTIONS = {name: STAGES[name].section for name in TRAINING_STAGES}


def profile_names(folder: Path | None = None) -> list[str]:
    """The profiles ``params/<name>.yaml`` of the project, sorted."""
    return sorted(p.stem for p in Path(folder or project_root() / "params").glob("*.yaml"))


def epoch_overrides(epochs: Mapping[str, int]) -> dict[str, int]:
    """``{"02_teacher": 3, "03_distill": 0}`` → ``{"teacher.epochs": 3}`` (0 or None: keep the profile's)."""
    unknown = sorted(set(epochs) - set(TRAINING_SECTIONS))
    if unknown:
        raise ValueError(f"no training stage {unknown}; choose from {list(TRAINING_SECTIONS)}")
    return {f"{TRAINING_SECTIONS[stage]}.epochs": int(n) for stage, n in epochs.items() if n}


def executed_notebook(stage: str, profile: str, overrides: Mapping[str, Any]) -> Path:
    """``<output_root>/<profile>/notebooks/<stage>.ipynb``, where papermill writes the executed stage."""
    return load_config(profile, dict(overrides)).output_dir / "notebooks" / f"{stage}.ipynb"


def stage_command(
    stage: str,
    profile: str,
    overrides: Mapping[str, Any],
    hardware_tag: str = "",
    folder: Path | None = None,
) -> list[str]:
    """The papermill command that runs one stage notebook as the pipeline driver would.

    The config is resolved first, so a misspelled or out-of-range override fails before anything is
    touched. Then the executed notebook's folder ``<output_root>/<profile>/notebooks/`` is created (papermill
    refuses to write into a missing folder, and on a fresh profile only the pipeline driver made it), so
    the command runs as is.

    Raises:
        ConfigError: the profile or an override does not fit the config.
        FileNotFoundError: no notebook for that stage.
    """
    executed = executed_notebook(stage, profile, overrides)
    folder = folder or notebooks_dir()
    source = Path(folder) / f"{stage}.ipynb"
    if not source.exists():
        have = [p.stem for p in stage_notebooks(Path(folder))]
        raise FileNotFoundError(f"no notebook {source}; stages: {have}")
    executed.parent.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "overrides": dict(overrides), "hardware_tag": hardware_tag}
    return [
        sys.executable,
        "-m",
        "papermill",
        str(source),
        str(executed),
        "-k",
        "python3",
        "--cwd",
        str(folder),
        "-y",
        json.dumps(params),
        "--progress-bar",
        "--log-output",
    ]


def pipeline_command(
    profile: str, overrides: Mapping[str, Any], hardware_tag: str = "", force: bool = False, pdf: bool = True
) -> list[str]:
    """The ``python -m fasterseg_core report`` command (every stage in order, then the report)."""
    load_config(profile, dict(overrides))  # fail here, not in the child process
    cmd = [
        sys.executable,
        "-m",
        "fasterseg_core",
        "report",
        "--profile",
        profile,
        "--overrides",
        json.dumps(dict(overrides)),
    ]
    cmd += ["--hardware-tag", hardware_tag] if hardware_tag else []
    return cmd + (["--force"] if force else []) + ([] if pdf else ["--no-pdf"])
