"""Accuracy exhibits: Table 1 (validation scores), Figure 1 (per-class test IoU), Figure 2 (training
curves beside the study's logs) and Figure 5 (distillation's per-class gain), each over the seeds.

Our scores come from each training stage's per-seed runs (``<stage>/seed-<s>/metrics.json``,
``per_class_iou.csv``, ``history.csv``; fractions 0..1, shown as percent), summarised over the seeds with
a 95 % Student-t interval (:mod:`fasterseg_core.evidence`); the published numbers from
``fasterseg_core/published/results.json`` (:mod:`.published`, percent as printed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..evidence import paired_difference, summarize
from ..plots import plot_class_gain, plot_per_class_iou, plot_study_curves
from .artifacts import PAPER_BATCH, PAPER_EPOCHS, PAPER_ITERS, TRAINED, Artifacts, norm_class
from .exhibit import Exhibit
from .published import Published

# The study's logged runs behind each of our training stages (study_curves() keys).
STUDY_RUNS = {
    "02_teacher": ("100epoch_trainscratch_teacher",),
    "03_distill": ("100epoch_distilled_student_from_100epoch_teacher",
                   "100epoch_distilled_student_from_pretrain_teacher"),
    "04_student": ("100epoch_trainscratch_student", "300epoch_trainscratch_student"),
}
_T1_METRICS = (("miou_no_back", "Mean IU no back (%)"), ("pixel_acc", "Mean pixel acc (%)"),
               ("miou", "Validation mIoU (%)"))


def ci_text(values: list[float], scale: float = 100.0) -> str:
    """"[low, high]" of the 95 % Student-t interval of the mean (in percent), "n = 1" for a single value."""
    s = summarize(values)
    return "n = 1" if s.n < 2 else f"[{scale * s.ci_low:.1f}, {scale * s.ci_high:.1f}]"


def _epochs_text(epochs: list[int]) -> str:
    lo, hi = min(epochs), max(epochs)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def table1(art: Artifacts, pub: Published) -> Exhibit:
    """Table 1 of the study: validation scores of teacher, distilled and trained student, best and last,
    the mean over this run's seeds with the mIoU's 95 % interval, beside the study's 100-, 300- and
    "600"-epoch columns and the paper's 73.1 % val mIoU."""
    rows: list[dict[str, Any]] = []
    for stage, (model, _, _) in TRAINED.items():
        s = art.stages[stage]
        if not s.ran:
            rows.append({"source": "this run", "model": model, "note": f"{stage} {s.status}"})
            continue
        for which in ("best", "last"):
            per = {key: list(art.seed_values(stage, "val", which, key).values()) for key, _ in _T1_METRICS}
            rows.append({
                "source": f"this run, {which}", "model": model, "split": f"{s.metrics['dataset']} val",
                "epochs": s.metrics["epochs"], "seeds": len(per["miou"]),
                "at epoch": _epochs_text([m["val"][which]["epoch"] for m in s.per_seed.values()]),
                **{label: 100 * float(np.mean(per[key])) for key, label in _T1_METRICS},
                "mIoU 95 % CI": ci_text(per["miou"]), "note": "" if s.status == "complete" else s.status,
            })
    for r in pub.study_table1():
        rows.append({"source": f"study, {r.column_group}", "model": r.column_label, "split": "Cityscapes val",
                     "epochs": r.epochs, "seeds": 1, "Mean IU no back (%)": r.mean_iu_no_back,
                     "Mean pixel acc (%)": r.mean_pixel_acc, "Validation mIoU (%)": r.validation_miou,
                     "note": "authors' released weights" if "released" in r.weights else ""})
    paper = pub.paper_value("cityscapes_val_miou")
    rows.append({"source": pub.cite("paper.cityscapes_val_miou"), "model": "FasterSeg (student)",
                 "split": "Cityscapes val", "epochs": PAPER_EPOCHS, "seeds": 1, "Validation mIoU (%)": paper.value,
                 "note": "best val during training"})
    cols = ["source", "model", "split", "epochs", "seeds", "at epoch", *(m[1] for m in _T1_METRICS), "mIoU 95 % CI",
            "note"]
    epochs = {m["epochs"] for st in TRAINED if (m := art.trained(st))}
    cap = (
        f"Validation scores (%) of this run's networks at their best checkpoint (highest val mIoU, at the epoch "
        f"shown, per seed) and the last one: the mean over the seeds, with the 95 % Student-t interval of the "
        f"mean mIoU (outputs/{art.cfg.profile}/<stage>/seed-<s>/metrics.json; "
        f"{', '.join(map(str, sorted(epochs))) or 'no'} epochs of this profile's length, the paper's epoch is "
        f"{PAPER_ITERS} iterations of batch {PAPER_BATCH}). 'Mean IU no back' leaves out class 0. Study rows: "
        f"its Table 1 on Cityscapes val, one run each; paper: Table 4. Different datasets and training lengths: "
        f"compare orderings and gaps, not values. {pub.note}"
    )
    fmts = {"epochs": "{:.0f}", "seeds": "{:.0f}"}
    return Exhibit("Table 1", "Validation accuracy", cap, pd.DataFrame(rows).reindex(columns=cols), formats=fmts)


def per_class_iou(art: Artifacts, split: str = "test", which: str = "best") -> tuple[pd.DataFrame, str]:
    """Per-class IoU (%) of every trained network and seed: (long frame of class, model, seed, iou; the
    split actually used). When no stage has ``split`` (Cityscapes test labels are withheld) val is used."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for stage, (model, _, _) in TRAINED.items():
        table = art.stages[stage].seed_table("per_class_iou.csv")
        if table is None:
            continue
        for sp in (split, "val"):
            sel = table[(table.split == sp) & (table.checkpoint == which)]
            if not sel.empty:
                frames.setdefault(sp, []).append(sel.assign(model=model, iou=100 * sel.iou))
                break
    used = split if split in frames else "val"
    if not frames.get(used):
        return pd.DataFrame(columns=["class", "model", "seed", "iou"]), used
    frame = pd.concat(frames[used], ignore_index=True)[["class", "model", "seed", "iou"]]
    return frame, used


def study_test_iou(pub: Published) -> pd.DataFrame:
    """The study's four Cityscapes test-server submissions: long frame of class (normalised name),
    submission and IoU (%)."""
    rows = [{"key": norm_class(c), "model": f"study: {s.figure_label}", "iou": v}
            for s in pub.study_figure1().submissions for c, v in s.class_iou.items()]
    return pd.DataFrame(rows)


def figure1(art: Artifacts, pub: Published, which: str = "best") -> Exhibit:
    """Figure 1 of the study: per-class IoU on the test split (val where test has no labels), bars of the mean
    over the seeds with 95 % intervals; for Cityscapes runs beside the study's four submissions and the
    paper's 71.5 % test mIoU."""
    ours, split = per_class_iou(art, "test", which)
    title = f"Per-class IoU on the {split} split"
    if ours.empty:
        return Exhibit("Figure 1", title, "Needs 02_teacher, 03_distill or 04_student.", missing="no training stage ran")
    dataset = next(m["dataset"] for st in TRAINED if (m := art.trained(st)))
    bars, study_note = ours, ""
    means = ours.groupby(["model", "seed"], sort=False).iou.mean().reset_index()
    if dataset == "cityscapes":
        study = study_test_iou(pub)
        names = {norm_class(c): c for c in ours["class"].unique()}
        study = study[study.key.isin(names)].assign(**{"class": lambda f: f.key.map(names), "seed": 0})
        bars = pd.concat([ours, study.drop(columns="key")], ignore_index=True)
        figure_means = pub.study_figure1().bar_values
        means = pd.concat([means, pd.DataFrame([{"model": f"study: {k}", "seed": 0, "iou": v}
                                                for k, v in figure_means.items() if "published" not in k])])
        study_note = " Study bars: its Cityscapes test-server results (one submission each)."
    ref_key = "cityscapes_test_miou" if dataset == "cityscapes" else "camvid_miou" if dataset == "camvid" else ""
    reference = None
    if ref_key:
        v = pub.paper_value(ref_key)
        reference = (f"paper: FasterSeg {dataset} mIoU" + (f" ({v.status})" if v.status else ""), float(v.value))
    fig = plot_per_class_iou(bars, means, reference, title=f"{dataset} {split}, {which} checkpoints")
    n = int(ours.seed.nunique())
    cap = (
        f"IoU (%) per class of this run's {which} checkpoints on the {dataset} {split} split "
        f"(outputs/{art.cfg.profile}/<stage>/seed-<s>/per_class_iou.csv): bars are the mean over {n} seed(s), "
        f"whiskers the 95 % Student-t interval; right: the mean over classes (mIoU), per seed (dots) and their "
        f"mean, the study's figure.{study_note}"
        + (f" Dashed line: {reference[0]} {reference[1]}." if reference else "")
        + (" Cityscapes test labels are withheld, so our bars are val." if split != "test" else "")
        + f" {pub.note}"
    )
    table = bars.pivot_table(index="class", columns="model", values="iou", aggfunc="mean", sort=False)
    table = table.reindex(pd.unique(ours["class"])).reset_index().rename(columns=lambda c: c if c == "class"
                                                                         else f"{c} (%)")
    return Exhibit("Figure 1", title, cap, table=table, figure=fig)


def class_gains(art: Artifacts, which: str = "best") -> tuple[pd.DataFrame, str]:
    """Distilled minus scratch-trained student IoU per class and seed (paired by seed), points: (long frame
    class, seed, gain; the split)."""
    ours, split = per_class_iou(art, "test", which)
    a, b = TRAINED["03_distill"][0], TRAINED["04_student"][0]
    wide = ours.pivot_table(index=["class", "seed"], columns="model", values="iou", sort=False)
    if a not in wide or b not in wide:
        return pd.DataFrame(columns=["class", "seed", "gain"]), split
    gain = (wide[a] - wide[b]).dropna().rename("gain").reset_index()
    return gain, split


def distillation_gain(art: Artifacts, pub: Published, which: str = "best") -> Exhibit:
    """Distilled minus scratch-trained student IoU per class, paired by seed: what the teacher's soft labels
    bought, with per-seed dots and the 95 % interval of the mean gain."""
    gain, split = class_gains(art, which)
    title = "What distillation changes, per class"
    if gain.empty:
        missing = ", ".join(st for st in ("03_distill", "04_student") if art.trained(st) is None) or "a common seed"
        return Exhibit("Figure 5", title, "Needs both 03_distill and 04_student.", missing=f"{missing} not run")
    rows = []
    for cls, g in gain.groupby("class", sort=False):
        s = summarize(g.gain.to_numpy())
        rows.append({"class": cls, "seeds": s.n, "mean gain (points)": s.mean, "95 % CI low": s.ci_low,
                     "95 % CI high": s.ci_high, "per seed": ", ".join(f"{v:+.1f}" for v in g.gain)})
    fig = plot_class_gain(gain, title=f"{split} split, {which} checkpoints: distilled − trained student")
    mean_iou = gain.groupby("seed").gain.mean()
    overall = paired_difference(mean_iou.to_numpy(), np.zeros(len(mean_iou)))
    bars = pub.study_figure1().bar_values
    d, t = bars["Distilled Student (100 epochs)"], bars["Trained Student (100 epochs)"]
    cap = (
        f"IoU of the distilled student minus that of the same architecture trained without the teacher, per "
        f"class and seed, on the {split} split ({which} checkpoints; the two runs of a seed share initial weights "
        f"and data order): dots are seeds, bars the mean gain with its 95 % Student-t interval. Averaged over "
        f"classes the gain is {overall.mean:+.1f} points"
        + (f" (95 % interval [{overall.ci_low:+.1f}, {overall.ci_high:+.1f}], n = {overall.n})." if overall.n > 1
           else " (one seed: no interval).")
        + f" The study's test mIoU at 100 epochs: distilled {d} vs trained {t} ({d - t:+.2f} points, one run)."
    )
    fmts = {"seeds": "{:.0f}", "mean gain (points)": "{:+.1f}", "95 % CI low": "{:+.1f}", "95 % CI high": "{:+.1f}"}
    return Exhibit("Figure 5", title, cap, pd.DataFrame(rows), fig, formats=fmts)


def training_curves(art: Artifacts, pub: Published) -> Exhibit:
    """Our val and train mIoU per epoch (mean over the seeds, band ±1 sd) beside the study's logged curves,
    on one axis of paper epochs (1000 iterations of batch 12 each: a run's x is images seen / 12,000)."""
    rows = []
    for stage, (model, _, _) in TRAINED.items():
        m, hist = art.trained(stage), art.stages[stage].seed_table("history.csv")
        if m is None or hist is None:
            continue
        scale = m["iters_per_epoch"] * m["batch_size"] / (PAPER_ITERS * PAPER_BATCH)
        for kind, col in (("val", "val_miou"), ("train", "train_miou")):
            h = hist[["epoch", "seed", col]].dropna()
            rows += [{"panel": model, "series": f"this run, {kind}", "kind": kind, "source": "ours", "seed": s,
                      "x": e * scale, "miou": 100 * v} for e, s, v in zip(h.epoch, h.seed, h[col])]
    curves = pub.study_curves()
    for stage, names in STUDY_RUNS.items():
        role = TRAINED[stage][1]
        for name in names:
            label = f"study {name.split('_')[0]}{' (pre-trained teacher)' if 'pretrain' in name else ''}"
            for p in curves[name].epochs:
                for kind, values in (("val", p.valid_miou), ("train", p.train_miou)):
                    if (v := values.get(role)) is not None:
                        rows.append({"panel": TRAINED[stage][0], "series": f"{label}, {kind}", "kind": kind,
                                     "source": "study", "seed": 0, "x": p.epoch, "miou": 100 * v})
    frame = pd.DataFrame(rows)
    fig = plot_study_curves(frame, [TRAINED[s][0] for s in TRAINED])
    ours = ", ".join(s for s in TRAINED if art.trained(s) is None)
    cap = (
        "mIoU (%) on the val split (solid, where evaluated) and the running mIoU on training crops (dashed), "
        "per epoch: this run's mean over its seeds with a ±1 sd band (history.csv of every seed run), and the "
        "study's Cityscapes logs (val after epoch 1 and every 10th, train every epoch). x: paper epochs "
        f"(iterations × batch / {PAPER_ITERS * PAPER_BATCH:,}), log scale, so a short run sits at the left of the "
        "study's. Datasets differ unless this is a Cityscapes run."
        + (f" Not run: {ours}." if ours else "") + f" {pub.note}"
    )
    return Exhibit("Figure 2", "Training curves", cap, figure=fig)
