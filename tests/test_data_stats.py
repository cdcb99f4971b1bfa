"""The data stage's numbers: pixel counts, frequency and size tables, loader throughput."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fasterseg_core.data import CamVid, SyntheticStreets, stats

SHARED_CAMVID = (
    Path(os.environ.get("FASTERSEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "camvid"
)


@pytest.fixture(scope="module")
def scenes():
    return SyntheticStreets(4, (32, 64), seed=0)


def test_split_summary_counts_every_pixel(scenes):
    summary = stats.split_summary(scenes)
    assert summary["images"] == 4
    assert len(summary["pixel_counts"]) == scenes.num_classes
    assert sum(summary["pixel_counts"]) + summary["ignore_pixels"] == 4 * 32 * 64
    assert summary["sizes"] == {"32x64": 4}
    # the same counts as a direct bincount over the loaded labels
    direct = sum(np.bincount(scenes.load(i)[1].ravel(), minlength=256) for i in range(4))
    assert summary["pixel_counts"] == direct[: scenes.num_classes].tolist()


def test_frequency_table_columns_sum_to_one(scenes):
    summaries = {"train": stats.split_summary(scenes), "empty": stats.split_summary(SyntheticStreets(0))}
    table = stats.class_frequency_table(summaries, scenes.class_names)
    assert list(table.columns) == ["train", "empty"] and list(table.index) == list(scenes.class_names)
    assert table["train"].sum() == pytest.approx(1.0)
    assert table["empty"].sum() == 0.0


def test_size_tables(scenes):
    summaries = {"train": stats.split_summary(scenes)}
    sizes = stats.image_size_table(summaries, base_scale=0.5)
    assert sizes.to_dict("records")[0] | {"ignored_pixel_share": 0} == {
        "split": "train", "height": 32, "width": 64, "images": 4, "loaded_hw": "16x32", "ignored_pixel_share": 0,
    }
    overview = stats.size_overview(summaries, 0.5, {"crop": (8, 16)})
    assert overview == {"native (4 images)": (32, 64), "loaded (base_scale 0.5)": (16, 32), "crop": (8, 16)}
    assert "loaded (base_scale 1)" not in stats.size_overview(summaries, 1.0, {})


def test_loader_throughput_is_measured(scenes):
    result = stats.measure_loader_throughput(scenes, batch_size=3, num_workers=0, num_batches=3)
    # batches of 4 scenes are 3, 1, 3, 1, ...: after the warm-up batch (3) the timed ones hold 1 + 3 + 1
    assert result["images"] == 5 and result["images_per_s"] > 0 and result["num_workers"] == 0
    with pytest.raises(ValueError, match="empty"):
        stats.measure_loader_throughput(SyntheticStreets(0), 2, 0)


@pytest.mark.skipif(not SHARED_CAMVID.exists(), reason="../shared/data/camvid not present")
def test_camvid_val_frequencies_match_the_dataset_readme():
    # shared/data/camvid/README.md: val pixel shares (void included in the total) for sky, building, road
    summary = stats.split_summary(CamVid(SHARED_CAMVID, "val", max_images=0))
    total = sum(summary["pixel_counts"]) + summary["ignore_pixels"]
    share = [100 * summary["pixel_counts"][i] / total for i in (0, 1, 3)]
    assert share == pytest.approx([9.2, 26.0, 29.0], abs=0.05)
    assert 100 * summary["ignore_pixels"] / total == pytest.approx(1.7, abs=0.05)
    assert summary["sizes"] == {"360x480": 101}


def test_run_data_measures_every_split_and_saves_its_record(tmp_path):
    """stages.run_data does 00_data's work (the notebook shows it): splits, label shares, sizes, throughput."""
    from fasterseg_core.config import load_config
    from fasterseg_core.lifecycle import start_run
    from fasterseg_core.stages import SPLITS, run_data
    from fasterseg_core.storage import load_json

    cfg = load_config("smoke", {"output_root": str(tmp_path)})
    run = start_run(cfg, "00_data")
    result = run_data(cfg, run)
    assert set(result.summaries) == set(SPLITS) == set(result.frequencies.columns)
    assert (result.frequencies.sum() - 1).abs().max() < 1e-9
    assert result.metrics["images"] == {s: len(ds) for s, ds in result.datasets.items()}
    assert sorted(result.metrics["train_images_per_s"]) == sorted({0, cfg.data.num_workers})
    saved = load_json(run.path("stats.json"))
    assert set(saved) == {"summaries", "class_frequencies", "throughput", "sizes"}
