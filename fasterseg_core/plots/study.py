"""Figures of ``06_analysis`` that put this run beside the study: per-class IoU with the means (the study's
Figure 1), distillation's per-class gain, training curves on the study's epoch axis, accuracy against
latency. Plots only: every number comes in computed."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

# Our three networks keep the same colour in every figure; published series are drawn in greys.
MODEL_COLOURS = {"Teacher": "#1f77b4", "Distilled student": "#d62728", "Trained student": "#2ca02c"}
_STUDY_GREYS = ("#4d4d4d", "#7f7f7f", "#a6a6a6", "#cccccc", "#e0e0e0")


def _colour(name: str, study_index: int) -> str:
    for model, colour in MODEL_COLOURS.items():
        if name.startswith(model):
            return colour
    return _STUDY_GREYS[study_index % len(_STUDY_GREYS)]


def plot_per_class_iou(
    bars: pd.DataFrame, means: pd.Series, reference: tuple[str, float] | None = None, title: str = ""
) -> Figure:
    """Grouped bars of IoU per class (left) and the mean per model (right), as the study's Figure 1.

    Args:
        bars: class × series IoU in percent (NaN: class absent, no bar).
        means: series → mean IoU in percent (the study's bar chart).
        reference: (label, value in percent) drawn as a dashed line on the means (e.g. the paper's 71.5).
        title: figure title.
    """
    fig, (ax, axm) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=(4, 1.1), layout="constrained")
    n = max(1, bars.shape[1])
    width = 0.8 / n
    x = np.arange(len(bars))
    greys = 0
    for j, name in enumerate(bars.columns):
        colour = _colour(name, greys)
        greys += colour in _STUDY_GREYS
        ax.bar(
            x + (j - (n - 1) / 2) * width,
            bars[name].to_numpy(dtype=float),
            width * 0.95,
            color=colour,
            label=name,
            edgecolor="k" if colour in _STUDY_GREYS else colour,
            linewidth=0.3,
        )
    ax.set_xticks(x, bars.index, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, len(bars) - 0.4)
    ax.legend(fontsize=7, ncol=min(n, 3), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    fig.suptitle(title, fontsize=10)
    greys = 0
    colours = []
    for name in means.index:
        colours.append(_colour(name, greys))
        greys += colours[-1] in _STUDY_GREYS
    ym = np.arange(len(means))
    axm.barh(ym, means.to_numpy(dtype=float), color=colours, edgecolor="k", linewidth=0.3)
    for y, v in zip(ym, means.to_numpy(dtype=float)):
        if not math.isnan(v):
            axm.text(v + 1, y, f"{v:.1f}", va="center", fontsize=7)
    if reference is not None:
        axm.axvline(reference[1], ls="--", color="k", lw=1)
        axm.set_title(f"dashed: {reference[0]}\n{reference[1]:.1f} %", fontsize=7)
    axm.set_yticks(ym, means.index, fontsize=7)
    axm.invert_yaxis()
    axm.set_xlim(0, 100)
    axm.set_xlabel("mean IoU (%)")
    return fig


def plot_class_gain(gain: pd.Series, title: str = "") -> Figure:
    """Horizontal bars of a per-class difference in IoU points (green: gain, red: loss).

    Args:
        gain: class → difference in percentage points (NaN: class absent, left blank).
    """
    values = gain.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.25 * len(gain)), layout="constrained")
    colours = ["#2ca02c" if v >= 0 else "#d62728" for v in np.nan_to_num(values)]
    y = np.arange(len(gain))
    ax.barh(y, np.nan_to_num(values), color=colours)
    for yi, v in zip(y, values):
        if not math.isnan(v):
            ax.text(v, yi, f" {v:+.1f} ", va="center", ha="left" if v >= 0 else "right", fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, gain.index, fontsize=8)
    ax.invert_yaxis()
    lim = max(1.0, float(np.nanmax(np.abs(values))) * 1.3) if np.isfinite(values).any() else 1.0
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("IoU difference (percentage points)")
    ax.set_title(title, fontsize=10)
    return fig


def plot_study_curves(frame: pd.DataFrame, panels: list[str]) -> Figure:
    """One panel per trained network: mIoU against (paper) epochs, ours in colour, the study's in grey.

    Args:
        frame: long table with ``panel``, ``series``, ``kind`` ("val" solid, "train" dashed), ``source``
            ("ours" or "study"), ``x`` (epochs on the common axis) and ``miou`` (percent).
        panels: panel names in order (the networks).
    """
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.0 * len(panels), 3.6), sharex=True, sharey=True, layout="constrained"
    )
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels):
        sub = frame[frame.panel == panel] if len(frame) else frame
        greys: dict[str, str] = {}
        for series, rows in sub.groupby("series", sort=False) if len(sub) else []:
            ours = rows.source.iloc[0] == "ours"
            run = series.rsplit(",", 1)[0]
            colour = (
                MODEL_COLOURS.get(panel, "C0") if ours else greys.setdefault(run, _STUDY_GREYS[len(greys)])
            )
            val = rows.kind.iloc[0] == "val"
            ax.plot(
                rows.x,
                rows.miou,
                "-" if val else "--",
                color=colour,
                lw=1.6 if ours else 1.0,
                marker="o" if val and ours else None,
                ms=3,
                alpha=1.0 if val else 0.7,
                label=series,
            )
        if not len(sub):
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
        else:
            ax.set_xscale("log")
            ax.legend(fontsize=6, loc="lower right", frameon=False)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("paper epochs (1000 iterations × batch 12)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[0].set_ylim(0, 100)
    return fig


def plot_accuracy_latency(points: pd.DataFrame, latency_only: pd.DataFrame, subtitle: str = "") -> Figure:
    """Accuracy against latency for trained networks, with a latency-only strip underneath.

    Args:
        points: ``model``, ``network``, ``ms`` and ``val mIoU (%)`` of the networks trained here.
        latency_only: ``network``, ``ms`` and ``kind`` of networks timed but not trained here (peers).
        subtitle: hardware and backend.
    """
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(7, 4.6), sharex=True, height_ratios=(3, 1), layout="constrained"
    )
    seen: dict[float, int] = {}  # the two students share one network, hence one latency: stack labels
    for p in points.rename(columns={"val mIoU (%)": "miou"}).itertuples():
        k = seen[p.ms] = seen.get(p.ms, -1) + 1
        ax.scatter(p.ms, p.miou, s=60, color=MODEL_COLOURS.get(p.model, "C0"), zorder=3, label=p.model)
        ax.annotate(
            f"{p.model} ({p.network})",
            (p.ms, p.miou),
            textcoords="offset points",
            xytext=(8, 6 - 14 * k),
            fontsize=7,
            va="center",
        )
    if points.empty:
        ax.text(0.5, 0.5, "no network trained here", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("val mIoU (%), best checkpoint")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"Accuracy against latency ({subtitle})", fontsize=10)
    markers = {"torchvision peer": "s", "FasterSeg, not trained here": "^"}
    ordered = latency_only.sort_values("ms") if len(latency_only) else latency_only
    for i, o in enumerate(ordered.itertuples()):  # labels alternate above and below, by latency
        strip.scatter(o.ms, 0, marker=markers.get(o.kind, "o"), color="0.4", s=40)
        strip.annotate(
            o.network,
            (o.ms, 0),
            textcoords="offset points",
            xytext=(0, 7 if i % 2 else -12),
            fontsize=6,
            ha="center",
        )
    strip.set_yticks([])
    strip.set_ylim(-1, 1)
    strip.set_ylabel("latency\nonly", fontsize=8)
    strip.set_xscale("log")
    ms = [*points.get("ms", []), *latency_only.get("ms", [])]
    if ms:  # 1-2-5 ticks across the range (a log axis over less than a decade shows no major tick)
        lo, hi = min(ms), max(ms)
        ticks = [
            m * 10**e
            for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
            for m in (1, 2, 5)
            if lo / 1.5 <= m * 10**e <= hi * 1.5
        ]
        strip.set_xticks(ticks, [f"{t:g}" for t in ticks])
        strip.xaxis.set_minor_formatter(NullFormatter())
    strip.set_xlabel("median latency per image, batch 1 (ms, log scale)")
    return fig
