"""Per-device latency lookup tables over the FasterSeg search space (§10) and their use.

The search is steered by a table of standalone-module latencies measured on the target device; the paper's
table was measured with TensorRT 5 on a GTX 1080 Ti. :func:`build_lut` measures the same entries on any
device and backend; :func:`estimate_latency` sums them along a network the way §10 describes (stem + every
distinct cell + arms/refines + feature fusion + head). Keys use the authors' format, so their table (the
JSON export in ``shared/reference``) loads with :func:`load_authors_lut` and is interchangeable with ours:

    BasicResidual1x_H{h}_W{w}_Cin{ci}_Cout{co}_stride{s}_dilation1      conv
    BasicResidual_downup_1x_…, BasicResidual2x_…, BasicResidual_downup_2x_…, FactorizedReduce_H…_stride{s}
    ConvNorm_H{h}_W{w}_Cin{ci}_Cout{co}_kernel{k}_stride{s}           stem conv, decoder arms/refines
    ff_H{h}_W{w}_C{c}, head_H{h}_W{w}_Cin{c}_Cout{classes}            fusion and head at 1/8

``h, w`` are the module's *input* size. Entries (§10): for every stride s ∈ {8, 16, 32} and width pair
(w_in, w_out) ∈ W², the 5 operators at stride 1 (C_in = s·χ_in, C_out = s·χ_out) and, for s < 32, at
stride 2 (C_out = 2s·χ_out); the stem for widths 8/12 and 1; decoder ConvNorms for both head widths and
every skip-input width; fusion and head for 1–3 branches.

Deviation: each entry is timed with a short budget (a few executions after one warm-up, the fastest kept) rather than
§10's full 1 s calibration + 3 s loop, so a table for a small resolution builds in under a minute on two
CPU cores; whole networks are still timed with the full protocol (:func:`~fasterseg_core.latency.measure`).
The fastest execution, not the median, is stored: sub-millisecond modules on a shared machine lose whole
scheduler slices (multiples of ~16 ms were seen here) to other processes, and the minimum is the estimator
of the module's own cost that such interference cannot inflate. Predicted-vs-measured ratios in the report
show how far the sum of entries can be trusted on each device.
Deviation: a stride-1 skip entry is timed as the supernet's 1×1 conv-BN-ReLU (the fixed network's identity
costs nothing and derived networks never contain skip, §4).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.architecture import WIDTH_CHOICES_CHI, Architecture
from ..models.heads import FeatureFusion, Head
from ..models.network import plan_cells
from ..models.ops import OPS, ConvNorm
from ..progress import bar as progress_bar
from .backends import BACKENDS, prepare
from .measure import environment_record, time_prepared

LUT_FORMAT = "fasterseg-lut/1"

# The authors' class names, used as key prefixes (§10 key formats).
OP_KEY_PREFIX = {
    "skip": "FactorizedReduce",
    "conv": "BasicResidual1x",
    "conv_downup": "BasicResidual_downup_1x",
    "conv_2x": "BasicResidual2x",
    "conv_2x_downup": "BasicResidual_downup_2x",
}


def scale_sizes(input_hw: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """Feature size at strides 1, 2, 4, 8, 16, 32 for an input (H, W): repeated ceil-halving, as the
    stride-2 convolutions of the stem and cells produce (exact for sizes divisible by 32)."""
    h, w = input_hw
    sizes = {1: (h, w)}
    for s in (2, 4, 8, 16, 32):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes[s] = (h, w)
    return sizes


def op_key(op: str, hw: tuple[int, int], c_in: int, c_out: int, stride: int) -> str:
    suffix = "" if op == "skip" else "_dilation1"
    return f"{OP_KEY_PREFIX[op]}_H{hw[0]}_W{hw[1]}_Cin{c_in}_Cout{c_out}_stride{stride}{suffix}"


def convnorm_key(hw: tuple[int, int], c_in: int, c_out: int, kernel: int, stride: int) -> str:
    return f"ConvNorm_H{hw[0]}_W{hw[1]}_Cin{c_in}_Cout{c_out}_kernel{kernel}_stride{stride}"


def ffm_key(hw: tuple[int, int], c: int) -> str:
    return f"ff_H{hw[0]}_W{hw[1]}_C{c}"


def head_key(hw: tuple[int, int], c: int, num_classes: int) -> str:
    return f"head_H{hw[0]}_W{hw[1]}_Cin{c}_Cout{num_classes}"


@dataclass(frozen=True)
class Entry:
    """One table entry: its key, the module to time and the input shape (1, C, h, w)."""

    key: str
    kind: str  # "op", "convnorm", "ffm", "head"
    spec: tuple  # constructor arguments (see _build_module)
    input_shape: tuple[int, int, int, int]


def _stem_entries(sizes, chi: int, base: int) -> Iterator[Entry]:
    c2 = 2 * round(2 * base * chi / 12)  # 2·C(2, r)
    c4 = 2 * round(4 * base * chi / 12)  # 2·C(4, r)
    c8 = round(8 * base * chi / 12)  # C(8, r)
    yield Entry(convnorm_key(sizes[1], 3, c2, 3, 2), "convnorm", (3, c2, 3, 2), (1, 3, *sizes[1]))
    yield Entry(op_key("conv_2x", sizes[2], c2, c4, 2), "op", ("conv_2x", c2, c4, 2), (1, c2, *sizes[2]))
    yield Entry(op_key("conv_2x", sizes[4], c4, c8, 2), "op", ("conv_2x", c4, c8, 2), (1, c4, *sizes[4]))


def lut_entries(
    input_hw: tuple[int, int] = (1024, 2048),
    *,
    width_choices_chi: tuple[int, ...] = WIDTH_CHOICES_CHI,
    head_chis: tuple[int, ...] = (8, 12),
    base_channels: int = 12,
    num_classes: int = 19,
) -> list[Entry]:
    """Every entry of a table at ``input_hw`` (§10), without duplicates, in a stable order."""
    sizes = scale_sizes(input_hw)
    out: dict[str, Entry] = {}

    def add(e: Entry) -> None:
        out.setdefault(e.key, e)

    def ch(s: int, chi: int) -> int:
        return round(s * base_channels * chi / 12)

    for s in (8, 16, 32):
        for chi_in in width_choices_chi:
            for chi_out in width_choices_chi:
                c_in = ch(s, chi_in)
                for op in OP_KEY_PREFIX:
                    c_out = ch(s, chi_out)
                    add(
                        Entry(
                            op_key(op, sizes[s], c_in, c_out, 1),
                            "op",
                            (op, c_in, c_out, 1),
                            (1, c_in, *sizes[s]),
                        )
                    )
                    if s < 32:
                        c_out = ch(2 * s, chi_out)
                        add(
                            Entry(
                                op_key(op, sizes[s], c_in, c_out, 2),
                                "op",
                                (op, c_in, c_out, 2),
                                (1, c_in, *sizes[s]),
                            )
                        )
    for hchi in head_chis:
        for e in _stem_entries(sizes, hchi, base_channels):
            add(e)
        fh = {s: ch(s, hchi) for s in (8, 16, 32)}
        # arms: 1×1 ConvNorms Fh(32)→Fh(16) at 1/32 and Fh(16)→Fh(8) at 1/16
        add(
            Entry(
                convnorm_key(sizes[32], fh[32], fh[16], 1, 1),
                "convnorm",
                (fh[32], fh[16], 1, 1),
                (1, fh[32], *sizes[32]),
            )
        )
        add(
            Entry(
                convnorm_key(sizes[16], fh[16], fh[8], 1, 1),
                "convnorm",
                (fh[16], fh[8], 1, 1),
                (1, fh[16], *sizes[16]),
            )
        )
        # refines: 3×3 ConvNorms on [upsampled, skip] for every skip-feature width
        for chi in width_choices_chi:
            for s, skip_s in ((16, 16), (8, 8)):
                c_in = fh[s] + ch(skip_s, chi)
                add(
                    Entry(
                        convnorm_key(sizes[s], c_in, fh[s], 3, 1),
                        "convnorm",
                        (c_in, fh[s], 3, 1),
                        (1, c_in, *sizes[s]),
                    )
                )
        for nb in (1, 2, 3):
            c = nb * fh[8]
            add(Entry(ffm_key(sizes[8], c), "ffm", (c,), (1, c, *sizes[8])))
            add(Entry(head_key(sizes[8], c, num_classes), "head", (c, num_classes), (1, c, *sizes[8])))
    return list(out.values())


def _build_module(entry: Entry) -> nn.Module:
    if entry.kind == "op":
        op, c_in, c_out, stride = entry.spec
        if op == "skip" and stride == 1:
            m = OPS[op](c_in, c_out, 1, slimmable=True)  # see module docstring: timed as 1×1 conv
            m.set_ratio((1.0, 1.0))
            return m
        return OPS[op](c_in, c_out, stride)
    if entry.kind == "convnorm":
        return ConvNorm(*entry.spec)
    if entry.kind == "ffm":
        return FeatureFusion(entry.spec[0])
    return Head(*entry.spec)


@dataclass
class LatencyTable:
    """A lookup table: key → latency in ms, plus where and how it was measured."""

    entries: dict[str, float]
    input_hw: tuple[int, int]
    hardware_tag: str
    backend: str
    record: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        try:
            return self.entries[key]
        except KeyError:
            raise KeyError(
                f"latency table {self.hardware_tag!r} ({self.input_hw[0]}x{self.input_hw[1]}) has no entry "
                f"{key!r}; build a table at the network's resolution with build_lut(input_hw=...)"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "hardware_tag": self.hardware_tag,
            "backend": self.backend,
            "input_hw": list(self.input_hw),
            "record": self.record,
            "entries_ms": self.entries,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # atomic: a half-written table never replaces a good one
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        d = json.loads(Path(path).read_text())
        if d.get("format") != LUT_FORMAT:
            raise ValueError(
                f"{path} is not a {LUT_FORMAT} table; the authors' table loads with load_authors_lut"
            )
        return cls(
            entries={k: float(v) for k, v in d["entries_ms"].items()},
            input_hw=tuple(d["input_hw"]),
            hardware_tag=d["hardware_tag"],
            backend=d["backend"],
            record=d.get("record", {}),
        )


def load_authors_lut(path: str | Path) -> LatencyTable:
    """The authors' 1080 Ti / TensorRT 5 table as exported to ``fasterseg_latency_lookup_table.json``."""
    d = json.loads(Path(path).read_text())
    if "table_ms" not in d:
        raise ValueError(f"{path}: expected the reference export with a 'table_ms' mapping")
    return LatencyTable(
        entries={k: float(v) for k, v in d["table_ms"].items()},
        input_hw=(1024, 2048),
        hardware_tag="gtx1080ti-tensorrt5-authors",
        backend="tensorrt5 (authors)",
        record={"source": d.get("source", "")},
    )


def build_lut(
    device: torch.device | str = "cpu",
    backend: str = "eager",
    input_hw: tuple[int, int] = (1024, 2048),
    hardware_tag: str = "",
    *,
    budget_s: float = 0.01,
    min_iters: int = 3,
    progress: bool = True,
    num_classes: int = 19,
    resume_from: LatencyTable | None = None,
    only: Iterable[str] | None = None,
) -> LatencyTable:
    """Time every table entry (§10) on ``device`` with ``backend``.

    Args:
        device: where to time.
        backend: a backend whose table row is ``lut_usable`` ("eager", "channels_last", "bf16", "ort", …).
        input_hw: network input size the table is for (cells are timed at input / stride).
        hardware_tag: name of this device/runtime in reports (default: derived from the record).
        budget_s: timing budget per entry after one warm-up; the fastest execution is stored.
        progress: show a tqdm bar.
        resume_from: a partial table of the same kind; its entries are kept, only missing ones are timed.
        only: time just these keys (e.g. ``network_entries(arch, input_hw)`` for one network's estimate).

    Returns:
        The table; save it with :meth:`LatencyTable.save`.

    Raises:
        ValueError: ``backend`` is not one the backend table marks usable for lookup tables.
    """
    if backend not in BACKENDS or not BACKENDS[backend].lut_usable:
        usable = [name for name, b in BACKENDS.items() if b.lut_usable]
        raise ValueError(f"backend {backend!r} cannot time a lookup table; usable: {usable}")
    device = torch.device(device)
    entries = lut_entries(tuple(input_hw), num_classes=num_classes)
    if only is not None:
        wanted = set(only)
        unknown = wanted - {e.key for e in entries}
        if unknown:
            raise KeyError(f"not table entries at {input_hw}: {sorted(unknown)[:3]} …")
        entries = [e for e in entries if e.key in wanted]
    done = dict(resume_from.entries) if resume_from is not None else {}
    record = environment_record(device)
    tag = hardware_tag or f"{device.type}-{backend}"
    bar = progress_bar(entries, desc=f"latency table {input_hw[0]}x{input_hw[1]} ({backend})", disable=not progress)
    t0 = time.perf_counter()
    for e in bar:
        if e.key in done:
            continue
        torch.manual_seed(0)
        module = _build_module(e)
        prepared = prepare(module, torch.randn(*e.input_shape), backend, device, copy_model=False)
        times = time_prepared(
            prepared.run,
            prepared.sync,
            warmup=1,
            min_loop_s=budget_s / 2,
            timed_s=budget_s,
            min_iters=min_iters,
        )
        done[e.key] = min(times)
    record.update(build_seconds=round(time.perf_counter() - t0, 2), num_entries=len(done), budget_s=budget_s)
    return LatencyTable(
        entries=done, input_hw=tuple(input_hw), hardware_tag=tag, backend=backend, record=record
    )


def network_entries(
    arch: Architecture,
    input_hw: tuple[int, int] = (1024, 2048),
    num_classes: int = 19,
    *,
    faithful_quirks: bool = True,
) -> list[str]:
    """The table keys a network is charged for (§10): stem, every distinct cell once, arms/refines, ffm, head.

    Args:
        faithful_quirks: charge a zoomed conv×2 cell the latency of a plain conv×2 (the authors' naming bug,
            §3.3/§12.1-5). Their fixed-network estimate has it too: with it, the published student and
            teacher give exactly the reference 6.414 ms and 25.226 ms on their table; without it 5.70 and
            17.94 ms (the measured zoomed-conv×2 entries are cheaper).
    """
    sizes = scale_sizes(input_hw)
    keys = [e.key for e in _stem_entries(sizes, arch.stem_chi, arch.base_channels)]
    plans = plan_cells(arch)
    for p in plans:
        op = "conv_2x" if faithful_quirks and p.op == "conv_2x_downup" else p.op
        keys.append(op_key(op, sizes[8 * 2**p.in_scale], p.c_in, p.c_out, p.stride))

    def c_in_of_down(branch: int, scale: int) -> int:
        """C_in of the branch's downsampling cell at ``scale`` (the channels of its last feature there)."""
        for p in plans:
            if branch in p.branches and p.in_scale == scale and p.stride == 2:
                return p.c_in
        raise ValueError(f"branch {branch} has no stride-2 cell at scale {scale}")

    fh = {s: arch.channels(s, arch.head_chi) for s in (8, 16, 32)}
    for b, end in enumerate(arch.lasts):
        if end == 2:
            ch_16, ch_8 = c_in_of_down(b, 1), c_in_of_down(b, 0)
            keys += [
                convnorm_key(sizes[32], fh[32], fh[16], 1, 1),
                convnorm_key(sizes[16], fh[16] + ch_16, fh[16], 3, 1),
                convnorm_key(sizes[16], fh[16], fh[8], 1, 1),
                convnorm_key(sizes[8], fh[8] + ch_8, fh[8], 3, 1),
            ]
        elif end == 1:
            ch_8 = c_in_of_down(b, 0)
            keys += [
                convnorm_key(sizes[16], fh[16], fh[8], 1, 1),
                convnorm_key(sizes[8], fh[8] + ch_8, fh[8], 3, 1),
            ]
    c = len(arch.branches) * fh[8]
    keys += [ffm_key(sizes[8], c), head_key(sizes[8], c, num_classes)]
    return keys


def estimate_latency(
    arch: Architecture, lut: LatencyTable, num_classes: int = 19, *, faithful_quirks: bool = True
) -> float:
    """Table latency (ms) of a network at the table's resolution: the sum of its entries (§10).

    See :func:`network_entries` for ``faithful_quirks`` (the authors' zoomed-conv×2 naming bug).
    """
    keys = network_entries(arch, lut.input_hw, num_classes, faithful_quirks=faithful_quirks)
    return float(sum(lut[k] for k in keys))
