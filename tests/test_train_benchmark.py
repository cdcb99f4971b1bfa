"""benchmarks/train.py at a tiny size on CPU: the code ``benchmarks/gpu_train.sh`` runs on a lent GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is a folder of scripts, not a package: load the file as a module (main() is not run, so
    # the allocator re-exec of stable_malloc_env never touches the test process)
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_recipe_mode_runs_and_extrapolates(bench, one_thread, capsys):
    # the teacher's own training is timed in the profile-mode test below (its 23.5 M-parameter checkpoints
    # make each engine call slow); distillation runs its frozen forward here
    result = bench.gpu_recipe(
        torch.device("cpu"),
        batch=2,
        hw=(64, 128),
        iters=2,
        rounds=1,
        warmup=1,
        amps=("none", "bf16"),
        variants=("distill", "student"),
    )
    json.dumps(result)  # what gpu_train.sh writes into $OUT
    rows = {(r["stage"], r["amp"]): r for r in result["rows"]}
    assert set(rows) == {(s, a) for s in ("distill", "student") for a in ("none", "bf16")}
    assert result["recipe"]["batch"] == 2 and result["recipe"]["crop_hw"] == [64, 128]
    assert result["recipe"]["iters"] == 2 and result["recipe"]["num_classes"] == 19
    for (stage, _), r in rows.items():
        assert len(r["round_s_per_iter"]) == 1 and all(t > 0 for t in r["round_s_per_iter"])
        s_it = r["s_per_100_iters"] / 100
        assert r["images_per_s"] == pytest.approx(2 / s_it)
        assert r["gpu_hours_600_epochs"] == pytest.approx(s_it * 600 * 1000 / 3600)
        study = {"teacher": 662.5, "distill": 884.0, "student": 590.0}[stage]
        assert r["study_gpu_hours_600_epochs"] == pytest.approx(study * 600 / 3600)
        assert r["speedup_vs_study"] == pytest.approx(study / (1000 * s_it))
    bench.print_gpu_table(result)
    assert bench.headline(result).startswith("paper recipe, batch 2 at 64x128, s per 100 iterations: fp32 distill")
    table = capsys.readouterr().out
    assert table.count("| student |") == 2 and "| distill | bf16 |" in table
    with pytest.raises(ValueError, match="at least rounds"):
        bench.gpu_recipe(torch.device("cpu"), iters=1, rounds=2)


def test_profile_mode_reports_loader_next_to_training(bench, one_thread, capsys):
    result = bench.cpu_profile("smoke", iters=1, rounds=1, loader_batches=1)
    assert [r["stage"] for r in result["rows"]] == ["teacher", "distill", "student"]
    for r in result["rows"]:
        assert r["images_per_s"] > 0 and r["ratio_loader"] == pytest.approx(
            result["loader"]["images_per_s"] / r["images_per_s"]
        )
    assert "loader bottleneck:" in capsys.readouterr().out
    assert bench.headline(result).startswith("smoke training img/s teacher ")
