"""The FasterSeg multi-resolution supernet: 16 layers of cells over strides 8/16/32.

Method: ``docs/method.md`` §2 (written from the method, in place of the search space of the authors'
``search/model_search.py``; paper §3.1-3.3, Fig. 2-3).

Layer ``i`` holds one cell per available scale (stride 8 from layer 0, 16 from layer 1, 32 from layer 2).
A cell owns two *mixed* operators built at full width: ``op`` (stride 1) and, except in the last layer
and at stride 32, ``down`` (stride 2, doubling the channels). A mixed operator runs all five candidate
operators of :data:`~fasterseg_core.models.ops.OPS` (their slimmable versions) and sums them weighted by
softmax(α). Cells at strides 16/32 read two candidate inputs (the previous layer's down output one scale
higher, and the previous cell at the same scale) and mix the two results with softmax(β). Each feature
produced by a layer has a width, sampled from its γ row (``ratio`` logits) for the student.

The teacher (architecture index 0) and the student (index 1) share every cell; each owns a stem, a
decoder with five heads, and its own α/β/γ. Architecture parameters are kept in ``self.arch`` and are
disjoint from the weights: :meth:`Supernet.arch_parameters` / :meth:`Supernet.weight_parameters`.
:meth:`Supernet.arch_state` returns them under the authors' names (``alpha_k_0`` … ``ratio_k_2``) so
``derive_architecture(net.arch_state(1), "student", metrics=...)`` turns a search into a network.

Width modes (§2.4, §3.2): ``"max"`` / ``"min"`` put every cell feature at the widest / narrowest
width, ``"random"`` draws each feature's width uniformly from W (pretraining's sandwich rule), and
``"gumbel"`` draws it from a hard straight-through Gumbel-softmax sample of its γ row (student search);
``"argmax"`` takes each γ row's most likely width, the one derivation keeps (§4.3; used to evaluate the
searched student).
Stem and head widths are fixed per index (teacher 12/12, student 8/12).

Path modes: ``"mix"`` (the paper, default) runs all five operators of every mixed op and both inputs of
every two-input cell, weighted by softmax(α) / softmax(β). ``"sample"`` — a deliberate deviation, opt-in via
``search.path_sampling`` — runs one operator per cell and one input per two-input cell, drawn from a hard
straight-through Gumbel-softmax of the α / β row (as the widths are, §2.4; single-path sampling as in
GDAS, Dong & Yang, CVPR 2019): a forward pass then costs about what one derived network costs instead of
~5-10x that, and α/β still get a gradient through the sample's straight-through factor. ``"argmax"`` runs
the most likely operator and input (deterministic; evaluation of a sampled search).
"""

# Length (~470 lines, over the house limit of ~450) on purpose: the supernet is one module of the method
# (§2: stem, cell grid, mixing rule, heads); its forward and its parameter tables read best side by side.

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .derive import arch_name, arch_shapes
from .heads import Head
from .mixed import Cell, CellSlot, WidthRef, WidthSample, hard_gumbel
from .ops import OPS, ConvNorm, channels, resize
from .slimmable import make_divisible

if TYPE_CHECKING:
    from ..config import ModelConfig

WIDTH_MODES = ("max", "min", "random", "gumbel", "argmax")
PATH_MODES = ("mix", "sample", "argmax")
HEAD_NAMES = ("8s", "16s", "32s", "8s_32s", "16s_32s")
ARCH_INIT = 1e-3  # §2.3: every architecture logit starts at 1e-3 (uniform after softmax)


class SupernetDecoder(nn.Module):
    """Refinements and the five supernet heads of one architecture index (§2.5).

    Args:
        fh: ``(Fh(8), Fh(16), Fh(32))``, the head-width channels of the last-layer features.
        num_classes: output channels of every head.
        interpolation: resize mode of the ×2 upsamplings.
    """

    def __init__(self, fh: tuple[int, int, int], num_classes: int, interpolation: str = "bilinear") -> None:
        super().__init__()
        f8, f16, f32 = fh
        self.interpolation = interpolation
        self.refine16 = nn.ModuleList([ConvNorm(f16, f8, 1), ConvNorm(2 * f8, f8, 3)])
        self.refine32 = nn.ModuleList(
            [ConvNorm(f32, f16, 1), ConvNorm(2 * f16, f16, 3), ConvNorm(f16, f8, 1), ConvNorm(2 * f8, f8, 3)]
        )
        self.heads = nn.ModuleDict(
            {
                "8s": Head(f8, num_classes),
                "16s": Head(f8, num_classes),
                "32s": Head(f8, num_classes),
                "8s_32s": Head(2 * f8, num_classes),
                "16s_32s": Head(2 * f8, num_classes),
            }
        )

    def _up_cat(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # concat order [upsampled, skip] (§2.5); resize to the skip's size (= ×2 for even inputs)
        return torch.cat([resize(x, tuple(skip.shape[-2:]), self.interpolation), skip], dim=1)

    def forward(self, o8: torch.Tensor, o16: torch.Tensor, o32: torch.Tensor) -> dict[str, torch.Tensor]:
        """o8/o16/o32: (N, Fh(s), H/s, W/s) → {head name: (N, num_classes, H/8, W/8) logits}."""
        f1 = self.refine16[1](self._up_cat(self.refine16[0](o16), o8))
        f2 = self.refine32[1](self._up_cat(self.refine32[0](o32), o16))
        f2 = self.refine32[3](self._up_cat(self.refine32[2](f2), o8))
        return {
            "8s": self.heads["8s"](o8),
            "16s": self.heads["16s"](f1),
            "32s": self.heads["32s"](f2),
            "8s_32s": self.heads["8s_32s"](torch.cat([o8, f2], dim=1)),
            "16s_32s": self.heads["16s_32s"](torch.cat([f1, f2], dim=1)),
        }


def _stem(c_out8: int, c2: int, c4: int) -> nn.Sequential:
    # §2.1: ConvNorm 3→2·C(2,r) stride 2, then two stride-2 conv×2 ops (fixed width, not slimmable).
    return nn.Sequential(
        ConvNorm(3, c2, 3, stride=2, padding=1),
        OPS["conv_2x"](c2, c4, 2),
        OPS["conv_2x"](c4, c_out8, 2),
    )


class Supernet(nn.Module):
    """Multi-resolution FasterSeg supernet for the teacher (index 0) and the student (index 1).

    Args:
        num_classes: classes predicted by the heads.
        num_layers: L (16 in the paper); at least 3.
        base_channels: F (12); C(s, w) = round(s · F · w) must be exact under the slimmable rounding.
        width_choices_chi: W in twelfths (4, 6, 8, 10, 12); the student's γ rows have one logit each.
        stem_head_chi: ((stem, head) of the teacher, (stem, head) of the student), in twelfths.

    Forward returns a dict: ``"heads"`` maps the five head names ("8s", "16s", "32s", "8s_32s",
    "16s_32s") to logits, ``"out"`` is the "8s_32s" prediction and ``"aux"`` the other four in that order.
    In **training mode the logits are at 1/8 of the input resolution** (the search loss is computed against
    labels resized to 1/8, §2.5); in eval mode every head is upsampled ×8 (bilinear).
    """

    def __init__(
        self,
        num_classes: int = 19,
        *,
        num_layers: int = 16,
        base_channels: int = 12,
        width_choices_chi: tuple[int, ...] = (4, 6, 8, 10, 12),
        stem_head_chi: tuple[tuple[int, int], tuple[int, int]] = ((12, 12), (8, 8)),
    ) -> None:
        super().__init__()
        if num_layers < 3:
            raise ValueError(f"the supernet needs num_layers >= 3 to reach stride 32, got {num_layers}")
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.base_channels = base_channels
        self.width_choices_chi = tuple(int(c) for c in width_choices_chi)
        self.width_choices = tuple(c / 12 for c in self.width_choices_chi)
        self.stem_head_chi = tuple((int(s), int(h)) for s, h in stem_head_chi)
        self._check_rounding()

        F_ = base_channels
        self.stems = nn.ModuleList(
            _stem(channels(8, s, F_), 2 * channels(2, s, F_), 2 * channels(4, s, F_))
            for s, _ in self.stem_head_chi
        )
        self.slots = self._make_slots()
        self._layer_slots = [[sl for sl in self.slots if sl.layer == i] for i in range(num_layers)]
        self.cells = nn.ModuleDict(
            {
                slot.key: Cell(slot.channels, slot.width_down is not None, self.width_choices)
                for slot in self.slots
            }
        )
        self.decoders = nn.ModuleList(
            SupernetDecoder(tuple(channels(8 * 2**j, h, F_) for j in range(3)), num_classes)
            for _, h in self.stem_head_chi
        )
        arch: dict[str, nn.Parameter] = {}
        for k in range(len(self.stem_head_chi)):
            n_w = len(self.width_choices) if k == 1 else 1  # §2.3: the teacher ('max' pruning) has 1 column
            for (kind, scale), shape in arch_shapes(num_layers, n_w).items():
                arch[arch_name(kind, k, scale)] = nn.Parameter(torch.full(shape, ARCH_INIT))
        self.arch = nn.ParameterDict(arch)

    # ---- construction helpers ------------------------------------------------------------------
    def _check_rounding(self) -> None:
        for j in range(3):
            s = 8 * 2**j
            for chi in self.width_choices_chi + tuple(c for pair in self.stem_head_chi for c in pair):
                c_max = channels(s, 12, self.base_channels)
                if make_divisible(c_max * chi / 12) != channels(s, chi, self.base_channels):
                    raise ValueError(
                        f"base_channels={self.base_channels}: width {chi}/12 of {c_max} channels rounds to "
                        f"{make_divisible(c_max * chi / 12)} in the slimmable layers but C(s, w) = "
                        f"{channels(s, chi, self.base_channels)}; use a base_channels multiple of 6"
                    )

    def _make_slots(self) -> list[CellSlot]:
        """The cell grid of §2.2 with the width table of §2.3."""
        L, slots = self.num_layers, []
        for i in range(L):
            last = i == L - 1
            for s in range(min(i, 2) + 1):
                if s == 0:
                    w_in = WidthRef("stem") if i == 0 else WidthRef("ratio", 0, i - 1)
                    w_out = WidthRef("ratio", 0, i)
                    w_down = WidthRef("ratio", 1, i)
                elif s == 1:
                    w_in, w_out, w_down = (
                        WidthRef("ratio", 1, i - 1),
                        WidthRef("ratio", 1, i),
                        WidthRef("ratio", 2, i - 1),
                    )
                else:
                    w_in, w_out, w_down = WidthRef("ratio", 2, i - 2), WidthRef("ratio", 2, i - 1), None
                if last:
                    w_out, w_down = WidthRef("head"), None
                two_inputs = s >= 1 and i > s  # (1, s16) and (2, s32) read only the down output above them
                slot = CellSlot(
                    layer=i, scale=s, stride=8 * 2**s, channels=channels(8 * 2**s, 12, self.base_channels),
                    alpha_row=i - s, beta_row=(i - s - 1) if two_inputs else None,
                    width_in=w_in, width_out=w_out, width_down=w_down,
                )
                slots.append(slot)
        return slots

    # ---- parameter groups ----------------------------------------------------------------------
    def arch_parameters(self, arch_idx: int | None = None) -> list[nn.Parameter]:
        """α, β, γ (all indices, or one); disjoint from :meth:`weight_parameters`."""
        return [p for n, p in self.arch.items() if arch_idx is None or n.split("_")[1] == str(arch_idx)]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture parameter (stems, cells, decoders)."""
        arch_ids = {id(p) for p in self.arch.parameters()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def arch_state(self, arch_idx: int) -> dict[str, torch.Tensor]:
        """Detached copies of index ``arch_idx``'s tensors under the authors' names (``alpha_k_0`` …)."""
        return {n: p.detach().clone() for n, p in self.arch.items() if n.split("_")[1] == str(arch_idx)}

    def load_arch_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors named as by :meth:`arch_state` into the architecture parameters."""
        unknown = sorted(set(state) - set(self.arch.keys()))
        if unknown:
            raise KeyError(f"unknown architecture tensor(s) {unknown}; valid: {sorted(self.arch.keys())}")
        with torch.no_grad():
            for n, t in state.items():
                self.arch[n].copy_(torch.as_tensor(t))

    def cell_slots(self) -> Iterator[tuple[CellSlot, Cell]]:
        """Every cell with its slot: (slot, cell); ``cell.op`` / ``cell.down`` are :class:`MixedOp`."""
        for slot in self.slots:
            yield slot, self.cells[slot.key]  # type: ignore[misc]

    # ---- widths --------------------------------------------------------------------------------
    def sample_widths(
        self, arch_idx: int, width_mode: str, generator: torch.Generator | None = None
    ) -> list[list[WidthSample]]:
        """One width per feature row of ``ratio_k_{0,1,2}`` (§2.3-2.4).

        Args:
            arch_idx: 0 teacher, 1 student.
            width_mode: "max", "min", "random" (uniform over W), "gumbel" (student only) or "argmax"
                (the most likely width of each γ row; full width for the teacher's single column).
            generator: optional RNG for "random"/"gumbel"; noise is drawn on its device, then moved.

        Returns:
            ``[scale][row] -> (ratio, gate)``; gate is the straight-through Gumbel factor (1.0 with
            gradient to the row's logits) in "gumbel" mode, else None.
        """
        if width_mode not in WIDTH_MODES:
            raise ValueError(f"width_mode must be one of {WIDTH_MODES}, got {width_mode!r}")
        out: list[list[WidthSample]] = []
        for s in range(3):
            logits = self.arch[f"ratio_{arch_idx}_{s}"]
            rows = logits.shape[0]
            if width_mode in ("max", "min"):
                w = self.width_choices[-1] if width_mode == "max" else self.width_choices[0]
                out.append([WidthSample(w, None)] * rows)
            elif width_mode == "argmax":
                # §4.3: derivation keeps argmax γ; the teacher's one column means W = [1.0] (full width).
                if logits.shape[1] != len(self.width_choices):
                    out.append([WidthSample(self.width_choices[-1], None)] * rows)
                else:
                    out.append([WidthSample(self.width_choices[i], None) for i in logits.argmax(-1).tolist()])
            elif width_mode == "random":
                dev = generator.device if generator is not None else torch.device("cpu")
                idx = torch.randint(len(self.width_choices), (rows,), generator=generator, device=dev)
                out.append([WidthSample(self.width_choices[i], None) for i in idx.tolist()])
            else:
                if logits.shape[1] != len(self.width_choices):
                    raise ValueError(
                        f"architecture index {arch_idx} has no width logits (ratio columns: {logits.shape[1]}); "
                        "'gumbel' widths are for the student (index 1); use 'max' for the teacher"
                    )
                out.append(self._gumbel_rows(logits, generator))
        return out

    def _gumbel_rows(self, logits: torch.Tensor, generator: torch.Generator | None) -> list[WidthSample]:
        hard, idx = hard_gumbel(logits, generator)
        return [WidthSample(self.width_choices[i], hard[r, i]) for r, i in enumerate(idx)]

    def _path_rows(
        self, logits: torch.Tensor, path: str, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, list[int | None]]:
        """Per row of α or β: the weights the forward applies and, unless ``path == "mix"``, the one choice.

        Returns:
            ``(weights (rows, n), choices)``: "mix" → softmax rows, choices all None; "sample" → the hard
            straight-through Gumbel sample (one-hot valued, gradient of its softmax); "argmax" → one-hot rows
            of the largest logit (no gradient).
        """
        if path == "mix":
            return torch.softmax(logits, dim=-1), [None] * logits.shape[0]
        if path == "sample":
            return hard_gumbel(logits, generator)  # type: ignore[return-value]
        idx_t = logits.argmax(dim=-1)
        return F.one_hot(idx_t, logits.shape[1]).to(logits.dtype), list(idx_t.tolist())

    def resolve_width(self, ref: WidthRef, arch_idx: int, samples: list[list[WidthSample]]) -> WidthSample:
        """The width a :class:`CellSlot` reference points to, given :meth:`sample_widths`' result."""
        if ref.kind == "stem":
            return WidthSample(self.stem_head_chi[arch_idx][0] / 12, None)
        if ref.kind == "head":
            return WidthSample(self.stem_head_chi[arch_idx][1] / 12, None)
        return samples[ref.scale][ref.row]

    def _live_outputs(self, picks: list[list[int] | None]) -> dict[str, tuple[bool, bool]]:
        """Which outputs (out, down) of each cell reach the heads when every two-input cell reads one input.

        With one input per cell (path "sample"/"argmax"), the input not taken and the cells feeding only it
        are dead: they are not computed (they would get no gradient anyway).

        Args:
            picks: per scale (index 1, 2; index 0 None), the chosen input of each β row (0 from_down,
                1 from_keep).
        """

        def reads(layer: int, scale: int, choice: int) -> bool:
            """Whether cell (layer, scale) exists, is needed and reads its input ``choice``."""
            slot = slot_at.get((layer, scale))
            if slot is None or not needed.get((layer, scale), False):
                return False
            return slot.beta_row is None or picks[scale][slot.beta_row] == choice  # type: ignore[index]

        slot_at = {(sl.layer, sl.scale): sl for sl in self.slots}
        last = self.num_layers - 1
        needed: dict[tuple[int, int], bool] = {}
        live: dict[str, tuple[bool, bool]] = {}
        for slot in reversed(self.slots):  # later layers first: a cell is needed if a needed cell reads it
            i, s = slot.layer, slot.scale
            # the decoder reads every last-layer out; stride 8 has one input, so its chain is always read
            need_out = i == last or (reads(i + 1, s, 1) if s > 0 else needed[(i + 1, 0)])
            need_down = slot.width_down is not None and reads(i + 1, s + 1, 0)
            live[slot.key] = (need_out, need_down)
            needed[(i, s)] = need_out or need_down
        return live

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        arch_idx: int,
        width_mode: str,
        *,
        generator: torch.Generator | None = None,
        path: str = "mix",
    ) -> dict[str, torch.Tensor | list[torch.Tensor] | dict[str, torch.Tensor]]:
        """Run the supernet for one architecture index.

        Args:
            x: (N, 3, H, W) float images, H and W multiples of 64 (so stride-32 features can be zoomed).
            arch_idx: 0 teacher (its stem/head, its α/β), 1 student.
            width_mode: "max", "min", "random", "gumbel" (student only) or "argmax", see the module
                docstring.
            generator: optional RNG for the random widths (and the sampled paths).
            path: "mix" (all operators and inputs, the paper), "sample" or "argmax" (one of each per cell;
                see the module docstring).

        Returns:
            ``{"out": (N, C, h, w), "aux": [4 × (N, C, h, w)], "heads": {name: (N, C, h, w)}}`` with
            (h, w) = (H/8, W/8) in training mode and (H, W) in eval mode.
        """
        if arch_idx not in range(len(self.stems)):
            raise ValueError(f"arch_idx must be 0 (teacher) or 1 (student), got {arch_idx}")
        if path not in PATH_MODES:
            raise ValueError(f"path must be one of {PATH_MODES}, got {path!r}")
        k = arch_idx
        samples = self.sample_widths(k, width_mode, generator)
        alphas = [self._path_rows(self.arch[f"alpha_{k}_{s}"], path, generator) for s in range(3)]
        betas = [None] + [self._path_rows(self.arch[f"beta_{k}_{s}"], path, generator) for s in (1, 2)]

        # with every input mixed every output is read; otherwise skip the cells no chosen path reads
        picks = [None] + [rows[1] for rows in betas[1:]]  # type: ignore[index]
        live = None if path == "mix" else self._live_outputs(picks)  # type: ignore[arg-type]
        outs: list[torch.Tensor | None] = [self.stems[k](x), None, None]  # previous layer's out per scale
        downs: list[torch.Tensor | None] = [None, None, None]  # previous layer's down per scale
        for i in range(self.num_layers):
            new_outs: list[torch.Tensor | None] = [None, None, None]
            new_downs: list[torch.Tensor | None] = [None, None, None]
            for slot in self._layer_slots[i]:
                need = live[slot.key] if live is not None else (True, True)
                new_outs[slot.scale], new_downs[slot.scale] = self._cell_forward(
                    slot, outs, downs, alphas, betas, samples, k, need
                )
            outs, downs = new_outs, new_downs

        heads = self.decoders[k](outs[0], outs[1], outs[2])  # type: ignore[arg-type]
        if not self.training:
            heads = {
                n: F.interpolate(y, scale_factor=8, mode="bilinear", align_corners=True)
                for n, y in heads.items()
            }
        return {
            "out": heads["8s_32s"],
            "aux": [heads[n] for n in HEAD_NAMES if n != "8s_32s"],
            "heads": heads,
        }

    def _cell_forward(self, slot: CellSlot, outs: list, downs: list, alphas: list, betas: list,
                      samples: list[list[WidthSample]], k: int, need: tuple[bool, bool]
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One cell of index ``k``: its ``op`` (stride 1) and ``down`` (stride 2) outputs, each the mixture of
        the five operators over its (one or two, β-weighted) inputs; ``need`` skips outputs nothing reads."""
        s, cell = slot.scale, self.cells[slot.key]

        def gate(a: WidthSample, b: WidthSample) -> torch.Tensor | None:
            if a.gate is None:
                return b.gate
            return a.gate if b.gate is None else a.gate * b.gate

        w_in, w_out = self.resolve_width(slot.width_in, k, samples), self.resolve_width(slot.width_out, k, samples)
        p, only = alphas[s][0][slot.alpha_row], alphas[s][1][slot.alpha_row]
        inputs: list[tuple[torch.Tensor, torch.Tensor | None]]
        if s == 0:
            inputs = [(outs[0], None)]
        elif slot.beta_row is None:
            inputs = [(downs[s - 1], None)]
        else:
            b, pick = betas[s][0][slot.beta_row], betas[s][1][slot.beta_row]
            inputs = [(downs[s - 1], b[0]), (outs[s], b[1])]
            if pick is not None:  # one input, scaled by its (straight-through) one-hot weight
                inputs = [inputs[pick]]
        need_out, need_down = need
        out_sum = down_sum = None
        for feat, weight in inputs:
            # both mixed ops of a cell share the α row, so they run the same sampled operator (§2.2)
            if need_out:
                o = cell.op(feat, p, (w_in.ratio, w_out.ratio), gate(w_in, w_out), only)
                o = o if weight is None else weight * o
                out_sum = o if out_sum is None else out_sum + o
            if cell.down is not None and need_down:
                w_down = self.resolve_width(slot.width_down, k, samples)  # type: ignore[arg-type]
                d = cell.down(feat, p, (w_in.ratio, w_down.ratio), gate(w_in, w_down), only)
                d = d if weight is None else weight * d
                down_sum = d if down_sum is None else down_sum + d
        return out_sum, down_sum


def build_supernet(model_cfg: ModelConfig, num_classes: int) -> Supernet:
    """Build the supernet of §2 from the model section of a run configuration.

    Args:
        model_cfg: :class:`fasterseg_core.config.ModelConfig` (num_layers, base_channels,
            width_choices_chi, teacher/student stem-head widths).
        num_classes: classes of the dataset (19 for Cityscapes).
    """
    return Supernet(
        num_classes,
        num_layers=model_cfg.num_layers,
        base_channels=model_cfg.base_channels,
        width_choices_chi=tuple(model_cfg.width_choices_chi),
        stem_head_chi=(tuple(model_cfg.teacher_stem_head_chi), tuple(model_cfg.student_stem_head_chi)),
    )
