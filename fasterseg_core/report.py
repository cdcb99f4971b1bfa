"""The report: the stages' executed notebooks → one HTML → one PDF (rendering only; the pipeline that
runs the stages is :mod:`fasterseg_core.pipeline`).

Rendering follows the toolchain notes (nbconvert's lab exporter, headless Chromium's print): the executed
notebooks are merged into one notebook, converted once with nbconvert and the ``report`` template shipped
in this package (A4, code hidden unless ``report.show_code``), given a front page (pipeline status, table
of contents) and printed once by headless Chromium. The widget, require.js and MathJax scripts ``make
setup`` installs under ``build/node_modules`` are copied to ``report/vendor/`` so the HTML works offline.
"""

from __future__ import annotations

import copy
import datetime as dt
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import nbformat

from .config import RunConfig, project_root
from .storage import save_text

_WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
_FRONT_MARKER = "<!--fasterseg-report-front-->"
_PARAMETER_TAGS = {"parameters", "injected-parameters"}
# Where each offline script comes from (npm package files) and goes (relative to report/vendor/).
_VENDOR_FILES = {
    "require.js": "requirejs/require.js",
    "html-manager": "@jupyter-widgets/html-manager/dist",
    "mathjax": "mathjax",
}
_MATHJAX_PARTS = ("MathJax.js", "config", "extensions", "fonts", "jax", "localization")
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Quiet, offline, sandbox-free headless Chromium (the sandbox needs user namespaces CI lacks).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


def install_hint() -> str:
    """How to get headless Chromium and poppler."""
    return ("`make setup` installs it when run as root; otherwise: "
            "sudo apt-get install -y --no-install-recommends chromium poppler-utils fonts-liberation")


def js_modules_dir() -> Path:
    """``build/node_modules`` of the project folder, where ``make setup`` installs the offline scripts."""
    return project_root() / "build" / "node_modules"


class ReportError(RuntimeError):
    """The report could not be rendered (missing tool, failed conversion or print)."""


# ---------------------------------------------------------------------------------------------------
# one notebook from many, then HTML


MAIN_STAGE = "06_analysis"  # the results: first in the document; the other stages follow as its appendix


def document_order(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stages as the report reads: the analysis (Reproducibility Summary's exhibits, ledger, figures) first,
    then the stage notebooks in pipeline order as the appendix."""
    return sorted(results, key=lambda r: r["stage"] != MAIN_STAGE)


def _empty_headings(cells: list[Any]) -> set[int]:
    """Indices of markdown cells that are only headings over nothing shown: every code cell up to the next
    markdown cell has no output (e.g. "Sanity checks" over asserts), so with code hidden the heading is empty."""
    empty = set()
    for i, cell in enumerate(cells):
        lines = [x for x in cell.source.splitlines() if x.strip()] if cell.cell_type == "markdown" else []
        if not lines or not all(x.lstrip().startswith("#") for x in lines):
            continue
        following = []
        for nxt in cells[i + 1:]:
            if nxt.cell_type == "markdown":
                break
            following.append(nxt)
        if all(c.cell_type != "code" or not c.get("outputs") for c in following):
            empty.add(i)
    return empty


def merge_notebooks(results: list[dict[str, Any]], show_code: bool) -> nbformat.NotebookNode:
    """One notebook of every executed stage, each opened by a stage marker (and a failure banner): the analysis
    first, then an appendix of the stage notebooks (:func:`document_order`).

    ``results``: the pipeline's per-stage records (``stage``, ``status``, ``error``, ``notebook``).

    Widget states are merged (model ids are unique per kernel session); the parameters cells are
    dropped when code is hidden, since they would render as empty boxes, and so are headings over nothing shown.
    """
    merged = nbformat.v4.new_notebook()
    widget_state: dict[str, Any] = {}
    appendix = False
    for result in document_order(results):
        if not result["notebook"]:
            continue
        nb = nbformat.read(result["notebook"], as_version=4)
        for key in ("kernelspec", "language_info"):
            if key in nb.metadata and key not in merged.metadata:
                merged.metadata[key] = nb.metadata[key]
        widget_state.update(nb.metadata.get("widgets", {}).get(_WIDGET_STATE_MIME, {}).get("state", {}))
        marker = f'<div class="report-stage" id="stage-{result["stage"]}"></div>'
        if result["status"] == "failed":
            marker += (
                f'\n<div class="report-failure"><b>Stage {result["stage"]} failed</b>: '
                f"{html.escape(result['error'])}<br>The error is shown below where it happened; "
                "later stages were not run.</div>"
            )
        merged.cells.append(nbformat.v4.new_markdown_cell(marker))
        if result["stage"] != MAIN_STAGE and not appendix:  # on the first appendix stage's page
            appendix = True
            merged.cells.append(nbformat.v4.new_markdown_cell(
                "# Appendix: the stage notebooks\n\nEach stage as it ran, in pipeline order: its configuration, "
                "progress, tables and figures. The results above are built from their artifacts."))
        empty = set() if show_code else _empty_headings(nb.cells)
        for i, cell in enumerate(nb.cells):
            if not show_code and (_PARAMETER_TAGS & set(cell.metadata.get("tags", [])) or i in empty):
                continue
            cell = copy.deepcopy(cell)
            cell["id"] = f"{result['stage']}-{i}"  # cell ids must stay unique across notebooks
            merged.cells.append(cell)
    if widget_state:
        merged.metadata["widgets"] = {
            _WIDGET_STATE_MIME: {"version_major": 2, "version_minor": 0, "state": widget_state}
        }
    return merged


def _vendor_assets(report_dir: Path) -> bool:
    """Copy the offline scripts next to the report; False (CDN fallback) when npm never installed them."""
    vendor = report_dir / "vendor"
    if (vendor / ".complete").exists():
        return True
    modules = js_modules_dir()
    sources = {name: modules / rel for name, rel in _VENDOR_FILES.items()}
    if not all(path.exists() for path in sources.values()):
        print(
            f"warning: offline report scripts missing under {modules} (run `make setup`); "
            "widgets and math in report.html will load from public CDNs",
            file=sys.stderr,
        )
        return False
    vendor.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sources["require.js"], vendor / "require.js")
    shutil.copytree(sources["html-manager"], vendor / "html-manager", dirs_exist_ok=True)
    for part in _MATHJAX_PARTS:
        src, dst = sources["mathjax"] / part, vendor / "mathjax" / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (vendor / ".complete").touch()
    return True


def to_html(nb: nbformat.NotebookNode, show_code: bool, vendored: bool) -> str:
    """Convert with nbconvert's lab exporter and the ``templates/report`` template."""
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    c = Config()
    c.HTMLExporter.extra_template_basedirs = [str(resources.files("fasterseg_core") / "templates")]
    c.HTMLExporter.template_name = "report"
    c.HTMLExporter.exclude_input = not show_code
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    if vendored:
        c.HTMLExporter.require_js_url = "vendor/require.js"
        c.HTMLExporter.widget_renderer_url = "vendor/html-manager/embed-amd.js"
        c.HTMLExporter.mathjax_url = "vendor/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
    body, _ = HTMLExporter(config=c).from_notebook_node(nb)
    return body


_ANCHORS = re.compile(
    r'<div class="report-stage" id="stage-(?P<stage>[^"]+)"></div>'
    r'|<h(?P<level>[12]) id="(?P<id>[^"]+)">(?P<text>.*?)<a class="anchor-link" href="#(?P=id)">',
    re.DOTALL,
)


def _number_headings(body: str) -> tuple[str, list[tuple[int, str, str]]]:
    """Make heading ids unique per stage (every notebook may have a "Sanity checks") and list them."""
    toc: list[tuple[int, str, str]] = []
    stage, seen = "", set()
    out, pos = [], 0
    for m in _ANCHORS.finditer(body):
        if m["stage"]:
            stage = m["stage"]
            continue
        new_id = f"{stage}-{m['id']}" if stage else m["id"]
        while new_id in seen:
            new_id += "_"
        seen.add(new_id)
        level, text = m["level"], m["text"]
        out += [
            body[pos : m.start()],
            f'<h{level} id="{new_id}">{text}<a class="anchor-link" href="#{new_id}">',
        ]
        pos = m.end()
        toc.append((int(level), new_id, re.sub(r"<[^>]+>", "", text).strip()))
    out.append(body[pos:])
    return "".join(out), toc


def _front_page(cfg: RunConfig, record: dict[str, Any], results: list[dict[str, Any]], toc: list) -> str:
    esc = html.escape
    git = record.get("git") or {}
    commit = (git.get("sha") or "no commit")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    meta = (
        f"profile <b>{esc(cfg.profile)}</b> · hardware <b>{esc(record['hardware_tag'])}</b> · "
        f"overrides <code>{esc(json.dumps(record['overrides']))}</code> · commit {esc(commit)} · "
        f"rendered {esc(record['rendered_at'])}"
    )
    rows = []
    for r in results:
        name = f'<a href="#stage-{r["stage"]}">{r["stage"]}</a>' if r["notebook"] else r["stage"]
        time_s = f"{r['seconds']:.1f} s" if r["status"] in ("ok", "failed") else ""
        rows.append(
            f'<tr><td>{name}</td><td class="report-status-{r["status"]}">{r["status"]}</td>'
            f"<td>{time_s}</td><td>{esc(r['error'])}</td></tr>"
        )
    contents, depth = [], 1  # nested <ol> per heading level
    for level, anchor, text in toc:
        contents += ["<ol>"] * max(level - depth, 0) + ["</ol>"] * max(depth - level, 0)
        contents.append(f'<li><a href="#{anchor}">{esc(text)}</a></li>')
        depth = level
    contents += ["</ol>"] * (depth - 1)
    summary = cfg.output_dir / "06_analysis" / "summary.html"
    analysed = any(r["stage"] == "06_analysis" and r["status"] in ("ok", "skipped") for r in results)
    first_page = (summary.read_text(encoding="utf-8") if analysed and summary.exists() else
                  '<p class="report-missing">No Reproducibility Summary: 06_analysis did not run.</p>')
    return (
        f'<section class="report-front"><h1>{esc(cfg.report.title)}</h1>'
        f'<div class="report-meta">{meta}</div>{first_page}'
        '<h3 class="report-after-summary">Pipeline</h3><table><tr><th>stage</th><th>status</th><th>time</th>'
        "<th>note</th></tr>"
        + "".join(rows)
        + '</table><h3>Contents</h3><nav class="report-toc"><ol>'
        + "".join(contents)
        + "</ol></nav></section>"
    )


# ---------------------------------------------------------------------------------------------------
# PDF


def find_chromium() -> str | None:
    """The headless Chromium executable, or ``None``."""
    return next((p for p in map(shutil.which, _CHROMIUM_NAMES) if p), None)


def print_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 600) -> None:
    """Print an HTML file to PDF (A4 from the template's ``@page``) with headless Chromium.

    Raises:
        ReportError: Chromium is missing or produced no PDF.
    """
    exe = find_chromium()
    if exe is None:
        raise ReportError(
            f"headless Chromium not found (looked for {', '.join(_CHROMIUM_NAMES)}): {install_hint()}"
        )
    tmp_pdf = pdf_path.with_name(f".{pdf_path.name}.tmp")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as user_data:
        cmd = [
            exe,
            "--headless",
            *CHROMIUM_ARGS,
            f"--user-data-dir={user_data}",
            "--no-pdf-header-footer",
            "--generate-pdf-document-outline",  # PDF bookmarks from the headings
            "--virtual-time-budget=10000",  # lets MathJax and the widget renderer finish first
            f"--print-to-pdf={tmp_pdf}",
            html_path.resolve().as_uri(),
        ]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s)
    if not tmp_pdf.exists() or tmp_pdf.stat().st_size == 0:
        raise ReportError(f"Chromium printed no PDF (exit {done.returncode}):\n{done.stderr[-2000:]}")
    os.replace(tmp_pdf, pdf_path)


# ---------------------------------------------------------------------------------------------------
# the whole thing


def render_report(
    cfg: RunConfig, results: list[dict[str, Any]], record: dict[str, Any], pdf: bool = True
) -> Path:
    """Write ``report/report.html`` (and ``report.pdf``) from the stages' executed notebooks.

    Returns:
        The report folder.
    """
    report_dir = cfg.output_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    vendored = _vendor_assets(report_dir)
    merged = merge_notebooks(results, show_code=cfg.report.show_code)
    merged.metadata["title"] = cfg.report.title
    body, toc = _number_headings(to_html(merged, cfg.report.show_code, vendored))
    record["rendered_at"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    body = body.replace(_FRONT_MARKER, _front_page(cfg, record, results, toc), 1)
    html_path = report_dir / "report.html"
    save_text(body, html_path)
    record["report"] = {"html": str(html_path), "html_seconds": round(time.perf_counter() - start, 1)}
    print(f"[report] {html_path} ({record['report']['html_seconds']:.1f} s)", flush=True)
    pdf_path = report_dir / "report.pdf"
    if not pdf and pdf_path.exists():  # an older PDF must not pass for this report: mark it by moving it aside
        stale = report_dir / "stale" / f"report-{dt.datetime.fromtimestamp(pdf_path.stat().st_mtime):%Y%m%d-%H%M%S}.pdf"
        stale.parent.mkdir(exist_ok=True)
        os.replace(pdf_path, stale)
        record["report"]["stale_pdf"] = str(stale)
        print(f"[report] no PDF this time (--no-pdf); the previous report.pdf is now {stale}", flush=True)
    for leftover in report_dir.glob(".*.tmp"):  # an interrupted print's temporary file
        leftover.unlink(missing_ok=True)
    if pdf:
        start = time.perf_counter()
        print_pdf(html_path, pdf_path)
        record["report"].update(pdf=str(pdf_path), pdf_seconds=round(time.perf_counter() - start, 1))
        print(f"[report] {pdf_path} ({record['report']['pdf_seconds']:.1f} s)", flush=True)
    return report_dir
