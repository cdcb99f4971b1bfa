"""Latency, FLOPs and parameters on any hardware (§8, §10).

* :func:`measure` — the §10 timing protocol on one backend (eager, channels_last, compile, bf16, fp16, ORT,
  ORT int8, TensorRT), returning median/mean/p90/p99 and a record of what actually ran.
* :func:`build_lut` / :func:`estimate_latency` — per-device latency lookup tables over the search space and
  their sum along a network.
* ``python -m fasterseg_core.latency`` — the command-line entry point.
"""

from .backends import BACKENDS, BackendFailed, BackendUnavailable, export_onnx, prepare
from .measure import LatencyResult, environment_record, measure

__all__ = [
    "BACKENDS",
    "BackendFailed",
    "BackendUnavailable",
    "LatencyResult",
    "environment_record",
    "export_onnx",
    "measure",
    "prepare",
]
