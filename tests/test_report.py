"""The pipeline driver and the rendered report: merging and table of contents, failure and skip handling,
the command line, and (marked ``browser``) the smoke report opened offline in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from fasterseg_core import report
from fasterseg_core.cli import main as cli_main
from fasterseg_core.config import load_config
from fasterseg_core.pipeline import StageResult, build_report
from fasterseg_core.report import render_report

REPO = Path(__file__).resolve().parents[1]


def _stage_notebook(path: Path, stage: str, body: str) -> Path:
    """A tiny stage notebook that records its run like a real one and then runs ``body``."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell(
        'profile = "smoke"\noverrides = {}\nhardware_tag = ""', metadata={"tags": ["parameters"]}
    )
    setup = (
        "from fasterseg_core.config import load_config\nfrom fasterseg_core.lifecycle import start_run\n"
        f'cfg = load_config(profile, overrides)\nrun = start_run(cfg, "{stage}", hardware_tag=hardware_tag)'
    )
    nb.cells = [
        new_markdown_cell(f"# Stage {stage}\n\n## Sanity checks"),
        params,
        new_code_cell(setup),
        new_code_cell(body),
        new_code_cell("run.finish()"),
    ]
    nbformat.write(nb, path / f"{stage}.ipynb")
    return path / f"{stage}.ipynb"


def _executed_notebook(path: Path, title: str, error: bool = False) -> str:
    """A notebook as papermill leaves it: parameter cells, a heading shared with other stages, outputs."""
    nb = new_notebook()
    nb.cells = [
        new_markdown_cell(f"# {title}\n\nSome $x^2$ math."),
        new_code_cell('profile = "smoke"', metadata={"tags": ["parameters"]}),
        new_code_cell('profile = "camvid-cpu"', metadata={"tags": ["injected-parameters"]}),
        new_markdown_cell("## Sanity checks"),
        new_code_cell("print('hi')", outputs=[new_output("stream", name="stdout", text="hi\n")]),
    ]
    if error:
        nb.cells.append(
            new_code_cell(
                "1/0",
                outputs=[new_output("error", ename="ZeroDivisionError", evalue="x", traceback=["boom"])],
            )
        )
    nbformat.write(nb, path)
    return str(path)


def test_render_merges_stages_with_unique_anchors_and_marks_failures(tmp_path):
    cfg = load_config("smoke", {"output_root": str(tmp_path / "out")})
    results = [
        StageResult("00_data", "skipped", notebook=_executed_notebook(tmp_path / "a.ipynb", "Data")),
        StageResult("01_search", "failed", 2.0, "ZeroDivisionError: x", _executed_notebook(tmp_path / "b.ipynb", "Search", True)),
        StageResult("02_teacher", "not-run", error="an earlier stage failed"),
    ]
    record = {"hardware_tag": "cpu-test", "overrides": {}, "git": {"sha": None, "dirty": None}}
    folder = render_report(cfg, [asdict(r) for r in results], record, pdf=False)
    html = (folder / "report.html").read_text()

    ids = re.findall(r' id="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "duplicate anchors"
    toc = re.search(r'<nav class="report-toc">(.*?)</nav>', html, re.DOTALL).group(1)
    targets = re.findall(r'href="#([^"]+)"', toc)
    # the appendix heading + 2 titles + 2 "Sanity checks" (each has output under it: not an empty heading)
    assert len(targets) == 5 and all(t in ids for t in targets)
    assert targets[0] == "00_data-Appendix:-the-stage-notebooks"
    assert "report-failure" in html and "Stage 01_search failed" in html and "report-error" in html
    assert re.search(r'report-status-not-run">not-run</td>', html)
    assert "camvid-cpu" not in html  # parameter cells are left out when code is hidden
    assert "print(" not in html and "hi" in html  # code hidden, outputs shown
    if (report.js_modules_dir() / "mathjax").exists():  # `make setup` ran: everything offline
        assert 'src="vendor/mathjax/MathJax.js' in html and (folder / "vendor" / "require.js").exists()
        assert re.findall(r'<script[^>]*src="https?:', html) == []


def test_cli_rejects_bad_overrides_before_running_anything(tmp_path, capsys):
    assert cli_main(["report", "--profile", "smoke", "--overrides", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err
    out = json.dumps({"output_root": str(tmp_path), "teacher.epochz": 1})
    assert cli_main(["report", "--profile", "smoke", "--overrides", out, "--no-pdf"]) == 2
    assert "epochz" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.notebooks
def test_failed_stage_stops_the_pipeline_and_complete_stages_are_skipped(tmp_path):
    notebooks, overrides = tmp_path / "notebooks", {"output_root": str(tmp_path / "out")}
    notebooks.mkdir()
    _stage_notebook(notebooks, "00_data", "print('data')")
    _stage_notebook(notebooks, "01_search", "1 / 0")
    _stage_notebook(notebooks, "02_teacher", "print('teacher')")

    record = build_report("smoke", overrides, pdf=False, folder=notebooks)
    assert [(s["stage"], s["status"]) for s in record["stages"]] == [
        ("00_data", "ok"), ("01_search", "failed"), ("02_teacher", "not-run"),
    ]
    assert record["stages"][1]["error"] == "ZeroDivisionError: division by zero"
    manifest = json.loads((tmp_path / "out" / "smoke" / "01_search" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == "ZeroDivisionError: division by zero"
    assert manifest["allocator"] == "pinned"  # the kernel started with the driver's MALLOC_* settings
    saved = json.loads((tmp_path / "out" / "smoke" / "pipeline.json").read_text())
    assert saved["stages"] == record["stages"] and saved["report"]["html"]
    html = (tmp_path / "out" / "smoke" / "report" / "report.html").read_text()
    assert "Stage 01_search failed" in html and "Stage 00_data" in html

    _stage_notebook(notebooks, "01_search", "print('fixed')")
    record = build_report("smoke", overrides, pdf=False, folder=notebooks)
    assert [s["status"] for s in record["stages"]] == ["skipped", "ok", "ok"]


def _pdf_words(pdf: Path) -> list[tuple[float, float, float, str]]:
    """Every word poppler finds in the PDF: (page width, xMin, xMax, text). What a page clips is not there."""
    bbox = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    words = []
    for page in re.finditer(r'<page width="([\d.]+)"[^>]*>(.*?)</page>', bbox, re.DOTALL):
        for w in re.finditer(r'<word xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)" yMax="[\d.]+">([^<]*)</word>',
                             page.group(2)):
            words.append((float(page.group(1)), float(w.group(1)), float(w.group(2)), w.group(3)))
    return words


@pytest.mark.browser
@pytest.mark.skipif(
    report.find_chromium() is None or shutil.which("pdftotext") is None, reason="needs chromium, poppler"
)
def test_wide_tables_fit_the_printed_page(tmp_path):
    """The claims ledger (long text in 8 columns) and a 24-column numeric table, printed: every cell is on the
    page (JupyterLab's sideways scrolling used to cut both at the page edge, with a scrollbar)."""
    import pandas as pd

    from fasterseg_core.analysis.exhibit import Exhibit

    why = "the interval contains 0 and equivalence is not shown at this number of seeds, TOST p = 0.21 lastwordwhy"
    ledger = pd.DataFrame([{"claim": "At 100 epochs the student trained without the teacher is on par " * 2,
                            "source": "2022 study, Results text", "published": "60.4 % (study Table 1)",
                            "tested here": "test mIoU, distilled − scratch student (points, paired by seed)",
                            "ours: mean [95 % CI]": "+0.7 [−2.3, 3.6] (n = 3)", "per seed": "0.512, 1.23, 0.3",
                            "verdict": "inconclusive", "why": why}] * 2)
    wide = pd.DataFrame([[i * j * 1.2345 for j in range(24)] for i in range(4)], columns=[f"col{j}" for j in range(24)])
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# Wide tables"),
                new_code_cell("ledger", outputs=[new_output("display_data", data={
                    "text/html": Exhibit("Table 5", "Claims ledger", "", ledger).to_html(), "text/plain": ""})]),
                new_code_cell("wide", outputs=[new_output("execute_result", execution_count=1, data={
                    "text/html": wide.to_html(), "text/plain": ""})])]
    nbformat.write(nb, tmp_path / "wide.ipynb")
    cfg = load_config("smoke", {"output_root": str(tmp_path / "out")})
    result = {"stage": "06_analysis", "status": "ok", "error": "", "notebook": str(tmp_path / "wide.ipynb"), "seconds": 1}
    folder = render_report(cfg, [result], {"hardware_tag": "t", "overrides": {}, "git": {}}, pdf=True)

    words = _pdf_words(folder / "report.pdf")
    texts = {w[3] for w in words}
    assert {"col23", "lastwordwhy", "inconclusive", "(n"} <= texts, "a table was cut at the page edge"
    margin = 15 / 25.4 * 72  # the template's @page margin, in points
    outside = [w for w in words if w[2] > w[0] - margin + 2 or w[1] < margin - 2]
    assert outside == [], outside[:5]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    report.find_chromium() is None or shutil.which("pdftoppm") is None, reason="needs chromium, poppler"
)
def test_smoke_report_renders_offline_in_a_browser_and_as_pdf(smoke_pipeline, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    assert smoke_pipeline.returncode == 0, smoke_pipeline.stdout + smoke_pipeline.stderr
    assert "7 of 7 stages to run" in smoke_pipeline.stdout  # the plan, with an overall ETA where a record exists
    out = smoke_pipeline.output_root
    pipeline = json.loads((out / "smoke" / "pipeline.json").read_text())
    assert pipeline["stages"] and all(s["status"] == "ok" for s in pipeline["stages"])
    html, pdf = out / "smoke" / "report" / "report.html", out / "smoke" / "report" / "report.pdf"

    online_requests, failed_requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=report.find_chromium(), args=list(report.CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1000, "height": 1200})
        page.route(
            re.compile(r"^https?://"),
            lambda route: (online_requests.append(route.request.url), route.abort()),
        )
        page.on("requestfailed", lambda request: failed_requests.append(request.url))
        page.goto(html.as_uri())
        page.wait_for_load_state("networkidle")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        errors = page.locator(".report-error").count()
        stages = page.locator(".report-front td").all_inner_texts()
        scripts = page.evaluate("[typeof window.MathJax, typeof window.require]")
        # 06_analysis: the study's Table 1, Figure 1 and Table 2 as rows of cell texts (and Figure 1's image)
        exhibits = {
            label: page.eval_on_selector_all(
                f'[data-exhibit="{label}"] tr',
                "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))",
            )
            for label in ("Table 1", "Figure 1", "Table 2")
        }
        figure1 = page.eval_on_selector_all(
            '[data-exhibit="Figure 1"] img', "els => els.map(e => e.naturalWidth)"
        )
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert online_requests == [] and failed_requests == [], "the report must work offline"
    assert len(images) >= 3 and all(complete and width > 0 for complete, width in images), images
    assert errors == 0
    assert "00_data" in stages and "ok" in stages
    assert scripts == ["object", "function"]  # vendored MathJax and require.js loaded from report/vendor
    _check_analysis_exhibits(exhibits, figure1)

    subprocess.run(["pdftoppm", "-png", "-r", "40", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 2
    coloured = []
    for png in pages:
        rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
        assert (rgb.min(axis=2) < 200).mean() > 0.005, f"{png.name} is blank"
        coloured.append(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).mean())
    assert max(coloured) > 0.05, "no page shows a coloured figure"


def _check_analysis_exhibits(exhibits: dict[str, list[list[str]]], figure1: list[int]) -> None:
    """Tables 1 and 2 and Figure 1 of the smoke report hold this run's numbers (every stage ran)."""

    def number(text: str) -> bool:
        return re.fullmatch(r"-?\d+(\.\d+)?", text.strip()) is not None

    for label, rows in exhibits.items():
        assert len(rows) > 1, f"{label} is missing from the report"
    header, *rows = exhibits["Table 1"]
    ours = [dict(zip(header, r)) for r in rows if r[0].startswith("this run,")]
    assert len(ours) == 6, "Table 1: best and last rows of teacher, distilled and trained student"
    assert all(number(r["Validation mIoU (%)"]) and number(r["Mean pixel acc (%)"]) for r in ours), ours
    header, *rows = exhibits["Table 2"]
    ours = [dict(zip(header, r)) for r in rows if r[0] == "ours"]
    assert ours and any(number(r["FPS"]) for r in ours) and all(number(r["params (M)"]) for r in ours), ours
    header, *rows = exhibits["Figure 1"]
    assert rows and all(any(number(c) for c in r[1:]) or "—" in r for r in rows), rows
    assert figure1 and all(width > 0 for width in figure1), "Figure 1's image did not load"


def test_the_last_line_says_where_to_read_how_long_it_took_and_the_verdicts(tmp_path):
    from fasterseg_core.pipeline import headline

    (tmp_path / "06_analysis").mkdir()
    claims = [{"verdict": v} for v in ("inconclusive", "on par", "inconclusive", "supported")]
    (tmp_path / "06_analysis" / "claims.json").write_text(json.dumps({"claims": claims}))
    record = {"seconds": 750.0, "report": {"html": "r.html", "pdf": "out/report.pdf"},
              "stages": [{"status": "ok"}] * 5 + [{"status": "skipped"}] * 2}
    assert headline(record, tmp_path) == (
        "report: out/report.pdf (page 1: the Reproducibility Summary) · 7 stages in 12.5 min (5 ran, 2 skipped) · "
        "claims: 2 inconclusive, 1 on par, 1 supported"
    )
    assert headline({"stages": [{"status": "failed"}]}, tmp_path / "none").startswith(
        "report: no report rendered (page 1: the Reproducibility Summary) · 1 stages in 0.0 min (1 failed)"
    )


def test_the_analysis_comes_first_and_empty_headings_are_dropped(tmp_path):
    """The report is a document, then its appendix: 06_analysis right after the front page, the stage notebooks
    after it, and a heading over cells that show nothing (asserts under "Sanity checks") left out."""
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# Teacher"), new_code_cell("x", outputs=[new_output("stream", name="stdout", text="1\n")]),
                new_markdown_cell("## Sanity checks"), new_code_cell("assert True")]
    nbformat.write(nb, tmp_path / "t.ipynb")
    analysis = _executed_notebook(tmp_path / "a.ipynb", "Analysis")
    results = [{"stage": "02_teacher", "status": "ok", "error": "", "notebook": str(tmp_path / "t.ipynb")},
               {"stage": "06_analysis", "status": "ok", "error": "", "notebook": analysis}]
    merged = report.merge_notebooks(results, show_code=False)
    text = [c.source for c in merged.cells if c.cell_type == "markdown"]
    assert text[0] == '<div class="report-stage" id="stage-06_analysis"></div>' and text[1].startswith("# Analysis")
    appendix = next(i for i, t in enumerate(text) if t.startswith("# Appendix: the stage notebooks"))
    assert text[appendix - 1] == '<div class="report-stage" id="stage-02_teacher"></div>'
    assert "# Teacher" in text and text.count("## Sanity checks") == 1  # the analysis' one shows output; not 02's
