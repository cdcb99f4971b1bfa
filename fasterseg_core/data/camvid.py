"""CamVid, SegNet's 11-class version at 480×360 (``shared/data/camvid/README.md``).

Expected layout (what ``make data`` / ``python -m fasterseg_core data camvid`` produce)::

    <root>/train/images/*.png  <root>/train/labels/*.png   (367 pairs)
    <root>/val/images/*.png    <root>/val/labels/*.png     (101 pairs)
    <root>/test/images/*.png   <root>/test/labels/*.png    (233 pairs)

An image and its label share the file name. Labels hold class indices 0…10 and 11 for void, which becomes
the ignore value 255. The paper reports no CamVid training recipe (§13), so the Cityscapes
pipeline (§9.1) is used unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fasterseg_core.data.base import DatasetError, SegmentationDataset, Transform
from fasterseg_core.data.labels import CAMVID

SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}

LAYOUT_HELP = (
    "expected <root>/{train,val,test}/{images,labels}/*.png with an image and its label sharing the file "
    "name; `make data` puts CamVid in data/camvid (from $CAMVID_SOURCE or a download), or point "
    "data.root / $FASTERSEG_DATA at an existing copy"
)


def find_camvid_files(root: Path, split: str) -> list[tuple[Path, Path]]:
    """The sorted (image, label) pairs of one split, after checking the folder layout.

    Raises:
        DatasetError: missing root or split folders, or an image without a label (or the reverse).
    """
    if split not in SPLITS:
        raise DatasetError(f"CamVid has splits {SPLITS}, not {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CamVid root {root} does not exist; {LAYOUT_HELP}")
    image_dir, label_dir = root / split / "images", root / split / "labels"
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DatasetError(f"CamVid folder {d} is missing (wrong layout under {root}); {LAYOUT_HELP}")
    images = {p.name: p for p in image_dir.glob("*.png")}
    labels = {p.name: p for p in label_dir.glob("*.png")}
    if not images:
        raise DatasetError(f"no *.png images in {image_dir}; {LAYOUT_HELP}")
    no_label, no_image = sorted(images.keys() - labels.keys()), sorted(labels.keys() - images.keys())
    if no_label:
        raise DatasetError(
            f"{len(no_label)} image(s) in {image_dir} have no label in {label_dir}, e.g. {no_label[:3]}; "
            "add the labels or remove those images (or re-create the dataset with `make data`)"
        )
    if no_image:
        raise DatasetError(
            f"{len(no_image)} label(s) in {label_dir} have no image in {image_dir}, e.g. {no_image[:3]}; "
            "add the images or remove those labels (or re-create the dataset with `make data`)"
        )
    return [(images[n], labels[n]) for n in sorted(images)]


class CamVid(SegmentationDataset):
    """CamVid 11 classes; items are (image float32 (3, H, W) normalised, label int64 (H, W), 255 = void).

    Args:
        root: the dataset folder (layout in the module docstring).
        split: "train", "val" or "test".
        transform: joint transform (``fasterseg_core.data.transforms``); ``None`` = normalisation only.
        max_images: keep the first N pairs in file-name order (0 = all).
    """

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None, max_images: int = 0):
        files: Sequence[tuple[Path, Path]] = find_camvid_files(Path(root), split)
        if max_images > 0:
            files = files[:max_images]
        super().__init__(files, CAMVID, transform)
        self.root, self.split = Path(root), split

    def label_lut(self, label_path: Path) -> tuple[np.ndarray, int, str]:
        return CAMVID.id_to_train_id, CAMVID.num_label_ids, "the CamVid class indices"
