"""The search study's random baseline: networks drawn from the derivable space, and the distance between two."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from conftest import REFERENCE

from fasterseg_core.latency.lut import estimate_latency, load_authors_lut
from fasterseg_core.models import build_network, published_architecture
from fasterseg_core.search.random_arch import (
    DERIVED_OPS,
    LAYERS,
    distance,
    mean_pairwise_distance,
    random_architecture,
    sample_in_window,
)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_random_networks_are_what_a_derivation_can_return(role):
    rng = random.Random(0)
    archs = [random_architecture(rng, role) for _ in range(2000)]
    ends, ops, lengths = Counter(), Counter(), Counter()
    for arch in archs:  # Architecture and Branch validate paths, widths and branch ends themselves
        assert arch.lasts[0] == 2 and arch.lasts[1] in (0, 1)
        for b in arch.branches:
            assert 5 + 2 * b.end_scale <= len(b) <= LAYERS  # §4.4: skip removal keeps min_len cells
            assert "skip" not in b.ops
            assert role == "student" or set(b.chi) <= {12}
            ends[b.end_scale] += 1
            ops.update(b.ops)
            lengths[len(b)] += 1
    assert set(ends) == {0, 1, 2} and set(ops) == set(DERIVED_OPS)
    assert min(lengths) == 5 and max(lengths) == LAYERS  # the short and the long ends of the space are drawn
    assert (archs[0].stem_chi, archs[0].head_chi) == ((8, 8) if role == "student" else (12, 12))


def test_a_random_student_builds_and_runs():
    arch = random_architecture(random.Random(3), "student")
    net = build_network(arch, num_classes=11).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 128))
    assert out["out"].shape == (1, 11, 64, 128)


def test_distance_is_zero_for_one_network_and_symmetric_in_between():
    student, teacher = published_architecture("student"), published_architecture("teacher")
    assert distance(student, student) == 0.0
    assert 0.0 < distance(student, teacher) == distance(teacher, student) <= 1.0
    rng = random.Random(1)
    draws = [random_architecture(rng) for _ in range(20)]
    spread = mean_pairwise_distance(draws)
    assert 0.5 < spread <= 1.0  # random networks have little in common position by position
    with pytest.raises(ValueError, match="at least two"):
        mean_pairwise_distance(draws[:1])


@pytest.mark.skipif(not (REFERENCE / "fasterseg_latency_lookup_table.json").exists(), reason="needs ../shared")
def test_rejection_sampling_keeps_networks_inside_the_latency_window():
    lut = load_authors_lut(REFERENCE / "fasterseg_latency_lookup_table.json")
    published = estimate_latency(published_architecture("student"), lut)
    window = (published * 0.94, published * 1.06)  # the paper's ±6 % window around the published student
    draw = sample_in_window(random.Random(0), lut, window, wanted=5)
    assert len(draw.accepted) == 5 and draw.tried >= 5
    assert all(window[0] <= ms <= window[1] for _, ms in draw.accepted)
    assert all(ms == pytest.approx(estimate_latency(a, lut)) for a, ms in draw.accepted)
    with pytest.raises(ValueError, match=r"fell inside .* widen the window"):
        sample_in_window(random.Random(0), lut, (0.001, 0.002), wanted=1, max_tries=50)
