"""Class tables for the datasets we train on: one row per class, plus the lookup arrays derived from them.

A label file stores a *label id* per pixel (Cityscapes ``*_labelIds.png``: 0…33; CamVid: 0…11). Training
and evaluation use *train ids*: 0…C−1 for the evaluated classes and 255 (ignore) for everything else
(§9.1, §9.4). Each :class:`ClassTable` holds the rows and derives, once, what the loaders and figures
need: the label-id → train-id lookup table, the class names and palette in train-id order, and (for the
Cityscapes test server) the train-id → label-id table.

* Cityscapes: the official table from ``cityscapesscripts.helpers.labels`` (not retyped here).
* CamVid: the SegNet 11-class version (``shared/data/camvid/README.md``): ids 0…10 are the classes,
  id 11 (void) is ignored (255).

The synthetic street scenes use the Cityscapes table directly (train ids 0…18, a subset of which
appears in the scenes), so a network for one runs unchanged on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from cityscapesscripts.helpers import labels as _cs_labels

IGNORE_INDEX = 255  # §9.1: ignored pixels in every label map we produce

# ImageNet statistics used for input normalisation (§9.1), RGB order, on [0, 1] images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegClass:
    """One row of a class table.

    Attributes:
        name: human-readable class name.
        id: the value stored in the dataset's label files.
        train_id: 0…C−1 for an evaluated class, 255 for an ignored one.
        color: RGB colour for figures.
        ignore: True when the class is not evaluated (``train_id == 255``).
    """

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]
    ignore: bool


@dataclass(frozen=True)
class ClassTable:
    """A dataset's classes, one :class:`SegClass` per row, and the arrays derived from them.

    Args:
        name: dataset name, used in error messages.
        rows: every class the label files can contain (ignored ones included).
    """

    name: str
    rows: tuple[SegClass, ...]

    def __post_init__(self) -> None:
        train_ids = sorted(r.train_id for r in self.rows if not r.ignore)
        if train_ids != list(range(len(train_ids))):
            raise ValueError(f"{self.name}: train ids must be 0..C-1 without gaps, got {train_ids}")
        for r in self.rows:
            if r.ignore != (r.train_id == IGNORE_INDEX):
                raise ValueError(
                    f"{self.name}: class {r.name!r} has ignore={r.ignore} but train_id={r.train_id}"
                )

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    @cached_property
    def train_classes(self) -> tuple[SegClass, ...]:
        """The evaluated classes in train-id order."""
        return tuple(sorted((r for r in self.rows if not r.ignore), key=lambda r: r.train_id))

    @property
    def num_classes(self) -> int:
        return len(self.train_classes)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.train_classes)

    @cached_property
    def palette(self) -> np.ndarray:
        """(C, 3) uint8 RGB colours in train-id order."""
        return np.array([r.color for r in self.train_classes], dtype=np.uint8)

    @cached_property
    def num_label_ids(self) -> int:
        """Label files may hold ids 0…num_label_ids−1 (plus 255, read as ignore)."""
        return max(r.id for r in self.rows) + 1

    @cached_property
    def id_to_train_id(self) -> np.ndarray:
        """(256,) uint8 lookup table: label id → train id (255 for ignored and unknown ids)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for r in self.rows:
            if 0 <= r.id < 256:  # Cityscapes' licence plate has id −1 and never occurs in label files
                lut[r.id] = r.train_id
        return lut

    @cached_property
    def train_id_to_id(self) -> np.ndarray:
        """(256,) uint8 lookup table: train id → label id; 255 (ignore) → 0 (an unlabelled id)."""
        lut = np.zeros(256, dtype=np.uint8)
        for r in self.train_classes:
            lut[r.train_id] = r.id
        return lut


def _cityscapes_table() -> ClassTable:
    rows = []
    for lab in _cs_labels.labels:
        # The official table marks ignored classes with trainId 255 (and −1 for the licence plate).
        ignore = lab.trainId in (255, -1)
        rows.append(
            SegClass(
                name=lab.name,
                id=lab.id,
                train_id=IGNORE_INDEX if ignore else lab.trainId,
                color=tuple(lab.color),
                ignore=ignore,
            )
        )
    return ClassTable("cityscapes", tuple(rows))


def _camvid_table() -> ClassTable:
    # Order, names and SegNet palette from shared/data/camvid/README.md; void (11) is the ignore class.
    spec = [
        ("sky", (128, 128, 128)),
        ("building", (128, 0, 0)),
        ("pole", (192, 192, 128)),
        ("road", (128, 64, 128)),
        ("sidewalk", (60, 40, 222)),
        ("tree", (128, 128, 0)),
        ("sign", (192, 128, 128)),
        ("fence", (64, 64, 128)),
        ("car", (64, 0, 128)),
        ("pedestrian", (64, 64, 0)),
        ("bicyclist", (0, 128, 192)),
    ]
    rows = [SegClass(n, i, i, c, False) for i, (n, c) in enumerate(spec)]
    rows.append(SegClass("void", 11, IGNORE_INDEX, (0, 0, 0), True))
    return ClassTable("camvid", tuple(rows))


CITYSCAPES = _cityscapes_table()
CAMVID = _camvid_table()


def cityscapes_train_to_label_ids(pred: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map a Cityscapes train-id prediction to official label ids for the test server (§9.4).

    Args:
        pred: (…, H, W) integer train ids 0…18 (255 allowed, written as 0 = unlabeled).

    Returns:
        uint8 array of the same shape with label ids (0→7, 1→8, …, 18→33).
    """
    arr = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    bad = (arr < 0) | ((arr >= CITYSCAPES.num_classes) & (arr != IGNORE_INDEX))
    if bad.any():
        raise ValueError(
            f"prediction holds values {np.unique(arr[bad])[:10].tolist()} outside the Cityscapes train ids "
            f"0..{CITYSCAPES.num_classes - 1} (and 255); pass argmax train ids, not label ids or logits"
        )
    return CITYSCAPES.train_id_to_id[arr.astype(np.int64)]


def colorize(
    mask: np.ndarray | torch.Tensor,
    palette: np.ndarray,
    ignore_color: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Colour a train-id mask for figures.

    Args:
        mask: (H, W) integer train ids 0…C−1, 255 for ignore.
        palette: (C, 3) uint8 colours, e.g. ``CAMVID.palette`` or a dataset's ``palette``.
        ignore_color: RGB colour for ignored pixels.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    arr = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    num_classes = len(palette)
    bad = (arr < 0) | ((arr >= num_classes) & (arr != IGNORE_INDEX))
    if bad.any():
        raise ValueError(
            f"mask holds values {np.unique(arr[bad])[:10].tolist()} outside 0..{num_classes - 1} and 255; "
            "colorize expects train ids (map label ids through the class table first)"
        )
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:num_classes] = palette
    lut[IGNORE_INDEX] = ignore_color
    return lut[arr.astype(np.int64)]
