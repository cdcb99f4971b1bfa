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

    run = start_run(cfg, "02_teacher")                            # the stage (all its seeds)
    seed_run = start_run(cfg, "02_teacher", seed=12345, per_seed=True)  # one seed: 02_teacher/seed-12345/
    save_torch(state, seed_run.path("checkpoints", "best.pt"))
    seed_run.finish({"miou": 0.61})
    upstream_path(cfg, "02_teacher", "checkpoints", "best.pt", seed=12345)   # from 03_distill
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, dump_config, to_dict
from .machine import git_state, now, package_versions, resolve_device, resolve_hardware_tag, seed_everything
from .storage import load_json, remove_temp_files, save_json

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
        values = tree[section]
        if section == stage.section:
            values = {k: v for k, v in values.items() if k not in ignore}
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


LOCK_FILE = ".lock"  # held (flock) by the process running the stage; freed when that process dies
PREVIOUS = "previous"  # results of other settings, set aside: previous/<resume key>/
STATUSES = ("running", "complete", "failed", "interrupted")


class RunLocked(RuntimeError):
    """Another process is running the same stage into the same folder (the message names it)."""


# The runs this process has open, by folder: a notebook cell that raised leaves its run open in the kernel,
# and rerunning the cell must take the folder over rather than find it locked by itself.
_OPEN_RUNS: dict[Path, Run] = {}


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


# ---- the lock ----------------------------------------------------------------------------------------
def _lock(folder: Path, stage: str) -> int:
    """Hold ``folder/.lock`` exclusively (``flock``; the kernel frees it when this process dies) and write
    who holds it there. Returns the open descriptor.

    Raises:
        RunLocked: another process holds it (the message names its PID, start time and host).
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            holder = {}
        os.close(fd)
        raise RunLocked(
            f"stage {stage} is already running in {folder}: pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started_at', '?')}; wait for it to finish or stop "
            f"it (kill {holder.get('pid', '<pid>')}), then run this again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": now()}).encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# ---- what the previous run left -------------------------------------------------------------------------
def _results(folder: Path) -> list[Path]:
    """What a run left in its folder: everything but the lock, set-aside results and the seed runs (each
    seed's folder is a run of its own, settled when that seed starts)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir()
            if p.name not in (LOCK_FILE, PREVIOUS) and not (p.is_dir() and p.name.startswith(SEED_PREFIX))]  # fmt: skip


def _settle_previous(folder: Path, key: str) -> dict[str, Any]:
    """Before a run starts (lock held): close a dead run's manifest, set aside results of other settings to
    ``previous/<their resume key>/``, bring back results of these settings from ``previous/<key>/``.

    Returns:
        What was found, for the new manifest and the user: ``{"status", "identity", "started_at",
        "finished_at", "set_aside", "restored", "temp_files_removed"}`` (only what applies).
    """
    found: dict[str, Any] = {}
    removed = remove_temp_files(folder)  # an interrupted atomic write's leftovers (we hold the lock)
    if removed:
        found["temp_files_removed"] = len(removed)
    path = folder / "manifest.json"
    old = load_json(path) if path.exists() else None
    if old is not None:
        if old.get("status") == "running":  # its lock was free: the process that wrote it is gone
            old.update(status="interrupted", note="the process ended before the run finished (killed or crashed)")
            save_json(old, path)
        found.update({k: old.get(k) for k in ("status", "identity", "started_at", "finished_at", "error")})
    old_key = (old or {}).get("resume_key") or ("unknown" if _results(folder) else None)
    if old_key is not None and old_key != key and _results(folder):
        dest = folder / PREVIOUS / old_key
        if dest.exists():  # an older set-aside of the same settings: keep both
            dest = dest.with_name(f"{old_key}-{int(time.time())}")
        dest.mkdir(parents=True)
        for p in _results(folder):
            shutil.move(str(p), dest / p.name)
        found["set_aside"] = str(dest)
    back = folder / PREVIOUS / key
    if back.is_dir() and not _results(folder):
        for p in back.iterdir():
            shutil.move(str(p), folder / p.name)
        back.rmdir()
        found["restored"] = str(back)
    return found


def _describe(stage: str, found: dict[str, Any]) -> str:
    """One line for the person starting the run: what the previous run left and what happened to it."""
    parts = []
    status = found.get("status")
    said = {"interrupted": "was interrupted", "failed": "failed", "running": "did not finish"}
    if status in said:
        parts.append(f"the previous run (started {found.get('started_at')}) {said[status]}"
                     + (f": {found['error']}" if found.get("error") else "") + "; it resumes from its checkpoints")  # fmt: skip
    if "set_aside" in found:
        parts.append(f"results of other settings set aside to {found['set_aside']} (rerunning those settings "
                     "brings them back)")  # fmt: skip
    if "restored" in found:
        parts.append(f"results of these settings brought back from {found['restored']}")
    if found.get("temp_files_removed"):
        parts.append(f"{found['temp_files_removed']} temporary file(s) of an interrupted write removed")
    return f"{stage}: " + "; ".join(parts) if parts else ""


# ---- the run ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """An open run of one stage; create with :func:`start_run`, close with :meth:`finish` (or :meth:`fail`).

    While open it holds the stage folder's lock; SIGTERM/SIGINT or the process ending first leave the
    manifest ``interrupted``.
    """

    cfg: RunConfig
    stage: str
    dir: Path
    device: torch.device
    hardware: str
    manifest: dict[str, Any] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic, repr=False)
    _lock_fd: int | None = field(default=None, repr=False)
    _restore_signals: Callable[[], None] | None = field(default=None, repr=False)

    def path(self, *parts: str) -> Path:
        """A path inside the run folder; its parent folders are created."""
        path = self.dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` (atomically)."""
        return save_json(metrics, self.dir / "metrics.json")

    @property
    def open(self) -> bool:
        return self.manifest.get("status") == "running"

    def finish(self, metrics: dict[str, Any] | None = None) -> None:
        """Save ``metrics`` (if given) and mark the run complete with its end time."""
        if metrics is not None:
            self.save_metrics(metrics)
        self._close("complete")

    def fail(self, error: str) -> None:
        """Mark the run failed with the error message (its results so far stay, to resume from)."""
        self._close("failed", error=error)

    def interrupt(self, why: str) -> None:
        """Mark the run interrupted (a signal, or the process ending before :meth:`finish`)."""
        self._close("interrupted", error=why)

    def _close(self, status: str, **extra: Any) -> None:
        if not self.open or self.manifest.get("pid") != os.getpid():
            return  # closed already, or a forked worker that inherited the object
        self.manifest.update(status=status, finished_at=now(), seconds=round(time.monotonic() - self._started, 1),
                             **extra)  # fmt: skip
        save_json(self.manifest, self.dir / "manifest.json")
        if self._restore_signals is not None:
            self._restore_signals()
        _unlock(self._lock_fd)
        self._lock_fd = None
        if _OPEN_RUNS.get(self.dir.resolve()) is self:
            del _OPEN_RUNS[self.dir.resolve()]


def _on_signals(run: Run) -> Callable[[], None] | None:
    """SIGTERM/SIGINT write ``interrupted`` into the manifest, then do what they did before (SIGINT raises
    KeyboardInterrupt, SIGTERM ends the process). Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        run.interrupt(f"stopped by {name}")
        old = previous[signum]
        if callable(old):
            old(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, old in previous.items():
                signal.signal(sig, old)

    return restore


def start_run(cfg: RunConfig, stage: str, hardware_tag: str = "", seed: int | None = None, *,
              per_seed: bool = False) -> Run:  # fmt: skip
    """Open the stage's run folder: lock it, settle what the previous run left, write ``config.yaml`` and a
    ``running`` manifest, seed if asked.

    Nothing in the folder changes before the lock is held and the device is known: a run that cannot start
    (another run holds the folder, the device is absent) leaves a complete stage complete. Results of other
    settings are set aside, never deleted, and come back when those settings run again.

    Args:
        cfg: the resolved (validated) configuration.
        stage: the stage's name, the notebook's stem (``"00_data"``, ``"02_teacher"``, …).
        hardware_tag: the notebook's ``hardware_tag`` parameter; empty uses ``cfg.hardware_tag`` or the
            machine's :func:`~fasterseg_core.machine.hardware_tag`.
        seed: seeds every generator (:func:`~fasterseg_core.machine.seed_everything`) and is recorded;
            ``None`` seeds nothing.
        per_seed: the run of one seed of a seeded stage, into ``<stage>/seed-<seed>/``.

    Raises:
        RunLocked: another process is running this stage into the same folder.
    """
    get_stage(stage)
    if per_seed and (seed is None or not STAGES[stage].seeded):
        raise ValueError(f"a per-seed run needs a seeded stage and a seed, got {stage} with seed {seed}")
    device = resolve_device(cfg.device)
    folder_seed = seed if per_seed else None
    folder = stage_dir(cfg, stage, folder_seed)
    if (earlier := _OPEN_RUNS.pop(folder.resolve(), None)) is not None:
        earlier.fail("stopped: a new run of the stage started in the same process (the earlier one raised)")
    fd = _lock(folder, stage)
    try:
        key = resume_key(cfg, stage, folder_seed)
        found = _settle_previous(folder, key)
        if message := _describe(stage if folder_seed is None else f"{stage} seed {seed}", found):
            print(message, flush=True)
        dump_config(cfg, folder / "config.yaml")
        manifest = {
            "stage": stage, "profile": cfg.profile, "status": "running",
            "identity": stage_identity(cfg, stage, seed=folder_seed),
            "resume_key": key, "hardware": resolve_hardware_tag(cfg, hardware_tag), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "seed": seed, "git": git_state(), "versions": package_versions(), "pid": os.getpid(),
            "started_at": now(), "finished_at": None, "previous_run": found or None,
        }  # fmt: skip
        save_json(manifest, folder / "manifest.json")
    except BaseException:
        _unlock(fd)
        raise
    if seed is not None:
        seed_everything(seed)
    run = Run(cfg=cfg, stage=stage, dir=folder, device=device, hardware=manifest["hardware"], manifest=manifest,
              _lock_fd=fd)  # fmt: skip
    run._restore_signals = _on_signals(run)
    atexit.register(run.interrupt, "the process ended before the run finished")
    _OPEN_RUNS[folder.resolve()] = run
    return run


def mark_failed(cfg: RunConfig, stage: str, error: str) -> bool:
    """Record a stage's failure (e.g. a notebook cell raised) in its manifest, unless another process holds
    the stage now or its last run completed. Returns whether the manifest was changed."""
    folder = stage_dir(cfg, stage)
    if not (folder / "manifest.json").exists():
        return False
    try:
        fd = _lock(folder, stage)
    except RunLocked:
        return False  # the folder belongs to a live run (perhaps the very one that made this one fail)
    try:
        manifest = load_json(folder / "manifest.json")
        if manifest.get("status") not in ("running", "interrupted"):
            return False
        manifest.update(status="failed", error=error, finished_at=manifest.get("finished_at") or now())
        save_json(manifest, folder / "manifest.json")
        return True
    finally:
        _unlock(fd)


def _cpu_name() -> str:
    return platform.processor() or platform.machine()
