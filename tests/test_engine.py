"""The training engine: epoch sampling, overfitting a batch, kill-and-resume, divergence guard, stage inputs."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from fasterseg_core.config import TrainConfig, load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.data.sampling import epoch_indices, rank_batches
from fasterseg_core.distributed import DistInfo
from fasterseg_core.engine import TrainingDiverged, fit, training_loss
from fasterseg_core.lifecycle import start_run
from fasterseg_core.models import build_network, init_weights_, published_architecture
from fasterseg_core.stages import StageInputMissing, run_training
from fasterseg_core.storage import load_torch

SPEC = TrainConfig(epochs=2, iters_per_epoch=2, batch_size=2, crop_size_hw=(64, 128), eval_every_epochs=1)


def _smoke(tmp_path: Path, **over):
    cfg = load_config("smoke", {"output_root": str(tmp_path), **over})
    return cfg, build_dataset(cfg.data, "train", train=True, crop_hw=(64, 128))


def train(spec, net, train_set, val_set, device, out_dir, **kwargs):
    """The engine with the §9.3 segmentation loss of the spec (what the teacher and student stages use)."""
    return fit(spec, net, training_loss(spec), train_set, val_set, device, out_dir, **kwargs)


def _student(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(published_architecture("student"), num_classes)
    init_weights_(net)
    return net


def test_epoch_indices_follow_the_repeat_plus_remainder_rule():
    idx = epoch_indices(num_images=5, global_batch=4, iters=3, seed=1, epoch=2)
    assert len(idx) == 12
    counts = torch.bincount(torch.tensor(idx), minlength=5)
    assert counts.min() >= 2 and counts.max() <= 3  # two full passes + a remainder of 2 distinct images
    assert idx == epoch_indices(5, 4, 3, seed=1, epoch=2)
    assert idx != epoch_indices(5, 4, 3, seed=1, epoch=3)


def test_rank_batches_split_each_global_batch():
    idx = list(range(8))
    r0 = rank_batches(idx, 4, DistInfo(0, 2))
    r1 = rank_batches(idx, 4, DistInfo(1, 2))
    assert r0 == [[0, 1], [4, 5]] and r1 == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="divisible"):
        rank_batches(idx, 3, DistInfo(0, 2))


class _OneBatch(Dataset):
    """A fixed real batch: the first two smoke training crops, always the same."""

    def __init__(self, base: Dataset):
        torch.manual_seed(3)
        self.items = [base[0], base[1]]
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.slow
def test_student_overfits_a_fixed_batch(tmp_path, one_thread):
    _, base = _smoke(tmp_path)
    data = _OneBatch(base)
    net = _student(data.num_classes)
    images = torch.stack([x for x, _ in data.items])
    labels = torch.stack([y for _, y in data.items])
    valid = labels != 255
    net.eval()
    with torch.no_grad():
        untrained = (net(images)["out"].argmax(1)[valid] == labels[valid]).float().mean()
    assert untrained < 0.5
    spec = replace(SPEC, epochs=6, iters_per_epoch=40, lr=0.05, eval_every_epochs=100)
    result = train(spec, net, data, None, torch.device("cpu"), tmp_path / "run", progress=False)
    net.eval()
    with torch.no_grad():
        pred = net(images)["out"].argmax(1)
    acc = (pred[valid] == labels[valid]).float().mean()
    # Why not "loss → 0": the student predicts at 1/8 resolution (8×16 logits for a 64×128 crop), so the
    # object boundaries of the upsampled map cannot be memorised (~10% of pixels), and OHEM averages over
    # at least the hardest 1/16 of the pixels — exactly those boundaries — so its loss floors near 1.
    # Measured: epoch losses 2.25 → 1.2, pixel accuracy 0.89-0.91 at lr 0.01-0.05 (Intel Xeon, Zen 5 EPYC);
    # 0.849 at lr 0.05 on an AVX2-only EPYC (its float rounding differs), hence 0.8, well above the untrained
    # < 0.5 checked first.
    assert result.history[-1]["loss"] < 0.65 * result.history[0]["loss"]
    assert acc > 0.8, f"pixel accuracy on the memorised batch only {acc:.3f}"


def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path, one_thread):
    cfg, data = _smoke(tmp_path)
    val = build_dataset(cfg.data, "val", train=False)
    spec = replace(SPEC, epochs=3)

    full = _student(data.num_classes)
    train(spec, full, data, val, torch.device("cpu"), tmp_path / "full", key="k", progress=False)

    class Killed(Exception):
        pass

    def kill_after_first(row):
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train(spec, _student(data.num_classes), data, val, torch.device("cpu"), tmp_path / "cut", key="k",
              progress=False, on_epoch=kill_after_first)
    assert load_torch(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed_net = _student(data.num_classes)
    torch.manual_seed(999)  # a resumed process starts with other RNG states; the checkpoint restores them
    resumed = train(
        spec, resumed_net, data, val, torch.device("cpu"), tmp_path / "cut", key="k", progress=False
    )
    assert resumed.resumed_from == 1
    for (name, a), b in zip(full.state_dict().items(), resumed_net.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    ref = load_torch(tmp_path / "full" / "checkpoints" / "last.pt")["history"]
    for r_full, r_res in zip(ref, resumed.history):
        assert r_full["loss"] == r_res["loss"]
        assert r_full["val_miou"] == r_res["val_miou"] or (
            math.isnan(r_full["val_miou"]) and math.isnan(r_res["val_miou"])
        )


class _Poisonable(Dataset):
    """Real crops that turn NaN once ``poisoned`` is set (e.g. a corrupt image decoded to garbage)."""

    def __init__(self, base: Dataset):
        self.base, self.num_classes, self.poisoned = base, base.num_classes, False

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (torch.full_like(x, float("nan")) if self.poisoned else x), y


def test_nan_loss_stops_naming_the_iteration_and_keeps_the_last_checkpoint(tmp_path, one_thread):
    _, data = _smoke(tmp_path)
    poisonable = _Poisonable(data)
    spec = replace(SPEC, epochs=3, iters_per_epoch=2)
    out = tmp_path / "run"

    def poison(row):  # epoch 1 completes and is saved; epoch 2 meets NaN images at once
        poisonable.poisoned = True

    with pytest.raises(TrainingDiverged, match=r"epoch 2, iteration 1 .*last good checkpoint"):
        train(spec, _student(data.num_classes), poisonable, None, torch.device("cpu"), out, progress=False,
              on_epoch=poison)
    ckpt = load_torch(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_distill_without_a_teacher_names_the_stage_to_run(tmp_path):
    cfg = load_config("smoke", {"output_root": str(tmp_path)})
    run = start_run(cfg, "03_distill")
    with pytest.raises(StageInputMissing, match="02_teacher"):
        run_training(cfg, run, progress=False)


def test_bf16_autocast_and_channels_last_train_with_finite_loss(tmp_path, one_thread):
    _, data = _smoke(tmp_path)
    spec = replace(SPEC, epochs=1, iters_per_epoch=2, amp="bf16", channels_last=True)
    net = _student(data.num_classes)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = train(spec, net, data, None, torch.device("cpu"), tmp_path / "run", progress=False)
    assert math.isfinite(result.history[0]["loss"])
    changed = [
        k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert changed, "the weights must change"
    assert all(v.dtype == before[k].dtype for k, v in net.state_dict().items()), (
        "weights stay fp32 (autocast)"
    )


def test_the_scores_table_shows_a_best_checkpoint_that_is_the_last_once():
    from fasterseg_core.stages import scores_table

    def scores(epoch, miou):
        return {"epoch": epoch, "miou": miou, "miou_no_back": miou, "pixel_acc": 0.9, "mean_class_acc": 0.5}

    def seed(best, last):
        return {s: {"best": scores(best, 0.4), "last": scores(last, 0.38 if best != last else 0.4)}
                for s in ("val", "test")}

    summary = {s: {w: {"miou": {"mean": 0.4, "n": 2, "ci_low": 0.3, "ci_high": 0.5}} for w in ("best", "last")}
               for s in ("val", "test")}
    table = scores_table({"per_seed": {"1": seed(20, 20), "2": seed(16, 20)}, "summary": summary})
    rows = set(table.index)
    assert ("val", "best = last", "1") in rows and ("val", "last", "1") not in rows
    assert {("val", "best", "2"), ("val", "last", "2"), ("val", "best", "mean of 2")} <= rows
    table = scores_table({"per_seed": {"1": seed(20, 20), "2": seed(20, 20)}, "summary": summary})
    assert set(table.index.get_level_values("checkpoint")) == {"best = last"} and len(table) == 6
