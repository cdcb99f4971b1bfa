"""Atomic saves: a crash or a kill mid-write never leaves a truncated file where a complete one is expected.

Every artifact is written to a temporary file beside its target and moved over it with ``os.replace``;
an interrupted write leaves only the temporary file (``.<name>.<random>.tmp``), which the next run of the
stage removes (:func:`remove_temp_files`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
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


class ArtifactWriteError(OSError):
    """An artifact could not be written (a full disk, no permission): the message names the file and the fix."""


def _write_error(err: OSError, path: Path) -> ArtifactWriteError:
    """``err`` restated with the file it was writing and what to do (the bare ``OSError`` names neither)."""
    fix = {errno.ENOSPC: f"free space there (df -h {path.parent}) and rerun: the run resumes from its last checkpoint",
           errno.EDQUOT: "raise the quota or free space there, then rerun: the run resumes from its last checkpoint",
           errno.EACCES: f"make {path.parent} writable, or set output_root to a folder you can write",
           errno.EPERM: f"make {path.parent} writable, or set output_root to a folder you can write",
           errno.EROFS: "set output_root to a writable folder"}.get(err.errno, "check the folder, then rerun")
    return ArtifactWriteError(err.errno, f"cannot write {path}: {err.strerror or err}; {fix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` to write to; moved over ``path`` (``os.replace``) when the block ends
    without an exception, removed otherwise. An ``OSError`` becomes :class:`ArtifactWriteError` naming ``path``.

        with atomic_path(run.path("history.csv")) as tmp:
            frame.to_csv(tmp, index=False)
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        # mkstemp creates 0600 files; artifacts are meant to be read by others (umask-respecting 0644).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
    except ArtifactWriteError:
        raise
    except OSError as e:
        raise _write_error(e, path) from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + ``os.replace``).

    NumPy scalars/arrays and tensors become numbers/lists; NaN is written as ``NaN`` (Python's JSON
    reads it back), because per-class IoU is NaN for a class absent from prediction and ground truth.
    """
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"  # a type error before any file is touched
    return save_text(text, path)


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_csv(frame: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``frame.to_csv(path, **kwargs)`` atomically (a pandas DataFrame or Series)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks: what a manifest records of each artifact."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(Path(path).read_text())


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (temp file + ``os.replace``); for checkpoints and tensors."""
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as f:
        writer = _Writer(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:  # torch's zip writer reports a failed write as "unexpected pos …"
                raise writer.error from None
            raise
    return Path(path)


class _Writer:
    """A file for ``torch.save`` that writes every byte or raises, and keeps the ``OSError`` (ENOSPC, EDQUOT)
    that torch's zip writer would otherwise turn into a ``RuntimeError`` naming neither the cause nor the file."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self.f.write(view):]
        except OSError as e:
            self.error = e
            raise
        return len(data)

    def flush(self) -> None:
        self.f.flush()


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
