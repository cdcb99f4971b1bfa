"""Speed and cost exhibits: Table 2 (params, FLOPs, FPS beside the published ones), Figure 4 (accuracy
against latency, with the torchvision peers as latency-only markers) and Table 3 (compute accounting).

Latency rows come from ``outputs/<profile>/latency/<hardware tag>.json`` (one per machine that ran
``05_latency``), training times from the training stages' ``metrics.json`` and every stage's manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..latency.peers import PEERS
from ..plots import plot_accuracy_latency
from .artifacts import PAPER_BATCH, PAPER_CROP_HW, PAPER_EPOCHS, PAPER_ITERS, TRAINED, Artifacts
from .exhibit import Exhibit
from .published import Published


def trained_networks(art: Artifacts) -> dict[str, str]:
    """Latency-record network names of the networks trained here: {"teacher": "searched teacher", …}."""
    out = {}
    for stage, (_, role, _) in TRAINED.items():
        if (m := art.trained(stage)) is not None and m.get("arch_source"):
            out[role] = f"{m['arch_source']} {role}"
    return out


def table2(art: Artifacts, pub: Published) -> Exhibit:
    """Table 2 of the study: params, FLOPs and FPS of teacher and student on every hardware tag and
    backend measured so far, beside the published 4.4 M / 28.2 G / 163.9 FPS and the study's machines."""
    trained = trained_networks(art)
    rows = _our_speed_rows(art, trained) + _paper_speed_rows(pub) + _study_speed_rows(pub)
    cols = ["source", "network", "hardware", "backend", "input", "params (M)", "GFLOPs", "ms", "FPS"]
    which = ", ".join(sorted(trained.values())) or "every FasterSeg network timed"
    cap = (
        "Parameters, multiply-adds at 1024×2048 (GFLOPs: thop convention, the authors' 'FLOPs') and "
        f"batch-1 speed at the input size shown. Ours: {which}, from outputs/{art.cfg.profile}/latency/"
        "<hardware tag>.json (every machine that ran 05_latency; median of the §10 protocol). Paper: "
        "163.9 FPS with TensorRT on a GTX 1080 Ti; study: its Table 2 (student) and latency logs (teacher, "
        "rows marked 'log') on hardware A (GTX 1080 Ti) and B (RTX 3080 Ti). FPS depends on the input size, "
        "so compare rows of equal input only; a backend this machine lacks shows 'unavailable' as its FPS "
        f"(05_latency gives the reason). {pub.note}"
    )
    fmts = {"params (M)": "{:.2f}", "GFLOPs": "{:.1f}", "ms": "{:.2f}"}
    return Exhibit("Table 2", "Complexity and speed", cap, pd.DataFrame(rows).reindex(columns=cols), formats=fmts)


def _our_speed_rows(art: Artifacts, trained: dict[str, str]) -> list[dict[str, Any]]:
    lat = art.latency
    if lat.empty:
        return [{"source": "ours", "network": f"05_latency {art.stages['05_latency'].status}"}]
    fasterseg = lat[lat.network.str.endswith(("teacher", "student"))]
    chosen = fasterseg[fasterseg.network.isin(set(trained.values()) or set(fasterseg.network))]
    rows = []
    for r in chosen.sort_values(["network", "hardware_tag", "input_hw"], kind="stable").itertuples():
        ok = r.status == "ok"
        rows.append({"source": "ours", "network": r.network, "hardware": r.hardware_tag, "backend": r.backend,
                     "input": r.input_hw, "params (M)": r.params_M, "GFLOPs": r.thop_GMACs_1024x2048,
                     "ms": r.median_ms if ok else np.nan, "FPS": r.fps if ok else r.status})
    return rows


def _paper_speed_rows(pub: Published) -> list[dict[str, Any]]:
    fps, params, flops = (pub.paper_value(k) for k in ("cityscapes_fps", "student_params", "student_flops"))
    return [{"source": pub.cite("paper.cityscapes_fps"), "network": "student", "hardware": "GTX 1080 Ti",
             "backend": "TensorRT", "input": "1024x2048", "params (M)": params.value, "GFLOPs": flops.value,
             "ms": 1000 / fps.value, "FPS": fps.value}]


def _study_speed_rows(pub: Published) -> list[dict[str, Any]]:
    t2 = pub.study_table2()
    gpu = {k: h.gpu.removeprefix("NVIDIA ") for k, h in t2.hardware.items()}
    rows = []
    for col in t2.columns.values():
        if col.hardware is None:
            continue  # the column quoting the paper
        rows.append({"source": f"study {col.hardware}", "network": "student", "hardware": gpu[col.hardware],
                     "backend": "not logged", "input": "1024x2048", "params (M)": col.params_M,
                     "GFLOPs": col.flops_G, "ms": 1000 / col.fps, "FPS": col.fps})
    for log in t2.logs:
        if log.model == "teacher":
            rows.append({"source": f"study {log.hardware} (log)", "network": "teacher", "hardware": gpu[log.hardware],
                         "backend": "not logged", "input": "1024x2048", "params (M)": log.params_M,
                         "GFLOPs": log.flops_G, "ms": log.latency_ms_derived, "FPS": log.fps})
    return rows


def accuracy_latency(art: Artifacts, backend: str = "eager", hardware: str = "") -> Exhibit:
    """Val mIoU against measured latency for the trained networks; the torchvision peers (timed by the same
    harness, never trained here) as latency-only markers on a strip below."""
    title = "Accuracy against latency"
    lat = art.latency
    if lat.empty:
        return Exhibit(
            "Figure 4", title, "Needs 05_latency.", missing=f"05_latency {art.stages['05_latency'].status}"
        )
    ok = lat[(lat.status == "ok") & (lat.backend == backend)]
    tags = list(dict.fromkeys(ok.hardware_tag))
    tag = hardware if hardware in tags else (art.stages["05_latency"].manifest or {}).get("hardware", "")
    tag = tag if tag in tags else (tags[0] if tags else "")
    ok = ok[ok.hardware_tag == tag]
    ms = dict(zip(ok.network, ok.median_ms))
    trained = trained_networks(art)
    points = []
    for stage, (model, role, _) in TRAINED.items():
        m = art.trained(stage)
        if m is not None and trained.get(role) in ms:
            points.append(
                {
                    "model": model,
                    "network": trained[role],
                    "ms": ms[trained[role]],
                    "kind": "trained here",
                    "val mIoU (%)": 100 * m["summary"]["val"]["best"]["miou"]["mean"],
                }
            )
    others = [
        {"network": n, "ms": v, "kind": "torchvision peer" if n in PEERS else "FasterSeg, not trained here"}
        for n, v in ms.items()
        if n not in {p["network"] for p in points}
    ]
    if not points and not others:
        return Exhibit("Figure 4", title, "", missing=f"no '{backend}' latency measured")
    fig = plot_accuracy_latency(pd.DataFrame(points), pd.DataFrame(others), f"{tag}, {backend}")
    size = ", ".join(dict.fromkeys(ok.input_hw))
    cap = (
        f"Best-checkpoint val mIoU (the mean over the seeds, metrics.json) against median batch-1 latency ({backend} backend, "
        f"hardware '{tag}', input {size}; latency/{tag}.json). The peers (torchvision LR-ASPP and DeepLabV3 "
        "with MobileNetV3, random weights) and networks not trained here have no accuracy in this run, so "
        "they sit on the latency-only strip below, same x axis. "
        "The distilled and trained student share one network, "
        "hence one latency."
    )
    table = pd.DataFrame(points + others).reindex(columns=["model", "network", "kind", "ms", "val mIoU (%)"])
    return Exhibit("Figure 4", title, cap, table, fig, formats={"ms": "{:.2f}"})


def compute_table(art: Artifacts, pub: Published) -> Exhibit:
    """Wall time per stage (manifest) and per epoch (metrics), extrapolated to the paper's 600 × 1000
    iterations; the study's hours beside."""
    rows = []
    full = PAPER_EPOCHS * PAPER_ITERS
    paper_px = PAPER_BATCH * PAPER_CROP_HW[0] * PAPER_CROP_HW[1]
    for stage, s in art.stages.items():
        row: dict[str, Any] = {
            "stage": stage,
            "status": s.status,
            "hardware": (s.manifest or {}).get("device_name") or (s.manifest or {}).get("hardware"),
            "wall": duration(art.stage_seconds(stage)),
        }
        m = s.metrics if s.ran else None
        if stage in TRAINED and m is not None:
            per_epoch = [p["seconds_per_epoch"] for p in s.per_seed.values() if p.get("seconds_per_epoch")]
            spe, iters = (float(np.median(per_epoch)) if per_epoch else None), m.get("iters_per_epoch")
            s_iter = spe / iters if spe and iters else float("nan")
            px = m["batch_size"] * m["crop_hw"][0] * m["crop_hw"][1]
            row |= {
                "recipe": _recipe(m["epochs"], iters, m["batch_size"], m["crop_hw"]),
                "s/epoch": spe,
                "s/iter": s_iter,
                "600k iters (h)": s_iter * full / 3600,
                "paper batch & crop (h)": s_iter * full * paper_px / px / 3600,
            }
        rows.append(row)
    times = pub.study_times()
    for key, stage in (("teacher_100ep", "02_teacher"), ("distillation_100ep_from_100ep_teacher", "03_distill"),
                       ("student_100ep", "04_student"), ("student_300ep", "04_student")):
        t = times.from_logs[key]
        spe = t["train_s_per_epoch_mean"]
        rows.append({"stage": f"study {stage}", "status": "published", "hardware": times.gpu_stated,
                     "wall": duration(t["wall_total_h"] * 3600),
                     "recipe": _recipe(t["epochs"], PAPER_ITERS, PAPER_BATCH, PAPER_CROP_HW), "s/epoch": spe,
                     "s/iter": spe / PAPER_ITERS, "600k iters (h)": spe * PAPER_EPOCHS / 3600,
                     "paper batch & crop (h)": spe * PAPER_EPOCHS / 3600})
    cols = [
        "stage",
        "status",
        "hardware",
        "wall",
        "recipe",
        "s/epoch",
        "s/iter",
        "600k iters (h)",
        "paper batch & crop (h)",
    ]
    cap = (
        "Wall time of each stage's notebook in this pipeline run (pipeline.json, as on the front page; the last "
        "run's manifest.json when the pipeline skipped it); for training stages the recipe "
        "(epochs × iterations, batch, crop; the wall time covers every seed), the median training seconds per "
        "epoch over the seeds (metrics.json, evaluation excluded), per iteration, and that rate extrapolated to the paper's "
        f"{PAPER_EPOCHS} epochs × {PAPER_ITERS} iterations, first at this run's batch and crop, then scaled "
        "by pixels per batch to the paper's batch 12 of 512×1024 crops (a rough linear scaling; evaluation "
        "time not included). Study rows: hours measured from its log timestamps on one GPU "
        "(its training times), its mean training seconds per epoch extrapolated the same way. "
        f"{pub.note}"
    )
    fmts = {
        "s/epoch": "{:.1f}",
        "s/iter": "{:.3f}",
        "600k iters (h)": "{:.1f}",
        "paper batch & crop (h)": "{:.0f}",
    }
    return Exhibit(
        "Table 3", "Compute accounting", cap, pd.DataFrame(rows).reindex(columns=cols), formats=fmts
    )


def duration(seconds: float | None) -> str:
    """ "45 s", "12.5 min" or "20.7 h" (empty for ``None``)."""
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _recipe(epochs: int, iters: int, batch: int, crop_hw: Any) -> str:
    return f"{epochs} × {iters} it, batch {batch}, {crop_hw[0]}x{crop_hw[1]}"
