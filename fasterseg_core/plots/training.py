"""Figures of the training stages (``02_teacher`` … ``04_student``) and of the results explorer: one stage's
curves, its per-class IoU, one image's prediction."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..data.labels import colorize
from ..evidence import interval
from ..predictions import ImageView


def plot_stage_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Loss (left) and validation / running-train mIoU (right) per epoch of one training stage, the mean
    over its seeds with a band of ±1 sd when there are several (seaborn).

    Args:
        history: the seeds' ``history.csv`` rows with a ``seed`` column (epoch, loss, kd_loss, train_miou,
            val_miou; ``kd_loss`` drawn dashed when present and finite).
        title: figure title.
    """
    n = history["seed"].nunique() if "seed" in history else 1
    band = ("sd", 1) if n > 1 else None
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    sns.lineplot(history, x="epoch", y="loss", errorbar=band, ax=ax_loss, label="total")
    if "kd_loss" in history and history.kd_loss.notna().any():
        sns.lineplot(history, x="epoch", y="kd_loss", errorbar=band, ax=ax_loss, label="distillation",
                     linestyle="--")
    sns.lineplot(history, x="epoch", y="train_miou", errorbar=band, ax=ax_iou, label="train (running)",
                 linestyle=":")
    sns.lineplot(history.dropna(subset=["val_miou"]), x="epoch", y="val_miou", errorbar=band, ax=ax_iou,
                 marker="o", label="val")
    spread = f"mean of {n} seeds, band ±1 sd" if n > 1 else "one seed"
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"training loss ({spread})")
    ax_iou.set(xlabel="epoch", ylabel="mIoU", title=f"mIoU ({spread})", ylim=(0, None))
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_stage_iou(per_class: pd.DataFrame, title: str = "") -> Figure:
    """IoU per class (bars: mean over the seeds; whiskers: 95 % Student-t interval when there are several
    seeds), one bar per series (e.g. "test · best"), classes in their first-seen order.

    Args:
        per_class: long table with columns ``class``, ``iou``, ``series`` and (several seeds) ``seed``.
        title: figure title.
    """
    order = list(pd.unique(per_class["class"]))
    n = per_class["seed"].nunique() if "seed" in per_class else 1
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(order)), 3.4), layout="constrained")
    sns.barplot(per_class, x="class", y="iou", hue="series", order=order, ax=ax,
                errorbar=interval if n > 1 else None, capsize=0.1, err_kws={"linewidth": 1})
    ax.tick_params(axis="x", rotation=45)
    ax.set(xlabel="", ylabel="IoU", ylim=(0, 1), title=title + (f" (mean of {n} seeds, 95 % t-interval)" if n > 1
                                                                  else ""))
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
