"""Atomic saves: a crash or a kill mid-write never leaves a truncated file where a complete one is expected.

Every artifact is written to a temporary file beside its target and moved over it with ``os.replace``;
an interrupted write leaves only the temporary file (``.<name>.<random>.tmp``), which the next run of the
stage removes (:func:`remove_temp_files`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON: {value!r}")


TMP_SUFFIX = ".tmp"


def _atomic_target(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; artifacts are meant to be read by others (umask-respecting 0644).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return path, Path(tmp)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + ``os.replace``).

    NumPy scalars/arrays and tensors become numbers/lists; NaN is written as ``NaN`` (Python's JSON
    reads it back), because per-class IoU is NaN for a class absent from prediction and ground truth.
    """
    path, tmp = _atomic_target(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (UTF-8) atomically."""
    path, tmp = _atomic_target(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(Path(path).read_text())


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (temp file + ``os.replace``); for checkpoints and tensors."""
    path, tmp = _atomic_target(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain Python containers only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left under ``folder``; returns them.

    Only call this while holding the folder's run lock: a live writer's temporary file must not vanish.
    """
    found = [p for p in Path(folder).rglob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found
