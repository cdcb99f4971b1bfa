"""The search's latency objective: differentiable table latency of the supernet, target window, adaptive λ.

Method: ``docs/method.md`` §3.3 (paper §3.2, "latency-constrained search") and §12.1-5/6 (quirks of the
original implementation, reproduced when ``search.faithful_quirks``).

Symbols: α (operator logits per cell), β (input choice per two-input cell: [from_down, from_keep]),
γ (width logits per feature row, ``ratio_k_s``); k = 0 teacher, 1 student.

Each mixed operator of the supernet is charged ``Σ_o p_o · T[o at (H_s, W_s, c_in, c_out, stride)] · g_in · g_out``
from a device's :class:`~fasterseg_core.latency.lut.LatencyTable` (keys via
:func:`~fasterseg_core.latency.lut.op_key`), and the cells' latencies are accumulated along the three
scales into ``Lat``. The student's latency loss is ``w_α·Lat_α + w_β·Lat_β + w_γ·Lat_γ`` (1/500, 497/500,
2/500): each term lets only one kind of architecture parameter move (α softmaxed with β uniform and
widths max; β softmaxed with α uniform; widths Gumbel-sampled with α, β uniform).

``faithful_quirks=True`` reproduces the original exactly: the zoomed conv×2 is charged as a plain conv×2
(naming bug), and the accumulation uses the β row of the layer's *last* cell for every scale and the
same layer's (not the previous layer's) down latencies, charging a down output after its cell's
stride-1 output. ``False`` uses each operator's own entry and the expected latency of the path into each
cell: ``t_in = β_down·t_down(i−1, s−1) + β_keep·t_out(i−1, s)``, ``t_out = t_in + l_out``,
``t_down = t_in + l_down``.

After each search epoch the student's two candidate networks are derived and timed on the table; λ is
halved when either is faster than the window's upper FPS and doubled when either is slower than its
lower FPS (§3.3). The window defaults to the published student's table FPS ± a relative margin on the
same table, so "as fast as FasterSeg on this device" means the same thing on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..latency.lut import LatencyTable, convnorm_key, estimate_latency, op_key, scale_sizes
from ..models.mixed import CellSlot, WidthSample
from ..models.ops import OP_NAMES, channels
from ..models.published import published_architecture
from ..models.supernet import Supernet

# §8: table latency (ms) of the published student on the authors' 1080 Ti table (with the naming bug).
REFERENCE_STUDENT_MS = 6.414
LATENCY_TERMS = ("alpha", "beta", "gamma")


def _chi(ratio: float) -> int:
    return round(ratio * 12)


class SupernetLatency:
    """Differentiable table latency of one architecture index of a supernet (§3.3).

    Args:
        net: the supernet (its α/β/γ are read at every call, so gradients reach them).
        lut: a latency table at the resolution the search targets (``lut.input_hw``).
        arch_idx: 1 for the student (the only index with a latency loss in the paper).
        faithful_quirks: reproduce the original's naming bug and accumulation (module docstring).
        weights: (w_α, w_β, w_γ) of the three decoupled terms.

    Raises:
        KeyError: the table lacks an entry the supernet needs (wrong resolution or channel base).
    """

    def __init__(
        self,
        net: Supernet,
        lut: LatencyTable,
        *,
        arch_idx: int = 1,
        faithful_quirks: bool = True,
        weights: Sequence[float] = (1 / 500, 497 / 500, 2 / 500),
    ) -> None:
        if len(weights) != 3:
            raise ValueError(f"weights must be (w_alpha, w_beta, w_gamma), got {weights!r}")
        self.net, self.lut, self.arch_idx = net, lut, arch_idx
        self.faithful_quirks = faithful_quirks
        self.weights = tuple(float(w) for w in weights)
        self.sizes = scale_sizes(tuple(lut.input_hw))
        self._op_cache: dict[tuple[str, str, int, int], torch.Tensor] = {}
        self._layers: list[list[CellSlot]] = [[] for _ in range(net.num_layers)]
        for slot, _ in net.cell_slots():
            self._layers[slot.layer].append(slot)
        self.stem_ms = self._stem_ms(net.stem_head_chi[arch_idx][0])
        self.check_table()

    # ---- table lookups --------------------------------------------------------------------------
    def _stem_ms(self, chi: int) -> float:
        # §2.1 stem: ConvNorm 3→2·C(2,r) (stride 2) and two stride-2 conv×2, at their input sizes.
        base = self.net.base_channels
        c2, c4, c8 = 2 * channels(2, chi, base), 2 * channels(4, chi, base), channels(8, chi, base)
        return (
            self.lut[convnorm_key(self.sizes[1], 3, c2, 3, 2)]
            + self.lut[op_key("conv_2x", self.sizes[2], c2, c4, 2)]
            + self.lut[op_key("conv_2x", self.sizes[4], c4, c8, 2)]
        )

    def op_latencies(self, slot: CellSlot, which: str, chi_in: int, chi_out: int) -> torch.Tensor:
        """(5,) float64 table latencies (ms) of the five operators of one mixed op, in ``OP_NAMES`` order.

        Args:
            slot: the cell.
            which: "op" (stride 1, C(s, χ_out) outputs) or "down" (stride 2, C(2s, χ_out) outputs).
            chi_in, chi_out: input / output width in twelfths.
        """
        key = (slot.key, which, chi_in, chi_out)
        cached = self._op_cache.get(key)
        if cached is not None:
            return cached
        base, s = self.net.base_channels, slot.stride
        c_in = channels(s, chi_in, base)
        stride, c_out = (
            (1, channels(s, chi_out, base)) if which == "op" else (2, channels(2 * s, chi_out, base))
        )
        values = []
        for op in OP_NAMES:
            # Quirk (§3.3, §12.1-5): the zoomed conv×2 is looked up under the conv×2 key.
            name = "conv_2x" if self.faithful_quirks and op == "conv_2x_downup" else op
            values.append(self.lut[op_key(name, self.sizes[s], c_in, c_out, stride)])
        t = torch.tensor(values, dtype=torch.float64)
        self._op_cache[key] = t
        return t

    def check_table(self) -> None:
        """Look up every entry any width choice can need, so a wrong table fails before the search starts."""
        chis = [_chi(w) for w in self.net.width_choices]
        head = [self.net.stem_head_chi[self.arch_idx][1]]
        for slot, cell in self.net.cell_slots():
            ins = [self.net.stem_head_chi[self.arch_idx][0]] if slot.width_in.kind == "stem" else chis
            outs = head if slot.width_out.kind == "head" else chis
            for ci in ins:
                for co in outs:
                    self.op_latencies(slot, "op", ci, co)
                if cell.down is not None:
                    for co in chis:
                        self.op_latencies(slot, "down", ci, co)

    # ---- the differentiable estimate --------------------------------------------------------------
    def latency(self, term: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """``Lat`` of one decoupled term (ms, a float32 scalar with gradient to α, β or γ).

        Args:
            term: "alpha" (softmax α, β = ½, widths max), "beta" (α = 1/5, softmax β, widths max) or
                "gamma" (α = 1/5, β = ½, widths Gumbel-sampled from γ).
            generator: RNG for the Gumbel sample of the "gamma" term.
        """
        if term not in LATENCY_TERMS:
            raise ValueError(f"term must be one of {LATENCY_TERMS}, got {term!r}")
        net, k = self.net, self.arch_idx
        device = net.arch[f"alpha_{k}_0"].device
        n_ops = len(OP_NAMES)

        def alpha(s: int) -> torch.Tensor:
            a = net.arch[f"alpha_{k}_{s}"]
            if term == "alpha":
                return torch.softmax(a, dim=-1)
            return torch.full_like(a, 1.0 / n_ops)

        def beta(s: int) -> torch.Tensor:
            b = net.arch[f"beta_{k}_{s}"]
            if term == "beta":
                return torch.softmax(b, dim=-1)
            return torch.full_like(b, 0.5)

        alphas = [alpha(s) for s in range(3)]
        betas = [None, beta(1), beta(2)]
        samples = net.sample_widths(k, "gumbel" if term == "gamma" else "max", generator)

        def gated(t: torch.Tensor, *ws: WidthSample) -> torch.Tensor:
            for w in ws:
                if w.gate is not None:
                    t = t * w.gate
            return t

        zero = torch.zeros((), device=device)
        # per scale: (t_out, t_down), the accumulated latency of the out / down features
        state: list[tuple[torch.Tensor, torch.Tensor]] = [
            (zero + self.stem_ms, zero), (zero, zero), (zero, zero)
        ]
        for i in range(net.num_layers):
            cells: dict[int, tuple[CellSlot, torch.Tensor, torch.Tensor]] = {}
            for slot in self._layers[i]:
                w_in = net.resolve_width(slot.width_in, k, samples)
                w_out = net.resolve_width(slot.width_out, k, samples)
                p = alphas[slot.scale][slot.alpha_row]
                lat_op = self.op_latencies(slot, "op", _chi(w_in.ratio), _chi(w_out.ratio)).to(
                    device, p.dtype
                )
                l_out = gated((p * lat_op).sum(), w_in, w_out)
                l_down = zero
                if slot.width_down is not None:
                    w_down = net.resolve_width(slot.width_down, k, samples)
                    lat_dn = self.op_latencies(slot, "down", _chi(w_in.ratio), _chi(w_down.ratio))
                    l_down = gated((p * lat_dn.to(device, p.dtype)).sum(), w_in, w_down)
                # A two-input cell is charged β_down·lat + β_keep·lat = lat (equal shapes, rows sum to 1).
                cells[slot.scale] = (slot, l_out, l_down)
            state = (
                self._accumulate_faithful(i, cells, state, betas)
                if self.faithful_quirks
                else self._accumulate_corrected(i, cells, state, betas)
            )
        return state[0][0] + state[1][0] + state[2][0]  # plain sum since March 2020 (§3.3)

    @staticmethod
    def _accumulate_faithful(i, cells, state, betas):  # type: ignore[no-untyped-def]
        """The original's update (§3.3): scales in ascending order, reading this layer's updated values."""
        state = list(state)
        # Quirk (§12.1-6): the β row of the layer's last cell (scale 2, row i − 3; Python's −1 at i = 2).
        # (A 3-layer supernet has no β_2 rows at all; its one two-input cell then mixes ½ / ½.)
        b = betas[2][i - 3] if i >= 2 and betas[2].shape[0] > 0 else torch.full((2,), 0.5)
        for j in sorted(cells):
            _, l_out, l_down = cells[j]
            t_out, t_down = state[j]
            if j == 0:
                t_out = t_out + l_out
                t_down = t_out + l_down
            elif i == j:  # first layer of this scale: its only input is the down output above
                t_out = state[j - 1][1] + l_out
                t_down = state[j - 1][1] + l_down
            else:
                t_out = b[1] * t_out + b[0] * state[j - 1][1] + l_out
                t_down = b[1] * t_out + b[0] * state[j - 1][1] + l_down
            state[j] = (t_out, t_down)
        return state

    @staticmethod
    def _accumulate_corrected(i, cells, state, betas):  # type: ignore[no-untyped-def]
        """Expected latency of the path into each cell from the previous layer's features, own β row."""
        new = list(state)
        for j, (slot, l_out, l_down) in cells.items():
            if j == 0:
                t_in = state[0][0]
            elif slot.beta_row is None:
                t_in = state[j - 1][1]
            else:
                b = betas[j][slot.beta_row]
                t_in = b[0] * state[j - 1][1] + b[1] * state[j][0]
            new[j] = (t_in + l_out, t_in + l_down)
        return new

    def __call__(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The decoupled latency loss ``w_α·Lat_α + w_β·Lat_β + w_γ·Lat_γ`` (ms).

        Returns:
            (scalar with gradient to α, β and γ of ``arch_idx``, {"alpha", "beta", "gamma": term in ms}).
        """
        terms = {t: self.latency(t, generator) for t in LATENCY_TERMS}
        total = sum(w * terms[t] for w, t in zip(self.weights, LATENCY_TERMS))
        return total, {t: float(v.detach()) for t, v in terms.items()}  # type: ignore[return-value]


# ---- target window and λ ------------------------------------------------------------------------------
def published_student_ms(lut: LatencyTable, num_classes: int, *, faithful_quirks: bool = True) -> float:
    """Table latency (ms) of the published FasterSeg student on ``lut`` (6.414 ms on the authors' table)."""
    return estimate_latency(
        published_architecture("student"), lut, num_classes, faithful_quirks=faithful_quirks
    )


def target_fps_window(
    lut: LatencyTable,
    num_classes: int,
    *,
    explicit: Sequence[float] = (),
    rel: float = 0.06,
    faithful_quirks: bool = True,
) -> tuple[float, float]:
    """The FPS window the adaptive λ steers the student into.

    Args:
        lut: the device's table.
        num_classes: classes of the head (part of the head's table key).
        explicit: ``(low, high)`` FPS from the profile; empty for the default.
        rel: relative half-width around the published student's table FPS (0.06: the paper's 155–175 FPS
            is about ±6 % around its 163.9 FPS).
        faithful_quirks: estimate the published student as the original would (naming bug).

    Returns:
        (low FPS, high FPS).
    """
    if explicit:
        if len(explicit) != 2 or not 0 < explicit[0] < explicit[1]:
            raise ValueError(
                f"target_fps_window must be [low, high] FPS with 0 < low < high, got {list(explicit)}"
            )
        return float(explicit[0]), float(explicit[1])
    if not 0 < rel < 1:
        raise ValueError(f"target_window_rel must lie in (0, 1), got {rel}")
    fps = 1000.0 / published_student_ms(lut, num_classes, faithful_quirks=faithful_quirks)
    return fps * (1 - rel), fps * (1 + rel)


def adapt_lambda(lam: float, candidate_fps: Sequence[float], window: tuple[float, float]) -> float:
    """§3.3: λ/2 if any candidate reaches the window's upper FPS, else 2λ if any is at or below its lower FPS.

    Args:
        lam: the current λ.
        candidate_fps: table FPS of the student's derived [2, 0] and [2, 1] networks (those that derive).
        window: (low, high) FPS.
    """
    low, high = window
    if any(f >= high for f in candidate_fps):
        return lam / 2
    if any(f <= low for f in candidate_fps):
        return lam * 2
    return lam
