"""What the data stage reports about a dataset: class pixel frequencies, image sizes, loader throughput.

Counts are taken over the untransformed pairs (:meth:`SegmentationDataset.load`: native resolution,
train ids, 255 ignored), so they describe the dataset itself; the pipeline then resizes by
``data.base_scale`` before augmenting. Throughput is measured on the real training loader (§9.1
augmentation, the stage's crop, batch size and worker count), the number that bounds training speed
on a CPU machine.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import torch

from .base import SegmentationDataset
from .labels import IGNORE_INDEX


def split_summary(dataset: SegmentationDataset) -> dict[str, Any]:
    """One pass over a split: pixel count per class and ignore, and how many images have each size.

    Args:
        dataset: any dataset of this package (every item is read and checked once).

    Returns:
        ``{"images": n, "pixel_counts": [count per train id 0…C−1], "ignore_pixels": count,
        "sizes": {"HxW": n_images}}`` (plain ints, JSON-ready).
    """
    counts = np.zeros(256, dtype=np.int64)
    sizes: Counter[str] = Counter()
    for i in range(len(dataset)):
        _, label = dataset.load(i)
        counts += np.bincount(label.ravel(), minlength=256)
        sizes[f"{label.shape[0]}x{label.shape[1]}"] += 1
    return {
        "images": len(dataset),
        "pixel_counts": counts[: dataset.num_classes].tolist(),
        "ignore_pixels": int(counts[IGNORE_INDEX]),
        "sizes": dict(sizes),
    }


def class_frequency_table(summaries: dict[str, dict[str, Any]], class_names: tuple[str, ...]) -> pd.DataFrame:
    """Fraction of labelled (non-ignored) pixels per class, one column per split.

    Args:
        summaries: ``{split: split_summary(...)}``.
        class_names: the C train class names, in train-id order.

    Returns:
        A (C, n_splits) float frame indexed by class name; each column sums to 1 (0 for an empty split).
    """
    columns = {}
    for split, summary in summaries.items():
        counts = np.asarray(summary["pixel_counts"], dtype=np.float64)
        columns[split] = counts / counts.sum() if counts.sum() > 0 else counts
    return pd.DataFrame(columns, index=pd.Index(class_names, name="class"))


def image_size_table(summaries: dict[str, dict[str, Any]], base_scale: float) -> pd.DataFrame:
    """Image sizes per split: native ``H x W`` and the size after ``base_scale``, with image counts."""
    rows = []
    for split, summary in summaries.items():
        for size, n in sorted(summary["sizes"].items()):
            h, w = (int(v) for v in size.split("x"))
            rows.append(
                {
                    "split": split,
                    "height": h,
                    "width": w,
                    "images": n,
                    "loaded_hw": f"{round(h * base_scale)}x{round(w * base_scale)}",
                    "ignored_pixel_share": summary["ignore_pixels"] / max(summary["images"] * h * w, 1),
                }
            )
    return pd.DataFrame(rows)


def size_overview(
    summaries: dict[str, dict[str, Any]], base_scale: float, crops: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """The sizes worth drawing together: each native size, the loaded size, the training crops.

    Args:
        summaries: ``{split: split_summary(...)}``.
        base_scale: ``data.base_scale``; the loaded size is that of the most common native size.
        crops: label → (height, width), e.g. ``{"teacher crop": cfg.teacher.crop_size_hw}``.

    Returns:
        label → (height, width), native sizes first (most common first).
    """
    counts: Counter[str] = Counter()
    for summary in summaries.values():
        counts.update(summary["sizes"])
    out: dict[str, tuple[int, int]] = {}
    for size, n in counts.most_common():
        h, w = (int(v) for v in size.split("x"))
        out[f"native ({n} images)"] = (h, w)
    if counts and base_scale != 1.0:
        h, w = (int(v) for v in counts.most_common(1)[0][0].split("x"))
        out[f"loaded (base_scale {base_scale:g})"] = (round(h * base_scale), round(w * base_scale))
    return out | {label: (int(hw[0]), int(hw[1])) for label, hw in crops.items()}


def measure_loader_throughput(
    dataset: SegmentationDataset,
    batch_size: int,
    num_workers: int,
    num_batches: int = 10,
    warmup_batches: int = 1,
) -> dict[str, Any]:
    """Time a shuffled ``DataLoader`` over ``dataset`` (images/s), after warm-up batches.

    Warm-up batches absorb worker start-up and first-touch file caching, which a training run pays once.

    Args:
        dataset: typically the training split with the training transform (crops).
        batch_size: images per batch.
        num_workers: loader worker processes (0 = load in this process).
        num_batches: timed batches (the loader starts another epoch when the split runs out).
        warmup_batches: untimed batches first.

    Returns:
        ``{"num_workers", "batch_size", "images", "seconds", "images_per_s"}``.
    """
    if len(dataset) == 0:
        raise ValueError("cannot time a loader over an empty dataset")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # no worker restart at an epoch boundary inside the timing
        generator=torch.Generator().manual_seed(0),
    )
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
    for _ in range(warmup_batches):
        next(batches)
    start = time.perf_counter()
    images = sum(next(batches)[0].shape[0] for _ in range(num_batches))
    seconds = time.perf_counter() - start
    return {
        "num_workers": num_workers,
        "batch_size": batch_size,
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": images / seconds,
    }
