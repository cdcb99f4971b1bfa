"""The §10 timing protocol, on any backend and device, with a truthful record of what ran.

Spec §10: warm up (10 executions), calibrate a loop until it lasts ≥ 1 s to estimate FPS, then time
``int(3 × FPS)`` executions (about three seconds) and report latency = elapsed / iterations. We keep the
protocol but also time each execution on its own so the median and tails (p90, p99) are available:
medians resist the noise of shared machines better than means.

Deviation: §10 starts its calibration at 100 iterations (GPU networks run in milliseconds). On a CPU a
FasterSeg forward takes hundreds of milliseconds, so we start at 1 and double; the rule "loop ≥ 1 s" is
unchanged.

On Linux/glibc the default allocator returns large blocks to the OS after every forward pass and
page-faults them back in on the next, which on these VMs makes CPU timings swing by up to 5×. The
benchmark entry points set ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000
MALLOC_TOP_PAD_=1000000000`` (:data:`fasterseg_core.machine.STABLE_MALLOC`), and the record says whether
they were set.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..machine import stable_malloc_set
from .backends import BackendFailed, BackendUnavailable, prepare


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_record(device: torch.device | str) -> dict[str, Any]:
    """What the timing ran on: device, CPU model and threads, GPU and driver, library versions."""
    device = torch.device(device)
    rec: dict[str, Any] = {
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),  # what ATen's kernels use: AVX2, AVX512, AVX512_BF16…
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "stable_malloc_env": stable_malloc_set(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.update(
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda_version=torch.version.cuda,
            cudnn_version=torch.backends.cudnn.version(),
            driver=_nvidia_driver(),
        )
    return rec


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            return f.readline().strip()
    except OSError:
        return None


@dataclass
class LatencyResult:
    """One timing. ``status`` is "ok", "unavailable" or "failed"; figures are None unless ok."""

    name: str
    backend: str
    status: str
    input_shape: tuple[int, ...]
    median_ms: float | None = None
    mean_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    fps: float | None = None
    iterations: int = 0
    reason: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    # the timed backend itself, kept so that agreement checks reuse it instead of building it again
    prepared: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("prepared")
        d["input_shape"] = list(self.input_shape)
        return d


def _percentile(sorted_ms: list[float], q: float) -> float:
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def time_prepared(
    run,
    sync,
    *,
    warmup: int = 10,
    min_loop_s: float = 1.0,
    timed_s: float = 3.0,
    min_iters: int = 5,
    max_iters: int = 10_000,
) -> list[float]:
    """§10 protocol on a prepared callable; returns per-execution times in ms.

    Args:
        run: executes one forward pass.
        sync: waits for the device (no-op on CPU).
        warmup: executions before calibration (§10: 10).
        min_loop_s: calibration loop doubles until it lasts this long (§10: 1 s).
        timed_s: the timed phase runs about this long (§10: 3 × FPS executions = 3 s).
        min_iters / max_iters: bounds on the timed executions.
    """
    for _ in range(warmup):
        run()
    sync()
    n, loop = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        sync()
        loop = time.perf_counter() - t0
        if loop >= min_loop_s:
            break
        n *= 2
    fps_estimate = n / loop
    iters = max(min_iters, min(max_iters, int(timed_s * fps_estimate)))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def summarise(times_ms: list[float]) -> dict[str, float]:
    s = sorted(times_ms)
    median = statistics.median(s)
    return {
        "median_ms": median,
        "mean_ms": statistics.fmean(s),
        "p90_ms": _percentile(s, 0.90),
        "p99_ms": _percentile(s, 0.99),
        "fps": 1000.0 / median,
    }


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...] = (1, 3, 1024, 2048),
    device: torch.device | str = "cpu",
    backend: str = "eager",
    *,
    name: str = "",
    warmup: int = 10,
    min_loop_s: float = 1.0,
    timed_s: float = 3.0,
    min_iters: int = 5,
    num_threads: int = 0,
    calibration_images: list[torch.Tensor] | None = None,
    seed: int = 0,
    keep: bool = False,
) -> LatencyResult:
    """Time one network on one backend (§10) and say exactly what ran.

    Args:
        model: network taking (N, 3, H, W) float32 and returning ``{"out": (N, C, H, W)}`` or a tensor.
        input_shape: (N, 3, H, W); §10 uses (1, 3, 1024, 2048).
        device: "cpu", "cuda", torch.device.
        backend: see :data:`fasterseg_core.latency.backends.BACKENDS`.
        name: label stored in the result (e.g. "student").
        num_threads: torch intra-op threads for the measurement (0 = leave as is).
        calibration_images: for ``ort_int8``.
        keep: keep the prepared backend in ``result.prepared`` (e.g. for an agreement check on it).

    Returns:
        A :class:`LatencyResult`; status "unavailable"/"failed" carries the reason instead of figures.
    """
    device = torch.device(device)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(*input_shape, generator=gen)
    result = LatencyResult(
        name=name or type(model).__name__, backend=backend, status="ok", input_shape=tuple(input_shape)
    )
    result.record = {**environment_record(device), "batch": input_shape[0], "input_hw": list(input_shape[2:])}
    start = time.perf_counter()
    try:
        prepared = prepare(
            model, example, backend, device, num_threads=num_threads, calibration_images=calibration_images
        )
        result.record.update(prepared.info)
        # what a row costs (export, compile, quantise vs. timing): shows where a latency stage's time goes
        result.record["prepare_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        times = time_prepared(
            prepared.run,
            prepared.sync,
            warmup=warmup,
            min_loop_s=min_loop_s,
            timed_s=timed_s,
            min_iters=min_iters,
        )
    except BackendUnavailable as e:
        result.status, result.reason = "unavailable", str(e)
        return result
    except BackendFailed as e:
        result.status, result.reason = "failed", str(e)
        return result
    result.record["timing_s"] = round(time.perf_counter() - start, 3)
    for k, v in summarise(times).items():
        setattr(result, k, v)
    result.iterations = len(times)
    result.prepared = prepared if keep else None
    return result
