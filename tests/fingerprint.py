"""The fingerprint of a smoke pipeline: every stage's results with the timing fields left out.

Two runs of the same code on the same machine give the same fingerprint bit for bit (fixed seeds, CPU,
a fixed latency table for the search); a refactor that changes no behaviour keeps it. The expected
fingerprint is stored in ``tests/data/smoke_fingerprint.json`` (recorded on an Intel Xeon before the layout
refactor) and, for machine kinds whose kernels round differently enough to flip a near-tie in the search, in
``tests/data/smoke_fingerprint_<kind>.json``; ``tests/test_fidelity.py`` checks them.

Regenerate it (only for a deliberate change of behaviour, named in the commit message)::

    python tests/fingerprint.py outputs/fingerprint/smoke --write tests/data/smoke_fingerprint.json

where the folder is what ``FIDELITY_OVERRIDES`` below wrote with the smoke profile.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
from pathlib import Path
from typing import Any

# The search steers by a latency table; a table timed on this machine would differ from run to run, so the
# fingerprint run uses the authors' published table (../shared/reference) at its resolution.
REFERENCE_LUT = "../shared/reference/fasterseg_latency_lookup_table.json"
FIDELITY_OVERRIDES = {"search.latency_table": REFERENCE_LUT, "search.latency_input_hw": [1024, 2048]}

# What a stage's results are compared on (relative to its folder); timing fields are dropped from each.
FILES = {
    "00_data": ("metrics.json", "stats.json"),
    "01_search": ("metrics.json", "arch_teacher.json", "arch_student.json", "arch_params.json", "history.json"),
    "02_teacher": ("metrics.json", "history.csv", "per_class_iou.csv", "arch.json"),
    "03_distill": ("metrics.json", "history.csv", "per_class_iou.csv", "arch.json"),
    "04_student": ("metrics.json", "history.csv", "per_class_iou.csv", "arch.json"),
    "06_analysis": ("metrics.json",),
}
# The training stages' results of the first seed (12345, the paper's) live in its run folder.
SEED_DIRS = {stage: f"{stage}/seed-12345" for stage in ("02_teacher", "03_distill", "04_student")}
# 05_latency is all timing; 06_analysis counts its rows (stable), and every stage's manifest holds times.
_TIMING_KEYS = {"throughput", "record", "train_images_per_s", "images_per_s", "latency_rows"}


def _is_timing(key: str) -> bool:
    return "seconds" in key or key.endswith("_at") or key in _TIMING_KEYS


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not _is_timing(str(k))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _read(path: Path) -> Any:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: v for k, v in row.items() if not _is_timing(k)} for row in rows]
    return _strip(json.loads(path.read_text()))


def fingerprint(profile_dir: str | Path, stage_dirs: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"<stage>/<file>": content without timing fields}`` of a finished smoke pipeline.

    Args:
        profile_dir: ``<output_root>/<profile>``.
        stage_dirs: stage → folder relative to ``profile_dir`` where it is not the stage's name (default: the
            training stages' first-seed folders, :data:`SEED_DIRS`).
    """
    root = Path(profile_dir)
    out = {}
    for stage, names in FILES.items():
        folder = root / (SEED_DIRS if stage_dirs is None else stage_dirs).get(stage, stage)
        for name in names:
            out[f"{stage}/{name}"] = _read(folder / name)
    return out


def environment() -> dict[str, Any]:
    """What bit-identity depends on besides the code: torch, the CPU (its kernels), the thread count."""
    import torch

    from fasterseg_core.latency.measure import cpu_model

    # isa: the kernel level ATen dispatches to (AVX2, AVX512, …): two CPUs of one name can differ in it
    return {"torch": torch.__version__, "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "machine": platform.machine(), "isa": torch.backends.cpu.get_cpu_capability()}


def _number(value: Any) -> Any:
    """A CSV cell that holds a float, as that float (CSV rows are read as strings)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def differences(expected: Any, actual: Any, where: str = "", rel: float = 0.0,
                loose: dict[str, float] | None = None) -> list[str]:
    """Where two fingerprints differ: exactly when ``rel`` is 0, else floats (CSV cells too) within ``rel``
    relative, or within ``loose[word]`` where the path contains ``word``. Everything else (keys, lengths,
    integers, strings, architectures) must be equal in every mode."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{where}.{k}: missing" for k in expected if k not in actual]
        out += [f"{where}.{k}: unexpected" for k in actual if k not in expected]
        for k in expected.keys() & actual.keys():
            out += differences(expected[k], actual[k], f"{where}.{k}", rel, loose)
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items expected, {len(actual)} found"]
        return [d for i, (e, a) in enumerate(zip(expected, actual))
                for d in differences(e, a, f"{where}[{i}]", rel, loose)]
    both_nan = isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected) and math.isnan(actual)
    if both_nan or expected == actual:
        return []
    e, a = (_number(expected), _number(actual)) if rel else (expected, actual)
    if rel and isinstance(e, float) and isinstance(a, float):
        tol = max([rel] + [t for word, t in (loose or {}).items() if word in where])
        if math.isclose(e, a, rel_tol=tol, abs_tol=1e-9):
            return []
    return [f"{where}: expected {expected!r}, found {actual!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile_dir", type=Path, help="<output_root>/smoke of a fingerprint run")
    parser.add_argument("--write", type=Path, help="store the fingerprint here")
    parser.add_argument("--compare", type=Path, help="compare with a stored fingerprint")
    args = parser.parse_args(argv)
    record = {"environment": environment(), "overrides": FIDELITY_OVERRIDES,
              "fingerprint": fingerprint(args.profile_dir)}
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.write}")
    if args.compare:
        stored = json.loads(args.compare.read_text())
        diff = differences(stored["fingerprint"], record["fingerprint"])
        print("\n".join(diff[:40]) or f"identical: {len(record['fingerprint'])} files")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
