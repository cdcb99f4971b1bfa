"""Predictions: inference on whole images, and predictions as files (coloured figures, train-id label
maps, the Cityscapes test-server submission) or as one scored image for the results explorer.

Method: ``docs/method.md`` §9.4: whole image, single scale, optional flip, on the dataset's
evaluation transform.

* :func:`predict_logits` — eval-mode logits of a batch, optionally averaged with the flipped image.
* :func:`explore_image` — one image's prediction with its per-class IoU (the explorer widget's content).

* :func:`save_colour_predictions` — one PNG per image: image | ground truth | prediction, side by side,
  in the dataset's palette (any dataset).
* :func:`save_label_pngs` — the predicted train ids as single-channel PNGs at the images' file size.
* :func:`export_cityscapes_submission` — train ids mapped to Cityscapes label ids (0→7, 1→8, …, 18→33),
  uint8 PNGs at 1024×2048 named ``<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and zipped. The official
  evaluation (``cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py``, ``getPrediction``)
  walks the result folder recursively and takes, for ground truth ``<city>_<seq>_<frame>_gtFine_labelIds.png``,
  the one file matching ``<city>_<seq>_<frame>*.png``; the image's own file name satisfies that pattern.

When the evaluation transform pre-resizes (``data.base_scale`` < 1), the class scores are resized back
to the image file's size (bilinear) before the argmax, so label files always match the original images.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from .data.labels import (
    CITYSCAPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassTable,
    cityscapes_train_to_label_ids,
    colorize,
)
from .metrics import ConfusionMatrix

# What cityscapesScripts' getCsFileInfo parses: <city>_<sequence>_<frame>_leftImg8bit.png (no other "_").
_CITYSCAPES_IMAGE = re.compile(r"^(?P<city>[^_]+)_(?P<seq>[^_]+)_(?P<frame>[^_]+)_leftImg8bit\.png$")
PANEL_GAP_PX = 4  # white columns between the three panels of a colour figure


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


def denormalise(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of the data pipeline (§9.1) for display.

    Args:
        image: (3, H, W) float, normalised with ``IMAGENET_MEAN``/``IMAGENET_STD``.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.detach().cpu().float() * std + mean).clamp(0, 1) * 255
    return rgb.round().to(torch.uint8).permute(1, 2, 0).numpy()


@torch.no_grad()
def predict_train_ids(
    net: nn.Module,
    image: torch.Tensor,
    device: torch.device | str,
    *,
    flip: bool = False,
    size_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Predicted train ids of one image (the caller puts ``net`` in eval mode).

    Args:
        net: network returning ``{"out": (1, C, h, w)}``.
        image: (3, h, w) float, normalised.
        device: where to run.
        flip: add the flipped prediction (§9.4).
        size_hw: resize the class scores to this (H, W) before the argmax; ``None`` keeps (h, w).

    Returns:
        (H, W) int64 train ids on the CPU.
    """
    scores = predict_logits(net, image[None].to(device), flip=flip)
    if size_hw is not None and tuple(scores.shape[-2:]) != tuple(size_hw):
        # align_corners=False: the inverse of the data pipeline's resize, which uses pixel-centre geometry
        # (the network's internal resizes keep the authors' align_corners=True).
        scores = F.interpolate(scores, size=tuple(size_hw), mode="bilinear", align_corners=False)
    return scores.argmax(1)[0].cpu()


def _image_path(dataset: Dataset, index: int) -> Path | None:
    files = getattr(dataset, "files", None)
    return Path(files[index][0]) if files else None


def _file_hw(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:  # reads the header only
        w, h = im.size
    return h, w


def _predictions(
    net: nn.Module,
    dataset: Dataset,
    indices: Iterable[int],
    device: torch.device | str,
    *,
    flip: bool,
    file_size: bool,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (index, image (3, h, w), label (h, w), prediction) in eval mode; training mode is restored.

    ``file_size``: predict at the image file's size (when the dataset lists files), else at (h, w).
    """
    was_training = net.training
    net.eval()
    try:
        for i in indices:
            image, label = dataset[i]
            path = _image_path(dataset, i)
            size = _file_hw(path) if file_size and path is not None else None
            yield i, image, label, predict_train_ids(net, image, device, flip=flip, size_hw=size)
    finally:
        net.train(was_training)


def _stem(dataset: Dataset, index: int) -> str:
    path = _image_path(dataset, index)
    return f"{index:04d}_{path.stem}" if path is not None else f"{index:04d}"


def _save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def save_colour_predictions(
    net: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    out_dir: str | Path,
    device: torch.device | str,
    table: ClassTable | None = None,
    *,
    flip: bool = False,
) -> list[Path]:
    """Write image | ground truth | prediction PNGs, at the evaluation transform's resolution.

    Args:
        net: the network (its training mode is restored afterwards).
        dataset: (image (3, H, W) normalised, label (H, W) int64) items.
        indices: which items.
        out_dir: folder for ``<index>_<image stem>.png``.
        device: where to run.
        table: class table for the palette; ``None`` uses the dataset's ``palette``.
        flip: add the flipped prediction (§9.4).

    Returns:
        The written paths; each image is (H, 3·W + 2·PANEL_GAP_PX, 3) uint8, ignored pixels black.
    """
    palette = table.palette if table is not None else getattr(dataset, "palette", None)
    if palette is None:
        raise ValueError("the dataset has no palette; pass its ClassTable as table=")
    out_dir = Path(out_dir)
    paths = []
    for i, image, label, pred in _predictions(net, dataset, indices, device, flip=flip, file_size=False):
        rgb = denormalise(image)
        gap = np.full((rgb.shape[0], PANEL_GAP_PX, 3), 255, dtype=np.uint8)
        panel = np.concatenate([rgb, gap, colorize(label, palette), gap, colorize(pred, palette)], axis=1)
        paths.append(_save_png(panel, out_dir / f"{_stem(dataset, i)}.png"))
    return paths


def save_label_pngs(
    net: nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    device: torch.device | str,
    indices: Sequence[int] | None = None,
    *,
    flip: bool = False,
) -> list[Path]:
    """Write the predicted train ids as single-channel uint8 PNGs (any dataset).

    Args:
        net: the network (its training mode is restored afterwards).
        dataset: evaluation dataset; when it lists ``files`` the PNGs have the image files' size and
            name (``<image stem>.png``), else the transformed size and ``<index>.png``.
        out_dir: output folder.
        device: where to run.
        indices: which items (``None`` = all).
        flip: add the flipped prediction (§9.4).

    Returns:
        The written paths; pixel values are train ids 0…C−1.
    """
    out_dir = Path(out_dir)
    indices = range(len(dataset)) if indices is None else indices
    paths = []
    for i, _, _, pred in _predictions(net, dataset, indices, device, flip=flip, file_size=True):
        path = _image_path(dataset, i)
        name = f"{path.stem}.png" if path is not None else f"{i:04d}.png"
        paths.append(_save_png(pred.to(torch.uint8).numpy(), out_dir / name))
    return paths


def export_cityscapes_submission(
    net: nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    device: torch.device | str,
    zip_path: str | Path | None = None,
    *,
    flip: bool = False,
) -> Path:
    """Label-ID PNGs for the Cityscapes evaluation server (§9.4), optionally zipped.

    Args:
        net: a 19-class network (its training mode is restored afterwards).
        dataset: a Cityscapes split (usually "test") with the evaluation transform; image files must be
            named ``<city>_<seq>_<frame>_leftImg8bit.png`` as in the official download.
        out_dir: folder receiving ``<city>/<city>_<seq>_<frame>_leftImg8bit.png``, uint8 label ids at the
            image file's size (1024×2048).
        device: where to run.
        zip_path: also write a zip of exactly these files (arcnames ``<city>/<name>``), ready to upload.
        flip: add the flipped prediction (§9.4).

    Returns:
        ``zip_path`` when given, else ``out_dir``.
    """
    names = tuple(getattr(dataset, "class_names", ()))
    if names != CITYSCAPES.class_names:
        raise ValueError(
            f"the submission needs a Cityscapes dataset (19 train ids), got classes {list(names)[:5]}…; "
            "use save_label_pngs for other datasets"
        )
    if getattr(net, "num_classes", CITYSCAPES.num_classes) != CITYSCAPES.num_classes:
        raise ValueError(f"the network predicts {net.num_classes} classes; the Cityscapes server needs 19")
    if not getattr(dataset, "files", None):
        raise ValueError(
            "the dataset lists no image files; the server matches predictions by the images' names "
            "(<city>_<seq>_<frame>_leftImg8bit.png), so build it with fasterseg_core.data.Cityscapes"
        )
    targets = []
    for image_path, _ in dataset.files:
        m = _CITYSCAPES_IMAGE.match(Path(image_path).name)
        if m is None:
            raise ValueError(
                f"image {image_path} is not named <city>_<seq>_<frame>_leftImg8bit.png; the evaluation "
                "server could not match its prediction to the ground truth"
            )
        targets.append(Path(m["city"]) / Path(image_path).name)
    out_dir = Path(out_dir)
    written = []
    for i, _, _, pred in _predictions(net, dataset, range(len(dataset)), device, flip=flip, file_size=True):
        written.append(_save_png(cityscapes_train_to_label_ids(pred), out_dir / targets[i]))
    if zip_path is None:
        return out_dir
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    # PNGs are already deflated; storing them keeps zipping instant. Only this export's files go in, so
    # stale files in out_dir cannot become a second prediction for one frame.
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        for path, arc in zip(written, targets):
            zf.write(path, arcname=arc.as_posix())
    return zip_path


@dataclass
class ImageView:
    """One network's prediction on one image.

    Attributes:
        image: (H, W, 3) uint8 RGB at the evaluation resolution.
        label: (H, W) int64 ground truth (255 ignore); pred: (H, W) int64 prediction.
        iou: per-class table of this image (classes present in ground truth or prediction): IoU (%),
            ground-truth and predicted pixels.
        title: network, checkpoint, split and image.
    """

    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    iou: pd.DataFrame
    title: str


@torch.no_grad()
def explore_image(net: nn.Module, dataset: Dataset, index: int, device: torch.device | str, title: str
                  ) -> ImageView:
    """Predict one image of an evaluation dataset and score it.

    Args:
        net: network returning ``{"out": (1, C, H, W)}``, in eval mode on ``device``.
        dataset: evaluation split (items: normalised (3, H, W) float image, (H, W) int64 label), with
            ``class_names`` and ``ignore_index``.
        index: which item.
    """
    image, label = dataset[index]
    pred = net(image[None].to(device))["out"].argmax(1)[0].cpu()
    cm = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index)
    cm.update(pred, label)
    frame = cm.to_frame(dataset.class_names)
    frame = frame[(frame.gt_pixels > 0) | (frame.pred_pixels > 0)].assign(iou=lambda f: 100 * f.iou)
    frame = frame.rename(columns={"iou": "IoU (%)"})[["IoU (%)", "gt_pixels", "pred_pixels"]]
    return ImageView(denormalise(image), label.numpy(), pred.numpy(), frame.round(1), title)
