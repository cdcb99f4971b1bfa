"""Live curves (:mod:`fasterseg_core.scalars`): the event files a training stage and the search write, read
back with TensorBoard's own reader and compared with the histories the report reads."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import Dataset

from fasterseg_core.config import DistillConfig, load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.distributed import DistInfo
from fasterseg_core.engine import fit, training_loss
from fasterseg_core.lifecycle import start_run
from fasterseg_core.models import build_network, init_weights_, published_architecture
from fasterseg_core.scalars import FOLDER, Scalars, search_tags
from fasterseg_core.stages import run_search, run_training
from fasterseg_core.storage import load_torch

REPO = Path(__file__).resolve().parents[1]
SEED = 12345
TINY_DATA = {"seeds": [SEED], "data.synthetic_train_images": 8, "data.synthetic_eval_images": 2,
             "data.synthetic_hw": [64, 128]}


def curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in a TensorBoard run folder: [(step, value)] as TensorBoard shows them (all event
    files of the folder, restarts purged)."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def _net(num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network(published_architecture("student"), num_classes)
    init_weights_(net)
    return net


# ---- a training stage ------------------------------------------------------------------------------------
def test_training_stage_writes_its_history_as_curves(tmp_path, one_thread):
    """04_student through its stage function: iterations, epochs and evaluations, equal to history.csv."""
    epochs, iters = 3, 2
    cfg = load_config("smoke", {"output_root": str(tmp_path), **TINY_DATA, "student.epochs": epochs,
                                "student.iters_per_epoch": iters, "student.eval_every_epochs": 3})
    run = start_run(cfg, "04_student")
    run_training(cfg, run, progress=False)
    run.finish()
    seed_dir = tmp_path / "smoke" / "04_student" / f"seed-{SEED}"
    assert len(event_files(seed_dir / FOLDER)) == 1
    got = curves(seed_dir / FOLDER)
    history = pd.read_csv(seed_dir / "history.csv")

    # no teacher: no kd_loss curve (history.csv has the column, NaN); validation after epochs 1 and 3 only
    assert set(got) == {"iteration/loss", "iteration/seg_loss", "iteration/lr", "train/loss", "train/seg_loss",
                        "train/lr", "train/train_miou", "train/seconds", "val/val_miou", "val/val_miou_no_back",
                        "val/val_pixel_acc", "val/eval_seconds"}
    assert history["kd_loss"].isna().all()
    for tag, points in got.items():
        assert all(math.isfinite(v) for _, v in points), tag
    assert [s for s, _ in got["iteration/loss"]] == list(range(1, epochs * iters + 1))
    assert [s for s, _ in got["train/loss"]] == [e * iters for e in range(1, epochs + 1)]
    assert [s for s, _ in got["val/val_miou"]] == [1 * iters, 3 * iters]

    # the per-epoch curves are history.csv (as float32), and each epoch's mean of the iteration curve
    for column in ("loss", "seg_loss", "lr", "train_miou"):
        assert [v for _, v in got[f"train/{column}"]] == pytest.approx(list(history[column]), rel=1e-6)
    evaluated = history.dropna(subset=["val_miou"])
    for column in ("val_miou", "val_miou_no_back", "val_pixel_acc"):
        assert [v for _, v in got[f"val/{column}"]] == pytest.approx(list(evaluated[column]), rel=1e-6)
    losses = [v for _, v in got["iteration/loss"]]
    means = [sum(losses[i : i + iters]) / iters for i in range(0, len(losses), iters)]
    assert means == pytest.approx(list(history["loss"]), rel=1e-5)
    assert history["loss"].iloc[-1] == pytest.approx(got["train/loss"][-1][1], rel=1e-6)

    # other settings set the run aside, curves included (they come back with those settings)
    other = load_config("smoke", {"output_root": str(tmp_path), **TINY_DATA, "student.lr": 0.02})
    start_run(other, "04_student", seed=SEED, per_seed=True).fail("only opened")
    assert not (seed_dir / FOLDER).exists()
    (aside,) = (seed_dir / "previous").iterdir()
    assert curves(aside / FOLDER) == got


class _Killed(Exception):
    pass


class _KilledAt(Dataset):
    """Real crops, until item ``at`` (counted over the whole run): then the process "dies"."""

    def __init__(self, base: Dataset, at: int):
        self.base, self.at, self.calls = base, at, 0
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at:
            raise _Killed
        return self.base[i]


def test_a_resumed_run_continues_its_curves_without_doubled_points(tmp_path, one_thread):
    """Killed in the middle of epoch 2 (its first iteration logged, no checkpoint), then resumed: TensorBoard
    shows every step once, the resumed run's; the distillation loss has its kd_loss curves."""
    cfg = load_config("smoke", {"output_root": str(tmp_path), **TINY_DATA})
    train_set = build_dataset(cfg.data, "train", train=True, crop_hw=(64, 128))
    val_set = build_dataset(cfg.data, "val", train=False)
    spec = replace(DistillConfig(), epochs=3, iters_per_epoch=2, batch_size=2, crop_size_hw=(64, 128),
                   eval_every_epochs=1)
    teacher = _net(train_set.num_classes, seed=1)
    out = tmp_path / "run"
    cpu = torch.device("cpu")

    # 4 items per epoch (2 iterations × batch 2): item 7 is the first of epoch 2's second batch
    killed = _KilledAt(train_set, at=7)
    with pytest.raises(_Killed):
        fit(spec, _net(train_set.num_classes), training_loss(spec, teacher), killed, val_set, cpu, out, key="k",
            progress=False)
    assert load_torch(out / "checkpoints" / "last.pt")["epoch"] == 1
    before = curves(out / FOLDER)
    assert [s for s, _ in before["iteration/loss"]] == [1, 2, 3]  # step 3: epoch 2, never checkpointed

    result = fit(spec, _net(train_set.num_classes), training_loss(spec, teacher), train_set, val_set, cpu, out,
                 key="k", progress=False)
    assert result.resumed_from == 1 and len(event_files(out / FOLDER)) == 2
    got = curves(out / FOLDER)
    for tag in ("iteration/loss", "iteration/seg_loss", "iteration/kd_loss", "iteration/lr"):
        assert [s for s, _ in got[tag]] == [1, 2, 3, 4, 5, 6], tag
    assert got["iteration/loss"][:2] == before["iteration/loss"][:2]  # the interrupted run's epoch 1 stays
    history = load_torch(out / "checkpoints" / "last.pt")["history"]
    for column in ("loss", "seg_loss", "kd_loss", "val_miou"):
        assert [s for s, _ in got[f"{'val' if column.startswith('val') else 'train'}/{column}"]] == [2, 4, 6]
        values = [v for _, v in got[f"{'val' if column.startswith('val') else 'train'}/{column}"]]
        assert values == pytest.approx([r[column] for r in history], rel=1e-6), column
    assert all(v > 0 for _, v in got["train/kd_loss"])

    # a rerun with nothing left to train opens no event file
    fit(spec, _net(train_set.num_classes), training_loss(spec, teacher), train_set, val_set, cpu, out, key="k",
        progress=False)
    assert len(event_files(out / FOLDER)) == 2


def test_only_rank_zero_writes(tmp_path):
    with Scalars(tmp_path, info=DistInfo(rank=1, world=2)) as scalars:
        scalars.add({"train/loss": 1.0}, 1)
    assert not (tmp_path / FOLDER).exists()
    with Scalars(tmp_path, info=DistInfo(rank=0, world=2)) as scalars:
        scalars.add({"train/loss": 1.0, "train/kd_loss": math.nan}, 1)
    assert curves(tmp_path / FOLDER) == {"train/loss": [(1, 1.0)]}


# ---- the search ------------------------------------------------------------------------------------------
def test_search_writes_losses_lambda_latency_and_entropies(tmp_path):
    from test_search import _tiny_overrides, fake_lut

    torch.set_num_threads(1)
    lut_path = fake_lut().save(tmp_path / "lut.json")
    # path sampling: the fast search (what is logged does not depend on it)
    cfg = load_config("smoke", {**_tiny_overrides(tmp_path, lut_path), "search.pretrain_epochs": 1,
                                "search.search_epochs": 2, "search.path_sampling": True})
    result = run_search(cfg, start_run(cfg, "01_search"), progress=False)
    folder = tmp_path / "smoke" / "01_search"
    got = curves(folder / FOLDER)
    history = json.loads((folder / "history.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [h["phase"] for h in history] == ["pretrain", "search", "search"]

    # the x-axis is the stage's iterations: one pretraining epoch, then two search epochs, of 1 iteration each
    pre_iters = 1
    assert [s for s, _ in got["pretrain/loss_weights"]] == [pre_iters]
    steps = [pre_iters + 1, pre_iters + 2]
    for tag in ("search/loss_arch", "search/loss_weights", "search/lr", "search/lambda", "latency/latency_ms",
                "latency/lat_alpha_ms", "latency/lat_beta_ms", "latency/lat_gamma_ms",
                "latency/student_latency_ms", "latency/student_fps", "latency/teacher_latency_ms",
                "latency/target_ms_low", "latency/target_ms_high", "miou/miou_student_8s_32s",
                "miou/miou_teacher_16s_32s", "entropy/student_alpha", "entropy/student_beta",
                "entropy/student_gamma", "entropy/teacher_alpha", "entropy/teacher_beta"):
        assert [s for s, _ in got[tag]] == steps, tag
        assert all(math.isfinite(v) for _, v in got[tag]), tag
    assert "entropy/teacher_gamma" not in got  # the teacher has one width: nothing to choose

    # every curve of a record is the record's value (float32), λ included; the target is metrics.json's
    for record, step in zip(history, [pre_iters, *steps]):
        tags = search_tags(record)
        assert len(tags) == sum(isinstance(v, float) for v in record.values())  # every number is a curve
        for tag, value in tags.items():
            assert tag.split("/")[1] in record, tag  # a tag names the history field it copies
            assert dict(got[tag])[step] == pytest.approx(value, rel=1e-6), tag
    assert [v for _, v in got["search/lambda"]] == pytest.approx([h["lambda"] for h in history[1:]])
    low, high = metrics["target_ms"]
    assert got["latency/target_ms_low"][-1][1] == pytest.approx(low, rel=1e-6)
    assert got["latency/target_ms_high"][-1][1] == pytest.approx(high, rel=1e-6)
    assert result.metrics["student"]["latency_ms"] == pytest.approx(got["latency/student_latency_ms"][-1][1])
    # entropies are fractions of the uniform distribution's; the search has started to decide α
    for tag in got:
        if tag.startswith("entropy/"):
            assert all(0.0 <= v <= 1.0 for _, v in got[tag]), tag
    assert got["entropy/student_alpha"][-1][1] < 1.0


# ---- make tensorboard ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_the_tensorboard_command_serves_a_profiles_runs_with_restarts_purged(tmp_path):
    """``python -m fasterseg_core tensorboard`` (what ``make tensorboard`` runs) on a profile's output folder:
    the server lists the run and shows a restarted run's steps once each."""
    run_dir = tmp_path / "smoke" / "04_student" / f"seed-{SEED}"
    with Scalars(run_dir) as first:  # an interrupted process: steps 1-3
        for step in (1, 2, 3):
            first.add({"iteration/loss": 10.0 + step}, step)
    with Scalars(run_dir) as resumed:  # resumed at step 3
        for step in (3, 4):
            resumed.add({"iteration/loss": 20.0 + step}, step)
    port = _free_port()
    cmd = [sys.executable, "-m", "fasterseg_core", "tensorboard", "--profile", "smoke", "--overrides",
           json.dumps({"output_root": str(tmp_path)}), "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = f"04_student/seed-{SEED}/{FOLDER}"
    query = urllib.parse.urlencode({"run": run, "tag": "iteration/loss"})
    expected = [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    try:
        deadline, points = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None and points != expected:
            time.sleep(0.5)
            try:  # the server loads the folder in the background: poll until it has read both files
                points = [(step, value) for _, step, value in
                          _get(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}")]
            except OSError:
                pass
        assert server.poll() is None, server.stdout.read()
        assert points == expected
    finally:
        server.terminate()
        server.wait(timeout=30)
