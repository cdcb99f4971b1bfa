"""Figures of ``00_data``: sample images with their labels, class frequencies, image and crop sizes."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..data.labels import colorize


def show_samples(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    palette: np.ndarray,
    titles: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> Figure:
    """Image, coloured label and overlay, one row per sample, with a legend of the classes shown.

    Args:
        samples: (image (H, W, 3) uint8 RGB, label (H, W) integer train ids, 255 ignore) pairs.
        class_names: the C class names (legend).
        palette: (C, 3) uint8 class colours.
        titles: one row title per sample (e.g. split and file name).
        alpha: label opacity in the overlay.
    """
    rows = len(samples)
    h, w = samples[0][1].shape
    fig, axes = plt.subplots(
        rows, 3, figsize=(10, rows * 10 / 3 * h / w + 1.0), squeeze=False, layout="constrained"
    )
    present: set[int] = set()
    for r, (image, label) in enumerate(samples):
        colour = colorize(label, palette)
        overlay = (image * (1 - alpha) + colour * alpha).astype(np.uint8)
        for c, (picture, name) in enumerate(((image, "image"), (colour, "label"), (overlay, "overlay"))):
            axes[r, c].imshow(picture)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(f"{titles[r]}: {name}" if titles else name, fontsize=9)
        present.update(int(v) for v in np.unique(label) if v < len(class_names))
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in sorted(present)]
    handles.append(Patch(facecolor="black", label="ignored (255)"))
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False
    )
    return fig


def plot_class_frequencies(frequencies: pd.DataFrame, palette: np.ndarray | None = None) -> Figure:
    """Grouped horizontal bars: share of labelled pixels per class (rows) for each split (columns).

    Args:
        frequencies: (C, n_splits) fractions indexed by class name (``data.stats.class_frequency_table``).
        palette: (C, 3) uint8 class colours, drawn as a swatch beside each class name.

    Classes with no pixel in any split are left out and named in the title.
    """
    present = (frequencies > 0).any(axis=1).to_numpy()
    absent = [str(name) for name in frequencies.index[~present]]
    if palette is not None:
        palette = palette[present]
    frequencies = frequencies[present]
    n_classes, n_splits = frequencies.shape
    fig, ax = plt.subplots(figsize=(8, 0.16 * n_classes * (n_splits + 1) + 1.2))
    y = np.arange(n_classes)
    height = 0.8 / n_splits
    for k, split in enumerate(frequencies.columns):
        ax.barh(y - 0.4 + height * (k + 0.5), 100 * frequencies[split].to_numpy(), height, label=split)
    ax.set_yticks(y, frequencies.index)
    if palette is not None:
        for tick, colour in zip(ax.get_yticklabels(), palette):
            tick.set_bbox({"facecolor": colour / 255.0, "alpha": 0.35, "edgecolor": "none", "pad": 1})
    ax.invert_yaxis()
    ax.set_xlabel("share of labelled pixels (%)")
    if absent:
        ax.set_title(f"not in any split: {', '.join(absent)}", fontsize=8, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="split", fontsize=8)
    fig.tight_layout()
    return fig


def plot_image_sizes(sizes_hw: dict[str, tuple[int, int]]) -> Figure:
    """Image and crop sizes drawn to scale from a common corner: what part of an image a crop sees.

    Args:
        sizes_hw: label → (height, width) in pixels, e.g. ``{"CamVid native": (360, 480),
            "after base_scale": (180, 240), "teacher crop": (160, 224)}``; drawn largest first.
    """
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    ordered = sorted(sizes_hw.items(), key=lambda item: -item[1][0] * item[1][1])
    for k, (label, (h, w)) in enumerate(ordered):
        colour = plt.cm.tab10(k % 10)
        ax.add_patch(Rectangle((0, 0), w, h, fill=False, lw=2, edgecolor=colour, label=f"{label}: {h}×{w}"))
    height = max(h for h, _ in sizes_hw.values())
    width = max(w for _, w in sizes_hw.values())
    ax.set_xlim(-0.02 * width, 1.05 * width)
    ax.set_ylim(1.05 * height, -0.02 * height)  # image coordinates: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    fig.legend(loc="outside lower center", fontsize=8, ncol=2)
    return fig
