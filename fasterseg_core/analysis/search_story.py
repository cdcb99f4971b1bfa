"""The search as figures (Figure 3a-e), reusing :mod:`fasterseg_core.plots` on ``01_search``'s artifacts:
``arch_{student,teacher}.json``, ``history.json``, ``arch_history.json`` and ``metrics.json``.
"""

from __future__ import annotations

import pandas as pd

from .. import plots
from ..models.architecture import Architecture
from ..models.published import published_architecture
from .artifacts import Artifacts
from .exhibit import Exhibit
from .published import PAPER_ARCH_STEPS


def search_story(art: Artifacts) -> list[Exhibit]:
    """The search as figures (reusing :mod:`fasterseg_core.plots`): the derived student and teacher drawn as
    the paper's Fig. 6 beside the published student, the latency against its target with λ, and how the
    student's α/β/γ moved."""
    s = art.stages["01_search"]
    history, arch_history = s.read_json("history.json"), s.read_json("arch_history.json")
    if not s.ran or history is None or arch_history is None:
        return [Exhibit("Figure 3", "The search", "Needs 01_search.", missing=f"01_search {s.status}")]
    m = s.metrics
    where = f"outputs/{art.cfg.profile}/01_search/"
    out = []
    for i, role in enumerate(("student", "teacher")):
        arch = Architecture.from_json(s.folder / f"arch_{role}.json")
        r = m[role]
        fig = plots.plot_architecture(arch, f"searched {role}: {r['latency_ms']:.2f} ms on the table")
        cap = (
            f"The {role} derived by this run's search ({where}arch_{role}.json), drawn as the paper's "
            f"Fig. 6: boxes are cells (operator, output channels) at their input resolution, "
            f"one colour per branch. "
            f"Table latency {r['latency_ms']:.2f} ms ({r['fps']:.1f} FPS) on "
            f"{m['latency_table']['hardware_tag']} at {'x'.join(map(str, m['latency_table']['input_hw']))}; "
            f"largest α/β/γ logit change {r['arch_max_shift']:.3g}."
        )
        out.append(Exhibit(f"Figure 3{'ab'[i]}", f"Searched {role}", cap, figure=fig))
    fig = plots.plot_architecture(
        published_architecture("student"), "published FasterSeg student (paper Fig. 6)"
    )
    out.append(
        Exhibit(
            "Figure 3c",
            "Published student",
            "The authors' searched student (paper Fig. 6, "
            "fasterseg_core/published/student.json) in the same drawing, for comparison.",
            figure=fig,
        )
    )
    fig = plots.plot_search_latency(history, tuple(m["target_fps"]))
    cap = (
        f"Table latency of the derived student per search epoch (history.json) against the target window "
        f"{m['target_fps'][0]:.1f}–{m['target_fps'][1]:.1f} FPS, and the latency weight λ (right axis). "
        f"Final λ {m['lambda_final']:.3g}, {m['arch_steps']} architecture steps (paper: {PAPER_ARCH_STEPS:,}); the student "
        f"ends {'inside' if m['student_in_window'] else 'outside'} the window."
    )
    out.append(Exhibit("Figure 3d", "Latency against the target, and λ", cap, figure=fig))
    fig = plots.plot_arch_evolution(arch_history, "student")
    cap = (
        "The student's operator (α), input (β) and width (γ) choices per search epoch (arch_history.json): "
        "colour is the most likely choice, shade its lead over a uniform choice."
    )
    out.append(Exhibit("Figure 3e", "How α, β and γ moved", cap, figure=fig))
    out.append(searched_vs_published(art))
    return out


def searched_vs_published(art: Artifacts) -> Exhibit:
    """Table 3f: this run's searched networks beside the published ones: table and measured latency on this
    machine, parameters, cells per branch, how far α/β/γ moved, and what a search of this size can show."""
    s = art.stages["01_search"]
    m = s.metrics
    lat = art.latency
    eager = lat[(lat.status == "ok") & (lat.backend == "eager")] if not lat.empty else lat
    rows = []
    for origin in ("searched", "published"):
        for role in ("student", "teacher"):
            arch = (Architecture.from_json(s.folder / f"arch_{role}.json") if origin == "searched"
                    else published_architecture(role))
            r = eager[eager.network == f"{origin} {role}"] if len(eager) else eager
            rows.append({
                "network": f"{origin} {role}", "cells per branch": " + ".join(str(len(b)) for b in arch.branches),
                "branch ends": ", ".join(f"1/{8 * 2**e}" for e in arch.lasts),
                "table ms": m[role]["latency_ms"] if origin == "searched" else (m["published_student_ms"]
                                                                               if role == "student" else None),
                "measured ms": float(r.iloc[0].median_ms) if len(r) else None,
                "params (M)": float(r.iloc[0].params_M) if len(r) else None,
                "largest α/β/γ change": m[role]["arch_max_shift"] if origin == "searched" else None,
            })
    share = m["arch_steps"] / PAPER_ARCH_STEPS
    cap = (
        f"The networks this run's search derived beside the authors' published ones (Fig. 6): their table latency "
        f"on this device's lookup table (01_search) and their measured eager latency on this machine "
        f"(05_latency, {', '.join(dict.fromkeys(eager.input_hw)) if len(eager) else 'not measured'}). "
        f"What a search of this size can and cannot show: {m['arch_steps']} architecture steps are "
        f"{100 * share:.2g} % of the paper's {PAPER_ARCH_STEPS:,}; the architecture logits moved by at most "
        f"{max(m['student']['arch_max_shift'], m['teacher']['arch_max_shift']):.3g}. It shows that the search, its "
        "latency objective and the λ rule run end to end on this device and in which direction the latency term "
        "pushes; it cannot show which architecture FasterSeg's search finds, so the training stages here train "
        + ("the published networks." if art.cfg.model.arch_source == "published" else "the derived networks.")
    )
    fmts = {"table ms": "{:.2f}", "measured ms": "{:.2f}", "params (M)": "{:.2f}", "largest α/β/γ change": "{:.3g}"}
    return Exhibit("Table 3f", "Searched and published networks", cap, pd.DataFrame(rows), formats=fmts)
