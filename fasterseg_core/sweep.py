"""Seed sweeps on a cluster: a profile's compute stages as submitit jobs, one per (stage, seed), each started
after the jobs of the stages it reads, then waited for.

    python -m fasterseg_core sweep --profile camvid-gpu --seeds 0 1 2 --executor slurm --partition gpu \\
        --gpus-per-job 1 --time-min 720 [--stages 02_teacher 03_distill 04_student]

The jobs come from the stage table :data:`fasterseg_core.runs.STAGES` (:func:`plan_sweep`), not from a list
written here:

* a **seed job** per seed of a training stage (:func:`~fasterseg_core.runs.stage_seeds`: a shared teacher
  trains once) runs ``python -m fasterseg_core train --stage S --seed s``, the command a user runs;
* a **stage job** per stage runs its notebook as ``make report`` does (:func:`~fasterseg_core.pipeline.run_stage`):
  the whole of ``00_data``, ``01_search`` and ``05_latency``, and for a training stage the aggregate of its
  seeds (intervals, figures) after its seed jobs. ``make report`` afterwards finds every stage complete
  for the same profile, overrides and hardware tag, runs ``06_analysis`` and renders;
* a job waits for the jobs of what it reads (:func:`~fasterseg_core.runs.stage_reads`): a training seed
  for ``01_search`` when it trains the searched architecture, a distilled seed for its teacher's seed
  (:func:`~fasterseg_core.runs.teacher_seed`), ``05_latency`` for the trainings. A run already complete for
  the config is left out, as the pipeline skips it, unless something it waits for runs.

Slurm holds the dependencies itself (``--dependency=afterok:<job ids>``). submitit's local executor has no
dependencies, so the local sweep submits a job once every job it waits for has finished. Seeds of one stage
run at once: each writes its own folder ``<stage>/seed-<s>/`` under its own lock
(:func:`~fasterseg_core.lifecycle.start_run`). Logs, submitit's job files and ``sweep.json`` (every job's id,
state, log files and error) go to ``--folder``, default ``<output_root>/<profile>/sweep/``.
"""

# Length (~480 lines, over the house limit of ~450) on purpose: planning, submission and waiting share the
# SweepJob/JobState records and the one error style; split, each half would import the other's privates.

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from .config import RunConfig, load_config, profile_path, project_root
from .machine import now
from .pipeline import run_stage
from .runs import STAGES, get_stage, is_complete, load_manifest, stage_reads, stage_seeds, teacher_seed
from .storage import save_json

EXECUTORS = ("slurm", "local")
# 06_analysis only reads what the others wrote; `report` runs it right before rendering.
REPORT_STAGE = "06_analysis"
DEFAULT_STAGES = tuple(name for name in STAGES if name != REPORT_STAGE)
FINISHED = ("done", "failed", "not-run")


class SweepError(ValueError):
    """A sweep that cannot be planned or submitted as asked (the message says what to pass instead)."""


class StageFailed(RuntimeError):
    """A stage job's notebook failed (the message names the stage, the error and the executed notebook)."""


# ---- the plan --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: the run of one seed of a training stage, or a stage's notebook (``seed=None``).

    Attributes:
        after: names of the jobs it waits for.
    """

    stage: str
    seed: int | None = None
    after: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``"02_teacher/seed-0"`` (a seed job) or ``"02_teacher"`` (the stage job), as its run folder."""
        return self.stage if self.seed is None else f"{self.stage}/seed-{self.seed}"


def plan_sweep(cfg: RunConfig, stages: Sequence[str] = DEFAULT_STAGES, hardware_tag: str = ""
               ) -> tuple[list[SweepJob], list[str]]:
    """The jobs of a sweep over ``stages``, each after the jobs it waits for.

    Args:
        cfg: the resolved config, with the sweep's seeds.
        stages: stage names (short names ``teacher``/``distill``/``student`` too).
        hardware_tag: the tag the stage jobs record; empty: a stage complete on any hardware counts.

    Returns:
        The jobs in an order that submits every job after those it waits for, and the names of the runs left
        out because they are complete for this config.

    Raises:
        ValueError: an unknown stage.
        SweepError: a training stage reads a stage that is neither complete nor in ``stages``.
    """
    selected = {get_stage(name).name for name in stages}
    planned: dict[str, SweepJob] = {}
    complete: list[str] = []
    for name in STAGES:  # the table lists every stage after the stages it reads
        if name not in selected:
            continue
        for seed in (*stage_seeds(cfg, name), None):
            job = SweepJob(name, seed, _waits_for(cfg, name, seed, planned))
            if not job.after and _complete(cfg, name, seed, hardware_tag):
                complete.append(job.name)
            else:
                planned[job.name] = job
    return list(planned.values()), complete


def _waits_for(cfg: RunConfig, name: str, seed: int | None, planned: dict[str, SweepJob]) -> tuple[str, ...]:
    stage = STAGES[name]
    if seed is None and stage.seeded:  # the stage's notebook aggregates its seeds' runs
        return tuple(n for s in stage_seeds(cfg, name) if (n := SweepJob(name, s).name) in planned)
    after = []
    for upstream in stage.upstream:
        in_sweep = any(job.stage == upstream for job in planned.values())
        if not stage_reads(cfg, name, upstream, once_complete=in_sweep):
            continue
        if seed is not None and STAGES[upstream].seeded:  # a distilled seed learns from its teacher's seed
            target = SweepJob(upstream, teacher_seed(cfg, seed) if upstream == "02_teacher" else seed)
        else:
            target = SweepJob(upstream)
        if target.name in planned:
            after.append(target.name)
        elif seed is not None and not is_complete(cfg, upstream, any_hardware=True, seed=target.seed):
            # a training run cannot start without it (05_latency and 06_analysis do without what is missing)
            raise SweepError(f"{name} seed {seed} reads {target.name}, which is not complete for this config; "
                             f"add {upstream} to --stages")
    return tuple(after)


def _complete(cfg: RunConfig, stage: str, seed: int | None, hardware_tag: str) -> bool:
    """Whether the run is done for this config: a seed as ``train`` skips it, a stage as the pipeline does."""
    if seed is not None:
        return is_complete(cfg, stage, any_hardware=True, seed=seed)
    executed = cfg.output_dir / "notebooks" / f"{stage}.ipynb"
    return executed.exists() and is_complete(cfg, stage, hardware_tag, any_hardware=not hardware_tag)


# ---- what each job runs ------------------------------------------------------------------------------------
def train_command(profile: str, overrides: dict[str, Any], stage: str, seed: int, hardware_tag: str = "",
                  gpus: int = 0) -> list[str]:
    """The command line of a seed job: ``python -m fasterseg_core train``, under ``torchrun`` (one process per
    GPU) when the job has several GPUs."""
    launcher = [sys.executable, "-m", "fasterseg_core"]
    if gpus > 1:  # torch.distributed.run is the module behind the torchrun script (no PATH lookup)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                    "-m", "fasterseg_core"]
    tag = ["--hardware-tag", hardware_tag] if hardware_tag else []
    return [*launcher, "--debug", "train", "--profile", profile, "--overrides", json.dumps(overrides),
            "--stage", stage, "--seed", str(seed), "--no-progress", *tag]


def run_stage_job(root: str, profile: str, overrides: dict[str, Any], hardware_tag: str, stage: str) -> str:
    """A stage job: the stage's notebook, as ``make report`` runs it. Runs in the job's own process.

    Raises:
        StageFailed: the notebook failed (its manifest says so too).
    """
    # The scheduler picks the job's working directory; the kernels find the project by this.
    os.environ["FASTERSEG_ROOT"] = root
    cfg = load_config(profile, overrides)
    result = run_stage(cfg, {"profile": profile, "overrides": overrides, "hardware_tag": hardware_tag}, stage)
    if result.status != "ok":
        raise StageFailed(f"error: {stage} failed: {result.error} (executed notebook: {result.notebook})")
    return f"{stage}: complete in {result.seconds:.1f} s"


# ---- the sweep ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """What each job asks its executor for.

    Attributes:
        partition: the Slurm partition (required with Slurm).
        gpus_per_job: GPUs of one job; a seed job with more than one trains under torchrun.
        time_min: the job's time limit in minutes (the local executor kills a job past it too).
        cpus_per_task: CPU cores of one job; 0 leaves the executor's default.
        slurm_parameters: more sbatch options, e.g. ``{"account": "proj", "qos": "normal"}``.
    """

    partition: str = ""
    gpus_per_job: int = 0
    time_min: int = 24 * 60
    cpus_per_task: int = 0
    slurm_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A planned sweep, checked and ready to submit (:func:`prepare_sweep`)."""

    profile: str  # a profile name, or the absolute path of a profile file
    overrides: dict[str, Any]  # with the sweep's seeds when they differ from the profile's
    cfg: RunConfig
    executor: str
    resources: Resources
    folder: Path
    jobs: tuple[SweepJob, ...]
    complete: tuple[str, ...]  # runs left out as complete
    hardware_tag: str = ""
    max_parallel: int = 0  # local: at most this many jobs at once (0 = no limit)


def prepare_sweep(profile: str, overrides: dict[str, Any], *, seeds: Sequence[int] | None = None,
                  executor: str = "local", stages: Sequence[str] = DEFAULT_STAGES,
                  resources: Resources | None = None, folder: Path | None = None, hardware_tag: str = "",
                  max_parallel: int = 0) -> Sweep:
    """Check the sweep's settings and plan its jobs; nothing is written.

    Raises:
        ConfigError: the profile or an override does not fit the config.
        SweepError: a setting that does not make sense (the message says what to pass instead).
    """
    resources = resources or Resources()
    overrides = dict(overrides)
    if seeds:
        if "seeds" in overrides and list(overrides["seeds"]) != list(seeds):
            raise SweepError(f"--seeds {list(seeds)} and the seeds {overrides['seeds']} of --overrides differ; "
                             "give the seeds once, with --seeds")
        if list(load_config(profile, overrides).seeds) != list(seeds):  # the stage identities name the seeds
            overrides["seeds"] = list(seeds)
    cfg = load_config(profile, overrides)
    _check_resources(executor, resources, max_parallel)
    if Path(profile).suffix in (".yaml", ".yml"):  # jobs may start elsewhere: name the file absolutely
        profile = str(profile_path(profile).resolve())
    jobs, complete = plan_sweep(cfg, stages, hardware_tag)
    folder = (folder or cfg.output_dir / "sweep").expanduser().resolve()
    return Sweep(profile, overrides, cfg, executor, resources, folder, tuple(jobs), tuple(complete), hardware_tag,
                 max_parallel)


def _check_resources(executor: str, r: Resources, max_parallel: int) -> None:
    if executor not in EXECUTORS:
        raise SweepError(f"--executor {executor!r}: one of {list(EXECUTORS)}")
    if r.gpus_per_job < 0 or r.cpus_per_task < 0 or r.time_min < 1 or max_parallel < 0:
        raise SweepError(f"--gpus-per-job {r.gpus_per_job}, --cpus-per-task {r.cpus_per_task}, --time-min "
                         f"{r.time_min}, --max-parallel {max_parallel}: counts are >= 0 and the time limit at "
                         "least 1 minute, e.g. --gpus-per-job 1 --time-min 720")
    if executor == "slurm":
        if not r.partition:
            raise SweepError("--executor slurm needs --partition, the Slurm partition the jobs run in "
                             "(`sinfo -s` lists them), e.g. --partition gpu")
        missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]  # submitit needs both
        if missing:
            raise SweepError(f"--executor slurm: {' and '.join(missing)} not on PATH; run the sweep where Slurm's "
                             "commands are (the cluster's login node), or use --executor local")
    elif r.partition or r.slurm_parameters:
        raise SweepError("--partition and --slurm-parameters are Slurm's; drop them or use --executor slurm")


@dataclass
class JobState:
    """A job of a running sweep: ``waiting`` (local, not yet submitted), ``queued``, ``running``, ``done``,
    ``failed`` or ``not-run`` (something it waits for failed)."""

    job: SweepJob
    state: str = "waiting"
    handle: submitit.Job | None = None
    error: str = ""
    submitted_at: str | None = None
    finished_at: str | None = None

    @property
    def log(self) -> str:
        """The job's stderr log (its stdout beside it, ``.out``)."""
        return str(self.handle.paths.stderr) if self.handle is not None else ""

    def record(self) -> dict[str, Any]:
        return {"name": self.job.name, "stage": self.job.stage, "seed": self.job.seed, "after": list(self.job.after),
                "state": self.state, "job_id": self.handle.job_id if self.handle else None,
                "submitted_at": self.submitted_at, "finished_at": self.finished_at, "error": self.error,
                "stderr": self.log, "stdout": str(self.handle.paths.stdout) if self.handle else ""}


def _executor(sweep: Sweep, job: SweepJob, after_ids: Sequence[str]) -> submitit.Executor:
    """An executor set up for one job (a fresh one each: submitit ignores ``None`` updates, so a dependency
    could not be cleared for the next job)."""
    r = sweep.resources
    ex = submitit.AutoExecutor(folder=sweep.folder, cluster=sweep.executor)
    params: dict[str, Any] = {"name": f"fasterseg-{job.name.replace('/', '-')}", "timeout_min": r.time_min,
                              "gpus_per_node": r.gpus_per_job, "nodes": 1, "tasks_per_node": 1}
    if r.cpus_per_task:
        params["cpus_per_task"] = r.cpus_per_task
    if sweep.executor == "slurm":
        params["slurm_partition"] = r.partition
        if after_ids:
            params["slurm_dependency"] = "afterok:" + ":".join(after_ids)
        if r.slurm_parameters:
            params["slurm_additional_parameters"] = dict(r.slurm_parameters)
    ex.update_parameters(**params)
    return ex


def _submit(sweep: Sweep, state: JobState, states: dict[str, JobState]) -> None:
    job = state.job
    after_ids = [states[name].handle.job_id for name in job.after]  # type: ignore[union-attr]
    ex = _executor(sweep, job, after_ids)
    if job.seed is not None:
        command = train_command(sweep.profile, sweep.overrides, job.stage, job.seed, sweep.hardware_tag,
                                sweep.resources.gpus_per_job)
        state.handle = ex.submit(submitit.helpers.CommandFunction(command, cwd=project_root()))
    else:
        state.handle = ex.submit(run_stage_job, str(project_root()), sweep.profile, sweep.overrides,
                                 sweep.hardware_tag, job.stage)
    # a local job is a process started right away; Slurm's waits in the queue
    state.state, state.submitted_at = ("running" if sweep.executor == "local" else "queued"), now()


def error_line(text: str) -> str:
    """The line that says why a job failed: the last ``error: …`` (what the command line and a stage job
    print), else the first line of what submitit reports."""
    found = re.findall(r"error: (.+)", text)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no error message"


@dataclass
class SweepResult:
    """Every job's final state; ``failed`` lists those that failed."""

    jobs: list[JobState]
    record_path: Path

    @property
    def failed(self) -> list[JobState]:
        return [s for s in self.jobs if s.state == "failed"]


def run_sweep(sweep: Sweep, poll_s: float | None = None, say: Callable[[str], None] | None = None) -> SweepResult:
    """Submit the sweep's jobs and wait for all of them, saying each change of state.

    Slurm gets every job at once, each with ``afterok`` on what it waits for; the local executor gets a job
    once what it waits for has finished (and at most ``sweep.max_parallel`` at once). A failed job's dependents
    never run (Slurm's are cancelled). Ctrl-C stops the local jobs; Slurm's keep running (the message says
    how to cancel them).

    Args:
        poll_s: seconds between looks at the jobs (default: 1 local, 30 Slurm).
        say: where progress lines go (default: print).

    Returns:
        A :class:`SweepResult`; ``<folder>/sweep.json`` records the same.
    """
    say = say or (lambda line: print(line, flush=True))
    poll_s = poll_s if poll_s is not None else (1.0 if sweep.executor == "local" else 30.0)
    states = {job.name: JobState(job) for job in sweep.jobs}
    record: dict[str, Any] = {
        "profile": sweep.cfg.profile, "overrides": sweep.overrides, "executor": sweep.executor,
        "resources": vars(sweep.resources), "hardware_tag": sweep.hardware_tag, "complete": list(sweep.complete),
        "started_at": now(), "jobs": [],
    }
    path = sweep.folder / "sweep.json"
    sweep.folder.mkdir(parents=True, exist_ok=True)
    if sweep.complete:
        say(f"sweep: complete for this config, left out: {', '.join(sweep.complete)}")
    if sweep.executor == "slurm":
        submit_jobs(sweep, states, say)
    try:
        while True:
            changed = _update(sweep, states, say)
            if changed:
                record["jobs"] = [s.record() for s in states.values()]
                save_json(record, path)
            if all(s.state in FINISHED for s in states.values()):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _interrupted(sweep, states, say)
        raise
    record.update(jobs=[s.record() for s in states.values()], finished_at=now())
    save_json(record, path)
    result = SweepResult(list(states.values()), path)
    if not result.failed:
        say(f"sweep: all {len(states)} jobs done; logs and sweep.json in {sweep.folder}")
        say(f"sweep: the report reuses the complete stages: {report_command(sweep)}")
    return result


def submit_jobs(sweep: Sweep, states: dict[str, JobState], say: Callable[[str], None]) -> None:
    """Submit every job to Slurm at once, each with ``afterok`` on the jobs it waits for.

    Raises:
        SweepError: sbatch refused a job (the ones submitted before it are cancelled).
    """
    for state in states.values():  # in plan order: what a job waits for already has its job id
        try:
            _submit(sweep, state, states)
        except Exception as e:
            for s in states.values():
                if s.handle is not None:
                    s.handle.cancel(check=False)
            raise SweepError(f"submitting {state.job.name} failed ({type(e).__name__}: {str(e).strip()[:500]}); "
                             "the jobs submitted before it were cancelled") from e
        say(f"sweep: {state.job.name} submitted as job {state.handle.job_id}"  # type: ignore[union-attr]
            + (f", after {', '.join(state.job.after)}" if state.job.after else ""))


def _update(sweep: Sweep, states: dict[str, JobState], say: Callable[[str], None]) -> bool:
    """One look at every job: finished ones, dependents of failed ones, local submissions. Whether any
    state changed."""
    changed = False
    for s in states.values():
        if s.handle is None or s.state in FINISHED:
            continue
        if s.handle.done():
            error = s.handle.exception()
            if error is None:
                s.state = "done"
            else:
                s.state, s.error = "failed", error_line(str(error))
            s.finished_at = now()
        elif s.state == "queued" and s.handle.state == "RUNNING":
            s.state = "running"
        else:
            continue
        changed = True
        _say_state(s, states, say)
    for s in states.values():  # plan order: a failure passes down the whole chain in one look
        if s.state in FINISHED or not any(states[d].state in ("failed", "not-run") for d in s.job.after):
            continue
        if s.handle is not None:
            s.handle.cancel(check=False)
        s.state, s.finished_at, changed = "not-run", now(), True
        s.error = f"not run: {', '.join(d for d in s.job.after if states[d].state in ('failed', 'not-run'))} failed"
        _say_state(s, states, say)
    if sweep.executor == "local":
        busy = sum(s.state in ("queued", "running") for s in states.values())
        for s in states.values():
            if sweep.max_parallel and busy >= sweep.max_parallel:
                break
            if s.state == "waiting" and all(states[d].state == "done" for d in s.job.after):
                _submit(sweep, s, states)
                busy, changed = busy + 1, True
                _say_state(s, states, say, "started")
    return changed


def _say_state(s: JobState, states: dict[str, JobState], say: Callable[[str], None], what: str = "") -> None:
    counts = {k: sum(x.state == k for x in states.values()) for k in ("done", "running", "queued", "failed")}
    left = sum(x.state == "waiting" for x in states.values())
    job_id = f" (job {s.handle.job_id})" if s.handle is not None else ""
    what = what or {"failed": f"FAILED: {s.error}; log: {s.log}", "not-run": s.error}.get(s.state, s.state)
    say(f"sweep: {s.job.name}{job_id} {what} · {counts['done']}/{len(states)} done, {counts['running']} running, "
        f"{counts['queued']} queued, {counts['failed']} failed" + (f", {left} waiting" if left else ""))


def _interrupted(sweep: Sweep, states: dict[str, JobState], say: Callable[[str], None]) -> None:
    live = [s for s in states.values() if s.handle is not None and s.state not in FINISHED]
    if sweep.executor == "local":  # the jobs are this machine's processes: stop them with the sweep
        for s in live:
            s.handle.cancel(check=False)  # type: ignore[union-attr]
        say(f"sweep: interrupted; {len(live)} local job(s) stopped (their runs resume when the sweep runs again)")
    elif live:
        ids = " ".join(s.handle.job_id for s in live)  # type: ignore[union-attr]
        say(f"sweep: interrupted; the Slurm jobs keep running (scancel {ids} stops them; the sweep run again "
            "leaves out what completed)")


def report_command(sweep: Sweep) -> str:
    """``python -m fasterseg_core report`` with the sweep's profile, overrides and hardware tag: the command
    that finds the sweep's stages complete and reuses them."""
    tags = {m.get("hardware") for stage in STAGES if (m := load_manifest(sweep.cfg, stage)) is not None}
    tag = sweep.hardware_tag or (tags.pop() if len(tags) == 1 else "")
    parts = ["python -m fasterseg_core report", f"--profile {sweep.profile}"]
    if sweep.overrides:
        parts.append(f"--overrides '{json.dumps(sweep.overrides)}'")
    if tag:
        parts.append(f"--hardware-tag {tag}")
    return " ".join(parts)
