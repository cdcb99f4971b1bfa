"""benchmarks/train_step.py at a tiny size: the timing loop, the report, the profile and the baseline import."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    # a script folder, not a package: load the file (main() is not run, so stable_malloc_env never re-executes)
    spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_steps_report_and_profile(bench, one_thread, capsys):
    images = torch.randn(2, 3, 64, 128)
    labels = torch.randint(0, bench.NUM_CLASSES, (2, 64, 128))
    base = bench.load_baseline(REPO)  # this checkout again, as a second package copy
    assert base.__name__ == "fasterseg_baseline.models"
    steps = {
        "resnet18": bench.make_step("resnet18", bench.build("resnet18", True, 0), images, labels),
        "student": bench.make_step("student", bench.build("student", True, 0), images, labels),
        "student@base": bench.make_step("student", bench.build("student", True, 0, base), images, labels),
    }
    net = bench.build("student", True, 0)
    out = net(images)
    assert net.training and len(out["aux"]) == 2  # aux heads on, as the engine trains
    times = bench.time_interleaved(steps, rounds=2, warmup=1)
    assert {n: len(t) for n, t in times.items()} == {n: 2 for n in steps}
    bench.report(times)
    summary = bench.ratios_to(times)  # what the record holds
    assert summary["resnet18"]["x_resnet18"] == pytest.approx(1.0) and summary["student"]["median_s"] > 0
    bench.profile("student", steps["student"], n_steps=1, top=3, by_shape=False)
    text = capsys.readouterr().out
    assert "student / student@base" in text
    for phase in ("forward", "backward", "optimizer"):
        assert f"--- {phase}:" in text
