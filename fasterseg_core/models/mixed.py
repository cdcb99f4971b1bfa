"""The supernet's building blocks (method §2.2–§2.4): the mixed operator, the cell, where each cell's
architecture parameters and widths live, and the straight-through Gumbel sample that picks widths (and,
with path sampling, operators and inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .ops import OP_NAMES, OPS


class WidthRef(NamedTuple):
    """Where a cell input/output width comes from: ``("ratio", scale, row)``, ``("stem",)`` or ``("head",)``."""

    kind: str
    scale: int = -1
    row: int = -1


@dataclass(frozen=True)
class CellSlot:
    """One cell of the grid and where its architecture parameters live (for forward and latency).

    Attributes:
        layer: i, 0 … L-1.
        scale: 0, 1, 2 ↔ stride 8, 16, 32.
        stride: 8 · 2**scale.
        channels: C(stride, 1), the cell's full-width input/output channels (down output: twice that).
        alpha_row: row of ``alpha_k_{scale}`` weighting this cell's operators (both ``op`` and ``down``).
        beta_row: row of ``beta_k_{scale}`` mixing [from_down, from_keep], or None for a single input.
        width_in, width_out, width_down: width sources of the input, ``op`` output and ``down`` output
            (``width_down`` None when the cell has no down output).
    """

    layer: int
    scale: int
    stride: int
    channels: int
    alpha_row: int
    beta_row: int | None
    width_in: WidthRef
    width_out: WidthRef
    width_down: WidthRef | None

    @property
    def key(self) -> str:
        return f"{self.layer}_{self.scale}"


class MixedOp(nn.Module):
    """Σ_o p_o · op_o(x) over the five slimmable operators (§2.4).

    Args:
        c_in: full-width input channels.
        c_out: full-width output channels.
        stride: 1 or 2.
        width_choices: width ratios W the slimmable layers can switch between.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, width_choices: tuple[float, ...]) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.ops = nn.ModuleList(
            OPS[name](c_in, c_out, stride, slimmable=True, width_choices=width_choices) for name in OP_NAMES
        )

    def forward(
        self,
        x: torch.Tensor,
        op_weights: torch.Tensor,
        widths: tuple[float, float],
        gate: torch.Tensor | None,
        only: int | None = None,
    ) -> torch.Tensor:
        """Mix all operators, or run one.

        Args:
            x: (N, make_divisible(c_in·w_in), H, W) float.
            op_weights: (5,) softmax(α row), or a (straight-through) one-hot row when ``only`` is set.
            widths: (w_in, w_out) ratios.
            gate: g_in·g_out straight-through Gumbel factor (value 1.0), or None for fixed widths.
            only: run just this operator, scaled by ``op_weights[only]`` (path modes "sample"/"argmax").

        Returns:
            (N, make_divisible(c_out·w_out), H / stride, W / stride).
        """
        total: torch.Tensor | None = None
        pairs = zip(op_weights, self.ops) if only is None else [(op_weights[only], self.ops[only])]
        for p, op in pairs:
            op.set_ratio(widths)
            y = p * op(x)
            total = y if total is None else total + y
        assert total is not None
        return total if gate is None else total * gate


class Cell(nn.Module):
    """A supernet cell: a stride-1 mixed op and an optional stride-2 mixed op sharing one α row."""

    def __init__(self, c: int, has_down: bool, width_choices: tuple[float, ...]) -> None:
        super().__init__()
        self.op = MixedOp(c, c, 1, width_choices)
        self.down = MixedOp(c, 2 * c, 2, width_choices) if has_down else None


class WidthSample(NamedTuple):
    """A feature's width for one forward pass: ratio w and the straight-through gate (None if fixed)."""

    ratio: float
    gate: torch.Tensor | None


def hard_gumbel(logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, list[int]]:
    """Hard straight-through Gumbel-softmax, τ = 1, on log_softmax of each row (§2.4).

    Noise ``g = −log(−log(U+1e−20)+1e−20)`` is drawn on the generator's device, then moved.

    Args:
        logits: (rows, n).

    Returns:
        ``(hard (rows, n), idx)``: ``hard`` is one-hot valued (exactly 1.0 at the chosen index) and carries
        the gradient of the Gumbel-softmax sample; ``idx`` the chosen index per row.
    """
    dev = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=dev, dtype=logits.dtype).to(logits.device)
    g = -torch.log(-torch.log(u + 1e-20) + 1e-20)
    soft = torch.softmax(F.log_softmax(logits, dim=-1) + g, dim=-1)
    idx = soft.argmax(dim=-1)
    hard = F.one_hot(idx, logits.shape[1]).to(soft.dtype) - soft.detach() + soft
    return hard, idx.tolist()
