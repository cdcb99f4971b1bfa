"""The pipeline driver: every stage notebook in order, skipping what is complete, then the report.

    python -m fasterseg_core report --profile smoke [--overrides '{"teacher.epochs": 2}']
                                    [--hardware-tag cpu-laptop] [--force] [--no-pdf]

Stages are the notebooks ``notebooks/<stage>.ipynb`` of :data:`fasterseg_core.runs.STAGES`, run in that
order through papermill from this one Python process (kernel ``python3``, cwd ``notebooks/``) with the
parameters ``profile``, ``overrides`` and ``hardware_tag``. Executed notebooks go to
``<output_root>/<profile>/notebooks/``.

* A stage is skipped when its run (:mod:`fasterseg_core.runs`) is complete for its identity and hardware
  tag, its executed notebook exists, and no stage it reads from ran in this invocation. ``force`` reruns
  every stage.
* A failed stage stops the pipeline. The report still renders what exists, the failure marked on the
  front page and at the stage, and the exit code is 1.
* One pipeline per output folder: ``<output_root>/<profile>/.pipeline.lock`` is held (``flock``) from before
  anything is written until the report is rendered; a second ``report`` or ``sweep`` on the same outputs stops
  at once, naming the holder.
* SIGTERM or SIGINT (Ctrl-C) to the driver interrupt the running kernel: its stage and seed runs record
  ``interrupted`` and the kernel shuts down cleanly; the driver records ``interrupted`` in ``pipeline.json``,
  says so in one line and exits (:class:`PipelineInterrupted`); rerunning resumes. A second signal stops at once.
* ``<output_root>/<profile>/pipeline.json`` records each stage's status, time and error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import progress
from .config import RunConfig, load_config, project_root
from .eta import Eta, minutes, stage_estimates
from .lifecycle import lock_folder, mark_failed, unlock_folder
from .machine import STABLE_MALLOC, git_state, resolve_hardware_tag
from .report import ReportError, find_chromium, install_hint, render_report
from .runs import STAGES, is_complete
from .storage import save_json

PIPELINE_LOCK = ".pipeline.lock"  # in <output_root>/<profile>/: one report or sweep at a time


@dataclass
class StageResult:
    """What happened to one stage in a pipeline invocation."""

    stage: str
    status: str  # "ok" | "skipped" | "failed" | "interrupted" | "not-run"
    seconds: float = 0.0
    error: str = ""
    notebook: str = ""  # the executed notebook (absent for "not-run")


class PipelineInterrupted(RuntimeError):
    """SIGTERM or SIGINT stopped the pipeline; the running stage recorded ``interrupted`` (the message says
    which signal and how to resume). ``signum`` gives the exit status 128 + signum."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def pipeline_lock(cfg: RunConfig, what: str = "report") -> Iterator[None]:
    """Hold ``<output_root>/<profile>/.pipeline.lock`` for a ``report`` or ``sweep`` (taken before anything is
    written; the kernel frees it if this process dies).

    Raises:
        RunLocked: another report or sweep holds it (the message names its pid, host and start time).
    """
    fd = lock_folder(cfg.output_dir, f"a {what} of profile {cfg.profile} (make report / sweep)", PIPELINE_LOCK)
    try:
        yield
    finally:
        unlock_folder(fd)


class _Stop:
    """SIGTERM/SIGINT to the driver: interrupt the running kernel (its runs record ``interrupted``), stop after it.

    The kernel runs in a session of its own, so a terminal's Ctrl-C reaches only the driver, which passes it on
    (``KernelManager.interrupt_kernel``, re-sent every 2 s until the stage returns: a kernel between two cells
    ignores SIGINT). A second signal raises ``KeyboardInterrupt`` at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.km: Any = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:  # noqa: PYI034 - a private context manager, never subclassed
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum  # said once, when the stage has stopped (PipelineInterrupted)
        threading.Thread(target=self._interrupt, daemon=True).start()

    def _interrupt(self) -> None:
        km = self.km
        while km is not None and km is self.km:
            with contextlib.suppress(Exception):
                if km.has_kernel:
                    km.interrupt_kernel()
            time.sleep(2.0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def notebooks_dir() -> Path:
    """``notebooks/`` of the project folder."""
    return project_root() / "notebooks"


def stage_notebooks(folder: Path | None = None) -> list[Path]:
    """The stage notebooks in pipeline order: those of :data:`~fasterseg_core.runs.STAGES` that exist in
    ``folder`` (a test may run a subset)."""
    folder = folder or notebooks_dir()
    return [folder / f"{name}.ipynb" for name in STAGES if (folder / f"{name}.ipynb").exists()]


@contextlib.contextmanager
def _kernel_env(**values: str) -> Iterator[None]:
    """Kernels inherit the driver's environment: name the project folder for them (so notebooks run from
    another folder still find the profiles and outputs), the file their progress bars report to, and glibc's
    pinned allocator settings (read at a kernel's start-up; :data:`~fasterseg_core.machine.STABLE_MALLOC`)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Watch:
    """One terminal bar for the running stage, drawn from what its progress bars report (progress.py):
    ``[3/7] 02_teacher · train seed-12345  45%|████▌     | 450/1000 [02:10<02:40]``, and the lines the stage
    said (:func:`fasterseg_core.progress.say`: a run resumed, results set aside) as they come."""

    def __init__(self, path: Path, label: str, eta: Eta | None = None, stage: str = "") -> None:
        self.path, self.label, self.eta, self.stage = path, label, eta, stage
        self._started = time.monotonic()
        self.log = Path(f"{path}.log")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._offset = 0

    def __enter__(self) -> _Watch:  # noqa: PYI034 - a private context manager, never subclassed
        self.path.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._relay(None)  # what the stage said after the last look
        self.path.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)

    def _relay(self, bar: Any) -> None:
        lines, self._offset = progress.said(self.path, self._offset)
        for line in lines:
            text = f"{self.label} · {line}"
            if bar is not None:
                bar.write(text)
            else:
                print(text, flush=True)

    def _overall(self, state: dict[str, Any]) -> str:
        """"the report: about 41 min left", from the pipeline's estimate (:mod:`fasterseg_core.eta`), or ""."""
        if self.eta is None:
            return ""
        rate = state["n"] / state["elapsed"] if state.get("elapsed") else 0.0
        bar_left = (state["total"] - state["n"]) / rate if rate > 0 else 0.0
        left = self.eta.remaining(self.stage, time.monotonic() - self._started, bar_left)
        return "" if left is None else f"the report: {minutes(left)} left"

    def _run(self) -> None:
        """A tqdm bar on a terminal; elsewhere (CI logs, a file) one plain line at most every 30 s."""
        from tqdm import tqdm  # the terminal's bar, not the notebook one

        tty = sys.stderr.isatty()
        bar, desc, said, finished = None, None, 0.0, set()
        while not self._stop.wait(0.5):
            self._relay(bar)
            state = progress.read(self.path)
            if state is None or not state.get("total"):
                continue
            if not tty:  # a line every 30 s, and one when a bar reaches its total (fast ones never showed it)
                done = state["n"] >= state["total"] and state["desc"] not in finished
                if done or time.monotonic() - said >= 30:
                    said = time.monotonic()
                    if done:
                        finished.add(state["desc"])
                    rate = state["n"] / state["elapsed"] if state.get("elapsed") else 0.0
                    eta = f", about {(state['total'] - state['n']) / rate / 60:.1f} min left" if rate > 0 else ""
                    eta = f", done in {state['elapsed']:.0f} s" if done else eta
                    overall = self._overall(state)
                    eta += f"; {overall}" if overall else ""
                    print(f"{self.label} · {state['desc']}: {state['n']:g}/{state['total']:g}{eta}", flush=True)
                continue
            if state["desc"] != desc:
                if bar is not None:
                    bar.close()
                desc = state["desc"]
                bar = tqdm(total=state["total"], desc=f"{self.label} · {desc}", dynamic_ncols=True, leave=False)
            overall = self._overall(state)
            if overall:
                bar.set_postfix_str(overall, refresh=False)
            bar.update(state["n"] - bar.n)
        if bar is not None:
            bar.close()


def _execute(source: Path, executed: Path, parameters: dict[str, Any], folder: Path, label: str,
             stop: _Stop | None = None, eta: Eta | None = None) -> StageResult:
    """Run one stage notebook in a kernel of our own (``stop`` can interrupt it), into ``executed``."""
    import papermill  # slow import (~1.3 s); only the driver needs it
    from jupyter_client.manager import KernelManager

    stage = source.stem
    start = time.perf_counter()
    if executed.exists():  # never show a previous run's notebook for this attempt; keep it beside
        (executed.parent / "previous").mkdir(exist_ok=True)
        os.replace(executed, executed.parent / "previous" / executed.name)
    # Unix sockets, not TCP on localhost: nothing to reach from outside, and no "Kernel is running over TCP
    # without encryption" warning per stage. The sockets live in a private temporary folder.
    sockets = tempfile.TemporaryDirectory(prefix="fasterseg-kernel-")
    km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets.name, "kernel"))
    if stop is not None:
        stop.km = km
    try:
        watch = executed.parent / f".progress-{stage}.json"
        env = {"FASTERSEG_ROOT": str(project_root()), progress.ENV: str(watch), **STABLE_MALLOC}
        with _kernel_env(**env), _Watch(watch, label, eta, stage):
            papermill.execute_notebook(str(source), str(executed), parameters=parameters, kernel_name="python3",
                                       cwd=str(folder), progress_bar=False, km=km)
        result = StageResult(stage, "ok", notebook=str(executed))
    except Exception as err:  # noqa: BLE001 - a failed cell or a dead kernel: both stop the pipeline
        if isinstance(err, papermill.PapermillExecutionError):
            message = f"{err.ename}: {err.evalue}"
        else:
            message = f"{type(err).__name__}: {err}"
        result = StageResult(stage, "failed", error=message, notebook=str(executed) if executed.exists() else "")
    finally:
        if stop is not None:
            stop.km = None
        with contextlib.suppress(Exception):  # a clean shutdown: the kernel's open runs close (atexit)
            if km.has_kernel:
                km.shutdown_kernel(now=False)
        sockets.cleanup()
    if stop is not None and stop.signum is not None:
        result.status, result.error = "interrupted", f"stopped by {stop.name}"
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def run_stages(cfg: RunConfig, parameters: dict[str, Any], force: bool = False, folder: Path | None = None,
               record: dict[str, Any] | None = None, stop: _Stop | None = None) -> list[StageResult]:
    """Execute the stage notebooks in order, skipping complete ones, stopping at the first failure or signal.

    Args:
        cfg: the resolved config (for the skip test and the output folder).
        parameters: papermill parameters, ``{"profile", "overrides", "hardware_tag"}``.
        force: rerun every stage from scratch (the notebooks' ``force`` parameter: each sets its old results
            aside, seeds included).
        stop: the driver's signal handling (:func:`build_report`); a signal interrupts the running stage.
        folder: where the ``<stage>.ipynb`` notebooks are (and the kernel's cwd); default ``notebooks/``.
        record: the pipeline record; its ``stages`` list is updated and saved after every stage.
    """
    folder = folder or notebooks_dir()
    out_dir = cfg.output_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    ran: set[str] = set()  # stages that ran in this invocation: whatever reads them is stale
    stopped = ""
    notebooks = stage_notebooks(folder)
    parameters = parameters | {"force": force}
    estimates, source_of = stage_estimates(cfg)
    eta = Eta(estimates, _planned(cfg, notebooks, out_dir, force, parameters["hardware_tag"]))
    if eta.todo:
        overall = f": {minutes(eta.remaining() or 0)} in all (estimated from {source_of})" if eta.known else ""
        print(f"{len(eta.todo)} of {len(notebooks)} stages to run{overall}", flush=True)
    for number, source in enumerate(notebooks, start=1):
        stage, executed = source.stem, out_dir / source.name
        stale = force or bool(ran & set(STAGES[stage].upstream))
        if stop is not None and stop.signum is not None and not stopped:
            stopped = f"stopped by {stop.name} before it started"
        if stopped:
            results.append(StageResult(stage, "not-run", error=stopped))
        elif not stale and executed.exists() and is_complete(cfg, stage, parameters["hardware_tag"]):
            results.append(StageResult(stage, "skipped", notebook=str(executed)))
            eta.finished(stage, 0.0)
            print(f"[{stage}] complete for this config, skipped (FORCE=1 reruns)", flush=True)
        else:
            print(f"[{stage}] running {source.name} ({number}/{len(notebooks)}) ...", flush=True)
            result = _execute(source, executed, parameters, folder, f"[{number}/{len(notebooks)}] {stage}", stop, eta)
            ran = ran | {stage}
            eta.finished(stage, result.seconds if result.status == "ok" else 0.0)
            if result.status == "failed":  # the kernel is gone: its manifest says running or interrupted
                mark_failed(cfg, stage, result.error)
                stopped = "an earlier stage failed"
            elif result.status == "interrupted":  # the stage recorded it itself; later stages do not run
                stopped = f"{result.error} while {stage} ran"
            results.append(result)
            print(f"[{stage}] {result.status} in {result.seconds:.1f} s {result.error}".rstrip(), flush=True)
        if record is not None:
            record["stages"] = [asdict(r) for r in results]
            save_json(record, cfg.output_dir / "pipeline.json")
    return results


def _planned(cfg: RunConfig, notebooks: list[Path], out_dir: Path, force: bool, hardware_tag: str) -> list[str]:
    """The stages :func:`run_stages` will run, by its own rule: forced, stale (a stage it reads from runs), not
    executed yet, or incomplete."""
    todo: list[str] = []
    for source in notebooks:
        stage = source.stem
        stale = force or bool(set(todo) & set(STAGES[stage].upstream))
        if stale or not (out_dir / source.name).exists() or not is_complete(cfg, stage, hardware_tag):
            todo.append(stage)
    return todo


def run_stage(cfg: RunConfig, parameters: dict[str, Any], stage: str, folder: Path | None = None) -> StageResult:
    """Execute one stage notebook as :func:`run_stages` does, complete or not (the caller decides whether it
    needs to run): the executed notebook goes to ``<output_root>/<profile>/notebooks/``, a failure is recorded
    in the stage's manifest. What a cluster job of :mod:`fasterseg_core.sweep` runs.

    Args:
        cfg: the resolved config (for the output folder and the failure record).
        parameters: papermill parameters, ``{"profile", "overrides", "hardware_tag"}``.
        stage: a stage of :data:`~fasterseg_core.runs.STAGES`.
        folder: where the ``<stage>.ipynb`` notebooks are (and the kernel's cwd); default ``notebooks/``.

    Raises:
        FileNotFoundError: no notebook for the stage in ``folder``.
    """
    folder = folder or notebooks_dir()
    source = folder / f"{stage}.ipynb"
    if not source.exists():
        have = [p.stem for p in stage_notebooks(folder)]
        raise FileNotFoundError(f"no notebook {source} for stage {stage}; stages: {have}")
    out_dir = cfg.output_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = _execute(source, out_dir / source.name, {"force": False} | parameters, folder, stage)
    if result.status == "failed":
        mark_failed(cfg, stage, result.error)
    return result


def build_report(profile: str, overrides: dict[str, Any] | None = None, hardware_tag: str = "",
                 force: bool = False, pdf: bool = True, folder: Path | None = None) -> dict[str, Any]:
    """Run the pipeline for a profile, then render its report; the library form of ``make report``.

    Returns:
        The pipeline record also saved as ``<output_root>/<profile>/pipeline.json``: parameters, git
        state, per-stage ``{stage, status, seconds, error, notebook}``, report paths and times.

    Raises:
        ConfigError: the profile or overrides do not fit the config (before any notebook runs).
        ReportError: rendering failed (e.g. Chromium missing); the record says how far it got.
        RunLocked: another report or sweep runs on the same outputs (before anything is written).
        PipelineInterrupted: SIGTERM/SIGINT stopped it; pipeline.json and the manifests say ``interrupted``.
    """
    overrides = dict(overrides or {})
    cfg = load_config(profile, overrides)  # a misspelled override fails here, before any kernel starts
    if pdf and find_chromium() is None:  # fail before an hour of stages, not after
        raise ReportError(f"headless Chromium not found, the PDF needs it: {install_hint()} (or --no-pdf)")
    with pipeline_lock(cfg, "report"), _Stop() as stop:
        return _build_report(cfg, profile, overrides, hardware_tag, force, pdf, folder, stop)


def _build_report(cfg: RunConfig, profile: str, overrides: dict[str, Any], hardware_tag: str, force: bool,
                  pdf: bool, folder: Path | None, stop: _Stop) -> dict[str, Any]:
    start = time.perf_counter()
    record: dict[str, Any] = {
        "profile": cfg.profile, "overrides": overrides, "hardware_tag": resolve_hardware_tag(cfg, hardware_tag),
        "force": force, "git": git_state(), "stages": [],
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    parameters = {"profile": profile, "overrides": overrides, "hardware_tag": hardware_tag}
    results = run_stages(cfg, parameters, force=force, folder=folder, record=record, stop=stop)
    if stop.signum is not None:  # no report: a scheduler's grace period is short, and a rerun renders it
        record.update(status="interrupted", seconds=round(time.perf_counter() - start, 1))
        save_json(record, cfg.output_dir / "pipeline.json")
        where = next((f"{r.stage} recorded 'interrupted'" for r in results if r.status == "interrupted"),
                     "no stage was running")
        raise PipelineInterrupted(f"interrupted by {stop.name}: {where}; `make report` (the same command) resumes "
                                  "from the last checkpoints", stop.signum)
    try:
        render_report(cfg, [asdict(r) for r in results], record, pdf=pdf)
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
        save_json(record, cfg.output_dir / "pipeline.json")
    return record


def headline(record: dict[str, Any], output_dir: Path) -> str:
    """The pipeline's last word on the terminal: total time, stage outcomes, the claims' verdicts, where to read.

        report: outputs/smoke/report/report.pdf (page 1: the Reproducibility Summary) · 7 stages in 12.4 min
        (5 ran, 2 skipped) · claims: 2 supported, 1 on par, 4 inconclusive
    """
    stages = record.get("stages", [])
    counts = {s: sum(r["status"] == s for r in stages) for s in ("ok", "skipped", "failed", "not-run")}
    ran = ", ".join(f"{n} {'ran' if s == 'ok' else s}" for s, n in counts.items() if n)
    report = record.get("report") or {}
    where = report.get("pdf") or report.get("html") or "no report rendered"
    line = (f"report: {where} (page 1: the Reproducibility Summary) · {len(stages)} stages in "
            f"{record.get('seconds', 0) / 60:.1f} min ({ran})")
    claims = output_dir / "06_analysis" / "claims.json"
    try:
        verdicts = [c["verdict"] for c in json.loads(claims.read_text())["claims"]]
    except (OSError, ValueError, KeyError, TypeError):
        return line
    tally = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    return line + " · claims: " + ", ".join(f"{n} {v}" for v, n in tally.items())
