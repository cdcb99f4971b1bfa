"""A stage run's life in its folder: the lock, what the previous run left, start, finish, fail, interrupt.

:func:`start_run` is the one way into a stage folder (``runs.stage_dir``), and nothing in the folder
changes before it has taken the folder's lock:

* **The lock.** ``<folder>/.lock`` is held with ``flock`` by the process running the stage (the kernel frees
  it when that process dies), so a second process on the same stage and seed stops with
  :class:`RunLocked`, which names the holder (pid, host, start time); a same-process rerun (a notebook cell
  run again) takes its own open run over.
* **What the previous run left.** A run that died while ``running`` is marked ``interrupted``; results of
  other settings (another resume key) are set aside to ``previous/<resume key>/`` and brought back when those
  settings return; leftover temporary files of interrupted writes are removed.
* **The end.** :meth:`Run.finish` writes ``metrics.json`` and marks the manifest ``complete``; an exception,
  SIGTERM or SIGINT mark it ``failed`` or ``interrupted`` (:func:`mark_failed` for a notebook that failed in
  a child process). Checkpoints written on the way stay, so the next run resumes.

    run = start_run(cfg, "02_teacher")                            # the stage (all its seeds)
    seed_run = start_run(cfg, "02_teacher", seed=12345, per_seed=True)  # one seed: 02_teacher/seed-12345/
    save_torch(state, seed_run.path("checkpoints", "best.pt"))
    seed_run.finish({"miou": 0.61})
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
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

from .config import RunConfig, dump_config
from .machine import (
    git_state,
    now,
    package_versions,
    resolve_amp,
    resolve_device,
    resolve_hardware_tag,
    seed_everything,
    stable_malloc_set,
)
from .runs import SEED_PREFIX, STAGES, get_stage, resume_key, stage_dir, stage_identity
from .storage import load_json, remove_temp_files, save_json

LOCK_FILE = ".lock"  # held (flock) by the process running the stage; freed when that process dies
PREVIOUS = "previous"  # results of other settings, set aside: previous/<resume key>/
STATUSES = ("running", "complete", "failed", "interrupted")


class RunLocked(RuntimeError):
    """Another process is running the same stage into the same folder (the message names it)."""


# The runs this process has open, by folder: a notebook cell that raised leaves its run open in the kernel,
# and rerunning the cell must take the folder over rather than find it locked by itself.
_OPEN_RUNS: dict[Path, Run] = {}


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
            "precision": _precision(cfg, stage, device),
            # glibc's allocator settings of this process (machine.STABLE_MALLOC): they change its speed only
            "allocator": "pinned" if stable_malloc_set() else "glibc default",
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


def _precision(cfg: RunConfig, stage: str, device: torch.device) -> str | None:
    """The autocast a training stage runs with here (``"none"`` = fp32; ``amp: auto`` resolved), else None."""
    section = get_stage(stage).section
    return resolve_amp(getattr(cfg, section).amp, device) if section else None


def _cpu_name() -> str:
    return platform.processor() or platform.machine()
