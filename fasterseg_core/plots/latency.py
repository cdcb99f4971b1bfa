"""Figure of ``05_latency``: median latency per network and backend."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def plot_latency(frame: pd.DataFrame) -> Figure:
    """Median latency (ms, log scale) per network and backend on one or more machines.

    Args:
        frame: rows of :class:`fasterseg_core.latency.suite.LatencyRecord` (network, backend, status,
            median_ms, p90_ms, hardware_tag). Unavailable/failed backends are written in as text.
    """
    networks = list(dict.fromkeys(frame.network))
    backends = list(dict.fromkeys(frame.backend))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * len(networks) * max(1, len(backends))))
    height = 0.8 / max(1, len(backends))
    colours = plt.get_cmap("tab10").colors
    for j, backend in enumerate(backends):
        for i, net in enumerate(networks):
            row = frame[(frame.network == net) & (frame.backend == backend)]
            if row.empty:
                continue
            row = row.iloc[0]
            y = i + (j - (len(backends) - 1) / 2) * height
            if row.status == "ok":
                ax.barh(
                    y,
                    row.median_ms,
                    height=height * 0.9,
                    color=colours[j % 10],
                    xerr=[[0], [max(0.0, row.p90_ms - row.median_ms)]],
                    error_kw={"lw": 0.8},
                    label=backend if i == 0 or backend not in ax.get_legend_handles_labels()[1] else None,
                )
                ax.text(row.median_ms * 1.05, y, f"{row.median_ms:.1f}", va="center", fontsize=7)
            else:
                ax.text(
                    0.0,
                    y,
                    f"  {backend}: {row.status}",
                    va="center",
                    fontsize=7,
                    color="grey",
                    transform=ax.get_yaxis_transform(),
                )
    ax.set_yticks(range(len(networks)), networks)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median latency per image, batch 1 (ms, log scale; whisker: p90)")
    tags = ", ".join(dict.fromkeys(frame.hardware_tag))
    sizes = ", ".join(dict.fromkeys(frame.input_hw))
    ax.set_title(f"Latency on {tags} at {sizes}")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
