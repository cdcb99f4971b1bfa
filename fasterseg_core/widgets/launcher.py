"""One child process at a time (a stage under papermill, or the pipeline), followed in widgets.

The child's output is streamed into a log pane without papermill's cell markers; its progress drives a bar
with an ETA: papermill's own bar (``Executing:  40%|████  | 4/10 [00:02<00:03, ...]``) counts the stage's
cells, the pipeline driver's ``[stage] ok`` lines count stages, and the stage's work bars (training epochs,
the search; :mod:`fasterseg_core.progress`) report through ``$FASTERSEG_PROGRESS``. *Stop* sends SIGTERM to
the child's process group and to the notebook's kernel, which jupyter_client starts in a session of its
own; the stage's run (:mod:`fasterseg_core.runs`) then records itself ``interrupted``.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import psutil

from .. import progress
from ..config import project_root

# papermill's tqdm bar: "Executing:  40%|████      | 4/10 [00:02<00:03,  1.92s/cell]". Anchored on
# "Executing:" so that the training bars a stage prints ("train seed-1:   0%|   | 0/6 [...]") never count.
PAPERMILL_BAR = re.compile(r"Executing:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:?]+)[^\]]*\]")
STAGE_DONE = re.compile(r"^\[(\d\d_\w+)\] (ok|skipped|failed|complete)")
# The pipeline driver's plain progress line: "[3/7] 02_teacher · train seed-1: 450/1000, about 2.1 min left"
PIPELINE_ETA = re.compile(r"^\[\d+/\d+\] .*, about ([\d.]+) min left$")
# What papermill's --log-output writes around the stage's own output, and reprs of rich outputs
# (images, figures, HTML) that mean nothing as text; the kernel's transport warning is not the stage's.
HIDDEN = re.compile(
    r"^(?:(?:Executing|Ending) Cell \d+-*|Executing notebook with kernel: .*|<IPython\.core\.display\.\w+ object>"
    r"|<Figure size [^>]*>|\[IPKernelApp\] WARNING \| Kernel is running over TCP.*"
    r"|.*\d+%\|[^|]*\|\s*\d+/\d+ \[.*)$"  # a tqdm bar's snapshot: the progress bar shows it live
)
STOP_GRACE_S = 5.0  # after SIGTERM, what still lives is killed (an orphaned kernel idles forever)
_GONE = (ProcessLookupError, psutil.NoSuchProcess)  # a process that ended in the meantime


def clean_line(line: str) -> tuple[str, tuple[int, int, str, str] | None]:
    """(the text to log, papermill's last bar in the line as (done, total, elapsed, remaining) or None).

    papermill draws its bar with carriage returns and no newline, so a bar and the next cell's marker can
    share a line; the bar is cut out and a line that is only markers logs as ``""``.
    """
    bars = PAPERMILL_BAR.findall(line)
    text = PAPERMILL_BAR.sub("", line).rstrip()  # leading blanks kept: they align the columns of tables
    last = (int(bars[-1][0]), int(bars[-1][1]), bars[-1][2], bars[-1][3]) if bars else None
    return ("" if HIDDEN.match(text.strip()) else text), last


class Launcher:
    """Runs one command at a time and shows it in the given widgets.

    Args:
        log: an ``HTML`` widget for the last ``lines`` lines of output.
        bar: an ``IntProgress``: cells of a stage, or stages of the pipeline.
        status: an ``HTML`` widget: running / complete / failed / stopped.
        eta: an ``HTML`` widget beside the bar: position, elapsed time and ETA.
    """

    def __init__(self, log: Any, bar: Any, status: Any, eta: Any = None, lines: int = 40) -> None:
        self.log, self.bar, self.status, self.eta = log, bar, status, eta
        self.proc: subprocess.Popen | None = None
        self._lines: deque[str] = deque(maxlen=lines)
        self._stages_done = self._total = 0
        self._stopping = False
        self._cells = self._work = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cmd: list[str], what: str, total_stages: int = 0, progress_file: Path | None = None) -> bool:
        """Start ``cmd`` in the project folder unless a process is still running.

        Args:
            total_stages: the pipeline's stage count (the bar counts stages), 0 for one stage (it counts cells).
            progress_file: where the stage's work bars report (set as ``$FASTERSEG_PROGRESS`` for the child).

        Returns:
            Whether it started.
        """
        if self.running:
            self.status.value = "<b>busy</b>: stop the running process first"
            return False
        self._lines.clear()
        self._stages_done, self._total, self._stopping = 0, total_stages, False
        self._cells = self._work = ""
        self.bar.value, self.bar.max, self.bar.bar_style = 0, max(total_stages, 1), "info"
        # the kernel finds the project as the pipeline driver's kernels do, wherever the notebook runs
        env = dict(os.environ, PYTHONUNBUFFERED="1", FASTERSEG_ROOT=str(project_root()))
        if progress_file is not None:
            Path(progress_file).unlink(missing_ok=True)  # a previous run's position is not this run's
            env[progress.ENV] = str(progress_file)
        # its own process group, so that Stop reaches papermill and whatever it started, and nothing else
        self.proc = subprocess.Popen(cmd, cwd=project_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self.status.value = f"<b>running</b> {html.escape(what)} (pid {self.proc.pid})"
        self._show_eta()
        watch = None
        if progress_file is not None:
            watch = threading.Thread(target=self._watch, args=(self.proc, Path(progress_file)), daemon=True)
            watch.start()
        threading.Thread(target=self._follow, args=(self.proc, what, watch), daemon=True).start()
        return True

    def stop(self) -> None:
        """SIGTERM to the child's process group and to every process it started (the kernel has a session
        of its own); SIGKILL to what still runs :data:`STOP_GRACE_S` seconds later."""
        if not self.running:
            return
        self._stopping = True
        self.status.value = "<b>stopping</b> (SIGTERM sent)"
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            procs = []
        for p in procs:  # the kernel first: its run writes "interrupted" into the stage's manifest
            with contextlib.suppress(*_GONE):
                p.send_signal(signal.SIGTERM)
        with contextlib.suppress(*_GONE):
            os.killpg(self.proc.pid, signal.SIGTERM)
        threading.Thread(target=self._kill_after, args=(self.proc, procs), daemon=True).start()

    def _kill_after(self, proc: subprocess.Popen, procs: list[psutil.Process]) -> None:
        _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
        for p in alive:
            with contextlib.suppress(*_GONE):
                p.kill()
        if proc.poll() is None:
            with contextlib.suppress(*_GONE):
                os.killpg(proc.pid, signal.SIGKILL)

    def _follow(self, proc: subprocess.Popen, what: str, watch: threading.Thread | None) -> None:
        buf = ""
        while chunk := proc.stdout.read1(4096) if proc.stdout else b"":
            buf += chunk.decode(errors="replace")
            *done, buf = re.split(r"[\r\n]", buf)
            for line in done:
                self._line(line)
        if buf:
            self._line(buf)
        rc = proc.wait()
        if watch is not None:
            watch.join()  # its last position must not overwrite the final state
        if self._stopping:
            word, style = "stopped", "warning"
        elif rc == 0:
            word, style = "complete", "success"
            self.bar.value = self.bar.max
        else:
            word, style = f"failed (exit {rc})", "danger"
        self.bar.bar_style = style
        self.status.value = f"<b>{word}</b>: {html.escape(what)}"
        self._work = ""
        self._show_eta()

    def _line(self, raw: str) -> None:
        line, cells = clean_line(raw.rstrip())
        if cells is not None and not self._total:  # one notebook: its cells executed
            done, total, elapsed, remaining = cells
            self.bar.max, self.bar.value = total, done
            self._cells = f"cell {done}/{total} · {elapsed} elapsed · ETA {remaining}"
            self._show_eta()
        if STAGE_DONE.match(line):  # the pipeline driver finished (or skipped) a stage
            self._stages_done += 1
            self.bar.max, self.bar.value = max(self._total, 1), self._stages_done
        elif m := PIPELINE_ETA.match(line):
            self._work = f"{line.split(',')[0]} · ETA {float(m[1]):.1f} min"
            self._show_eta()
        if not line:
            return
        self._lines.append(line)
        text = html.escape("\n".join(self._lines))
        self.log.value = f"<pre style='font-size: 11px; line-height: 1.2'>{text}</pre>"

    def _watch(self, proc: subprocess.Popen, path: Path) -> None:
        """The stage's work bar (one epoch loop can be most of a stage): its position and ETA, twice a second."""
        while proc.poll() is None:
            state = progress.read(path)
            if state and state.get("total"):
                n, total, elapsed = state["n"], state["total"], state.get("elapsed") or 0.0
                left = (total - n) * elapsed / n if n else None
                eta = f", ETA {_clock(left)}" if left is not None else ""
                self._work = f"{state['desc']}: {n:g}/{total:g}{eta}"
                self._show_eta()
            time.sleep(0.5)

    def _show_eta(self) -> None:
        if self.eta is not None:
            parts = [html.escape(p) for p in (self._cells, self._work) if p]
            self.eta.value = f"<span style='font-size: 12px'>{' | '.join(parts)}</span>"


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"

