"""The pipeline's stages, their run folders and provenance: where a stage writes, what it records, when a
finished stage can be reused, and how the next stage finds it.

:data:`STAGES` is the one table of stages: notebook, output folder, config section, network role, label
and the upstream stages whose outputs it reads. Every stage (one numbered notebook) writes to a fixed
folder ``<output_root>/<profile>/<stage>/`` (house style §3.8: no timestamps in folder names):

* ``config.yaml``   the resolved configuration (:func:`fasterseg_core.config.dump_config`)
* ``manifest.json`` git commit and dirty flag, package versions, device, hardware tag, seed, start/end
  time, status and the stage's identity
* ``metrics.json``  the stage's small results; other artifacts (checkpoints, figures) beside them

The training stages are **seeded**: they run once per seed of the profile (``seeds``), each seed into its
own run folder ``<stage>/seed-<s>/`` with the same files, resumable and skippable on its own; the stage
folder then holds the stage's notebook run (seed aggregate, figures).

A stage's **identity** (:func:`stage_identity`) hashes what can change its outputs: its own config
sections, its seeds and the identities of the upstream stages it reads. A stage is *complete for a config* when its
manifest says ``complete`` with the same identity and hardware tag, so changing ``distill.*`` leaves
``02_teacher`` complete, and changing ``latency.*`` leaves every training stage complete.

A run itself (the lock, setting aside what the previous run left, finishing) is
:mod:`fasterseg_core.lifecycle`'s.

    stage_dir(cfg, "02_teacher", seed=12345)                                  # outputs/<profile>/02_teacher/seed-12345
    is_complete(cfg, "02_teacher", any_hardware=True, seed=12345)
    upstream_path(cfg, "02_teacher", "checkpoints", "best.pt", seed=12345)   # from 03_distill
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig, to_dict
from .machine import planned_device, resolve_amp, resolve_hardware_tag
from .storage import load_json

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

    @property
    def seeded(self) -> bool:
        """Runs once per seed of the profile, each into ``<stage>/seed-<s>/`` (the training stages)."""
        return self.section is not None

    @property
    def resume_ignore(self) -> tuple[str, ...]:
        """Keys of its own section that only extend a run: more training epochs continue a finished run."""
        return ("epochs", "eval_every_epochs") if self.section is not None else ()


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


def _reads(cfg: RunConfig, stage: Stage, upstream: str, once_complete: bool = False) -> bool:
    """Whether ``stage`` reads ``upstream``'s outputs under this config (its identity then depends on it).
    ``once_complete``: as it will once ``upstream`` has completed (``arch_source: auto`` then picks the search)."""
    if upstream == "01_search" and stage.section is not None:
        if once_complete and cfg.model.arch_source == "auto":
            return True
        return architecture_source(cfg) == "searched"
    if upstream == "02_teacher" and stage.name == "03_distill":
        return not cfg.distill.teacher_checkpoint
    return True


def stage_reads(cfg: RunConfig, name: str, upstream: str, *, once_complete: bool = False) -> bool:
    """Whether stage ``name`` reads the outputs of ``upstream`` (one of its ``Stage.upstream``) under this
    config; ``once_complete``: as it will after ``upstream`` completes, for a scheduler that runs it first."""
    return upstream in STAGES[name].upstream and _reads(cfg, STAGES[name], upstream, once_complete)


def stage_seeds(cfg: RunConfig, name: str) -> tuple[int, ...]:
    """The seeds a stage runs with: every seed of the profile for the students, the first one for a shared
    teacher (``teacher_per_seed: false``), none for the stages that are not seeded."""
    stage = STAGES[name]
    if not stage.seeded:
        return ()
    return cfg.seeds if name != "02_teacher" or cfg.teacher_per_seed else cfg.seeds[:1]


def teacher_seed(cfg: RunConfig, seed: int) -> int:
    """The seed of the teacher the distilled student of ``seed`` learns from."""
    return seed if cfg.teacher_per_seed else cfg.seeds[0]


# Config keys that change how fast a stage runs, never what it computes: left out of every identity, so that
# turning one on or off keeps a finished run and resumes an interrupted one.
SPEED_ONLY: dict[str, tuple[str, ...]] = {"data": ("cache_decoded",)}


def stage_identity(cfg: RunConfig, name: str, ignore: tuple[str, ...] = (), seed: int | None = None) -> str:
    """A short hash of what a stage computes from: its config sections, its seeds and its upstream identities.

    Args:
        name: the stage.
        ignore: keys of the stage's own training section left out, e.g. ``("epochs", "eval_every_epochs")``
            for the resume key: raising ``epochs`` continues a finished run instead of starting over.
        seed: the identity of one seed's run of a seeded stage; ``None`` the whole stage (all its seeds).
    """
    stage = STAGES[name]
    tree = to_dict(cfg)
    blob: dict[str, Any] = {"stage": name, "device": cfg.device}
    for section in stage.sections:
        left_out = SPEED_ONLY.get(section, ()) + (ignore if section == stage.section else ())
        values = {k: v for k, v in tree[section].items() if k not in left_out}
        if values.get("amp") == "auto":  # the precision it trains at on this machine (TrainConfig.amp)
            values["amp"] = resolve_amp("auto", planned_device(cfg.device))
        blob[section] = values
    seeds = (seed,) if seed is not None else stage_seeds(cfg, name)
    if stage.seeded:
        blob["seeds"] = list(seeds)
    upstream: dict[str, Any] = {}
    for u in stage.upstream:
        if not _reads(cfg, stage, u):
            continue
        if u == "02_teacher" and name == "03_distill":  # each seed learns from its own (or the shared) teacher
            upstream[u] = [stage_identity(cfg, u, seed=teacher_seed(cfg, s)) for s in seeds]
        else:
            upstream[u] = stage_identity(cfg, u)
    blob["upstream"] = upstream
    if name == "03_distill" and cfg.distill.teacher_checkpoint:
        blob["teacher_checkpoint"] = cfg.distill.teacher_checkpoint
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# run folders


SEED_PREFIX = "seed-"


def stage_dir(cfg: RunConfig, stage: str, seed: int | None = None) -> Path:
    """``<output_root>/<profile>/<stage>``, the one folder a stage writes to; ``<stage>/seed-<s>`` for the
    run of one seed of a seeded stage."""
    folder = cfg.output_dir / stage
    return folder if seed is None else folder / f"{SEED_PREFIX}{seed}"


def resume_key(cfg: RunConfig, stage: str, seed: int | None = None) -> str:
    """What a stage's results in its folder must match to be kept and continued: its identity, without the
    keys that only extend a run (a training stage's ``epochs``: 30 epochs continue a finished 20)."""
    return stage_identity(cfg, stage, ignore=STAGES[stage].resume_ignore, seed=seed)


def load_manifest(cfg: RunConfig, stage: str, seed: int | None = None) -> dict[str, Any] | None:
    """The ``manifest.json`` of a stage (or of one seed's run), or ``None`` when it never ran."""
    path = stage_dir(cfg, stage, seed) / "manifest.json"
    return load_json(path) if path.exists() else None


def is_complete(cfg: RunConfig, stage: str, hardware: str = "", *, any_hardware: bool = False,
                seed: int | None = None) -> bool:  # fmt: skip
    """Whether the stage (or one seed's run of it) finished for this config on this hardware tag.

    ``any_hardware``: accept a run on another machine (a GPU-trained teacher evaluated on a CPU).
    """
    manifest = load_manifest(cfg, stage, seed)
    return (
        manifest is not None
        and manifest.get("status") == "complete"
        and manifest.get("identity") == stage_identity(cfg, stage, seed=seed)
        and (any_hardware or manifest.get("hardware") == resolve_hardware_tag(cfg, hardware))
    )


def upstream_path(cfg: RunConfig, stage: str, *parts: str, seed: int | None = None) -> Path:
    """Path of an artifact an earlier stage (or one seed's run of it) wrote, checked before a later stage
    relies on it.

    The upstream run must be complete with the identity this config gives it (its hardware may differ,
    e.g. a GPU-trained teacher timed on a CPU).

    Raises:
        FileNotFoundError: the stage has not completed for this config, or the artifact is missing.
    """
    manifest = load_manifest(cfg, stage, seed)
    folder = stage_dir(cfg, stage, seed)
    if manifest is None or manifest.get("status") != "complete":
        raise FileNotFoundError(
            f"stage {stage} has no complete run in {folder}; run it first "
            f"(make report PROFILE={cfg.profile}, or its notebook)"
        )
    if manifest.get("identity") != stage_identity(cfg, stage, seed=seed):
        raise FileNotFoundError(
            f"stage {stage} in {folder} ran with a different {'/'.join(STAGES[stage].sections)} config "
            f"(identity {manifest.get('identity')} != {stage_identity(cfg, stage, seed=seed)}); rerun it with "
            "this profile and overrides (make report reruns what is stale)"
        )
    path = folder.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"stage {stage} completed but wrote no {path}")
    return path
