"""Evaluation (§9.4), loading trained networks (ours and the authors' format) and the evaluation CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasterseg_core.checkpoints import FORMAT, load_checkpoint_model, load_stage_model
from fasterseg_core.cli import main as cli_main
from fasterseg_core.config import DataConfig, load_config
from fasterseg_core.data import build_dataset
from fasterseg_core.engine import evaluate
from fasterseg_core.models import CheckpointMismatchError, build_published, export_official_state_dict
from fasterseg_core.models.state_dict import keyed_state_dict_for
from fasterseg_core.predictions import predict_logits
from fasterseg_core.runs import stage_dir
from fasterseg_core.storage import save_torch

REPO = Path(__file__).resolve().parents[1]
CAMVID_ROOT = REPO.parent / "shared" / "data" / "camvid"


def camvid_root() -> Path:
    if not (CAMVID_ROOT / "val").is_dir():
        pytest.skip(f"CamVid not available at {CAMVID_ROOT}")
    return CAMVID_ROOT


def main(args: list[str]) -> int:
    """``python -m fasterseg_core evaluate ARGS`` in this process."""
    return cli_main(["evaluate", *args])


def training_checkpoint(net, epoch: int = 3) -> dict:
    """A checkpoint in the documented best.pt format (fasterseg_core.checkpoints)."""
    return {
        "format": FORMAT,
        "kind": "train",
        "key": "",
        "epoch": epoch,
        "model": net.state_dict(),
        "arch": net.arch.to_dict(),
        "num_classes": net.num_classes,
        "metrics": {"miou": 0.25, "miou_no_back": 0.2, "pixel_acc": 0.5, "mean_class_acc": 0.3},
    }


def varied_network(role: str, num_classes: int):
    """A published network with deterministic non-default weights and BN statistics; a freshly
    initialised one predicts nearly the same scores at every pixel."""
    net = build_published(role, num_classes=num_classes)
    net.load_state_dict(keyed_state_dict_for(net))
    return net


def smoke_cfg(tmp_path: Path):
    # Two small synthetic scenes: enough to run the whole CLI path in well under a second of compute.
    return load_config(
        "smoke",
        {"output_root": str(tmp_path), "data.synthetic_eval_images": 2, "data.synthetic_hw": [64, 128]},
    )


def same_outputs(a, b, x) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x)["out"], b.eval()(x)["out"])


# --------------------------------------------------------------------------------------------------
# evaluate / predict_logits


def test_evaluate_counts_every_labelled_pixel_of_real_camvid(one_thread):
    data = DataConfig(dataset="camvid", root=str(camvid_root()), base_scale=0.25)
    dataset = build_dataset(data, "val", train=False)
    net = varied_network("student", num_classes=11)
    cm = evaluate(net, dataset, "cpu", max_images=3)
    assert net.training  # mode restored

    n = len(dataset)
    gt_counts = torch.zeros(11, dtype=torch.int64)
    for i in (0, n // 3, 2 * n // 3):  # the evenly spaced images evaluate() picks
        label = dataset[i][1]
        valid = label[label != 255]
        gt_counts += torch.bincount(valid, minlength=11)
    assert gt_counts.sum() > 0
    assert cm.compute()["pixels"] == int(gt_counts.sum())
    assert torch.equal(cm.mat.sum(1), gt_counts)  # rows are the ground truth, class by class
    assert (cm.mat.sum(0) > 0).sum() > 1  # columns: the predictions, of more than one class


def test_evaluate_rejects_a_network_for_another_class_count(one_thread):
    data = DataConfig(dataset="synthetic", synthetic_eval_images=1, synthetic_hw=(64, 64))
    dataset = build_dataset(data, "val", train=False)  # 19 Cityscapes train ids
    with pytest.raises(ValueError, match="predicts 11 classes but the dataset has 19"):
        evaluate(build_published("student", num_classes=11), dataset, "cpu")


def test_flip_prediction_is_mirror_equivariant(one_thread):
    # P(x) = softmax(f(x)) + flip(softmax(f(flip x))) gives P(flip x) = flip(P(x)) for any network f;
    # a flip that is not undone, or undone on the wrong axis, breaks this.
    torch.manual_seed(0)
    net = varied_network("student", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 96)
    with_flip = predict_logits(net, x, flip=True)
    assert torch.allclose(predict_logits(net, x.flip(-1), flip=True), with_flip.flip(-1), atol=1e-6)
    plain = predict_logits(net, x)
    assert not torch.allclose(predict_logits(net, x.flip(-1)), plain.flip(-1), atol=1e-3)


# --------------------------------------------------------------------------------------------------
# loading


def test_load_stage_model_round_trip(tmp_path, one_thread):
    cfg = smoke_cfg(tmp_path)
    torch.manual_seed(1)
    net = build_published("student", num_classes=19)
    save_torch(training_checkpoint(net, epoch=7), stage_dir(cfg, "03_distill", cfg.seeds[0]) / "checkpoints" / "best.pt")
    loaded, info = load_stage_model(cfg, "03_distill", "best")
    assert not loaded.training
    assert info["epoch"] == 7 and info["stage"] == "03_distill" and info["source"] == "ours"
    assert "model" not in info
    x = torch.randn(1, 3, 64, 128)
    assert same_outputs(loaded, net, x)
    torch.manual_seed(2)
    assert not same_outputs(build_published("student", num_classes=19), net, x)  # the load mattered


def test_load_stage_model_says_which_stage_to_run(tmp_path):
    cfg = smoke_cfg(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"stage 03_distill has no last checkpoint.*03_distill\.ipynb"
    ):
        load_stage_model(cfg, "03_distill", "last")
    with pytest.raises(ValueError, match="01_search is not a training stage"):
        load_stage_model(cfg, "01_search")


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, one_thread):
    cfg = smoke_cfg(tmp_path)
    student = build_published("student", num_classes=19)
    ckpt = training_checkpoint(student)
    ckpt["arch"] = build_published("teacher", num_classes=19).arch.to_dict()  # wrong arch stored with it
    save_torch(ckpt, stage_dir(cfg, "02_teacher", cfg.seeds[0]) / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointMismatchError, match="looks like a student checkpoint") as e:
        load_stage_model(cfg, "02_teacher")
    assert "best.pt" in str(e.value)


def test_load_checkpoint_model_reads_the_authors_format(tmp_path, one_thread):
    torch.manual_seed(3)
    net = build_published("student", num_classes=19)
    path = tmp_path / "weights1.pt"
    torch.save(export_official_state_dict(net), path)  # a plain state dict, as the released weights
    loaded, info = load_checkpoint_model(path, "student")
    assert info["source"] == "official" and info["num_classes"] == 19
    assert same_outputs(loaded, net, torch.randn(1, 3, 64, 128))

    with pytest.raises(CheckpointMismatchError, match=r"build_published\('student'\)"):
        load_checkpoint_model(path, "teacher")
    with pytest.raises(ValueError, match="carries no architecture"):
        load_checkpoint_model(path)
    with pytest.raises(FileNotFoundError, match="neither 'teacher'/'student'"):
        load_checkpoint_model(path, "students")


def test_load_checkpoint_model_reads_ours_and_an_arch_json(tmp_path, one_thread):
    torch.manual_seed(4)
    net = build_published("student", num_classes=11)
    path = tmp_path / "best.pt"
    save_torch(training_checkpoint(net), path)
    arch_json = tmp_path / "arch.json"
    net.arch.to_json(arch_json)
    loaded, info = load_checkpoint_model(path, arch_json)  # official=None detects our format
    assert info["source"] == "ours" and loaded.num_classes == 11
    assert same_outputs(loaded, net, torch.randn(1, 3, 64, 64))
    with pytest.raises(CheckpointMismatchError, match="differs from the given teacher"):
        load_checkpoint_model(path, "teacher")
    with pytest.raises(ValueError, match="not the authors' state dict"):
        load_checkpoint_model(path, official=True)


# --------------------------------------------------------------------------------------------------
# command line


def test_cli_stage_checkpoint_end_to_end(tmp_path, capsys, one_thread):
    cfg = smoke_cfg(tmp_path)
    torch.manual_seed(5)
    net = build_published("student", num_classes=19)
    save_torch(training_checkpoint(net), stage_dir(cfg, "03_distill", cfg.seeds[0]) / "checkpoints" / "best.pt")
    out_json, colours = tmp_path / "scores.json", tmp_path / "colours"
    overrides = json.dumps(
        {"output_root": str(tmp_path), "data.synthetic_eval_images": 2, "data.synthetic_hw": [64, 128]}
    )
    rc = main(
        ["--profile", "smoke", "--overrides", overrides, "--stage", "03_distill", "--split", "val",
         "--json", str(out_json), "--colour-dir", str(colours), "--colour-count", "2", "--device", "cpu"]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "mIoU no back" in printed and "pixel acc" in printed and "traffic light" in printed

    expected = evaluate(net, build_dataset(cfg.data, "val", train=False), "cpu").compute()
    written = json.loads(out_json.read_text())
    assert written["pixels"] == expected["pixels"] > 0
    assert written["miou"] == pytest.approx(expected["miou"])
    assert written["stage"] == "03_distill" and written["which"] == "best" and written["epoch"] == 3
    assert len(list(colours.glob("*.png"))) == 2


def test_cli_errors_name_the_problem(tmp_path, capsys, one_thread):
    overrides = json.dumps({"output_root": str(tmp_path)})
    assert main(["--profile", "smoke", "--overrides", overrides, "--stage", "04_student"]) == 2
    assert "notebooks/04_student.ipynb" in capsys.readouterr().err

    path = tmp_path / "weights1.pt"
    torch.save(export_official_state_dict(build_published("student", num_classes=19)), path)
    args = ["--profile", "smoke", "--overrides", overrides, "--checkpoint", str(path), "--arch", "teacher"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "weights1.pt" in err and "looks like a student checkpoint" in err


def test_cli_module_on_real_camvid_with_the_authors_format(tmp_path):
    root = camvid_root()
    torch.manual_seed(6)
    path = tmp_path / "weights1.pt"
    torch.save(export_official_state_dict(build_published("student", num_classes=11)), path)
    overrides = json.dumps({"data.root": str(root), "data.base_scale": 0.25})
    cmd = [sys.executable, "-m", "fasterseg_core", "evaluate", "--profile", "camvid-cpu", "--overrides", overrides,
           "--checkpoint", str(path), "--arch", "student", "--split", "test", "--max-images", "2", "--flip",
           "--json", str(tmp_path / "s.json")]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bicyclist" in done.stdout and "mIoU" in done.stdout
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["source"] == "official" and scores["images"] == 2 and scores["flip"] is True
    assert 0.0 <= scores["pixel_acc"] <= 1.0 and len(scores["iou"]) == 11
