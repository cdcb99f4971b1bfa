"""Evaluation of a trained FasterSeg network per spec §9.4: whole image, single scale, optional flip.

* :func:`predict_logits` — eval-mode logits of a batch, optionally averaged with the flipped image.
* :func:`evaluate` — one :class:`~fasterseg_core.metrics.ConfusionMatrix` over a whole split, sharded
  over the processes of a ``torch.distributed`` group (each rank evaluates every world-size-th image) and
  summed with ``all_reduce``.
* :func:`load_stage_model` — the best or last network a training stage wrote
  (``outputs/<profile>/<stage>/checkpoints/{best,last}.pt``, format in ``notes/train_artifacts.md``).
* :func:`load_checkpoint_model` — any checkpoint file: ours, or the authors' released plain state dicts
  (``weights0.pt`` teacher, ``weights1.pt`` student, spec §7, §9.2).

    cm = evaluate(net, build_dataset(cfg.data, "val", train=False), device)
    cm.compute()["miou"]

Command line (prints mIoU, mIoU without class 0, pixel accuracy and per-class IoU)::

    python -m fasterseg_core.evaluate --profile camvid-cpu --stage 03_distill --which best --split test
    python -m fasterseg_core.evaluate --profile cityscapes-paper --checkpoint weights1.pt --arch student \
        --split val --flip --colour-dir preds --colour-count 8
    python -m fasterseg_core.evaluate --profile cityscapes-paper --checkpoint weights1.pt --arch student \
        --split test --submission outputs/submission.zip
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from .config import RunConfig
from .metrics import ConfusionMatrix
from .models import (
    Architecture,
    CheckpointMismatchError,
    FasterSegNetwork,
    build_network,
    load_official_state_dict,
    published_architecture,
)
from .runs import load_torch, stage_dir

TRAIN_FORMAT = "fasterseg-train/1"  # our training checkpoints (notes/train_artifacts.md)
# Training stages that write checkpoints, and the short names the command line also accepts.
STAGES = ("02_teacher", "03_distill", "04_student")
_STAGE_ALIASES = {"teacher": "02_teacher", "distill": "03_distill", "student": "04_student"}
# Training-only entries of last.pt that evaluation never needs (dropped from the returned info).
_TRAINING_STATE = ("model", "optimizer", "scheduler", "rng", "history")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict_logits(net: nn.Module, images: torch.Tensor, *, flip: bool = False) -> torch.Tensor:
    """Logits of the network's ``out`` for a batch, in eval mode.

    Args:
        net: a network returning ``{"out": (N, C, H, W), ...}``; the caller sets ``eval()``.
        images: (N, 3, H, W) float, normalised, on the network's device.
        flip: also run the horizontally flipped batch and add its (flipped back) softmax, as the authors'
            ``eval_flip`` (§9.4). The result is then a sum of probabilities, not logits; its argmax is the
            prediction either way.

    Returns:
        (N, C, H, W) float.
    """
    out = net(images)["out"]
    if not flip:
        return out
    flipped = net(images.flip(-1))["out"].flip(-1)
    return out.softmax(1) + flipped.softmax(1)


@torch.no_grad()
def evaluate(
    net: nn.Module,
    dataset: Dataset,
    device: torch.device | str,
    *,
    flip: bool = False,
    max_images: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> ConfusionMatrix:
    """Confusion matrix of the network over a split, whole images at batch 1 (§9.4).

    Args:
        net: the network (its training mode is restored afterwards).
        dataset: (image (3, H, W) float, label (H, W) int64) items with the evaluation transform; the
            number of classes is ``dataset.num_classes`` when present, else the network's.
        device: where to run.
        flip: add the flipped prediction (§9.4 ``eval_flip``).
        max_images: evaluate images ``i · len / max_images`` only (evenly spaced: video datasets list
            consecutive frames); 0 = all.
        progress: show a tqdm bar (rank 0 only).
        desc: the bar's label.

    Returns:
        The confusion matrix, summed over all processes of the distributed group when one is initialised.
    """
    num_classes = getattr(dataset, "num_classes", None) or net.num_classes
    net_classes = getattr(net, "num_classes", None)
    if net_classes is not None and net_classes != num_classes:
        raise ValueError(
            f"the network predicts {net_classes} classes but the dataset has {num_classes}; evaluate it on "
            "the dataset it was trained for (profile / data.dataset), or build it with matching num_classes"
        )
    n = len(dataset)
    indices: Iterable[int] = range(n)
    if 0 < max_images < n:
        indices = [i * n // max_images for i in range(max_images)]
    rank, world = _rank_world()
    indices = list(indices)[rank::world]
    cm = ConfusionMatrix(num_classes)
    cm.mat = cm.mat.to(device)
    was_training = net.training
    net.eval()
    if progress and rank == 0:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=desc, leave=False)
    try:
        for i in indices:
            image, label = dataset[i]
            logits = predict_logits(net, image[None].to(device), flip=flip)
            cm.update(logits.argmax(1), label[None].to(device))
    finally:
        net.train(was_training)
    cm.all_reduce()
    cm.mat = cm.mat.cpu()
    return cm


# ---------------------------------------------------------------------------------------------------
# loading trained networks


def resolve_architecture(arch: str | Path | Architecture) -> Architecture:
    """``"teacher"``/``"student"`` (the published networks, §6), a ``fasterseg-arch/1`` JSON path, or as is."""
    if isinstance(arch, Architecture):
        return arch
    if str(arch) in ("teacher", "student"):
        return published_architecture(str(arch))
    path = Path(arch)
    if not path.is_file():
        raise FileNotFoundError(
            f"architecture {str(arch)!r} is neither 'teacher'/'student' (the published networks) nor an "
            "existing arch JSON file (e.g. outputs/<profile>/01_search/arch_student.json)"
        )
    return Architecture.from_json(path)


def _strip_prefix(sd: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _build_and_load(
    arch: Architecture, num_classes: int, state_dict: Mapping[str, Any], path: Path, what: str
) -> FasterSegNetwork:
    """Build ``arch`` (aux heads only when the weights have them) and load ``state_dict`` strictly."""
    # torch.compile wraps the module as ``_orig_mod``; DistributedDataParallel's ``module.`` is handled
    # by load_official_state_dict.
    state_dict = _strip_prefix(state_dict, "_orig_mod.")
    has_aux = any(k.startswith(("heads16.", "heads32.", "module.heads16.")) for k in state_dict)
    net = build_network(arch, num_classes, aux=has_aux)
    try:
        load_official_state_dict(net, state_dict, strict=True)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(
            f"{path}: the {what} does not fit the {arch.role} architecture it was loaded into "
            f"({num_classes} classes).\n{e}"
        ) from None
    return net


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return load_torch(path)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise ValueError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "expected a torch.save file of tensors and plain containers (ours or the authors' state dict)"
        ) from e


def _is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == TRAIN_FORMAT


def _network_from_training_checkpoint(
    ckpt: Mapping[str, Any],
    path: Path,
    arch: str | Path | Architecture | None = None,
    num_classes: int | None = None,
) -> tuple[FasterSegNetwork, dict[str, Any]]:
    missing = [k for k in ("model", "arch", "num_classes") if k not in ckpt]
    if missing:
        raise ValueError(
            f"{path}: a {TRAIN_FORMAT} checkpoint without {missing}; it was not written by the engine"
        )
    own = Architecture.from_dict(ckpt["arch"])
    if arch is not None:
        given = resolve_architecture(arch)
        if given != own:
            raise CheckpointMismatchError(
                f"{path} was trained for its own {own.role} architecture, which differs from the given "
                f"{given.role} architecture ({arch}); leave the architecture out to use the checkpoint's"
            )
    k = int(ckpt["num_classes"])
    if num_classes is not None and num_classes != k:
        raise CheckpointMismatchError(f"{path} predicts {k} classes, not the {num_classes} asked for")
    net = _build_and_load(own, k, ckpt["model"], path, "checkpoint's model state")
    info = {key: v for key, v in ckpt.items() if key not in _TRAINING_STATE}
    info.update(path=str(path), source="ours")
    return net, info


def load_stage_model(
    cfg: RunConfig, stage: str, which: str = "best", device: torch.device | str = "cpu"
) -> tuple[FasterSegNetwork, dict]:
    """The network a training stage saved, ready for evaluation.

    Reads ``outputs/<profile>/<stage>/checkpoints/{best,last}.pt``, builds the architecture stored in it
    and loads its weights strictly. The stage need not be complete (a running stage's ``last.pt`` is
    evaluated as it is).

    Args:
        cfg: the run configuration (its ``output_dir`` locates the stage).
        stage: ``"02_teacher"``, ``"03_distill"`` or ``"04_student"`` (or ``teacher``/``distill``/``student``).
        which: ``"best"`` (best validation epoch, what the paper reports) or ``"last"`` (final epoch, what
            the authors released; spec §12.2 #4).
        device: where to put the network.

    Returns:
        (network in eval mode on ``device``, checkpoint info: every entry of the checkpoint except the
        training state (model, optimizer, scheduler, rng, history), plus ``path`` and ``source="ours"``).

    Raises:
        FileNotFoundError: the stage has not written that checkpoint (the message names the notebook).
        CheckpointMismatchError: the weights do not fit the architecture stored with them.
    """
    stage = _STAGE_ALIASES.get(stage, stage)
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES} (training stages with checkpoints), not {stage!r}")
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    path = stage_dir(cfg, stage) / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"stage {stage} has no {which} checkpoint for profile {cfg.profile!r} ({path} is missing); run "
            f"notebooks/{stage}.ipynb first (make report PROFILE={cfg.profile}), or evaluate a checkpoint "
            "file with --checkpoint PATH --arch teacher|student"
        )
    ckpt = _load_file(path)
    if not _is_training_checkpoint(ckpt):
        raise ValueError(
            f"{path} is not a {TRAIN_FORMAT} checkpoint (format={ckpt.get('format') if isinstance(ckpt, Mapping) else None!r}); "
            f"rerun stage {stage}"
        )
    net, info = _network_from_training_checkpoint(ckpt, path)
    info["stage"], info["which"] = stage, which
    return net.to(device).eval(), info


def load_checkpoint_model(
    path: str | Path,
    arch: str | Path | Architecture | None = None,
    num_classes: int | None = None,
    official: bool | None = None,
    device: torch.device | str = "cpu",
) -> tuple[FasterSegNetwork, dict]:
    """A network from any checkpoint file: ours (``fasterseg-train/1``) or the authors' plain state dict.

    Args:
        path: the file (``checkpoints/best.pt``, or the authors' ``weights0.pt``/``weights1.pt``).
        arch: ``"teacher"``/``"student"`` (published, §6) or an arch JSON path. Required for the authors'
            weights (they carry no architecture); optional for ours (which store theirs; if given, it
            must be the same).
        num_classes: output classes; ``None`` takes the checkpoint's (ours: stored; authors': the width
            of ``heads8.conv_1x1``).
        official: ``True`` = the authors' format, ``False`` = ours, ``None`` = detect.
        device: where to put the network.

    Returns:
        (network in eval mode on ``device``, info dict with ``path``, ``source`` ("ours"/"official"),
        ``arch`` (arch dict), ``num_classes`` and, for ours, the checkpoint's metadata).

    Raises:
        CheckpointMismatchError: the weights do not fit the architecture (the message says which keys,
            and hints e.g. "this looks like a student checkpoint").
    """
    path = Path(path)
    obj = _load_file(path)
    ours = _is_training_checkpoint(obj)
    if official is None:
        official = not ours
    if official and ours:
        raise ValueError(f"{path} is one of our {TRAIN_FORMAT} checkpoints, not the authors' state dict")
    if not official:
        if not ours:
            raise ValueError(
                f"{path} is not a {TRAIN_FORMAT} checkpoint; for the authors' released weights pass "
                "official=True (command line: leave --official out, it is detected) with an architecture"
            )
        net, info = _network_from_training_checkpoint(obj, path, arch, num_classes)
        return net.to(device).eval(), info
    if arch is None:
        raise ValueError(
            f"{path} is a plain state dict (the authors' format) and carries no architecture; pass "
            "arch='teacher' (weights0.pt), arch='student' (weights1.pt) or an arch JSON path"
        )
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    sd = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    sd = _strip_prefix(_strip_prefix(sd, "module."), "_orig_mod.")
    a = resolve_architecture(arch)
    if num_classes is None:
        head = sd.get("heads8.conv_1x1.weight")
        if not isinstance(head, torch.Tensor):
            raise CheckpointMismatchError(
                f"{path} has no heads8.conv_1x1.weight (the segmentation head); it is not a FasterSeg state dict"
            )
        num_classes = int(head.shape[0])
    net = _build_and_load(a, num_classes, sd, path, "state dict")
    info = {"path": str(path), "source": "official", "arch": a.to_dict(), "num_classes": num_classes}
    return net.to(device).eval(), info


# ---------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fasterseg_core.evaluate",
        description="Evaluate a FasterSeg checkpoint (ours or the authors') per spec §9.4: whole image, "
        "single scale, optional flip. Prints mIoU, mIoU without class 0, pixel accuracy and per-class IoU.",
    )
    p.add_argument(
        "--profile", required=True, help="params/<profile>.yaml (or a YAML path): data and outputs"
    )
    p.add_argument(
        "--overrides", default="", help='JSON dict of dotted overrides, e.g. \'{"data.root": "/d"}\''
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--stage", help=f"a training stage of this profile: {', '.join(STAGES)}")
    src.add_argument("--checkpoint", type=Path, help="a checkpoint file: ours, or the authors' weights0/1.pt")
    p.add_argument("--which", choices=("best", "last"), default="best", help="with --stage (default: best)")
    p.add_argument(
        "--arch", help="with --checkpoint: teacher | student | arch JSON (needed for the authors')"
    )
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--flip", action="store_true", help="add the horizontally flipped prediction (§9.4)")
    p.add_argument("--max-images", type=int, default=0, help="evaluate N evenly spaced images (0 = all)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 … (default: the profile's device)")
    p.add_argument("--json", type=Path, help="write scores, per-class IoU and provenance to this JSON file")
    p.add_argument("--colour-dir", type=Path, help="write image | ground truth | prediction PNGs here")
    p.add_argument("--colour-count", type=int, default=8, help="how many colour PNGs (evenly spaced)")
    p.add_argument(
        "--submission",
        type=Path,
        help="Cityscapes: write label-ID PNGs of the split beside it and zip them here",
    )
    return p


def _format_scores(scores: Mapping[str, Any], frame: Any) -> str:
    pct = frame.copy()
    for col in ("iou", "acc"):
        pct[col] = pct[col] * 100
    pct = pct.rename(columns={"iou": "IoU %", "acc": "acc %"})
    lines = [
        f"mIoU            {scores['miou'] * 100:6.2f} %",
        f"mIoU no back    {scores['miou_no_back'] * 100:6.2f} %   (classes 1…C-1, the authors' 'mean IU no back')",
        f"pixel acc       {scores['pixel_acc'] * 100:6.2f} %",
        f"mean class acc  {scores['mean_class_acc'] * 100:6.2f} %",
        f"pixels          {scores['pixels']}",
        "",
        pct.to_string(float_format=lambda v: f"{v:6.2f}"),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring); returns the process exit status."""
    # Imported here: the data and export modules are needed only by the command line.
    from .config import ConfigError, load_config
    from .data import DatasetError, build_dataset
    from .export import export_cityscapes_submission, save_colour_predictions
    from .runs import resolve_device, save_json

    args = _parser().parse_args(argv)
    try:
        overrides = json.loads(args.overrides) if args.overrides else {}
        if not isinstance(overrides, dict):
            raise TypeError(f"--overrides must be a JSON object, got {args.overrides!r}")
        cfg = load_config(args.profile, overrides)
        device = resolve_device(args.device or cfg.device)
        if args.stage:
            net, info = load_stage_model(cfg, args.stage, args.which, device)
        else:
            net, info = load_checkpoint_model(args.checkpoint, args.arch, device=device)
        dataset = build_dataset(cfg.data, args.split, train=False)
        # Cityscapes test labels are not public (its gtFine/test files mark every pixel as ignored):
        # scoring them would only cost a full pass over 1525 images.
        unlabelled = cfg.data.dataset == "cityscapes" and args.split == "test"
        cm = (
            None
            if unlabelled
            else evaluate(net, dataset, device, flip=args.flip, max_images=args.max_images, progress=True)
        )
    except (FileNotFoundError, ValueError, TypeError, ConfigError, DatasetError, RuntimeError) as e:
        # ValueError covers CheckpointMismatchError and json's JSONDecodeError.
        print(f"error: {e}", file=sys.stderr)
        return 2

    label = info.get("stage", info["path"]) + (f" ({info['which']})" if "which" in info else "")
    evaluated = args.max_images if 0 < args.max_images < len(dataset) else len(dataset)
    print(
        f"{label} on {cfg.data.dataset} {args.split}: {len(dataset)} images"
        + (f", {evaluated} evaluated" if evaluated < len(dataset) else "")
        + (", flip" if args.flip else "")
    )
    recorded = info.get("metrics")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("miou"), float):
        print(
            f"recorded at training time (val, epoch {info.get('epoch')}): mIoU {recorded['miou'] * 100:.2f} %"
        )
    if cm is None:
        print("Cityscapes test labels are not public: no scores (use --submission for the evaluation server)")
        scores: dict[str, Any] = {}
    else:
        scores = cm.compute()
        if scores["pixels"] == 0:
            print("warning: no labelled pixels in the evaluated images; scores are NaN")
        print(_format_scores(scores, cm.to_frame(dataset.class_names)))

    if args.json:
        save_json(
            {
                "checkpoint": info["path"],
                "source": info["source"],
                "stage": info.get("stage"),
                "which": info.get("which"),
                "epoch": info.get("epoch"),
                "profile": cfg.profile,
                "dataset": cfg.data.dataset,
                "split": args.split,
                "flip": args.flip,
                "images": 0 if cm is None else evaluated,
                "class_names": list(dataset.class_names),
                **scores,
            },
            args.json,
        )
        print(f"wrote {args.json}")
    if args.colour_dir:
        n = len(dataset)
        count = min(max(args.colour_count, 0), n)
        indices = [i * n // count for i in range(count)] if count else []
        paths = save_colour_predictions(net, dataset, indices, args.colour_dir, device, flip=args.flip)
        print(f"wrote {len(paths)} colour PNGs to {args.colour_dir}")
    if args.submission:
        try:
            zip_path = export_cityscapes_submission(
                net,
                dataset,
                args.submission.with_suffix(""),
                device,
                zip_path=args.submission,
                flip=args.flip,
            )
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {zip_path} ({len(dataset)} label-ID PNGs in {args.submission.with_suffix('')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
