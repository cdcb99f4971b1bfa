"""The results explorer: pick a trained network (stage × best/last checkpoint), a split and an image, and see
the image, ground truth, prediction and the image's per-class IoU (``control.ipynb``, ``06_analysis``)."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import torch

from ..analysis.exhibit import Exhibit
from ..checkpoints import load_stage_model, stage_checkpoint_path
from ..config import RunConfig
from ..data import build_dataset
from ..plots import plot_explorer_view
from ..predictions import explore_image
from .commands import TRAINING_SECTIONS


def available_checkpoints(cfg: RunConfig) -> list[tuple[str, str]]:
    """(stage, "best"/"last") of every checkpoint the training stages of this profile wrote."""
    return [
        (s, which)
        for s in TRAINING_SECTIONS
        for which in ("best", "last")
        if stage_checkpoint_path(cfg, s, which).is_file()
    ]


def results_explorer(cfg: RunConfig, split: str = "test", device: torch.device | str = "cpu") -> Any:
    """Pick a trained network and an image; see image, ground truth, prediction and the image's IoU.

    The first available checkpoint and image 0 are shown at once, so the widget's saved (static) state
    in an executed notebook is a real example.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as w

    checkpoints = available_checkpoints(cfg)
    if not checkpoints:
        return w.HTML(
            f"<i>No trained network under {html.escape(str(cfg.output_dir))} yet: run 02_teacher, "
            "03_distill or 04_student first.</i>"
        )
    splits = ["val"] if cfg.data.dataset == "cityscapes" else ["test", "val"]  # Cityscapes test: no labels
    models: dict[tuple[str, str], torch.nn.Module] = {}
    datasets: dict[str, Any] = {}
    model = w.Dropdown(options=[(f"{s} · {k}", (s, k)) for s, k in checkpoints], description="network")
    split_w = w.Dropdown(options=splits, value=split if split in splits else splits[0], description="split")
    index = w.IntSlider(value=0, min=0, max=0, description="image", continuous_update=False)
    out = w.Output()

    def dataset() -> Any:
        if split_w.value not in datasets:
            datasets[split_w.value] = build_dataset(cfg.data, split_w.value, train=False)
        return datasets[split_w.value]

    def show(*_: Any) -> None:
        ds = dataset()
        index.max = len(ds) - 1
        key = model.value
        if key not in models:
            models[key] = load_stage_model(cfg, key[0], key[1], device)[0]
        view = explore_image(
            models[key],
            ds,
            min(index.value, len(ds) - 1),
            device,
            f"{key[0]} ({key[1]} checkpoint) on {split_w.value} image {index.value}",
        )
        fig = plot_explorer_view(view, list(ds.class_names), ds.palette)
        caption = (
            f"Mean IoU over the classes present: {np.nanmean(view.iou['IoU (%)'].to_numpy()):.1f} %. "
            "Pixels: counts in this image (ignored pixels excluded)."
        )
        exhibit = Exhibit(
            "Explorer",
            view.title,
            caption,
            view.iou.reset_index(),
            fig,
            formats={"gt_pixels": "{:.0f}", "pred_pixels": "{:.0f}"},
        )
        # set the outputs directly (not `with out:`): works in a kernel, under papermill and in tests
        out.outputs = ()
        out.append_display_data(exhibit)

    for widget in (model, split_w, index):
        widget.observe(show, names="value")
    show()
    return w.VBox([w.HBox([model, split_w]), index, out])
