"""Accuracy exhibits: Table 1 (validation scores), Figure 1 (per-class test IoU), Figure 2 (training
curves beside the study's logs) and Figure 5 (distillation's per-class gain).

Our scores come from each training stage's ``metrics.json``, ``per_class_iou.csv`` and ``history.csv``
(fractions 0..1, shown as percent); the study's from ``reproduction_2022.json`` (percent as printed, log
values as fractions); the paper's from ``fasterseg_reference_figures.json``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..plots import plot_class_gain, plot_per_class_iou, plot_study_curves
from .artifacts import PAPER_BATCH, PAPER_EPOCHS, PAPER_ITERS, TRAINED, Artifacts, Published, norm_class, pct
from .exhibit import Exhibit

STUDY_RUNS = {
    "02_teacher": ("100epoch_trainscratch_teacher",),
    "03_distill": (
        "100epoch_distilled_student_from_100epoch_teacher",
        "100epoch_distilled_student_from_pretrain_teacher",
    ),
    "04_student": ("100epoch_trainscratch_student", "300epoch_trainscratch_student"),
}
_T1_METRICS = (
    ("miou_no_back", "mean_iu_no_back", "Mean IU no back (%)"),
    ("pixel_acc", "mean_pixel_acc", "Mean pixel acc (%)"),
    ("miou", "validation_miou", "Validation mIoU (%)"),
)


def table1(art: Artifacts, pub: Published) -> Exhibit:
    """Table 1 of the study: validation scores of teacher, distilled and trained student, best and last,
    beside the study's 100-, 300- and "600"-epoch columns and the paper's 73.1 % val mIoU."""
    rows = []
    for stage, (model, _, _) in TRAINED.items():
        m, s = art.trained(stage), art.stages[stage]
        if m is None:
            rows.append({"source": "this run", "model": model, "note": f"{stage} {s.status}"})
            continue
        for which in ("best", "last"):
            val = (m.get(which) or {}).get("val") or {}
            row = {
                "source": f"this run, {which}",
                "model": model,
                "split": f"{m.get('dataset')} val",
                "epochs": m.get("epochs"),
                "at epoch": (m.get(which) or {}).get("epoch"),
                "note": "" if s.status == "complete" else s.status,
            }
            rows.append(row | {label: pct(val.get(key)) for key, _, label in _T1_METRICS})
    if pub.study is not None:
        for entry in pub.study["table1_validation"]["models"].values():
            row = {
                "source": f"study, {entry['column_group']}",
                "model": entry["column_label"],
                "split": "Cityscapes val",
                "epochs": entry["epochs"],
                "note": "authors' released weights" if "released" in entry["weights"] else "",
            }
            rows.append(row | {label: entry[key] for _, key, label in _T1_METRICS})
    if pub.paper is not None:
        val = pub.paper["published"]["cityscapes_table4"]["rows"]["FasterSeg"][0]
        rows.append(
            {
                "source": "paper, Table 4",
                "model": "FasterSeg (student)",
                "split": "Cityscapes val",
                "epochs": PAPER_EPOCHS,
                "Validation mIoU (%)": val,
                "note": "best val during training",
            }
        )
    cols = ["source", "model", "split", "epochs", "at epoch", *(m[2] for m in _T1_METRICS), "note"]
    frame = pd.DataFrame(rows).reindex(columns=cols)
    epochs = {m["epochs"] for st in TRAINED if (m := art.trained(st))}
    cap = (
        f"Validation scores (%) of this run's networks at their best checkpoint (highest val mIoU, epoch "
        f"'at epoch') and last one, from outputs/{art.cfg.profile}/<stage>/metrics.json "
        f"({', '.join(map(str, sorted(epochs))) or 'no'} epochs of this profile's length; the paper's epoch "
        f"is {PAPER_ITERS} iterations of batch {PAPER_BATCH}). 'Mean IU no back' leaves out class 0. "
        f"Study rows: its Table 1 on Cityscapes val (table1_validation); paper: Table 4. Different datasets "
        f"and training lengths: compare orderings and gaps, not values. {pub.note}"
    )
    fmts = {"epochs": "{:.0f}", "at epoch": "{:.0f}"}
    return Exhibit("Table 1", "Validation accuracy", cap, frame, formats=fmts)


def per_class_iou(art: Artifacts, split: str = "test", which: str = "best") -> tuple[pd.DataFrame, str]:
    """Per-class IoU (%) of every trained network: (class × model frame, the split actually used).

    Read from each stage's ``per_class_iou.csv`` (``metrics.json`` ``[split][which]["iou"]`` as fallback).
    When no stage has ``split`` (Cityscapes test labels are withheld) the val split is used instead.
    """
    found: dict[str, dict[str, pd.Series]] = {}
    for stage, (model, _, _) in TRAINED.items():
        m = art.trained(stage)
        if m is None:
            continue
        csv = art.stages[stage].read_csv("per_class_iou.csv")
        for sp in (split, "val"):
            if csv is not None and not (sel := csv[(csv.split == sp) & (csv.checkpoint == which)]).empty:
                found.setdefault(sp, {})[model] = pd.Series(sel.iou.to_numpy() * 100, index=sel["class"])
            elif (iou := ((m.get(sp) or {}).get(which) or {}).get("iou")) is not None:
                found.setdefault(sp, {})[model] = pd.Series([pct(v) for v in iou], index=m["class_names"])
    used = split if split in found else "val"
    frame = pd.DataFrame(found.get(used, {}))
    frame.index.name = "class"
    return frame, used


def study_test_iou(pub: Published) -> pd.DataFrame | None:
    """The study's four Cityscapes test-server submissions: class × submission IoU (%), keyed by
    normalised class name (:func:`~.artifacts.norm_class`)."""
    if pub.study is None:
        return None
    models = pub.study["figure1_test_per_class_iou"]["models"]
    return pd.DataFrame(
        {m["figure_label"]: {norm_class(c): v for c, v in m["class_iou"].items()} for m in models.values()}
    )


def figure1(art: Artifacts, pub: Published, which: str = "best") -> Exhibit:
    """Figure 1 of the study: per-class IoU on the test split (val where test has no labels), grouped bars
    per class; for Cityscapes runs beside the study's four submissions and the paper's 71.5 % test mIoU."""
    ours, split = per_class_iou(art, "test", which)
    label = "Figure 1"
    title = f"Per-class IoU on the {split} split"
    if ours.empty:
        return Exhibit(
            label, title, "Needs 02_teacher, 03_distill or 04_student.", missing="no training stage ran"
        )
    dataset = next(m["dataset"] for st in TRAINED if (m := art.trained(st)))
    bars = ours.copy()
    means = ours.mean(skipna=True).rename(lambda n: f"{n} (this run)")
    reference: tuple[str, float] | None = None
    study_note = ""
    if dataset == "cityscapes" and (study := study_test_iou(pub)) is not None:
        keyed = study.reindex([norm_class(c) for c in ours.index])
        keyed.index = ours.index
        bars = bars.join(keyed.rename(columns=lambda n: f"study: {n}"))
        fig_values = pub.study["figure1_test_per_class_iou"]["figure_bar_values"]
        means = pd.concat(
            [means, pd.Series({f"study: {k}": v for k, v in fig_values.items() if "published" not in k})]
        )
        study_note = " Study bars: its Cityscapes test-server results (figure1_test_per_class_iou)."
    if pub.paper is not None:
        pp = pub.paper["published"]
        if dataset == "cityscapes":
            reference = ("paper: FasterSeg test mIoU", pp["cityscapes_table4"]["rows"]["FasterSeg"][1])
        elif dataset == "camvid":
            reference = ("paper: FasterSeg CamVid mIoU (unverified)", pp["camvid"]["mIoU"])
    fig = plot_per_class_iou(bars, means, reference, title=f"{dataset} {split}, {which} checkpoints")
    cap = (
        f"IoU (%) per class of this run's {which} checkpoints on the {dataset} {split} split "
        f"(outputs/{art.cfg.profile}/<stage>/per_class_iou.csv); right: the mean over classes (mIoU), the "
        f"study's figure.{study_note}"
        + (f" Dashed line: {reference[0]} {reference[1]}." if reference else "")
        + (" Cityscapes test labels are withheld, so our bars are val." if split != "test" else "")
        + f" {pub.note}"
    )
    table = bars.reset_index().rename(columns=lambda c: c if c == "class" else f"{c} (%)")
    return Exhibit(label, title, cap, table=table, figure=fig)


def distillation_gain(art: Artifacts, pub: Published, which: str = "best") -> Exhibit:
    """Distilled minus scratch-trained student IoU per class: what the teacher's soft labels bought."""
    ours, split = per_class_iou(art, "test", which)
    a, b = TRAINED["03_distill"][0], TRAINED["04_student"][0]
    title = "What distillation changes, per class"
    if a not in ours or b not in ours:
        missing = ", ".join(st for st in ("03_distill", "04_student") if art.trained(st) is None)
        return Exhibit(
            "Figure 5", title, "Needs both 03_distill and 04_student.", missing=f"{missing} not run"
        )
    gain = (ours[a] - ours[b]).rename("gain (points)")
    table = pd.DataFrame(
        {"class": ours.index, f"{a} (%)": ours[a], f"{b} (%)": ours[b], "gain (points)": gain}
    ).reset_index(drop=True)
    fig = plot_class_gain(gain, title=f"{split} split, {which} checkpoints: distilled − trained student")
    cap = (
        f"IoU of the distilled student minus that of the same architecture trained without the teacher, per "
        f"class, on the {split} split ({which} checkpoints; per_class_iou.csv of 03_distill and 04_student). "
        f"Mean gain {np.nanmean(gain.to_numpy()):+.1f} points; classes absent from the split are blank. "
    )
    if pub.study is not None:  # the study's own comparison at 100 epochs (Cityscapes test server)
        bars = pub.study["figure1_test_per_class_iou"]["figure_bar_values"]
        d, t = bars["Distilled Student (100 epochs)"], bars["Trained Student (100 epochs)"]
        cap += f" The study's test mIoU at 100 epochs: distilled {d} vs trained {t} ({d - t:+.2f} points)."
    return Exhibit("Figure 5", title, cap, table, fig)


def training_curves(art: Artifacts, pub: Published) -> Exhibit:
    """Our val and train mIoU per epoch beside the study's logged curves, on one axis of paper epochs
    (1000 iterations of batch 12 each, so a run's x is the training images it has seen / 12,000)."""
    rows = []
    for stage, (model, role, _) in TRAINED.items():
        m = art.trained(stage)
        hist = art.stages[stage].read_csv("history.csv")
        if m is None or hist is None:
            continue
        scale = m["iters_per_epoch"] * m["batch_size"] / (PAPER_ITERS * PAPER_BATCH)
        for kind, col in (("val", "val_miou"), ("train", "train_miou")):
            h = hist[["epoch", col]].dropna()
            rows += [
                {
                    "panel": model,
                    "series": f"this run, {kind}",
                    "kind": kind,
                    "source": "ours",
                    "x": e * scale,
                    "miou": 100 * v,
                }
                for e, v in zip(h.epoch, h[col])
            ]
    if pub.study is not None:
        runs = pub.study["training_curves"]["runs"]
        for stage, names in STUDY_RUNS.items():
            role = TRAINED[stage][1]
            for name in names:
                for ep in runs[name]["epochs"]:
                    for kind, key in (("val", "valid_mIoU"), ("train", "train_mIoU")):
                        if (v := (ep.get(key) or {}).get(role)) is not None:
                            rows.append(
                                {
                                    "panel": TRAINED[stage][0],
                                    "series": f"study {name.split('_')[0]}"
                                    f"{' (pre-trained teacher)' if 'pretrain' in name else ''}, {kind}",
                                    "kind": kind,
                                    "source": "study",
                                    "x": ep["epoch"],
                                    "miou": 100 * v,
                                }
                            )
    title = "Training curves"
    if not rows:
        return Exhibit("Figure 2", title, pub.note, missing="no training stage ran and no study curves")
    frame = pd.DataFrame(rows)
    fig = plot_study_curves(frame, [TRAINED[s][0] for s in TRAINED])
    ours = ", ".join(s for s in TRAINED if art.trained(s) is None)
    cap = (
        "mIoU (%) on the val split (solid, where evaluated) and the running mIoU on training crops (dashed), "
        "per epoch, for this run (history.csv of each stage) and the study's Cityscapes logs "
        "(training_curves.runs: val after epoch 1 and every 10th, train every epoch). x: paper epochs "
        f"(iterations × batch / {PAPER_ITERS * PAPER_BATCH:,}), log scale, so a short run sits at the left "
        "of the study's. Datasets differ unless this is a Cityscapes run."
        + (f" Not run: {ours}." if ours else "")
        + f" {pub.note}"
    )
    return Exhibit("Figure 2", title, cap, figure=fig)
