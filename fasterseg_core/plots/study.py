"""Figures of ``06_analysis`` that put this run beside the study: per-class IoU with the means (the study's
Figure 1), distillation's per-class gain, training curves on the study's epoch axis, accuracy against
latency. Plots only: every number comes in computed."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..evidence import interval

# Our three networks keep the same colour in every figure; published series are drawn in greys.
MODEL_COLOURS = {"Teacher": "#1f77b4", "Distilled student": "#d62728", "Trained student": "#2ca02c"}
_STUDY_GREYS = ("#4d4d4d", "#7f7f7f", "#a6a6a6", "#cccccc", "#e0e0e0")


def _palette(names: list[str]) -> dict[str, str]:
    greys = iter(_STUDY_GREYS * 4)
    return {n: next((c for m, c in MODEL_COLOURS.items() if n.startswith(m)), None) or next(greys) for n in names}


def plot_per_class_iou(bars: pd.DataFrame, means: pd.DataFrame, reference: tuple[str, float] | None = None,
                       title: str = "") -> Figure:
    """IoU per class (left) and the mean over classes per model (right), as the study's Figure 1, with the
    spread over seeds: bars are means, whiskers the 95 % Student-t interval, dots (right) single seeds.

    Args:
        bars: long table ``class``, ``model``, ``seed``, ``iou`` (percent; published series have one row per
            class).
        means: long table ``model``, ``seed``, ``iou``: the mean over classes of each seed (the study's bars).
        reference: (label, value in percent) drawn as a dashed line on the means (e.g. the paper's 71.5).
        title: figure title.
    """
    order = list(pd.unique(bars["model"]))
    palette = _palette(order)
    fig, (ax, axm) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=(4, 1.1), layout="constrained")
    sns.barplot(bars, x="class", y="iou", hue="model", hue_order=order, palette=palette, errorbar=interval,
                capsize=0.1, err_kws={"linewidth": 0.8}, ax=ax, order=list(pd.unique(bars["class"])))
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.set(xlabel="", ylabel="IoU (%)", ylim=(0, 100))
    ax.legend(fontsize=7, ncol=min(len(order), 3), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    fig.suptitle(title, fontsize=10)
    m_order = list(pd.unique(means["model"]))
    sns.barplot(means, y="model", x="iou", order=m_order, hue="model", palette=_palette(m_order), errorbar=interval,
                capsize=0.2, err_kws={"linewidth": 0.8}, ax=axm, legend=False)
    sns.stripplot(means, y="model", x="iou", order=m_order, color="k", size=3, ax=axm)
    for y, name in enumerate(m_order):
        v = means[means.model == name].iou.mean()
        if not math.isnan(v):
            axm.text(v + 1, y, f"{v:.1f}", va="center", fontsize=7)
    if reference is not None:
        axm.axvline(reference[1], ls="--", color="k", lw=1)
        axm.set_title(f"dashed: {reference[0]}\n{reference[1]:.1f} %", fontsize=7)
    axm.set(xlim=(0, 100), xlabel="mean IoU (%)", ylabel="")
    axm.tick_params(axis="y", labelsize=7)
    return fig


def plot_class_gain(gain: pd.DataFrame, title: str = "") -> Figure:
    """Per-class difference in IoU points (distilled − scratch student), paired by seed: dots are seeds,
    bars the mean (green: gain, red: loss), whiskers the 95 % Student-t interval.

    Args:
        gain: long table ``class``, ``seed``, ``gain`` (percentage points).
    """
    order = list(pd.unique(gain["class"]))
    means = gain.groupby("class", sort=False).gain.mean().reindex(order)
    colours = {c: "#2ca02c" if v >= 0 else "#d62728" for c, v in means.fillna(0).items()}
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.28 * len(order)), layout="constrained")
    sns.barplot(gain, y="class", x="gain", order=order, hue="class", palette=colours, errorbar=interval,
                capsize=0.2, err_kws={"linewidth": 0.8}, ax=ax, legend=False)
    sns.stripplot(gain, y="class", x="gain", order=order, color="k", size=3, ax=ax)
    ax.axvline(0, color="k", lw=0.8)
    lim = max(1.0, float(np.nanmax(np.abs(gain.gain.to_numpy()))) * 1.3) if len(gain) else 1.0
    ax.set(xlim=(-lim, lim), xlabel="IoU difference (percentage points)", ylabel="")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def plot_study_curves(frame: pd.DataFrame, panels: list[str]) -> Figure:
    """One panel per trained network: mIoU against (paper) epochs; ours in colour (the mean over the seeds,
    band ±1 sd), the study's in grey.

    Args:
        frame: long table with ``panel``, ``series``, ``kind`` ("val" solid, "train" dashed), ``source``
            ("ours" or "study"), ``seed``, ``x`` (epochs on the common axis) and ``miou`` (percent).
        panels: panel names in order (the networks).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.6), sharex=True, sharey=True,
                             layout="constrained")
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels):
        sub = frame[frame.panel == panel] if len(frame) else frame
        greys: dict[str, str] = {}
        for series, rows in sub.groupby("series", sort=False) if len(sub) else []:
            ours = rows.source.iloc[0] == "ours"
            run = series.rsplit(",", 1)[0]
            colour = MODEL_COLOURS.get(panel, "C0") if ours else greys.setdefault(run, _STUDY_GREYS[len(greys)])
            val = rows.kind.iloc[0] == "val"
            sns.lineplot(rows, x="x", y="miou", ax=ax, color=colour, errorbar=("sd", 1) if ours else None,
                         linestyle="-" if val else "--", linewidth=1.6 if ours else 1.0,
                         marker="o" if val and ours else None, markersize=3, alpha=1.0 if val else 0.7,
                         label=series)
        if not len(sub):
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
        else:
            ax.set_xscale("log")
            ax.legend(fontsize=6, loc="lower right", frameon=False)
        ax.set_title(panel, fontsize=10)
        ax.set(xlabel="paper epochs (1000 iterations × batch 12)", ylabel="mIoU (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    return fig


def plot_paired_differences(frame: pd.DataFrame, margin: float) -> Figure:
    """Per-seed paired differences of several claims: dots per seed, the mean with its 95 % Student-t
    interval, a band of ±``margin`` around 0 (the equivalence margin).

    Args:
        frame: long table ``claim``, ``seed``, ``points`` (differences in percentage points).
        margin: the "on par" margin in points.
    """
    order = list(pd.unique(frame["claim"]))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.55 * len(order)), layout="constrained")
    ax.axvspan(-margin, margin, color="0.9", zorder=0, label=f"±{margin:g} point (on par)")
    ax.axvline(0, color="k", lw=0.8)
    sns.pointplot(frame, y="claim", x="points", order=order, errorbar=interval, linestyle="none", color="k",
                  capsize=0.2, markers="D", ax=ax)
    sns.stripplot(frame, y="claim", x="points", order=order, hue="seed", palette="tab10", size=6, ax=ax,
                  jitter=0.1)
    ax.set(xlabel="difference (mIoU points)", ylabel="")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=7, title="seed", title_fontsize=7, loc="best")
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
