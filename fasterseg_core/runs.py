"""The pipeline's stages, their run folders and provenance: where a stage writes, what it records, when a
finished stage can be reused, and how the next stage finds it.

:data:`STAGES` is the one table of stages: notebook, output folder, config section, network role, label
and the upstream stages whose outputs it reads. Every stage (one numbered notebook) writes to a fixed
folder ``<output_root>/<profile>/<stage>/`` (house style §3.8: no timestamps in folder names):

* ``config.yaml``   the resolved configuration (:func:`fasterseg_core.config.dump_config`)
* ``manifest.json`` git commit and dirty flag, package versions, device, hardware tag, seed, start/end
  time, status and the stage's identity
* ``metrics.json``  the stage's small results; other artifacts (checkpoints, figures) beside them

A stage's **identity** (:func:`stage_identity`) hashes what can change its outputs: its own config
sections and the identities of the upstream stages it reads. A stage is *complete for a config* when its
manifest says ``complete`` with the same identity and hardware tag, so changing ``distill.*`` leaves
``02_teacher`` complete, and changing ``latency.*`` leaves every training stage complete.

    run = start_run(cfg, "02_teacher", seed=cfg.teacher.seed)
    save_torch(state, run.path("checkpoints", "best.pt"))
    run.finish({"miou": 0.61})
    upstream_path(cfg, "02_teacher", "checkpoints", "best.pt")   # from 03_distill
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig, dump_config, project_root, to_dict

# Packages whose versions go into every manifest (the ones that change numbers or rendering).
_VERSIONED_PACKAGES = ("fasterseg-core", "torch", "torchvision", "numpy", "pillow", "pandas", "matplotlib",
                       "onnx", "onnxruntime", "papermill", "nbconvert")  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# the stage table


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a notebook ``notebooks/<name>.ipynb`` writing ``outputs/<profile>/<name>/``.

    Attributes:
        name: notebook stem and output folder, e.g. ``"02_teacher"``.
        label: how tables name its result, e.g. ``"Distilled student"``.
        sections: the config sections that can change its outputs (part of its identity).
        upstream: stages whose outputs it may read (their identities are part of its identity).
        section: the training section it runs (``"teacher"``, ``"distill"``, ``"student"``), else ``None``.
        role: the architecture it trains, ``"teacher"`` or ``"student"``, else ``None``.
    """

    name: str
    label: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    section: str | None = None
    role: str | None = None


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        # 00_data's loader-speed figure uses the teacher's crop and batch, hence the teacher section.
        Stage("00_data", "Data", ("data", "teacher")),
        Stage("01_search", "Search", ("data", "model", "search")),
        Stage("02_teacher", "Teacher", ("data", "model", "teacher"), ("01_search",), "teacher", "teacher"),
        Stage("03_distill", "Distilled student", ("data", "model", "distill"), ("01_search", "02_teacher"),
              "distill", "student"),
        Stage("04_student", "Trained student", ("data", "model", "student"), ("01_search",), "student",
              "student"),
        Stage("05_latency", "Latency", ("data", "model", "latency"), ("01_search", "02_teacher", "03_distill")),
        Stage("06_analysis", "Analysis", ("report",), ("00_data", "01_search", "02_teacher", "03_distill",
                                                        "04_student", "05_latency")),
    )
}  # fmt: skip
TRAINING_STAGES = tuple(name for name, s in STAGES.items() if s.section is not None)


def get_stage(name: str) -> Stage:
    """The :class:`Stage` of a name; the short names ``teacher``/``distill``/``student`` are accepted."""
    by_section = {s.section: s for s in STAGES.values() if s.section}
    stage = STAGES.get(name) or by_section.get(name)
    if stage is None:
        raise ValueError(f"no stage {name!r}; stages: {list(STAGES)} (training: teacher, distill, student)")
    return stage


def architecture_source(cfg: RunConfig) -> str:
    """``"searched"`` or ``"published"``: where the training stages' networks come from for this config
    (``model.arch_source: auto`` = the search's when ``01_search`` is complete for this config)."""
    source = cfg.model.arch_source
    if source == "auto":
        return "searched" if is_complete(cfg, "01_search", any_hardware=True) else "published"
    return source


def _reads(cfg: RunConfig, stage: Stage, upstream: str) -> bool:
    """Whether ``stage`` reads ``upstream``'s outputs under this config (its identity then depends on it)."""
    if upstream == "01_search" and stage.section is not None:
        return architecture_source(cfg) == "searched"
    if upstream == "02_teacher" and stage.name == "03_distill":
        return not cfg.distill.teacher_checkpoint
    return True


def stage_identity(cfg: RunConfig, name: str, ignore: tuple[str, ...] = ()) -> str:
    """A short hash of what a stage computes from: its config sections and its upstream identities.

    Args:
        name: the stage.
        ignore: keys of the stage's own training section left out, e.g. ``("epochs", "eval_every_epochs")``
            for the resume key: raising ``epochs`` continues a finished run instead of starting over.
    """
    stage = STAGES[name]
    tree = to_dict(cfg)
    blob: dict[str, Any] = {"stage": name}
    for section in stage.sections:
        values = tree[section]
        if section == stage.section:
            values = {k: v for k, v in values.items() if k not in ignore}
        blob[section] = values
    blob["device"] = cfg.device
    blob["upstream"] = {u: stage_identity(cfg, u) for u in stage.upstream if _reads(cfg, stage, u)}
    if name == "03_distill" and cfg.distill.teacher_checkpoint:
        blob["teacher_checkpoint"] = cfg.distill.teacher_checkpoint
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# machine, device, seeds


def hardware_tag() -> str:
    """A short name for this machine's compute, used to key latency results across machines.

    Returns:
        ``"cuda-<gpu name>"`` (e.g. ``"cuda-nvidia-h100-80gb-hbm3"``) when CUDA is available, else
        ``"cpu-<n>core"`` with the number of cores this process may use (e.g. ``"cpu-2core"``).
    """
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        return "cuda-" + "-".join("".join(c if c.isalnum() else " " for c in name).split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"cpu-{cores}core"


def resolve_hardware_tag(cfg: RunConfig, override: str = "") -> str:
    """The tag a run records: an explicit override, else ``cfg.hardware_tag``, else :func:`hardware_tag`."""
    return override or cfg.hardware_tag or hardware_tag()


def resolve_device(name: str) -> torch.device:
    """Turn ``cfg.device`` into a device, failing clearly when the requested one is absent.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} requested but CUDA is not available on this machine; "
            "use a CPU profile (e.g. smoke, camvid-cpu) or override device='cpu'"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available; override device='cpu'")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """``{"sha": ..., "dirty": ...}`` of the project checkout, or ``None`` values outside a git checkout."""
    repo = repo or project_root()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], check=False, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    """Python, platform and the versions of the packages that matter for results."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    """The current UTC time as ISO 8601 (seconds), as every manifest records it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------
# atomic saves: a crash mid-write never leaves a truncated file where a complete one is expected


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON: {value!r}")


TMP_SUFFIX = ".tmp"


def _atomic_target(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; artifacts are meant to be read by others (umask-respecting 0644).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return path, Path(tmp)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + ``os.replace``).

    NumPy scalars/arrays and tensors become numbers/lists; NaN is written as ``NaN`` (Python's JSON
    reads it back), because per-class IoU is NaN for a class absent from prediction and ground truth.
    """
    path, tmp = _atomic_target(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(Path(path).read_text())


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (temp file + ``os.replace``); for checkpoints and tensors."""
    path, tmp = _atomic_target(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain Python containers only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


# ---------------------------------------------------------------------------------------------------
# run folders


def stage_dir(cfg: RunConfig, stage: str) -> Path:
    """``<output_root>/<profile>/<stage>``: the one folder a stage writes to."""
    return cfg.output_dir / stage


def load_manifest(cfg: RunConfig, stage: str) -> dict[str, Any] | None:
    """The stage's ``manifest.json``, or ``None`` when the stage never ran for this profile."""
    path = stage_dir(cfg, stage) / "manifest.json"
    return load_json(path) if path.exists() else None


def is_complete(cfg: RunConfig, stage: str, hardware: str = "", *, any_hardware: bool = False) -> bool:
    """Whether the stage finished for this config (same identity) on this hardware tag.

    ``any_hardware``: accept a run on another machine (a GPU-trained teacher evaluated on a CPU).
    """
    manifest = load_manifest(cfg, stage)
    return (
        manifest is not None
        and manifest.get("status") == "complete"
        and manifest.get("identity") == stage_identity(cfg, stage)
        and (any_hardware or manifest.get("hardware") == resolve_hardware_tag(cfg, hardware))
    )


def upstream_path(cfg: RunConfig, stage: str, *parts: str) -> Path:
    """Path of an artifact an earlier stage wrote, checked before a later stage relies on it.

    The upstream run must be complete with the identity this config gives it (its hardware may differ,
    e.g. a GPU-trained teacher timed on a CPU).

    Raises:
        FileNotFoundError: the stage has not completed for this config, or the artifact is missing.
    """
    manifest = load_manifest(cfg, stage)
    folder = stage_dir(cfg, stage)
    if manifest is None or manifest.get("status") != "complete":
        raise FileNotFoundError(
            f"stage {stage} has no complete run in {folder}; run it first "
            f"(make report PROFILE={cfg.profile}, or its notebook)"
        )
    if manifest.get("identity") != stage_identity(cfg, stage):
        raise FileNotFoundError(
            f"stage {stage} in {folder} ran with a different {'/'.join(STAGES[stage].sections)} config "
            f"(identity {manifest.get('identity')} != {stage_identity(cfg, stage)}); rerun it with this profile "
            "and overrides (make report reruns what is stale)"
        )
    path = folder.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"stage {stage} completed but wrote no {path}")
    return path


@dataclass
class Run:
    """An open run of one stage; create with :func:`start_run`, close with :meth:`finish`."""

    cfg: RunConfig
    stage: str
    dir: Path
    device: torch.device
    hardware: str
    manifest: dict[str, Any] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic, repr=False)

    def path(self, *parts: str) -> Path:
        """A path inside the run folder; its parent folders are created."""
        path = self.dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` (atomically)."""
        return save_json(metrics, self.dir / "metrics.json")

    def finish(self, metrics: dict[str, Any] | None = None) -> None:
        """Save ``metrics`` (if given) and mark the run complete with its end time."""
        if metrics is not None:
            self.save_metrics(metrics)
        elapsed = time.monotonic() - self._started
        self.manifest.update(status="complete", finished_at=now(), seconds=round(elapsed, 1))
        save_json(self.manifest, self.dir / "manifest.json")


def start_run(cfg: RunConfig, stage: str, hardware_tag: str = "", seed: int | None = None) -> Run:
    """Open the stage's run folder: write ``config.yaml`` and a ``running`` manifest, seed if asked.

    Args:
        cfg: the resolved configuration.
        stage: the stage's name, the notebook's stem (``"00_data"``, ``"02_teacher"``, …).
        hardware_tag: the notebook's ``hardware_tag`` parameter; empty uses ``cfg.hardware_tag`` or the
            machine's :func:`hardware_tag`.
        seed: seeds every generator (:func:`seed_everything`) and is recorded; ``None`` seeds nothing.
    """
    folder = stage_dir(cfg, stage)
    folder.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, folder / "config.yaml")
    device = resolve_device(cfg.device)
    if seed is not None:
        seed_everything(seed)
    manifest = {
        "stage": stage,
        "profile": cfg.profile,
        "status": "running",
        "identity": stage_identity(cfg, stage),
        "hardware": resolve_hardware_tag(cfg, hardware_tag),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "seed": seed,
        "git": git_state(),
        "versions": package_versions(),
        "started_at": now(),
        "finished_at": None,
    }
    save_json(manifest, folder / "manifest.json")
    return Run(
        cfg=cfg, stage=stage, dir=folder, device=device, hardware=manifest["hardware"], manifest=manifest
    )
