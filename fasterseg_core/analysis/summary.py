"""The Reproducibility Summary, the report's first page, in the ML Reproducibility Challenge's form: scope
(the claims), the main results (each network's absolute val and test mIoU beside the published ones), the
claims (ours beside the published difference, with the verdict), the confounds that remain, methodology (what
ran, on what, for how long), a discussion and its limitations (why our numbers differ, what this scale can and
cannot show), what was easy, what was difficult, and the deviations from the paper.

Everything in it is generated from this run's artifacts (manifests, metrics, ``pipeline.json``, the
ledger) or is a published number named with its source; nothing is typed in. ``06_analysis`` writes it as
``summary.html`` (the report puts it first) and ``summary.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..config import RunConfig, project_root
from ..evidence import summarize
from ..runs import architecture_source
from ..storage import save_json, save_text
from .artifacts import PAPER_BATCH, PAPER_CROP_HW, PAPER_EPOCHS, PAPER_ITERS, STAGES, TRAINED, Artifacts
from .claims import MARGIN_POINTS, Entry, scale_note
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
                  "latency.input_hw", "device")


def deviations(cfg: RunConfig) -> list[dict[str, Any]]:
    """The headline settings where this run departs from the paper's (the dataclass defaults)."""
    departures = config_departures(cfg)
    return [
        {"key": k, "this run": departures[k][0], "paper": departures[k][1]}
        for k in _HEADLINE_KEYS
        if k in departures
    ]


# The published mIoU each network is set beside on page 1: (what, reference). The paper reports its student only;
# the study all three networks at 100 epochs on Cityscapes.
PUBLISHED_RESULTS: dict[str, tuple[tuple[str, str], ...]] = {
    "02_teacher": (("Cityscapes val, 100 epochs", "study.table1.models.teacher_100ep.validation_miou"),),
    "03_distill": (("CamVid test", "paper.camvid_miou"), ("Cityscapes val", "paper.cityscapes_val_miou"),
                   ("Cityscapes test", "paper.cityscapes_test_miou"),
                   ("Cityscapes val, 100 epochs", "study.table1.models.distilled_student_100ep.validation_miou"),
                   ("Cityscapes test, 100 epochs", "study.figure1.bar_values.Distilled Student (100 epochs)")),
    "04_student": (("Cityscapes val, 100 epochs", "study.table1.models.trained_student_100ep.validation_miou"),
                   ("Cityscapes test, 100 epochs", "study.figure1.bar_values.Trained Student (100 epochs)")),
}
TEACHER_LEAD_POINTS = 3.0  # a teacher this far above its students on val is "measurably stronger" (issue 26)
RECIPE_KEYS = ("lr", "lr_schedule", "warmup_iters", "class_weighting")
RECIPES = Path("benchmarks") / "results" / "recipe"  # benchmarks/recipe.py's records, in the project folder


def _mean_ci(values: list[float]) -> str:
    """"31.8 [29.3, 34.3] (n = 3)" of fractions, in percent."""
    if not values:
        return "—"
    s = summarize(values)
    ci = f" [{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]" if s.n > 1 else ""
    return f"{100 * s.mean:.1f}{ci} (n = {s.n})"


def main_results(art: Artifacts, pub: Published) -> list[dict[str, Any]]:
    """Each trained network's val and test mIoU (best checkpoints, mean [95 % CI], n) beside the published ones."""
    rows = []
    for stage, (label, _, _) in TRAINED.items():
        published = [f"{pub.node(ref)['value']:g} % {what} ({pub.cite(ref)})" for what, ref in PUBLISHED_RESULTS[stage]]
        s = art.stages[stage]
        val, test = (list(art.seed_values(stage, split, "best").values()) if s.ran else [] for split in ("val", "test"))
        rows.append({"network": label, "stage": stage, "dataset": (s.metrics or {}).get("dataset", art.cfg.data.dataset),
                     "val": _mean_ci(val), "test": _mean_ci(test), "published": published,
                     "val_mean": 100 * summarize(val).mean if val else None})
    return rows


def _recipe(cfg: RunConfig, section: str) -> dict[str, Any]:
    return {k: getattr(getattr(cfg, section), k) for k in RECIPE_KEYS}


def _recipe_records() -> list[tuple[Path, dict[str, Any]]]:
    """``benchmarks/recipe.py``'s val records, oldest first (their names start with the date)."""
    records = []
    for path in sorted((project_root() / RECIPES).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("split") == "val":
            records.append((path, record))
    return records


def recipe_provenance(cfg: RunConfig) -> list[str]:
    """How each training stage's recipe was chosen: the newest ``benchmarks/recipe.py`` record on val whose winning
    candidate sets this recipe; else the stage that such a record chose it for, when the recipe is shared ("teacher
    and students share one recipe unless a measured reason says otherwise"); else that no record says so (then
    its choice is a confound). The teacher's line adds its measured lead over the students, when recorded."""
    from ..config import RunConfig as Paper  # the paper's values are the dataclass defaults

    records, rel = _recipe_records(), lambda path: path.relative_to(project_root())
    own: dict[str, tuple[Path, dict[str, Any]]] = {}
    for stage, (_, _, section) in TRAINED.items():
        ours, paper = _recipe(cfg, section), _recipe(Paper(), section)
        chosen = [(path, r) for path, r in records  # a choice among candidates, not one measured run
                  if r.get("stage") == stage and len(r.get("candidates", [])) > 1
                  and _matches(r.get("chosen_overrides"), ours, paper)]
        if chosen and ours != paper:
            own[stage] = chosen[-1]
    out = []
    for stage, (label, _, section) in TRAINED.items():
        ours, paper = _recipe(cfg, section), _recipe(Paper(), section)
        shared = next((s for s in own if s != stage and _recipe(cfg, TRAINED[s][2]) == ours), None)
        if ours == paper:
            line = f"{label}: the paper's recipe ({_recipe_text(ours)})."
        elif stage in own:
            path, r = own[stage]
            best = next(c for c in r["candidates"] if c["candidate"] == r["chosen"])
            vs = (f", {best['difference mean']:+.1f} points [{best['difference ci'][0]:.1f}, "
                  f"{best['difference ci'][1]:.1f}] against {best['vs']}" if "vs" in best else "")
            line = (f"{label}: {_recipe_text(ours)}, chosen on val with seeds {r['seeds']} (disjoint from the "
                    f"study's) among {len(r['candidates'])} candidates: val mIoU {best['mean']:.1f} %{vs} "
                    f"({rel(path)}).")
        elif shared is not None:
            line = (f"{label}: {_recipe_text(ours)}, the recipe chosen on val for the "
                    f"{TRAINED[shared][0].lower()} ({rel(own[shared][0])}), shared as the paper shares one recipe "
                    "across its networks; not selected separately for this network.")
        else:
            line = (f"{label}: {_recipe_text(ours)}, not the paper's ({_recipe_text(paper)}), and no record says it "
                    "was chosen on val with seeds other than the study's.")
        if stage == "02_teacher":
            line += _recorded_lead(cfg, records)
        out.append(line)
    return out


def _recorded_lead(cfg: RunConfig, records: list[tuple[Path, dict[str, Any]]]) -> str:
    """" Its length, 60 epochs, was measured on val …" from the newest 02_teacher record of this run's teacher
    length and recipe that recorded its lead over the scratch students (``benchmarks/recipe.py``), and the
    other lengths measured the same way (why not shorter); "" when no record has this run's length."""
    leads: dict[int, tuple[Path, dict[str, Any], dict[str, Any]]] = {}
    for path, r in records:  # oldest first: the newest record of a length wins
        lead = (r.get("lead_over_students") or {}).get("by_candidate", {}).get(r.get("chosen"))
        epochs = (r.get("set") or {}).get("teacher.epochs")
        if r.get("stage") == "02_teacher" and lead is not None and isinstance(epochs, int):
            leads[epochs] = (path, r, lead)
    if cfg.teacher.epochs not in leads:
        return ""

    def measured(epochs: int) -> str:
        path, _, lead = leads[epochs]
        ci = f" [{lead['ci'][0]:.1f}, {lead['ci'][1]:.1f}]" if len(lead["per_seed"]) > 1 else ""
        return (f"{lead['mean']:+.1f} points{ci} above the scratch students of the same seeds (per seed "
                f"{', '.join(f'{x:+.1f}' for x in lead['per_seed'])}; {path.relative_to(project_root())})")

    r = leads[cfg.teacher.epochs][1]
    others = "; ".join(f"at {e} epochs {measured(e)}" for e in sorted(leads) if e != cfg.teacher.epochs)
    return (f" Its length, {cfg.teacher.epochs} epochs, was measured on val with seeds {r['seeds']}: "
            f"{measured(cfg.teacher.epochs)}." + (f" Other lengths, measured the same way: {others}." if others else ""))


def _matches(overrides: dict[str, Any] | None, ours: dict[str, Any], paper: dict[str, Any]) -> bool:
    """Whether a recipe.py candidate (its overrides of the paper's recipe) is the recipe this run uses."""
    if overrides is None:
        return False
    keys = {k.rsplit(".", 1)[-1]: v for k, v in overrides.items()}
    return {k: keys.get(k, paper[k]) for k in RECIPE_KEYS} == ours


def _recipe_text(r: dict[str, Any]) -> str:
    weights = "" if r["class_weighting"] == "none" else f", {r['class_weighting']} class weights"
    warmup = f" after {r['warmup_iters']} warmup iterations" if r["warmup_iters"] else ""
    return f"lr {r['lr']:g}, {r['lr_schedule']} schedule{warmup}{weights}"


def teacher_lead(rows: list[dict[str, Any]]) -> str:
    """"The teacher leads the distilled student by 6.1 and the scratch student by 7.0 points of val mIoU (aim:
    ≥ 3)", from the main results' val means, or "" when the teacher or both students did not run."""
    by = {r["stage"]: r["val_mean"] for r in rows}
    t = by.get("02_teacher")
    leads = [(label, t - by[s]) for s, label in (("03_distill", "the distilled"), ("04_student", "the scratch"))
             if t is not None and by.get(s) is not None]
    if not leads:
        return ""
    text = " and ".join(f"{label} student by {lead:.1f}" for label, lead in leads)
    verb = "leads" if min(lead for _, lead in leads) > 0 else "trails or leads"
    return (f"On val the teacher {verb} {text} points of mIoU (means over the seeds; distillation is worth testing "
            f"when it leads by ≥ {TEACHER_LEAD_POINTS:g}).")


def confounds(art: Artifacts, rows: list[dict[str, Any]], recipes: list[str]) -> list[str]:
    """What, besides the method, could explain this run's differences: from the config, the results and the
    recipes' provenance (:func:`recipe_provenance`, read once per summary)."""
    cfg, out = art.cfg, []
    teacher, students = _recipe(cfg, "teacher"), {_recipe_text(_recipe(cfg, s)) for s in ("distill", "student")}
    if any(_recipe_text(teacher) != s for s in students):
        out.append(f"The teacher trains with another recipe ({_recipe_text(teacher)}) than the students "
                   f"({'; '.join(sorted(students))}): a distilled − teacher difference mixes distillation with the "
                   "recipe.")
    by = {r["stage"]: r for r in rows}
    t, d, sc = (by[s]["val_mean"] for s in ("02_teacher", "03_distill", "04_student"))
    if t is not None and (d is not None or sc is not None):
        best_student = max(v for v in (d, sc) if v is not None)
        if t - best_student < TEACHER_LEAD_POINTS:
            out.append(f"The teacher is not measurably stronger than the students (val mIoU {t:.1f} against "
                       f"{best_student:.1f} %, under the {TEACHER_LEAD_POINTS:g}-point lead that makes distillation "
                       "worth testing): the paper's gain from a stronger teacher cannot show.")
    if not cfg.teacher_per_seed and len(cfg.seeds) > 1:
        out.append("One teacher serves every seed: differences against it leave its own seed-to-seed spread out.")
    out += [line for line in recipes if "no record says" in line]
    return out


def discussion(art: Artifacts, entries: list[Entry]) -> dict[str, list[str]]:
    """Why our numbers differ from the published ones, and what this scale can and cannot show, from the config,
    the metrics and the ledger's power statements."""
    cfg, why, can, cannot = art.cfg, [], [], []
    which = next((s for s in reversed(TRAINED) if art.trained(s)), None)  # the students' schedule first
    m = art.trained(which) if which else None
    if m is not None:
        iters = m["epochs"] * m["iters_per_epoch"] * m["batch_size"]
        paper = PAPER_EPOCHS * PAPER_ITERS * PAPER_BATCH
        why.append(f"Compute: {m['epochs']} × {m['iters_per_epoch']} iterations of batch {m['batch_size']} per "
                   f"{'teacher' if which == '02_teacher' else 'student'} "
                   f"= {100 * iters / paper:.2g} % of the paper's {PAPER_EPOCHS} × {PAPER_ITERS} of batch {PAPER_BATCH} "
                   "images seen.")
        why.append(f"Data and resolution: {m['dataset']} crops of {m['crop_hw'][0]}×{m['crop_hw'][1]} at scale "
                   f"{cfg.data.base_scale:g}, against the paper's Cityscapes crops of {PAPER_CROP_HW[0]}×{PAPER_CROP_HW[1]} "
                   "from 1024×2048 images.")
    t, st = art.trained("02_teacher"), art.trained("04_student") or art.trained("03_distill")
    if t is not None and st is not None and t["epochs"] * t["iters_per_epoch"] != st["epochs"] * st["iters_per_epoch"]:
        ratio = t["epochs"] * t["iters_per_epoch"] / (st["epochs"] * st["iters_per_epoch"])
        why.append(f"Teacher: {t['epochs']} × {t['iters_per_epoch']} iterations, {ratio:.2g}× the students' (the paper "
                   "trains both alike): at a few thousand iterations the larger network learns more slowly, and a "
                   "teacher no better than its students would leave distillation nothing to pass on.")
    source = architecture_source(cfg)
    why.append("Networks: " + ("the ones this run's 01_search derived, on this machine's latency table and a search "
                               "far shorter than the paper's." if source == "searched" else
                               "the authors' published Fig. 6 architectures, not searched here."))
    for e in entries:
        if e.power_detail:
            cannot.append(f"{e.metric}: {e.power}")
        elif e.verdict in ("supported", "contradicted", "on par") and not e.power_detail:
            can.append(f"{e.metric}: {e.verdict}, a quantity measured once, exactly, on this machine or network.")
    cannot.append(f"The published Cityscapes numbers themselves: this run trains on {cfg.data.dataset}; only the "
                  "direction and size of differences between networks trained alike carry over.")
    return {"why": why, "can": can, "cannot": cannot}


def methodology(art: Artifacts) -> dict[str, Any]:
    """What ran, on what and for how long, from the manifests and ``pipeline.json``."""
    manifests = {s: a.manifest for s, a in art.stages.items() if a.manifest}
    first = next(iter(manifests.values()), {})
    stages = {s: {"status": a.status, "seconds": art.stage_seconds(s)} for s, a in art.stages.items()}
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
    }


def easy_and_difficult(art: Artifacts, entries: list[Entry]) -> tuple[list[str], list[str]]:
    """Facts of this run for "what was easy" and "what was difficult"."""
    easy, hard = [], []
    ran = [s for s in STAGES if art.stages[s].ran]
    if ran:
        easy.append(f"{len(ran)} of {len(STAGES)} stages ran from one command (make report) and recorded their "
                    "config, commit and machine.")
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
    main, recipes = main_results(art, pub), recipe_provenance(art.cfg)
    return {
        "scope": list(scope.values()), "main_results": main, "teacher_lead": teacher_lead(main),
        "methodology": methodology(art), "scale": scale_note(art),
        "results": [{"claim": e.claim, "tested": e.metric, "analogue": e.analogue,
                     "published": e.published, "ours": e.summary,
                     "published_difference": e.published_difference, "per_seed": e.per_seed,
                     "verdict": e.verdict} for e in entries],
        "confounds": confounds(art, main, recipes), "discussion": discussion(art, entries),
        "recipes": recipes, "margin_points": MARGIN_POINTS,
        "easy": easy, "difficult": hard, "deviations": deviations(art.cfg), "published_note": pub.note,
    }


def _ours(s: dict[str, Any]) -> str:
    if not s:
        return "—"
    text = f"{s['mean']:.3g}"
    return text + (f" [{s['ci_low']:.3g}, {s['ci_high']:.3g}]" if s["n"] > 1 else "") + f" (n\u00a0=\u00a0{s['n']})"


def _short(published: str, keep: int = 2) -> str:
    """The first numbers of a claim's published list ("… and 3 more": Table 5 has them all)."""
    parts = published.split("; ")
    return "; ".join(parts[:keep]) + (f"; … {len(parts) - keep} more" if len(parts) > keep else "")


def summary_html(summary: dict[str, Any]) -> str:
    """The Reproducibility Summary as an HTML section (the report's first page)."""
    esc = html.escape
    m = summary["methodology"]
    stages = ", ".join(f"{s} {v['status']}" + (f" ({duration(v['seconds'])})" if v["seconds"] else "")
                       for s, v in m["stages"].items())
    total = f" {duration(m['pipeline_seconds'])} of stages in all." if m["pipeline_seconds"] else ""
    precision = ", ".join(f"{s} {'fp32' if p == 'none' else p}" for s, p in m.get("precision", {}).items())
    total += f" Training precision: {precision}." if precision else ""
    rows = "".join(f"<tr><td>{esc(r['claim'])}</td><td>{esc(r['tested'])}</td>"
                   f"<td>{esc(r.get('published_difference') or _short(r['published']))}</td>"
                   f"<td>{esc(_ours(r['ours']))}</td>"
                   f"<td class='verdict verdict-{esc(r['verdict'].replace(' ', '-'))}'>{esc(r['verdict'])}</td></tr>"
                   for r in summary["results"])
    # the scale each claim is tested at is the same for most claims: said once under the table, not per row
    scales = "; ".join(dict.fromkeys(r["analogue"] for r in summary["results"] if r.get("analogue")))
    tested_at = f"<p>Tested at this run's scale: {esc(scales)}.</p>" if scales else ""
    main = "".join(f"<tr><td>{esc(r['network'])}</td><td>{esc(r['val'])}</td><td>{esc(r['test'])}</td>"
                   f"<td>{'<br>'.join(esc(x) for x in r['published'])}</td></tr>"
                   for r in summary.get("main_results", []))
    dataset = esc(str(m["dataset"]))
    devs = "".join(f"<li><code>{esc(d['key'])}</code>: {esc(json.dumps(d['this run']))} (paper "
                   f"{esc(json.dumps(d['paper']))})</li>" for d in summary["deviations"])
    scope = "".join(f"<li>{esc(s['claim'])} <i>({esc(s['source'])})</i></li>" for s in summary["scope"])
    disc = summary.get("discussion") or {"why": [], "can": [], "cannot": []}

    def items(xs: list[str]) -> str:
        return "".join(f"<li>{esc(x)}</li>" for x in xs) or "<li>—</li>"

    return (
        '<section class="repro-summary"><h2>Reproducibility Summary</h2>'
        f"<h3>Main results</h3><table><tr><th>network</th><th>{dataset} val mIoU (%): mean [95 % CI]</th>"
        f"<th>{dataset} test mIoU (%)</th><th>published (%)</th></tr>{main}</table>"
        f"<p>{esc(summary.get('teacher_lead') or '')}</p>"
        f"<h3>Claims</h3><table class='repro-claims'><tr><th>claim</th><th>tested here</th><th>published</th><th>ours: mean [95 % CI]</th>"
        f"<th>verdict</th></tr>{rows}</table>{tested_at}"
        f"<h3>Confounds that remain</h3><ul>{items(summary.get('confounds', []))}</ul>"
        f"<h3>Scope of reproducibility</h3><ul>{scope}</ul>"
        f"<h3>Methodology</h3><p>Profile <b>{esc(m['profile'])}</b> on {dataset}, "
        f"{esc(str(m['device_name'] or m['device']))} (hardware tag {esc(str(m['hardware']))}, torch "
        f"{esc(str(m['torch']))}, commit {esc(m['commit'])}); seeds {esc(str(m['seeds']))}"
        f"{', one shared teacher' if not m['teacher_per_seed'] else ', one teacher per seed'}; networks: "
        f"{esc(', '.join(m['networks']) or '—')}. Stages: {esc(stages)}.{esc(total)}</p>"
        f"<p>{esc(summary['scale'])}</p>"
        f"<p>Recipes: </p><ul>{items(summary.get('recipes', []))}</ul>"
        f"<h3>Discussion</h3><p>Why our numbers differ from the published ones:</p><ul>{items(disc['why'])}</ul>"
        f"<p>What this scale can show:</p><ul>{items(disc['can'])}</ul>"
        f"<h3>Limitations</h3><ul>{items(disc['cannot'])}</ul>"
        f"<h3>What was easy</h3><ul>{items(summary['easy'])}</ul>"
        f"<h3>What was difficult</h3><ul>{items(summary['difficult'])}</ul>"
        f"<h3>Deviations from the paper</h3><ul>{devs or '<li>none</li>'}</ul>"
        f"<p class='repro-note'>Every number above was computed by this run, except the published ones named with "
        f"their source. {esc(summary['published_note'])} Verdict rules: the claims ledger and claims.json.</p></section>"
    )


def save_summary(summary: dict[str, Any], folder: Path) -> Path:
    """``summary.json`` and ``summary.html`` (the report's first page) in the analysis folder."""
    save_text(summary_html(summary), Path(folder) / "summary.html")
    return save_json(summary, Path(folder) / "summary.json")
