"""Datasets, class tables and transforms; :func:`build_dataset` turns a ``DataConfig`` into a dataset.

Every dataset returns ``(image float32 (3, H, W) ImageNet-normalised, label int64 (H, W))`` with train ids
0…C−1 and 255 for ignored pixels, and exposes ``class_names``, ``num_classes``, ``ignore_index``,
``palette`` ((C, 3) uint8) and ``files`` ((image, label) path pairs).
"""

from __future__ import annotations

import os
from pathlib import Path

from fasterseg_core.config import DataConfig, project_root
from fasterseg_core.data.base import DatasetError, SegmentationDataset
from fasterseg_core.data.camvid import CamVid
from fasterseg_core.data.cityscapes import Cityscapes
from fasterseg_core.data.labels import (
    CAMVID,
    CITYSCAPES,
    IGNORE_INDEX,
    ClassTable,
    SegClass,
    cityscapes_train_to_label_ids,
    colorize,
)
from fasterseg_core.data.synthetic import SyntheticStreets
from fasterseg_core.data.transforms import build_eval_transform, build_train_transform

__all__ = [
    "CAMVID",
    "CITYSCAPES",
    "IGNORE_INDEX",
    "CamVid",
    "Cityscapes",
    "ClassTable",
    "DatasetError",
    "SegClass",
    "SegmentationDataset",
    "SyntheticStreets",
    "build_dataset",
    "build_eval_transform",
    "build_train_transform",
    "cityscapes_train_to_label_ids",
    "colorize",
    "resolve_root",
]

# Synthetic sets: a fixed seed per split, so train/val/test scenes differ and every run sees the same ones.
_SYNTHETIC_SEEDS = {"train": 0, "val": 1, "test": 2}


def resolve_root(data_cfg: DataConfig) -> Path:
    """The dataset folder: ``data_cfg.root`` if set, else ``$FASTERSEG_DATA/<dataset>``, else
    ``<project>/data/<dataset>`` (what ``make data`` fills). Relative paths are taken from the current
    directory (as given on a command line).
    """
    if data_cfg.root:
        return Path(data_cfg.root).expanduser()
    env = os.environ.get("FASTERSEG_DATA")
    if env:
        return Path(env).expanduser() / data_cfg.dataset
    return project_root() / "data" / data_cfg.dataset


def build_dataset(
    data_cfg: DataConfig,
    split: str,
    *,
    train: bool,
    crop_hw: tuple[int, int] | None = None,
    base_scale: float | None = None,
) -> SegmentationDataset:
    """Build one split of the configured dataset with the training or evaluation transform.

    Args:
        data_cfg: the ``data`` section of the run configuration.
        split: "train", "val" or "test".
        train: True for the §9.1 augmentation (flip, scale, crop to ``crop_hw``); False for the
            deterministic whole-image evaluation transform.
        crop_hw: training crop (height, width); required when ``train``.
        base_scale: pre-resize factor; ``None`` takes ``data_cfg.base_scale`` (the search passes its own).

    Returns:
        A dataset of (image float32 (3, H, W), label int64 (H, W)) items. The "train" split keeps the first
        ``max_train_images`` files, other splits the first ``max_eval_images`` (0 = all); with
        ``data.cache_decoded`` every pair is decoded here, once (see ``SegmentationDataset.cache_decoded``).
    """
    scale = data_cfg.base_scale if base_scale is None else base_scale
    if train:
        if crop_hw is None:
            raise ValueError("build_dataset(train=True) needs crop_hw=(height, width)")
        transform = build_train_transform(crop_hw, data_cfg.scales, data_cfg.use_flip, scale,
                                          color_jitter=data_cfg.color_jitter)
    else:
        transform = build_eval_transform(scale)
    limit = data_cfg.max_train_images if split == "train" else data_cfg.max_eval_images
    if data_cfg.dataset == "synthetic":
        if split not in _SYNTHETIC_SEEDS:
            raise DatasetError(f"synthetic data has splits {tuple(_SYNTHETIC_SEEDS)}, not {split!r}")
        n = data_cfg.synthetic_train_images if split == "train" else data_cfg.synthetic_eval_images
        n = min(n, limit) if limit > 0 else n
        dataset: SegmentationDataset = SyntheticStreets(n, data_cfg.synthetic_hw, seed=_SYNTHETIC_SEEDS[split],
                                                        transform=transform)
    elif data_cfg.dataset == "camvid":
        dataset = CamVid(resolve_root(data_cfg), split, transform, max_images=limit)
    elif data_cfg.dataset == "cityscapes":
        dataset = Cityscapes(resolve_root(data_cfg), split, transform, max_images=limit)
    else:
        raise DatasetError(f"unknown dataset {data_cfg.dataset!r}; choose camvid, cityscapes or synthetic")
    if data_cfg.cache_decoded:
        dataset.cache_decoded(desc=f"decode {split}")
    return dataset
