"""The operator table: shapes of every op at both strides and every width; one constructor for all stages."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fasterseg_core.models.ops import (
    OP_NAMES,
    OPS,
    WIDTH_CHOICES,
    ConvNorm,
    channels,
    resize,
)
from fasterseg_core.models.slimmable import USBatchNorm2d, USConv2d, make_divisible

C_MAX = 48  # a stride-4-like feature: every width of W gives a multiple of 16 channels


# Tiny tensors: thread start-up costs more than it saves on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_table_order_is_the_op_index():
    assert tuple(OPS) == OP_NAMES == ("skip", "conv", "conv_downup", "conv_2x", "conv_2x_downup")


def test_channels_and_make_divisible():
    assert channels(8, 12) == 96 and channels(32, 4) == 128 and channels(2, 8) == 16
    # spec §1.3: on the search space's channel counts MobileNet rounding is plain rounding
    for s, w in itertools.product((8, 16, 32), WIDTH_CHOICES):
        c_max = 12 * s
        assert make_divisible(c_max * w) == round(c_max * w)
        assert make_divisible(2 * c_max * w) == round(2 * c_max * w)
    assert make_divisible(3.0) == 9  # min 1, then +8 because 1 < 0.9 · 3 (quirk kept from the original)
    assert make_divisible(12.0) == 16


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("stride", [1, 2])
def test_fixed_op_shapes(name, stride):
    c_in, c_out = 32, 32 * stride
    op = OPS[name](c_in, c_out, stride)
    y = op(torch.randn(2, c_in, 16, 24))
    assert y.shape == (2, c_out, 16 // stride, 24 // stride)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("stride", [1, 2])
def test_slimmable_op_shapes_at_every_width(name, stride):
    c_out_max = C_MAX * stride  # supernet: a stride-2 op doubles the channels at equal width
    op = OPS[name](C_MAX, c_out_max, stride, slimmable=True).eval()
    for w_in, w_out in itertools.product(WIDTH_CHOICES, WIDTH_CHOICES):
        op.set_ratio((w_in, w_out))
        x = torch.randn(1, round(C_MAX * w_in), 8, 12)
        y = op(x)
        assert y.shape == (1, round(c_out_max * w_out), 8 // stride, 12 // stride), (w_in, w_out)


def _slice_into(fixed: nn.Module, slim: nn.Module, w_out: float) -> None:
    """Copy the active slice of every slimmable layer of ``slim`` into the plain layers of ``fixed``."""
    slim_mods = dict(slim.named_modules())
    with torch.no_grad():
        for name, m in fixed.named_modules():
            s = slim_mods.get(name)
            if isinstance(s, USConv2d):
                c_in, c_out = s.active_channels
                m.weight.copy_(s.weight[:c_out, :c_in])
            elif isinstance(s, USBatchNorm2d):
                private = s.bn[WIDTH_CHOICES.index(w_out)]
                m.load_state_dict(private.state_dict())


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("stride", [1, 2])
def test_same_op_in_supernet_and_fixed_network(name, stride):
    """A slimmable op at widths (w_in, w_out) computes what the fixed op of those widths computes."""
    if name == "skip" and stride == 1:
        pytest.skip("by design: stride-1 skip is identity in the fixed net, 1×1 conv in the supernet")
    torch.manual_seed(0)
    slim = OPS[name](C_MAX, C_MAX * stride, stride, slimmable=True)
    for bn in slim.modules():  # non-trivial private BN statistics
        if type(bn) is nn.BatchNorm2d:
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
    slim.eval()
    for w_in, w_out in [(4 / 12, 8 / 12), (1.0, 6 / 12), (10 / 12, 1.0)]:
        slim.set_ratio((w_in, w_out))
        c_in, c_out = round(C_MAX * w_in), round(C_MAX * stride * w_out)
        fixed = OPS[name](c_in, c_out, stride).eval()
        _slice_into(fixed, slim, w_out)
        x = torch.randn(2, c_in, 12, 16)
        torch.testing.assert_close(slim(x), fixed(x))


def test_skip_variants():
    x = torch.randn(1, 16, 8, 8)
    assert OPS["skip"](16, 16, 1)(x) is x  # fixed stride-1 skip is the identity
    with pytest.raises(ValueError, match="c_in == c_out"):
        OPS["skip"](16, 32, 1)
    factorized = OPS["skip"](16, 32, 2)
    single = OPS["skip"](16, 32, 2, skip_mode="single_conv")
    assert {n for n, _ in factorized.named_parameters()} >= {"conv1.weight", "conv2.weight", "bn1.weight"}
    assert single.conv1.weight.shape == (32, 16, 1, 1) and not hasattr(single, "conv2")
    assert factorized(x).shape == single(x).shape == (1, 32, 4, 4)
    # odd sizes: the shifted half is padded so both halves agree (the original crashes here)
    assert factorized(torch.randn(1, 16, 9, 7)).shape == (1, 32, 5, 4)


def test_factorized_reduce_uses_the_shifted_input():
    op = OPS["skip"](4, 8, 2).eval()
    x = torch.randn(1, 4, 8, 8)
    y_conv2_half = op(x)[:, 4:]
    expected = torch.relu(op.bn1(torch.cat([op.conv1(x), op.conv2(x[:, :, 1:, 1:])], 1)))[:, 4:]
    torch.testing.assert_close(y_conv2_half, expected)


def test_zoomed_conv_interpolation_variants():
    torch.manual_seed(0)
    bil = OPS["conv_downup"](8, 8, 1).eval()
    near = OPS["conv_downup"](8, 8, 1, interpolation="nearest").eval()
    near.load_state_dict(bil.state_dict())  # same keys: weights are interchangeable
    x = torch.randn(1, 8, 16, 16)
    assert bil(x).shape == near(x).shape == x.shape
    assert not torch.allclose(bil(x), near(x))
    # bilinear means align_corners=True: corners are reproduced exactly
    up = resize(x, (31, 31), "bilinear")
    torch.testing.assert_close(up[..., 0, 0], x[..., 0, 0])
    torch.testing.assert_close(up[..., -1, -1], x[..., -1, -1])
    with pytest.raises(ValueError, match="interpolation"):
        OPS["conv"](8, 8, 1, interpolation="bicubic")


def test_parameter_names_match_the_authors():
    names = {n for n, _ in OPS["conv_2x_downup"](8, 16, 2).named_parameters()}
    assert names == {"conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias"}
    cn = ConvNorm(3, 8, 3, 2)
    assert [k for k in cn.state_dict()][:2] == ["conv.0.weight", "conv.1.weight"]
    assert cn(torch.randn(1, 3, 9, 9)).shape == (1, 8, 5, 5)


def test_slimmable_layers_reject_bad_widths():
    op = OPS["conv"](C_MAX, C_MAX, 1, slimmable=True)
    with pytest.raises(ValueError, match="not one of"):
        op.set_ratio((1.0, 0.3))
    op.set_ratio((0.5, 0.5))
    with pytest.raises(ValueError, match="input channels"):
        op(torch.randn(1, C_MAX, 4, 4))  # width 0.5 expects 24 channels
    with pytest.raises(RuntimeError, match="slimmable=False"):
        OPS["conv"](8, 8, 1).set_ratio((1.0, 1.0))
    # switchable BN: one private BN per width, the parent's own parameters allocated (authors' layout)
    bn = USBatchNorm2d(C_MAX, WIDTH_CHOICES)
    assert [m.num_features for m in bn.bn] == [16, 24, 32, 40, 48]
    assert {"weight", "bias", "bn.0.weight", "bn.4.running_var"} <= set(bn.state_dict())


def test_slimmable_ops_train_backward():
    op = OPS["conv_2x_downup"](C_MAX, 2 * C_MAX, 2, slimmable=True)
    op.set_ratio((6 / 12, 10 / 12))
    y = op(torch.randn(2, 24, 8, 8))
    y.sum().backward()
    assert op.conv1.weight.grad[:80, :24].abs().sum() > 0
    assert op.conv1.weight.grad[80:].abs().sum() == 0  # inactive channels get no gradient


def _builtin_and_ours(x: torch.Tensor, size: tuple[int, int], grad: torch.Tensor):
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    ya = nn.functional.interpolate(a, size=size, mode="bilinear", align_corners=True)
    yb = resize(b, size, "bilinear")
    ya.backward(grad)
    yb.backward(grad)
    return ya, yb, a.grad, b.grad


def test_bilinear_resize_backward_is_bit_identical_to_the_builtin():
    # resize() runs PyTorch's channels-last kernels where they give the same bits (ops._bilinear_forward,
    # ops._BilinearNHWCBackward); values and layout of output and gradient must equal F.interpolate's
    # exactly, for NCHW, channels-last and non-contiguous incoming gradients, any batch, channel count,
    # output size and thread count.
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for case in range(64):
            torch.set_num_threads(1 + case % 3)
            n, c = (1, 2, 3, 4)[case // 16], (1, 3, 16, 19, 33, 64, 96, 192)[case % 8]
            hi, wi = (int(v) for v in torch.randint(1, 40, (2,), generator=g))
            free = (int(torch.randint(1, 90, (1,), generator=g)), 7)
            # out_h + out_w = 128 / 129 is where PyTorch switches between its NHWC and NCHW kernels
            boundary = (64, 64 + case % 2)
            ho, wo = [(max(1, hi // 2), max(1, wi // 2)), (2 * hi, 2 * wi), free, boundary][case % 4]
            x = torch.randn(n, c, hi, wi, generator=g)
            grad = torch.randn(n, c, ho, wo, generator=g) * 10.0 ** float(
                torch.randint(-6, 4, (1,), generator=g)
            )
            layout = (case // 3) % 3
            if layout == 1:
                grad = grad.contiguous(memory_format=torch.channels_last)
            elif layout == 2:  # e.g. the slice a concatenation's backward hands on
                grad = torch.cat([grad, grad], dim=1)[:, c:]
            ya, yb, ga, gb = _builtin_and_ours(x, (ho, wo), grad)
            assert torch.equal(ya, yb) and ya.stride() == yb.stride(), case
            assert torch.equal(ga, gb) and ga.stride() == gb.stride(), case
            with torch.no_grad():  # the inference path (no autograd Function) gives the same bits too
                yc = resize(x, (ho, wo), "bilinear")
            assert torch.equal(ya, yc) and ya.stride() == yc.stride(), case
        # degenerate shapes, where NCHW and NHWC strides coincide or differ only on size-1 dimensions
        for (n, c, hi, wi), (ho, wo) in [
            ((2, 1, 19, 35), (9, 17)),
            ((2, 5, 1, 1), (3, 3)),
            ((2, 5, 4, 4), (1, 1)),
        ]:
            x, grad = torch.randn(n, c, hi, wi, generator=g), torch.randn(n, c, ho, wo, generator=g)
            ya, yb, ga, gb = _builtin_and_ours(x, (ho, wo), grad)
            assert torch.equal(ya, yb) and ya.stride() == yb.stride(), (n, c, hi, wi)
            assert torch.equal(ga, gb) and ga.stride() == gb.stride(), (n, c, hi, wi)
    finally:
        torch.set_num_threads(threads)
    # without autograd no custom autograd Function is involved (inference, export, tracing)
    with torch.no_grad():
        assert resize(torch.randn(1, 2, 4, 4, requires_grad=True), (8, 8)).grad_fn is None
