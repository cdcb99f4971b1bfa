"""Widgets for driving and inspecting the pipeline in JupyterLab (``notebooks/control.ipynb``).

* :func:`control_panel`: choose a profile, epochs per training stage and a hardware tag, launch one stage
  (papermill, into ``outputs/<profile>/notebooks/``) or the whole pipeline (``python -m
  fasterseg_core report``) as a child process, and watch its output and progress; stop it again.
* :func:`results_explorer`: pick a trained network (stage × best/last checkpoint), a split and an image,
  and see the image, ground truth, prediction and the image's per-class IoU.

Under papermill and in the rendered report a widget shows its initial state only: nothing is launched
without a click, and nothing the report needs depends on a widget (``06_analysis`` draws every figure
directly). The command builders and :func:`explore_image` are plain functions, usable without widgets.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis.exhibit import Exhibit
from .checkpoints import load_stage_model, stage_checkpoint_path
from .config import RunConfig, load_config, project_root
from .data import build_dataset
from .pipeline import notebooks_dir, stage_notebooks
from .plots import plot_explorer_view
from .predictions import explore_image
from .runs import STAGES, TRAINING_STAGES

TRAINING_SECTIONS = {name: STAGES[name].section for name in TRAINING_STAGES}
# papermill's tqdm bar ("Executing:  40%|████  | 4/10 [00:02<...]") and the report driver's stage lines
_CELL_PROGRESS = re.compile(r"(\d+)/(\d+) \[")
_STAGE_DONE = re.compile(r"^\[(\d\d_\w+)\] (ok|skipped|failed|complete)")


# ---------------------------------------------------------------------------------------------------
# commands (no widgets)


def profile_names(folder: Path | None = None) -> list[str]:
    """The profiles ``params/<name>.yaml`` of the project, sorted."""
    return sorted(p.stem for p in Path(folder or project_root() / "params").glob("*.yaml"))


def epoch_overrides(epochs: Mapping[str, int]) -> dict[str, int]:
    """``{"02_teacher": 3, "03_distill": 0}`` → ``{"teacher.epochs": 3}`` (0 or None: keep the profile's)."""
    unknown = sorted(set(epochs) - set(TRAINING_SECTIONS))
    if unknown:
        raise ValueError(f"no training stage {unknown}; choose from {list(TRAINING_SECTIONS)}")
    return {f"{TRAINING_SECTIONS[stage]}.epochs": int(n) for stage, n in epochs.items() if n}


def stage_command(
    stage: str,
    profile: str,
    overrides: Mapping[str, Any],
    hardware_tag: str = "",
    folder: Path | None = None,
) -> list[str]:
    """The papermill command that runs one stage notebook as the pipeline driver would.

    The executed notebook goes to ``outputs/<profile>/notebooks/<stage>.ipynb`` (the config is resolved
    here, so a misspelled override fails before anything starts).

    Raises:
        ConfigError: the profile or an override does not fit the config.
        FileNotFoundError: no notebook for that stage.
    """
    cfg = load_config(profile, dict(overrides))
    folder = folder or notebooks_dir()
    source = Path(folder) / f"{stage}.ipynb"
    if not source.exists():
        have = [p.stem for p in stage_notebooks(Path(folder))]
        raise FileNotFoundError(f"no notebook {source}; stages: {have}")
    params = {"profile": profile, "overrides": dict(overrides), "hardware_tag": hardware_tag}
    executed = cfg.output_dir / "notebooks" / source.name
    return [
        sys.executable,
        "-m",
        "papermill",
        str(source),
        str(executed),
        "-k",
        "python3",
        "--cwd",
        str(folder),
        "-y",
        json.dumps(params),
        "--progress-bar",
        "--log-output",
    ]


def pipeline_command(
    profile: str, overrides: Mapping[str, Any], hardware_tag: str = "", force: bool = False, pdf: bool = True
) -> list[str]:
    """The ``python -m fasterseg_core report`` command (every stage in order, then the report)."""
    load_config(profile, dict(overrides))  # fail here, not in the child process
    cmd = [
        sys.executable,
        "-m",
        "fasterseg_core",
        "report",
        "--profile",
        profile,
        "--overrides",
        json.dumps(dict(overrides)),
    ]
    cmd += ["--hardware-tag", hardware_tag] if hardware_tag else []
    return cmd + (["--force"] if force else []) + ([] if pdf else ["--no-pdf"])


# ---------------------------------------------------------------------------------------------------
# the control panel


class Launcher:
    """One child process at a time, its output streamed into an HTML widget and a progress bar."""

    def __init__(self, log: Any, bar: Any, status: Any, lines: int = 40) -> None:
        self.log, self.bar, self.status = log, bar, status
        self.proc: subprocess.Popen | None = None
        self._lines: deque[str] = deque(maxlen=lines)
        self._stages_done = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cmd: list[str], what: str, total_stages: int = 0) -> None:
        """Start ``cmd`` (in the repository root) unless a process is still running."""
        if self.running:
            self.status.value = "<b>busy</b>: stop the running process first"
            return
        self._lines.clear()
        self._stages_done, self._total = 0, total_stages
        self.bar.value, self.bar.max = 0, max(total_stages, 1)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, cwd=project_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        self.status.value = f"<b>running</b> {html.escape(what)} (pid {self.proc.pid})"
        threading.Thread(target=self._follow, args=(self.proc, what), daemon=True).start()

    def stop(self) -> None:
        """Terminate the child process started here (and only it)."""
        if self.running:
            self.proc.terminate()

    def _follow(self, proc: subprocess.Popen, what: str) -> None:
        buf = ""
        while chunk := proc.stdout.read1(4096) if proc.stdout else b"":
            buf += chunk.decode(errors="replace")
            *done, buf = re.split(r"[\r\n]", buf)
            for line in filter(None, (s.rstrip() for s in done)):
                self._line(line)
        rc = proc.wait()
        word = "finished" if rc == 0 else f"failed (exit {rc})"
        self.status.value = f"<b>{word}</b>: {html.escape(what)}"
        if rc == 0:
            self.bar.value = self.bar.max

    def _line(self, line: str) -> None:
        if _STAGE_DONE.match(line):  # the pipeline driver finished (or skipped) a stage
            self._stages_done += 1
            self.bar.max, self.bar.value = max(self._total, 1), self._stages_done
        elif not self._total and (m := _CELL_PROGRESS.search(line)):  # one notebook: cells executed
            self.bar.max, self.bar.value = int(m[2]), int(m[1])
        if "Executing:" in line:  # papermill's bar: the progress widget shows it
            return
        self._lines.append(line)
        text = html.escape("\n".join(self._lines))
        self.log.value = f"<pre style='font-size: 11px; line-height: 1.2'>{text}</pre>"


def control_panel(profile: str = "smoke", hardware_tag: str = "") -> Any:
    """Profile, epochs per training stage and hardware tag; run one stage or the whole pipeline.

    Returns:
        An ``ipywidgets.VBox``; its :class:`Launcher` is ``box.launcher``.
    """
    import ipywidgets as w

    stages = [p.stem for p in stage_notebooks()]
    prof = w.Dropdown(options=profile_names(), value=profile, description="profile")
    epochs = {
        s: w.BoundedIntText(
            value=0,
            min=0,
            max=10_000,
            description=f"{s} epochs",
            style={"description_width": "initial"},
            layout=w.Layout(width="190px"),
        )
        for s in TRAINING_SECTIONS
    }
    tag = w.Text(
        value=hardware_tag,
        description="hardware tag",
        placeholder="auto (e.g. cpu-2core)",
        style={"description_width": "initial"},
    )
    stage = w.Dropdown(options=stages, description="stage")
    force, pdf = (
        w.Checkbox(description="force (rerun complete stages)"),
        w.Checkbox(description="PDF", value=True),
    )
    run_stage, run_all = w.Button(description="Run stage", icon="play"), w.Button(description="Run pipeline")
    stop = w.Button(description="Stop", icon="stop", button_style="danger")
    note = w.HTML("<i>0 epochs: keep the profile's value.</i>")
    status, log = w.HTML("idle"), w.HTML()
    bar = w.IntProgress(value=0, min=0, max=1, description="progress")
    launcher = Launcher(log, bar, status)

    def overrides() -> dict[str, int]:
        return epoch_overrides({s: e.value for s, e in epochs.items()})

    def on_stage(_: Any) -> None:
        try:
            cmd = stage_command(stage.value, prof.value, overrides(), tag.value)
        except Exception as err:  # noqa: BLE001 - shown to the user, who fixes the input
            status.value = f"<b>error</b>: {html.escape(str(err))}"
            return
        launcher.start(cmd, f"{stage.value} ({prof.value}, {overrides() or 'profile epochs'})")

    def on_all(_: Any) -> None:
        try:
            cmd = pipeline_command(prof.value, overrides(), tag.value, force.value, pdf.value)
        except Exception as err:  # noqa: BLE001
            status.value = f"<b>error</b>: {html.escape(str(err))}"
            return
        launcher.start(cmd, f"pipeline ({prof.value})", total_stages=len(stages))

    run_stage.on_click(on_stage)
    run_all.on_click(on_all)
    stop.on_click(lambda _: launcher.stop())
    box = w.VBox(
        [
            w.HBox([prof, tag]),
            w.HBox(list(epochs.values())),
            note,
            w.HBox([stage, run_stage]),
            w.HBox([run_all, force, pdf, stop]),
            bar,
            status,
            log,
        ]
    )
    box.launcher = launcher
    return box


# ---------------------------------------------------------------------------------------------------
# the results explorer


def available_checkpoints(cfg: RunConfig) -> list[tuple[str, str]]:
    """(stage, "best"/"last") of every checkpoint the training stages of this profile wrote."""
    return [
        (s, which)
        for s in TRAINING_SECTIONS
        for which in ("best", "last")
        if stage_checkpoint_path(cfg, s, which).is_file()
    ]


def results_explorer(cfg: RunConfig, split: str = "test", device: torch.device | str = "cpu") -> Any:
    """Pick a trained network and an image; see image, ground truth, prediction and the image's IoU.

    The first available checkpoint and image 0 are shown at once, so the widget's saved (static) state
    in an executed notebook is a real example.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as w

    checkpoints = available_checkpoints(cfg)
    if not checkpoints:
        return w.HTML(
            f"<i>No trained network under {html.escape(str(cfg.output_dir))} yet: run 02_teacher, "
            "03_distill or 04_student first.</i>"
        )
    splits = ["val"] if cfg.data.dataset == "cityscapes" else ["test", "val"]  # Cityscapes test: no labels
    models: dict[tuple[str, str], torch.nn.Module] = {}
    datasets: dict[str, Any] = {}
    model = w.Dropdown(options=[(f"{s} · {k}", (s, k)) for s, k in checkpoints], description="network")
    split_w = w.Dropdown(options=splits, value=split if split in splits else splits[0], description="split")
    index = w.IntSlider(value=0, min=0, max=0, description="image", continuous_update=False)
    out = w.Output()

    def dataset() -> Any:
        if split_w.value not in datasets:
            datasets[split_w.value] = build_dataset(cfg.data, split_w.value, train=False)
        return datasets[split_w.value]

    def show(*_: Any) -> None:
        ds = dataset()
        index.max = len(ds) - 1
        key = model.value
        if key not in models:
            models[key] = load_stage_model(cfg, key[0], key[1], device)[0]
        view = explore_image(
            models[key],
            ds,
            min(index.value, len(ds) - 1),
            device,
            f"{key[0]} ({key[1]} checkpoint) on {split_w.value} image {index.value}",
        )
        fig = plot_explorer_view(view, list(ds.class_names), ds.palette)
        caption = (
            f"Mean IoU over the classes present: {np.nanmean(view.iou['IoU (%)'].to_numpy()):.1f} %. "
            "Pixels: counts in this image (ignored pixels excluded)."
        )
        exhibit = Exhibit(
            "Explorer",
            view.title,
            caption,
            view.iou.reset_index(),
            fig,
            formats={"gt_pixels": "{:.0f}", "pred_pixels": "{:.0f}"},
        )
        # set the outputs directly (not `with out:`): works in a kernel, under papermill and in tests
        out.outputs = ()
        out.append_display_data(exhibit)

    for widget in (model, split_w, index):
        widget.observe(show, names="value")
    show()
    return w.VBox([w.HBox([model, split_w]), index, out])
