"""What every segmentation dataset here shares: file reading with clear errors, label mapping, the item contract.

An item is ``(image, label)``: image float32 (3, H, W), ImageNet-normalised; label int64 (H, W) holding
train ids 0…C−1 and 255 for ignored pixels. A dataset lists its ``files`` as (image, label) path pairs,
checks the layout cheaply when built and each label's values when the item is loaded (one ``max`` over
the label, so the check costs far less than the PNG decode).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from fasterseg_core.data.labels import IGNORE_INDEX, ClassTable
from fasterseg_core.data.transforms import build_eval_transform
from fasterseg_core.progress import bar

# transform(image (3, H, W) uint8 Image, label (H, W) uint8 Mask) -> (image float32, label Mask)
Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used as it is; the message names the file and the fix."""


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB, or raise :class:`DatasetError` naming the file."""
    try:
        with Image.open(path) as im:
            # convert() forces the full decode, so truncated files fail here; np.array gives a writable copy.
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(
            f"image {path} does not exist; the file list is stale, rebuild the dataset"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"cannot read image {path} ({type(e).__name__}: {e}); the file is corrupt or not an image. "
            "Re-create the dataset (`make data` for CamVid) or remove this image and its label."
        ) from e


def read_label(path: Path) -> np.ndarray:
    """Decode a single-channel label file to (H, W) uint8, or raise :class:`DatasetError` naming the file."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(
            f"label {path} does not exist; the file list is stale, rebuild the dataset"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"cannot read label {path} ({type(e).__name__}: {e}); the file is corrupt or not an image. "
            "Re-create the dataset (`make data` for CamVid) or remove this label and its image."
        ) from e
    if arr.ndim != 2:
        raise DatasetError(
            f"label {path} has mode {mode} with shape {arr.shape}; expected a single-channel index image "
            "(mode L or P, one class id per pixel) — a colour-coded label (e.g. *_gtFine_color.png) cannot be used"
        )
    if arr.dtype != np.uint8:  # 16/32-bit PNGs: accept when every value fits the 8-bit ids we use
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(
                f"label {path} holds values {int(arr.min())}..{int(arr.max())}; label ids must lie in 0..255"
            )
        arr = arr.astype(np.uint8)
    return arr


def check_label_ids(label: np.ndarray, num_ids: int, path: Path, what: str) -> None:
    """Raise unless every value is in ``0..num_ids−1`` or 255 (cheap: one max, full scan only on failure)."""
    if label.size == 0 or label.max() < num_ids:
        return
    bad = (label >= num_ids) & (label != IGNORE_INDEX)
    if bad.any():
        raise DatasetError(
            f"label {path} holds values {np.unique(label[bad])[:10].tolist()} outside {what} 0..{num_ids - 1} "
            f"and the ignore value {IGNORE_INDEX}; is this the right dataset/label type for this loader?"
        )


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label file pairs read on demand, mapped to train ids, then transformed.

    Subclasses find the files and say how label files map to train ids (:meth:`label_lut`).

    Args:
        files: (image path, label path) pairs.
        table: the dataset's class table.
        transform: joint image/label transform (see ``fasterseg_core.data.transforms``); ``None`` returns
            the normalised full-size image.

    Attributes:
        files, class_names, num_classes, ignore_index (255), palette ((C, 3) uint8).
    """

    def __init__(self, files: Sequence[tuple[Path, Path]], table: ClassTable, transform: Transform | None):
        self.files = list(files)
        self.table = table
        self.transform = transform if transform is not None else build_eval_transform()
        self.class_names = table.class_names
        self.num_classes = table.num_classes
        self.ignore_index = IGNORE_INDEX
        self.palette = table.palette
        self._decoded: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def cache_decoded(self, desc: str = "decode") -> None:
        """Decode every pair now and keep it in memory: later :meth:`load` calls return copies of it.

        The PNG decode is most of an item's cost (5.5 of 6.5 ms for a CamVid pair here), paid again in every
        epoch; on 2 cores the loader's workers take it from the training threads. Decoded in this process,
        before any loader forks its workers, so the workers share the arrays (copy-on-write) instead of
        each holding a cache of its own. Items are the same bit for bit, cached or not: the transforms only
        ever see copies, and draw the same random numbers.

        Raises:
            DatasetError: when the decoded split would take more than half of this machine's memory
                (estimated from the first pair), before anything is decoded.
        """
        if self._decoded is not None or len(self) == 0:
            return
        image, label = self.decode(0)
        need = (image.nbytes + label.nbytes) * len(self)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > memory / 2:
            raise DatasetError(
                f"data.cache_decoded: {len(self)} decoded pairs take ~{need / 2**30:.1f} GiB, more than half of "
                f"this machine's {memory / 2**30:.1f} GiB; set data.cache_decoded: false for this dataset"
            )
        with bar(total=len(self), desc=desc, leave=False, mininterval=2.0) as progress:  # counts to the split's size
            progress.update(1)
            pairs = [(image, label)]
            for i in range(1, len(self)):
                pairs.append(self.decode(i))
                progress.update(1)
        self._decoded = pairs

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed pair: image (H, W, 3) uint8 RGB and label (H, W) uint8 train ids (255 ignore);
        copies of the cached pair after :meth:`cache_decoded`."""
        if self._decoded is not None:
            image, label = self._decoded[index]
            return image.copy(), label.copy()
        return self.decode(index)

    def label_lut(self, label_path: Path) -> tuple[np.ndarray, int, str]:
        """(256,) uint8 id → train-id table for this label file, the number of valid ids, and their name."""
        raise NotImplementedError

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair read from its files: image (H, W, 3) uint8 RGB, label (H, W) uint8 train ids (255 ignore)."""
        image_path, label_path = self.files[index]
        image = read_image(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its label {label_path} is "
                f"{raw.shape[1]}x{raw.shape[0]}; image and label must have the same size"
            )
        lut, num_ids, what = self.label_lut(label_path)
        check_label_ids(raw, num_ids, label_path, what)
        return image, lut[raw]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load(index)
        return apply_transform(self.transform, image, label)


def apply_transform(
    transform: Transform, image: np.ndarray, label: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrap numpy arrays as ``tv_tensors``, transform them, return plain (float32 image, int64 label)."""
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    lbl = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(label)))
    img, lbl = transform(img, lbl)
    return img.as_subclass(torch.Tensor), lbl.as_subclass(torch.Tensor).long()
