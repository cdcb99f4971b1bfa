"""Multiply-add and parameter counts equal the figures measured on the authors' networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fasterseg_core.latency.flops import count_complexity
from fasterseg_core.models import build_published

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="module")
def measured():
    path = REF / "fasterseg_reference_figures.json"
    if not path.exists():
        pytest.skip(f"reference data {path} not available")
    return json.loads(path.read_text())["measured"]


@pytest.fixture(scope="module")
def meta_nets():
    """Published nets with meta tensors: counting needs shapes only, and building is instant."""
    with torch.device("meta"):
        return {role: build_published(role) for role in ("student", "teacher")}


@pytest.mark.parametrize("role", ["student", "teacher"])
@pytest.mark.parametrize(
    ("key", "shape"), [("flops_1024x2048", (1, 3, 1024, 2048)), ("flops_512x1024", (1, 3, 512, 1024))]
)
def test_macs_equal_the_reference_exactly(measured, meta_nets, role, key, shape):
    want = measured[role][key]
    net = meta_nets[role]
    c = count_complexity(net, shape)  # meta device: shapes only, fast at any size
    assert c.conv_macs_by_module == want["conv_macs_by_top_module"]
    assert c.conv_macs == sum(want["conv_macs_by_top_module"].values())
    assert c.conv_macs / 1e9 == pytest.approx(want["conv_multiply_adds_only_G"], abs=5e-5)
    assert c.conv_bias_adds == want["conv_bias_adds"]
    assert c.bn_elements == want["bn_input_elements"]
    thop_key = next(k for k in want if k.startswith("thop_0.0.31_total_G"))
    assert round(c.thop_macs / 1e9, 4) == want[thop_key]
    assert net.training  # the training flag is restored


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_params_by_module_equal_the_reference(measured, meta_nets, role):
    want = measured[role]["params"]
    c = count_complexity(meta_nets[role], (1, 3, 64, 128))
    assert c.params_by_module == want["by_top_module"]
    assert c.params == want[next(k for k in want if k.startswith("all_parameters_unique"))]
    assert c.params_used == want["parameters_touched_by_eval_forward"]


def test_paper_student_figures(meta_nets):
    """Paper: 4.4 M parameters, 28.2 G FLOPs; the thop convention gives 27.90 G (spec §8, §13)."""
    c = count_complexity(meta_nets["student"])
    assert round(c.params / 1e6, 1) == 4.4
    assert round(c.thop_macs / 1e9, 2) == 27.90 and round(c.conv_macs / 1e9, 2) == 27.77


def test_hand_counted_toy_network_on_cpu_and_meta():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1, stride=2)
    )
    for device in ("meta", "cpu"):
        c = count_complexity(net, (2, 3, 6, 6), device=device)
        assert c.conv_macs == 2 * 8 * 6 * 6 * 27 + 2 * 4 * 3 * 3 * 8
        assert c.conv_bias_adds == 2 * 8 * 36 + 2 * 4 * 9
        assert c.bn_elements == 2 * 8 * 36
        assert c.thop_macs == c.conv_macs + c.conv_bias_adds + 2 * c.bn_elements
        assert c.params == c.params_used == sum(p.numel() for p in net.parameters())
    assert net[0].weight.device.type == "cpu" and torch.isfinite(net[0].weight).all()
