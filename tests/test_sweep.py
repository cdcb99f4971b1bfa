"""Seed sweeps (``python -m fasterseg_core sweep``): the job graph from the stage table, bad input, the
Slurm submission files, and a real sweep on submitit's local executor (slow: every job is a fresh Python
process importing torch)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import cloudpickle
import pytest

from fasterseg_core.cli import main
from fasterseg_core.config import load_config
from fasterseg_core.lifecycle import start_run
from fasterseg_core.pipeline import run_stages
from fasterseg_core.runs import is_complete, load_manifest, stage_dir
from fasterseg_core.sweep import (
    JobState,
    Resources,
    SweepError,
    plan_sweep,
    prepare_sweep,
    submit_jobs,
    train_command,
)

REPO = Path(__file__).resolve().parents[1]
# A few seconds of training per job: the sweep's plumbing is under test, not the networks.
TINY = {"data.synthetic_train_images": 4, "data.synthetic_eval_images": 2, "data.synthetic_hw": [64, 128],
        "model.arch_source": "published", "teacher.epochs": 1, "teacher.iters_per_epoch": 1,
        "distill.epochs": 1, "distill.iters_per_epoch": 1}


def _graph(cfg, stages=None) -> dict[str, tuple[str, ...]]:
    jobs, _ = plan_sweep(cfg, stages) if stages else plan_sweep(cfg)
    names = [j.name for j in jobs]
    for i, job in enumerate(jobs):  # submission order: what a job waits for comes before it
        assert set(job.after) <= set(names[:i]), f"{job.name} is planned before {job.after}"
    return {j.name: j.after for j in jobs}


# ---- the graph, nothing run ----------------------------------------------------------------------------
def test_the_graph_follows_the_stage_table(tmp_path):
    cfg = load_config("smoke", {"output_root": str(tmp_path), "seeds": [0, 1]})
    assert _graph(cfg) == {
        "00_data": (),
        "01_search": (),
        # the shared teacher (teacher_per_seed: false) trains once, with the first seed
        "02_teacher/seed-0": ("01_search",),  # arch_source auto: the search's networks once it completed
        "02_teacher": ("02_teacher/seed-0",),
        "03_distill/seed-0": ("01_search", "02_teacher/seed-0"),
        "03_distill/seed-1": ("01_search", "02_teacher/seed-0"),
        "03_distill": ("03_distill/seed-0", "03_distill/seed-1"),
        "04_student/seed-0": ("01_search",),
        "04_student/seed-1": ("01_search",),
        "04_student": ("04_student/seed-0", "04_student/seed-1"),
        "05_latency": ("01_search", "02_teacher", "03_distill"),  # times the trained teacher and student
    }
    per_seed = load_config("smoke", {"output_root": str(tmp_path), "seeds": [0, 1], "teacher_per_seed": True,
                                     "model.arch_source": "published"})
    graph = _graph(per_seed, ["teacher", "distill"])
    assert graph == {
        "02_teacher/seed-0": (), "02_teacher/seed-1": (),  # published networks: no wait for the search
        "02_teacher": ("02_teacher/seed-0", "02_teacher/seed-1"),
        "03_distill/seed-0": ("02_teacher/seed-0",), "03_distill/seed-1": ("02_teacher/seed-1",),
        "03_distill": ("03_distill/seed-0", "03_distill/seed-1"),
    }


def test_the_graph_asks_for_what_a_training_reads(tmp_path):
    cfg = load_config("smoke", {"output_root": str(tmp_path), "seeds": [0, 1]})
    with pytest.raises(SweepError, match=r"03_distill seed 0 reads 02_teacher/seed-0.*add 02_teacher to --stages"):
        plan_sweep(cfg, ["03_distill"])
    searched = load_config("smoke", {"output_root": str(tmp_path), "model.arch_source": "searched"})
    with pytest.raises(SweepError, match="reads 01_search"):
        plan_sweep(searched, ["04_student"])
    with pytest.raises(ValueError, match="no stage 'teachr'"):
        plan_sweep(cfg, ["teachr"])
    # a given teacher checkpoint: the distillation reads no 02_teacher
    own = load_config("smoke", {"output_root": str(tmp_path), "seeds": [0], "distill.teacher_checkpoint": "t.pt"})
    assert _graph(own, ["03_distill"]) == {"03_distill/seed-0": (), "03_distill": ("03_distill/seed-0",)}


def test_complete_runs_are_left_out(tmp_path, capsys):
    cfg = load_config("smoke", {"output_root": str(tmp_path), "seeds": [0, 1], **TINY})
    start_run(cfg, "02_teacher", seed=0, per_seed=True).finish({})  # a teacher seed that already ran
    jobs, complete = plan_sweep(cfg, ["02_teacher", "03_distill"])
    assert complete == ["02_teacher/seed-0"]
    graph = {j.name: j.after for j in jobs}
    assert graph["02_teacher"] == () and graph["03_distill/seed-1"] == ()  # nothing left to wait for
    assert _graph(cfg, ["03_distill"])["03_distill/seed-0"] == ()  # and --stages 03_distill alone is fine now


def test_bad_input_is_one_line_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "outputs"
    base = ["sweep", "--profile", "smoke", "--overrides", json.dumps({"output_root": str(out)})]
    cases = {
        ("--executor", "slurm"): "--executor slurm needs --partition",
        ("--executor", "slurm", "--partition", "gpu"): "not on PATH",  # no Slurm on this machine
        ("--executor", "local", "--partition", "gpu"): "--partition and --slurm-parameters are Slurm's",
        ("--executor", "local", "--stages", "03_distil"): "no stage '03_distil'",
        ("--executor", "local", "--seeds", "0", "0"): "must be distinct",
        ("--executor", "local", "--time-min", "0"): "the time limit at least 1 minute",
        ("--executor", "local", "--slurm-parameters", "[1]"): "--slurm-parameters must be a JSON object",
    }
    for args, message in cases.items():
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (args, err)
    with pytest.raises(SystemExit) as e:  # argparse: "argument --seeds: invalid int value: 'a'"
        main([*base, "--executor", "local", "--seeds", "a"])
    assert e.value.code == 2 and "invalid int value: 'a'" in capsys.readouterr().err
    assert not out.exists()


def test_slurm_jobs_wait_with_afterok(tmp_path, monkeypatch):
    """The sbatch files submitit writes, read back through an ``sbatch`` that records them (there is no
    Slurm here): every job waits for exactly the job ids of what it reads."""
    bin_dir, recorded = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir(), recorded.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nid=$((1001 + $(ls "$RECORDED" | wc -l)))\n'
                                    'cp "$1" "$RECORDED/$id.sh"\necho "Submitted batch job $id"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; never run here
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORDED", str(recorded))
    overrides = {"output_root": str(tmp_path / "outputs")}
    sweep = prepare_sweep("smoke", overrides, seeds=[0, 1], executor="slurm", stages=["02_teacher", "03_distill"],
                          resources=Resources(partition="gpu", gpus_per_job=1, time_min=90, cpus_per_task=8,
                                              slurm_parameters={"account": "proj"}))
    states = {job.name: JobState(job) for job in sweep.jobs}
    submit_jobs(sweep, states, lambda line: None)
    ids = {name: s.handle.job_id for name, s in states.items()}
    for name, s in states.items():
        text = (recorded / f"{ids[name]}.sh").read_text()
        flags = dict(line[len("#SBATCH --"):].split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH"))
        assert flags["partition"] == "gpu" and flags["time"] == "90" and flags["gpus-per-node"] == "1"
        assert flags["cpus-per-task"] == "8" and flags["account"] == "proj"
        want = ":".join(ids[d] for d in s.job.after)
        assert flags.get("dependency") == (f"afterok:{want}" if want else None), name
    assert states["03_distill/seed-1"].job.after == ("02_teacher/seed-0",)  # the shared teacher
    # a seed job runs the train command with the sweep's seeds (they differ from the profile's)
    with open(states["03_distill/seed-1"].handle.paths.submitted_pickle, "rb") as f:
        command = cloudpickle.load(f).function.command
    assert command == train_command("smoke", {**overrides, "seeds": [0, 1]}, "03_distill", 1)
    assert command[command.index("--seed") + 1] == "1"


# ---- real sweeps on the local executor ------------------------------------------------------------------
@pytest.mark.slow
def test_local_sweep_runs_seeds_at_once_and_in_dependency_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two jobs at once on a 2-core machine
    overrides = {"output_root": str(tmp_path / "outputs"), "teacher_per_seed": True, **TINY}
    rc = main(["sweep", "--profile", "smoke", "--overrides", json.dumps(overrides), "--seeds", "0", "1",
               "--executor", "local", "--stages", "02_teacher", "03_distill", "--max-parallel", "2",
               "--hardware-tag", "sweep-test", "--folder", str(tmp_path / "sweep")])
    printed = capsys.readouterr()
    assert rc == 0, printed.out[-3000:] + printed.err[-3000:]
    cfg = load_config("smoke", {**overrides, "seeds": [0, 1]})
    times = {}
    for stage in ("02_teacher", "03_distill"):
        for seed in (0, 1, None):
            assert is_complete(cfg, stage, "sweep-test", seed=seed), (stage, seed)
            m = load_manifest(cfg, stage, seed)
            times[stage, seed] = (m["started_at"], m["finished_at"])  # ISO UTC seconds: compare as strings
        assert (stage_dir(cfg, stage, 0) / "checkpoints" / "best.pt").exists()
    for seed in (0, 1):
        assert times["03_distill", seed][0] >= times["02_teacher", seed][1], "a student started before its teacher"
    for stage in ("02_teacher", "03_distill"):
        assert times[stage, None][0] >= max(times[stage, 0][1], times[stage, 1][1]), "aggregate before its seeds"
    (a0, b0), (a1, b1) = times["02_teacher", 0], times["02_teacher", 1]
    assert a0 <= b1 and a1 <= b0, "two seeds of one stage ran at once"
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [j["state"] for j in record["jobs"]] == ["done"] * 6
    assert "--hardware-tag sweep-test" in printed.out
    # `make report` reuses them: the pipeline skips both stages (a copy of just their notebooks)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for stage in ("02_teacher", "03_distill"):
        shutil.copy(REPO / "notebooks" / f"{stage}.ipynb", notebooks)
    params = {"profile": "smoke", "overrides": {**overrides, "seeds": [0, 1]}, "hardware_tag": "sweep-test"}
    assert [r.status for r in run_stages(cfg, params, folder=notebooks)] == ["skipped", "skipped"]
    # and the sweep run again has nothing to do
    assert main(["sweep", "--profile", "smoke", "--overrides", json.dumps(overrides), "--seeds", "0", "1",
                 "--executor", "local", "--stages", "02_teacher", "03_distill", "--hardware-tag", "sweep-test"]) == 0
    assert "nothing to run" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_job_is_named_with_its_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bad = tmp_path / "teacher.pt"
    bad.write_text("not a checkpoint")
    overrides = {"output_root": str(tmp_path / "outputs"), "seeds": [0], "distill.teacher_checkpoint": str(bad), **TINY}
    rc = main(["sweep", "--profile", "smoke", "--overrides", json.dumps(overrides), "--executor", "local",
               "--stages", "03_distill", "--folder", str(tmp_path / "sweep")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("error: job 03_distill/seed-0 (job id ") and f"cannot read checkpoint {bad}" in err[0]
    log = Path(err[0].rsplit("log: ", 1)[1])
    assert log.parent == tmp_path / "sweep" and f"cannot read checkpoint {bad}" in log.read_text()
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert {j["name"]: j["state"] for j in record["jobs"]} == {"03_distill/seed-0": "failed", "03_distill": "not-run"}
    assert load_manifest(load_config("smoke", overrides), "03_distill", 0)["status"] == "failed"
