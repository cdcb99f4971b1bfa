"""The three training stages of spec §9 on top of :mod:`fasterseg_core.engine`, and their ``torchrun`` CLI.

* ``02_teacher`` — the teacher architecture (index 0) from scratch, segmentation loss only.
* ``03_distill`` — the student (index 1) from scratch plus the KL term against the frozen teacher: this
  run's ``02_teacher`` best checkpoint, or ``distill.teacher_checkpoint`` (ours, or the authors' released
  ``weights0.pt`` through :func:`~fasterseg_core.models.load_official_state_dict`).
* ``04_student`` — the student from scratch without the teacher (the reproduction study's extension).

Architectures: the search's ``arch_{teacher,student}.json`` when ``01_search`` completed for this config
(``model.arch_source: auto``), else the published Fig. 6 networks. Each stage writes the artifacts listed
in the README (history, best/last checkpoints, per-class IoU, confusion matrices, coloured predictions).

Multi-process, e.g. two CPU processes or eight GPUs::

    torchrun --nproc-per-node 2 -m fasterseg_core.training --profile smoke --stage 02_teacher
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .config import RunConfig, TrainConfig, load_config, to_dict
from .data import build_dataset
from .engine import TrainResult, current_dist, init_distributed, train
from .evaluate import evaluate, load_checkpoint_model
from .export import save_colour_predictions
from .metrics import ConfusionMatrix
from .models import (
    Architecture,
    CheckpointMismatchError,
    build_network,
    init_weights_,
    published_architecture,
)
from .runs import REPO_ROOT, Run, save_json, start_run, upstream_path

_log = logging.getLogger(__name__)

# stage → (config section, architecture role)
TRAIN_STAGES = {"02_teacher": ("teacher", "teacher"), "03_distill": ("distill", "student"),
                "04_student": ("student", "student")}  # fmt: skip
EVAL_KEYS = ("miou", "miou_no_back", "pixel_acc", "mean_class_acc")


class StageInputMissing(FileNotFoundError):
    """A stage needs an artifact of an earlier stage that has not run (the message names it)."""


def stage_architecture(cfg: RunConfig, role: str) -> tuple[Architecture, str]:
    """The architecture a training stage builds for ``role`` ("teacher"/"student") and where it came from.

    ``model.arch_source``: "searched" requires a complete ``01_search`` of this config; "published" takes
    the authors' Fig. 6 networks; "auto" the searched one when present, else the published one.
    """
    source = cfg.model.arch_source
    if source in ("auto", "searched"):
        try:
            return Architecture.from_json(upstream_path(cfg, "01_search", f"arch_{role}.json")), "searched"
        except FileNotFoundError as e:
            if source == "searched":
                raise StageInputMissing(
                    f"model.arch_source='searched' but {e}; run notebooks/01_search.ipynb first or set "
                    "model.arch_source='published'"
                ) from e
    return published_architecture(role), "published"


def load_teacher(cfg: RunConfig, num_classes: int) -> tuple[nn.Module, str]:
    """The frozen teacher of ``03_distill`` (CPU, eval mode) and a description of its source."""
    path_str = cfg.distill.teacher_checkpoint
    if path_str:
        path = Path(path_str)
        path = path if path.is_absolute() else REPO_ROOT / path
        if not path.exists():
            raise StageInputMissing(f"distill.teacher_checkpoint {path} does not exist")
        try:  # ours (stores its architecture) …
            net, _ = load_checkpoint_model(path, None, num_classes, official=False)
        except CheckpointMismatchError:
            raise
        except ValueError:  # … or the authors' plain state dict of the published teacher (weights0.pt)
            net, _ = load_checkpoint_model(path, "teacher", num_classes, official=True)
        return net.eval(), str(path)
    try:
        path = upstream_path(cfg, "02_teacher", "checkpoints", "best.pt")
    except FileNotFoundError as e:
        raise StageInputMissing(
            f"03_distill needs a trained teacher: {e}. Run notebooks/02_teacher.ipynb first (make report "
            "runs the stages in order), or set distill.teacher_checkpoint to a checkpoint, e.g. the authors' "
            "released weights0.pt (Cityscapes, 19 classes)"
        ) from e
    net, _ = load_checkpoint_model(path, None, num_classes)
    return net.eval(), "02_teacher best"


def _stage_key(cfg: RunConfig, spec: TrainConfig, arch: Architecture, teacher_source: str) -> str:
    """What the weights are trained from. ``epochs`` and ``eval_every_epochs`` are left out on purpose:
    raising ``epochs`` continues a finished run instead of starting over (the lr schedule is per epoch)."""
    section = {k: v for k, v in to_dict(spec).items() if k not in ("epochs", "eval_every_epochs")}
    blob = {"data": to_dict(cfg.data), "spec": section, "arch": arch.to_dict(), "teacher": teacher_source}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainStageResult:
    """What a training stage's notebook shows."""

    metrics: dict[str, Any]
    history: pd.DataFrame
    per_class: pd.DataFrame
    train: TrainResult
    files: dict[str, Path] = field(default_factory=dict)


def _null_nan(scores: dict[str, Any]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return {k: clean(v) for k, v in scores.items()}


def run_training(cfg: RunConfig, run: Run, *, progress: bool = True) -> TrainStageResult:
    """Train the stage ``run.stage`` (``02_teacher``, ``03_distill`` or ``04_student``), then evaluate its
    best and last checkpoints on val and test and write every artifact into ``run.dir``.

    Resumes from ``checkpoints/last.pt`` when it was trained from the same data, recipe and architecture.
    Under ``torchrun`` every rank trains; rank 0 evaluates and writes.

    Returns:
        A :class:`TrainStageResult` (rank 0; other ranks get the training history only).
    """
    if run.stage not in TRAIN_STAGES:
        raise ValueError(f"{run.stage!r} is not a training stage; choose one of {list(TRAIN_STAGES)}")
    section, role = TRAIN_STAGES[run.stage]
    spec: TrainConfig = getattr(cfg, section)
    device = run.device
    info = init_distributed(device)
    if device.type == "cuda" and info.world > 1:
        device = torch.device("cuda", info.local_rank)

    train_set = build_dataset(cfg.data, "train", train=True, crop_hw=tuple(spec.crop_size_hw))
    val_set = build_dataset(cfg.data, "val", train=False)
    num_classes = train_set.num_classes
    arch, arch_source = stage_architecture(cfg, role)
    teacher, teacher_source = (None, "")
    if section == "distill":
        teacher, teacher_source = load_teacher(cfg, num_classes)
    torch.manual_seed(spec.seed)  # §9.2 seed: the same initial weights on every rank and every rerun
    net = build_network(arch, num_classes)
    init_weights_(net)  # §7.3
    if info.main:
        arch.to_json(run.path("arch.json"))
    extra = {"arch": arch.to_dict(), "num_classes": num_classes, "role": role}
    result = train(
        spec, net, train_set, val_set, device, run.dir, teacher=teacher,
        key=_stage_key(cfg, spec, arch, teacher_source), extra_state=extra,
        num_workers=cfg.data.num_workers, progress=progress,
    )  # fmt: skip
    history = pd.DataFrame(result.history)
    files = {"history": run.path("history.csv")} if info.main else {}
    if info.main:
        history.to_csv(files["history"], index=False)
    splits = {"val": val_set}
    if cfg.data.dataset != "cityscapes":  # Cityscapes test labels are withheld (server evaluation)
        splits["test"] = build_dataset(cfg.data, "test", train=False)
    names = list(train_set.table.class_names)
    scores: dict[str, dict[str, Any]] = {split: {} for split in splits}
    rows = []
    for which in ("best", "last"):
        model, ckpt = load_checkpoint_model(result.checkpoint_dir / f"{which}.pt", arch, num_classes)
        model.to(device)
        if which == "last" and ckpt["epoch"] == scores["val"]["best"]["epoch"]:
            # the best epoch is the last one: same weights, same scores
            for split in splits:
                scores[split]["last"] = scores[split]["best"]
            rows += [r | {"checkpoint": "last"} for r in rows if r["checkpoint"] == "best"]
            break
        for split, dataset in splits.items():
            # every rank evaluates its share (all-reduced inside evaluate); rank 0 writes
            cm: ConfusionMatrix = evaluate(model, dataset, device, flip=spec.eval_flip,
                                           progress=progress, desc=f"{which} on {split}")  # fmt: skip
            s = cm.compute()
            scores[split][which] = _null_nan(
                {k: s[k] for k in (*EVAL_KEYS, "iou")} | {"epoch": ckpt["epoch"]}
            )
            rows += [
                {"split": split, "checkpoint": which, "class": n, "iou": v} for n, v in zip(names, s["iou"])
            ]
            if which == "best" and info.main:
                files[f"confusion_{split}"] = run.path(f"confusion_{split}_best.csv")
                pd.DataFrame(cm.mat.numpy(), index=names, columns=names).to_csv(files[f"confusion_{split}"])
        if which == "best" and info.main:
            ds = splits["test" if "test" in splits else "val"]
            picks = sorted({i * len(ds) // 4 for i in range(min(4, len(ds)))})
            files["predictions"] = run.dir / "predictions"
            save_colour_predictions(model, ds, picks, files["predictions"], device, train_set.table)
    if not info.main:
        return TrainStageResult({}, history, pd.DataFrame(rows), result)
    per_class = pd.DataFrame(rows)
    files["per_class"] = run.path("per_class_iou.csv")
    per_class.to_csv(files["per_class"], index=False)

    train_seconds = history["seconds"].median() if len(history) else float("nan")
    metrics = {
        "stage": run.stage, "role": role, "distilled": section == "distill", "arch_source": arch_source,
        "num_classes": num_classes, "class_names": names, "dataset": cfg.data.dataset,
        "epochs": spec.epochs, "iters_per_epoch": spec.iters_per_epoch, "batch_size": spec.batch_size,
        "crop_hw": list(spec.crop_size_hw), "params": sum(p.numel() for p in net.parameters()),
        "seconds_total": result.seconds_total, "seconds_per_epoch": float(train_seconds),
        "images_per_s": spec.iters_per_epoch * spec.batch_size / float(train_seconds),
        "resumed_from_epoch": result.resumed_from, "world_size": info.world,
        "best": {"epoch": scores["val"]["best"]["epoch"], "val": _strip_iou(scores["val"]["best"])},
        "last": {"epoch": scores["val"]["last"]["epoch"], "val": _strip_iou(scores["val"]["last"])},
        "val": scores["val"],
        **({"test": scores["test"]} if "test" in scores else {}),
        **({"teacher_source": teacher_source} if teacher_source else {}),
    }  # fmt: skip
    save_json(metrics, run.path("metrics.json"))
    return TrainStageResult(metrics, history, per_class, result, files)


def scores_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per (split, checkpoint) of a stage's ``metrics.json``: epoch and the four scores in %."""
    rows = []
    for split in ("val", "test"):
        for which, s in metrics.get(split, {}).items():
            rows.append({"split": split, "checkpoint": which, "epoch": s["epoch"]}
                        | {k: None if s[k] is None else 100 * s[k] for k in EVAL_KEYS})  # fmt: skip
    return pd.DataFrame(rows).set_index(["split", "checkpoint"]).round(2)


def _strip_iou(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: scores[k] for k in EVAL_KEYS}


# ---- CLI (also the torchrun entry point) -----------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m fasterseg_core.training --profile P --stage 02_teacher [--overrides JSON]``.

    Under ``torchrun`` every process runs this; rank 0 opens the run folder and writes the artifacts.
    """
    parser = argparse.ArgumentParser(prog="python -m fasterseg_core.training", description=main.__doc__)
    parser.add_argument("--profile", default="camvid-cpu")
    parser.add_argument("--stage", required=True, choices=list(TRAIN_STAGES))
    parser.add_argument("--overrides", default="{}", help="JSON, e.g. '{\"teacher.epochs\": 2}'")
    parser.add_argument("--hardware-tag", default="")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.profile, json.loads(args.overrides))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    section = TRAIN_STAGES[args.stage][0]
    if rank == 0:
        run = start_run(cfg, args.stage, hardware_tag=args.hardware_tag, seed=getattr(cfg, section).seed)
    else:  # other ranks write nothing; they need the folder and device only
        from .runs import resolve_device, resolve_hardware_tag, stage_dir

        run = Run(cfg, args.stage, stage_dir(cfg, args.stage), resolve_device(cfg.device),
                  resolve_hardware_tag(cfg, args.hardware_tag))  # fmt: skip
    result = run_training(cfg, run, progress=not args.no_progress and rank == 0)
    if current_dist().main:
        run.finish(result.metrics)
        val = result.metrics["best"]["val"]
        print(f"{args.stage}: best epoch {result.metrics['best']['epoch']}, val mIoU {val['miou']:.4f} "
              f"({world} process{'es' if world > 1 else ''})")  # fmt: skip
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
