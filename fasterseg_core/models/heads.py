"""Segmentation heads and the feature-fusion module of FasterSeg.

Method: ``docs/method.md`` §1.4-§1.5 and §5.3 (written from the method, in place of ``Head`` and
``FeatureFusion`` of the authors' ``seg_oprs.py``). The decoder's 1×1 "arms" and 3×3 "refines" are
plain :class:`~fasterseg_core.models.ops.ConvNorm` blocks wired by the network builder.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBnRelu(nn.Module):
    """conv (bias-free) → [BN] → [ReLU]; state-dict names ``conv.weight`` and ``bn.*``.

    Args:
        c_in: input channels.
        c_out: output channels.
        kernel_size: k; padding is k // 2 (same size at stride 1).
        has_bn: add BatchNorm2d after the conv.
        has_relu: add ReLU at the end.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, *, has_bn: bool = True, has_relu: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, 1, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out) if has_bn else None
        self.relu = nn.ReLU(inplace=True) if has_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) → (N, c_out, H, W)."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


def head_mid_channels(c_in: int) -> int:
    """Hidden width of :class:`Head`: c_in up to 256 channels, half of it above (spec §1.4)."""
    return c_in if c_in <= 256 else c_in // 2


class Head(nn.Module):
    """Segmentation head: ConvBnRelu 3×3 (c_in → mid) → 1×1 conv with bias (mid → num_classes).

    Args:
        c_in: input channels.
        num_classes: output channels (19 for Cityscapes).

    Keys: ``conv_3x3.conv.weight``, ``conv_3x3.bn.*``, ``conv_1x1.{weight,bias}``.
    """

    def __init__(self, c_in: int, num_classes: int = 19) -> None:
        super().__init__()
        mid = head_mid_channels(c_in)
        self.conv_3x3 = ConvBnRelu(c_in, mid, 3)
        self.conv_1x1 = nn.Conv2d(mid, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) float → logits (N, num_classes, H, W)."""
        return self.conv_1x1(self.conv_3x3(x))


class FeatureFusion(nn.Module):
    """Feature fusion module (FFM): one 1×1 ConvBnRelu (c → c).

    The original also *allocates* a channel-attention branch (global pool → 1×1 conv + ReLU → 1×1 conv
    → sigmoid, no BN) that its forward never calls. We keep the two attention weights
    (``channel_attention.{1,2}.conv.weight``) so the released checkpoints load key for key and the
    parameter count matches the paper's 4.4 M, and likewise never run it.

    Args:
        channels: c, the channels of the concatenated branch features.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_1x1 = ConvBnRelu(channels, channels, 1)
        self.channel_attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvBnRelu(channels, channels, 1, has_bn=False, has_relu=True),
            ConvBnRelu(channels, channels, 1, has_bn=False, has_relu=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c, H, W) → (N, c, H, W). The attention branch is deliberately not applied (as the original)."""
        return self.conv_1x1(x)
