"""Random networks of FasterSeg's search space, and how far two networks lie apart: the search study's baseline.

Issue 28 asks whether searched students beat random ones at equal latency (Sciuto et al. 2020; Yang et al. 2020)
and how different the searches' results are. Both need the space a derivation can produce (method §4), drawn
uniformly, and one distance between two networks.

**The space** (what :func:`~fasterseg_core.models.derive.derive_architecture` can return, §4.2–§4.5), per branch:

* its end scale: branch 0 ends at 1/32, branch 1 at 1/8 or 1/16 (§4.5);
* where it downsamples on the 16-layer grid, as §4.2 allows: one stride-2 cell at layer 2…13 to end at 1/16;
  two at layers i + 1 and j + 2 (1 ≤ i ≤ j − 2 ≤ 9) to end at 1/32;
* which non-downsampling cells skip removal took out (§4.4): at most 16 − min_len, min_len = 5 + 2e, and every
  stretch between stride-2 cells, and after the last, keeps a cell (the stretch rule of §4.4, step 3);
* an operator per cell among the four that are not ``skip`` (a derived network never contains it);
* the student: a width per cell output from W = {4, …, 12}/12; the teacher is at full width.

Drawn in that order, each choice uniform given the ones before ("uniform over the choices", not over the
networks: the number of removed cells is drawn first, so short and long branches are equally likely, as a
user reading "random architecture" expects; a uniform draw over networks would almost never remove a cell).
Stem and head widths are the role's (§5.1: teacher 12/12, student 8/12), as in every derived network.

**The distance** (:func:`distance`): per branch, position by position, the share of cells whose operator, input
stride or width differs, cells one branch has and the other lacks counting as different; the mean over the
branches. 0: the same network; 1: nothing in common.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from ..latency.lut import LatencyTable, estimate_latency
from ..models.architecture import WIDTH_CHOICES_CHI, Architecture, Branch
from ..models.ops import OP_NAMES

LAYERS = 16  # §2.2: the supernet's grid
DERIVED_OPS = tuple(op for op in OP_NAMES if op != "skip")  # §4.4: skip is removed or replaced
ROLE_WIDTHS = {"teacher": (12, 12), "student": (8, 8)}  # (stem_chi, head_chi), §5.1


def _downs(rng: random.Random, end_scale: int) -> list[int]:
    """The layers whose cell has stride 2, as §4.2 places them for this end scale."""
    if end_scale == 0:
        return []
    if end_scale == 1:
        return [rng.randint(2, 13)]
    pairs = [(i + 1, j + 2) for j in range(3, 12) for i in range(1, j - 1)]  # 1 ≤ i ≤ j − 2
    return list(rng.choice(pairs))


def random_branch(rng: random.Random, end_scale: int, role: str) -> Branch:
    """One branch ending at scale ``end_scale`` (0, 1, 2 ↔ 1/8, 1/16, 1/32), drawn as the module says."""
    downs = _downs(rng, end_scale)
    # stretches of non-downsampling cells: before the first stride-2 cell, between them, after the last
    edges = [-1, *downs, LAYERS]
    stretches = [list(range(a + 1, b)) for a, b in pairwise(edges)]
    removable = sum(len(s) - 1 for s in stretches if s)  # every stretch keeps one of its cells
    budget = min(LAYERS - (5 + 2 * end_scale), removable)
    n_removed = rng.randint(0, budget)
    candidates = [cell for s in stretches for cell in s]
    removed: set[int] = set()
    for cell in rng.sample(candidates, len(candidates)):  # random order; skip a removal that empties a stretch
        if len(removed) == n_removed:
            break
        stretch = next(s for s in stretches if cell in s)
        if sum(c not in removed for c in stretch) > 1:
            removed.add(cell)
    kept = [layer for layer in range(LAYERS) if layer not in removed]
    path, scale = [], 0
    for layer in kept:  # a cell reads the scale its predecessors reached
        path.append(scale)
        scale += layer in downs
    ops = [rng.choice(DERIVED_OPS) for _ in kept]
    chi = [12 if role == "teacher" else rng.choice(WIDTH_CHOICES_CHI) for _ in kept[:-1]]
    return Branch(ops=ops, path=path, chi=chi)


def random_architecture(rng: random.Random, role: str = "student") -> Architecture:
    """A two-branch network of the space: branch 0 ends at 1/32, branch 1 at 1/8 or 1/16 (§4.5)."""
    stem, head = ROLE_WIDTHS[role]
    branches = (random_branch(rng, 2, role), random_branch(rng, rng.choice((0, 1)), role))
    return Architecture(role=role, branches=branches, stem_chi=stem, head_chi=head,
                        notes={"source": "random (fasterseg_core.search.random_arch)"})


@dataclass(frozen=True)
class Draw:
    """Architectures drawn until ``wanted`` fell inside the latency window."""

    accepted: list[tuple[Architecture, float]]  # each with its table latency (ms)
    tried: int  # draws in all (the acceptance rate says how much of the space the window holds)


def sample_in_window(
    rng: random.Random,
    lut: LatencyTable,
    window_ms: tuple[float, float],
    wanted: int,
    *,
    role: str = "student",
    num_classes: int = 19,
    faithful_quirks: bool = True,
    max_tries: int = 100_000,
) -> Draw:
    """Rejection sampling: random architectures whose table latency lies in ``window_ms`` (low, high).

    Raises:
        ValueError: fewer than ``wanted`` fell inside after ``max_tries`` draws (the message gives the
            latencies seen, so the window can be moved).
    """
    low, high = window_ms
    accepted: list[tuple[Architecture, float]] = []
    seen: list[float] = []
    for tried in range(1, max_tries + 1):
        arch = random_architecture(rng, role)
        ms = estimate_latency(arch, lut, num_classes, faithful_quirks=faithful_quirks)
        seen.append(ms)
        if low <= ms <= high:
            accepted.append((arch, ms))
            if len(accepted) == wanted:
                return Draw(accepted, tried)
    raise ValueError(
        f"only {len(accepted)} of {wanted} random {role}s fell inside {low:.3g}–{high:.3g} ms in {max_tries} draws "
        f"(their table latencies ran {min(seen):.3g}–{max(seen):.3g} ms); widen the window or draw more"
    )


def _branch_distance(a: Branch, b: Branch) -> float:
    n = max(len(a), len(b))
    same = sum(a.ops[i] == b.ops[i] and a.path[i] == b.path[i] and _width(a, i) == _width(b, i)
               for i in range(min(len(a), len(b))))
    return 1.0 - same / n


def _width(branch: Branch, i: int) -> int | None:
    return branch.chi[i] if i < len(branch.chi) else None  # the last cell's output is the head's width


def distance(a: Architecture, b: Architecture) -> float:
    """How far two networks lie apart, in [0, 1]: per branch the share of cell positions that differ in
    operator, input stride or output width (a cell one branch lacks differs), averaged over the branches."""
    if len(a.branches) != len(b.branches):
        return 1.0
    return sum(_branch_distance(x, y) for x, y in zip(a.branches, b.branches)) / len(a.branches)


def mean_pairwise_distance(archs: Sequence[Architecture]) -> float:
    """The mean :func:`distance` over every pair (how much a set of searches or random draws spreads)."""
    pairs = [(x, y) for i, x in enumerate(archs) for y in archs[i + 1:]]
    if not pairs:
        raise ValueError("a spread needs at least two networks")
    return sum(distance(x, y) for x, y in pairs) / len(pairs)
