"""The control panel of ``notebooks/control.ipynb``: the config form, run one stage or the pipeline, watch it,
stop it.

Nothing launches without a click, and nothing launches while a value is invalid: the run buttons are
disabled and the click handlers check again (the command builders validate a third time, as the stage's own
first cell does).
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from ..config import ConfigError
from ..pipeline import stage_notebooks
from .commands import pipeline_command, stage_command
from .form import ConfigForm
from .launcher import Launcher

_INVALID = "<b>invalid</b>: fix the field marked in red (nothing runs until then)"


def _describe(overrides: dict[str, Any]) -> str:
    said = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return said if len(said) <= 160 else said[:157] + "..."


def control_panel(profile: str = "smoke", overrides: dict[str, Any] | None = None, hardware_tag: str = "") -> Any:
    """Every config key as a widget; run one stage (papermill) or the whole pipeline and report.

    Args:
        profile: the profile shown first (another can be picked).
        overrides: applied on top of it at first (the notebook's ``overrides`` parameter).
        hardware_tag: the notebook's parameter; shown as the form's ``hardware_tag`` key.

    Returns:
        An ``ipywidgets.VBox``, with its parts as attributes for scripts and tests: ``form``
        (:class:`~fasterseg_core.widgets.form.ConfigForm`), ``launcher`` (:class:`Launcher`), ``stage``,
        ``run_stage``, ``run_all``, ``stop``.
    """
    stages = [p.stem for p in stage_notebooks()]
    initial = dict(overrides or {}) | ({"hardware_tag": hardware_tag} if hardware_tag else {})
    form = ConfigForm(profile, initial)
    stage = w.Dropdown(options=stages, description="stage")
    run_stage = w.Button(description="Run stage", icon="play", button_style="primary")
    run_all = w.Button(description="Run pipeline", icon="forward")
    force = w.Checkbox(description="force (rerun complete stages)", indent=False, layout=w.Layout(width="auto"))
    pdf = w.Checkbox(description="PDF", value=True, indent=False, layout=w.Layout(width="auto"))
    stop = w.Button(description="Stop", icon="stop", button_style="danger")
    bar = w.IntProgress(value=0, min=0, max=1, description="progress")
    eta, status, log = w.HTML(), w.HTML("idle"), w.HTML()
    launcher = Launcher(log, bar, status, eta)

    def sync(_: Any = None) -> None:
        """Buttons follow the form's validity."""
        invalid = form.cfg is None
        run_stage.disabled = run_all.disabled = invalid
        if invalid and not launcher.running:
            status.value = _INVALID
        elif status.value == _INVALID:
            status.value = "idle"

    def launch(pipeline: bool) -> None:
        cfg = form.validate()
        sync()
        if cfg is None:
            return
        try:
            chosen = form.overrides()
            if pipeline:
                cmd = pipeline_command(form.profile.value, chosen, "", force.value, pdf.value)
            else:
                cmd = stage_command(stage.value, form.profile.value, chosen)
        except (ConfigError, FileNotFoundError, ValueError) as err:  # shown to the user, who fixes the input
            status.value = f"<b>error</b>: {html.escape(str(err))}"
            return
        what = f"{'pipeline' if pipeline else stage.value} ({form.profile.value}"
        what += f"; {_describe(chosen)})" if chosen else ", as the profile says)"
        if pipeline:
            launcher.start(cmd, what, total_stages=len(stages))
        else:
            watch = cfg.output_dir / "notebooks" / f".progress-{stage.value}.json"
            launcher.start(cmd, what, progress_file=watch)

    form.on_change = sync
    run_stage.on_click(lambda _: launch(False))
    run_all.on_click(lambda _: launch(True))
    stop.on_click(lambda _: launcher.stop())
    sync()
    box = w.VBox(
        [
            form.widget,
            w.HBox([stage, run_stage, w.HTML("&nbsp;" * 4), run_all, force, pdf, w.HTML("&nbsp;" * 4), stop]),
            w.HBox([bar, eta]),
            status,
            log,
        ]
    )
    box.form, box.launcher, box.stage = form, launcher, stage
    box.run_stage, box.run_all, box.stop = run_stage, run_all, stop
    return box
