"""The pipeline's overall ETA (fasterseg_core.eta): estimates from measured runs, scaled by this machine's pace."""

from __future__ import annotations

import json

import pytest

from fasterseg_core import pipeline
from fasterseg_core.config import load_config
from fasterseg_core.eta import REPORT_TIMES, Eta, minutes, stage_estimates


def test_the_estimate_scales_with_the_pace_of_the_finished_stages():
    eta = Eta({"00_data": 10.0, "02_teacher": 100.0, "06_analysis": 20.0}, ["00_data", "02_teacher", "06_analysis"])
    assert eta.known and eta.remaining() == 130.0
    # 30 s into the teacher, whose bar says 50 s are left: the larger of the estimate's 70 and the bar's 50
    assert eta.remaining("02_teacher", elapsed=30.0, bar_left=50.0) == pytest.approx(30.0 + 70.0)
    assert eta.remaining("02_teacher", elapsed=30.0, bar_left=95.0) == pytest.approx(30.0 + 95.0)
    eta.finished("00_data", 20.0)  # this machine is half as fast as the record's
    assert eta.scale == 2.0 and eta.remaining() == pytest.approx(240.0)
    assert eta.remaining("02_teacher", elapsed=250.0) == pytest.approx(40.0)  # past its estimate: what follows
    eta.finished("02_teacher", 0.0)  # failed or skipped: no pace from it
    assert eta.scale == 2.0 and eta.remaining() == pytest.approx(40.0)


def test_a_stage_without_an_estimate_means_no_overall_eta():
    eta = Eta({"00_data": 10.0}, ["00_data", "01_search"])
    assert not eta.known and eta.remaining("00_data", 1.0) is None
    assert minutes(30) == "under a minute" and minutes(2460) == "about 41 min"


def test_estimates_come_from_the_previous_run_then_the_committed_record(tmp_path, monkeypatch):
    cfg = load_config("smoke", {"output_root": str(tmp_path / "outputs")})
    monkeypatch.setenv("FASTERSEG_ROOT", str(tmp_path))  # where the committed records are looked for
    assert stage_estimates(cfg) == ({}, "")
    (tmp_path / REPORT_TIMES).mkdir(parents=True)
    for date, seconds in (("2026-12-01", 1.0), ("2026-12-07", 50.0)):  # the newest record counts
        record = {"profile": "smoke", "stages": {"00_data": seconds, "02_teacher": 3 * seconds},
                  "machine": {"cpu_model": "AMD EPYC", "cpu_isa": "AVX512", "cpu_count": 2}}
        (tmp_path / REPORT_TIMES / f"smoke-cpu-2core-{date}.json").write_text(json.dumps(record))
    estimates, source = stage_estimates(cfg)
    assert estimates == {"00_data": 50.0, "02_teacher": 150.0} and "AMD EPYC, AVX512, 2 cores" in source
    cfg.output_dir.mkdir(parents=True)
    previous = {"profile": "smoke", "stages": [{"stage": "00_data", "status": "ok", "seconds": 7.0},
                                               {"stage": "02_teacher", "status": "skipped", "seconds": 0.1}]}
    (cfg.output_dir / "pipeline.json").write_text(json.dumps(previous))
    estimates, source = stage_estimates(cfg)
    assert estimates == {"00_data": 7.0, "02_teacher": 150.0}  # a skipped stage's time says nothing of its cost
    assert source.startswith("this machine's previous run and benchmarks/results/report/smoke-cpu-2core-2026-12-07")


def test_a_disturbed_stage_of_the_newest_record_takes_its_estimate_from_an_older_one(tmp_path, monkeypatch):
    cfg = load_config("smoke", {"output_root": str(tmp_path / "outputs")})
    monkeypatch.setenv("FASTERSEG_ROOT", str(tmp_path))
    (tmp_path / REPORT_TIMES).mkdir(parents=True)
    for date, seconds, disturbed in (("2026-12-01", 1.0, []), ("2026-12-07", 50.0, ["02_teacher"])):
        record = {"profile": "smoke", "stages": {"00_data": seconds, "02_teacher": 3 * seconds},
                  "disturbed_stages": disturbed, "machine": {}}
        (tmp_path / REPORT_TIMES / f"smoke-cpu-2core-{date}.json").write_text(json.dumps(record))
    estimates, source = stage_estimates(cfg)
    assert estimates == {"00_data": 50.0, "02_teacher": 3.0}  # another job slowed the newest run's teacher
    assert "2026-12-07" in source and "2026-12-01" in source


def test_the_plan_runs_what_is_incomplete_and_everything_after_it(tmp_path, monkeypatch):
    notebooks = [tmp_path / f"{s}.ipynb" for s in ("00_data", "01_search", "02_teacher", "03_distill")]
    out = tmp_path / "out"
    out.mkdir()
    for nb in notebooks:
        (out / nb.name).write_text("{}")
    complete = {"00_data", "01_search", "03_distill"}
    monkeypatch.setattr(pipeline, "is_complete", lambda cfg, stage, tag: stage in complete)
    cfg = load_config("smoke")
    assert pipeline._planned(cfg, notebooks, out, False, "t") == ["02_teacher", "03_distill"]  # 03 reads 02
    assert pipeline._planned(cfg, notebooks, out, True, "t") == [nb.stem for nb in notebooks]
