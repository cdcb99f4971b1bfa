"""The Reproducibility Summary, the report's first page, in the ML Reproducibility Challenge's form: scope
(the claims), methodology (what ran, on what, for how long), results (the claims ledger in one table), what
was easy, what was difficult, and the deviations from the paper.

Everything in it is generated from this run's artifacts (manifests, metrics, ``pipeline.json``, the
ledger) or is a published number named with its source; nothing is typed in. ``06_analysis`` writes it as
``summary.html`` (the report puts it first) and ``summary.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..storage import save_json, save_text
from .artifacts import STAGES, TRAINED, Artifacts
from .claims import Entry, scale_note
from .provenance import config_departures
from .published import Published
from .speed import duration

# The deviations a reader should see first (every departure from the paper's settings is in Table 4e).
# Each training stage's recipe (lr, schedule, class weights) is listed per stage: profiles may change it for some.
_HEADLINE_KEYS = ("data.dataset", "data.base_scale", "data.color_jitter", "model.arch_source", "seeds",
                  "teacher.epochs", "teacher.iters_per_epoch", "teacher.batch_size", "teacher.crop_size_hw",
                  "teacher.amp", "teacher.channels_last",
                  *(f"{stage}.{key}" for stage in ("teacher", "distill", "student")
                    for key in ("lr", "lr_schedule", "class_weighting")),
                  "search.search_epochs", "search.iters_per_epoch", "search.arch_lr", "search.path_sampling",
                  "latency.input_hw", "device")  # fmt: skip


def deviations(cfg: RunConfig) -> list[dict[str, Any]]:
    """The headline settings where this run departs from the paper's (the dataclass defaults)."""
    departures = config_departures(cfg)
    return [
        {"key": k, "this run": departures[k][0], "paper": departures[k][1]}
        for k in _HEADLINE_KEYS
        if k in departures
    ]


def methodology(art: Artifacts) -> dict[str, Any]:
    """What ran, on what and for how long, from the manifests and ``pipeline.json``."""
    manifests = {s: a.manifest for s, a in art.stages.items() if a.manifest}
    first = next(iter(manifests.values()), {})
    stages = {s: {"status": a.status, "seconds": (a.manifest or {}).get("seconds")} for s, a in art.stages.items()}
    pipeline_s = sum(float(r.get("seconds") or 0) for r in (art.pipeline or {}).get("stages", []))
    trained = {st: art.trained(st) for st in TRAINED}
    return {
        "profile": art.cfg.profile, "dataset": art.cfg.data.dataset, "device": first.get("device"),
        "device_name": first.get("device_name"), "hardware": first.get("hardware"),
        "torch": (first.get("versions") or {}).get("torch"), "commit": ((first.get("git") or {}).get("sha") or "")[:10],
        "seeds": list(art.cfg.seeds), "teacher_per_seed": art.cfg.teacher_per_seed,
        "networks": sorted({m["arch_source"] for m in trained.values() if m}),
        "stages": stages, "pipeline_seconds": pipeline_s or None,
        # the autocast each training stage ran with (amp: auto resolves per machine; "none" = fp32)
        "precision": {s: m["precision"] for s, m in manifests.items() if m.get("precision")},
    }  # fmt: skip


def easy_and_difficult(art: Artifacts, entries: list[Entry]) -> tuple[list[str], list[str]]:
    """Facts of this run for "what was easy" and "what was difficult"."""
    easy, hard = [], []
    ran = [s for s in STAGES if art.stages[s].ran]
    if ran:
        easy.append(f"{len(ran)} of {len(STAGES)} stages ran from one command (make report) and recorded their "
                    "config, commit and machine.")  # fmt: skip
    for e in entries:
        if e.verdict in ("supported", "on par") and not e.metric.startswith(("val", "test")):
            easy.append(f"{e.metric}: {e.verdict} ({_ours(e.summary)}).")
    for e in entries:
        if e.verdict in ("contradicted", "inconclusive", "not tested"):
            hard.append(f"{e.metric}: {e.verdict} ({_ours(e.summary) if e.summary else e.reason}).")
    failed = [s for s in STAGES if art.stages[s].status == "incomplete"]
    if failed:
        hard.append(f"Stages that did not finish: {', '.join(failed)}.")
    return easy, hard


def build_summary(art: Artifacts, entries: list[Entry], pub: Published) -> dict[str, Any]:
    """The summary as data (``summary.json``); :func:`summary_html` renders it."""
    easy, hard = easy_and_difficult(art, entries)
    scope = {e.id: {"claim": e.claim, "source": f"{e.source}, {e.where}"} for e in entries}  # one per claim
    return {
        "scope": list(scope.values()),
        "methodology": methodology(art), "scale": scale_note(art),
        "results": [{"claim": e.claim, "tested": e.metric, "published": e.published, "ours": e.summary,
                     "per_seed": e.per_seed, "verdict": e.verdict} for e in entries],
        "easy": easy, "difficult": hard, "deviations": deviations(art.cfg), "published_note": pub.note,
    }  # fmt: skip


def _ours(s: dict[str, Any]) -> str:
    if not s:
        return "—"
    text = f"{s['mean']:.3g}"
    return text + (f" [{s['ci_low']:.3g}, {s['ci_high']:.3g}]" if s["n"] > 1 else "") + f" (n = {s['n']})"


def _short(published: str, keep: int = 2) -> str:
    """The first numbers of a claim's published list ("… and 3 more": Table 5 has them all)."""
    parts = published.split("; ")
    return "; ".join(parts[:keep]) + (f"; … {len(parts) - keep} more" if len(parts) > keep else "")


def summary_html(summary: dict[str, Any]) -> str:
    """The Reproducibility Summary as an HTML section (the report's first page)."""
    esc = html.escape
    m = summary["methodology"]
    stages = ", ".join(f"{s} {v['status']}" + (f" ({duration(v['seconds'])})" if v["seconds"] else "")
                       for s, v in m["stages"].items())  # fmt: skip
    total = f" {duration(m['pipeline_seconds'])} of stages in all." if m["pipeline_seconds"] else ""
    precision = ", ".join(f"{s} {'fp32' if p == 'none' else p}" for s, p in m.get("precision", {}).items())
    total += f" Training precision: {precision}." if precision else ""
    rows = "".join(f"<tr><td>{esc(r['claim'])}</td><td>{esc(r['tested'])}</td><td>{esc(_short(r['published']))}</td>"
                   f"<td>{esc(_ours(r['ours']))}</td>"
                   f"<td class='verdict verdict-{esc(r['verdict'].replace(' ', '-'))}'>{esc(r['verdict'])}</td></tr>"
                   for r in summary["results"])  # fmt: skip
    devs = "".join(f"<li><code>{esc(d['key'])}</code>: {esc(json.dumps(d['this run']))} (paper "
                   f"{esc(json.dumps(d['paper']))})</li>" for d in summary["deviations"])  # fmt: skip
    scope = "".join(f"<li>{esc(s['claim'])} <i>({esc(s['source'])})</i></li>" for s in summary["scope"])

    def items(xs: list[str]) -> str:
        return "".join(f"<li>{esc(x)}</li>" for x in xs) or "<li>—</li>"

    return (
        '<section class="repro-summary"><h2>Reproducibility Summary</h2>'
        f"<h3>Scope of reproducibility</h3><ul>{scope}</ul>"
        f"<h3>Methodology</h3><p>Profile <b>{esc(m['profile'])}</b> on {esc(str(m['dataset']))}, "
        f"{esc(str(m['device_name'] or m['device']))} (hardware tag {esc(str(m['hardware']))}, torch "
        f"{esc(str(m['torch']))}, commit {esc(m['commit'])}); seeds {esc(str(m['seeds']))}"
        f"{', one shared teacher' if not m['teacher_per_seed'] else ', one teacher per seed'}; networks: "
        f"{esc(', '.join(m['networks']) or '—')}. Stages: {esc(stages)}.{esc(total)}</p>"
        f"<p>{esc(summary['scale'])}</p>"
        f"<h3>Results</h3><table><tr><th>claim</th><th>tested here</th><th>published</th><th>ours: mean [95 % CI]</th>"
        f"<th>verdict</th></tr>{rows}</table>"
        f"<h3>What was easy</h3><ul>{items(summary['easy'])}</ul>"
        f"<h3>What was difficult</h3><ul>{items(summary['difficult'])}</ul>"
        f"<h3>Deviations from the paper</h3><ul>{devs or '<li>none</li>'}</ul>"
        f"<p class='repro-note'>Every number above was computed by this run, except the published ones named with "
        f"their source. {esc(summary['published_note'])} Verdict rules: Table 5 and claims.json.</p></section>"
    )


def save_summary(summary: dict[str, Any], folder: Path) -> Path:
    """``summary.json`` and ``summary.html`` (the report's first page) in the analysis folder."""
    save_text(summary_html(summary), Path(folder) / "summary.html")
    return save_json(summary, Path(folder) / "summary.json")
