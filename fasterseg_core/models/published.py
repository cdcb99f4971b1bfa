"""The published FasterSeg teacher and student (paper Fig. 6), shipped as package data.

Method: ``docs/method.md`` §6. The two architectures were decoded from the authors'
``train/fasterseg/arch_{0,1}.pt`` by the derivation of §4 and are stored in our own readable format
(``fasterseg-arch/1``, one entry per cell with operator, input stride, down flag and output width)
in ``fasterseg_core/published/{teacher,student}.json``.

Both networks have two branches (``lasts = [2, 1]``): one ending at 1/32 and one at 1/16.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from .architecture import ROLES, Architecture
from .network import FasterSegNetwork, build_network


def published_architecture(role: str) -> Architecture:
    """The published architecture of ``role`` ("teacher" or "student").

    Returns:
        A fresh :class:`Architecture` read from the package data.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    text = resources.files("fasterseg_core").joinpath("published", f"{role}.json").read_text()
    return Architecture.from_json(text)


def build_published(role: str, num_classes: int = 19, **kwargs: Any) -> FasterSegNetwork:
    """Build the published teacher or student network.

    Args:
        role: "teacher" (23.5 M parameters) or "student" (FasterSeg, 4.4 M parameters).
        num_classes: output classes (19 for Cityscapes; the released checkpoints need 19).
        **kwargs: forwarded to :func:`~fasterseg_core.models.network.build_network` (``deploy``, ``aux``).

    Returns:
        The network in training mode, with fresh (PyTorch default) initial weights.
    """
    return build_network(published_architecture(role), num_classes, **kwargs)
