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
``02_teacher`` complete, and changing ``latency.*`` leaves every training stage complete. Complete also means
intact: every artifact still has the SHA-256 the manifest recorded when the run finished (:func:`check_artifacts`),
and a seeded stage's seed runs are complete too; a manifest that does not parse is not complete.

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
from .storage import TMP_SUFFIX, file_digest, load_json

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
        """Keys of its own section that only extend a run: more training epochs continue a finished run
        (under the paper's per-epoch schedule only: see :func:`resume_key`)."""
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
}
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
    keys that only extend a run (a training stage's ``epochs``: 30 epochs continue a finished 20).

    Only the paper's per-epoch exponential decay (§9.2) makes a continued run equal a longer one: a poly or
    cosine schedule decays to 0 over the configured length, so under those ``epochs`` stays in the key and
    another length is another run. A finished run longer than the configured one is never continued or
    reported either: :mod:`fasterseg_core.lifecycle` sets it aside (``previous/<key>-epoch<N>/``).
    """
    spec = STAGES[stage].section
    ignore = STAGES[stage].resume_ignore
    if spec is not None and getattr(cfg, spec).lr_schedule != "exponential":
        ignore = tuple(k for k in ignore if k != "epochs")
    return stage_identity(cfg, stage, ignore=ignore, seed=seed)


MANIFEST = "manifest.json"
LOCK_FILE = ".lock"  # held (flock) by the process running the stage; freed when that process dies
PREVIOUS = "previous"  # results of other settings, set aside: previous/<resume key>/
UNREADABLE = "unreadable"  # the status load_manifest gives a manifest.json that does not parse


def load_manifest(cfg: RunConfig, stage: str, seed: int | None = None) -> dict[str, Any] | None:
    """The ``manifest.json`` of a stage (or of one seed's run), or ``None`` when it never ran; one that does not
    parse reads as ``{"status": "unreadable", "error": …}`` (never complete; the next run sets it aside)."""
    return read_manifest(stage_dir(cfg, stage, seed) / MANIFEST)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest file (see :func:`load_manifest`)."""
    if not path.exists():
        return None
    try:
        manifest = load_json(path)
    except (OSError, ValueError) as e:
        return {"status": UNREADABLE, "error": f"{path} does not parse ({e})"}
    if not isinstance(manifest, dict):
        return {"status": UNREADABLE, "error": f"{path} is not a JSON object"}
    return manifest


def run_files(folder: Path) -> list[Path]:
    """What a run wrote in its folder: everything but the manifest, the lock, set-aside results, the seed runs
    (each seed's folder is a run of its own) and temporary files of writes in progress."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if p.name in (MANIFEST, LOCK_FILE, PREVIOUS) or (p.is_dir() and p.name.startswith(SEED_PREFIX)):
            continue
        out += [q for q in sorted(p.rglob("*")) if q.is_file()] if p.is_dir() else [p]
    return [p for p in out if not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX))]


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256: each file hashed once


def _digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def record_artifacts(folder: Path) -> dict[str, str]:
    """``{path relative to folder: SHA-256}`` of every file the run wrote (:func:`run_files`), for its manifest."""
    return {p.relative_to(folder).as_posix(): _digest(p) for p in run_files(folder)}


def check_artifacts(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """What no longer matches the manifest's record of the run's files: ``["<file> is missing", "<file> changed
    since the run finished"]``, empty when all match (or when the manifest predates the record)."""
    problems = []
    for rel, digest in (manifest.get("artifacts") or {}).items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif _digest(path) != digest:
            problems.append(f"{path} changed since the run finished")
    return problems


def is_complete(cfg: RunConfig, stage: str, hardware: str = "", *, any_hardware: bool = False,
                seed: int | None = None) -> bool:
    """Whether the stage (or one seed's run of it) finished for this config on this hardware tag, its artifacts
    as it left them and, for a seeded stage, each of its seed runs complete.

    ``any_hardware``: accept a run on another machine (a GPU-trained teacher evaluated on a CPU).
    """
    return not incomplete_because(cfg, stage, hardware, any_hardware=any_hardware, seed=seed)


def incomplete_because(cfg: RunConfig, stage: str, hardware: str = "", *, any_hardware: bool = False,
                       seed: int | None = None) -> str:
    """Why the stage (or one seed's run) is not complete for this config, in words; ``""`` when it is."""
    manifest = load_manifest(cfg, stage, seed)
    folder = stage_dir(cfg, stage, seed)
    if manifest is None:
        return f"{folder} holds no run"
    if manifest.get("status") == UNREADABLE:
        return manifest["error"]
    if manifest.get("status") != "complete":
        return f"its last run in {folder} is {manifest.get('status')}"
    if manifest.get("identity") != stage_identity(cfg, stage, seed=seed):
        return f"{folder} ran with other settings"
    if not any_hardware and manifest.get("hardware") != resolve_hardware_tag(cfg, hardware):
        return f"{folder} ran on {manifest.get('hardware')}"
    if problems := check_artifacts(folder, manifest):
        return "; ".join(problems)
    if seed is None and STAGES[stage].seeded:
        for s in stage_seeds(cfg, stage):
            if why := incomplete_because(cfg, stage, any_hardware=True, seed=s):
                return f"seed {s}: {why}"
    return ""


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
    if manifest is not None and manifest.get("status") == UNREADABLE:
        raise FileNotFoundError(
            f"stage {stage}: {manifest['error']}; rerun the stage (make report PROFILE={cfg.profile}), which sets "
            "the folder's results aside and recomputes them"
        )
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
    if problems := check_artifacts(folder, manifest):
        raise FileNotFoundError(
            f"stage {stage}: {'; '.join(problems)}; rerun the stage (make report PROFILE={cfg.profile}), which sets "
            "what no longer matches aside and recomputes it"
        )
    path = folder.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"stage {stage} completed but wrote no {path}")
    return path
