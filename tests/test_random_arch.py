"""The search study's random baseline: derivations of random architecture parameters, and the distance between two."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import REFERENCE

from fasterseg_core.latency.lut import estimate_latency, load_authors_lut
from fasterseg_core.models import build_network, published_architecture
from fasterseg_core.models.derive import derive_architecture
from fasterseg_core.models.ops import OP_NAMES
from fasterseg_core.models.supernet import Supernet
from fasterseg_core.search.random_arch import (
    distance,
    mean_pairwise_distance,
    random_student,
    sample_in_window,
)

LAYERS = 16
DERIVED_OPS = set(OP_NAMES) - {"skip"}


def test_random_students_are_derivations_of_random_parameters_the_supernet_can_hold():
    gen = torch.Generator().manual_seed(0)
    nets = [random_student(gen) for _ in range(120)]
    ends, ops, widths = Counter(), Counter(), Counter()
    for net in nets:  # Architecture and Branch validate paths, widths and branch ends themselves
        arch = net.arch
        assert arch.lasts[0] == 2 and arch.lasts[1] in (0, 1)
        assert (arch.stem_chi, arch.head_chi) == (8, 8)
        ends[arch.lasts[1]] += 1
        for b in arch.branches:
            assert 5 + 2 * b.end_scale <= len(b) <= LAYERS  # §4.4: skip removal keeps min_len cells
            assert "skip" not in b.ops
            ops.update(b.ops)
            widths.update(b.chi)
    assert set(ends) == {0, 1} and set(ops) == set(DERIVED_OPS) and set(widths) == {4, 6, 8, 10, 12}
    # the search's own derivation of the drawn parameters gives the same network back
    again = derive_architecture(nets[0].state, "student", lasts=nets[0].arch.lasts)
    assert again.branches == nets[0].arch.branches
    # and the supernet holds them: its student's α/β/γ take the drawn tensors, name for name
    supernet = Supernet(11)
    supernet.load_arch_state(nets[0].state)
    assert all(torch.equal(supernet.arch_state(1)[k], v) for k, v in nets[0].state.items())
    # the draws are the generator's: the same seed, the same networks
    twin = random_student(torch.Generator().manual_seed(0))
    assert twin.arch.branches == nets[0].arch.branches


def test_a_random_student_builds_and_runs():
    arch = random_student(torch.Generator().manual_seed(3)).arch
    net = build_network(arch, num_classes=11).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 128))
    assert out["out"].shape == (1, 11, 64, 128)


def test_distance_is_zero_for_one_network_and_symmetric_in_between():
    student, teacher = published_architecture("student"), published_architecture("teacher")
    assert distance(student, student) == 0.0
    assert 0.0 < distance(student, teacher) == distance(teacher, student) <= 1.0
    gen = torch.Generator().manual_seed(1)
    draws = [random_student(gen).arch for _ in range(20)]
    spread = mean_pairwise_distance(draws)
    assert 0.5 < spread <= 1.0  # random networks have little in common position by position
    with pytest.raises(ValueError, match="at least two"):
        mean_pairwise_distance(draws[:1])


@pytest.mark.skipif(not (REFERENCE / "fasterseg_latency_lookup_table.json").exists(), reason="needs ../shared")
def test_rejection_sampling_keeps_networks_inside_the_latency_window():
    lut = load_authors_lut(REFERENCE / "fasterseg_latency_lookup_table.json")
    published = estimate_latency(published_architecture("student"), lut)
    # random students are wider than the searched one (all 4/12): a window 15-30 % above it holds ~1 in 10
    window = (published * 1.15, published * 1.3)
    draw = sample_in_window(torch.Generator().manual_seed(0), lut, window, wanted=3)
    assert len(draw.accepted) == 3 and draw.tried > 3
    assert all(window[0] <= ms <= window[1] for _, ms in draw.accepted)
    assert all(ms == pytest.approx(estimate_latency(net.arch, lut)) for net, ms in draw.accepted)
    with pytest.raises(ValueError, match=r"fell inside .* widen the window"):
        sample_in_window(torch.Generator().manual_seed(0), lut, (0.001, 0.002), wanted=1, max_tries=20)
