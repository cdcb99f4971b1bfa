"""The fixed (derived) FasterSeg network built from an :class:`Architecture`.

Method: ``docs/method.md`` §5 (written from the method, in place of ``Network_Multi_Path_Infer`` of the authors'
``train/model_seg.py``) and §10 (the TensorRT-friendly deployment variant).

Data flow, for the published two-branch networks (``lasts = [2, 1]``)::

    image ─ stem (→1/8) ─┬─ shared cells ─┬─ branch 0 cells … ↓1/16 … ↓1/32 ─ arms32/refines32 ─┐
                         │                └─ branch 1 cells … ↓1/16 ──────── arms16/refines16 ─┤
                         │                                                                      cat
                                                      heads8(ffm(·)) at 1/8 → resize to input ─┘

Every module name equals the authors' (``stem``, ``cells["{l}-{b}"]._op._op``, ``heads32``,
``heads16``, ``heads8``, ``arms32``, ``refines32``, ``arms16``, ``refines16``, ``ffm``) and modules
are registered in their order, so ``state_dict()`` is key-for-key the released checkpoints' layout,
aliases of shared cells included (a cell shared by both branches is one module registered under
both keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .architecture import Architecture
from .heads import FeatureFusion, Head
from .ops import OPS, Conv2x, ConvNorm, resize


class _MixedOpSlot(nn.Module):
    """The searched MixedOp after derivation: exactly one operator, kept under ``_op``."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self._op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._op(x)


class Cell(nn.Module):
    """One cell of a derived branch: its chosen operator.

    The two ``_op`` levels mirror the authors' Cell → MixedOp → op nesting so that state-dict keys
    read ``cells.3-0._op._op.conv1.weight`` exactly as in the released checkpoints.
    """

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self._op = _MixedOpSlot(op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) → (N, C_out, H / stride, W / stride)."""
        return self._op(x)


@dataclass(frozen=True)
class CellPlan:
    """Static description of one built cell (for the forward loop, latency tables and reports)."""

    layer: int
    key: str  # ModuleDict key "{layer}-{first branch}"
    branches: tuple[int, ...]  # branches sharing this module (all registered under their own key)
    op: str
    c_in: int
    c_out: int
    stride: int
    in_scale: int  # 0, 1, 2 ↔ stride 8, 16, 32
    out_scale: int


def _shared_prefix(arch: Architecture) -> int:
    """Number of leading layers whose cell is shared by both branches (spec §5.2 grouping rule).

    Two branches share cell l iff they shared every earlier cell, cell l is not the last cell of
    either, and they agree on cell l's operator, output width and output stride.
    """
    if len(arch.branches) < 2:
        return 0
    a, b = arch.branches
    n = 0
    while (
        n + 1 < len(a)
        and n + 1 < len(b)
        and a.path[n + 1] == b.path[n + 1]
        and a.ops[n] == b.ops[n]
        and a.chi[n] == b.chi[n]
    ):
        n += 1
    return n


def plan_cells(arch: Architecture) -> list[CellPlan]:
    """Every distinct cell module of the network, in the authors' registration order (layer, branch).

    Channel rule (§5.2): cell 0 reads the stem (C(8, stem_chi)); cell l reads C(s, chi[l-1]); the last
    cell of a branch writes C(s, head_chi); other cells write C(s·(1+down), chi[l]).
    """
    shared = _shared_prefix(arch)
    plans: list[CellPlan] = []
    for layer in range(max(len(b) for b in arch.branches)):
        for bi, branch in enumerate(arch.branches):
            if layer >= len(branch) or (bi > 0 and layer < shared):
                continue
            in_scale = branch.path[layer]
            down = branch.downs[layer]
            stride_in = 8 * 2**in_scale
            c_in = (
                arch.channels(8, arch.stem_chi)
                if layer == 0
                else arch.channels(stride_in, branch.chi[layer - 1])
            )
            if layer == len(branch) - 1:
                c_out = arch.channels(stride_in, arch.head_chi)
            else:
                c_out = arch.channels(stride_in * (1 + down), branch.chi[layer])
            members = tuple(range(len(arch.branches))) if layer < shared else (bi,)
            plans.append(
                CellPlan(
                    layer=layer,
                    key=f"{layer}-{bi}",
                    branches=members,
                    op=branch.ops[layer],
                    c_in=c_in,
                    c_out=c_out,
                    stride=1 + down,
                    in_scale=in_scale,
                    out_scale=in_scale + down,
                )
            )
    return plans


class FasterSegNetwork(nn.Module):
    """A derived FasterSeg network: stem → one or two branches of cells → decoder → head.

    Args:
        arch: the searched (or published) architecture.
        num_classes: output classes.
        interpolation: "bilinear" (align_corners=True, accuracy variant) or "nearest" (deployment, §10).
        skip_mode: stride-2 skip op, "factorized" or "single_conv" (deployment, §10).
        aux: build the auxiliary heads ``heads16``/``heads32`` (used in training mode only). The
            authors always build them, so their checkpoints contain them.

    Forward: image (N, 3, H, W) float → ``{"out": logits (N, num_classes, H, W), "aux": [pred16,
    pred32]}``, the aux predictions (same shape as ``out``) only in training mode when the aux heads
    exist, else ``[]``.
    """

    def __init__(
        self,
        arch: Architecture,
        num_classes: int = 19,
        *,
        interpolation: str = "bilinear",
        skip_mode: str = "factorized",
        aux: bool = True,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.interpolation = interpolation
        self.fused = False  # set by fuse_for_inference: BN folded, aux heads dropped
        # fuse_for_inference switches this on: NHWC lets oneDNN convolutions and the bilinear kernels
        # run without layout conversions (same values, different memory layout).
        self.channels_last = False
        ch = arch.channels
        r, h = arch.stem_chi, arch.head_chi

        # --- stem (§5.1): 3 → 2·C(2, r) → 2·C(4, r) → C(8, r), each stride 2
        self.stem = nn.Sequential(
            ConvNorm(3, 2 * ch(2, r), 3, 2),
            Conv2x(2 * ch(2, r), 2 * ch(4, r), 2, interpolation=interpolation),
            Conv2x(2 * ch(4, r), ch(8, r), 2, interpolation=interpolation),
        )

        # --- cells (§5.2); a shared cell is one module under every member branch's key
        self.cell_plans = plan_cells(arch)
        self.cells = nn.ModuleDict()
        for p in self.cell_plans:
            op = OPS[p.op](p.c_in, p.c_out, p.stride, interpolation=interpolation, skip_mode=skip_mode)
            cell = Cell(op)
            for b in p.branches:
                self.cells[f"{p.layer}-{b}"] = cell

        # Per branch: channels of its latest feature at each scale after its last cell. Every branch
        # starts with the stem output at all three scales (as the original), which only matters for
        # branches that skip a scale's cells entirely.
        self.ends = arch.lasts
        latest_ch = [{s: ch(8, r) for s in range(3)} for _ in arch.branches]
        for p in self.cell_plans:
            for b in p.branches:
                latest_ch[b][p.out_scale] = p.c_out
        fh = {s: ch(8 * 2**s, h) for s in range(3)}  # Fh(s): decoder widths
        b32 = self.ends.index(2) if 2 in self.ends else None
        b16 = self.ends.index(1) if 1 in self.ends else None

        # --- aux heads (§5.3, training only); registered before heads8 as in the authors' state dict
        self.has_aux = aux and b32 is not None
        if self.has_aux:
            self.heads32 = Head(fh[2], num_classes)
            c16 = latest_ch[b32][1] + (fh[1] if b16 is not None else 0)
            self.heads16 = Head(c16, num_classes)
        n_branches = len(arch.branches)
        self.heads8 = Head(n_branches * fh[0], num_classes)

        # --- decoder (§5.3): arms are 1×1 ConvNorms, refines 3×3 ConvNorms on [upsampled, skip]
        if b32 is not None:
            self.arms32 = nn.ModuleList([ConvNorm(fh[2], fh[1], 1), ConvNorm(fh[1], fh[0], 1)])
            self.refines32 = nn.ModuleList(
                [ConvNorm(fh[1] + latest_ch[b32][1], fh[1], 3), ConvNorm(fh[0] + latest_ch[b32][0], fh[0], 3)]
            )
        if b16 is not None:
            self.arms16 = ConvNorm(fh[1], fh[0], 1)
            self.refines16 = ConvNorm(fh[0] + latest_ch[b16][0], fh[0], 3)
        self.ffm = FeatureFusion(n_branches * fh[0])
        self._b32, self._b16 = b32, b16

    # ------------------------------------------------------------------------------------------
    def _branches(self, stem_out: torch.Tensor) -> list[dict[int, torch.Tensor]]:
        """Run all cells; returns per branch its latest feature at scale 0/1/2 (stride 8/16/32)."""
        n = len(self.arch.branches)
        current = [stem_out] * n
        latest = [{0: stem_out, 1: stem_out, 2: stem_out} for _ in range(n)]
        for p in self.cell_plans:
            y = self.cells[p.key](current[p.branches[0]])
            for b in p.branches:
                current[b] = y
                latest[b][p.out_scale] = y
        return latest

    def _decode(self, latest: dict[int, torch.Tensor], end: int) -> torch.Tensor:
        """One branch's stride-8 decoder feature (N, Fh(8), H/8, W/8)."""
        if end == 2:
            x = self.arms32[0](latest[2])
            x = resize(x, latest[1].shape[-2:], self.interpolation)
            x = self.refines32[0](torch.cat([x, latest[1]], dim=1))
            x = self.arms32[1](x)
            x = resize(x, latest[0].shape[-2:], self.interpolation)
            return self.refines32[1](torch.cat([x, latest[0]], dim=1))
        if end == 1:
            x = self.arms16(latest[1])
            x = resize(x, latest[0].shape[-2:], self.interpolation)
            return self.refines16(torch.cat([x, latest[0]], dim=1))
        return latest[0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """x: (N, 3, H, W) float → {"out": (N, K, H, W), "aux": [] or [pred16, pred32] (N, K, H, W)}.

        Deviation: logits are resized to the input size (H, W) rather than by a fixed factor 8/16/32;
        identical for inputs divisible by 32, and keeps ``out`` at input size for other sizes
        (e.g. CamVid 720×960, whose 1/32 feature has ⌈720/32⌉ rows).
        """
        size = x.shape[-2:]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        latest = self._branches(self.stem(x))
        feats = [self._decode(latest[b], end) for b, end in enumerate(self.ends)]
        fused = self.ffm(feats[0] if len(feats) == 1 else torch.cat(feats, dim=1))
        out = resize(self.heads8(fused), size, self.interpolation)
        aux: list[torch.Tensor] = []
        if self.training and self.has_aux:
            o32 = latest[self._b32][2]
            o16 = latest[self._b32][1]
            if self._b16 is not None:
                o16 = torch.cat([o16, latest[self._b16][1]], dim=1)
            aux = [
                resize(self.heads16(o16), size, self.interpolation),
                resize(self.heads32(o32), size, self.interpolation),
            ]
        return {"out": out, "aux": aux}


def build_network(
    arch: Architecture, num_classes: int = 19, *, deploy: bool = False, aux: bool = True
) -> FasterSegNetwork:
    """Build the fixed FasterSeg network of ``arch`` (spec §5).

    Args:
        arch: derived or published architecture (see :mod:`fasterseg_core.models.published`).
        num_classes: number of output classes.
        deploy: build the §10 deployment variant the paper timed (nearest-neighbour resizes and a
            single 1×1 stride-2 conv as skip). Weights are interchangeable with the accuracy variant.
        aux: build the auxiliary heads (training-mode outputs; present in the authors' checkpoints).

    Returns:
        A :class:`FasterSegNetwork` in training mode (call ``.eval()`` for inference).
    """
    return FasterSegNetwork(
        arch,
        num_classes,
        interpolation="nearest" if deploy else "bilinear",
        skip_mode="single_conv" if deploy else "factorized",
        aux=aux,
    )


def init_weights_(module: nn.Module) -> None:
    """§7.3: Kaiming-normal (fan_in, ReLU) conv weights, BN weight 1 and bias 0; conv biases untouched."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
