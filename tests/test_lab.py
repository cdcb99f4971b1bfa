"""The notebook experience as a person has it: JupyterLab in headless Chromium, driven by playwright.

The test starts JupyterLab itself (a free local port, a random token, stopped afterwards) on copies of the
project (``params/`` and ``notebooks/``) in a temporary folder, so that every output goes there and never
into the repository's ``outputs/``; each copy is its own project (``project_root`` finds it from the
kernel's working directory, ``notebooks/``).

* ``control.ipynb``: run all cells, change the student's epochs and one search value (λ's initial value) in
  the form, see the overrides, launch the smoke ``04_student`` stage, watch the progress bar reach the end
  and the status say ``complete`` (and the run's manifest agree).
* ``06_analysis.ipynb`` on the smoke pipeline's outputs: run it, pick another image in the results
  explorer, and see the prediction change.

Screenshots of every step go to ``$FASTERSEG_TEST_ARTIFACTS/<test>/`` (else pytest's temporary folder); the
folder is printed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fasterseg_core import report

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(report.find_chromium() is None, reason="needs chromium (make system-packages)"),
]
STARTUP_S = 120  # JupyterLab's first start builds nothing, but a busy 2-core machine is slow
STAGE_S = 600  # the smoke 04_student with the test's overrides takes about half a minute


@dataclass
class Lab:
    """A running JupyterLab: its URL with the token, and the folder it serves."""

    url: str
    token: str
    root: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_settings(folder: Path) -> None:
    """Lab settings for a test: every cell rendered (no windowing, so each output is in the page), and no
    news or update checks (no network; no notification over the notebook)."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """JupyterLab on a temporary folder, as ``make lab`` starts it (as root too), stopped at the end."""
    pytest.importorskip("jupyterlab", reason="needs jupyterlab (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("lab")
    home = root / ".jupyter-test"
    _jupyter_settings(home / "settings")
    token, port = secrets.token_hex(16), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "FASTERSEG_ROOT"}  # each project is found from its cwd
    env |= {"JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"),
            "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0"]
    log = (root / "jupyter.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert server.poll() is None, f"JupyterLab exited: {(root / 'jupyter.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"JupyterLab did not answer within {STARTUP_S} s"
            time.sleep(0.5)
        yield Lab(url, token, root)
    finally:
        server.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        log.close()


def make_project(root: Path, name: str, profile_overrides: dict[str, Any] | None = None) -> Path:
    """A copy of the project (profiles and notebooks) under ``root/name``; ``profile_overrides`` are written
    into its ``params/smoke.yaml`` (dotted keys), so that notebooks run as they are with the same config."""
    project = root / name
    shutil.copytree(REPO / "params", project / "params")
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    if profile_overrides:
        path = project / "params" / "smoke.yaml"
        tree = yaml.safe_load(path.read_text())
        for dotted, value in profile_overrides.items():
            *sections, key = dotted.split(".")
            node = tree
            for s in sections:
                node = node.setdefault(s, {})
            node[key] = value
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return project


def copy_outputs(source: Path, dest: Path) -> None:
    """The smoke pipeline's outputs for another project: hard links (the search checkpoint alone is ~2 GB;
    the package replaces files atomically, so the originals stay as they are), but ``06_analysis/``, which
    the notebook rewrites, copied."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    top_only = lambda folder, names: ["06_analysis"] if Path(folder) == source else []
    shutil.copytree(source, dest, copy_function=link, ignore=top_only)
    shutil.copytree(source / "06_analysis", dest / "06_analysis")


@pytest.fixture
def artifacts(request, tmp_path) -> Path:
    base = os.environ.get("FASTERSEG_TEST_ARTIFACTS")
    folder = Path(base) / request.node.name if base else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of {request.node.name}: {folder}")
    return folder


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=report.find_chromium(), args=list(report.CHROMIUM_ARGS))
        try:
            yield b
        finally:
            b.close()


class Notebook:
    """One notebook open in JupyterLab, with the few gestures a person makes."""

    def __init__(self, browser: Any, lab: Lab, path: str, shots: Path, height: int = 1100) -> None:
        self.page = browser.new_page(viewport={"width": 1500, "height": height})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.shots, self.n = shots, 0
        # A workspace of its own, reset: JupyterLab restores the tabs of the last page otherwise (the control
        # notebook of the previous test), and Run ▸ Run All Cells ran that one in two CI runs.
        workspace = re.sub(r"\W", "-", path)
        self.page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{path}?reset&token={lab.token}")
        # the kernel is up when the status bar says "Python 3 (ipykernel) | Idle"
        self.page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for(
            timeout=STARTUP_S * 1000
        )
        self.page.keyboard.press("Control+b")  # the file browser closed: the notebook uses the width
        tabs = self.page.locator(".jp-NotebookPanel")
        _until(lambda: tabs.count() == 1, f"{path} as the only open notebook")

    def shot(self, what: str, target: Any = None) -> Path:
        """A screenshot of the page (or of one element), numbered in the order taken."""
        self.n += 1
        path = self.shots / f"{self.n:02d}-{what}.png"
        (target or self.page).screenshot(path=str(path))
        return path

    def run_all(self, timeout_s: float) -> None:
        """Run ▸ Run All Cells, then wait until every code cell shows its execution count (``[n]``).

        Only this notebook's cells count (its panel is the one shown). A menu click that JupyterLab drops
        (no cell starts within 15 s) is repeated once. A run that stops before the end (an error, a dead
        kernel) fails with the cells' prompts, the kernel's status and any traceback or dialog on the page."""
        prompts = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt")

        def states() -> list[str]:  # per code cell: "done", "running" ([*]) or "idle" ([ ])
            texts = prompts.all_inner_texts()
            return ["running" if "[*]" in t else "done" if re.search(r"\[\d+\]", t) else "idle" for t in texts]

        for _ in range(2):
            self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
            self.page.locator(".lm-Menu-item", has_text=re.compile("^Run All Cells$")).click()
            until = time.monotonic() + 15.0
            while all(s == "idle" for s in states()) and time.monotonic() < until:
                time.sleep(0.5)
            if any(s != "idle" for s in states()):
                break
        deadline, quiet_since, seen, t0 = time.monotonic() + timeout_s, None, None, time.monotonic()
        while True:
            now = states()
            if now != seen:  # the timeline, printed with the test's output when it fails
                print(f"{time.monotonic() - t0:6.1f} s  " + "".join({"done": "#", "running": "*"}.get(s, ".") for s in now))
                seen = now
            if now and all(s == "done" for s in now):
                break
            # nothing running but cells left unrun: give the queue 10 s (between two cells) before calling it stopped
            quiet_since = (quiet_since or time.monotonic()) if "running" not in now else None
            stopped = quiet_since is not None and time.monotonic() - quiet_since > 10.0
            if stopped or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        errors = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t]
        assert not tracebacks, tracebacks[0][-3000:]
        now = states()
        if not (now and all(s == "done" for s in now)):
            self.shot("not-finished")
            kernel = self.page.locator(".jp-StatusBar-TextItem", has_text="|").all_inner_texts()
            dialogs = self.page.locator(".jp-Dialog").all_inner_texts()
            raise AssertionError(f"the notebook did not run to its end: cells {now}, kernel {kernel}, "
                                 f"dialogs {dialogs}")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _until(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _field(panel: Any, tab: str, key: str) -> Any:
    """The input of a config key in the control panel's form (its tab opened first)."""
    panel.locator(".lm-TabBar-tabLabel", has_text=re.compile(f"^{tab}$")).click()
    label = re.compile(f"^{re.escape(key.split('.')[-1])}$")
    row = panel.locator(".widget-inline-hbox:visible", has=panel.page.locator("label", has_text=label))
    return row.locator("input").first


def test_control_panel_tunes_runs_and_completes_a_stage(lab, browser, artifacts):
    project = make_project(lab.root, "control")
    nb = Notebook(browser, lab, "control/notebooks/control.ipynb", artifacts, height=2300)  # the whole panel
    nb.shot("opened")
    nb.run_all(timeout_s=STARTUP_S)
    page = nb.page
    panel = page.locator(".jp-OutputArea-output", has=page.locator("button", has_text="Run stage"))
    panel.wait_for()
    nb.shot("panel", panel)

    # the form: the student's epochs and λ's initial value; one iteration and one seed keep it short
    edits = {("student", "student.epochs"): "1", ("student", "student.iters_per_epoch"): "1",
             ("search", "search.latency_lambda_init"): "0.02", ("run", "seeds"): "12345"}
    for (tab, key), value in edits.items():
        box = _field(panel, tab, key)
        box.fill(value)
        box.press("Tab")  # number and text boxes send their value when they lose focus
    expected = {"seeds": [12345], "search.latency_lambda_init": 0.02, "student.epochs": 1,
                "student.iters_per_epoch": 1}
    overrides = panel.locator("pre").first  # the live override dict, above the log
    _until(lambda: _json(overrides.inner_text()) == expected, f"the overrides {expected}")
    _field(panel, "student", "student.epochs")  # back on the student tab for the picture
    nb.shot("edited", panel)

    # an invalid value: its error beside the field, the run buttons disabled
    lr = _field(panel, "student", "student.lr")
    lr.fill("0")
    lr.press("Tab")
    error = panel.locator("text=student.lr: 0 is out of range")
    error.wait_for(timeout=30_000)
    assert panel.locator("button", has_text="Run stage").is_disabled()
    nb.shot("invalid", panel)
    lr.fill("0.01")
    lr.press("Tab")
    error.wait_for(state="detached", timeout=30_000)

    stage = panel.locator(".widget-dropdown", has=page.locator("label", has_text=re.compile("^stage$")))
    stage.locator("select").select_option("04_student")
    run = panel.locator("button", has_text="Run stage")
    assert run.is_enabled()
    run.click()
    status = panel.locator(".widget-html", has_text=re.compile(r"^(running|complete|failed|stopped)"))
    status.first.wait_for(timeout=30_000)
    # while it runs: papermill's cells and the stage's own bar (training, then evaluation) beside the bar
    eta = panel.locator(".widget-html", has_text=re.compile(r"^cell \d+/\d+ .*\| "))
    done = panel.locator(".widget-html b", has_text=re.compile(r"^(complete|failed|stopped)"))
    _until(lambda: eta.count() or done.count(), "the stage's progress", STAGE_S)
    nb.shot("running", panel)
    done.first.wait_for(timeout=STAGE_S * 1000)
    nb.shot("complete", panel)
    word = done.first.inner_text()
    assert word == "complete", panel.locator("pre").last.inner_text()[-3000:]
    width = panel.locator(".widget-hprogress .progress-bar").evaluate("el => el.style.width")
    assert width == "100%", f"the progress bar ends at {width}"
    cells = panel.locator(".widget-html", has_text=re.compile(r"^cell ")).first.inner_text()
    assert re.fullmatch(r"cell (\d+)/\1 · [\d:]+ elapsed · ETA 00:00", cells.strip()), cells  # the last cell ran
    log = panel.locator("pre").last.inner_text()
    assert "epoch 1: loss" in log and "Executing Cell" not in log and "IPython.core.display" not in log
    manifest = json.loads((project / "outputs" / "smoke" / "04_student" / "manifest.json").read_text())
    assert manifest["status"] == "complete"  # the panel's word is the run's
    config = yaml.safe_load((project / "outputs" / "smoke" / "04_student" / "config.yaml").read_text())
    assert config["student"]["epochs"] == 1 and config["seeds"] == [12345]
    assert (project / "outputs" / "smoke" / "notebooks" / "04_student.ipynb").exists()
    assert nb.errors == [], nb.errors


def test_analysis_explorer_shows_another_image(lab, browser, artifacts, smoke_pipeline):
    assert smoke_pipeline.returncode == 0, smoke_pipeline.stdout[-3000:] + smoke_pipeline.stderr[-3000:]
    same = {k: v for k, v in smoke_pipeline.overrides.items() if k != "output_root"}
    project = make_project(lab.root, "analysis", same)  # the pipeline's config: its stages are complete
    copy_outputs(smoke_pipeline.profile_dir, project / "outputs" / "smoke")
    nb = Notebook(browser, lab, "analysis/notebooks/06_analysis.ipynb", artifacts)
    nb.shot("opened")
    nb.run_all(timeout_s=STAGE_S)
    nb.shot("ran")  # the last cell (sanity checks) ran without an error
    page = nb.page
    nb.shot("table-1", page.locator(".jp-OutputArea-output", has_text="Table 1. ").first)
    status = (project / "outputs" / "smoke" / "06_analysis" / "tables" / "stages.csv").read_text()
    assert status.count(",complete,") == 6, status  # it read every stage of the pipeline as complete
    explorer = page.locator(".jp-OutputArea-output", has=page.locator(".widget-slider"))
    explorer.scroll_into_view_if_needed()
    image = explorer.locator("img").first
    image.wait_for()
    before = image.get_attribute("src")
    nb.shot("explorer-image-0", explorer)
    explorer.locator(".widget-slider .noUi-handle").focus()
    page.keyboard.press("ArrowRight")  # the next image
    page.wait_for_function("([el, src]) => el.querySelector('img') && el.querySelector('img').src !== src",
                           arg=[explorer.element_handle(), before], timeout=60_000)
    after = explorer.locator("img").first.get_attribute("src")
    assert after != before and after.startswith("data:image/png")
    assert "image 1" in explorer.inner_text()
    nb.shot("explorer-image-1", explorer)
    assert nb.errors == [], nb.errors
