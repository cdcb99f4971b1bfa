"""Figures of ``01_search``: a network drawn as the paper's Fig. 6, how α/β/γ moved, latency against the
target window with λ."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..models.architecture import Architecture
from ..models.network import plan_cells

# Operator abbreviations of the paper's Fig. 6 and a colour per operator / per branch.
_OP_SHORT = {"skip": "skip", "conv": "c", "conv_downup": "zc", "conv_2x": "c2", "conv_2x_downup": "zc2"}
_OP_COLOUR = {"skip": "#dddddd", "conv": "#9ecae1", "conv_downup": "#a1d99b", "conv_2x": "#3182bd",
              "conv_2x_downup": "#31a354"}
_BRANCH_COLOUR = ("#d62728", "#ff7f0e")  # branch 0 (ends at 1/32), branch 1
_SHARED_COLOUR = "#6a3d9a"


def plot_architecture(arch: Architecture, title: str = "") -> Figure:
    """A derived network drawn as the paper's Fig. 6: cells on the three scales, each branch's path.

    Each box is one cell module at (layer, input stride): operator (c = conv, zc = zoomed conv, c2 = conv×2,
    zc2 = zoomed conv×2; ↓ = stride 2) and output channels. Box edges and paths are coloured by branch;
    cells shared by both branches are drawn once, in purple. The stem feeds every branch at 1/8; the head
    fuses the branches at 1/8.

    Args:
        arch: the architecture (searched or published).
        title: figure title (e.g. "student, epoch 30").
    """
    plans = plan_cells(arch)
    n_layers = max(len(b) for b in arch.branches)
    # two unshared cells of one layer at the same scale sit side by side vertically
    slots: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(plans):
        slots.setdefault((p.layer, p.in_scale), []).append(i)
    pos: dict[tuple[int, int], tuple[float, float]] = {}  # (layer, branch) -> box centre
    for (layer, scale), members in slots.items():
        for rank, i in enumerate(members):
            y = -scale + (0.17 * (1 - 2 * rank) if len(members) > 1 else 0.0)
            for b in plans[i].branches:
                pos[(layer, b)] = (float(layer), y)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * n_layers + 3.5), 4.2), layout="constrained")
    stem_xy, head_xy = (-1.4, 0.0), (n_layers + 0.6, 0.0)
    for b, branch in enumerate(arch.branches):
        pts = [stem_xy] + [pos[(layer, b)] for layer in range(len(branch))]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "-", color=_BRANCH_COLOUR[b], lw=2, zorder=1, alpha=0.8)
        # the decoder brings the branch's last feature back to 1/8
        ax.annotate("", xy=(head_xy[0] - 0.5, head_xy[1]), xytext=(pts[-1][0] + 0.42, pts[-1][1]),
                    arrowprops={"arrowstyle": "->", "color": _BRANCH_COLOUR[b], "lw": 1.2, "ls": "--"})
    for p in plans:
        x, y = pos[(p.layer, p.branches[0])]
        edge = _SHARED_COLOUR if len(p.branches) > 1 else _BRANCH_COLOUR[p.branches[0]]
        ax.add_patch(Rectangle((x - 0.42, y - 0.15), 0.84, 0.3, facecolor=_OP_COLOUR[p.op], edgecolor=edge,
                               lw=2.2, zorder=2))
        label = _OP_SHORT[p.op] + ("↓" if p.stride == 2 else "")
        ax.text(x, y, f"{label}\n{p.c_out}", ha="center", va="center", fontsize=7, zorder=3)
    ax.add_patch(Rectangle((stem_xy[0] - 0.5, -0.18), 1.0, 0.36, facecolor="white", edgecolor="k", zorder=2))
    ax.text(
        *stem_xy, f"stem\n{arch.channels(8, arch.stem_chi)}", ha="center", va="center", fontsize=7, zorder=3
    )
    ax.add_patch(Rectangle((head_xy[0] - 0.5, -0.18), 1.0, 0.36, facecolor="white", edgecolor="k", zorder=2))
    ax.text(*head_xy, "FFM +\nhead", ha="center", va="center", fontsize=7, zorder=3)
    ax.set_yticks([0, -1, -2], ["1/8", "1/16", "1/32"])
    ax.set_xticks(range(n_layers))
    ax.set_xlim(stem_xy[0] - 0.7, head_xy[0] + 0.7)
    ax.set_ylim(-2.5, 0.5)
    ax.set_xlabel("cell (layer)")
    ax.set_ylabel("input resolution")
    ax.spines[["top", "right"]].set_visible(False)
    handles = [
        Patch(facecolor=_OP_COLOUR[o], label=f"{_OP_SHORT[o]} = {o}") for o in _OP_COLOUR if o != "skip"
    ]
    handles += [Patch(facecolor="white", edgecolor=c, lw=2, label=f"branch {b} (→1/{8 * 2 ** e})")
                for b, (c, e) in enumerate(zip(_BRANCH_COLOUR, arch.lasts))]
    if len(arch.branches) > 1:
        handles.append(Patch(facecolor="white", edgecolor=_SHARED_COLOUR, lw=2, label="shared cell"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    ax.set_title(title or f"{arch.role}: {' + '.join(str(len(b)) for b in arch.branches)} cells", fontsize=10)
    return fig


def _arch_rows(kind: str, scale: int, rows: int) -> list[str]:
    """Row labels of α/β/γ tensors (§2.3): which cell or feature each row belongs to."""
    stride = 8 * 2**scale
    if kind == "alpha":
        return [f"cell {r + scale} @1/{stride}" for r in range(rows)]
    if kind == "beta":
        return [f"cell {r + scale + 1} @1/{stride}" for r in range(rows)]
    first = 1 if scale == 2 else 0  # ratio_k_2 row r belongs to layer r + 1
    return [f"layer {r + first} @1/{stride}" for r in range(rows)]


def plot_arch_evolution(arch_history: Sequence[dict], role: str = "student") -> Figure:
    """α, β and γ of one architecture index over the search epochs, as heatmaps.

    Colour = the currently most likely choice (operator, input or width); shade = how far its probability
    is above uniform, relative to the largest such lead in the panel (given in the panel title), so early
    or short searches whose probabilities have barely moved still show their trend.

    Args:
        arch_history: the search's ``arch_history.json``: per epoch (0 = initial) ``{"epoch", "teacher":
            {alpha_0_0: [[…]], …}, "student": {…}}`` raw logits.
        role: "teacher" or "student".
    """
    k = 0 if role == "teacher" else 1
    epochs = [h["epoch"] for h in arch_history]
    groups = {
        "alpha": ([f"alpha_{k}_{s}" for s in range(3)], ["skip", "c", "zc", "c2", "zc2"]),
        "beta": ([f"beta_{k}_{s}" for s in (1, 2)], ["from down", "from keep"]),
        "gamma": ([f"ratio_{k}_{s}" for s in range(3)], None),
    }
    if role == "teacher":
        groups.pop("gamma")  # the teacher's widths are fixed (one column)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(
        1, len(groups), figsize=(4.2 * len(groups), 7), layout="constrained", squeeze=False
    )
    for ax, (kind, (names, choices)) in zip(axes[0], groups.items()):
        probs = []  # (epochs, rows, n_choices)
        labels: list[str] = []
        for name in names:
            t = np.asarray([h[role][name] for h in arch_history], dtype=np.float64)
            e = np.exp(t - t.max(axis=-1, keepdims=True))
            probs.append(e / e.sum(axis=-1, keepdims=True))
            labels += _arch_rows(kind, int(name[-1]), t.shape[1])
        p = np.concatenate(probs, axis=1)
        n = p.shape[-1]
        lead = (p.max(-1) - 1 / n) / (1 - 1 / n)
        top = max(float(lead.max()), 1e-12)
        colours = np.asarray([cmap(int(i)) for i in p.argmax(-1).ravel()]).reshape(*p.shape[:2], 4)
        shade = (lead / top)[..., None]
        rgb = 1 - shade * (1 - colours[..., :3])  # blend from white
        ax.imshow(rgb.transpose(1, 0, 2), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels, fontsize=5)
        ax.set_xticks(range(len(epochs)), epochs, fontsize=6)
        ax.set_xlabel("epoch")
        names_ = choices or [f"{c}/12" for c in (4, 6, 8, 10, 12)][:n]
        ax.legend(handles=[Patch(color=cmap(i), label=c) for i, c in enumerate(names_)], fontsize=6,
                  loc="upper left", bbox_to_anchor=(0, -0.06), ncol=3, frameon=False)
        greek = {"alpha": "α (operator)", "beta": "β (input)", "gamma": "γ (width)"}[kind]
        ax.set_title(f"{role} {greek}\nmax p = {float(p.max(-1).max()):.3f}", fontsize=9)
    return fig


def plot_search_latency(history: Sequence[dict], target_fps: tuple[float, float]) -> Figure:
    """The student's table latency per search epoch against the target window, with λ.

    Args:
        history: the search's ``history.json`` (records with ``phase == "search"``): ``student_latency_ms``
            (derived network), ``student_latency02_ms`` / ``…12_ms`` (its two candidates), ``lambda`` (used
            during the epoch) and ``lambda_next`` (after the epoch's adaptation).
        target_fps: (low, high) FPS window of the adaptive λ.
    """
    rows = [h for h in history if h.get("phase") == "search"]
    epochs = [h["epoch"] for h in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    low, high = target_fps
    ax.axhspan(1000 / high, 1000 / low, color="#2ca02c", alpha=0.15,
               label=f"target {low:.1f}–{high:.1f} FPS")
    for key, style, label in (("student_latency02_ms", ":", "candidate [2, 0]"),
                              ("student_latency12_ms", "--", "candidate [2, 1]"),
                              ("student_latency_ms", "o-", "derived student")):
        values = [np.nan if h.get(key) is None else h[key] for h in rows]
        ax.plot(epochs, values, style, color="k" if key == "student_latency_ms" else "0.5", label=label)
    ax.set_xlabel("search epoch")
    ax.set_ylabel("table latency (ms)")
    ax2 = ax.twinx()
    lams = [rows[0]["lambda"]] + [h["lambda_next"] for h in rows] if rows else []
    ax2.step([0, *epochs], lams, where="post", color="#1f77b4", label="λ")
    ax2.set_yscale("log")
    ax2.set_ylabel("λ (latency weight)", color="#1f77b4")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    ax.set_xticks([0, *epochs])
    return fig
