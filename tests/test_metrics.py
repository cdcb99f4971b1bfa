"""ConfusionMatrix against hand-computed and brute-force references (spec §9.4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from fasterseg_core.metrics import ConfusionMatrix


def _cm(pred, target, c=3):
    cm = ConfusionMatrix(c)
    cm.update(torch.as_tensor(pred), torch.as_tensor(target))
    return cm


def test_hand_computed_case_with_ignore():
    # hist[gt, pred]: gt0 → {0: 1, 1: 1}, gt1 → {1: 2}, gt2 → {0: 1}; the 255 pixel is not counted.
    cm = _cm([0, 1, 1, 1, 0, 2], [0, 0, 1, 1, 2, 255])
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = cm.compute()
    assert s["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])  # 1/(2+2-1), 2/(2+3-2), 0/(1+0-0)
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["miou_no_back"] == pytest.approx(1 / 3)  # mean of IoU[1:] = (2/3 + 0) / 2
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    assert s["class_acc"] == pytest.approx([0.5, 1.0, 0.0])
    assert s["mean_class_acc"] == pytest.approx(0.5)
    assert s["pixels"] == 5


def test_absent_class_is_nan_and_skipped():
    cm = _cm([0, 1, 1, 2], [0, 1, 2, 2], c=4)  # class 3 in neither gt nor pred
    s = cm.compute()
    assert math.isnan(s["iou"][3]) and math.isnan(s["class_acc"][3])
    assert s["iou"][:3] == pytest.approx([1.0, 0.5, 0.5])
    assert s["miou"] == pytest.approx(2 / 3)
    assert s["miou_no_back"] == pytest.approx(0.5)


def test_predicted_but_absent_from_gt_counts_as_zero():
    s = _cm([0, 2], [0, 0]).compute()  # class 2 predicted once, never in gt → IoU 0, not NaN
    assert s["iou"][2] == 0.0 and math.isnan(s["iou"][1])
    assert s["miou"] == pytest.approx((0.5 + 0.0) / 2)


def test_perfect_prediction_gives_one():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 7, 9), generator=g)
    target[0, 0, :3] = 255
    pred = target.clone()
    pred[target == 255] = 3  # whatever is predicted at ignored pixels does not count
    s = _cm(pred, target, c=5).compute()
    assert (
        s["miou"] == 1.0 and s["miou_no_back"] == 1.0 and s["pixel_acc"] == 1.0 and s["mean_class_acc"] == 1.0
    )


def test_merge_of_two_halves_equals_one_pass_and_leading_dims():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 6, (4, 2, 10, 12), generator=g)
    target[target == 5] = 255
    pred = torch.randint(0, 5, (4, 2, 10, 12), generator=g)
    whole = _cm(pred, target, c=5)
    a, b = _cm(pred[:2], target[:2], c=5), _cm(pred[2:], target[2:], c=5)
    assert torch.equal(a.merge(b).mat, whole.mat)
    streamed = ConfusionMatrix(5)
    for i in range(4):
        streamed.update(pred[i], target[i])
    assert torch.equal(streamed.mat, whole.mat)
    assert a.compute()["iou"] == pytest.approx(whole.compute()["iou"], nan_ok=True)


def test_matches_brute_force_reference():
    g = torch.Generator().manual_seed(2)
    c = 7
    target = torch.randint(0, c + 1, (300,), generator=g)
    target[target == c] = 255
    pred = torch.randint(0, c, (300,), generator=g)
    ref = [[0] * c for _ in range(c)]
    for t, p in zip(target.tolist(), pred.tolist()):
        if t != 255:
            ref[t][p] += 1
    cm = _cm(pred, target, c=c)
    assert cm.mat.tolist() == ref
    ious = []
    for k in range(c):
        union = sum(ref[k]) + sum(r[k] for r in ref) - ref[k][k]
        ious.append(ref[k][k] / union if union else float("nan"))
    assert cm.compute()["iou"] == pytest.approx(ious, nan_ok=True)


def test_reset_and_empty_matrix():
    cm = _cm([0, 1], [0, 1])
    cm.reset()
    s = cm.compute()
    assert cm.mat.sum() == 0 and math.isnan(s["miou"]) and math.isnan(s["pixel_acc"])


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "shapes differ"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "integer class ids"),
        (torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 3, 255]), r"target holds values \[3\]"),
        (torch.zeros(4, dtype=torch.long), torch.tensor([0, -1, 2, 2]), r"target holds values \[-1\]"),
        (torch.tensor([0, 1, 5, 0]), torch.tensor([0, 1, 2, 2]), r"pred holds values \[5\]"),
    ],
)
def test_bad_input_raises(pred, target, match):
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix(3).update(pred, target)


def test_merge_rejects_other_sizes():
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))


def test_to_frame_has_class_names_and_counts():
    df = _cm([0, 1, 1, 1, 0, 2], [0, 0, 1, 1, 2, 255]).to_frame(["road", "car", "sky"])
    assert list(df.index) == ["road", "car", "sky"] and df.index.name == "class"
    assert list(df.columns) == ["iou", "acc", "gt_pixels", "pred_pixels"]
    assert df.loc["car", "iou"] == pytest.approx(2 / 3)
    assert df["gt_pixels"].tolist() == [2, 2, 1] and df["pred_pixels"].tolist() == [2, 3, 0]
    with pytest.raises(ValueError, match="class names"):
        ConfusionMatrix(3).to_frame(["a", "b"])


def test_all_reduce_is_a_no_op_without_a_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    cm = _cm([0, 1], [0, 1])
    cm.all_reduce()
    assert cm.mat.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def _all_reduce_worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([rank]), torch.tensor([rank]))  # each rank counts one pixel of its own class
        cm.all_reduce()
        torch.save(cm.mat, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_over_processes(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "mat")
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(f"{out}.{rank}").tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_counts_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(3)
    target, pred = torch.randint(0, 4, (2, 8, 8), generator=g), torch.randint(0, 4, (2, 8, 8), generator=g)
    gpu = ConfusionMatrix(4)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.mat.is_cuda and torch.equal(gpu.mat.cpu(), _cm(pred, target, c=4).mat)
