"""One function per pipeline stage, called by the numbered notebooks (house style §3.2, §3.6).

Each stage function takes the resolved configuration and the open run of its stage
(:func:`fasterseg_core.runs.start_run`), reads upstream artefacts, writes its own into ``run.dir`` and
returns a small result object for the notebook's tables and figures.

* :func:`run_search` — ``01_search``: latency table for this device, pretraining, search, derivation.
* :func:`run_training` — ``02_teacher``, ``03_distill``, ``04_student`` (:mod:`fasterseg_core.training`).
* :func:`run_latency` — ``05_latency``: every network × backend on this machine, table vs measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import RunConfig
from .data import build_dataset
from .evaluate import load_stage_model
from .latency.lut import LatencyTable, build_lut, load_authors_lut
from .latency.suite import LatencyRecord, candidate_networks, load_records, measure_suite, real_images
from .runs import REPO_ROOT, Run, upstream_path
from .search import SearchResult, search
from .training import run_training
from .training import scores_table as training_scores

__all__ = ["load_lut", "run_latency", "run_search", "run_training", "search_latency_table", "training_scores"]

LUT_BACKEND = "eager"  # the search's table times plain PyTorch modules on the run's device


def lut_cache_path(cfg: RunConfig, hardware_tag: str, input_hw: tuple[int, int]) -> Path:
    """``outputs/<profile>/latency/lut_<tag>_<H>x<W>.json``: where a device's table is cached for reuse."""
    return cfg.output_dir / "latency" / f"lut_{hardware_tag}_{input_hw[0]}x{input_hw[1]}.json"


def load_lut(path: str | Path) -> LatencyTable:
    """A saved table: ours (``fasterseg-lut/1``) or the authors' export (``table_ms``).

    Relative paths are taken from the repository root (profiles are written from there).
    """
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(f"latency table {path} does not exist (search.latency_table)")
    data = json.loads(path.read_text())
    return load_authors_lut(path) if "table_ms" in data else LatencyTable.load(path)


def search_latency_table(
    cfg: RunConfig, run: Run, num_classes: int, *, progress: bool = True
) -> LatencyTable:
    """The table that steers the search: the profile's ``search.latency_table`` if set, else this device's
    table at ``search.latency_input_hw`` — reused from the cache when complete, otherwise (re)built there
    (only missing entries are timed, e.g. the heads of another class count).
    """
    sc = cfg.search
    if sc.latency_table:
        return load_lut(sc.latency_table)
    hw = tuple(sc.latency_input_hw)
    path = lut_cache_path(cfg, run.hardware, hw)
    cached = LatencyTable.load(path) if path.exists() else None
    if cached is not None and tuple(cached.input_hw) != hw:
        cached = None
    lut = build_lut(run.device, LUT_BACKEND, hw, run.hardware, progress=progress, num_classes=num_classes,
                    resume_from=cached)  # fmt: skip
    if cached is None or len(lut.entries) != len(cached.entries):
        lut.save(path)
    return lut


def run_search(cfg: RunConfig, run: Run, *, progress: bool = True) -> SearchResult:
    """Stage ``01_search``: latency table, supernet pretraining and search, derived teacher and student.

    Resumes from the last completed epoch when the run folder holds checkpoints of the same
    data/model/search configuration.

    Args:
        cfg: the resolved configuration.
        run: the open ``01_search`` run.
        progress: tqdm bars and ETA lines.

    Returns:
        The :class:`~fasterseg_core.search.SearchResult`; ``metrics.json`` is written, ``run.finish`` is
        the notebook's.
    """
    num_classes = build_dataset(cfg.data, "val", train=False).num_classes
    lut = search_latency_table(cfg, run, num_classes, progress=progress)
    return search(cfg, run, lut, progress=progress)


# ---- 05_latency ------------------------------------------------------------------------------------


@dataclass
class LatencyStageResult:
    """What ``05_latency`` shows: this machine's record, where it was saved, and all machines' rows."""

    record: LatencyRecord
    path: Path
    all_records: pd.DataFrame
    student_eager_ms: float | None


def run_latency(cfg: RunConfig, run: Run, *, progress: bool = True) -> LatencyStageResult:
    """Stage ``05_latency``: time every network on every configured backend on this machine (§10).

    Times the published teacher and student, the searched ones when ``01_search`` completed for this
    config, and the torchvision peers; saves ``outputs/<profile>/latency/<hardware_tag>.json`` (one file
    per machine, so several machines accumulate) and returns all records found there.
    """
    lc = cfg.latency
    if lc.num_threads > 0:
        torch.set_num_threads(lc.num_threads)
    val = build_dataset(cfg.data, "val", train=False)
    searched = {}
    for role in ("teacher", "student"):
        try:
            searched[role] = upstream_path(cfg, "01_search", f"arch_{role}.json")
        except FileNotFoundError:
            pass  # no (complete) search for this config: the published networks stand alone
    candidates = candidate_networks(val.num_classes, searched, lc.include_peers)
    for c in candidates:  # trained weights make the low-precision mIoU change meaningful (issue 4)
        for stage in ("02_teacher", "03_distill"):
            if c.arch is None:
                continue
            try:
                upstream_path(cfg, stage, "checkpoints", "best.pt")  # complete, same config
                net, info = load_stage_model(cfg, stage, "best")
            except (FileNotFoundError, ValueError):
                continue
            if info["arch"] == c.arch.to_dict() and info["num_classes"] == val.num_classes:
                c.net, c.source = net.eval(), f"{c.source}; weights: {stage} best checkpoint"
    images, labels = real_images(val, tuple(lc.input_hw), lc.agreement_images)
    record = measure_suite(
        candidates, lc.backends, tuple(lc.input_hw), run.device, run.hardware, val.num_classes,
        images=images, labels=labels, warmup=lc.warmup_iters, min_loop_s=lc.min_loop_seconds,
        timed_s=lc.timed_seconds, num_threads=lc.num_threads, progress=progress,
    )  # fmt: skip
    path = record.save(cfg.output_dir / "latency" / f"{run.hardware}.json")
    frame = record.frame()
    student = frame[(frame.network == "published student") & (frame.backend == "eager")].median_ms
    return LatencyStageResult(
        record,
        path,
        load_records(path.parent),
        float(student.iloc[0]) if len(student) and student.iloc[0] else None,
    )
