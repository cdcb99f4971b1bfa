"""Width-switchable ("slimmable") convolution and batch norm for the FasterSeg supernet.

Method: ``docs/method.md`` §1.3 (written from the method, in place of the authors' ``USConv2d``/``USBatchNorm2d``,
after the universally slimmable networks of Yu & Huang, 2019).

A slimmable layer owns the weights of its widest version. Before a forward pass the supernet picks a
width ratio ``w`` (one of the search widths W = [4/12 … 12/12]) and the layer runs with the first
``make_divisible(C_max · w)`` channels. Convolutions share their weights across widths by slicing;
batch norm does not share: every width has a private ``BatchNorm2d`` ("switchable BN"), because the
statistics of a 32-channel slice differ from those of the same channels inside a 96-channel feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet channel rounding used by the authors' slimmable layers.

    ``max(min_value, int(value + divisor/2) // divisor * divisor)``, plus one ``divisor`` if that lost
    more than 10 % of ``value``. For every channel count of the FasterSeg search space (multiples
    of 16) this equals ``round(value)``.

    Args:
        value: real-valued channel count, e.g. ``C_max * w``.
        divisor: channel granularity.
        min_value: lower bound; spec §1.3 uses 1.

    Returns:
        The rounded channel count.
    """
    if min_value is None:
        min_value = 1
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _width_index(width: float, width_choices: tuple[float, ...]) -> int:
    for i, w in enumerate(width_choices):
        if abs(w - width) < 1e-6:
            return i
    raise ValueError(
        f"width ratio {width} is not one of this layer's widths {tuple(round(w, 4) for w in width_choices)}; "
        "pick a width from the search's width list"
    )


class USConv2d(nn.Conv2d):
    """Conv2d whose input/output channels are the first ``make_divisible(C_max · w)`` of its weight.

    Holds the weight of the widest layer, shape (C_out_max, C_in_max, k, k). ``set_width((w_in,
    w_out))`` picks the slice ``weight[:c_out, :c_in]`` used by the next forward passes.

    Args:
        in_channels: C_in at width 1.
        out_channels: C_out at width 1.
        kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d`` (groups must be 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        if groups != 1:
            raise ValueError("USConv2d supports groups=1 only (FasterSeg uses no grouped convolutions)")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.width_in = 1.0
        self.width_out = 1.0

    def set_width(self, widths: tuple[float, float]) -> None:
        """Select (w_in, w_out) for the following forward passes."""
        self.width_in, self.width_out = float(widths[0]), float(widths[1])

    @property
    def active_channels(self) -> tuple[int, int]:
        """(c_in, c_out) at the current widths."""
        return (
            make_divisible(self.in_channels * self.width_in),
            make_divisible(self.out_channels * self.width_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) float → (N, c_out, H', W')."""
        c_in, c_out = self.active_channels
        if x.shape[1] != c_in:
            raise ValueError(
                f"USConv2d({self.in_channels}→{self.out_channels}) at width {self.width_in} expects "
                f"{c_in} input channels, got {x.shape[1]}; set_width() on the producer and consumer must agree"
            )
        weight = self.weight[:c_out, :c_in]
        bias = self.bias[:c_out] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class USBatchNorm2d(nn.BatchNorm2d):
    """Switchable batch norm: one private ``BatchNorm2d`` per width ratio, chosen by the output width.

    The parent ``BatchNorm2d`` (``num_features`` = widest) keeps its own affine parameters and
    running statistics although they are never used: the authors allocate them, so they are part
    of the supernet's parameter count and state dict (keys ``<bn>.weight`` … next to ``<bn>.bn.<k>.*``).

    Args:
        num_features: channels at width 1.
        width_choices: the width ratios the layer can switch between, in search order.
        eps, momentum: BatchNorm2d settings of every private norm.
    """

    def __init__(
        self,
        num_features: int,
        width_choices: tuple[float, ...],
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        self.width_choices = tuple(float(w) for w in width_choices)
        self.bn = nn.ModuleList(
            nn.BatchNorm2d(make_divisible(num_features * w), eps=eps, momentum=momentum)
            for w in self.width_choices
        )
        self.width = 1.0 if any(abs(w - 1.0) < 1e-6 for w in self.width_choices) else self.width_choices[-1]

    def set_width(self, width: float) -> None:
        """Select the output width ratio (must be one of ``width_choices``)."""
        _width_index(float(width), self.width_choices)  # validate now, not in the forward pass
        self.width = float(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, make_divisible(C · w), H, W) → same shape."""
        return self.bn[_width_index(self.width, self.width_choices)](x)
