"""The analysis reads what the stages wrote: tiny artifact folders written here in the documented formats
(``fasterseg_core.stages`` / ``runs`` / ``latency.suite``), plus the published reference JSON files
(skipped when ``../shared`` is absent)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE

from fasterseg_core import analysis
from fasterseg_core.config import load_config
from fasterseg_core.models.published import published_architecture
from fasterseg_core.runs import stage_identity
from fasterseg_core.storage import save_json

CLASSES = ["sky", "building", "pole", "road", "car"]


def _manifest(cfg, stage: str, status: str = "complete", key: str | None = None) -> dict:
    return {
        "stage": stage,
        "profile": cfg.profile,
        "status": status,
        "identity": key or stage_identity(cfg, stage),
        "hardware": "cpu-test",
        "device": "cpu",
        "device_name": "x86_64",
        "seed": 12345,
        "git": {"sha": "0123456789abcdef", "dirty": False},
        "versions": {"python": "3.11.7", "torch": "2.14.1"},
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "seconds": 60.0,
    }


def _scores(miou: float, iou: list[float | None]) -> dict:
    return {"miou": miou, "miou_no_back": miou - 0.01, "pixel_acc": 0.9, "mean_class_acc": miou, "iou": iou}


def write_training_stage(cfg, stage: str, iou: list[float | None], arch_source: str = "published") -> None:
    """A finished training stage as ``fasterseg_core.stages.run_training`` leaves it."""
    folder = cfg.output_dir / stage
    role = "teacher" if stage == "02_teacher" else "student"
    best, last = _scores(0.5, iou), _scores(0.45, [None if v is None else v - 0.05 for v in iou])
    metrics = {
        "stage": stage,
        "role": role,
        "distilled": stage == "03_distill",
        "arch_source": arch_source,
        "num_classes": len(CLASSES),
        "class_names": CLASSES,
        "dataset": "camvid",
        "epochs": 4,
        "iters_per_epoch": 10,
        "batch_size": 2,
        "crop_hw": [64, 128],
        "params": 1000,
        "seconds_total": 40.0,
        "seconds_per_epoch": 8.0,
        "images_per_s": 2.5,
        "best": {"epoch": 3, "val": {k: v for k, v in best.items() if k != "iou"}},
        "last": {"epoch": 4, "val": {k: v for k, v in last.items() if k != "iou"}},
        "val": {"best": best | {"epoch": 3}, "last": last | {"epoch": 4}},
        "test": {"best": best | {"epoch": 3}, "last": last | {"epoch": 4}},
    }
    save_json(metrics, folder / "metrics.json")
    save_json(_manifest(cfg, stage), folder / "manifest.json")
    pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "iters": [10, 20, 30, 40],
            "loss": [2.0, 1.5, 1.2, 1.1],
            "seed_loss": 1.0,
            "kd_loss": np.nan,
            "lr": 0.01,
            "seconds": 8.0,
            "train_miou": [0.1, 0.2, 0.3, 0.35],
            "val_miou": [0.2, np.nan, 0.5, 0.45],
            "val_miou_no_back": np.nan,
            "val_pixel_acc": np.nan,
        }
    ).to_csv(folder / "history.csv", index=False)
    rows = [
        {"split": split, "checkpoint": which, "class": c, "iou": v}
        for split in ("val", "test")
        for which, s in (("best", best), ("last", last))
        for c, v in zip(CLASSES, s["iou"])
    ]
    pd.DataFrame(rows).to_csv(folder / "per_class_iou.csv", index=False)


def write_latency(cfg, tag: str = "cpu-test") -> None:
    """One machine's ``latency/<tag>.json`` (``LatencyRecord.save``) with FasterSeg networks and a peer."""
    rows = []
    for net, ms in (
        ("published teacher", 40.0),
        ("published student", 10.0),
        ("lraspp_mobilenet_v3_large", 12.0),
    ):
        for backend, factor in (("eager", 1.0), ("ort", 0.8)):
            rows.append(
                {
                    "hardware_tag": tag,
                    "network": net,
                    "source": "",
                    "backend": backend,
                    "status": "ok",
                    "input_hw": "128x256",
                    "median_ms": ms * factor,
                    "fps": 1000 / (ms * factor),
                    "reason": "",
                    "params_M": 4.4,
                    "thop_GMACs": 0.5,
                    "thop_GMACs_1024x2048": 28.0,
                }
            )
    rows.append(
        rows[0]
        | {
            "backend": "tensorrt",
            "status": "unavailable",
            "median_ms": None,
            "fps": None,
            "reason": "no TensorRT",
        }
    )
    env = {"device": "cpu", "cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 1, "torch_version": "2"}
    save_json(
        {"hardware_tag": tag, "environment": env, "rows": rows}, cfg.output_dir / "latency" / f"{tag}.json"
    )


def write_search(cfg) -> None:
    """``01_search``'s artifacts: derived architectures, per-epoch history with λ, raw α/β/γ per epoch."""
    folder = cfg.output_dir / "01_search"
    folder.mkdir(parents=True)
    for role in ("teacher", "student"):
        published_architecture(role).to_json(folder / f"arch_{role}.json")
    history = [
        {
            "phase": "search",
            "epoch": e,
            "student_latency_ms": 5.0 - e,
            "student_latency02_ms": 5.5 - e,
            "student_latency12_ms": 4.8 - e,
            "lambda": 0.01 * 2 ** (e - 1),
            "lambda_next": 0.01 * 2**e,
        }
        for e in (1, 2)
    ]
    rng = np.random.default_rng(0)

    def tensors(k: int) -> dict:
        names = [f"alpha_{k}_{s}" for s in range(3)] + [f"beta_{k}_{s}" for s in (1, 2)]
        names += [f"ratio_{k}_{s}" for s in range(3)]
        return {n: rng.normal(size=(3, 2 if n.startswith("beta") else 5)).tolist() for n in names}

    arch_history = [{"epoch": e, "teacher": tensors(0), "student": tensors(1)} for e in (0, 1, 2)]
    save_json(history, folder / "history.json")
    save_json(arch_history, folder / "arch_history.json")
    role_metrics = {"latency_ms": 3.0, "fps": 333.3, "arch_max_shift": 0.01}
    save_json(
        {
            "latency_table": {"hardware_tag": "cpu-test", "backend": "eager", "input_hw": [128, 256]},
            "target_fps": [300.0, 340.0],
            "lambda_final": 0.04,
            "arch_steps": 2,
            "student_in_window": True,
            "teacher": role_metrics,
            "student": role_metrics,
        },
        folder / "metrics.json",
    )
    save_json(_manifest(cfg, "01_search"), folder / "manifest.json")


@pytest.fixture
def cfg(tmp_path):
    return load_config("smoke", {"output_root": str(tmp_path / "out")})


@pytest.fixture
def full(cfg):
    """Every upstream stage done: search, three training stages, latency, data."""
    write_search(cfg)
    write_training_stage(cfg, "02_teacher", [0.9, 0.6, None, 0.8, 0.2])
    write_training_stage(cfg, "03_distill", [0.85, 0.5, None, 0.7, 0.3])
    write_training_stage(cfg, "04_student", [0.8, 0.55, None, 0.7, 0.1])
    write_latency(cfg)
    save_json({"images": {"train": 32, "val": 8, "test": 8}}, cfg.output_dir / "00_data" / "metrics.json")
    save_json(_manifest(cfg, "00_data"), cfg.output_dir / "00_data" / "manifest.json")
    save_json(_manifest(cfg, "05_latency"), cfg.output_dir / "05_latency" / "manifest.json")
    save_json({}, cfg.output_dir / "05_latency" / "metrics.json")
    return cfg


NO_REFERENCE = analysis.Published(None, None, REFERENCE.parent / "absent")


def _numbers(exhibit: analysis.Exhibit, column: str) -> list[float]:
    return [v for v in exhibit.table[column] if isinstance(v, (int, float)) and not math.isnan(v)]


# ---- reading ------------------------------------------------------------------------------------------


def test_stage_status_distinguishes_missing_incomplete_and_other_config(cfg):
    write_training_stage(cfg, "02_teacher", [0.5] * 5)
    save_json(_manifest(cfg, "03_distill", status="running"), cfg.output_dir / "03_distill" / "manifest.json")
    write_training_stage(cfg, "04_student", [0.5] * 5)
    save_json(_manifest(cfg, "04_student", key="another"), cfg.output_dir / "04_student" / "manifest.json")
    art = analysis.load_artifacts(cfg)
    status = {k: s.status for k, s in art.stages.items()}
    assert status == {
        "00_data": "not run",
        "01_search": "not run",
        "02_teacher": "complete",
        "03_distill": "incomplete",
        "04_student": "other config",
        "05_latency": "not run",
    }
    assert art.trained("02_teacher") and art.trained("04_student") and art.trained("03_distill") is None
    assert art.latency.empty and art.pipeline is None


def test_nothing_ran_gives_not_run_rows_and_missing_panels_without_errors(cfg):
    art = analysis.load_artifacts(cfg)
    t1 = analysis.table1(art, NO_REFERENCE)
    assert list(t1.table.note) == ["02_teacher not run", "03_distill not run", "04_student not run"]
    assert "Published columns are empty" in t1.caption
    assert analysis.table2(art, NO_REFERENCE).table.network.tolist() == ["05_latency not run"]
    for exhibit in (
        analysis.figure1(art, NO_REFERENCE),
        analysis.distillation_gain(art, NO_REFERENCE),
        analysis.accuracy_latency(art),
        *analysis.search_story(art),
    ):
        assert exhibit.missing and not exhibit.png
        assert "Not available" in exhibit.to_html()
    curves = analysis.training_curves(art, NO_REFERENCE)
    assert curves.missing
    compute = analysis.compute_table(art, NO_REFERENCE)
    assert set(compute.table.status) == {"not run"}
    for exhibit in analysis.reproducibility(art):
        exhibit.to_html()


# ---- the exhibits -------------------------------------------------------------------------------------


def test_table1_reads_best_and_last_as_percent(full):
    t1 = analysis.table1(analysis.load_artifacts(full), NO_REFERENCE)
    rows = t1.table.set_index(["source", "model"])
    assert len(rows) == 6
    assert rows.loc[("this run, best", "Teacher"), "Validation mIoU (%)"] == pytest.approx(50.0)
    assert rows.loc[("this run, last", "Distilled student"), "Validation mIoU (%)"] == pytest.approx(45.0)
    assert rows.loc[("this run, best", "Trained student"), "Mean IU no back (%)"] == pytest.approx(49.0)
    assert rows.loc[("this run, best", "Teacher"), "at epoch"] == 3
    html = t1.to_html()
    assert (
        'data-exhibit="Table 1"' in html
        and "<td>50.0</td>" in html
        and "Table 1. Validation accuracy" in html
    )


def test_figure1_per_class_iou_and_distillation_gain(full):
    art = analysis.load_artifacts(full)
    frame, split = analysis.per_class_iou(art)
    assert split == "test" and list(frame.index) == CLASSES
    assert frame.loc["sky", "Teacher"] == pytest.approx(90.0) and math.isnan(frame.loc["pole", "Teacher"])
    fig1 = analysis.figure1(art, NO_REFERENCE)
    assert fig1.png.startswith(b"\x89PNG") and len(fig1.table) == len(CLASSES)
    gain = analysis.distillation_gain(art, NO_REFERENCE)
    by_class = gain.table.set_index("class")["gain (points)"]
    assert by_class["car"] == pytest.approx(20.0) and by_class["road"] == pytest.approx(0.0)
    assert math.isnan(by_class["pole"]) and gain.png


def test_table2_keeps_the_trained_networks_on_every_machine_and_backend(full):
    write_latency(full, "cuda-test")
    art = analysis.load_artifacts(full)
    t2 = analysis.table2(art, NO_REFERENCE).table
    ours = t2[t2.source == "ours"]
    assert set(ours.network) == {"published teacher", "published student"}  # arch_source of the stages
    assert set(ours.hardware) == {"cpu-test", "cuda-test"} and set(ours.backend) == {
        "eager",
        "ort",
        "tensorrt",
    }
    eager = ours[(ours.network == "published student") & (ours.backend == "eager")]
    assert eager.FPS.tolist() == [100.0, 100.0]
    trt = ours[ours.backend == "tensorrt"]
    assert trt.ms.isna().all() and (trt.FPS == "unavailable").all()


def test_accuracy_latency_places_trained_networks_and_peers_apart(full):
    fig = analysis.accuracy_latency(analysis.load_artifacts(full), backend="eager")
    table = fig.table.set_index("network")
    assert table.loc["lraspp_mobilenet_v3_large", "kind"] == "torchvision peer"
    assert math.isnan(table.loc["lraspp_mobilenet_v3_large", "val mIoU (%)"])
    trained = fig.table[fig.table.model.notna()]
    assert set(trained.model) == {"Teacher", "Distilled student", "Trained student"}
    assert trained.set_index("model").loc["Teacher", "ms"] == 40.0 and fig.png


def test_training_curves_and_compute_accounting(full):
    art = analysis.load_artifacts(full)
    assert analysis.training_curves(art, NO_REFERENCE).png
    table = analysis.compute_table(art, NO_REFERENCE).table.set_index("stage")
    teacher = table.loc["02_teacher"]
    assert teacher["s/iter"] == pytest.approx(0.8)  # 8 s per epoch of 10 iterations
    assert teacher["600k iters (h)"] == pytest.approx(0.8 * 600_000 / 3600)
    scale = 12 * 512 * 1024 / (2 * 64 * 128)  # paper batch × crop over ours, in pixels
    assert teacher["paper batch & crop (h)"] == pytest.approx(0.8 * 600_000 * scale / 3600)
    assert table.loc["00_data", "wall"] == "60 s" and teacher.recipe == "4 × 10 it, batch 2, 64x128"


def test_search_story_and_reproducibility(full):
    art = analysis.load_artifacts(full)
    story = analysis.search_story(art)
    assert [e.label for e in story] == ["Figure 3a", "Figure 3b", "Figure 3c", "Figure 3d", "Figure 3e"]
    assert all(e.png for e in story)
    manifest = {e.label: e for e in analysis.reproducibility(art)}
    provenance = manifest["Table 4a"].table.set_index("stage")
    assert (
        provenance.loc["02_teacher", "commit"] == "0123456789"
        and provenance.loc["02_teacher", "seed"] == 12345
    )
    assert "torch" in set(manifest["Table 4b"].table.package)
    assert manifest["Table 4c"].table["CPU"].tolist() == ["Test CPU"]
    data = manifest["Table 4d"].table
    assert (
        data.images.tolist() == [32, 8, 8] and "fixed seed" in data["checksum source"][0]
    )  # smoke: synthetic
    config = manifest["Table 4e"].table.set_index("key")
    assert (
        config.loc["data.dataset", "this run"] == "synthetic"
        and config.loc["data.dataset", "paper default"] == "cityscapes"
    )


def test_exhibit_saves_and_renders_in_a_notebook(full, tmp_path):
    t1 = analysis.table1(analysis.load_artifacts(full), NO_REFERENCE)
    bundle = t1._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"} and "Validation accuracy" in bundle["text/plain"]
    fig = analysis.figure1(analysis.load_artifacts(full), NO_REFERENCE)
    assert "image/png" in fig._repr_mimebundle_()
    paths = [*t1.save(tmp_path / "run"), *fig.save(tmp_path / "run")]
    assert sorted(p.relative_to(tmp_path / "run").as_posix() for p in paths) == [
        "figures/figure_1.png",
        "tables/figure_1.csv",
        "tables/table_1.csv",
    ]
    assert len(pd.read_csv(tmp_path / "run" / "tables" / "table_1.csv")) == len(t1.table)
    summary = analysis.summary(analysis.load_artifacts(full), [t1, fig])
    assert summary["02_teacher"]["best_val_miou"] == 0.5 and summary["exhibits"] == {
        "Table 1": "ok",
        "Figure 1": "ok",
    }
    json.dumps(summary)


# ---- the published numbers ----------------------------------------------------------------------------


@pytest.fixture
def published():
    pub = analysis.load_published()
    if pub.study is None or pub.paper is None:
        pytest.skip(f"reference data {REFERENCE} not available")
    return pub


def test_published_columns_hold_the_study_and_the_paper(full, published):
    art = analysis.load_artifacts(full)
    t1 = analysis.table1(art, published).table.set_index(["source", "model"])
    assert t1.loc[("study, 100 epochs", "Teacher"), "Validation mIoU (%)"] == 56.7
    assert t1.loc[("study, 300 epochs", "Trained Student"), "Mean pixel acc (%)"] == 94.8
    assert t1.loc[("paper, Table 4", "FasterSeg (student)"), "Validation mIoU (%)"] == 73.1
    t2 = analysis.table2(art, published).table.set_index(["source", "network"])
    assert t2.loc[("paper", "student")][["params (M)", "GFLOPs", "FPS"]].tolist() == [
        4.4,
        28.2,
        163.9,
    ]
    assert t2.loc[("study A", "student"), "FPS"] == 96.1
    assert t2.loc[("study B", "student"), "FPS"] == 195.9
    assert t2.loc[("study B (log)", "teacher"), "FPS"] == pytest.approx(79.24, abs=0.01)
    assert "Published numbers" in analysis.table1(art, published).caption


def test_study_test_iou_matches_our_cityscapes_class_names(published):
    from fasterseg_core.data.labels import CITYSCAPES

    study = analysis.study_test_iou(published)
    assert study.shape == (19, 4)
    keys = [re.sub(r"[^a-z0-9]", "", n.lower()) for n in CITYSCAPES.class_names]
    assert study.reindex(keys).notna().all().all(), "every Cityscapes class must find the study's IoU"
    assert study.loc["road", "FasterSeg Student (pretrained weights)"] == 97.8054


def test_training_curves_and_compute_include_the_study(full, published):
    art = analysis.load_artifacts(full)
    assert analysis.training_curves(art, published).png
    compute = analysis.compute_table(art, published).table.set_index("stage")
    assert compute.loc["study 02_teacher", "s/epoch"] == 662.5
    assert compute.loc["study 02_teacher", "600k iters (h)"] == pytest.approx(662.5 * 600 / 3600)


def test_figure1_on_cityscapes_adds_the_study_submissions_and_the_paper(tmp_path, published):
    from fasterseg_core.data.labels import CITYSCAPES

    cfg = load_config("smoke", {"output_root": str(tmp_path / "out")})
    names = list(CITYSCAPES.class_names)
    write_training_stage(cfg, "04_student", [0.5] * len(names))
    metrics = json.loads((cfg.output_dir / "04_student" / "metrics.json").read_text())
    metrics.update(dataset="cityscapes", class_names=names, num_classes=len(names))
    metrics.pop("test")  # Cityscapes test labels are withheld
    save_json(metrics, cfg.output_dir / "04_student" / "metrics.json")
    (cfg.output_dir / "04_student" / "per_class_iou.csv").unlink()
    fig = analysis.figure1(analysis.load_artifacts(cfg), published)
    assert fig.title == "Per-class IoU on the val split" and "withheld" in fig.caption
    columns = list(fig.table.columns)
    assert "Trained student (%)" in columns and "study: Trained Student (300 epochs) (%)" in columns
    assert (
        fig.table.set_index("class").loc["road", "study: FasterSeg Student (pretrained weights) (%)"]
        == 97.8054
    )
    assert "71.5" in fig.caption
