"""The latency backend table: one record per runtime that ``05_latency`` can time a network on (§10).

``BACKENDS`` maps a backend's name to its :class:`Backend`: the precision it computes in, the memory layout
of its weights and input, the device it needs, whether a CUDA graph replays it, which runtime prepares it
and whether a lookup table can be timed with it. Everything that needs one of these facts reads it here:
:func:`fasterseg_core.latency.backends.prepare` (dtype, layout, device, graph capture, which preparer),
the configuration (``latency.backends`` must name entries of this table, checked at ``load_config``), the
``05_latency`` suite and its report (which rows get an argmax-agreement check against fp32 eager,
``LOW_PRECISION``) and :func:`fasterseg_core.latency.lut.build_lut` (``lut_usable``).

Adding a backend is one row here plus, for a new runtime, its preparer in ``latency/backends.py``;
``tests/test_latency.py`` walks every row.

This module imports nothing (no torch): it sits beside ``config`` at the bottom of the import order
(docs/architecture.md), so the configuration can validate backend names without loading the latency code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Backend:
    """What one latency backend is.

    Attributes:
        name: its key in :data:`BACKENDS`, the name profiles and records use.
        runtime: the code that prepares it: ``torch`` (eager PyTorch, optionally captured as a CUDA graph),
            ``torch.compile`` (inductor), ``onnxruntime`` (on the ONNX export) or ``tensorrt`` (an engine
            built from the ONNX export).
        precision: what weights and activations compute in.
        layout: memory layout of weights and input; ``channels_last on CPU`` is ``torch.compile``'s CPU
            inference setting (NCHW on CUDA).
        device: ``cpu``, ``cuda`` or ``either``.
        device_reason: why it does not run on the other device; recorded as the ``unavailable`` reason.
        cuda_graph: the timed forward is a replay of one captured CUDA graph.
        lut_usable: :func:`~fasterseg_core.latency.lut.build_lut` may time a lookup table with it (each of
            the table's thousands of entries is prepared on its own, without calibration images).
    """

    name: str
    runtime: Literal["torch", "torch.compile", "onnxruntime", "tensorrt"]
    precision: Literal["fp32", "bf16", "fp16", "int8"]
    layout: Literal["NCHW", "channels_last", "channels_last on CPU"]
    device: Literal["either", "cpu", "cuda"] = "either"
    device_reason: str = ""
    cuda_graph: bool = False
    lut_usable: bool = True

    @property
    def low_precision(self) -> bool:
        """Below fp32: only worth its speed if it predicts the same classes, so every measurement of it is
        checked for argmax agreement with fp32 eager. Derived from ``precision`` so the two cannot disagree."""
        return self.precision != "fp32"

    def channels_last_on(self, device_type: str) -> bool:
        """Whether weights and input are NHWC on a device of this type (``"cpu"``, ``"cuda"``)."""
        return self.layout == "channels_last" or (
            self.layout == "channels_last on CPU" and device_type == "cpu"
        )


def _table(*rows: Backend) -> dict[str, Backend]:
    """Rows keyed by name; a repeated name is a mistake, not an override."""
    table: dict[str, Backend] = {}
    for row in rows:
        if row.name in table:
            raise ValueError(f"backend {row.name!r} is in the table twice")
        table[row.name] = row
    return table


# The ``unavailable`` reasons recorded on the other device.
_FP16_NEEDS_CUDA = "fp16 inference is timed on CUDA only (CPU fp16 convs are emulated)"
_GRAPH_NEEDS_CUDA = "CUDA graphs need a CUDA device"
_INT8_NEEDS_CPU = "int8 ONNX Runtime path is for the CPU provider"

# The order is the order of ``--backend all`` and of the records' rows.
BACKENDS: dict[str, Backend] = _table(
    # PyTorch eager, inference_mode: the reference every other backend is compared with.
    Backend("eager", "torch", "fp32", "NCHW"),
    Backend("channels_last", "torch", "fp32", "channels_last"),
    # On the CPU with the weights frozen into the graph (inductor ``freezing``: BatchNorm folded into the convs,
    # oneDNN weights pre-packed) and channels_last, inductor's CPU inference setting; on CUDA its defaults.
    # Not for tables: compiling each of a table's thousands of entries would take hours.
    Backend("compile", "torch.compile", "fp32", "channels_last on CPU", lut_usable=False),
    # Low precision runs NHWC: what oneDNN (AMX/AVX512-BF16) and cuDNN tensor cores are fastest at.
    Backend("bf16", "torch", "bf16", "channels_last"),
    Backend("fp16", "torch", "fp16", "channels_last", "cuda", _FP16_NEEDS_CUDA),
    # The eager network captured once and replayed: removes the per-kernel launch cost that dominates a batch-1
    # forward of a small network on a fast GPU (TensorRT, which the paper used, builds one engine for the same).
    Backend("cudagraph", "torch", "fp32", "NCHW", "cuda", _GRAPH_NEEDS_CUDA, cuda_graph=True),
    Backend("cudagraph_fp16", "torch", "fp16", "channels_last", "cuda", _GRAPH_NEEDS_CUDA, cuda_graph=True),
    # CUDA/TensorRT execution providers first when present, else the CPU provider.
    Backend("ort", "onnxruntime", "fp32", "NCHW"),
    # Static QDQ int8 (per-channel weights, uint8 activations) calibrated on real images; the CPU provider's path.
    # Not for tables: every entry would need its own calibration images.
    Backend("ort_int8", "onnxruntime", "int8", "NCHW", "cpu", _INT8_NEEDS_CPU, lut_usable=False),
    # The paper's runtime (§10: TensorRT 5, fp32, batch 1), when ``tensorrt`` imports.
    Backend("tensorrt", "tensorrt", "fp32", "NCHW", "cuda", "TensorRT needs a CUDA device"),
)

# Backends whose rows carry an argmax-agreement check against fp32 eager (the 05_latency suite and its table).
LOW_PRECISION: tuple[str, ...] = tuple(name for name, b in BACKENDS.items() if b.low_precision)
