"""Progress bars that also tell the pipeline driver where a stage is.

A stage's work (training epochs, the search, latency timing) draws its bars with :func:`bar`: a tqdm bar
(notebook-aware) that, when ``$FASTERSEG_PROGRESS`` names a file, also writes its position there (at most
once a second, atomically). The pipeline driver (``make report``) sets that variable for each notebook's
kernel and draws one terminal bar from the file with the stage count, so the person who typed ``make
report`` sees the running stage's progress and ETA instead of one line per stage. :func:`say` does the same
for the lines a person must see (a run resumed, results set aside): printed, and appended to
``$FASTERSEG_PROGRESS.log`` for the driver to print on its terminal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .storage import save_text

ENV = "FASTERSEG_PROGRESS"
_EVERY_S = 1.0


class _Bar(tqdm):  # type: ignore[misc]  # tqdm.auto resolves to the notebook or the terminal class
    """tqdm that mirrors its position into the progress file."""

    def __init__(self, *args: Any, progress_file: str | None = None, **kwargs: Any) -> None:
        self._progress_file, self._written = progress_file, 0.0
        super().__init__(*args, **kwargs)
        self._mirror(force=True)

    def update(self, n: float | None = 1) -> bool | None:
        out = super().update(n)
        self._mirror()
        return out

    def close(self) -> None:
        self._mirror(force=True)
        super().close()

    def _mirror(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._progress_file is None or (not force and now - self._written < _EVERY_S):
            return
        self._written = now
        elapsed = self.format_dict.get("elapsed", 0.0)
        state = {"desc": self.desc, "n": self.n, "total": self.total, "elapsed": elapsed, "time": time.time()}
        try:
            save_text(json.dumps(state), self._progress_file)
        except OSError:
            self._progress_file = None  # progress is a courtesy: never fail the work for it


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", disable: bool = False,
        **kwargs: Any) -> tqdm:
    """A tqdm bar (same arguments) that also reports to ``$FASTERSEG_PROGRESS`` when the driver set it."""
    path = os.environ.get(ENV) if not disable else None
    return _Bar(iterable, total=total, desc=desc, disable=disable, progress_file=path, **kwargs)


def say(line: str) -> None:
    """Print ``line`` here (the notebook) and, under the pipeline driver, on its terminal too."""
    print(line, flush=True)
    path = os.environ.get(ENV)
    if path:
        try:
            with open(f"{path}.log", "a", encoding="utf-8") as f:
                f.write(line.replace("\n", " ") + "\n")
        except OSError:
            pass  # a courtesy, as the bar is


def said(path: str | os.PathLike, offset: int = 0) -> tuple[list[str], int]:
    """The lines :func:`say` appended to ``<path>.log`` from byte ``offset`` on, and the offset after them."""
    try:
        with open(f"{path}.log", "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    return complete.decode("utf-8", "replace").splitlines(), offset + len(complete)


def read(path: str | os.PathLike) -> dict[str, Any] | None:
    """The last position a stage reported, or ``None``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
