"""The claims ledger: every claim of the paper and of the 2022 study that this pipeline can test, with the
published number, this run's per-seed values, their mean and 95 % interval, and a verdict by a stated rule
(:mod:`fasterseg_core.evidence`).

Each entry is decided by one of two rules: a paired difference over seeds (distilled − scratch student of
the same seed; distilled student − its teacher), or a quantity that does not vary with the seed, judged on its
own numbers (parameters, FLOPs, the latency ratio of two fixed networks on this machine, and the one search's
student against its latency window: met or not, by how much). Differences are in mIoU points, always in one
direction (distilled − scratch), so one measurement is never shown as d and −d; "on par" needs TOST within
the margin (±1 point). One seed gives "inconclusive (n = 1)", never a verdict. Every paired entry carries its
power: the smallest difference its seeds detect with 80 % power, and the seeds a decisive verdict would need
(:func:`fasterseg_core.evidence.power_analysis`, from the observed sd).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..evidence import Verdict, power_analysis, summarize, verdict, verdict_threshold
from ..latency.flops import count_complexity, count_with_thop
from ..models import build_network, published_architecture
from ..plots import plot_paired_differences
from ..runs import teacher_seed
from ..storage import save_json
from .artifacts import TRAINED, Artifacts
from .exhibit import Exhibit
from .published import PAPER_ARCH_STEPS, Published

MARGIN_POINTS = 1.0  # equivalence margin for "on par" claims: ±1 mIoU point
SPEED_NOISE = 0.15  # a latency ratio within 15 % of 1 is inside this machine's run-to-run noise
ROUNDING = {"params": 0.05}  # M: the published figure is printed to one decimal
# GFLOPs: "on par" within 2 % of the published 28.2 G. Counters disagree by up to 1.3 % on this very network (27.77 G
# plain conv MACs, 27.90 the thop the authors pinned, 28.03 thop 0.1.1, 28.12 fvcore), so a gap inside that spread
# says which counter was used, not that the network differs.
FLOPS_TOLERANCE = 0.02
CITYSCAPES_CLASSES = 19  # the claim's network: the paper's Cityscapes heads


# The published difference each paired measurement is set beside (claim id, split) → (a, b): a − b in the same
# metric and direction as ours. The paper carries no without-distillation number, so its gain has none.
PUBLISHED_DIFFERENCES: dict[tuple[str, str], tuple[str, str]] = {
    ("study_trained_on_par_with_distilled", "val"): ("study.table1.models.distilled_student_100ep.validation_miou",
                                                     "study.table1.models.trained_student_100ep.validation_miou"),
    ("study_trained_on_par_with_distilled", "test"): ("study.figure1.bar_values.Distilled Student (100 epochs)",
                                                      "study.figure1.bar_values.Trained Student (100 epochs)"),
    ("study_distilled_above_teacher_val", "val"): ("study.table1.models.distilled_student_100ep.validation_miou",
                                                   "study.table1.models.teacher_100ep.validation_miou"),
}


def published_difference(pub: Published, claim: str, split: str) -> tuple[float, str] | None:
    """The published a − b beside one of our paired differences, with its source, or None."""
    refs = PUBLISHED_DIFFERENCES.get((claim, split))
    if refs is None:
        return None
    a, b = (float(pub.node(r)["value"]) for r in refs)
    return a - b, pub.cite(refs[0])


@dataclass
class Entry:
    """One row of the ledger (``claims.json``)."""

    id: str
    source: str
    where: str
    claim: str
    published: str
    metric: str
    per_seed: dict[int, float]
    verdict: str
    reason: str
    rule: str
    note: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    power: str = ""  # paired entries: what these seeds can detect and what a decisive verdict needs
    power_detail: dict[str, Any] = field(default_factory=dict)
    published_difference: str = ""  # the published a − b of the same measurement, with its source
    analogue: str = ""  # the CPU-scale setting the claim is tested in, e.g. "camvid, 20 × 50 iterations of batch 8"


def _entry(c: Any, pub: Published, metric: str, per_seed: dict[int, float], v: Verdict, note: str,
           margin: float | None = None, paired: bool = False) -> Entry:
    numbers = "; ".join(f"{n['value']:g} {n['unit']} ({pub.cite(n['ref'])})" for n in c.numbers)
    s = summarize(list(per_seed.values())) if per_seed else None
    p = power_analysis(list(per_seed.values()), margin) if paired and per_seed else None
    d = published_difference(pub, c.id, metric.split(" ", 1)[0]) if paired else None
    return Entry(c.id, pub.sources()[c.source].short, c.where, c.claim, numbers, metric, per_seed, v.label,
                 v.reason, v.rule, note, asdict(s) if s else {}, p.sentence() if p else "",
                 asdict(p) if p else {}, f"{d[0]:+.2f} points ({d[1]})" if d else "")


def _missing(c: Any, pub: Published, metric: str, why: str) -> Entry:
    numbers = "; ".join(f"{n['value']:g} {n['unit']}" for n in c.numbers)
    return Entry(c.id, pub.sources()[c.source].short, c.where, c.claim, numbers, metric, {}, "not tested", why, "")


def _schedule(m: dict[str, Any]) -> str:
    """"20 × 50 iterations of batch 8 at 160×224" of a training stage's metrics."""
    return (f"{m['epochs']} × {m['iters_per_epoch']} iterations of batch {m['batch_size']} at "
            f"{m['crop_hw'][0]}×{m['crop_hw'][1]}")


def _schedules(art: Artifacts) -> tuple[dict[str, Any] | None, str]:
    """The students' metrics (the claims compare students) and their schedule, with the teacher's where it
    differs: "20 × 50 iterations … (teacher: 60 × 50 …)"."""
    trained = [art.trained(s) for s in reversed(TRAINED)]  # students first
    m = next((x for x in trained if x is not None), None)
    if m is None:
        return None, ""
    text, t = _schedule(m), art.trained("02_teacher")
    if t is not None and _schedule(t) != text:
        text += f" (teacher: {_schedule(t)})"
    return m, text


def scale_note(art: Artifacts) -> str:
    """What limits a verdict here: dataset, training length and device against the paper's and the study's."""
    m, schedule = _schedules(art)
    if m is None:
        return ""
    dataset = m["dataset"]
    length = f"{schedule} (paper: 600 × 1000 of 12 at 512×1024; study: 100–300 epochs)"
    parts = [f"{dataset} ({'the study: Cityscapes' if dataset != 'cityscapes' else 'as the study'})", length,
             f"device {art.cfg.device}"]
    return "At this scale: " + "; ".join(parts) + ". A verdict says what holds here, not at the paper's scale."


def analogue(art: Artifacts) -> str:
    """The setting a training claim is tested in here (the claims speak of Cityscapes and 100–600 epochs)."""
    m, schedule = _schedules(art)
    if m is None:
        return ""
    return f"{m['dataset']}, {schedule}, {len(art.cfg.seeds)} seed(s)"


def _paired(art: Artifacts, a: str, b: str, split: str, teacher: bool = False) -> dict[int, float]:
    """Seed → 100·(score of stage ``a`` − score of stage ``b``), best checkpoints; ``teacher``: ``b`` is the
    teacher, matched to each student seed by :func:`~fasterseg_core.runs.teacher_seed`."""
    va, vb = art.seed_values(a, split, "best"), art.seed_values(b, split, "best")
    out = {}
    for seed, x in va.items():
        other = teacher_seed(art.cfg, seed) if teacher else seed
        if other in vb:
            out[seed] = 100 * (x - vb[other])
    return out


# ---- the claims table: claim id → its tester ------------------------------------------------------------------
# Every claim of published/results.json has exactly one tester here (a test holds the two to one set). A tester
# takes the run's artifacts, the published numbers, the claim and the scale note, and returns the claim's entries:
# one per measurement, each stating the CPU-scale analogue it tests in ``metric``.
Tester = Callable[[Artifacts, Published, Any, str], list[Entry]]


def _paired_claim(a: str, b: str, splits: tuple[str, ...], expect: str, label: str, teacher: bool = False) -> Tester:
    """A tester of a paired difference a − b per seed (best checkpoints) on each split, against ±MARGIN_POINTS."""

    def test(art: Artifacts, pub: Published, c: Any, note: str) -> list[Entry]:
        out = []
        for split in splits:
            d = _paired(art, a, b, split, teacher=teacher)
            metric = f"{split} mIoU, {label} (points{', paired by seed' if not teacher else ''})"
            extra = "" if not teacher or art.cfg.teacher_per_seed else \
                " One teacher serves every seed: its own spread is not counted."
            out.append(_entry(c, pub, metric, d, verdict(list(d.values()), expect, MARGIN_POINTS), note + extra,
                              MARGIN_POINTS, paired=True)
                       if d else _missing(c, pub, metric, f"needs {b} and {a}"))
            out[-1].analogue = analogue(art)
        return out

    return test


CLAIMS: dict[str, Tester] = {
    # distilled − scratch in both: one measurement, one sign (the study's "on par" and the paper's "boosts")
    "study_trained_on_par_with_distilled": _paired_claim("03_distill", "04_student", ("val", "test"), "equivalent",
                                                         "distilled − scratch student"),
    "study_distilled_above_teacher_val": _paired_claim("03_distill", "02_teacher", ("val",), "greater",
                                                       "distilled student − teacher", teacher=True),
    "paper_distillation_improves_student": _paired_claim("03_distill", "04_student", ("test",), "greater",
                                                         "distilled − scratch student"),
    "paper_student_meets_latency_target": lambda art, pub, c, note: [_latency_target(art, pub, c)],
    "study_student_much_faster_than_teacher": lambda art, pub, c, note: [_faster(art, pub, c)],
    "paper_student_params_flops": lambda art, pub, c, note: _size(pub, c),
}


def ledger(art: Artifacts, pub: Published) -> list[Entry]:
    """The claims of :meth:`Published.claims`, in their order, each tested on this run's artifacts by its tester in
    :data:`CLAIMS`.

    Raises:
        KeyError: a published claim without a tester, or a tester without a published claim.
    """
    claims = pub.claims()
    if {c.id for c in claims} != set(CLAIMS):
        raise KeyError(f"claims and testers differ: published only {sorted({c.id for c in claims} - set(CLAIMS))}, "
                       f"tested only {sorted(set(CLAIMS) - {c.id for c in claims})}")
    note = scale_note(art)
    return [e for c in claims for e in CLAIMS[c.id](art, pub, c, note)]


def _latency_target(art: Artifacts, pub: Published, c: Any) -> Entry:
    metric = "searched student's table FPS on this device, against its target window"
    s = art.stages["01_search"]
    if not s.ran:
        return _missing(c, pub, metric, f"01_search {s.status}")
    m = s.metrics
    low, high = m["target_fps"]
    fps = {int(art.cfg.search.seed): float(m["student"]["fps"])}
    # One search is one number, judged on it (as params and FLOPs are): inside the window or not, by how much.
    # Its seed-to-seed spread is unknown until several searches run, which the note says.
    v = verdict_threshold(list(fps.values()), (low + high) / 2, "equivalent", (high - low) / 2, deterministic=True)
    value = fps[int(art.cfg.search.seed)]
    off = ("inside the window" if low <= value <= high else
           f"{100 * (value / high - 1):+.0f} % beyond its top" if value > high else
           f"{100 * (value / low - 1):+.0f} % below its bottom")
    v = Verdict(v.label, f"{value:.1f} FPS on the table, {off} ({low:.1f}–{high:.1f} FPS): "
                f"{'met' if low <= value <= high else 'missed'}; one search, its spread over searches unknown.",
                v.rule, v.expect)
    note = (f"One search (seed {art.cfg.search.seed}) of {m['arch_steps']} architecture steps (paper: {PAPER_ARCH_STEPS:,}), on "
            f"this device's lookup table; window {low:.1f}–{high:.1f} FPS = the published student's table FPS "
            f"± {100 * art.cfg.search.target_window_rel:g} %. The largest α/β/γ change was "
            f"{m['student']['arch_max_shift']:.3g}.")
    return _entry(c, pub, metric, fps, v, note)


def _faster(art: Artifacts, pub: Published, c: Any) -> Entry:
    """The published teacher / student latency ratio, eager PyTorch on this machine (05_latency)."""
    lat = art.latency
    if lat.empty:
        return _missing(c, pub, "latency ratio", f"05_latency {art.stages['05_latency'].status}")
    eager = lat[(lat.status == "ok") & (lat.backend == "eager")]
    rows = {n: eager[eager.network == n].iloc[0] for n in ("published teacher", "published student")
            if (eager.network == n).any()}
    if len(rows) < 2:
        return _missing(c, pub, "latency ratio", "no eager latency of both published networks")
    ratio = float(rows["published teacher"].median_ms / rows["published student"].median_ms)
    v = verdict_threshold([ratio], 1 + SPEED_NOISE, "greater", deterministic=True)
    tag = rows["published student"].hardware_tag
    return _entry(c, pub, f"teacher / student latency, eager PyTorch on {tag} ({rows['published student'].input_hw})",
                  {0: ratio}, v, f"One machine's median latencies (05_latency); a ratio must exceed 1 + "
                  f"{SPEED_NOISE:g} (this machine's run-to-run noise) to count as faster.")


@functools.cache
def _student_counts() -> tuple[Any, Any]:
    """The published student as the claim is about it, 19 Cityscapes classes at 1×3×1024×2048, counted twice: in
    the convention of the thop the authors pinned (0.0.31, reconstructed in :mod:`~fasterseg_core.latency.flops`)
    and by the current thop release. Once per process: it does not depend on the run."""
    net = build_network(published_architecture("student"), CITYSCAPES_CLASSES)
    return count_complexity(net, (1, 3, 1024, 2048)), count_with_thop(net, (1, 3, 1024, 2048))


def _size(pub: Published, c: Any) -> list[Entry]:
    """Parameters and FLOPs of the network the claim is about (not this run's dataset head), judged on the
    authors' convention with the current counter beside it, against the claim's published numbers."""
    ours, current = _student_counts()
    spread = 100 * (current.macs - ours.conv_macs) / current.macs
    published = {n["ref"]: float(n["value"]) for n in c.numbers}
    out = []
    for key, value, threshold, other in (
        ("params", ours.params / 1e6, published["paper.student_params"], current.params / 1e6),
        ("flops", ours.thop_macs / 1e9, published["paper.student_flops"], current.macs / 1e9),
    ):
        metric = ("parameters (M)" if key == "params" else "GFLOPs at 1024×2048") + ", published student, 19 classes"
        margin = ROUNDING[key] if key == "params" else FLOPS_TOLERANCE * threshold
        v = verdict_threshold([value], threshold, "equivalent", margin, deterministic=True)
        inside = "within" if v.label == "on par" else "beyond"
        why = (f"{value:.3f} in the convention of the thop the authors pinned (0.0.31), {other:.3f} by {current.counter}"
               f" (which counts {'only the modules the forward runs' if key == 'params' else 'more operations'}); "
               f"published {threshold:g}: {v.label}, {inside} ±{margin:.2g} "
               + ("(the published figure is rounded to one decimal)." if key == "params" else
                  f"(2 %: counting conventions alone move this network's count by {spread:.1f} %, from "
                  f"{ours.conv_macs / 1e9:.2f} G of plain convolutions to {other:.2f} G)."))
        v = Verdict(v.label, why, v.rule, v.expect)
        note = "Counted on the network the claim is about (19 classes), not on this run's dataset head."
        out.append(_entry(c, pub, metric, {0: value}, v, note))
    return out


def ledger_table(entries: list[Entry]) -> pd.DataFrame:
    """One row per entry: claim, source, published, ours (mean ± interval), verdict."""
    rows = []
    for e in entries:
        s = e.summary
        ours = "" if not s else (f"{s['mean']:.3g}" + (f" [{s['ci_low']:.3g}, {s['ci_high']:.3g}]" if s["n"] > 1 else "")
                                 + f" (n = {s['n']})")
        rows.append({"claim": e.claim, "source": f"{e.source}, {e.where}", "published": e.published,
                     "tested here": e.metric + (f"; {e.analogue}" if e.analogue else ""), "ours: mean [95 % CI]": ours,
                     "per seed": ", ".join(f"{v:.3g}" for v in e.per_seed.values()), "verdict": e.verdict,
                     "why": e.reason + (f" Power: {e.power}" if e.power else "")})
    return pd.DataFrame(rows)


def claims_exhibit(art: Artifacts, entries: list[Entry], pub: Published) -> Exhibit:
    """Table 5: the claims ledger."""
    cap = (
        "Every claim of the paper and the 2022 study this pipeline can test. Differences are paired by seed (the "
        "two students of one seed share initial weights and data order); 'on par' needs TOST within "
        f"±{MARGIN_POINTS:g} mIoU point; a single seed or a single search is 'inconclusive (n = 1)'. The full rule "
        f"of each verdict is in 06_analysis/claims.json. {scale_note(art)} {pub.note}"
    )
    widths = {"claim": 18, "source": 7, "published": 12, "tested here": 14, "ours: mean [95 % CI]": 10,
              "per seed": 7, "verdict": 10, "why": 22}
    return Exhibit("Table 5", "Claims ledger", cap, ledger_table(entries), widths=widths)


def paired_figure(entries: list[Entry]) -> Exhibit:
    """Figure 6: the per-seed paired differences of the accuracy claims, with their means and intervals."""
    # one measurement, one set of rows: two claims tested on the same difference share its dots
    measured: dict[str, Entry] = {}
    for e in entries:
        if e.per_seed and "points" in e.metric:
            measured.setdefault(e.metric, e)
    rows = [{"claim": metric, "seed": s, "points": v} for metric, e in measured.items()
            for s, v in e.per_seed.items()]
    title = "Paired differences per seed"
    if not rows:
        return Exhibit("Figure 6", title, "", missing="no paired comparison ran")
    frame = pd.DataFrame(rows)
    cap = (f"Each coloured dot is one seed's difference in mIoU points; the black diamond is their mean and its "
           f"whiskers the 95 % Student-t interval; the grey band is ±{MARGIN_POINTS:g} point, the margin of "
           "'on par'.")
    return Exhibit("Figure 6", title, cap, frame, plot_paired_differences(frame, MARGIN_POINTS),
                   formats={"points": "{:+.2f}", "seed": "{:.0f}"})


def save_ledger(entries: list[Entry], folder: Path) -> Path:
    """``claims.json`` beside the analysis' other outputs."""
    return save_json({"format": "fasterseg-claims/1", "margin_points": MARGIN_POINTS,
                      "claims": [asdict(e) for e in entries]}, Path(folder) / "claims.json")
