"""Widgets for driving and inspecting the pipeline in JupyterLab (``notebooks/control.ipynb``).

* :func:`control_panel` (``panel``): every key of the typed config as a widget, built from the schema
  (``form``), the live override dict and validation by ``load_config``; run one stage (papermill, into
  ``outputs/<profile>/notebooks/``) or the whole pipeline (``python -m fasterseg_core report``) as a child
  process, watch its log, progress bar and ETA, stop it (``launcher``).
* :func:`results_explorer` (``explorer``): pick a trained network, a split and an image; see the image,
  ground truth, prediction and the image's per-class IoU.

Under papermill and in the rendered report a widget shows its initial state only: nothing is launched
without a click, and nothing the report needs depends on a widget (``06_analysis`` draws every figure
directly). The command builders (``commands``) and :func:`~fasterseg_core.predictions.explore_image` are
plain functions, usable without widgets.
"""

from .commands import (
    TRAINING_SECTIONS,
    epoch_overrides,
    executed_notebook,
    pipeline_command,
    profile_names,
    stage_command,
)
from .explorer import available_checkpoints, results_explorer
from .form import ConfigForm
from .launcher import Launcher
from .panel import control_panel

__all__ = [
    "TRAINING_SECTIONS",
    "ConfigForm",
    "Launcher",
    "available_checkpoints",
    "control_panel",
    "epoch_overrides",
    "executed_notebook",
    "pipeline_command",
    "profile_names",
    "results_explorer",
    "stage_command",
]
