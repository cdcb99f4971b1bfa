"""Random networks of FasterSeg's search space, and how far two networks lie apart: the search study's baseline.

Issue 28 asks whether searched students beat random ones at equal latency (Sciuto et al. 2020; Yang et al. 2020),
whether the supernet ranks networks as training does, and how different the searches' results are.

**A random network** is what the search's own derivation (method §4) makes of random architecture parameters:
the student's α, β and γ drawn i.i.d. standard normal, so each cell's operator, each two-input cell's input and
each feature's width is uniform over its choices (the argmax of i.i.d. draws), then derived exactly as a search's
α/β/γ are (:func:`~fasterseg_core.models.derive.derive_architecture`: the Viterbi path over β, §4.4's skip
removal, argmax widths), with the second branch's end scale (1/8 or 1/16) drawn uniformly. Drawing the
parameters rather than the network has two reasons:

* the random networks are the space a search can return, no more: both branches read one operator and width
  per grid cell, as derived networks do, so "searched vs random at equal latency" compares like with like;
* the supernet expresses each of them (its α/β/γ set to the drawn ones, argmax paths and widths), so
  :mod:`.oneshot` scores a random network with the shared weights exactly as a search scores its own candidate
  after every epoch, and the one-shot ranking covers searched and random networks alike.

Uniform over the parameters is not uniform over distinct networks (paths come from the Viterbi over β, and a
cell whose draw is ``skip`` is removed, §4.4): the baseline is the search with its learning replaced by chance,
which is the comparison the NAS-evaluation papers above make.

**The distance** (:func:`distance`): per branch, position by position, the share of cells whose operator, input
stride or width differs, cells one branch has and the other lacks counting as different; the mean over the
branches. 0: the same network; 1: nothing in common.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..latency.lut import LatencyTable, estimate_latency
from ..models.architecture import WIDTH_CHOICES_CHI, Architecture, Branch
from ..models.derive import ROLE_INDEX, DerivationError, arch_name, arch_shapes, derive_architecture


@dataclass(frozen=True)
class RandomNet:
    """A random student and the architecture parameters it was derived from (index 1's names)."""

    arch: Architecture
    state: dict[str, torch.Tensor]


def random_arch_state(gen: torch.Generator, num_layers: int = 16, n_widths: int = len(WIDTH_CHOICES_CHI)
                      ) -> dict[str, torch.Tensor]:
    """The student's eight α/β/γ tensors, i.i.d. standard normal (every argmax uniform over its choices)."""
    return {arch_name(kind, ROLE_INDEX["student"], scale): torch.randn(rows, cols, generator=gen)
            for (kind, scale), (rows, cols) in arch_shapes(num_layers, n_widths).items()}


def random_student(gen: torch.Generator, *, num_layers: int = 16,
                   width_choices_chi: Sequence[int] = WIDTH_CHOICES_CHI, faithful_quirks: bool = True,
                   max_tries: int = 1000) -> RandomNet:
    """One random student (module docstring): parameters drawn, second branch's end drawn, derived.

    A draw that the derivation rejects (with ``faithful_quirks`` a branch can lose its end scale, §4) is
    drawn again, as a search whose parameters did that would derive its other candidate.
    """
    for _ in range(max_tries):
        state = random_arch_state(gen, num_layers, len(width_choices_chi))
        lasts = (2, int(torch.randint(2, (), generator=gen)))
        try:
            arch = derive_architecture(state, "student", lasts=lasts, faithful_quirks=faithful_quirks,
                                       num_layers=num_layers, width_choices_chi=width_choices_chi)
        except DerivationError:
            continue
        arch.notes.update(source="random (fasterseg_core.search.random_arch)")
        return RandomNet(arch, state)
    raise RuntimeError(f"no derivable random student in {max_tries} draws")


@dataclass(frozen=True)
class Draw:
    """Random students drawn until ``wanted`` fell inside the latency window."""

    accepted: list[tuple[RandomNet, float]]  # each with its table latency (ms)
    tried: int  # draws in all (the acceptance rate says how much of the space the window holds)


def sample_in_window(
    gen: torch.Generator,
    lut: LatencyTable,
    window_ms: tuple[float, float],
    wanted: int,
    *,
    num_classes: int = 19,
    faithful_quirks: bool = True,
    num_layers: int = 16,
    width_choices_chi: Sequence[int] = WIDTH_CHOICES_CHI,
    max_tries: int = 20_000,
) -> Draw:
    """Rejection sampling: random students whose table latency lies in ``window_ms`` (low, high).

    Raises:
        ValueError: fewer than ``wanted`` fell inside after ``max_tries`` draws (the message gives the
            latencies seen, so the window can be moved).
    """
    low, high = window_ms
    accepted: list[tuple[RandomNet, float]] = []
    seen: list[float] = []
    for tried in range(1, max_tries + 1):
        net = random_student(gen, num_layers=num_layers, width_choices_chi=width_choices_chi,
                             faithful_quirks=faithful_quirks)
        ms = estimate_latency(net.arch, lut, num_classes, faithful_quirks=faithful_quirks)
        seen.append(ms)
        if low <= ms <= high:
            accepted.append((net, ms))
            if len(accepted) == wanted:
                return Draw(accepted, tried)
    raise ValueError(
        f"only {len(accepted)} of {wanted} random students fell inside {low:.3g}–{high:.3g} ms in {max_tries} "
        f"draws (their table latencies ran {min(seen):.3g}–{max(seen):.3g} ms); widen the window or draw more"
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
