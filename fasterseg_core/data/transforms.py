"""Joint image/label transforms of the training and evaluation pipelines, §9.1 (and §3.1 pre-resize).

Training, in this order:

1. optional pre-resize by ``base_scale`` (the search's ×0.5, §3.1; CPU profiles): image bilinear,
   label nearest, size ``int(dim · base_scale)``;
2. horizontal flip with p = 0.5;
3. random scale drawn from a discrete set ({0.75, 1, 1.25}): image bilinear (cv2 INTER_LINEAR
   semantics: half-pixel centres, no antialias), label nearest (cv2 INTER_NEAREST: ``floor``), size
   ``int(dim · scale)``;
3b. deviation, opt-in (``color_jitter`` > 0; not in §9.1): random brightness, contrast and saturation
   factors in [1 − s, 1 + s] on the uint8 image (torchvision's ``ColorJitter``), the label untouched;
4. ImageNet normalisation (``/255``, mean, std);
5. random crop: start drawn uniformly in ``[0, dim − crop + 1]`` (inclusive, see :class:`RandomCropPad`)
   when the side is longer than the crop, else 0; any shortfall is padded with 0 (image, after
   normalisation) and 255 (label), split between top/bottom and left/right (the extra pixel of an odd
   shortfall goes to the bottom/right).

Evaluation: the optional pre-resize and normalisation only (whole image, §9.4).

Images travel as ``tv_tensors.Image`` (3, H, W) uint8 → float32 and labels as ``tv_tensors.Mask``
(H, W) uint8, so torchvision v2 dispatches the right kernel (bilinear vs nearest, fill 0 vs 255) per type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fasterseg_core.data.labels import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from a discrete set (§9.1: {0.75, 1.0, 1.25}).

    Images are resized bilinearly without antialias (cv2 INTER_LINEAR), masks by nearest neighbour
    (torchvision picks the kernel per type); the new size is ``int(dim · factor)``. A one-element set is
    a fixed resize (the ``base_scale`` pre-resize).

    Args:
        scales: the candidate factors (> 0).
    """

    def __init__(self, scales: Sequence[float]):
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive factors, got {scales!r}")
        self.scales = tuple(float(s) for s in scales)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        i = int(torch.randint(len(self.scales), ())) if len(self.scales) > 1 else 0
        # int() truncation, as the original's int(dim * scale) (§9.1).
        return {"size": [int(h * self.scales[i]), int(w * self.scales[i])]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=False
        )


def _crop_start(dim: int, crop: int, allow_overhang: bool) -> int:
    if dim <= crop:  # our reading of §9.1: a side no longer than the crop starts at 0 (then padded)
        return 0
    # Spec §9.1: the original draws the start with an inclusive randint(0, dim - crop + 1), so with
    # probability 1/(dim - crop + 2) the window overhangs the far edge by one pixel, which is padded.
    high = dim - crop + 1 if allow_overhang else dim - crop
    return int(torch.randint(high + 1, ()))


class RandomCropPad(v2.Transform):
    """Random crop of a fixed size; sides shorter than the crop are padded (image 0, label 255).

    Args:
        size: crop (height, width).
        allow_overhang: True (§9.1, the original's off-by-one) draws the start from
            ``[0, dim − crop + 1]`` inclusive, so the crop may end one pixel past the image (padded);
            False draws from ``[0, dim − crop]``.
    """

    def __init__(self, size: Sequence[int], allow_overhang: bool = True):
        super().__init__()
        if len(size) != 2 or any(int(s) <= 0 for s in size):
            raise ValueError(f"crop size must be (height, width) with positive entries, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.allow_overhang = allow_overhang

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = self.size
        top = _crop_start(h, ch, self.allow_overhang)
        left = _crop_start(w, cw, self.allow_overhang)
        # What the slice yields, and the shortfall split before/after (odd pixel after).
        got_h, got_w = min(ch, h - top), min(cw, w - left)
        short_h, short_w = ch - got_h, cw - got_w
        # torch.nn.functional.pad order: (left, right, top, bottom)
        pad = [short_w // 2, short_w - short_w // 2, short_h // 2, short_h - short_h // 2]
        return {"top": top, "left": left, "height": got_h, "width": got_w, "pad": pad}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            raise TypeError(f"RandomCropPad handles tv_tensors.Image and Mask, got {type(inpt).__name__}")
        t, left = params["top"], params["left"]
        out = inpt.as_subclass(torch.Tensor)[..., t : t + params["height"], left : left + params["width"]]
        if any(params["pad"]):
            fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
            out = torch.nn.functional.pad(out, params["pad"], mode="constant", value=fill)
        return tv_tensors.wrap(out.contiguous(), like=inpt)


def _normalise() -> list[v2.Transform]:
    # ToDtype(scale=True) divides uint8 images by 255; masks pass through both steps untouched.
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ]


def build_train_transform(
    crop_hw: Sequence[int],
    scales: Sequence[float] = (0.75, 1.0, 1.25),
    use_flip: bool = True,
    base_scale: float = 1.0,
    allow_overhang: bool = True,
    color_jitter: float = 0.0,
) -> v2.Compose:
    """The training pipeline of §9.1 for an (Image uint8 (3, H, W), Mask uint8 (H, W)) pair.

    Args:
        crop_hw: output (height, width).
        scales: discrete random scale factors.
        use_flip: random horizontal flip with p = 0.5.
        base_scale: fixed pre-resize factor applied first (1.0 = none).
        allow_overhang: see :class:`RandomCropPad`.
        color_jitter: strength s of the photometric jitter (step 3b); 0 = none, as §9.1.

    Returns:
        A transform returning (Image float32 (3, *crop_hw) normalised, Mask uint8 (*crop_hw), 255 = pad/ignore).
    """
    steps: list[v2.Transform] = []
    if base_scale != 1.0:
        steps.append(RandomScale([base_scale]))
    if use_flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if tuple(scales) != (1.0,):
        steps.append(RandomScale(scales))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    steps += _normalise()
    steps.append(RandomCropPad(crop_hw, allow_overhang=allow_overhang))
    return v2.Compose(steps)


def build_eval_transform(base_scale: float = 1.0) -> v2.Compose:
    """The deterministic evaluation pipeline: optional pre-resize, then normalisation (§9.4).

    Args:
        base_scale: fixed resize factor (1.0 = full resolution).

    Returns:
        A transform returning (Image float32 (3, H', W') normalised, Mask uint8 (H', W')).
    """
    steps: list[v2.Transform] = [RandomScale([base_scale])] if base_scale != 1.0 else []
    return v2.Compose(steps + _normalise())
