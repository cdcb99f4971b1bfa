"""Cityscapes fine annotations in the official layout (§9.1; 19 train classes, 255 = ignore).

Expected layout (the official ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    <root>/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png   (cityscapesScripts createTrainIdLabelImgs)
    <root>/gtFine/<split>/<city>/<frame>_gtFine_labelIds.png        (as downloaded)

Train ids come from ``*_gtFine_labelTrainIds.png`` when present (what the authors trained on), else from
``*_gtFine_labelIds.png`` mapped through the official table (``labels.CITYSCAPES``). Cityscapes needs
registration, so nothing here downloads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fasterseg_core.data.base import DatasetError, SegmentationDataset, Transform
from fasterseg_core.data.labels import CITYSCAPES, IGNORE_INDEX

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"

LAYOUT_HELP = (
    "expected the official layout <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "<root>/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png (or *_gtFine_labelIds.png); download "
    "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com (registration "
    "needed), unzip both into one folder and point data.root or $FASTERSEG_DATA (…/cityscapes) at it"
)

# Identity for files that already hold train ids (0…18, 255).
_TRAIN_ID_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_TRAIN_ID_LUT[: CITYSCAPES.num_classes] = np.arange(CITYSCAPES.num_classes, dtype=np.uint8)


def find_cityscapes_files(root: Path, split: str, label_source: str = "auto") -> list[tuple[Path, Path]]:
    """The sorted (image, label) pairs of one split, after checking the folder layout.

    Args:
        root: the Cityscapes folder.
        split: "train", "val" or "test".
        label_source: "auto" (labelTrainIds when present, else labelIds), "trainIds" or "labelIds".

    Raises:
        DatasetError: missing folders, an image without a label file (or the reverse).
    """
    if split not in SPLITS:
        raise DatasetError(f"Cityscapes has splits {SPLITS}, not {split!r}")
    if label_source not in ("auto", "trainIds", "labelIds"):
        raise DatasetError(f"label_source must be 'auto', 'trainIds' or 'labelIds', not {label_source!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Cityscapes root {root} does not exist; {LAYOUT_HELP}")
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DatasetError(f"Cityscapes folder {d} is missing (wrong layout under {root}); {LAYOUT_HELP}")
    images = {
        str(p.relative_to(image_dir))[: -len(IMAGE_SUFFIX)]: p for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}")
    }
    if not images:
        raise DatasetError(f"no <city>/*{IMAGE_SUFFIX} files under {image_dir}; {LAYOUT_HELP}")
    by_kind = {
        suffix: {str(p.relative_to(label_dir))[: -len(suffix)]: p for p in label_dir.glob(f"*/*{suffix}")}
        for suffix in (TRAIN_ID_SUFFIX, LABEL_ID_SUFFIX)
    }
    if label_source == "trainIds":
        labels = by_kind[TRAIN_ID_SUFFIX]
    elif label_source == "labelIds":
        labels = by_kind[LABEL_ID_SUFFIX]
    else:  # per frame: the stored train ids win, as the authors trained on them
        labels = {**by_kind[LABEL_ID_SUFFIX], **by_kind[TRAIN_ID_SUFFIX]}
    no_label, no_image = sorted(images.keys() - labels.keys()), sorted(labels.keys() - images.keys())
    if no_label:
        raise DatasetError(
            f"{len(no_label)} image(s) under {image_dir} have no gtFine label (label_source={label_source!r}), "
            f"e.g. {no_label[:3]}; unzip gtFine_trainvaltest.zip into {root}, or run cityscapesScripts' "
            "createTrainIdLabelImgs if only labelIds exist and label_source='trainIds'"
        )
    if no_image:
        raise DatasetError(
            f"{len(no_image)} gtFine label(s) under {label_dir} have no image, e.g. {no_image[:3]}; unzip "
            f"leftImg8bit_trainvaltest.zip into {root}"
        )
    return [(images[k], labels[k]) for k in sorted(images)]


class Cityscapes(SegmentationDataset):
    """Cityscapes fine; items are (image float32 (3, H, W) normalised, label int64 (H, W) train ids, 255 ignore).

    Args:
        root: the dataset folder (official layout, see the module docstring).
        split: "train", "val" or "test".
        transform: joint transform (``fasterseg_core.data.transforms``); ``None`` = normalisation only.
        max_images: keep the first N frames in file-name order (0 = all).
        label_source: "auto", "trainIds" or "labelIds" (see :func:`find_cityscapes_files`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        max_images: int = 0,
        label_source: str = "auto",
    ):
        files = find_cityscapes_files(Path(root), split, label_source)
        if max_images > 0:
            files = files[:max_images]
        super().__init__(files, CITYSCAPES, transform)
        self.root, self.split = Path(root), split

    def label_lut(self, label_path: Path) -> tuple[np.ndarray, int, str]:
        if label_path.name.endswith(TRAIN_ID_SUFFIX):
            return _TRAIN_ID_LUT, CITYSCAPES.num_classes, "the Cityscapes train ids"
        return CITYSCAPES.id_to_train_id, CITYSCAPES.num_label_ids, "the Cityscapes label ids"
