"""Widgets: the command builders, the launcher on a real child process, and the results explorer on a
checkpoint written in the training stages' format (``fasterseg-checkpoint/1``, an untrained network)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest

from fasterseg_core import widgets
from fasterseg_core.checkpoints import FORMAT, load_stage_model
from fasterseg_core.config import ConfigError, load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.models import build_network, published_architecture
from fasterseg_core.pipeline import stage_notebooks
from fasterseg_core.predictions import explore_image
from fasterseg_core.storage import save_torch

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def test_epoch_overrides_and_commands(tmp_path):
    assert widgets.epoch_overrides({"02_teacher": 3, "03_distill": 0, "04_student": 5}) == {
        "teacher.epochs": 3,
        "student.epochs": 5,
    }
    with pytest.raises(ValueError, match="05_latency"):
        widgets.epoch_overrides({"05_latency": 1})
    overrides = {"output_root": str(tmp_path), "teacher.epochs": 3}
    cmd = widgets.stage_command("02_teacher", "smoke", overrides, "cpu-x")
    assert cmd[1:3] == ["-m", "papermill"] and cmd[4] == str(
        tmp_path / "smoke" / "notebooks" / "02_teacher.ipynb"
    )
    assert json.loads(cmd[cmd.index("-y") + 1]) == {
        "profile": "smoke",
        "overrides": overrides,
        "hardware_tag": "cpu-x",
    }
    with pytest.raises(ConfigError, match="epochz"):
        widgets.stage_command("02_teacher", "smoke", {"teacher.epochz": 1})
    with pytest.raises(FileNotFoundError, match="07_nothing"):
        widgets.stage_command("07_nothing", "smoke", {})
    cmd = widgets.pipeline_command("smoke", overrides, "", force=True, pdf=False)
    assert cmd[1:4] == ["-m", "fasterseg_core", "report"] and cmd[-2:] == ["--force", "--no-pdf"]
    assert "smoke" in widgets.profile_names()


def test_launcher_follows_a_child_process_and_counts_stages():
    import ipywidgets as w

    log, bar, status = w.HTML(), w.IntProgress(), w.HTML()
    launcher = widgets.Launcher(log, bar, status)
    lines = ["[00_data] running 00_data.ipynb ...", "[00_data] ok in 1.0 s", "[01_search] complete, skipped"]
    script = "; ".join(f"print({line!r})" for line in lines)
    launcher.start([sys.executable, "-c", script], "test", total_stages=3)
    deadline = time.monotonic() + 30
    while "finished" not in status.value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "finished" in status.value and (bar.value, bar.max) == (3, 3)  # a clean exit fills the bar
    assert "[01_search] complete" in log.value and not launcher.running
    launcher.start([sys.executable, "-c", "import sys; sys.exit(3)"], "failing")
    while launcher.running:
        time.sleep(0.05)
    time.sleep(0.2)
    assert "failed (exit 3)" in status.value
    panel = widgets.control_panel("smoke")
    assert (
        isinstance(panel.launcher, widgets.Launcher) and not panel.launcher.running
    )  # nothing starts by itself


@pytest.fixture
def trained(tmp_path, one_thread):
    """A student 'trained' for 0 epochs, saved as 04_student's best checkpoint."""
    cfg = load_config("smoke", {"output_root": str(tmp_path)})
    arch = published_architecture("student")
    net = build_network(arch, 19)
    ckpt = {
        "format": FORMAT,
        "kind": "train",
        "key": "",
        "epoch": 1,
        "model": net.state_dict(),
        "arch": arch.to_dict(),
        "num_classes": 19,
        "metrics": {},
    }
    save_torch(ckpt, cfg.output_dir / "04_student" / f"seed-{cfg.seeds[0]}" / "checkpoints" / "best.pt")
    return cfg


def test_explorer_shows_a_prediction_and_its_per_class_iou(trained):
    import ipywidgets as w

    assert widgets.available_checkpoints(trained) == [("04_student", "best")]
    net, _ = load_stage_model(trained, "04_student", "best")
    ds = build_dataset(trained.data, "test", train=False)
    view = explore_image(net, ds, 1, "cpu", "t")
    assert view.image.shape == (*view.label.shape, 3) and view.pred.shape == view.label.shape
    assert ((view.iou["IoU (%)"] >= 0) & (view.iou["IoU (%)"] <= 100)).all()
    assert view.iou.gt_pixels.sum() == (view.label != 255).sum()
    box = widgets.results_explorer(trained)
    assert isinstance(box, w.VBox)
    out = box.children[-1]
    assert any("image/png" in o.get("data", {}) for o in out.outputs), "the default view is rendered at once"
    slider = box.children[1]
    slider.value = 2  # a new selection renders again
    assert "image 2" in out.outputs[-1]["data"]["text/plain"]


def test_explorer_without_checkpoints_says_what_to_run(tmp_path):
    box = widgets.results_explorer(load_config("smoke", {"output_root": str(tmp_path)}))
    assert "run 02_teacher" in box.value


CONTROL = NOTEBOOKS_DIR / "control.ipynb"


def test_control_notebook_is_clean_thin_and_not_a_stage():
    import ast

    nb = nbformat.read(CONTROL, as_version=4)
    assert CONTROL not in stage_notebooks(), "the report must not run the control notebook"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c for c in code if "parameters" in c.metadata.get("tags", [])] == code[:1]
    assert "load_config(profile, overrides)" in code[1].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
        tree = ast.parse(cell.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree))
        assert len(cell.source.splitlines()) <= 12


@pytest.mark.slow
@pytest.mark.notebooks
def test_control_notebook_runs_under_papermill_without_launching_anything(tmp_path):
    import papermill

    out = tmp_path / "control.ipynb"
    papermill.execute_notebook(
        str(CONTROL),
        str(out),
        parameters={"overrides": {"output_root": str(tmp_path)}},
        kernel_name="python3",
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert any(m["model_name"] == "ButtonModel" for m in state.values()), "the panel's static state is saved"
    assert not (tmp_path / "smoke" / "notebooks").exists(), "nothing may start without a click"
