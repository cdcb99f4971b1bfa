"""Two gloo processes under the real ``torchrun`` CLI train exactly what one process computes.

In plain DistributedDataParallel each rank normalises its own half of the global batch (per-rank batch-norm
statistics) and mines its own OHEM pixels (``min_kept`` scaled to the local batch); DDP then averages the
two gradients. ``nn.SyncBatchNorm`` would make the statistics global, but torch has no CPU kernel for it
(its forward raises "expected input tensor to be on GPU" under gloo), so the single-process equivalent of
2 ranks × batch B/2 is one process that accumulates ``loss(half) / 2`` over the two halves and then steps.
The reference below does exactly that, with the same shards and per-rank augmentation
(:func:`~fasterseg_core.data.sampling.epoch_loader` with each rank's ``DistInfo``) and DDP's buffer rule (rank 0's
running statistics are broadcast before every forward and are what rank 0 saves), and is compared with the
``torchrun`` run's checkpoint, history and metrics.

An audit hook (``sitecustomize`` on the workers' ``PYTHONPATH``) records every file the workers open for
writing, rename or create under the output folder, so the test also shows that rank 0 alone writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from fasterseg_core.checkpoints import FORMAT as CHECKPOINT_FORMAT
from fasterseg_core.config import RunConfig, load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.data.sampling import epoch_loader
from fasterseg_core.distributed import DistInfo
from fasterseg_core.engine import evaluate
from fasterseg_core.losses import SegmentationLoss, distillation_kl, ohem_min_kept
from fasterseg_core.metrics import ConfusionMatrix
from fasterseg_core.models import build_network, init_weights_, published_architecture
from fasterseg_core.storage import load_torch, save_torch

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
SCORES = ("miou", "miou_no_back", "pixel_acc", "mean_class_acc")

# Records (rank, event, path) of every write-like file operation under $FASTERSEG_AUDIT_ROOT; each process
# (the torchrun agent has no RANK) appends its list to $FASTERSEG_AUDIT_LOG.<rank> when it exits.
_AUDIT_SITECUSTOMIZE = textwrap.dedent(
    """
    import atexit, json, os, sys

    _ROOT = os.path.realpath(os.environ["FASTERSEG_AUDIT_ROOT"])
    _LOG = os.environ["FASTERSEG_AUDIT_LOG"] + "." + os.environ.get("RANK", "agent") + f".{os.getpid()}"
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _seen = []

    def _under_root(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(_ROOT)
        except (TypeError, ValueError):
            return False  # a file descriptor, not a path

    def _hook(event, args):
        if event == "open" and args[2] is not None and args[2] & _WRITE and _under_root(args[0]):
            _seen.append([event, os.fsdecode(args[0])])
        elif event == "os.rename" and _under_root(args[1]):  # os.replace too: the atomic writes' last step
            _seen.append([event, os.fsdecode(args[1])])
        elif event in ("os.mkdir", "os.remove", "os.rmdir") and _under_root(args[0]):
            _seen.append([event, os.fsdecode(args[0])])

    @atexit.register
    def _dump():
        with open(_LOG, "w") as f:  # outside _ROOT, so not recorded itself
            json.dump(_seen, f)

    sys.addaudithook(_hook)
    """
)


def _overrides(tmp_path: Path, section: str, epochs: int, **extra: Any) -> dict[str, Any]:
    """Smoke profile, shrunk: 64×128 synthetic scenes = the crop, the §9.1 augmentation kept (flip, scale)."""
    return {
        "output_root": str(tmp_path / "outputs"),
        "data.synthetic_hw": [64, 128],
        "data.synthetic_train_images": 8,
        "data.synthetic_eval_images": 2,
        "data.num_workers": 0,
        f"{section}.epochs": epochs,
        f"{section}.iters_per_epoch": 2,
        f"{section}.batch_size": 4,
        f"{section}.crop_size_hw": [64, 128],
        f"{section}.eval_every_epochs": 1,
        **extra,
    }


def _torchrun(tmp_path: Path, stage: str, overrides: dict[str, Any]) -> tuple[str, dict[str, list]]:
    """Run ``torchrun --standalone --nproc-per-node 2 -m fasterseg_core train``; (stdout, writes by rank)."""
    hook_dir, audit = tmp_path / "audit_site", tmp_path / "audit"
    hook_dir.mkdir()
    audit.mkdir()
    (hook_dir / "sitecustomize.py").write_text(_AUDIT_SITECUSTOMIZE)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(hook_dir),
        FASTERSEG_AUDIT_ROOT=overrides["output_root"],
        FASTERSEG_AUDIT_LOG=str(audit / "writes"),
    )
    # torch.distributed.run is the module behind the `torchrun` console script (same CLI, no PATH lookup)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        "-m",
        "fasterseg_core",
        "train",
        "--profile",
        "smoke",
        "--stage",
        stage,
        "--no-progress",
        "--overrides",
        json.dumps(overrides),
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    writes: dict[str, list] = {}
    for log in audit.glob("writes.*"):
        writes.setdefault(log.name.split(".")[1], []).extend(json.loads(log.read_text()))
    return proc.stdout, writes


def _reference(
    cfg: RunConfig, section: str, role: str, teacher: torch.nn.Module | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """One process reproducing ``WORLD`` DDP ranks: per-epoch rows and each epoch's state dict (rank 0's)."""
    spec = getattr(cfg, section)
    train_set = build_dataset(cfg.data, "train", train=True, crop_hw=tuple(spec.crop_size_hw))
    val_set = build_dataset(cfg.data, "val", train=False)
    seed = cfg.seeds[0]
    torch.manual_seed(seed)  # as train_seed: the same initial weights
    net = build_network(published_architecture(role), train_set.num_classes)
    init_weights_(net)
    opt = torch.optim.SGD(
        net.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=spec.lr_decay_per_epoch)
    seg_loss = SegmentationLoss(ohem_min_kept(spec.batch_size // WORLD, spec.crop_size_hw), spec.ohem_thresh,
                                spec.aux_weight)
    rows, states = [], []
    for epoch in range(1, spec.epochs + 1):
        net.train()
        # each rank's whole epoch, drawn in the order a rank draws it (its loader reseeds the global RNG)
        shards = [list(epoch_loader(train_set, spec.batch_size, spec.iters_per_epoch, seed, epoch,
                                    DistInfo(r, WORLD), 0)) for r in range(WORLD)]
        sums = {"loss": 0.0, "seg_loss": 0.0, "kd_loss": 0.0}
        train_cm = ConfusionMatrix(train_set.num_classes)
        for it in range(spec.iters_per_epoch):
            opt.zero_grad(set_to_none=True)
            start = {k: b.clone() for k, b in net.named_buffers()}
            for r in reversed(range(WORLD)):  # rank 0 last: its running statistics are the ones kept
                for k, b in net.named_buffers():
                    b.copy_(start[k])  # DDP broadcasts rank 0's buffers before every forward
                images, labels = shards[r][it]
                outputs = net(images)
                seg, _ = seg_loss(outputs, labels, images)
                kd = torch.zeros(())
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(images)["out"]
                    kd = spec.kd_weight * distillation_kl(
                        outputs["out"], t_out, temperature=spec.kd_temperature, reduction=spec.kd_reduction
                    )
                ((seg + kd) / WORLD).backward()  # DDP averages the ranks' gradients
                for name, value in (("loss", seg + kd), ("seg_loss", seg), ("kd_loss", kd)):
                    sums[name] += float(value.detach()) / WORLD
                train_cm.update(outputs["out"].detach().argmax(1), labels)
            opt.step()
        sched.step()
        val = evaluate(net, val_set, torch.device("cpu")).compute()
        rows.append(
            {
                "epoch": epoch,
                **{k: v / spec.iters_per_epoch for k, v in sums.items()},
                "train_miou": train_cm.compute()["miou"],
                "val": val,
            }
        )
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    return rows, states


def _scores_of(cfg: RunConfig, role: str, state: dict[str, torch.Tensor], split: str) -> dict[str, Any]:
    data = build_dataset(cfg.data, split, train=False)
    net = build_network(published_architecture(role), data.num_classes)
    net.load_state_dict(state)
    return evaluate(net, data, torch.device("cpu")).compute()


def _check_against_reference(
    tmp_path: Path,
    cfg: RunConfig,
    stage: str,
    section: str,
    role: str,
    stdout: str,
    writes: dict[str, list],
    teacher: torch.nn.Module | None = None,
) -> None:
    rows, states = _reference(cfg, section, role, teacher)
    out = cfg.output_dir / stage / f"seed-{cfg.seeds[0]}"

    # weights and batch-norm buffers after training: rank 0's checkpoint = the accumulating single process
    last = load_torch(out / "checkpoints" / "last.pt")
    assert last["format"] == CHECKPOINT_FORMAT and last["epoch"] == len(rows)
    assert last["model"].keys() == states[-1].keys()
    for k, ref in states[-1].items():
        torch.testing.assert_close(
            last["model"][k], ref, rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}"
        )

    # per-epoch history: the global batch's loss (all ranks), all-reduced train and val scores
    history = pd.read_csv(out / "history.csv")
    assert len(history) == len(rows)
    for (_, got), ref in zip(history.iterrows(), rows):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert got["seg_loss"] == pytest.approx(ref["seg_loss"], rel=1e-5)
        if teacher is not None:
            assert got["kd_loss"] == pytest.approx(ref["kd_loss"], rel=1e-5) and ref["kd_loss"] > 0
        assert got["train_miou"] == pytest.approx(ref["train_miou"], abs=1e-4)
        for k in ("miou", "miou_no_back", "pixel_acc"):
            assert got[f"val_{k}"] == pytest.approx(ref["val"][k], abs=1e-4), f"epoch {ref['epoch']} val_{k}"

    # metrics.json: best/last on val and test, evaluated by the two ranks together
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD
    best = max(rows, key=lambda r: r["val"]["miou"])  # the engine keeps the first of equal scores
    assert metrics["best"]["epoch"] == best["epoch"]
    for which, epoch in (("best", best["epoch"]), ("last", len(rows))):
        for split in ("val", "test"):
            ref = _scores_of(cfg, role, states[epoch - 1], split)
            got = metrics[split][which]
            assert got["epoch"] == epoch
            for k in SCORES:
                assert got[k] == pytest.approx(ref[k], abs=1e-4), f"{split} {which} {k}"

    # rank 0 alone writes; it writes every artifact; the summary line is printed once
    assert not writes.get("1"), f"rank 1 wrote into the run folder: {writes.get('1')}"
    assert not writes.get("agent"), f"the torchrun agent wrote: {writes.get('agent')}"
    written = {Path(p).name for _, p in writes.get("0", [])}
    for name in ("arch.json", "metrics.json", "history.csv", "per_class_iou.csv", "last.pt", "best.pt"):
        assert name in written, f"rank 0 did not write {name} (wrote {sorted(written)})"
    assert stdout.count(f"{stage} seed {cfg.seeds[0]}: best epoch") == 1 and f"({WORLD} processes)" in stdout


@pytest.mark.slow
def test_torchrun_two_processes_train_the_same_student_as_one(tmp_path, one_thread):
    overrides = _overrides(tmp_path, "student", epochs=2)
    stdout, writes = _torchrun(tmp_path, "04_student", overrides)
    _check_against_reference(
        tmp_path, load_config("smoke", overrides), "04_student", "student", "student", stdout, writes
    )


@pytest.mark.slow
def test_torchrun_two_processes_distil_the_same_student_as_one(tmp_path, one_thread):
    # a fixed (randomly initialised, eval-mode) teacher in our checkpoint format: what 03_distill loads
    torch.manual_seed(7)
    teacher = build_network(published_architecture("teacher"), 19)
    init_weights_(teacher)
    teacher_path = tmp_path / "teacher.pt"
    save_torch(
        {
            "format": CHECKPOINT_FORMAT,
            "kind": "train",
            "epoch": 1,
            "model": teacher.state_dict(),
            "arch": published_architecture("teacher").to_dict(),
            "num_classes": 19,
            "metrics": {},
        },
        teacher_path,
    )
    overrides = _overrides(tmp_path, "distill", epochs=1, **{"distill.teacher_checkpoint": str(teacher_path)})
    stdout, writes = _torchrun(tmp_path, "03_distill", overrides)
    metrics = json.loads((tmp_path / "outputs" / "smoke" / "03_distill" / "seed-12345" / "metrics.json").read_text())
    assert metrics["distilled"] and metrics["teacher_source"] == str(teacher_path)
    _check_against_reference(
        tmp_path,
        load_config("smoke", overrides),
        "03_distill",
        "distill",
        "student",
        stdout,
        writes,
        teacher=teacher.eval(),
    )
