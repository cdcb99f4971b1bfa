"""Reference networks timed by the same harness, so FasterSeg can be placed among them.

torchvision's LR-ASPP and DeepLabV3 with a MobileNetV3-Large backbone are the real-time segmentation
yardsticks most users have at hand. Random weights are used (timing does not depend on them, and nothing
is downloaded).
"""

from __future__ import annotations

from torch import nn

PEERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")


def build_peer(name: str, num_classes: int = 19) -> nn.Module:
    """A torchvision segmentation network with random weights; forward returns ``{"out": (N, C, H, W)}``.

    Args:
        name: one of :data:`PEERS`.
        num_classes: output classes (19 for Cityscapes).
    """
    from torchvision.models import segmentation

    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; valid: {list(PEERS)}")
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if name.startswith("deeplabv3"):
        kwargs["aux_loss"] = False
    return getattr(segmentation, name)(**kwargs).eval()
