"""BatchNorm folding for inference: equal outputs, no BN, no aux heads, original untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fasterseg_core.models import Architecture, Branch, build_network, build_published
from fasterseg_core.models.fuse import fuse_for_inference
from fasterseg_core.models.state_dict import keyed_state_dict_for, load_official_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _keyed(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics (γ≠1, β≠0, μ≠0, σ²≠1) so a wrong fold cannot pass."""
    load_official_state_dict(net, keyed_state_dict_for(net))
    return net


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    rel = ((a - b).abs().max() / a.abs().max()).item()
    assert rel < 1e-4, rel


@pytest.mark.parametrize("deploy", [False, True])
def test_fused_student_equals_unfused(deploy):
    net = _keyed(build_published("student", deploy=deploy))
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert not hasattr(fused, "heads16") and not hasattr(fused, "heads32")
    assert fused.ffm.channel_attention is None
    assert fused.cells["0-0"] is fused.cells["0-1"]  # shared cells stay shared
    # the original is untouched
    assert net.training and isinstance(net.heads8.conv_3x3.bn, nn.BatchNorm2d) and hasattr(net, "heads16")

    net.eval()
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        y_net, y_fused = net(x), fused(x)
    assert y_fused["aux"] == []
    _assert_same(y_net["out"], y_fused["out"])
    fused.train()  # no BN left, no aux heads: training mode cannot change the output
    with torch.no_grad():
        _assert_same(y_net["out"], fused(x)["out"])


@pytest.mark.parametrize("deploy", [False, True])
def test_fused_stride2_skip_equals_unfused(deploy):
    """FactorizedReduce: one BN after the concat of two convs is folded half by half."""
    arch = Architecture(
        role="student",
        stem_chi=8,
        head_chi=8,
        branches=(
            Branch(
                ops=("conv_2x", "skip", "conv_downup", "skip", "conv"),
                path=(0, 0, 1, 1, 2),
                chi=(4, 6, 8, 10),
            ),
        ),
    )
    net = _keyed(build_network(arch, deploy=deploy)).eval()
    fused = fuse_for_inference(net)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        _assert_same(net(x)["out"], fused(x)["out"])


def test_fused_network_refuses_checkpoint_io():
    fused = fuse_for_inference(build_published("student"))
    with pytest.raises(TypeError, match="fuse_for_inference"):
        load_official_state_dict(fused, {})
