"""Run folders, manifests, atomic saves and the completeness test the pipeline driver relies on."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fasterseg_core import cli, lifecycle, machine, runs, storage
from fasterseg_core.config import load_config


@pytest.fixture
def cfg(tmp_path):
    return load_config("smoke", {"output_root": str(tmp_path / "outputs")})


def test_hardware_tag_names_the_compute():
    tag = machine.hardware_tag()
    assert re.fullmatch(r"cpu-\d+core|cuda-[a-z0-9-]+", tag), tag


def test_resolve_device():
    assert machine.resolve_device("cpu") == torch.device("cpu")
    assert machine.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            machine.resolve_device("cuda")


def test_amp_auto_is_bf16_only_where_the_device_computes_bf16(monkeypatch, cfg):
    cpu = torch.device("cpu")
    for fixed in ("none", "bf16", "fp16"):
        assert machine.resolve_amp(fixed, cpu) == fixed
    native = {"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}
    for name in tuple(native):
        monkeypatch.setattr(torch.cpu, name, lambda name=name: native[name], raising=False)
    assert machine.resolve_amp("auto", cpu) == "none" and not machine.native_bf16(torch.device("mps"))
    auto = load_config("smoke", {"output_root": cfg.output_root, "student.amp": "auto"})
    fp32 = load_config("smoke", {"output_root": cfg.output_root, "student.amp": "none"})
    bf16 = load_config("smoke", {"output_root": cfg.output_root, "student.amp": "bf16"})
    assert runs.stage_identity(auto, "04_student") == runs.stage_identity(fp32, "04_student")
    native["_is_amx_tile_supported"] = True
    assert machine.resolve_amp("auto", cpu) == "bf16"
    assert runs.stage_identity(auto, "04_student") == runs.stage_identity(bf16, "04_student")
    run = lifecycle.start_run(auto, "04_student")
    assert run.manifest["precision"] == "bf16"
    run.fail("test")
    data = lifecycle.start_run(auto, "00_data")
    assert data.manifest["precision"] is None
    data.fail("test")


def test_pinned_allocator_reaches_commands_kernels_and_jupyterlab():
    # glibc reads MALLOC_* at start-up only: a process without them re-executes itself once with them
    env = {k: v for k, v in os.environ.items() if k not in machine.STABLE_MALLOC}
    code = "from fasterseg_core import machine; machine.stable_malloc_env(); print(machine.stable_malloc_set())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
    # the commands that train or time networks do that; the report's stage kernels get them from the
    # driver (tests/test_report.py reads a stage's manifest); `make lab` sets the same for its kernels
    assert {"train", "evaluate", "latency", "sweep"} <= set(cli.PINNED_ALLOCATOR_COMMANDS)
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    line = re.search(r"^STABLE_MALLOC_ENV := (.*)$", makefile, re.MULTILINE).group(1)
    assert dict(kv.split("=", 1) for kv in line.split()) == machine.STABLE_MALLOC


def test_seed_everything_repeats_every_generator():
    def draw():
        return np.random.rand(), torch.rand(1).item(), __import__("random").random()

    machine.seed_everything(7)
    first = draw()
    machine.seed_everything(7)
    assert draw() == first


def test_json_save_is_atomic_and_typed(tmp_path):
    path = storage.save_json(
        {"a": np.float32(0.5), "b": torch.tensor([1, 2]), "iou": [float("nan")], "p": tmp_path},
        tmp_path / "x" / "m.json",
    )
    back = storage.load_json(path)
    assert (
        back["a"] == 0.5 and back["b"] == [1, 2] and math.isnan(back["iou"][0]) and back["p"] == str(tmp_path)
    )
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temp file left behind


def test_failed_json_save_keeps_the_old_file(tmp_path):
    path = storage.save_json({"ok": 1}, tmp_path / "m.json")
    with pytest.raises(TypeError, match="cannot store object"):
        storage.save_json({"bad": object()}, path)
    assert storage.load_json(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_torch_save_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    back = storage.load_torch(storage.save_torch(state, tmp_path / "ck" / "best.pt"))
    assert torch.equal(back["w"], state["w"]) and back["epoch"] == 3


def test_run_lifecycle_and_completeness(cfg):
    assert not runs.is_complete(cfg, "00_data")
    run = lifecycle.start_run(cfg, "00_data", seed=3)
    assert run.dir == cfg.output_dir / "00_data"
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["profile"] == "smoke"
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["seed"] == 3
    assert manifest["hardware"] == machine.hardware_tag() and manifest["device"] == "cpu"
    assert (
        set(manifest["git"]) == {"sha", "dirty"}
        and manifest["versions"]["torch"] == torch.__version__.split("+")[0]
    )
    assert not runs.is_complete(cfg, "00_data")  # running is not complete

    figure = run.path("figures", "a.png")
    assert figure.parent.is_dir()
    run.finish({"images": 3})
    assert storage.load_json(run.dir / "metrics.json") == {"images": 3}
    manifest = runs.load_manifest(cfg, "00_data")
    assert manifest["status"] == "complete" and manifest["finished_at"] and manifest["seconds"] >= 0
    assert runs.is_complete(cfg, "00_data")
    # a different config, or another hardware tag, is not the same run
    assert not runs.is_complete(
        load_config("smoke", {"output_root": cfg.output_root, "teacher.epochs": 9}), "00_data"
    )
    assert not runs.is_complete(cfg, "00_data", hardware="other-machine")
    # report settings and the output root do not change what a stage computes
    assert runs.stage_identity(cfg, "00_data") == runs.stage_identity(load_config("smoke", {"report.title": "x"}),
                                                                      "00_data")


def test_hardware_tag_override_is_recorded(cfg):
    run = lifecycle.start_run(cfg, "05_latency", hardware_tag="laptop-a")
    run.finish()
    assert run.hardware == "laptop-a"
    assert runs.is_complete(cfg, "05_latency", hardware="laptop-a")
    assert not runs.is_complete(cfg, "05_latency")


def test_upstream_path_checks_the_upstream_run(cfg):
    with pytest.raises(FileNotFoundError, match="no complete run"):
        runs.upstream_path(cfg, "02_teacher", "checkpoints", "best.pt")
    run = lifecycle.start_run(cfg, "02_teacher", hardware_tag="gpu-box")
    storage.save_torch({"w": torch.zeros(1)}, run.path("checkpoints", "best.pt"))
    with pytest.raises(FileNotFoundError, match="no complete run"):
        runs.upstream_path(cfg, "02_teacher", "checkpoints", "best.pt")  # still running
    run.finish()
    # another machine may use it (hardware differs), another config may not
    assert runs.upstream_path(cfg, "02_teacher", "checkpoints", "best.pt").exists()
    other = load_config("smoke", {"output_root": cfg.output_root, "teacher.epochs": 9})
    with pytest.raises(FileNotFoundError, match="different data/model/teacher config"):
        runs.upstream_path(other, "02_teacher", "checkpoints", "best.pt")
    with pytest.raises(FileNotFoundError, match="wrote no"):
        runs.upstream_path(cfg, "02_teacher", "checkpoints", "last.pt")
