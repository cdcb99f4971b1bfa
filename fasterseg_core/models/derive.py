"""Turn searched architecture parameters (α, β, γ) into a discrete :class:`Architecture`.

Method: ``docs/method.md`` §4 (the authors' ``network_metas``) and §3.5 (what a search epoch
saves). The search leaves, per architecture index k (0 teacher, 1 student), eight tensors:

* ``alpha_k_s`` (rows × 5): operator logits of the cells at scale s (row ``t - s`` = cell of layer t);
* ``beta_k_1``, ``beta_k_2`` (rows × 2): input choice [from_down, from_keep] of the cells at scale 1, 2;
* ``ratio_k_s`` (rows × n_w): width logits of the features at scale s (n_w = 1 for the teacher);

plus four search metrics (``mIoU02``, ``mIoU12``, ``latency02``, ``latency12``) that pick the branches.

For each end scale e = 0, 1, 2 one candidate branch is derived: a path through the strides, one width
per feature and one operator per cell, with cells whose best operator is "skip" removed (so the final
networks never contain the skip operator). The two branches of the network are then chosen by the
accuracy–latency objective ``mIoU · (latency / 8.3 ms)^-0.07``: the stride-32 branch plus either the
stride-8 or the stride-16 branch.

Three quirks of the original derivation are reproduced when ``faithful_quirks=True`` (the default):
α is mutated in place across the three end-scale derivations (a skip forbidden for one end scale stays
forbidden for the next), β is re-softmaxed at every call, cumulatively, and the list of removable skip
cells is not refreshed after a skip is forbidden (so the "keep one cell per stretch" rule can fail and a
branch can lose all cells of its end scale; :func:`derive_architecture` then raises). None of them
changes the published teacher or student. ``faithful_quirks=False`` gives the corrected computation:
fresh α and one softmax of β per end scale, and forbidden cells are never removed.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .architecture import WIDTH_CHOICES_CHI, Architecture, Branch
from .ops import OP_NAMES

ROLE_INDEX = {"teacher": 0, "student": 1}
METRIC_KEYS = ("mIoU02", "mIoU12", "latency02", "latency12")
# §4.5: the objective's latency reference (ms) and exponent.
OBJECTIVE_TARGET_MS = 8.3
OBJECTIVE_EXPONENT = -0.07
DEFAULT_STEM_HEAD_CHI = {"teacher": (12, 12), "student": (8, 8)}


class DerivationError(ValueError):
    """The searched parameters do not give a valid network under the chosen derivation rules."""


_KEY = re.compile(r"^(alpha|beta|ratio)_(?:(\d+)_)?(\d)$")


def arch_shapes(num_layers: int = 16, n_widths: int | None = None) -> dict[tuple[str, int], tuple[int, int | None]]:
    """The eight tensors of one architecture index, as (kind, scale) → (rows, columns) for ``num_layers``:
    α (rows × 5 operators), β (rows × 2 inputs), γ = ``ratio`` (rows × ``n_widths``; None: any). The supernet
    names them ``<kind>_<index>_<scale>`` (:func:`arch_name`)."""
    L, n_ops = num_layers, len(OP_NAMES)
    return {("alpha", 0): (L, n_ops), ("alpha", 1): (L - 1, n_ops), ("alpha", 2): (L - 2, n_ops),
            ("beta", 1): (L - 2, 2), ("beta", 2): (L - 3, 2),
            ("ratio", 0): (L - 1, n_widths), ("ratio", 1): (L - 1, n_widths), ("ratio", 2): (L - 2, n_widths)}


def arch_name(kind: str, arch_idx: int, scale: int) -> str:
    """The supernet's (and the authors' arch files') name of one tensor, e.g. ``alpha_1_0``."""
    return f"{kind}_{arch_idx}_{scale}"


# ---- input handling -----------------------------------------------------------------------------
def load_raw_arch_json(path: str | Path) -> dict[str, torch.Tensor | float]:
    """Read the authors' arch tensors from a reference JSON (``fasterseg_arch_{teacher,student}.json``).

    Args:
        path: a JSON file holding either the reference layout (a ``raw_arch_file`` field whose tensors
            are ``{"shape": [...], "values": [[...]]}``) or that ``raw_arch_file`` object itself.

    Returns:
        ``{"alpha_k_0": Tensor, …, "ratio_k_2": Tensor, "mIoU02": float, …}``; tensors are float32 (the
        dtype the search saved) on the CPU, metrics plain floats.
    """
    data = json.loads(Path(path).read_text())
    raw = data.get("raw_arch_file", data)
    if not isinstance(raw, dict) or not any(_KEY.match(k) for k in raw):
        raise ValueError(
            f"{path} holds no raw architecture tensors (expected alpha_*/beta_*/ratio_* entries)"
        )
    out: dict[str, torch.Tensor | float] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and "values" in value:
            t = torch.tensor(value["values"], dtype=torch.float32)
            if list(t.shape) != list(value.get("shape", t.shape)):
                raise ValueError(f"{path}: {key} has shape {list(t.shape)}, its header says {value['shape']}")
            out[key] = t
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _split_params(
    arch_params: Mapping[str, Any], role: str, num_layers: int
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor]]:
    """Pick α (3), β (None, β1, β2) and ratio (3) tensors for ``role`` and check their shapes."""
    if role not in ROLE_INDEX:
        raise ValueError(f"role must be one of {tuple(ROLE_INDEX)}, got {role!r}")
    want = ROLE_INDEX[role]
    found: dict[tuple[str, int], torch.Tensor] = {}
    for key, value in arch_params.items():
        m = _KEY.match(key)
        if m is None:
            continue
        kind, idx, scale = m.group(1), m.group(2), int(m.group(3))
        if idx is not None and int(idx) != want:
            continue  # another architecture index's tensor (e.g. a dict holding both)
        found[(kind, scale)] = torch.as_tensor(value).detach().to("cpu", torch.float32)
    if not found:
        present = sorted(k for k in arch_params if _KEY.match(k))
        raise ValueError(
            f"no architecture tensors for role {role!r} (index {want}); keys present: {present}. "
            f"Pass alpha_{want}_s/beta_{want}_s/ratio_{want}_s (or alpha_s/beta_s/ratio_s) tensors."
        )
    for (kind, scale), shape in arch_shapes(num_layers).items():
        if (kind, scale) not in found:
            raise ValueError(f"missing {kind}_{want}_{scale} (or {kind}_{scale}) for role {role!r}")
        t = found[(kind, scale)]
        if t.dim() != 2 or t.shape[0] != shape[0] or (shape[1] is not None and t.shape[1] != shape[1]):
            raise ValueError(
                f"{kind}_{want}_{scale} has shape {tuple(t.shape)}, expected ({shape[0]}, "
                f"{shape[1] if shape[1] is not None else 'n_widths'}) for {num_layers} layers"
            )
    alphas = [found[("alpha", s)] for s in range(3)]
    betas: list[torch.Tensor | None] = [None, found[("beta", 1)], found[("beta", 2)]]
    ratios = [found[("ratio", s)] for s in range(3)]
    return alphas, betas, ratios


# ---- one end scale (§4.1-4.4) -------------------------------------------------------------------
def _best_down_positions(
    end_scale: int, beta1: torch.Tensor, beta2: torch.Tensor, num_layers: int
) -> list[int]:
    """§4.2: the cells that get stride 2 for a branch ending at ``end_scale`` (β already softmaxed)."""
    L = num_layers
    if end_scale == 0:
        return []
    if end_scale == 1:
        # k = 1 + argmax over rows r = 1 … L-4 of P(from_down); argmax is 0-based within that slice
        # (this reproduces the published teacher's down cell 4). torch.argmax takes the first maximum.
        return [1 + int(torch.argmax(beta1[1 : L - 3, 0]))]
    best, (bi, bj) = 0.0, (0, 1)
    for j in range(L - 4):  # j = 0 … 11 for L = 16
        for i in range(1, j - 1):  # i = 1 … j-2
            value = float(beta1[i, 0] * beta2[j, 0])  # float32 product, as in the original
            if value > best:  # strict >: the first maximum wins
                best, (bi, bj) = value, (i, j)
    return [bi + 1, bj + 2]


def _branch_widths(path: list[int], ratios: list[torch.Tensor], full_width_only: bool,
                   width_choices_chi: tuple[int, ...], num_layers: int) -> list[int]:
    """§4.3 widths[t-1] = output width of cell t-1 = width of the feature cell t reads (argmax γ)."""
    widths: list[int] = []
    for t in range(1, num_layers):
        s = path[t]
        row = ratios[0][t - 1] if s == 0 else ratios[s][t - s]
        if full_width_only:
            widths.append(12)  # the teacher's single-column ratios map to W = [1.0]
        else:
            widths.append(width_choices_chi[int(torch.argmax(row))])
    return widths


def _removed_skips(alpha_row: Callable[[int], torch.Tensor], downs: list[int], min_len: int,
                   refresh_candidates: bool) -> set[int]:
    """§4.4 the cells removed from a branch: the most skip-like skip candidates, at most ``L − min_len``.

    Mutates α rows in place, as the original does: each all-skip stretch keeps its least skip-like cell by
    forbidding that cell's skip.
    """
    L = len(downs)
    # Skip candidates: best op is skip and the cell keeps its stride (a stride-2 cell is never removed).
    candidates: list[tuple[int, float]] = []
    for t in range(L):
        row = alpha_row(t)
        if int(torch.argmax(row)) == 0 and not downs[t]:
            candidates.append((t, float(torch.softmax(row, dim=-1)[0])))
    skip_prob = dict(candidates)

    # A stretch between consecutive stride-2 cells (and from the last one to the end) made only of skip
    # candidates keeps its least skip-like cell: that cell's skip is forbidden.
    # Spec letter: no stretch before the first stride-2 cell, none at all for end scale 0.
    down_at = [t for t in range(L) if downs[t]]
    bounds = down_at + [L] if down_at else []
    forbidden: set[int] = set()
    for a, b in itertools.pairwise(bounds):
        inside = list(range(a + 1, b))
        if inside and all(t in skip_prob for t in inside):
            lowest = min(skip_prob[t] for t in inside)
            keep = max(t for t in inside if skip_prob[t] == lowest)  # ties → later cell
            alpha_row(keep)[0] = float("-inf")
            forbidden.add(keep)
    if refresh_candidates:
        # Deviation (corrected mode only): drop the forbidden cells from the candidates so every stretch
        # really keeps a cell. The original does not refresh the list: a forbidden cell can still be
        # removed below, and a branch can then lose every cell of its end scale.
        candidates = [c for c in candidates if c[0] not in forbidden]

    # Remove the most skip-like candidates, at most L - min_len (stable sort: ties keep cell order).
    ranked = sorted(candidates, key=lambda c: c[1], reverse=True)
    return {t for t, _ in ranked[: max(0, L - min_len)]}  # short supernets (L < 6) remove none


def _derive_branch(
    end_scale: int,
    alphas: list[torch.Tensor],
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    ratios: list[torch.Tensor],
    *,
    ignore_skip: bool,
    full_width_only: bool,
    refresh_candidates: bool,
    width_choices_chi: tuple[int, ...],
    num_layers: int,
) -> Branch:
    """§4.2-4.4 for one end scale. Mutates ``alphas`` in place (the caller decides whether to share)."""
    L = num_layers
    downs = [0] * L
    for t in _best_down_positions(end_scale, beta1, beta2, L):
        downs[t] = 1
    path = [0]
    for t in range(L - 1):
        path.append(path[-1] + downs[t])

    widths = _branch_widths(path, ratios, full_width_only, width_choices_chi, L)

    def alpha_row(t: int) -> torch.Tensor:
        return alphas[path[t]][t - path[t]]  # a view: writes go to the α tensor itself

    if ignore_skip:
        for t in range(L):
            alpha_row(t)[0] = float("-inf")
    removed = _removed_skips(alpha_row, downs, round(L / 3) + 2 * path[-1], refresh_candidates)

    ops: list[str] = []
    kept_path: list[int] = []
    kept_widths: list[int] = []
    for t in range(L):
        if t in removed:
            continue
        row = alpha_row(t)
        op = int(torch.argmax(row))
        if op == 0:  # a skip that is not removed takes its second-best operator
            op = 1 + int(torch.argmax(row[1:]))
        ops.append(OP_NAMES[op])
        kept_path.append(path[t])
        if t < L - 1:
            kept_widths.append(widths[t])
    if L - 1 in removed:
        kept_widths = kept_widths[:-1]  # the new last cell outputs the head width
    return Branch(ops=tuple(ops), path=tuple(kept_path), chi=tuple(kept_widths))


def derive_candidates(
    arch_params: Mapping[str, Any],
    role: str,
    *,
    faithful_quirks: bool = True,
    num_layers: int = 16,
    width_choices_chi: Sequence[int] = WIDTH_CHOICES_CHI,
) -> dict[int, Branch]:
    """Derive the candidate branch for each end scale (§4.1-4.4).

    Args:
        arch_params: the searched tensors of one architecture index, keyed as the authors saved them
            (``alpha_k_{0,1,2}``, ``beta_k_{1,2}``, ``ratio_k_{0,1,2}``; k = 0 teacher, 1 student) or
            without the index (``alpha_0`` …). Tensors or nested lists; extra keys are ignored.
        role: "teacher" (skip forbidden on every path, widths all 12/12) or "student".
        faithful_quirks: reproduce the original's in-place α mutation, cumulative β re-softmax and
            stale skip-candidate list (see the module docstring); False gives the corrected computation.
        num_layers: L of the supernet (16).
        width_choices_chi: width list W in twelfths, in the order of the ratio columns.

    Returns:
        ``{0: candidate for end stride 8, 1: … 16, 2: … 32}``, computed in that order. With
        ``faithful_quirks=True`` a candidate can end one scale short of its target (every cell of its
        last scale removed as skip), exactly as the original would derive it.
    """
    alphas, betas, ratios = _split_params(arch_params, role, num_layers)
    width_choices_chi = tuple(int(c) for c in width_choices_chi)
    full_width_only = role == "teacher"
    if not full_width_only:
        for s, r in enumerate(ratios):
            if r.shape[1] != len(width_choices_chi):
                raise ValueError(
                    f"ratio_{ROLE_INDEX[role]}_{s} has {r.shape[1]} width columns but width_choices_chi "
                    f"has {len(width_choices_chi)} ({width_choices_chi}); pass the search's width list"
                )
    beta1, beta2 = betas[1], betas[2]
    assert beta1 is not None and beta2 is not None
    alphas = [a.clone() for a in alphas]  # never touch the caller's tensors
    out: dict[int, Branch] = {}
    for e in range(3):
        if faithful_quirks:
            # Quirk (§4.1): β is softmaxed again at every call, so call e sees softmax^(e+1)(β);
            # α is shared, so skips forbidden in an earlier call stay forbidden.
            beta1, beta2 = torch.softmax(beta1, dim=-1), torch.softmax(beta2, dim=-1)
            call_alphas = alphas
        else:
            beta1, beta2 = torch.softmax(betas[1], dim=-1), torch.softmax(betas[2], dim=-1)
            call_alphas = [a.clone() for a in alphas]
        out[e] = _derive_branch(
            e, call_alphas, beta1, beta2, ratios,
            ignore_skip=role == "teacher", full_width_only=full_width_only,
            refresh_candidates=not faithful_quirks,
            width_choices_chi=width_choices_chi, num_layers=num_layers,
        )
    return out


# ---- branch choice (§4.5) -----------------------------------------------------------------------
def branch_objective(miou: float, latency_ms: float) -> float:
    """Accuracy–latency objective of a candidate network: ``mIoU · (latency_ms / 8.3)^-0.07``."""
    if latency_ms <= 0:
        raise ValueError(f"latency must be positive, got {latency_ms} ms")
    return float(miou) * (float(latency_ms) / OBJECTIVE_TARGET_MS) ** OBJECTIVE_EXPONENT


def choose_lasts(metrics: Mapping[str, float]) -> tuple[int, int]:
    """§4.5: (2, 0) if the [2, 0] network's objective is strictly higher, else (2, 1).

    Args:
        metrics: ``mIoU02``, ``mIoU12`` (search val mIoU of heads 8s_32s / 16s_32s) and ``latency02``,
            ``latency12`` (ms, table latency of the derived [2, 0] / [2, 1] networks).
    """
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"branch choice needs metrics {list(METRIC_KEYS)}; missing {missing}")
    obj02 = branch_objective(metrics["mIoU02"], metrics["latency02"])
    obj12 = branch_objective(metrics["mIoU12"], metrics["latency12"])
    return (2, 0) if obj02 > obj12 else (2, 1)


def derive_architecture(
    arch_params: Mapping[str, Any],
    role: str,
    *,
    metrics: Mapping[str, float] | None = None,
    lasts: Sequence[int] | None = None,
    faithful_quirks: bool = True,
    num_layers: int = 16,
    width_choices_chi: Sequence[int] = WIDTH_CHOICES_CHI,
    stem_head_chi: tuple[int, int] | None = None,
) -> Architecture:
    """Derive the discrete two-branch network from searched α/β/γ (§4).

    Args:
        arch_params: tensors as for :func:`derive_candidates`; may also hold the four metrics (the
            authors' arch files do).
        role: "teacher" or "student".
        metrics: ``mIoU02``/``mIoU12``/``latency02``/``latency12`` for the branch choice; overrides those
            in ``arch_params``. Note the original saved the *student's* metrics into both files (§3.5).
        lasts: end scales to build, e.g. (2, 1), instead of choosing by the objective.
        faithful_quirks: see :func:`derive_candidates`.
        num_layers: L of the supernet.
        width_choices_chi: width list in twelfths.
        stem_head_chi: stem and head width in twelfths; default teacher (12, 12), student (8, 8).

    Returns:
        The :class:`Architecture`, branch 0 ending at stride 32. ``notes`` records the objectives.
    """
    candidates = derive_candidates(
        arch_params, role, faithful_quirks=faithful_quirks, num_layers=num_layers,
        width_choices_chi=width_choices_chi,
    )
    notes: dict[str, Any] = {"derived_by": "fasterseg_core.models.derive", "faithful_quirks": faithful_quirks}
    if lasts is None:
        m = {k: float(arch_params[k]) for k in METRIC_KEYS if k in arch_params}
        m.update({k: float(v) for k, v in (metrics or {}).items() if k in METRIC_KEYS})
        if len(m) < len(METRIC_KEYS):
            raise ValueError(
                f"cannot choose branches: metrics {sorted(set(METRIC_KEYS) - set(m))} missing; pass "
                "metrics={'mIoU02':…, 'mIoU12':…, 'latency02':…, 'latency12':…} or lasts=(2, 1)"
            )
        lasts = choose_lasts(m)
        notes.update(
            metrics=m,
            objective_02=branch_objective(m["mIoU02"], m["latency02"]),
            objective_12=branch_objective(m["mIoU12"], m["latency12"]),
        )
    lasts = tuple(int(e) for e in lasts)
    if lasts not in ((2, 0), (2, 1), (2,)):
        raise ValueError(f"lasts must be (2, 0), (2, 1) or (2,), got {lasts}")
    for e in lasts:
        if candidates[e].end_scale != e:
            raise DerivationError(
                f"the derived end-scale-{e} branch ends at stride {candidates[e].end_stride}, not "
                f"{8 * 2**e}: every cell after its last stride-2 cell was a removed skip (the original's "
                "stale skip-candidate list, §4). Derive with faithful_quirks=False to keep one cell."
            )
    stem_chi, head_chi = stem_head_chi or DEFAULT_STEM_HEAD_CHI[role]
    return Architecture(
        role=role,
        branches=tuple(candidates[e] for e in lasts),
        stem_chi=int(stem_chi),
        head_chi=int(head_chi),
        notes=notes,
    )
