"""What a search state yields: derived teacher and student with table latencies, records and artefacts.

Method: ``docs/method.md`` §3.5 (per-epoch evaluation and saved artefacts) and §4 (derivation, through
:func:`fasterseg_core.models.derive.derive_architecture`, and the branch choice of §4.5; paper §3.3 and
Fig. 6). Used by :mod:`fasterseg_core.search.driver` after every search epoch.

For each role the two candidate networks ([2, 0]: branches ending at 1/32 and 1/8; [2, 1]: 1/32 and 1/16)
are derived and timed on the latency table; the accuracy–latency objective of §4.5 picks one. With
``search.faithful_quirks`` the teacher's choice uses the student's numbers, as the original saved the
student's metrics into both arch files (§3.5, §12.1-7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..latency.lut import LatencyTable, estimate_latency
from ..lifecycle import Run
from ..models.architecture import Architecture
from ..models.derive import DerivationError, choose_lasts, derive_architecture
from ..models.supernet import HEAD_NAMES, Supernet
from ..storage import save_json

ROLES = ("teacher", "student")
BRANCH_HEADS = {"02": "8s_32s", "12": "16s_32s"}  # §3.5: heads whose mIoU picks the branches (§4.5)


@dataclass
class Derived:
    """The derived network of one role plus its two candidates' table latencies (ms, None: not derivable)."""

    arch: Architecture
    latency_ms: float
    candidates_ms: dict[str, float | None]


def derive_role(
    state: dict[str, Any],
    role: str,
    cfg: RunConfig,
    lut: LatencyTable,
    num_classes: int,
    miou: dict[str, float],
    *,
    latencies: dict[str, float | None] | None = None,
) -> Derived:
    """Derive ``role``'s network from its α/β/γ (§4) and time it and its candidates on ``lut`` (§3.5).

    Args:
        state: the eight arch tensors of the role's index (``Supernet.arch_state``).
        miou: ``{"02": …, "12": …}`` search mIoU of heads 8s_32s / 16s_32s for the branch choice.
        latencies: ``{"02", "12"}`` latencies to use in the branch choice instead of this role's own — the
            original passes the student's numbers to the teacher too (§3.5 bug, reproduced when faithful).
    """
    fq = cfg.search.faithful_quirks
    shape = cfg.model.teacher_stem_head_chi if role == "teacher" else cfg.model.student_stem_head_chi
    kwargs = {"num_layers": cfg.model.num_layers, "width_choices_chi": cfg.model.width_choices_chi,
                  "stem_head_chi": tuple(shape)}
    candidates: dict[str, Architecture | None] = {}
    own_ms: dict[str, float | None] = {}
    for name, lasts in (("02", (2, 0)), ("12", (2, 1))):
        try:
            arch = derive_architecture(state, role, lasts=lasts, faithful_quirks=fq, **kwargs)
        except DerivationError:
            arch = None  # the original's stale skip list emptied a branch's end scale (§4)
        candidates[name] = arch
        own_ms[name] = None if arch is None else estimate_latency(arch, lut, num_classes, faithful_quirks=fq)
    choice_ms = latencies if latencies is not None else own_ms
    notes: dict[str, Any] = {"derived_by": "fasterseg_core.search", "faithful_quirks": fq}
    usable = [n for n in ("02", "12") if candidates[n] is not None and choice_ms.get(n) is not None]
    if len(usable) == 2:
        metrics = {f"mIoU{n}": _finite(miou[n]) for n in usable} | {
            f"latency{n}": choice_ms[n] for n in usable
        }
        chosen = "02" if choose_lasts(metrics) == (2, 0) else "12"
        notes.update(branch_choice_metrics=metrics)
    elif usable:
        chosen = usable[0]
        notes.update(branch_choice=f"only the [2, {chosen[1]}] candidate derives")
    else:
        # Deviation: neither candidate derives under the original's rules; use the corrected derivation.
        chosen = "12"
        candidates[chosen] = derive_architecture(state, role, lasts=(2, 1), faithful_quirks=False, **kwargs)
        notes.update(branch_choice="no candidate derives with faithful quirks; corrected derivation used")
    arch = candidates[chosen]
    assert arch is not None
    arch.notes.update(notes)
    ms = estimate_latency(arch, lut, num_classes, faithful_quirks=fq)
    return Derived(arch=arch, latency_ms=ms, candidates_ms=own_ms)


def _finite(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def arch_snapshot(net: Supernet, epoch: int) -> dict[str, Any]:
    """α/β/γ of both indices as nested lists (one ``arch_history.json`` entry)."""
    return {"epoch": epoch} | {
        role: {n: t.tolist() for n, t in net.arch_state(k).items()} for k, role in enumerate(ROLES)
    }


# α, β, γ by their tensors' names in :meth:`Supernet.arch_state` (γ is stored as ``ratio_k_s``)
ARCH_KINDS = {"alpha": "alpha_", "beta": "beta_", "gamma": "ratio_"}


def arch_entropies(net: Supernet) -> dict[str, float]:
    """How decided the search is: per role and kind, the mean over rows of softmax(row)'s entropy divided by
    log(choices), so 1 is uniform (the start, §2.3) and 0 one-hot. Keys ``<role>_alpha|beta|gamma``; the
    teacher has no γ (one width column: nothing to choose). Reads detached copies; draws no random numbers.
    """
    out: dict[str, float] = {}
    for k, role in enumerate(ROLES):
        state = net.arch_state(k)
        for kind, prefix in ARCH_KINDS.items():
            rows = torch.cat([t for n, t in state.items() if n.startswith(prefix)]).double()
            if rows.shape[-1] < 2:
                continue
            entropy = torch.special.entr(torch.softmax(rows, dim=-1)).sum(-1) / math.log(rows.shape[-1])
            out[f"{role}_{kind}"] = float(entropy.mean())
    return out


def derive_networks(
    net: Supernet, cfg: RunConfig, lut: LatencyTable, num_classes: int, miou: dict[str, dict[str, float]]
) -> dict[str, Derived]:
    """Derive teacher and student from the supernet's current α/β/γ (§3.5, §4).

    Args:
        miou: per role, ``{"02": …, "12": …}`` search mIoU of heads 8s_32s / 16s_32s.

    With ``search.faithful_quirks`` the teacher's branch choice uses the *student's* mIoU and candidate
    latencies, as the original saved the student's metrics into both arch files (§3.5, §12.1-7).
    """
    fq = cfg.search.faithful_quirks
    student = derive_role(net.arch_state(1), "student", cfg, lut, num_classes, miou["student"])
    teacher = derive_role(
        net.arch_state(0), "teacher", cfg, lut, num_classes, miou["student" if fq else "teacher"],
        latencies=student.candidates_ms if fq else None,
    )
    return {"teacher": teacher, "student": student}


def pair_miou(miou: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per role: the mIoU of the two heads that decide the branches (§3.5), keyed "02" / "12"."""
    return {role: {n: heads[h] for n, h in BRANCH_HEADS.items()} for role, heads in miou.items()}


def epoch_fields(miou: dict[str, dict[str, float]], derived: dict[str, Derived]) -> dict[str, Any]:
    """The history fields of one epoch's evaluation and derivation (flat keys, for tables)."""
    out: dict[str, Any] = {}
    for role in ROLES:
        d = derived[role]
        out |= {f"miou_{role}_{h}": v for h, v in miou[role].items()}
        out |= {f"{role}_latency_ms": d.latency_ms, f"{role}_fps": 1000.0 / d.latency_ms,
                f"{role}_lasts": list(d.arch.lasts)}
        out |= {f"{role}_latency{n}_ms": ms for n, ms in d.candidates_ms.items()}
    return out


def save_artifacts(
    run: Run,
    net: Supernet,
    derived: dict[str, Derived],
    pair_miou: dict[str, dict[str, float]],
    history: list[dict[str, Any]],
    arch_history: list[dict[str, Any]],
) -> dict[str, Path]:
    """§3.5 artefacts of the latest epoch: derived architectures, raw α/β/γ with metrics, histories."""
    files: dict[str, Path] = {}
    params = {}
    for k, role in enumerate(ROLES):
        d = derived[role]
        d.arch.notes.update(
            epoch=arch_history[-1]["epoch"], latency_ms=d.latency_ms, fps=1000.0 / d.latency_ms
        )
        files[f"arch_{role}"] = run.path(f"arch_{role}.json")
        d.arch.to_json(files[f"arch_{role}"])
        # the authors' arch-file layout (§3.5): the eight tensors plus the branch-choice metrics
        params[role] = (
            {n: t.tolist() for n, t in net.arch_state(k).items()}
            | {f"mIoU{n}": v for n, v in pair_miou[role].items()}
            | {f"latency{n}": ms for n, ms in d.candidates_ms.items()}
        )
    files["arch_params"] = save_json(params, run.path("arch_params.json"))
    files["history"] = save_json(history, run.path("history.json"))
    files["arch_history"] = save_json(arch_history, run.path("arch_history.json"))
    return files


def final_metrics(
    cfg: RunConfig,
    lut: LatencyTable,
    derived: dict[str, Derived],
    history: list[dict[str, Any]],
    arch_history: list[dict[str, Any]],
    *,
    window: tuple[float, float],
    published_ms: float,
    latency_scale: float,
    lam: float,
    per_iter: float,
    arch_steps: int,
) -> dict[str, Any]:
    """``metrics.json``: the derived networks' table latency and mIoU, the target window and the miss.

    ``student_window_miss_rel`` is the relative FPS distance to the nearer edge of the window (> 0: faster,
    < 0: slower, 0: inside). ``arch_max_shift`` per role, the largest change of any α/β/γ logit since the
    start, tells how far the search moved the architecture (short CPU searches barely move it, and their
    derivation then mostly reflects near-ties).
    """
    last = history[-1]
    low, high = window
    fps = 1000.0 / derived["student"].latency_ms
    bound = high if fps > high else low
    miss = 0.0 if low <= fps <= high else (fps - bound) / bound  # > 0: faster than the window
    out: dict[str, Any] = {
        "epochs": last["epoch"],
        "faithful_quirks": cfg.search.faithful_quirks,
        "latency_table": {"hardware_tag": lut.hardware_tag, "backend": lut.backend, "input_hw": lut.input_hw},
        "published_student_ms": published_ms,
        "latency_scale": latency_scale,
        "target_fps": list(window),
        "target_ms": [1000.0 / high, 1000.0 / low],
        "lambda_final": lam,
        "student_in_window": miss == 0.0,
        "student_window_miss_rel": miss,
        "seconds_per_search_iteration": per_iter or None,
        "arch_steps": arch_steps,
    }
    for role in ROLES:
        d = derived[role]
        first, now = arch_history[0][role], arch_history[-1][role]
        shift = max(abs(a - b) for n in first for ra, rb in zip(first[n], now[n]) for a, b in zip(ra, rb))
        out[role] = {
            "latency_ms": d.latency_ms, "fps": 1000.0 / d.latency_ms, "lasts": list(d.arch.lasts),
            "cells": [len(b) for b in d.arch.branches], "candidates_ms": d.candidates_ms,
            "miou": {h: last[f"miou_{role}_{h}"] for h in HEAD_NAMES}, "arch_max_shift": shift,
        }
    return out
