"""Live curves: a stage's scalars as TensorBoard event files in its run folder, beside its history.

``history.csv`` (training stages) and ``history.json`` (search) stay the record the report is built from;
the event files are there to watch a long run as it goes: ``make tensorboard PROFILE=…`` points TensorBoard
at the profile's output folder, where every stage (and every seed of a training stage) is one run.

* **Where.** ``<run folder>/tensorboard/``: ``<stage>/seed-<s>/tensorboard/`` for a training stage,
  ``01_search/tensorboard/`` for the search. The folder belongs to the run that
  :func:`~fasterseg_core.lifecycle.start_run` opened, so results of other settings set aside to
  ``previous/<key>/`` take their curves with them and bring them back.
* **Steps.** The x-axis is the stage's iterations so far (a training iteration is one optimiser step; the
  search counts its pretraining iterations first, then its search iterations, each an architecture and a
  weight step). A per-epoch value is logged at the epoch's last iteration.
* **Tags.** ``<group>/<history field>``: the last part of a tag is the ``history.csv`` column or
  ``history.json`` key whose value it copies (:func:`training_tags`, :func:`search_tags`), so a curve can
  always be traced to the file the report reads.
* **Resume.** A process opens its event file at the first step it writes and marks that step as a restart
  (TensorBoard's ``purge_step``): whatever an interrupted process wrote at or after it (iterations of the
  epoch it did not finish) is dropped by TensorBoard, so a resumed run's curves continue without doubled
  points, and the interrupted process's earlier points stay.
* **Rank 0 writes** under ``torchrun``; the other ranks open nothing. Per-iteration values are this
  process's (under DDP, rank 0's shard of the global batch); per-epoch values are the rows of the history,
  i.e. the global batch's means.

NaN marks "not measured" in a history row (``kd_loss`` without a teacher, the ``val_*`` columns between
evaluations) and is left out. TensorBoard stores scalars as float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .distributed import DistInfo, current_dist

FOLDER = "tensorboard"  # inside the run folder
FLUSH_SECS = 30  # how stale the curves of a live run may be (SummaryWriter's default is 120 s)


class Scalars:
    """TensorBoard scalars of one run, written to ``<run_dir>/tensorboard/`` by rank 0; a context manager.

    The event file is opened at the first :meth:`add` (a rerun with nothing left to do writes no file), with
    that step as TensorBoard's ``purge_step``: steps must not decrease within one process.

    Args:
        run_dir: the run folder (``Run.dir``).
        info: this process's place in the process group (default: the current group, or a single process).
        flush_secs: at most this many seconds between a value's :meth:`add` and its appearance on disk.
    """

    def __init__(self, run_dir: str | Path, *, info: DistInfo | None = None,
                 flush_secs: int = FLUSH_SECS) -> None:
        self.folder = Path(run_dir) / FOLDER
        self.enabled = (info if info is not None else current_dist()).main
        self.flush_secs = flush_secs
        self._writer: Any = None
        self._layout: dict[str, Any] | None = None

    def layout(self, layout: dict[str, Any]) -> None:
        """A custom-scalars layout (``SummaryWriter.add_custom_scalars``), written when the file opens."""
        self._layout = layout

    def add(self, values: Mapping[str, float], step: int) -> None:
        """Write ``{tag: value}`` at ``step`` (non-finite values are left out, see the module docstring)."""
        if not self.enabled:
            return
        if self._writer is None:
            # deferred: importing TensorBoard takes seconds, and only rank 0 of a running stage needs it
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=step, flush_secs=self.flush_secs)
            if self._layout is not None:
                self._writer.add_custom_scalars(self._layout)
        for tag, value in values.items():
            if math.isfinite(value):
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close the event file (safe to call twice, or when nothing was written)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Scalars:  # noqa: PYI034 - never subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _numbers(row: Mapping[str, Any], skip: tuple[str, ...]) -> dict[str, float]:
    """The numeric fields of a history row (strings, lists and booleans are not curves)."""
    return {k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def training_tags(row: Mapping[str, Any]) -> dict[str, float]:
    """The tags of one training ``history.csv`` row (:func:`fasterseg_core.engine.fit`).

    ``val_*`` and ``eval_seconds`` → ``val/<column>``; every other number → ``train/<column>`` (``loss``,
    ``seg_loss``, ``kd_loss``, ``lr``, ``train_miou``, ``seconds``). ``epoch`` and ``iters`` give the step.
    """
    return {(f"val/{k}" if k.startswith("val_") or k == "eval_seconds" else f"train/{k}"): v
            for k, v in _numbers(row, ("epoch", "iters")).items()}


def iteration_tags(loss: float, parts: Mapping[str, float], lr: float) -> dict[str, float]:
    """The tags of one training iteration: ``iteration/loss``, ``iteration/<part>`` (``seg_loss``,
    ``kd_loss``), ``iteration/lr`` (the rate this step used)."""
    return {"iteration/loss": loss, **{f"iteration/{k}": v for k, v in parts.items()}, "iteration/lr": lr}


def search_tags(record: Mapping[str, Any]) -> dict[str, float]:
    """The tags of one search ``history.json`` record (:mod:`fasterseg_core.search.driver`).

    ``miou_*`` → ``miou/<key>`` (val mIoU of every head of both indices); keys naming a latency or FPS
    (``latency_ms`` and ``lat_{alpha,beta,gamma}_ms``: the epoch's mean differentiable estimate and its
    terms; ``<role>_latency_ms``, ``<role>_latency02_ms`` …, ``<role>_fps``: the derived networks on the
    table) → ``latency/<key>``; everything else → ``<phase>/<key>`` (``pretrain/`` or ``search/``: the
    losses, ``lr``, ``lambda`` (the λ this epoch used), ``lambda_next``, ``seconds_*``).
    """
    out = {}
    for k, v in _numbers(record, ("epoch",)).items():
        if k.startswith("miou_"):
            out[f"miou/{k}"] = v
        elif "lat" in k or "fps" in k:
            out[f"latency/{k}"] = v
        else:
            out[f"{record['phase']}/{k}"] = v
    return out


def target_tags(window_fps: tuple[float, float]) -> dict[str, float]:
    """The search's target window as latencies: ``latency/target_ms_low`` (the window's upper FPS) and
    ``latency/target_ms_high`` (its lower FPS), the band the adaptive λ steers the derived student into."""
    low_fps, high_fps = window_fps
    return {"latency/target_ms_low": 1000.0 / high_fps, "latency/target_ms_high": 1000.0 / low_fps}


# The search's chart of the derived student's table latency inside its target band (custom scalars).
SEARCH_LAYOUT = {
    "latency": {
        "derived student vs target window (ms)": [
            "Margin", ["latency/student_latency_ms", "latency/target_ms_low", "latency/target_ms_high"]
        ]
    }
}
