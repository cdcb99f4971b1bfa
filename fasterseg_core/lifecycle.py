"""A stage run's life in its folder: the lock, what the previous run left, start, finish, fail, interrupt.

:func:`start_run` is the one way into a stage folder (``runs.stage_dir``), and nothing in the folder
changes before it has taken the folder's lock:

* **The lock.** ``<folder>/.lock`` is held with ``flock`` by the process running the stage (the kernel frees
  it when that process dies), so a second process on the same stage and seed stops with
  :class:`RunLocked`, which names the holder (pid, host, start time); a same-process rerun (a notebook cell
  run again) takes its own open run over.
* **What the previous run left.** A run that died while ``running`` is marked ``interrupted`` (or ``failed``
  with the cause its process left in the lock file when it could not write its manifest, e.g. on a full
  disk); results of other settings (another resume key) are set aside to ``previous/<resume key>/`` and
  brought back when those settings return; so is a training run longer than the configured ``epochs``
  (``previous/<key>-epoch<N>/``: a shorter run never reports a longer one's weights); a manifest that does not
  parse, or artifacts that no longer match the SHA-256 the manifest recorded, are set aside
  (``previous/<key>-unverified-<time>/``) and recomputed; ``fresh=True`` (``--force``) sets everything aside;
  leftover temporary files of interrupted writes are removed. Every such step is one line on the terminal.
* **The end.** :meth:`Run.finish` writes ``metrics.json``, records every artifact's SHA-256 and marks the
  manifest ``complete``; an exception, SIGTERM or SIGINT mark it ``failed`` or ``interrupted``
  (:func:`mark_failed` for a notebook that failed in a child process). Checkpoints written on the way stay, so
  the next run resumes. A run that stops before it changed any artifact of a complete run it replaced puts that
  run's manifest and ``config.yaml`` back: the folder is exactly as it was.

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
import re
import shutil
import signal
import socket
import sys
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
from .progress import say
from .runs import (
    LOCK_FILE,
    MANIFEST,
    PREVIOUS,
    STAGES,
    UNREADABLE,
    check_artifacts,
    get_stage,
    read_manifest,
    record_artifacts,
    resume_key,
    run_files,
    stage_dir,
    stage_identity,
)
from .storage import remove_temp_files, save_json, save_text

STATUSES = ("running", "complete", "failed", "interrupted")
_LOCK_BYTES = 1024  # the lock file's fixed size: a note rewritten in place needs no new disk block (full disk)


class RunLocked(RuntimeError):
    """Another process is running the same stage (or pipeline) into the same folder (the message names it)."""


# The runs this process has open, by folder: a notebook cell that raised leaves its run open in the kernel,
# and rerunning the cell must take the folder over rather than find it locked by itself.
_OPEN_RUNS: dict[Path, Run] = {}


# ---- the lock ----------------------------------------------------------------------------------------
def lock_folder(folder: Path, what: str, name: str = LOCK_FILE) -> int:
    """Hold ``folder/<name>`` exclusively (``flock``; the kernel frees it when this process dies) and write
    who holds it there. Returns the open descriptor (:func:`unlock_folder` releases it).

    Args:
        what: what holds it, for the refusal: ``"stage 02_teacher"``, ``"the pipeline of profile smoke"``.

    Raises:
        RunLocked: another process holds it (the message names its PID, start time and host).
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_lock(fd)
        os.close(fd)
        raise RunLocked(
            f"{what} is already running in {folder}: pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started_at', '?')}; wait for it to finish or stop "
            f"it (kill {holder.get('pid', '<pid>')}), then run this again"
        ) from None
    # the cause a dead holder could not write into its manifest (a full disk) stays for _settle_previous
    ended = _read_lock(fd).get("ended")
    left = {"left_by_previous": ended} if ended else {}
    try:
        _write_lock(fd, {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now(), **left})
    except OSError:
        pass  # a full disk: the lock itself holds; only the holder's name is missing from the file
    return fd


def _read_lock(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, _LOCK_BYTES, 0).decode().strip() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_lock(fd: int, holder: dict[str, Any]) -> None:
    """The holder's record, padded to a fixed size so that rewriting it in place needs no new disk block."""
    data = json.dumps(holder).encode()[: _LOCK_BYTES - 1]
    os.pwrite(fd, data + b" " * (_LOCK_BYTES - len(data)), 0)


def unlock_folder(fd: int | None) -> None:
    """Release what :func:`lock_folder` took."""
    _unlock(fd)


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# ---- what the previous run left -------------------------------------------------------------------------
_CHECKPOINTS = ("last.pt", "search.pt", "pretrain.pt")  # the resumable state of a training run / the search


def _checkpoint_state(folder: Path) -> tuple[str | None, int]:
    """(resume key, epochs completed) of the run in ``folder``, read from its resumable checkpoint (memory-mapped:
    a 1 GB search checkpoint is not loaded); ``(None, 0)`` when it has none that reads."""
    for name in _CHECKPOINTS:
        path = folder / "checkpoints" / name
        if path.is_file():
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                return ckpt.get("key"), int(ckpt.get("epoch", 0))
            except Exception:  # noqa: BLE001 - any unreadable file: no state to resume from
                return None, 0
    return None, 0


def _set_aside(folder: Path, name: str, files: list[Path] | None = None) -> Path:
    """Move the run's files (or only ``files``) to ``previous/<name>/`` (a new name if taken), keeping paths."""
    dest = folder / PREVIOUS / name
    if dest.exists():  # an older set-aside of the same name: keep both
        dest = dest.with_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    dest.mkdir(parents=True)
    tops = {folder / p.relative_to(folder).parts[0] for p in (files if files is not None else run_files(folder))}
    if files is None and (folder / MANIFEST).exists():
        tops.add(folder / MANIFEST)  # the set-aside run keeps its provenance
    for p in sorted(tops if files is None else files):
        target = dest / p.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), target)
    return dest


def _restorable(folder: Path, key: str, epochs: int | None) -> tuple[Path, int] | None:
    """The set-aside run of ``key`` to bring back: ``previous/<key>/``, or for a training run (``epochs`` given)
    the longest ``previous/<key>[-epoch<N>]/`` not past ``epochs``."""
    best: tuple[Path, int] | None = None
    pattern = re.compile(rf"{re.escape(key)}(-epoch\d+)?")
    for d in sorted((folder / PREVIOUS).glob(f"{key}*")):
        if not d.is_dir() or not pattern.fullmatch(d.name):
            continue
        trained = _checkpoint_state(d)[1]
        if epochs is not None and trained > epochs:
            continue
        if best is None or trained > best[1]:
            best = (d, trained)
    return best


def _settle_previous(folder: Path, key: str, *, epochs: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """Before a run starts (lock held): close a dead run's manifest, set aside what the new run must not build
    on, bring back what it can.

    Set aside: results of other settings (``previous/<their resume key>/``); a training run past ``epochs``
    (``previous/<key>-epoch<N>/``); a run whose manifest does not parse or whose recorded artifacts changed
    (``previous/<key>-unverified-<time>/``: only the changed files while the checkpoints are intact, since the
    rerun recomputes the rest from them); everything when ``fresh``. Brought back: the longest set-aside run of
    these settings that fits (:func:`_restorable`).

    Returns:
        What was found, for the new manifest and the user: ``{"status", "identity", "started_at",
        "finished_at", "error", "unverified", "set_aside", "restored", "kept", "temp_files_removed"}`` (what
        applies).
    """
    found: dict[str, Any] = {}
    removed = remove_temp_files(folder)  # an interrupted atomic write's leftovers (we hold the lock)
    if removed:
        found["temp_files_removed"] = len(removed)
    path = folder / MANIFEST
    old = read_manifest(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if old is not None and old.get("status") == "running":  # its lock was free: the process that wrote it is gone
        if _unchanged(folder, old):
            _put_back(folder, old)  # it stopped before it changed anything: the complete run stands as it was
            old = read_manifest(path)
            found["kept"] = "the previous run stopped before it changed anything"
        else:
            left = _read_lock_file(folder).get("left_by_previous")  # a cause it could not write (a full disk)
            if left:
                old.update(status=left.get("status", "failed"), error=left.get("error", ""))
            else:
                old.update(status="interrupted", note="the process ended before the run finished (killed or crashed)")
            save_json(old, path)
    if old is not None:
        found.update({k: old.get(k) for k in ("status", "identity", "started_at", "finished_at", "error")
                      if old.get(k) is not None})
    ckpt_key, trained = _checkpoint_state(folder)
    old_key = (old or {}).get("resume_key") or ckpt_key or ("unknown" if run_files(folder) else None)
    if old_key is not None and run_files(folder):
        if fresh:
            found["set_aside"] = str(_set_aside(folder, f"{old_key}-forced-{stamp}"))
        elif old_key != key:
            found["set_aside"] = str(_set_aside(folder, old_key))
        elif old is not None and old.get("status") == UNREADABLE:
            found["unverified"] = [old["error"]]
            found["set_aside"] = str(_set_aside(folder, f"{old_key}-unverified-{stamp}"))
        elif old is not None and old.get("status") == "complete" and (problems := check_artifacts(folder, old)):
            found["unverified"] = problems
            changed = [folder / rel for rel in old["artifacts"] if (folder / rel).is_file()
                       and any(p.startswith(f"{folder / rel} ") for p in problems)]
            if any(p.startswith(f"{folder / 'checkpoints'}/") for p in problems):
                changed = None  # the state to resume from is gone: everything is recomputed
            found["set_aside"] = str(_set_aside(folder, f"{old_key}-unverified-{stamp}", changed))
        elif epochs is not None and trained > epochs:
            found["set_aside"] = str(_set_aside(folder, f"{key}-epoch{trained}"))
            found["longer"] = trained
    if not fresh and (back := _restorable(folder, key, epochs)) is not None:
        here = _checkpoint_state(folder)[1] if run_files(folder) else -1
        if back[1] > here:
            if run_files(folder):
                _set_aside(folder, f"{key}-epoch{here}")
            for p in back[0].iterdir():
                shutil.move(str(p), folder / p.name)
            back[0].rmdir()
            found["restored"] = str(back[0])
    return found


def _read_lock_file(folder: Path) -> dict[str, Any]:
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_lock(fd)
    finally:
        os.close(fd)


def _unchanged(folder: Path, manifest: dict[str, Any]) -> bool:
    """Whether every artifact of the complete run ``manifest`` replaced is still as that run left it
    (``config.yaml`` aside: the new run rewrote it, and :func:`_put_back` restores it)."""
    replaced = manifest.get("replaces")
    if not replaced:
        return False
    kept = {k: v for k, v in (replaced.get("artifacts") or {}).items() if k != "config.yaml"}
    return not check_artifacts(folder, {"artifacts": kept})


def _put_back(folder: Path, manifest: dict[str, Any]) -> None:
    """Restore the complete run a stopped run replaced: its manifest and ``config.yaml`` as they were, and
    without the files the stopped run added (a pending ``best.next.pt``, its TensorBoard events)."""
    replaced = manifest["replaces"]
    since = manifest.get("started_unix", float("inf")) - 2.0  # file times run up to a clock tick behind
    for p in run_files(folder):
        rel = p.relative_to(folder).as_posix()
        if rel != "config.yaml" and rel not in (replaced.get("artifacts") or {}) and p.stat().st_mtime >= since:
            p.unlink()
    if manifest.get("replaces_config") is not None:
        save_text(manifest["replaces_config"], folder / "config.yaml")
    save_json(replaced, folder / MANIFEST)


def _describe(stage: str, found: dict[str, Any]) -> str:
    """One line for the person starting the run: what the previous run left and what happened to it."""
    parts = []
    status = found.get("status")
    said = {"interrupted": "was interrupted", "failed": "failed", "running": "did not finish"}
    if found.get("kept"):
        parts.append(f"{found['kept']}; its complete predecessor is kept as it was")
    elif status in said:
        parts.append(f"the previous run (started {found.get('started_at')}) {said[status]}"
                     + (f": {found['error']}" if found.get("error") else "") + "; it resumes from its checkpoints")
    if found.get("unverified"):
        parts.append(f"{'; '.join(found['unverified'])}: set aside to {found['set_aside']} and recomputed")
    elif "longer" in found:
        parts.append(f"a run of {found['longer']} epochs, past this run's end, set aside to {found['set_aside']} "
                     "(asking for its epochs again brings it back)")
    elif "forced-" in found.get("set_aside", ""):
        parts.append(f"--force: its results set aside to {found['set_aside']}, recomputed from scratch")
    elif "set_aside" in found:
        parts.append(f"results of other settings set aside to {found['set_aside']} (rerunning those settings "
                     "brings them back)")
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
    manifest ``interrupted``. ``fresh``: started with ``--force`` (its seed runs start afresh too).
    """

    cfg: RunConfig
    stage: str
    dir: Path
    device: torch.device
    hardware: str
    manifest: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False
    seed: int | None = None  # a seed run's seed (<stage>/seed-<s>/), None for a stage's own run
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
        """Save ``metrics`` (if given), record every artifact's SHA-256 and mark the run complete."""
        if metrics is not None:
            self.save_metrics(metrics)
        if self.open and self.manifest.get("pid") == os.getpid():
            self.manifest.pop("replaces", None)
            self.manifest.pop("replaces_config", None)
            self.manifest["artifacts"] = record_artifacts(self.dir)
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
                             **extra)
        try:
            if status != "complete" and _unchanged(self.dir, self.manifest):
                _put_back(self.dir, self.manifest)  # stopped before it changed anything: the folder as it was
                say(f"{self.stage}: stopped ({extra.get('error', status)}) before it changed anything; the "
                    f"complete run in {self.dir} is kept as it was")
            else:
                save_json(self.manifest, self.dir / MANIFEST)
        except OSError as e:  # e.g. a full disk: say it here, and leave the cause where the next run looks
            ended = {"status": status, "error": extra.get("error", "")}
            with contextlib.suppress(OSError):
                if self._lock_fd is not None:
                    _write_lock(self._lock_fd, _read_lock(self._lock_fd) | {"ended": ended})
            print(f"error: could not record the run's end in {self.dir / MANIFEST} ({e}); it was {status}"
                  + (f": {ended['error']}" if ended["error"] else "") + ". The next run reports this and resumes "
                  "from the last checkpoint", file=sys.stderr, flush=True)
        finally:
            if self._restore_signals is not None:
                self._restore_signals()
            _unlock(self._lock_fd)
            self._lock_fd = None
            if _OPEN_RUNS.get(self.dir.resolve()) is self:
                del _OPEN_RUNS[self.dir.resolve()]


def _on_signals(run: Run, previous: dict[int, Any] | None = None) -> Callable[[], None] | None:
    """SIGTERM/SIGINT write ``interrupted`` into the manifest, then do what they did before (SIGINT raises
    KeyboardInterrupt, SIGTERM ends the process); ``previous``: those handlers, when others hold the signals
    now. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = previous or {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

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
              per_seed: bool = False, fresh: bool = False) -> Run:
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
        fresh: set every result in the folder aside and start from scratch (``--force``, ``FORCE=1``).

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
    fd = lock_folder(folder, f"stage {stage}")
    held: _Held | None = None
    try:
        key = resume_key(cfg, stage, folder_seed)
        section = STAGES[stage].section
        epochs = getattr(cfg, section).epochs if per_seed and section else None
        found = _settle_previous(folder, key, epochs=epochs, fresh=fresh)
        if message := _describe(stage if folder_seed is None else f"{stage} seed {seed}", found):
            say(message)
        # a complete run this one replaces (more epochs, another hardware tag, --force set it aside already):
        # kept in the manifest, so a run that stops before changing any artifact puts it back as it was
        before = read_manifest(folder / MANIFEST)
        replaces = before if before is not None and before.get("status") == "complete" else None
        config_before = (folder / "config.yaml").read_text() if replaces and (folder / "config.yaml").exists() else None
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
            "started_at": now(), "started_unix": time.time(), "finished_at": None, "previous_run": found or None,
            **({"replaces": replaces, "replaces_config": config_before} if replaces else {}),
        }
        # From the "running" manifest on until the run's own handlers are in place, SIGTERM/SIGINT wait: one
        # arriving in between would stop the process with this manifest left "running" and nobody to close it.
        held = _hold_signals()
        save_json(manifest, folder / "manifest.json")
    except BaseException:
        _unlock(fd)
        _release_signals(held)
        raise
    run = None
    try:
        if seed is not None:
            seed_everything(seed)
        run = Run(cfg=cfg, stage=stage, dir=folder, device=device, hardware=manifest["hardware"], manifest=manifest,
                  fresh=fresh, seed=seed if per_seed else None, _lock_fd=fd)
        atexit.register(run.interrupt, "the process ended before the run finished")
        _OPEN_RUNS[folder.resolve()] = run
    finally:
        _release_signals(held, run)  # a signal that came meanwhile goes to the run's handler now
    return run


@dataclass
class _Held:
    """SIGTERM/SIGINT caught and kept while a run opens (:func:`_hold_signals`), with the handlers they replaced."""

    previous: dict[int, Any]
    pending: list[int] = field(default_factory=list)


def _hold_signals() -> _Held | None:
    """From here on SIGTERM/SIGINT are only noted (main thread; None elsewhere, where none can be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    held = _Held({})
    for sig in (signal.SIGTERM, signal.SIGINT):
        held.previous[sig] = signal.signal(sig, lambda signum, frame: held.pending.append(signum))
    return held


def _release_signals(held: _Held | None, run: Run | None = None) -> None:
    """The run's handlers in place of the holding ones (chained to those before), or those before back when the
    run did not open; then every noted signal is raised again, now for them to handle."""
    if held is None:
        return
    if run is not None:
        run._restore_signals = _on_signals(run, held.previous)
    else:
        for sig, old in held.previous.items():
            signal.signal(sig, old)
    for signum in held.pending:
        signal.raise_signal(signum)


def mark_failed(cfg: RunConfig, stage: str, error: str) -> bool:
    """Record a stage's failure (e.g. a notebook cell raised) in its manifest, unless another process holds
    the stage now, its last run completed or was interrupted (a signal says so itself), or the manifest does
    not parse (the next run sets it aside). Returns whether the manifest was changed.

    ``interrupted`` becomes ``failed`` too: a kernel that ends after a failed cell closes its open runs as
    interrupted (``atexit``) before the driver, which knows the error, gets here."""
    folder = stage_dir(cfg, stage)
    if not (folder / MANIFEST).exists():
        return False
    try:
        fd = lock_folder(folder, f"stage {stage}")
    except RunLocked:
        return False  # the folder belongs to a live run (perhaps the very one that made this one fail)
    try:
        manifest = read_manifest(folder / MANIFEST)
        if manifest is None or manifest.get("status") not in ("running", "interrupted"):
            return False
        manifest.update(status="failed", error=error, finished_at=manifest.get("finished_at") or now())
        try:
            save_json(manifest, folder / MANIFEST)
        except OSError as e:
            say(f"error: could not record the failure of {stage} in {folder / MANIFEST} ({e})")
            return False
        return True
    finally:
        _unlock(fd)


def _precision(cfg: RunConfig, stage: str, device: torch.device) -> str | None:
    """The autocast a training stage runs with here (``"none"`` = fp32; ``amp: auto`` resolved), else None."""
    section = get_stage(stage).section
    return resolve_amp(getattr(cfg, section).amp, device) if section else None


def _cpu_name() -> str:
    return platform.processor() or platform.machine()
