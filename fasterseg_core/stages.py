"""One function per pipeline stage, called by the numbered notebooks (house style §3.2, §3.6).

Each takes the resolved configuration and the open run of its stage (:func:`fasterseg_core.lifecycle.start_run`),
reads upstream artefacts, writes its own into ``run.dir`` and returns a small result for the notebook's
tables and figures. The stages themselves are listed once, in :data:`fasterseg_core.runs.STAGES`.

* :func:`run_search` — ``01_search``: latency table for this device, pretraining, search, derivation.
* :func:`run_training` — ``02_teacher``, ``03_distill``, ``04_student`` (method §9): the teacher from
  scratch; the student with the KL term against the frozen teacher; the student from scratch (the
  reproduction study's extension). Then the best and last checkpoints are scored on every labelled split.
* :func:`run_latency` — ``05_latency``: every network × backend on this machine, table vs measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .checkpoints import load_checkpoint_model, load_stage_model
from .config import RunConfig, TrainConfig, resolve_path, to_dict
from .data import build_dataset
from .data import stats as data_stats
from .data.stats import split_summary
from .distributed import barrier, current_dist, init_distributed, local_device
from .engine import TrainResult, evaluate, fit, training_loss
from .evidence import summarize
from .latency.cache import lut_cache_path, search_latency_table
from .latency.lut import LatencyTable
from .latency.suite import LatencyRecord, candidate_networks, load_records, measure_suite, real_images
from .lifecycle import Run, start_run
from .losses import class_weights
from .metrics import SCORE_KEYS, ConfusionMatrix
from .models import (
    Architecture,
    CheckpointMismatchError,
    build_network,
    init_weights_,
    published_architecture,
)
from .predictions import save_colour_predictions
from .runs import (
    architecture_source,
    get_stage,
    is_complete,
    resume_key,
    stage_dir,
    stage_seeds,
    teacher_seed,
    upstream_path,
)
from .search import SearchResult, search
from .storage import load_json, save_csv, save_json

__all__ = ["StageInputMissing", "TrainStageResult", "run_latency", "run_search", "run_training", "scores_table"]


class StageInputMissing(FileNotFoundError):
    """A stage needs an artifact of an earlier stage that has not run (the message names it)."""


# ---- 00_data ---------------------------------------------------------------------------------------


SPLITS = ("train", "val", "test")


@dataclass
class DataStageResult:
    """What ``00_data`` measured: the splits (evaluation transform), their label statistics, the image sizes,
    and the training loader's throughput with 0 and ``data.num_workers`` workers."""

    datasets: dict[str, Any]
    summaries: dict[str, dict[str, Any]]
    frequencies: pd.DataFrame  # class × split shares of labelled pixels
    sizes: pd.DataFrame  # one row per split
    throughput: list[dict[str, Any]]

    @property
    def metrics(self) -> dict[str, Any]:
        """``run.finish``'s summary: images per split, classes, training images/s per worker count."""
        return {"images": {split: s["images"] for split, s in self.summaries.items()},
                "num_classes": len(self.datasets["train"].class_names),
                "train_images_per_s": {t["num_workers"]: t["images_per_s"] for t in self.throughput}}


def run_data(cfg: RunConfig, run: Run) -> DataStageResult:
    """Stage ``00_data``: load every split, count its labels and image sizes (one pass over each split), time
    the training loader at the teacher's crop and batch, and save ``stats.json``."""
    datasets = {split: build_dataset(cfg.data, split, train=False) for split in SPLITS}
    summaries = {split: split_summary(ds) for split, ds in datasets.items()}
    frequencies = data_stats.class_frequency_table(summaries, datasets["train"].class_names)
    sizes = data_stats.image_size_table(summaries, cfg.data.base_scale)
    train_crops = build_dataset(cfg.data, "train", train=True, crop_hw=cfg.teacher.crop_size_hw)
    throughput = [data_stats.measure_loader_throughput(train_crops, cfg.teacher.batch_size, w)
                  for w in sorted({0, cfg.data.num_workers})]
    record = {"summaries": summaries, "class_frequencies": frequencies.to_dict(), "throughput": throughput}
    save_json(record | {"sizes": sizes.to_dict("records")}, run.path("stats.json"))
    return DataStageResult(datasets, summaries, frequencies, sizes, throughput)


# ---- 01_search -------------------------------------------------------------------------------------
def run_search(cfg: RunConfig, run: Run, *, progress: bool = True) -> SearchResult:
    """Stage ``01_search``: latency table, supernet pretraining and search, derived teacher and student.

    Resumes from the last completed epoch when the run folder holds checkpoints of the same identity.
    ``metrics.json`` is written; ``run.finish`` is the notebook's. Under ``torchrun`` every rank searches
    (:mod:`fasterseg_core.search.driver`) and rank 0 writes.
    """
    num_classes = build_dataset(cfg.data, "val", train=False).num_classes
    info = init_distributed(run.device)
    if info.world <= 1:
        lut = search_latency_table(cfg, run.device, run.hardware, num_classes, progress=progress)
        return search(cfg, run, lut, progress=progress)
    # rank 0 times (or completes) this device's table into its cache while the others wait (a long build can
    # outlast the process group's timeout: build it once beforehand, or name one in search.latency_table);
    # then every rank loads the same saved table, so all steer by the same numbers
    device = local_device(run.device, info)
    if info.main:
        search_latency_table(cfg, device, run.hardware, num_classes, progress=progress)
    barrier(info)
    lut = search_latency_table(cfg, device, run.hardware, num_classes, progress=False)
    return search(cfg, run, lut, progress=progress)


# ---- 02_teacher, 03_distill, 04_student -------------------------------------------------------------
@dataclass
class SeedResult:
    """One seed's run of a training stage: its ``metrics.json``, ``history.csv`` and ``per_class_iou.csv``."""

    seed: int
    metrics: dict[str, Any]
    history: pd.DataFrame
    per_class: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class TrainStageResult:
    """What a training stage's notebook shows: every seed's run and their aggregate.

    Attributes:
        metrics: the stage's ``metrics.json``: ``seeds``, ``per_seed`` (seed → that run's metrics) and
            ``summary`` (split → checkpoint → score → n, mean, sd and 95 % Student-t interval over the seeds).
        history: every seed's ``history.csv`` with a ``seed`` column.
        per_class: every seed's per-class IoU with a ``seed`` column.
        seeds: seed → :class:`SeedResult`.
    """

    metrics: dict[str, Any]
    history: pd.DataFrame
    per_class: pd.DataFrame
    seeds: dict[int, SeedResult]

    @property
    def files(self) -> dict[str, Path]:
        """The first seed's artifacts (its coloured predictions are the ones the notebook shows)."""
        return next(iter(self.seeds.values())).files


def stage_architecture(cfg: RunConfig, role: str) -> tuple[Architecture, str]:
    """The architecture a training stage builds for ``role`` ("teacher"/"student") and where it came from
    (``model.arch_source``: the search's, or the authors' published Fig. 6 networks)."""
    if architecture_source(cfg) == "published":
        return published_architecture(role), "published"
    try:
        return Architecture.from_json(upstream_path(cfg, "01_search", f"arch_{role}.json")), "searched"
    except FileNotFoundError as e:
        raise StageInputMissing(
            f"model.arch_source='searched' but {e}; run notebooks/01_search.ipynb first or set "
            "model.arch_source='published'"
        ) from e


def load_teacher(cfg: RunConfig, num_classes: int, seed: int) -> tuple[nn.Module, str]:
    """The teacher of ``03_distill``'s run of ``seed`` (CPU, eval mode) and a description of its source: the
    ``02_teacher`` best checkpoint of its teacher seed (:func:`~fasterseg_core.runs.teacher_seed`), or
    ``distill.teacher_checkpoint`` (ours, or the authors' ``weights0.pt``)."""
    if cfg.distill.teacher_checkpoint:
        path = resolve_path(cfg.distill.teacher_checkpoint)
        if not path.exists():
            raise StageInputMissing(f"distill.teacher_checkpoint {path} does not exist")
        try:  # ours (stores its architecture) …
            net, _ = load_checkpoint_model(path, None, num_classes, official=False)
        except CheckpointMismatchError:
            raise
        except ValueError:  # … or the authors' plain state dict of the published teacher (weights0.pt)
            net, _ = load_checkpoint_model(path, "teacher", num_classes, official=True)
        return net.eval(), str(path)
    t_seed = teacher_seed(cfg, seed)
    try:
        path = upstream_path(cfg, "02_teacher", "checkpoints", "best.pt", seed=t_seed)
    except FileNotFoundError as e:
        raise StageInputMissing(
            f"03_distill needs a trained teacher: {e}. Run notebooks/02_teacher.ipynb first (make report "
            "runs the stages in order), or set distill.teacher_checkpoint to a checkpoint, e.g. the authors' "
            "released weights0.pt (Cityscapes, 19 classes)"
        ) from e
    net, _ = load_checkpoint_model(path, None, num_classes)
    return net.eval(), f"02_teacher seed {t_seed} best"


def training_spec(cfg: RunConfig, stage: str) -> TrainConfig:
    """The training settings a training stage runs with (``cfg.teacher``, ``cfg.distill`` or ``cfg.student``)."""
    return getattr(cfg, get_stage(stage).section)


def resolved_config(cfg: RunConfig, run: Run) -> pd.DataFrame:
    """What a training notebook shows first: device, hardware, dataset, architecture source, the stage's
    training settings (``<section>.<key>``) and its seeds, as one column."""
    section = get_stage(run.stage).section
    shown = {"device": str(run.device), "hardware": run.hardware, "dataset": cfg.data.dataset,
             "architecture": architecture_source(cfg)}
    shown |= {f"{section}.{k}": v for k, v in to_dict(training_spec(cfg, run.stage)).items()}
    return pd.Series(shown | {"seeds": list(stage_seeds(cfg, run.stage))}, name="resolved config").to_frame()


def run_training(cfg: RunConfig, run: Run, *, progress: bool = True) -> TrainStageResult:
    """Stage ``02_teacher``, ``03_distill`` or ``04_student``: one run per seed of the stage
    (:func:`~fasterseg_core.runs.stage_seeds`), each into ``<stage>/seed-<s>/`` (a seed already complete for
    this config is reused, e.g. one a cluster sweep trained, unless the stage's run is ``fresh``: ``--force``
    retrains every seed, its old results set aside), then the aggregate over the seeds.

    Returns:
        A :class:`TrainStageResult`; ``run.finish(result.metrics)`` is the notebook's.
    """
    def start(seed: int) -> Run:
        return start_run(cfg, run.stage, run.hardware, seed=seed, per_seed=True, fresh=run.fresh)

    seeds = train_seeds(cfg, run.stage, stage_seeds(cfg, run.stage), start, fresh=run.fresh, progress=progress)
    return aggregate_seeds(run.stage, seeds)


def train_seeds(cfg: RunConfig, stage: str, seeds: Sequence[int], start: Callable[[int], Run], *, fresh: bool,
                progress: bool = True) -> dict[int, SeedResult]:
    """The one seed loop of a training stage (the notebook's :func:`run_training` and ``train --stage``).

    Args:
        seeds: the seeds to run, in order.
        start: opens one seed's run (``<stage>/seed-<s>/``); under ``torchrun`` the command line opens it on
            rank 0 and a writer-less one on the other ranks.
        fresh: retrain seeds already complete for this config (``--force``); otherwise they are read back.

    Returns:
        Each seed's result, trained here or read back.
    """
    out: dict[int, SeedResult] = {}
    for seed in seeds:
        if not fresh and is_complete(cfg, stage, any_hardware=True, seed=seed):
            out[seed] = load_seed_result(cfg, stage, seed)
            print(f"{stage} seed {seed}: complete for this config, reused (--force retrains it)", flush=True)
            continue
        run = start(seed)
        try:
            out[seed] = train_seed(cfg, run, progress=progress)
        except Exception as e:
            run.fail(f"{type(e).__name__}: {e}")
            raise
        if current_dist().main:  # rank 0 writes (train_seed joined the group, if any)
            run.finish(out[seed].metrics)
            best = out[seed].metrics["best"]
            world = current_dist().world
            print(f"{stage} seed {seed}: best epoch {best['epoch']}, val mIoU {best['val']['miou']:.4f} "
                  f"({world} process{'es' if world > 1 else ''})", flush=True)
    return out


def load_seed_result(cfg: RunConfig, stage: str, seed: int) -> SeedResult:
    """A finished seed run of a training stage, read back from its folder."""
    folder = stage_dir(cfg, stage, seed)
    files = {"history": folder / "history.csv", "per_class": folder / "per_class_iou.csv",
             "predictions": folder / "predictions"}
    return SeedResult(seed, load_json(folder / "metrics.json"), pd.read_csv(files["history"]),
                      pd.read_csv(files["per_class"]), files)


def aggregate_seeds(stage: str, seeds: dict[int, SeedResult]) -> TrainStageResult:
    """The stage's metrics over its seeds: every seed's metrics, and per split, checkpoint and score the
    n, mean, sd and 95 % Student-t interval (:func:`fasterseg_core.evidence.summarize`)."""
    summary: dict[str, Any] = {}
    first = next(iter(seeds.values())).metrics
    for split in ("val", "test"):
        for which in first.get(split, {}):
            for key in SCORE_KEYS:
                values = [r.metrics[split][which][key] for r in seeds.values()]
                if all(v is not None for v in values):
                    summary.setdefault(split, {}).setdefault(which, {})[key] = asdict(summarize(values))
    common = {k: first[k] for k in ("role", "distilled", "arch_source", "num_classes", "class_names", "dataset",
                                    "epochs", "iters_per_epoch", "batch_size", "crop_hw", "params")}
    metrics = {"stage": stage, **common, "seeds": list(seeds), "per_seed": {s: r.metrics for s, r in seeds.items()},
               "summary": summary}
    history = pd.concat([r.history.assign(seed=s) for s, r in seeds.items()], ignore_index=True)
    per_class = pd.concat([r.per_class.assign(seed=s) for s, r in seeds.items()], ignore_index=True)
    return TrainStageResult(metrics, history, per_class, seeds)


def train_seed(cfg: RunConfig, run: Run, *, progress: bool = True) -> SeedResult:
    """Train one seed of the stage ``run.stage`` into its run folder (``<stage>/seed-<s>/``), then evaluate
    its best and last checkpoints on val and test and write every artifact there.

    The seed sets the initial weights, the data order and the augmentation (§9.2), so the distilled and the
    scratch student of one seed differ only by the teacher. Resumes from ``checkpoints/last.pt`` when it was
    trained from the same settings. Under ``torchrun`` every rank trains; rank 0 evaluates and writes.

    Returns:
        A :class:`SeedResult` (rank 0; other ranks get the history only).
    """
    stage = get_stage(run.stage)
    seed = run.seed if run.seed is not None else cfg.seeds[0]
    spec = training_spec(cfg, stage.name)
    info = init_distributed(run.device)
    device = local_device(run.device, info)
    train_set = build_dataset(cfg.data, "train", train=True, crop_hw=tuple(spec.crop_size_hw))
    val_set = build_dataset(cfg.data, "val", train=False)
    num_classes = train_set.num_classes
    arch, arch_source = stage_architecture(cfg, stage.role)
    teacher, teacher_source = None, ""
    if stage.section == "distill":  # loaded before the student is seeded: building it draws random numbers
        teacher, teacher_source = load_teacher(cfg, num_classes, seed)
    weight = None  # class_weighting counts the training split's pixels: one pass over its labels
    if spec.class_weighting != "none":
        weight = class_weights(split_summary(train_set)["pixel_counts"], spec.class_weighting)
    loss_fn = training_loss(spec, teacher, device, info.world, weight)
    torch.manual_seed(seed)  # §9.2 seed: the same initial weights on every rank and every rerun
    net = build_network(arch, num_classes)
    init_weights_(net)  # §7.3
    if info.main:
        arch.to_json(run.path("arch.json"))
    extra = {"arch": arch.to_dict(), "num_classes": num_classes, "role": stage.role}
    result = fit(spec, net, loss_fn, train_set, val_set, device, run.dir, seed=seed, extra_state=extra,
                 key=resume_key(cfg, stage.name, seed), num_workers=cfg.data.num_workers, progress=progress)
    history = pd.DataFrame(result.history)
    splits = {"val": val_set}
    if cfg.data.dataset != "cityscapes" and cfg.data.score_test:  # Cityscapes withholds its test labels
        splits["test"] = build_dataset(cfg.data, "test", train=False)
    # every rank scores its share of the images (all-reduced inside evaluate); rank 0 writes
    files: dict[str, Path] = {}
    scores, per_class = _score_checkpoints(run, result, arch, splits, device, spec.eval_flip, progress,
                                           files if info.main else None, channels_last=spec.channels_last)
    if not info.main:
        return SeedResult(seed, {}, history, per_class)
    files["history"] = save_csv(history, run.path("history.csv"), index=False)
    files["per_class"] = save_csv(per_class, run.path("per_class_iou.csv"), index=False)
    train_seconds = history["seconds"].median() if len(history) else float("nan")
    metrics = {
        "stage": run.stage, "role": stage.role, "distilled": stage.section == "distill",
        "arch_source": arch_source, "num_classes": num_classes, "class_names": list(train_set.table.class_names),
        "dataset": cfg.data.dataset, "epochs": spec.epochs, "iters_per_epoch": spec.iters_per_epoch,
        "batch_size": spec.batch_size, "crop_hw": list(spec.crop_size_hw),
        "params": sum(p.numel() for p in net.parameters()), "seconds_total": result.seconds_total,
        "seconds_per_epoch": float(train_seconds),
        "images_per_s": spec.iters_per_epoch * spec.batch_size / float(train_seconds),
        "resumed_from_epoch": result.resumed_from, "world_size": info.world,
        "best": {"epoch": scores["val"]["best"]["epoch"], "val": _strip_iou(scores["val"]["best"])},
        "last": {"epoch": scores["val"]["last"]["epoch"], "val": _strip_iou(scores["val"]["last"])},
        "val": scores["val"],
        **({"test": scores["test"]} if "test" in scores else {}),
        **({"teacher_source": teacher_source} if teacher_source else {}),
        **({"class_weights": weight.tolist()} if weight is not None else {}),
    }
    save_json(metrics, run.path("metrics.json"))
    return SeedResult(seed, metrics, history, per_class, files)


def _score_checkpoints(run: Run, result: TrainResult, arch: Architecture, splits: dict[str, Any],
                       device: torch.device, flip: bool, progress: bool, files: dict[str, Path] | None, *,
                       channels_last: bool = False) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Scores of the best and last checkpoints on every split and per-class IoU rows; with ``files`` (rank 0)
    the best checkpoint's confusion matrices and coloured predictions are written into the run folder.
    ``channels_last``: the weights in the layout the stage trained and validated them in (speed only: fp32 as
    before, scores equal to ~1e-7)."""
    names = list(splits["val"].class_names)
    scores: dict[str, dict[str, Any]] = {split: {} for split in splits}
    rows: list[dict[str, Any]] = []
    for which in ("best", "last"):
        model, ckpt = load_checkpoint_model(result.checkpoint_dir / f"{which}.pt", arch, len(names))
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        if which == "last" and ckpt["epoch"] == scores["val"]["best"]["epoch"]:
            # the best epoch is the last one: same weights, same scores
            for split in splits:
                scores[split]["last"] = scores[split]["best"]
            rows += [r | {"checkpoint": "last"} for r in rows if r["checkpoint"] == "best"]
            break
        for split, dataset in splits.items():
            cm: ConfusionMatrix = evaluate(model, dataset, device, flip=flip, progress=progress,
                                           desc=f"{which} on {split}")
            s = cm.compute()
            scores[split][which] = _null_nan({k: s[k] for k in (*SCORE_KEYS, "iou")} | {"epoch": ckpt["epoch"]})
            rows += [{"split": split, "checkpoint": which, "class": n, "iou": v} for n, v in zip(names, s["iou"])]
            if which == "best" and files is not None:
                files[f"confusion_{split}"] = save_csv(pd.DataFrame(cm.mat.numpy(), index=names, columns=names),
                                                       run.path(f"confusion_{split}_best.csv"))
        if which == "best" and files is not None:
            ds = splits["test" if "test" in splits else "val"]
            picks = sorted({i * len(ds) // 4 for i in range(min(4, len(ds)))})
            files["predictions"] = run.dir / "predictions"
            save_colour_predictions(model, ds, picks, files["predictions"], device, ds.table)
    return scores, pd.DataFrame(rows)


def _null_nan(scores: dict[str, Any]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        return [clean(x) for x in v] if isinstance(v, list) else v

    return {k: clean(v) for k, v in scores.items()}


def _strip_iou(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: scores[k] for k in SCORE_KEYS}


def scores_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per (split, checkpoint, seed) of a training stage's ``metrics.json`` and one "mean" row per
    (split, checkpoint) over the seeds: epoch and the four scores in %, the mean rows with their 95 %
    Student-t interval (``low``/``high``, mIoU). Where the best checkpoint is the last one (same epoch), its
    scores are one row, ``best = last``, not two equal ones; the mean rows too when that holds for every seed."""
    rows = []
    same = {}  # seed → whether its best epoch is its last
    for seed, m in metrics["per_seed"].items():
        val = m.get("val", {})  # the checkpoints' epochs: best is chosen on val
        same[seed] = "best" in val and "last" in val and val["best"]["epoch"] == val["last"]["epoch"]
        for split in ("val", "test"):
            for which, sc in m.get(split, {}).items():
                if same[seed] and which == "last":
                    continue
                rows.append({"split": split, "checkpoint": "best = last" if same[seed] else which, "seed": str(seed),
                             "epoch": sc["epoch"]} | {k: None if sc[k] is None else 100 * sc[k] for k in SCORE_KEYS})
    all_same = bool(same) and all(same.values())
    for split, by in metrics.get("summary", {}).items():
        for which, keys in by.items():
            if all_same and which == "last":
                continue
            miou = keys.get("miou", {})
            rows.append({"split": split, "checkpoint": "best = last" if all_same else which,
                         "seed": f"mean of {miou.get('n')}"}
                        | {k: 100 * v["mean"] for k, v in keys.items()}
                        | {"mIoU low": 100 * miou.get("ci_low", float("nan")),
                           "mIoU high": 100 * miou.get("ci_high", float("nan"))})
    return pd.DataFrame(rows).set_index(["split", "checkpoint", "seed"]).sort_index().round(2)


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
        for stage in ("02_teacher", "03_distill"):  # trained teacher and (distilled) student weights
            if c.arch is None:
                continue
            try:
                first = stage_seeds(cfg, stage)[0]  # the first seed's weights stand for the network
                upstream_path(cfg, stage, "checkpoints", "best.pt", seed=first)  # complete, same config
                net, info = load_stage_model(cfg, stage, "best", seed=first)
            except (FileNotFoundError, ValueError):
                continue
            if info["arch"] == c.arch.to_dict() and info["num_classes"] == val.num_classes:
                c.net, c.source = net.eval(), f"{c.source}; weights: {stage} best checkpoint"
    images, labels = real_images(val, tuple(lc.input_hw), lc.agreement_images)
    # The search's table of this device (when it timed one at this size) prices the networks here too: one table
    # latency per network in the whole run, not a second timing of the same entries that differs by its noise.
    cached = lut_cache_path(cfg, run.hardware, tuple(lc.input_hw))
    table = LatencyTable.load(cached) if cached.exists() and not cfg.search.latency_table else None
    record = measure_suite(candidates, lc.backends, tuple(lc.input_hw), run.device, run.hardware, val.num_classes,
                           images=images, labels=labels, warmup=lc.warmup_iters, min_loop_s=lc.min_loop_seconds,
                           timed_s=lc.timed_seconds, num_threads=lc.num_threads, progress=progress,
                           table=table)
    path = record.save(cfg.output_dir / "latency" / f"{run.hardware}.json")
    frame = record.frame()
    student = frame[(frame.network == "published student") & (frame.backend == "eager")].median_ms
    return LatencyStageResult(record, path, load_records(path.parent),
                              float(student.iloc[0]) if len(student) and student.iloc[0] else None)
