"""Widgets: the command builders, the launcher on a real child process, and the results explorer on a
checkpoint written in the training stages' format (``fasterseg-checkpoint/1``, an untrained network)."""

from __future__ import annotations

import html
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
    cmd = widgets.pipeline_command("smoke", overrides, "", force=True, pdf=False)
    assert cmd[1:4] == ["-m", "fasterseg_core", "report"] and cmd[-2:] == ["--force", "--no-pdf"]
    assert "smoke" in widgets.profile_names()


def test_stage_command_creates_the_notebooks_folder_only_for_a_valid_stage(tmp_path):
    fresh = {"output_root": str(tmp_path / "fresh")}
    with pytest.raises(ConfigError, match="epochz"):
        widgets.stage_command("02_teacher", "smoke", {**fresh, "teacher.epochz": 1})
    with pytest.raises(FileNotFoundError, match="07_nothing"):
        widgets.stage_command("07_nothing", "smoke", fresh)
    assert not (tmp_path / "fresh").exists(), "a rejected command touches nothing"
    cmd = widgets.stage_command("04_student", "smoke", fresh)
    assert (tmp_path / "fresh" / "smoke" / "notebooks").is_dir()  # papermill can write the executed notebook
    assert Path(cmd[4]).parent == tmp_path / "fresh" / "smoke" / "notebooks"


# What papermill --progress-bar --log-output printed for a smoke 04_student run (its bar shares lines with
# the next cell's marker: tqdm draws with carriage returns).
PAPERMILL_LINES = [
    "Executing:   6%|\u258b         | 1/16 [00:00<00:12,  1.24cell/s]Executing Cell 2-----------------------",
    "Ending Cell 1------------------------------------------",
    "Executing notebook with kernel: python3",
    "train seed-1:   0%|          | 0/6 [00:00<?, ?it/s]",
    "epoch 1: loss 4.877, val mIoU 0.031",
    "<IPython.core.display.Image object>",
    "<Figure size 1000x340 with 2 Axes>",
    "Executing:  38%|\u2588\u2588\u2588\u258a      | 6/16 [00:19<00:36,  3.70s/cell]",
    "[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication ...",
]


def test_log_lines_lose_papermills_markers_and_only_its_bar_counts_cells():
    from fasterseg_core.widgets.launcher import clean_line

    cleaned = [clean_line(line) for line in PAPERMILL_LINES]
    assert [text for text, _ in cleaned if text] == ["epoch 1: loss 4.877, val mIoU 0.031"]
    assert [bar for _, bar in cleaned if bar] == [(1, 16, "00:00", "00:12"), (6, 16, "00:19", "00:36")]
    assert clean_line("train seed-1:  50%|#####     | 3/6 [00:02<00:02,  1.5it/s]")[1] is None


def test_launcher_follows_a_child_process_and_counts_stages():
    import ipywidgets as w

    log, bar, status = w.HTML(), w.IntProgress(), w.HTML()
    launcher = widgets.Launcher(log, bar, status)
    lines = ["[00_data] running 00_data.ipynb ...", "[00_data] ok in 1.0 s", "[01_search] complete, skipped"]
    script = "; ".join(f"print({line!r})" for line in lines)
    launcher.start([sys.executable, "-c", script], "test", total_stages=3)
    _wait_for(lambda: "complete" in status.value)
    assert "<b>complete</b>" in status.value and (bar.value, bar.max) == (3, 3)  # a clean exit fills the bar
    assert "[01_search] complete" in log.value and not launcher.running
    launcher.start([sys.executable, "-c", "import sys; sys.exit(3)"], "failing")
    _wait_for(lambda: "failed" in status.value)
    assert "failed (exit 3)" in status.value


def test_the_bar_counts_papermills_cells_with_an_eta_and_ignores_training_bars():
    import ipywidgets as w

    log, bar, status, eta = w.HTML(), w.IntProgress(), w.HTML(), w.HTML()
    launcher = widgets.Launcher(log, bar, status, eta)
    # the real lines, then a pause so that the position can be read before the clean exit fills the bar
    script = f"import sys, time; sys.stderr.write({chr(10).join(PAPERMILL_LINES)!r} + '\\n'); sys.stderr.flush(); " \
             "time.sleep(30)"
    launcher.start([sys.executable, "-c", script], "cells")
    try:
        _wait_for(lambda: "ETA" in eta.value)
        assert (bar.value, bar.max) == (6, 16), "the training bar's 0/6 must not reset papermill's 6/16"
        assert "cell 6/16" in eta.value and "00:19 elapsed" in eta.value and "ETA 00:36" in eta.value
        _wait_for(lambda: "epoch 1" in log.value)
        assert "Executing Cell" not in log.value and "IPython.core.display" not in log.value
    finally:
        launcher.stop()
    _wait_for(lambda: "stopped" in status.value)


def test_stop_ends_the_whole_process_group(tmp_path):
    """A child that started a grandchild in the same group: Stop ends both, and the status says so."""
    import ipywidgets as w
    import psutil

    log, bar, status = w.HTML(), w.IntProgress(), w.HTML()
    launcher = widgets.Launcher(log, bar, status)
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print('started', flush=True); time.sleep(60)")
    launcher.start([sys.executable, "-c", script], "sleeper")
    _wait_for(lambda: "started" in log.value)
    family = [psutil.Process(launcher.proc.pid), *psutil.Process(launcher.proc.pid).children(recursive=True)]
    assert len(family) == 2
    launcher.stop()
    _wait_for(lambda: "stopped" in status.value)
    assert "<b>stopped</b>" in status.value and not launcher.running
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "Stop must end the child's children"


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------
# the form


def test_every_config_key_has_a_widget_of_its_kind():
    import ipywidgets as w

    from fasterseg_core.config import RunConfig
    from fasterseg_core.schema import fields_of

    form = widgets.ConfigForm("smoke")
    keys = [f.key for f in fields_of(RunConfig)]
    assert list(form.fields) == [k for k in keys if k != "profile"]  # the profile has its own dropdown
    kind = {k: type(f.widget) for k, f in form.fields.items()}
    assert kind["data.dataset"] is w.Dropdown and form.fields["data.dataset"].widget.options == (
        "cityscapes", "camvid", "synthetic")
    assert kind["student.channels_last"] is w.Checkbox
    assert kind["student.epochs"] is w.BoundedIntText and form.fields["student.epochs"].widget.min == 1
    assert kind["student.momentum"] is w.BoundedFloatText and form.fields["student.momentum"].widget.max == 1.0
    assert kind["search.seed"] is w.IntText and kind["report.title"] is w.Text
    assert form.fields["teacher.crop_size_hw"].widget.value == "64, 128"  # smoke.yaml's [64, 128], as text
    note = form.fields["student.epochs"].note.value
    assert "profile 2" in note and "default 600" in note  # the profile's value and the default
    assert [form.tabs.get_title(i) for i in range(len(form.tabs.children))][:4] == ["run", "data", "model", "search"]
    assert form.overrides() == {} and form.cfg == load_config("smoke")


def test_an_edit_becomes_an_override_shown_live():
    form = widgets.ConfigForm("smoke")
    form.fields["student.epochs"].widget.value = 5
    form.fields["search.latency_lambda_init"].widget.value = 0.02
    form.fields["student.crop_size_hw"].widget.value = "96, 192"
    form.fields["latency.backends"].widget.value = "eager, ort"
    expected = {"search.latency_lambda_init": 0.02, "student.epochs": 5, "student.crop_size_hw": [96, 192],
                "latency.backends": ["eager", "ort"]}
    assert form.overrides() == expected
    assert form.cfg == load_config("smoke", expected) and form.cfg.student.crop_size_hw == (96, 192)
    assert json.loads(html.unescape(form.overrides_view.value.split("<pre", 1)[1].split(">", 1)[1][:-6])) == expected
    form.fields["student.epochs"].widget.value = 2  # back to the profile's value: no longer an override
    assert "student.epochs" not in form.overrides()


def test_initial_overrides_are_shown_as_edits():
    form = widgets.ConfigForm("smoke", {"student.epochs": 7, "seeds": [1, 2, 3]})
    assert form.fields["student.epochs"].widget.value == 7 and form.fields["seeds"].widget.value == "1, 2, 3"
    assert form.overrides() == {"seeds": [1, 2, 3], "student.epochs": 7}


def test_an_invalid_value_is_shown_at_its_field_and_blocks_launch(tmp_path):
    panel = widgets.control_panel("smoke", {"output_root": str(tmp_path)})
    form = panel.form
    form.fields["student.lr"].widget.value = 0.0  # the widget allows 0; the rule is lr > 0
    assert set(form.errors()) == {"student.lr"} and "must be > 0" in form.errors()["student.lr"]
    assert "student.lr: 0 is out of range" in form.fields["student.lr"].error.value  # next to the field
    assert form.tabs.get_title(6) == "student ⚠" and form.cfg is None
    assert panel.run_stage.disabled and panel.run_all.disabled
    panel.stage.value = "04_student"
    panel.run_stage.click()  # even a click that reaches the handler launches nothing
    assert panel.launcher.proc is None and "invalid" in panel.children[3].value
    assert not (tmp_path / "smoke").exists(), "nothing may be touched before the values are valid"

    form.fields["student.lr"].widget.value = 0.01
    form.fields["student.crop_size_hw"].widget.value = "64, 100"  # not a multiple of 32
    assert "multiples of 32" in form.errors()["student.crop_size_hw"]
    form.fields["student.crop_size_hw"].widget.value = "64, x"  # does not parse
    assert "comma-separated list of integers" in form.errors()["student.crop_size_hw"]
    form.fields["student.crop_size_hw"].widget.value = "64, 128"
    form.fields["seeds"].widget.value = "1, 1"  # a rule between values: named by its key
    assert set(form.errors()) == {"seeds"} and "distinct" in form.errors()["seeds"]
    form.fields["seeds"].widget.value = "12345"
    assert form.errors() == {} and not panel.run_stage.disabled and panel.children[3].value == "idle"


def test_a_profile_switch_reloads_every_field():
    form = widgets.ConfigForm("smoke")
    form.fields["student.epochs"].widget.value = 5
    form.profile.value = "camvid-cpu"
    camvid = load_config("camvid-cpu")
    assert form.overrides() == {} and form.cfg == camvid, "the edits of the old profile are dropped"
    assert form.fields["student.epochs"].widget.value == camvid.student.epochs
    assert form.fields["data.dataset"].widget.value == "camvid"
    assert f"profile {camvid.student.epochs}" in form.fields["student.epochs"].note.value
    assert "camvid-cpu.yaml" in form.overrides_view.value


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


@pytest.mark.slow
@pytest.mark.notebooks
def test_stop_interrupts_a_real_stage_and_its_kernel(tmp_path):
    """04_student under papermill, stopped during training: the kernel (in a session of its own) gets the
    signal too, so the stage's run records ``interrupted``, and no process is left behind."""
    import ipywidgets as w
    import psutil

    from fasterseg_core.runs import load_manifest

    overrides = {"output_root": str(tmp_path), "data.synthetic_hw": [64, 128], "data.synthetic_train_images": 4,
                 "data.synthetic_eval_images": 2, "student.epochs": 500, "student.iters_per_epoch": 1,
                 "student.batch_size": 2, "student.crop_size_hw": [64, 128], "seeds": [1]}
    cfg = load_config("smoke", overrides)
    log, bar, status, eta = w.HTML(), w.IntProgress(), w.HTML(), w.HTML()
    launcher = widgets.Launcher(log, bar, status, eta)
    progress_file = cfg.output_dir / "notebooks" / ".progress-04_student.json"
    launcher.start(widgets.stage_command("04_student", "smoke", overrides), "04_student", progress_file=progress_file)
    try:
        _wait_for(lambda: "train seed-1" in eta.value, timeout=240)  # the training bar reports its position
    finally:
        family = [psutil.Process(launcher.proc.pid), *psutil.Process(launcher.proc.pid).children(recursive=True)]
        launcher.stop()
    assert len(family) >= 2, "papermill and its kernel"
    assert 0 < bar.value < bar.max, "papermill's cell count moved and had not reached the end"
    _wait_for(lambda: "stopped" in status.value)
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "the kernel must not outlive Stop"
    assert load_manifest(cfg, "04_student", 1)["status"] == "interrupted"
    assert load_manifest(cfg, "04_student")["status"] == "interrupted"
