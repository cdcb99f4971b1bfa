"""The analysis reads what the stages wrote: tiny artifact folders written here in the documented layout
(per-seed runs ``<stage>/seed-<s>/`` aggregated by ``fasterseg_core.stages``; ``runs``; ``latency.suite``)
and the published numbers the package carries."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fasterseg_core import analysis
from fasterseg_core.config import load_config
from fasterseg_core.models.published import published_architecture
from fasterseg_core.runs import stage_identity
from fasterseg_core.stages import aggregate_seeds, load_seed_result
from fasterseg_core.storage import save_json

CLASSES = ["sky", "building", "pole", "road", "car"]
SEEDS = (12345, 12346)


def _manifest(cfg, stage: str, status: str = "complete", key: str | None = None, seed: int | None = None) -> dict:
    return {
        "stage": stage, "profile": cfg.profile, "status": status,
        "identity": key or stage_identity(cfg, stage, seed=seed), "hardware": "cpu-test", "device": "cpu",
        "device_name": "x86_64", "seed": seed, "git": {"sha": "0123456789abcdef", "dirty": False},
        "versions": {"python": "3.11.7", "torch": "2.14.1"}, "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00", "seconds": 60.0,
        "precision": "none" if stage in ("02_teacher", "03_distill", "04_student") else None,
    }


def _scores(miou: float, iou: list[float | None]) -> dict:
    return {"miou": miou, "miou_no_back": miou - 0.01, "pixel_acc": 0.9, "mean_class_acc": miou, "iou": iou}


def write_training_stage(cfg, stage: str, iou: list[float | None], arch_source: str = "published",
                         seeds: tuple[int, ...] = SEEDS, shift: float = 0.02) -> None:
    """A finished training stage as ``stages.run_training`` leaves it: one run per seed (seed k's scores
    ``k · shift`` lower), then the stage's aggregate."""
    results = {}
    for k, seed in enumerate(seeds):
        folder = cfg.output_dir / stage / f"seed-{seed}"
        d = k * shift
        ious = [None if v is None else v - d for v in iou]
        best, last = _scores(0.5 - d, ious), _scores(0.45 - d, [None if v is None else v - 0.05 for v in ious])
        metrics = {
            "stage": stage, "role": "teacher" if stage == "02_teacher" else "student",
            "distilled": stage == "03_distill", "arch_source": arch_source, "num_classes": len(CLASSES),
            "class_names": CLASSES, "dataset": "camvid", "epochs": 4, "iters_per_epoch": 10, "batch_size": 2,
            "crop_hw": [64, 128], "params": 1000, "seconds_total": 40.0, "seconds_per_epoch": 8.0,
            "images_per_s": 2.5, "best": {"epoch": 3, "val": {k: v for k, v in best.items() if k != "iou"}},
            "last": {"epoch": 4, "val": {k: v for k, v in last.items() if k != "iou"}},
            "val": {"best": best | {"epoch": 3}, "last": last | {"epoch": 4}},
            "test": {"best": best | {"epoch": 3}, "last": last | {"epoch": 4}},
        }
        save_json(metrics, folder / "metrics.json")
        save_json(_manifest(cfg, stage, seed=seed), folder / "manifest.json")
        pd.DataFrame({"epoch": [1, 2, 3, 4], "iters": [10, 20, 30, 40], "loss": [2.0, 1.5, 1.2, 1.1],
                      "kd_loss": np.nan, "lr": 0.01, "seconds": 8.0, "train_miou": [0.1, 0.2, 0.3, 0.35],
                      "val_miou": [0.2, np.nan, 0.5 - d, 0.45 - d], "val_miou_no_back": np.nan,
                      "val_pixel_acc": np.nan}).to_csv(folder / "history.csv", index=False)
        rows = [{"split": split, "checkpoint": which, "class": c, "iou": v} for split in ("val", "test")
                for which, s in (("best", best), ("last", last)) for c, v in zip(CLASSES, s["iou"])]
        pd.DataFrame(rows).to_csv(folder / "per_class_iou.csv", index=False)
        results[seed] = load_seed_result(cfg, stage, seed)
    save_json(aggregate_seeds(stage, results).metrics, cfg.output_dir / stage / "metrics.json")
    save_json(_manifest(cfg, stage), cfg.output_dir / stage / "manifest.json")


def write_latency(cfg, tag: str = "cpu-test") -> None:
    """One machine's ``latency/<tag>.json`` (``LatencyRecord.save``) with FasterSeg networks and a peer."""
    rows = []
    for net, ms in (("published teacher", 40.0), ("published student", 10.0), ("lraspp_mobilenet_v3_large", 12.0)):
        for backend, factor in (("eager", 1.0), ("ort", 0.8)):
            rows.append({"hardware_tag": tag, "network": net, "source": "", "backend": backend, "status": "ok",
                         "input_hw": "128x256", "median_ms": ms * factor, "fps": 1000 / (ms * factor), "reason": "",
                         "params_M": 4.41, "thop_GMACs": 0.5, "thop_GMACs_1024x2048": 27.9})
    rows.append(rows[0] | {"backend": "tensorrt", "status": "unavailable", "median_ms": None, "fps": None,
                           "reason": "no TensorRT"})
    env = {"device": "cpu", "cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 1, "torch_version": "2"}
    save_json({"hardware_tag": tag, "environment": env, "rows": rows}, cfg.output_dir / "latency" / f"{tag}.json")


def write_search(cfg) -> None:
    """``01_search``'s artifacts: derived architectures, per-epoch history with λ, raw α/β/γ per epoch."""
    folder = cfg.output_dir / "01_search"
    folder.mkdir(parents=True)
    for role in ("teacher", "student"):
        published_architecture(role).to_json(folder / f"arch_{role}.json")
    history = [{"phase": "search", "epoch": e, "student_latency_ms": 5.0 - e, "student_latency02_ms": 5.5 - e,
                "student_latency12_ms": 4.8 - e, "lambda": 0.01 * 2 ** (e - 1), "lambda_next": 0.01 * 2**e}
               for e in (1, 2)]
    rng = np.random.default_rng(0)

    def tensors(k: int) -> dict:
        names = [f"alpha_{k}_{s}" for s in range(3)] + [f"beta_{k}_{s}" for s in (1, 2)]
        names += [f"ratio_{k}_{s}" for s in range(3)]
        return {n: rng.normal(size=(3, 2 if n.startswith("beta") else 5)).tolist() for n in names}

    save_json(history, folder / "history.json")
    save_json([{"epoch": e, "teacher": tensors(0), "student": tensors(1)} for e in (0, 1, 2)],
              folder / "arch_history.json")
    role_metrics = {"latency_ms": 3.0, "fps": 333.3, "arch_max_shift": 0.01}
    save_json({"latency_table": {"hardware_tag": "cpu-test", "backend": "eager", "input_hw": [128, 256]},
               "target_fps": [300.0, 340.0], "lambda_final": 0.04, "arch_steps": 2, "student_in_window": True,
               "published_student_ms": 3.1, "teacher": role_metrics, "student": role_metrics},
              folder / "metrics.json")
    save_json(_manifest(cfg, "01_search"), folder / "manifest.json")


@pytest.fixture
def cfg(tmp_path):
    return load_config("smoke", {"output_root": str(tmp_path / "out"), "model.arch_source": "published"})


@pytest.fixture
def pub():
    return analysis.load_published()


@pytest.fixture
def full(cfg):
    """Every upstream stage done: search, three training stages (two seeds; one shared teacher), latency, data."""
    write_search(cfg)
    write_training_stage(cfg, "02_teacher", [0.9, 0.6, None, 0.8, 0.2], seeds=SEEDS[:1])
    write_training_stage(cfg, "03_distill", [0.85, 0.5, None, 0.7, 0.3])
    write_training_stage(cfg, "04_student", [0.8, 0.55, None, 0.7, 0.1], shift=0.01)
    write_latency(cfg)
    save_json({"images": {"train": 32, "val": 8, "test": 8}}, cfg.output_dir / "00_data" / "metrics.json")
    save_json(_manifest(cfg, "00_data"), cfg.output_dir / "00_data" / "manifest.json")
    save_json(_manifest(cfg, "05_latency"), cfg.output_dir / "05_latency" / "manifest.json")
    save_json({}, cfg.output_dir / "05_latency" / "metrics.json")
    return cfg


# ---- reading ------------------------------------------------------------------------------------------


def test_stage_status_distinguishes_missing_incomplete_and_other_config(cfg):
    write_training_stage(cfg, "02_teacher", [0.5] * 5, seeds=SEEDS[:1])
    save_json(_manifest(cfg, "03_distill", status="running"), cfg.output_dir / "03_distill" / "manifest.json")
    write_training_stage(cfg, "04_student", [0.5] * 5)
    save_json(_manifest(cfg, "04_student", key="another"), cfg.output_dir / "04_student" / "manifest.json")
    art = analysis.load_artifacts(cfg)
    status = {k: s.status for k, s in art.stages.items()}
    assert status == {"00_data": "not run", "01_search": "not run", "02_teacher": "complete",
                      "03_distill": "incomplete", "04_student": "other config", "05_latency": "not run"}
    assert art.trained("02_teacher") and art.trained("04_student") and art.trained("03_distill") is None
    assert art.seed_values("04_student", "test", "best") == pytest.approx({12345: 0.5, 12346: 0.48})
    assert art.latency.empty and art.pipeline is None


def test_nothing_ran_gives_not_run_rows_and_missing_panels_without_errors(cfg, pub):
    art = analysis.load_artifacts(cfg)
    t1 = analysis.table1(art, pub)
    ours = t1.table[t1.table.source == "this run"]
    assert list(ours.note) == ["02_teacher not run", "03_distill not run", "04_student not run"]
    assert "Published numbers" in t1.caption  # the package carries them: no empty columns
    assert analysis.table2(art, pub).table.network.tolist()[0] == "05_latency not run"
    for exhibit in (analysis.figure1(art, pub), analysis.distillation_gain(art, pub), analysis.accuracy_latency(art),
                    *analysis.search_story(art)):
        assert exhibit.missing and not exhibit.png
        assert "Not available" in exhibit.to_html()
    compute = analysis.compute_table(art, pub)
    assert set(compute.table.status[~compute.table.stage.str.startswith("study")]) == {"not run"}
    entries = analysis.ledger(art, pub)
    # nothing ran: every claim on this run is untested; params and FLOPs are the published network's, counted anyway
    assert {e.verdict for e in entries if e.id != "paper_student_params_flops"} == {"not tested"}
    for exhibit in analysis.reproducibility(art):
        exhibit.to_html()


# ---- the exhibits -------------------------------------------------------------------------------------


def test_table1_gives_the_mean_over_seeds_and_its_interval(full, pub):
    t1 = analysis.table1(analysis.load_artifacts(full), pub)
    rows = t1.table.set_index(["source", "model"])
    ours = rows.loc[["this run, best", "this run, last"]]
    assert len(ours) == 6
    assert rows.loc[("this run, best", "Teacher"), "Validation mIoU (%)"] == pytest.approx(50.0)
    assert rows.loc[("this run, best", "Teacher"), "mIoU 95 % CI"] == "n = 1"  # one shared teacher
    assert rows.loc[("this run, best", "Distilled student"), "Validation mIoU (%)"] == pytest.approx(49.0)
    # two seeds 50.0 and 48.0: mean 49, sd √2, t(0.975, 1) = 12.706: 49 ± 12.706 · √2 / √2 = 49 ± 12.706
    assert rows.loc[("this run, best", "Distilled student"), "mIoU 95 % CI"] == "[36.3, 61.7]"
    assert rows.loc[("this run, last", "Distilled student"), "Validation mIoU (%)"] == pytest.approx(44.0)
    assert rows.loc[("this run, best", "Trained student"), "seeds"] == 2
    assert rows.loc[("this run, best", "Teacher"), "at epoch"] == "3"
    assert rows.loc[("study, 100 epochs", "Teacher"), "Validation mIoU (%)"] == 56.7
    assert rows.loc[("paper, Table 4", "FasterSeg (student)"), "Validation mIoU (%)"] == 73.1
    assert 'data-exhibit="Table 1"' in t1.to_html() and "<td>50.0</td>" in t1.to_html()


def test_figure1_and_distillation_gain_are_paired_by_seed(full, pub):
    art = analysis.load_artifacts(full)
    frame, split = analysis.per_class_iou(art)
    assert split == "test" and set(frame["class"]) == set(CLASSES) and set(frame.seed) == set(SEEDS)
    teacher = frame[(frame.model == "Teacher") & (frame["class"] == "sky")]
    assert teacher.iou.tolist() == [pytest.approx(90.0)]
    fig1 = analysis.figure1(art, pub)
    assert fig1.png.startswith(b"\x89PNG") and len(fig1.table) == len(CLASSES)
    gain = analysis.distillation_gain(art, pub).table.set_index("class")
    # car: distilled 30 / 28, trained 10 / 9 → per-seed gains 20 and 19
    assert gain.loc["car", "mean gain (points)"] == pytest.approx(19.5) and gain.loc["car", "seeds"] == 2
    assert gain.loc["car", "per seed"] == "+20.0, +19.0"
    assert "pole" not in gain.index  # absent from every split: no pair


def test_claims_ledger_gives_a_verdict_per_claim(full, pub, tmp_path):
    art = analysis.load_artifacts(full)
    entries = {(e.id, e.metric.split(",")[0]): e for e in analysis.ledger(art, pub)}
    par_test = entries[("study_trained_on_par_with_distilled", "test mIoU")]
    # distilled − scratch (the sign of the paper's claim on the same measurement), test best: 50 − 50 = 0 and
    # 48 − 49 = −1 → mean −0.5, t-interval [−6.85, 5.85]
    assert par_test.per_seed == pytest.approx({12345: 0.0, 12346: -1.0})
    assert par_test.verdict == "inconclusive" and par_test.summary["ci_low"] == pytest.approx(-0.5 - 12.706 / 2, abs=1e-3)
    gain = entries[("paper_distillation_improves_student", "test mIoU")]
    assert gain.per_seed == par_test.per_seed  # one measurement, one sign
    assert par_test.analogue == "camvid, 4 × 10 iterations of batch 2 at 64×128, 2 seed(s)"  # not Cityscapes at 600 epochs
    # power from the observed sd (√0.5): n = 2 detects only large differences; on par within ±1 needs more seeds
    assert par_test.power_detail["n"] == 2 and par_test.power_detail["detectable"] == pytest.approx(8.17, abs=0.05)
    assert par_test.power.startswith("n = 2, sd 0.71 points") and "'on par' within ±1 needs" in par_test.power
    assert par_test.power_detail["seeds_for_on_par"] > 2
    above = entries[("study_distilled_above_teacher_val", "val mIoU")]
    assert above.per_seed == pytest.approx({12345: 0.0, 12346: -2.0})  # both seeds against the one teacher
    assert "One teacher serves every seed" in above.note
    target = entries[("paper_student_meets_latency_target", "searched student's table FPS on this device")]
    # one search, judged on its own number: 333.3 FPS inside the 300–340 window
    assert target.verdict == "on par" and target.reason.startswith("333.3 FPS on the table, inside the window")
    assert "met" in target.reason and not target.power
    speed = entries[("study_student_much_faster_than_teacher", "teacher / student latency")]
    assert speed.per_seed == {0: 4.0} and speed.verdict == "supported"
    params = entries[("paper_student_params_flops", "parameters (M)")]
    flops = entries[("paper_student_params_flops", "GFLOPs at 1024×2048")]
    # the 19-class network the claim is about, whatever this run's head: 4,385,689 parameters and 27.90 G in the
    # convention of the authors' thop 0.0.31, 28.03 G by thop 0.1.1; both within 2 % of the published 28.2 G
    assert params.per_seed == {0: pytest.approx(4.385689)} and flops.per_seed == {0: pytest.approx(27.901919232)}
    assert params.verdict == "on par" and flops.verdict == "on par" and "19 classes" in flops.metric
    assert "28.032 by thop 0.1" in flops.reason and "from 27.77 G of plain convolutions" in flops.reason
    table = analysis.claims_exhibit(art, list(entries.values()), pub)
    assert set(table.table.verdict) <= {"supported", "contradicted", "on par", "inconclusive", "not tested"}
    path = analysis.save_ledger(list(entries.values()), tmp_path)
    saved = json.loads(path.read_text())
    assert saved["format"] == "fasterseg-claims/1" and len(saved["claims"]) == len(entries)
    assert analysis.paired_figure(list(entries.values())).png


def test_summary_names_the_recipe_deviations_of_the_default_profile():
    rows = {d["key"]: d for d in analysis.summary.deviations(load_config("camvid-cpu"))}
    for stage in ("teacher", "distill", "student"):  # one recipe for all three networks
        schedule, weighting, lr = (rows[f"{stage}.{k}"] for k in ("lr_schedule", "class_weighting", "lr"))
        assert (schedule["this run"], schedule["paper"]) == ("cosine", "exponential")
        assert (weighting["this run"], weighting["paper"], lr["this run"]) == ("enet", "none", 0.02)
    assert rows["teacher.epochs"]["this run"] > load_config("camvid-cpu").student.epochs  # so that it leads


def test_reproducibility_summary_is_built_from_the_artifacts(full, pub, tmp_path):
    art = analysis.load_artifacts(full)
    entries = analysis.ledger(art, pub)
    summary = analysis.build_summary(art, entries, pub)
    assert [s["claim"] for s in summary["scope"]] == list(dict.fromkeys(e.claim for e in entries))  # one per claim
    assert summary["methodology"]["seeds"] == [12345, 12346] and summary["methodology"]["networks"] == ["published"]
    assert {d["key"] for d in summary["deviations"]} >= {"data.dataset", "seeds"}
    assert any("inconclusive" in x for x in summary["difficult"])
    html = analysis.summary_html(summary)
    assert "Training precision: 02_teacher fp32, 03_distill fp32, 04_student fp32." in html
    for section in ("Main results", "Claims", "Confounds that remain", "Scope of reproducibility", "Methodology",
                    "Discussion", "Limitations", "What was easy", "What was difficult", "Deviations from the paper"):
        assert f"<h3>{section}</h3>" in html
    assert html.index("<h3>Main results</h3>") < html.index("<h3>Claims</h3>") < html.index("<h3>Methodology</h3>")
    # page 1 gives absolute results: each network's mean [CI] (n) beside the published mIoU, the paper's CamVid one too
    main = {r["network"]: r for r in summary["main_results"]}
    assert main["Distilled student"]["val"] == "49.0 [36.3, 61.7] (n = 2)" and main["Teacher"]["val"] == "50.0 (n = 1)"
    assert "71.1 % CamVid test (paper, CamVid comparison table)" in main["Distilled student"]["published"]
    # the claims set ours beside the published difference of the same measurement
    par_val = next(r for r in summary["results"] if r["tested"].startswith("val mIoU, distilled − scratch"))
    assert par_val["published_difference"] == "-0.70 points (study, Table 1)"
    # confounds: the teacher (50.0) is not 3 points above the students (49.0), and one teacher serves both seeds
    assert any("not measurably stronger" in c for c in summary["confounds"])
    assert any("One teacher serves every seed" in c for c in summary["confounds"])
    assert any("Compute:" in w for w in summary["discussion"]["why"])
    assert any("smallest difference found with 80 % power" in c for c in summary["discussion"]["cannot"])
    analysis.save_summary(summary, tmp_path)
    assert (tmp_path / "summary.html").read_text() == html and (tmp_path / "summary.json").exists()


def test_table2_keeps_the_trained_networks_on_every_machine_and_backend(full, pub):
    write_latency(full, "cuda-test")
    t2 = analysis.table2(analysis.load_artifacts(full), pub).table
    ours = t2[t2.source == "ours"]
    assert set(ours.network) == {"published teacher", "published student"}  # arch_source of the stages
    assert set(ours.hardware) == {"cpu-test", "cuda-test"} and set(ours.backend) == {"eager", "ort", "tensorrt"}
    eager = ours[(ours.network == "published student") & (ours.backend == "eager")]
    assert eager.FPS.tolist() == [100.0, 100.0]
    trt = ours[ours.backend == "tensorrt"]
    assert trt.ms.isna().all() and (trt.FPS == "unavailable").all()
    published = t2.set_index(["source", "network"])
    assert published.loc[("paper, Table 4", "student")][["params (M)", "GFLOPs", "FPS"]].tolist() == [4.4, 28.2, 163.9]
    assert published.loc[("study A", "student"), "FPS"] == 96.1
    assert published.loc[("study B (log)", "teacher"), "FPS"] == pytest.approx(79.24, abs=0.01)


def test_accuracy_latency_places_trained_networks_and_peers_apart(full):
    fig = analysis.accuracy_latency(analysis.load_artifacts(full), backend="eager")
    table = fig.table.set_index("network")
    assert table.loc["lraspp_mobilenet_v3_large", "kind"] == "torchvision peer"
    assert math.isnan(table.loc["lraspp_mobilenet_v3_large", "val mIoU (%)"])
    trained = fig.table[fig.table.model.notna()].set_index("model")
    assert set(trained.index) == {"Teacher", "Distilled student", "Trained student"}
    assert trained.loc["Teacher", "ms"] == 40.0 and trained.loc["Distilled student", "val mIoU (%)"] == pytest.approx(49.0)


def test_training_curves_and_compute_accounting(full, pub):
    art = analysis.load_artifacts(full)
    assert analysis.training_curves(art, pub).png
    table = analysis.compute_table(art, pub).table.set_index("stage")
    teacher = table.loc["02_teacher"]
    assert teacher["s/iter"] == pytest.approx(0.8)  # 8 s per epoch of 10 iterations
    assert teacher["600k iters (h)"] == pytest.approx(0.8 * 600_000 / 3600)
    scale = 12 * 512 * 1024 / (2 * 64 * 128)  # paper batch × crop over ours, in pixels
    assert teacher["paper batch & crop (h)"] == pytest.approx(0.8 * 600_000 * scale / 3600)
    assert table.loc["00_data", "wall"] == "60 s" and teacher.recipe == "4 × 10 it, batch 2, 64x128"
    assert table.loc["study 02_teacher", "s/epoch"] == 662.5


def test_search_story_and_reproducibility(full):
    art = analysis.load_artifacts(full)
    story = analysis.search_story(art)
    assert [e.label for e in story] == ["Figure 3a", "Figure 3b", "Figure 3c", "Figure 3d", "Figure 3e", "Table 3f"]
    assert all(e.png for e in story[:5])
    compared = story[5].table.set_index("network")
    assert compared.loc["published student", "measured ms"] == 10.0 and "cannot show" in story[5].caption
    manifest = {e.label: e for e in analysis.reproducibility(art)}
    provenance = manifest["Table 4a"].table.set_index("stage")
    assert provenance.loc["02_teacher", "commit"] == "0123456789"
    assert "torch" in set(manifest["Table 4b"].table.package)
    assert manifest["Table 4c"].table["CPU"].tolist() == ["Test CPU"]
    data = manifest["Table 4d"].table
    assert data.images.tolist() == [32, 8, 8] and "fixed seed" in data["checksum source"][0]  # smoke: synthetic
    config = manifest["Table 4e"].table.set_index("key")
    assert config.loc["data.dataset", "this run"] == "synthetic" and config.loc["data.dataset", "paper default"] == "cityscapes"


def test_exhibit_saves_and_renders_in_a_notebook(full, pub, tmp_path):
    t1 = analysis.table1(analysis.load_artifacts(full), pub)
    bundle = t1._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"} and "Validation accuracy" in bundle["text/plain"]
    fig = analysis.figure1(analysis.load_artifacts(full), pub)
    assert "image/png" in fig._repr_mimebundle_()
    paths = [*t1.save(tmp_path / "run"), *fig.save(tmp_path / "run")]
    assert sorted(p.relative_to(tmp_path / "run").as_posix() for p in paths) == [
        "figures/figure_1.png", "tables/figure_1.csv", "tables/table_1.csv"]
    assert len(pd.read_csv(tmp_path / "run" / "tables" / "table_1.csv")) == len(t1.table)
    summary = analysis.run_metrics(analysis.load_artifacts(full), [t1, fig])
    assert summary["02_teacher"]["best_val_miou"] == {"12345": 0.5}
    assert summary["exhibits"] == {"Table 1": "ok", "Figure 1": "ok"}
    json.dumps(summary)


def test_figure1_on_cityscapes_adds_the_study_submissions_and_the_paper(tmp_path, pub):
    from fasterseg_core.data.labels import CITYSCAPES

    cfg = load_config("smoke", {"output_root": str(tmp_path / "out"), "model.arch_source": "published"})
    global CLASSES
    saved, CLASSES = CLASSES, list(CITYSCAPES.class_names)
    try:
        write_training_stage(cfg, "04_student", [0.5] * len(CLASSES), seeds=SEEDS[:1])
    finally:
        CLASSES = saved
    for folder in (cfg.output_dir / "04_student", cfg.output_dir / "04_student" / "seed-12345"):
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["dataset"] = "cityscapes"
        for m in [metrics, *metrics.get("per_seed", {}).values()]:
            m["dataset"] = "cityscapes"
            m.pop("test", None)  # Cityscapes test labels are withheld
        save_json(metrics, folder / "metrics.json")
    csv = cfg.output_dir / "04_student" / "seed-12345" / "per_class_iou.csv"
    table = pd.read_csv(csv)
    table[table.split == "val"].to_csv(csv, index=False)
    fig = analysis.figure1(analysis.load_artifacts(cfg), pub)
    assert fig.title == "Per-class IoU on the val split" and "withheld" in fig.caption
    columns = list(fig.table.columns)
    assert "Trained student (%)" in columns and "study: Trained Student (300 epochs) (%)" in columns
    road = fig.table.set_index("class").loc["road", "study: FasterSeg Student (pretrained weights) (%)"]
    assert road == 97.8054 and "71.5" in fig.caption


def test_the_summary_says_how_each_recipe_was_chosen(tmp_path, monkeypatch):
    """A recipe that departs from the paper's is a confound until a benchmarks/recipe.py record on val, with
    seeds other than the study's, chose it, for this network or for one that shares it; then page 1 says how,
    and the teacher's line adds its measured lead over the students."""
    from fasterseg_core.config import RunConfig

    paper = RunConfig().teacher
    students = {"lr": 0.02, "lr_schedule": "cosine", "warmup_iters": 50, "class_weighting": "enet"}
    cfg = load_config("camvid-cpu", {f"teacher.{k}": getattr(paper, k) for k in students} |
                      {f"{sec}.{k}": v for sec in ("distill", "student") for k, v in students.items()})
    shared, other = (load_config("camvid-cpu", {"teacher.epochs": epochs} | {f"{sec}.{k}": v for k, v in students.items()
                                                                            for sec in ("teacher", "distill", "student")})
                     for epochs in (60, 40))
    monkeypatch.setenv("FASTERSEG_ROOT", str(tmp_path))  # where the records are looked for
    lines = analysis.summary.recipe_provenance(cfg)
    assert lines[0] == "Teacher: the paper's recipe (lr 0.01, exponential schedule)."
    assert all("no record says it was chosen on val" in line for line in lines[1:])
    record = {"stage": "04_student", "split": "val", "seeds": [101, 102, 103], "chosen": "cosine-02-enet",
              "chosen_overrides": {"lr_schedule": "cosine", "warmup_iters": 50, "lr": 0.02, "class_weighting": "enet"},
              "candidates": [{"candidate": "paper", "mean": 30.0},
                             {"candidate": "cosine-02-enet", "mean": 32.5, "vs": "paper", "difference mean": 2.5,
                              "difference ci": [0.4, 4.6]}]}
    folder = tmp_path / "benchmarks" / "results" / "recipe"
    folder.mkdir(parents=True)
    (folder / "cpu-2core-2026-12-07-04_student.json").write_text(json.dumps(record))
    lines = analysis.summary.recipe_provenance(cfg)
    assert lines[2] == ("Trained student: lr 0.02, cosine schedule after 50 warmup iterations, enet class weights, "
                        "chosen on val with seeds [101, 102, 103] (disjoint from the study's) among 2 candidates: val "
                        "mIoU 32.5 %, +2.5 points [0.4, 4.6] against paper "
                        "(benchmarks/results/recipe/cpu-2core-2026-12-07-04_student.json).")
    # the distilled student shares it: not selected for itself, and page 1 says so
    assert lines[1].startswith("Distilled student: lr 0.02, cosine schedule after 50 warmup iterations, enet class "
                               "weights, the recipe chosen on val for the trained student (benchmarks/results/recipe/"
                               "cpu-2core-2026-12-07-04_student.json), shared")
    assert "no record says" not in " ".join(lines)
    # a teacher with the students' recipe and a longer schedule, whose length a record measured on val
    lead = {"by_candidate": {"cosine-02-enet": {"per_seed": [4.28, 5.09], "mean": 4.68, "ci": [-0.46, 9.83]}}}
    teacher = {"stage": "02_teacher", "split": "val", "seeds": [101, 102], "chosen": "cosine-02-enet",
               "chosen_overrides": record["chosen_overrides"], "set": {"teacher.epochs": 60},
               "candidates": [{"candidate": "cosine-02-enet", "mean": 47.5}], "lead_over_students": lead}
    (folder / "cpu-2core-2026-12-07-02_teacher.json").write_text(json.dumps(teacher))
    line = analysis.summary.recipe_provenance(shared)[0]
    assert line.startswith("Teacher: lr 0.02, cosine schedule after 50 warmup iterations, enet class weights, the "
                           "recipe chosen on val for the trained student")
    assert line.endswith("Its length, 60 epochs, was measured on val with seeds [101, 102]: +4.7 points [-0.5, 9.8] "
                         "above the scratch students of the same seeds (per seed +4.3, +5.1; "
                         "benchmarks/results/recipe/cpu-2core-2026-12-07-02_teacher.json).")
    assert "Its length" not in analysis.summary.recipe_provenance(other)[0]  # another length: not its evidence
    # a shorter length measured the same way is cited beside it: why the teacher is not shorter
    short = teacher | {"set": {"teacher.epochs": 30},
                       "lead_over_students": {"by_candidate": {"cosine-02-enet": {"per_seed": [-0.2, 0.4], "mean": 0.1,
                                                                                   "ci": [-3.7, 3.9]}}}}
    (folder / "cpu-2core-2026-12-08-02_teacher.json").write_text(json.dumps(short))
    line = analysis.summary.recipe_provenance(shared)[0]
    assert line.endswith("(per seed +4.3, +5.1; benchmarks/results/recipe/cpu-2core-2026-12-07-02_teacher.json). "
                         "Other lengths, measured the same way: at 30 epochs +0.1 points [-3.7, 3.9] above the scratch "
                         "students of the same seeds (per seed -0.2, +0.4; "
                         "benchmarks/results/recipe/cpu-2core-2026-12-08-02_teacher.json).")


def test_every_published_claim_has_one_tester_and_every_tester_a_claim(pub):
    from fasterseg_core.analysis.claims import CLAIMS

    assert set(CLAIMS) == {c.id for c in pub.claims()}
    assert len(pub.claims()) == len({c.id for c in pub.claims()})  # no claim twice


def test_a_claim_without_a_tester_stops_the_ledger(full, pub, monkeypatch):
    from fasterseg_core.analysis import claims

    monkeypatch.delitem(claims.CLAIMS, "paper_student_params_flops")
    with pytest.raises(KeyError, match=r"published only \['paper_student_params_flops'\]"):
        analysis.ledger(analysis.load_artifacts(full), pub)


def test_one_source_for_stage_times(cfg, tmp_path):
    """Page 1, the pipeline table and the compute table quote the same time: the notebook's in this pipeline run,
    else (skipped) the last run's manifest."""
    from fasterseg_core.analysis.artifacts import StageArtifacts

    stages = {s: StageArtifacts(s, tmp_path, "not run") for s in analysis.STAGES}
    stages |= {s: StageArtifacts(s, tmp_path, "complete", {"seconds": 10.0}, {}) for s in ("00_data", "01_search")}
    pipeline = {"stages": [{"stage": "00_data", "status": "ok", "seconds": 12.5},
                           {"stage": "01_search", "status": "skipped", "seconds": 0.0}]}
    art = analysis.Artifacts(cfg, stages, pd.DataFrame(), pipeline)
    assert art.stage_seconds("00_data") == 12.5 and art.stage_seconds("01_search") == 10.0
    rows = analysis.compute_table(art, analysis.load_published()).table.set_index("stage")
    assert rows.loc["00_data", "wall"] == analysis.summary.duration(12.5)
    assert rows.loc["study 02_teacher", "status"] == "published" and rows.loc["study 02_teacher", "hardware"]


def test_the_catalogue_builds_and_numbers_every_section(full, pub):
    """Every section of the one catalogue builds on a full run, in order; labels are numbered per kind in order of
    appearance (the study's Table 1, Figure 1 and Table 2 first), unique, and the contents list them all."""
    art = analysis.load_artifacts(full)
    exhibits = analysis.build_exhibits(art, pub, analysis.ledger(art, pub), hardware="cpu-test")
    assert list(exhibits) == [s.key for s in analysis.CATALOGUE] and len(set(exhibits)) == len(analysis.CATALOGUE)
    labels = [e.label for group in exhibits.values() for e in group]
    assert labels[:3] == ["Table 1", "Figure 1", "Table 2"] and len(labels) == len(set(labels))
    for kind in ("Table", "Figure"):
        numbers = [int("".join(c for c in x.split()[1] if c.isdigit())) for x in labels if x.startswith(kind)]
        assert sorted(set(numbers)) == list(range(1, max(numbers) + 1)) and numbers == sorted(numbers), labels
    assert exhibits["claims"][0].label == "Table 3" and exhibits["claims"][0].title == "Claims ledger"
    assert [e.label for e in exhibits["search"]] == ["Figure 4a", "Figure 4b", "Figure 4c", "Figure 4d", "Figure 4e",
                                                     "Table 5"]
    listed = analysis.contents(exhibits).table
    assert listed.exhibit.tolist() == labels and set(listed.section) == {s.heading for s in analysis.CATALOGUE}


def test_the_catalogue_builds_when_nothing_ran(cfg, pub):
    art = analysis.load_artifacts(cfg)
    exhibits = analysis.build_exhibits(art, pub, analysis.ledger(art, pub))
    assert all(group for group in exhibits.values())  # every section shows something, if only "not run"


def test_page_one_states_the_teachers_lead_over_each_student():
    rows = [{"stage": "02_teacher", "val_mean": 48.0}, {"stage": "03_distill", "val_mean": 44.5},
            {"stage": "04_student", "val_mean": 43.0}]
    assert analysis.summary.teacher_lead(rows) == (
        "On val the teacher leads the distilled student by 3.5 and the scratch student by 5.0 points of mIoU (means "
        "over the seeds; distillation is worth testing when it leads by ≥ 3).")
    rows[0]["val_mean"] = 44.0
    assert analysis.summary.teacher_lead(rows).startswith("On val the teacher trails or leads the distilled student by -0.5")
    assert analysis.summary.teacher_lead([{"stage": "02_teacher", "val_mean": None}]) == ""



def test_the_paired_figure_shows_each_measured_difference_once(full, pub):
    """Two claims tested on the same paired difference (test, distilled − scratch) share one set of dots."""
    entries = analysis.ledger(analysis.load_artifacts(full), pub)
    shared = [e for e in entries if e.metric.startswith("test mIoU, distilled − scratch")]
    assert len(shared) >= 2  # the study's "on par" and the paper's "further boosts" test one difference
    frame = analysis.paired_figure(entries).table
    assert not frame.duplicated(["claim", "seed"]).any(), frame
    assert len(frame) == len(full.seeds) * frame["claim"].nunique()
