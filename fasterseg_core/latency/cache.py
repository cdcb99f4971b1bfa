"""Per-device latency lookup tables, cached between runs: the table that steers the search (method §3.3, §10).

A table is specific to a device, a resolution and the head's class count. The search's table is built once
per (hardware tag, resolution) under ``outputs/<profile>/latency/lut_<tag>_<H>x<W>.json`` and reused; a
partial or smaller table (e.g. another class count) is completed, timing only the missing entries. A saved
table (ours, or the authors' export) can be named instead with ``search.latency_table``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import RunConfig, resolve_path
from .lut import LatencyTable, build_lut, load_authors_lut

LUT_BACKEND = "eager"  # the search's table times plain PyTorch modules on the run's device


def lut_cache_path(cfg: RunConfig, hardware_tag: str, input_hw: tuple[int, int]) -> Path:
    """``outputs/<profile>/latency/lut_<tag>_<H>x<W>.json``: where a device's table is cached for reuse."""
    return cfg.output_dir / "latency" / f"lut_{hardware_tag}_{input_hw[0]}x{input_hw[1]}.json"


def load_lut(path: str | Path) -> LatencyTable:
    """A saved table: ours (``fasterseg-lut/1``) or the authors' export (``table_ms``).

    Relative paths are taken from the project folder (profiles are written from there).
    """
    path = resolve_path(path)
    if not path.exists():
        raise FileNotFoundError(f"latency table {path} does not exist (search.latency_table)")
    data = json.loads(path.read_text())
    return load_authors_lut(path) if "table_ms" in data else LatencyTable.load(path)


def search_latency_table(cfg: RunConfig, device: torch.device, hardware: str, num_classes: int, *,
                         progress: bool = True) -> LatencyTable:
    """The table that steers the search: ``search.latency_table`` if set, else this device's table at
    ``search.latency_input_hw``, reused from the cache when complete, otherwise (re)built there (only the
    missing entries are timed).

    Args:
        device: where to time the entries.
        hardware: the run's hardware tag (names the cached file).
        num_classes: the head's class count.
    """
    sc = cfg.search
    if sc.latency_table:
        return load_lut(sc.latency_table)
    hw = tuple(sc.latency_input_hw)
    path = lut_cache_path(cfg, hardware, hw)
    cached = LatencyTable.load(path) if path.exists() else None
    if cached is not None and tuple(cached.input_hw) != hw:
        cached = None
    lut = build_lut(device, LUT_BACKEND, hw, hardware, progress=progress, num_classes=num_classes,
                    resume_from=cached)
    if cached is None or len(lut.entries) != len(cached.entries):
        lut.save(path)
    return lut
