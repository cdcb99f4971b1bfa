"""Prediction files: Cityscapes submission (checked with the official evaluation script), colour figures,
train-id PNGs, and the CLI's --submission."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fasterseg_core.checkpoints import FORMAT
from fasterseg_core.cli import main as cli_main
from fasterseg_core.config import DataConfig
from fasterseg_core.data import CAMVID, CITYSCAPES, Cityscapes, build_dataset, build_eval_transform, colorize
from fasterseg_core.models import build_published
from fasterseg_core.models.state_dict import keyed_state_dict_for
from fasterseg_core.predictions import (
    PANEL_GAP_PX,
    export_cityscapes_submission,
    predict_train_ids,
    save_colour_predictions,
    save_label_pngs,
)
from fasterseg_core.storage import save_torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FRAME = "frankfurt_000000_000294"
LABEL_IDS = {int(r.id) for r in CITYSCAPES.train_classes}  # 7, 8, 11, … 33


def data_root(name: str) -> Path:
    root = SHARED / name
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    return root


def varied_network(role: str, num_classes: int) -> nn.Module:
    net = build_published(role, num_classes=num_classes)
    net.load_state_dict(keyed_state_dict_for(net))  # spatially varying predictions, unlike a fresh init
    return net


class GroundTruthNet(nn.Module):
    """Predicts a fixed train-id map: one-hot scores, ignored pixels as class 0 (the evaluation ignores them)."""

    def __init__(self, label: torch.Tensor, num_classes: int = 19):
        super().__init__()
        target = label.clone()
        target[target == 255] = 0
        self.num_classes = num_classes
        self.register_buffer("scores", F.one_hot(target, num_classes).permute(2, 0, 1)[None].float())

    def forward(self, x: torch.Tensor) -> dict:
        assert x.shape[-2:] == self.scores.shape[-2:]
        return {"out": self.scores.expand(x.shape[0], -1, -1, -1), "aux": []}


def test_submission_png_is_full_size_label_ids(tmp_path, one_thread):
    root = data_root("cityscapes_sample")
    # base_scale 0.5: the network sees 64x128, the submission must still match the 128x256 file.
    dataset = build_dataset(
        DataConfig(dataset="cityscapes", root=str(root), base_scale=0.5), "val", train=False
    )
    net = varied_network("student", 19)
    zip_path = export_cityscapes_submission(
        net, dataset, tmp_path / "sub", "cpu", zip_path=tmp_path / "sub.zip"
    )
    assert zip_path == tmp_path / "sub.zip" and net.training

    png = tmp_path / "sub" / "frankfurt" / f"{FRAME}_leftImg8bit.png"
    with Image.open(png) as im:
        assert im.mode == "L" and im.size == Image.open(dataset.files[0][0]).size == (256, 128)
        ids = np.array(im)
    assert ids.dtype == np.uint8 and set(np.unique(ids).tolist()) <= LABEL_IDS
    expected = CITYSCAPES.train_id_to_id[
        predict_train_ids(net.eval(), dataset[0][0], "cpu", size_hw=(128, 256))
    ]
    assert np.array_equal(ids, expected)
    assert len(np.unique(ids)) > 1
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == [f"frankfurt/{FRAME}_leftImg8bit.png"]
        assert zf.read(zf.namelist()[0]) == png.read_bytes()


def test_official_evaluation_accepts_the_ground_truth_round_trip(tmp_path, monkeypatch):
    cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    root = data_root("cityscapes_sample")
    # Train ids derived from labelIds (not the separately downscaled labelTrainIds file, which differs on
    # 0.2 % of boundary pixels): trainId → labelId must then reproduce the official ground truth exactly.
    dataset = Cityscapes(root, "val", build_eval_transform(), label_source="labelIds")
    oracle = GroundTruthNet(dataset[0][1])
    export_cityscapes_submission(oracle, dataset, tmp_path / "results", "cpu")

    # evalInstLevelScore off: that part calls np.in1d, gone from NumPy 2.4 (and is not the mIoU anyway).
    settings = {
        "predictionPath": str(tmp_path / "results"),
        "predictionWalk": None,
        "quiet": True,
        "JSONOutput": False,
        "evalInstLevelScore": False,
        "colorized": False,
        "bold": "",
        "nocol": "",
    }
    for name, value in settings.items():
        monkeypatch.setattr(cs_eval.args, name, value)
    gts = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    preds = [cs_eval.getPrediction(cs_eval.args, gt) for gt in gts]  # the server's file matching
    result = cs_eval.evaluateImgLists(preds, gts, cs_eval.args)

    gt_ids = set(np.unique(np.array(Image.open(gts[0]))).tolist())
    present = {r.name for r in CITYSCAPES.train_classes if r.id in gt_ids}
    scores = {k: v for k, v in result["classScores"].items() if not math.isnan(v)}
    assert len(present) >= 8
    assert scores == {name: 1.0 for name in present}


def test_submission_rejects_other_datasets(tmp_path):
    root = data_root("camvid")
    dataset = build_dataset(DataConfig(dataset="camvid", root=str(root)), "val", train=False)
    with pytest.raises(ValueError, match="needs a Cityscapes dataset.*save_label_pngs"):
        export_cityscapes_submission(build_published("student", 11), dataset, tmp_path, "cpu")


def test_colour_panel_shows_image_truth_and_prediction(tmp_path, one_thread):
    root = data_root("camvid")
    dataset = build_dataset(DataConfig(dataset="camvid", root=str(root)), "test", train=False)
    net = varied_network("student", 11)
    paths = save_colour_predictions(net, dataset, [5], tmp_path, "cpu")
    assert [p.name for p in paths] == [f"0005_{dataset.files[5][0].stem}.png"]

    panel = np.array(Image.open(paths[0]))
    image, label = dataset.load(5)  # untransformed (360, 480, 3) uint8 and train ids
    h, w = label.shape
    assert panel.shape == (h, 3 * w + 2 * PANEL_GAP_PX, 3)
    assert np.abs(panel[:, :w].astype(int) - image.astype(int)).max() <= 1  # de-normalised correctly
    g0, p0 = w + PANEL_GAP_PX, 2 * (w + PANEL_GAP_PX)
    assert np.array_equal(panel[:, g0 : g0 + w], colorize(label, CAMVID.palette))
    pred = predict_train_ids(net.eval(), dataset[5][0], "cpu")
    assert np.array_equal(panel[:, p0:], colorize(pred, CAMVID.palette))


def test_label_pngs_have_the_file_size(tmp_path, one_thread):
    root = data_root("camvid")
    dataset = build_dataset(DataConfig(dataset="camvid", root=str(root), base_scale=0.5), "val", train=False)
    paths = save_label_pngs(varied_network("student", 11), dataset, tmp_path, "cpu", indices=[0, 1])
    assert [p.name for p in paths] == [dataset.files[i][0].name for i in (0, 1)]
    for p in paths:
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (480, 360)
            assert np.array(im).max() < 11


def test_cli_writes_a_submission_zip(tmp_path, capsys, one_thread):
    root = data_root("cityscapes_sample")
    net = varied_network("student", 19)
    ckpt = {"format": FORMAT, "kind": "train", "key": "", "epoch": 1, "model": net.state_dict(), "arch": net.arch.to_dict(),
            "num_classes": 19}
    save_torch(ckpt, tmp_path / "best.pt")
    overrides = {"data.dataset": "cityscapes", "data.root": str(root), "data.base_scale": 0.5}
    rc = cli_main(["evaluate", "--profile", "smoke", "--overrides", json.dumps(overrides), "--checkpoint", str(tmp_path / "best.pt"),
               "--split", "val", "--submission", str(tmp_path / "out" / "sub.zip"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "out" / "sub.zip") as zf:
        assert zf.namelist() == [f"frankfurt/{FRAME}_leftImg8bit.png"]
    assert (tmp_path / "out" / "sub" / "frankfurt" / f"{FRAME}_leftImg8bit.png").is_file()
