"""This machine and this checkout, as every manifest records them: device, hardware tag, seeds, git state,
package versions and the time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig, project_root

# Packages whose versions go into every manifest (the ones that change numbers or rendering).
_VERSIONED_PACKAGES = ("fasterseg-core", "torch", "torchvision", "numpy", "pillow", "pandas", "matplotlib",
                       "onnx", "onnxruntime", "papermill", "nbconvert")


def hardware_tag() -> str:
    """A short name for this machine's compute, used to key latency results across machines.

    Returns:
        ``"cuda-<gpu name>"`` (e.g. ``"cuda-nvidia-h100-80gb-hbm3"``) when CUDA is available, else
        ``"cpu-<n>core"`` with the number of cores this process may use (e.g. ``"cpu-2core"``).
    """
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        return "cuda-" + "-".join("".join(c if c.isalnum() else " " for c in name).split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"cpu-{cores}core"


# CPU extensions that decide which kernels run and how fast: AVX2/FMA (oneDNN's baseline), AVX-512 with its
# VNNI (int8) and BF16 parts, and AMX tiles. torch's get_cpu_capability() stops at "AVX512", which cannot tell
# a CPU that computes bf16 natively from one that emulates it (8-10x slower training, see native_bf16).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def isa_flags() -> list[str]:
    """The :data:`ISA_FLAGS` this CPU has, in that order, from ``/proc/cpuinfo`` (empty where it is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_generation() -> str:
    """``family 25 model 17`` from ``/proc/cpuinfo`` ("" where absent): the model name of a cloud VM's CPU is often
    just "AMD EPYC", and a Zen 4 (family 25) trains about half as fast as a Zen 5 (family 26) here."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model") and key.strip() not in found:
                    found[key.strip()] = value.strip()
                if len(found) == 2:
                    break
    except OSError:
        pass
    return f"family {found['cpu family']} model {found['model']}" if len(found) == 2 else ""


def resolve_hardware_tag(cfg: RunConfig, override: str = "") -> str:
    """The tag a run records: an explicit override, else ``cfg.hardware_tag``, else :func:`hardware_tag`."""
    return override or cfg.hardware_tag or hardware_tag()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX.

    Elsewhere (e.g. an AVX2-only CPU) oneDNN emulates bf16 convolutions: measured on a 2-core AVX2 AMD EPYC,
    bf16 autocast trained the camvid-cpu student 8x and the teacher 10x slower than fp32 (3.47 vs 0.42 and
    12.7 vs 1.22 s per iteration).
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # torch.cpu's probes are private (no public API in torch 2.14); a torch without them counts as no bf16
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_amp(amp: str, device: torch.device) -> str:
    """A training section's ``amp`` as it runs on ``device``: ``"auto"`` is ``"bf16"`` where the device computes
    bf16 natively (:func:`native_bf16`), else ``"none"`` (fp32); the other values stand as they are."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "none"


def planned_device(name: str) -> torch.device:
    """The device ``cfg.device`` names on this machine, without :func:`resolve_device`'s checks (for keys and
    records computed before a stage runs; the stage itself resolves and checks)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_device(name: str) -> torch.device:
    """Turn ``cfg.device`` into a device, failing clearly when the requested one is absent.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    """
    device = planned_device(name)
    if name == "auto":  # "auto" only names a device that is there
        return device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} requested but CUDA is not available on this machine; "
            "use a CPU profile (e.g. smoke, camvid-cpu) or override device='cpu'"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available; override device='cpu'")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """``{"sha": ..., "dirty": ...}`` of the project checkout, or ``None`` values outside a git checkout."""
    repo = repo or project_root()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], check=False, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    """Python, platform and the versions of the packages that matter for results."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# glibc's allocator, pinned: by default it hands every large freed block (a feature map, a gradient) back to
# the kernel and page-faults it in again on the next iteration or forward pass. These keep the heap instead:
# CPU latencies swung by up to 5x without them; camvid-cpu training steps take 0.91x (teacher), 0.89x
# (distillation) and 0.98x (student) the time with them on in-memory crops, and 0.90x / 1.00x / 0.97x with
# the real loader's workers beside them (benchmarks/allocator.py [--loader], AVX2 AMD EPYC).
# glibc reads them once, at start-up: they must be in a process's environment before it starts (the
# Makefile's `lab` target repeats them for JupyterLab's kernels). The price: freed memory stays with the
# process until it ends (each stage runs in a kernel of its own, so that is one stage's peak).
STABLE_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_TOP_PAD_": "1000000000",
}


def stable_malloc_set() -> bool:
    """Whether this process started with the pinned allocator settings (:data:`STABLE_MALLOC`)."""
    return all(os.environ.get(k) == v for k, v in STABLE_MALLOC.items())


def stable_malloc_env() -> None:
    """Re-execute the current Python program with the pinned allocator settings, once.

    Call it first thing in a command-line entry point (a benchmark's ``main``, the training and latency
    commands); it returns at once when the settings are already there. Never call it from a library function
    or a test: it replaces the running interpreter.
    """
    if stable_malloc_set():
        return
    env = {**os.environ, **STABLE_MALLOC}
    # sys.orig_argv keeps "-m package" and interpreter flags, so modules and scripts re-run identically.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def now() -> str:
    """The current UTC time as ISO 8601 (seconds), as every manifest records it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
