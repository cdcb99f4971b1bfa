"""Inference-time simplification of a FasterSeg network: fold BatchNorm into the convolutions.

Method: ``docs/method.md`` §5, §10. In eval mode a BN is the affine map
``y = γ (x − μ) / sqrt(σ² + ε) + β`` per channel, so ``BN(conv(x))`` equals one conv with weight
``W · γ/sqrt(σ² + ε)`` (per output channel) and bias ``β − μ · γ/sqrt(σ² + ε)``. Folding saves one
full read and write of every feature map. The aux heads (training only) and the FFM's never-executed
channel attention are dropped. Outputs equal the unfused eval network up to float rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .heads import ConvBnRelu
from .network import FasterSegNetwork
from .ops import ConvNorm, Skip, _Op


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` of the eval-mode BN, with a bias.

    The fold is computed in float64 and cast back, so the only error is one float32 rounding.
    """
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
        raise TypeError(
            f"fold_bn needs plain Conv2d and BatchNorm2d, got {type(conv).__name__}, {type(bn).__name__}"
        )
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    fused.bias.copy_(bias.to(conv.weight.dtype))
    return fused


def _split_bn(bn: nn.BatchNorm2d, start: int, stop: int) -> nn.BatchNorm2d:
    """The channels [start, stop) of an eval BN as a BN of their own."""
    part = nn.BatchNorm2d(stop - start, eps=bn.eps).to(device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(part, name).copy_(getattr(bn, name)[start:stop])
    return part.eval()


def _fuse_op(op: _Op) -> None:
    if isinstance(op, Skip) and op.mode == "factorized":
        # BN follows the concat of two half convs: fold each half of the BN into its own conv.
        half = op.conv1.out_channels
        op.conv1 = fold_bn(op.conv1, _split_bn(op.bn1, 0, half))
        op.conv2 = fold_bn(op.conv2, _split_bn(op.bn1, half, 2 * half))
        op.bn1 = nn.Identity()
        return
    for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
        if isinstance(getattr(op, bn_name, None), nn.BatchNorm2d):
            setattr(op, conv_name, fold_bn(getattr(op, conv_name), getattr(op, bn_name)))
            setattr(op, bn_name, nn.Identity())


def fuse_for_inference(net: FasterSegNetwork, *, channels_last: bool = True) -> FasterSegNetwork:
    """An inference-only copy of ``net`` with every BatchNorm folded into its convolution.

    Args:
        net: a fixed network (unchanged by this call; it is deep-copied).
        channels_last: also store weights and run activations in NHWC ("channels last") layout.
            The values are the same; on CPU this avoids a layout conversion around every oneDNN
            convolution and lets the bilinear resizes use their vectorised NHWC kernel
            (``benchmarks/models.py`` measures the effect).

    Returns:
        A network in eval mode whose forward gives ``{"out": logits, "aux": []}``, equal to
        ``net.eval()``'s output within float32 rounding (≈1e-6 relative). ``out`` may be a
        channels-last tensor. It has no aux heads and no FFM channel attention; its state dict is
        *not* the authors' layout.
    """
    if not isinstance(net, FasterSegNetwork):
        raise TypeError(f"fuse_for_inference expects a FasterSegNetwork, got {type(net).__name__}")
    if net.fused:
        return net
    fused = copy.deepcopy(net).eval()
    if fused.has_aux:
        del fused.heads16, fused.heads32
        fused.has_aux = False
    fused.ffm.channel_attention = None  # never executed (§1.5)

    for module in list(fused.modules()):  # modules() visits a shared cell once
        if isinstance(module, _Op):
            _fuse_op(module)
        elif isinstance(module, ConvNorm):
            module.conv[0] = fold_bn(module.conv[0], module.conv[1])
            module.conv[1] = nn.Identity()
        elif isinstance(module, ConvBnRelu) and module.bn is not None:
            module.conv = fold_bn(module.conv, module.bn)
            module.bn = None
    leftovers = [n for n, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftovers:
        raise RuntimeError(
            f"BatchNorm left unfused in {leftovers}; fuse_for_inference does not know these blocks"
        )
    fused.fused = True
    for p in fused.parameters():
        p.requires_grad_(False)
    if channels_last:
        fused.to(memory_format=torch.channels_last)
        fused.channels_last = True
    return fused
