"""Figures of the training stages (``02_teacher`` … ``04_student``) and of the results explorer: one stage's
curves, its per-class IoU, one image's prediction."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..data.labels import colorize
from ..predictions import ImageView


def plot_stage_curves(histories: dict[str, pd.DataFrame], title: str = "") -> Figure:
    """Loss (left) and validation / running-train mIoU (right) per epoch for one or more training runs.

    Args:
        histories: run name → its ``history.csv`` frame (columns epoch, loss, train_miou, val_miou;
            ``kd_loss`` drawn dashed when present and finite).
        title: figure title.
    """
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    for i, (name, h) in enumerate(histories.items()):
        color = f"C{i}"
        ax_loss.plot(h.epoch, h.loss, color=color, label=f"{name} total")
        if "kd_loss" in h and h.kd_loss.notna().any():
            ax_loss.plot(h.epoch, h.kd_loss, color=color, ls="--", label=f"{name} distillation")
        ax_iou.plot(h.epoch, h.train_miou, color=color, ls=":", label=f"{name} train (running)")
        val = h.dropna(subset=["val_miou"])
        ax_iou.plot(val.epoch, val.val_miou, color=color, marker="o", label=f"{name} val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_iou.set(xlabel="epoch", ylabel="mIoU", title="mIoU", ylim=(0, None))
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_stage_iou(per_class: pd.DataFrame, title: str = "") -> Figure:
    """Grouped bars of IoU per class, one group per class and one bar per run/checkpoint.

    Args:
        per_class: long table with columns ``class``, ``iou`` and a ``series`` column naming the bar
            (e.g. "test · best"); classes keep their first-seen order.
        title: figure title.
    """
    wide = per_class.pivot_table(index="class", columns="series", values="iou", sort=False)
    wide = wide.reindex(pd.unique(per_class["class"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(wide)), 3.4), layout="constrained")
    width = 0.8 / max(1, wide.shape[1])
    x = np.arange(len(wide))
    for i, series in enumerate(wide.columns):
        ax.bar(x + (i - (wide.shape[1] - 1) / 2) * width, wide[series].to_numpy(float), width, label=series)
    ax.set_xticks(x, wide.index, rotation=45, ha="right")
    ax.set(ylabel="IoU", ylim=(0, 1), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_explorer_view(view: ImageView, class_names: list[str], palette: np.ndarray) -> Figure:
    """Image | ground truth | prediction, with a legend of the classes present."""
    fig, axes = plt.subplots(
        1, 3, figsize=(11, 11 / 3 * view.label.shape[0] / view.label.shape[1] + 0.9), layout="constrained"
    )
    for ax, picture, name in zip(
        axes,
        (view.image, colorize(view.label, palette), colorize(view.pred, palette)),
        ("image", "ground truth", "prediction"),
    ):
        ax.imshow(picture)
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
    present = sorted(
        {
            int(v)
            for v in np.unique(np.concatenate([view.label.ravel(), view.pred.ravel()]))
            if v < len(class_names)
        }
    )
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in present]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False
    )
    fig.suptitle(view.title, fontsize=10)
    return fig
