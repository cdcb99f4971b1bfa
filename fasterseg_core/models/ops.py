"""The FasterSeg candidate operators, one table for search, training and latency.

Method: ``docs/method.md`` §1.1-§1.3 (written from the method, in place of the authors' ``operations.py``, of which
they kept three drifting copies in ``search/``, ``train/`` and ``latency/``; here the differences are
named arguments instead).

``OPS[name](c_in, c_out, stride, *, slimmable=False, width_choices=WIDTH_CHOICES,
interpolation="bilinear", skip_mode="factorized")`` builds one operator:

========================= ===================== =====================================================
name (op index)           paper                 computation (s = stride ∈ {1, 2})
========================= ===================== =====================================================
``skip`` (0)              skip connect          s=1: identity (fixed net) / 1×1 conv-BN-ReLU (supernet);
                                                s=2: FactorizedReduce
``conv`` (1)              3×3 conv              conv3×3(s) → BN → ReLU
``conv_downup`` (2)       zoomed 3×3 conv       ↓½ → conv3×3 → BN → (s=1: ↑ back) → ReLU
``conv_2x`` (3)           3×3 conv ×2           conv3×3(s) → BN → ReLU → conv3×3 → BN → ReLU
``conv_2x_downup`` (4)    zoomed 3×3 conv ×2    ↓½ → conv3×3 → BN → ReLU → conv3×3 → BN → (s=1: ↑) → ReLU
========================= ===================== =====================================================

None of the "residual" ops of the original has a residual connection (the class names lie, §12.1).
``slimmable=True`` builds the supernet version (§1.3): the same computation with
:class:`~fasterseg_core.models.slimmable.USConv2d`/``USBatchNorm2d`` at the widest channel counts and
a ``set_ratio((w_in, w_out))`` method. ``interpolation="nearest"`` and ``skip_mode="single_conv"``
give the TensorRT-friendly deployment variant the paper timed (§10).

Widths: ``chi`` (χ) is a width in twelfths, ``w = chi / 12``; a feature at stride ``s`` has
``channels(s, chi) = s · chi`` channels (base 12).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .slimmable import USBatchNorm2d, USConv2d

OP_NAMES = ("skip", "conv", "conv_downup", "conv_2x", "conv_2x_downup")  # index = op index (§1.2)
WIDTH_CHOICES: tuple[float, ...] = (4 / 12, 6 / 12, 8 / 12, 10 / 12, 1.0)  # W of the spec
INTERPOLATIONS = ("bilinear", "nearest")
SKIP_MODES = ("factorized", "single_conv")


def channels(stride: int, chi: float, base: int = 12) -> int:
    """C(s, w) = round(s · base · chi / 12): channels of a feature at ``stride`` with width ``chi``/12."""
    return round(stride * base * chi / 12)


# PyTorch's CPU bilinear kernel runs its channels-last (NHWC) variant whenever out_h + out_w <= 128,
# also for NCHW tensors: it then copies the input to NHWC, *and* clones the (still empty) NCHW output to
# NHWC, and copies the result back. Doing the input conversion ourselves skips the useless second copy.
_NHWC_KERNEL_MAX_OUT_HW_SUM = 128


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the standard NCHW strides F.interpolate's results have (a copy only when it lacks them).

    ``contiguous()`` is not enough: with C = 1 or H = W = 1 an NHWC tensor already counts as
    contiguous but keeps other strides.
    """
    _, c, h, w = t.shape
    return t if t.stride() == (c * h * w, h * w, w, 1) else t.clone(memory_format=torch.contiguous_format)


def _bilinear_forward(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, "bilinear", align_corners=True)`` with the same kernel, one copy fewer."""
    if size[0] + size[1] <= _NHWC_KERNEL_MAX_OUT_HW_SUM and x.is_contiguous():
        # same kernel on the same values as PyTorch's own path here, so the same bits; NCHW out as before
        x = x.contiguous(memory_format=torch.channels_last)
        return _nchw(F.interpolate(x, size=size, mode="bilinear", align_corners=True))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class _BilinearNHWCBackward(torch.autograd.Function):
    """Bilinear resize (align_corners=True) whose backward runs PyTorch's channels-last CPU kernel.

    Why: on the CPU, ``upsample_bilinear2d_backward`` on an NCHW gradient is a scalar loop over
    planes; its channels-last variant is vectorised over channels and 2-20x faster at FasterSeg's
    shapes, even counting the NCHW → NHWC copy of the gradient (``benchmarks/train_step.py``
    measured these backwards at ~20 % of a student training step). The two kernels give
    bit-identical gradients: each input pixel receives the same products in the same order, as far as
    exhaustive comparison shows (random shapes, batch sizes, channel counts, layouts and thread counts
    in ``tests/test_ops.py``; outputs and all gradients of the published networks and the supernet).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        ctx.in_shape, ctx.size = list(x.shape), list(size)
        return _bilinear_forward(x, size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # The gradient leaves in the layout the built-in backward would give it: channels-last only
        # when the incoming gradient already was (so downstream BN/conv backwards see what they did before).
        keep_nhwc = grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
        grad_in = torch.ops.aten.upsample_bilinear2d_backward(
            grad.contiguous(memory_format=torch.channels_last), ctx.size, ctx.in_shape, True, None, None
        )
        return (grad_in if keep_nhwc else _nchw(grad_in)), None


def _cpu_fp32_eager(x: torch.Tensor) -> bool:
    """Where the kernel choices above were checked bit for bit: fp32 CPU, no autocast, tracing or compiling."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (N, C, H, W) → (N, C, *size) the way FasterSeg does everywhere.

    Bilinear always uses ``align_corners=True`` (spec §1); "nearest" is the deployment variant (§10).
    On the CPU in fp32 eager mode it takes PyTorch's faster channels-last kernels where they give the
    same bits (:func:`_bilinear_forward`, :class:`_BilinearNHWCBackward`).
    """
    if mode == "bilinear":
        if not _cpu_fp32_eager(x):  # traced/exported sizes stay symbolic: no int() here
            return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        size = (int(size[0]), int(size[1]))  # plain ints for the kernel choice and the autograd.Function
        if x.requires_grad and torch.is_grad_enabled():
            return _BilinearNHWCBackward.apply(x, size)
        return _bilinear_forward(x, size)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")


class ConvNorm(nn.Module):
    """conv(k×k, stride, no bias) → BN → ReLU (spec §1.1), used by the stem and the decoder.

    State-dict names follow the authors: ``conv.0.weight`` and ``conv.1.*``.

    Args:
        c_in: input channels.
        c_out: output channels.
        kernel_size: k.
        stride: conv stride.
        padding: defaults to ``ceil((k - 1 + 1 - stride) / 2)`` as in the original.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None
    ) -> None:
        super().__init__()
        if padding is None:
            padding = math.ceil((kernel_size - 1 + 1 - stride) / 2)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) → (N, c_out, H / stride, W / stride)."""
        return self.conv(x)


class _Op(nn.Module):
    """Common plumbing: builds plain or slimmable conv/BN layers and validates the variant flags."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        *,
        slimmable: bool = False,
        width_choices: tuple[float, ...] = WIDTH_CHOICES,
        interpolation: str = "bilinear",
        skip_mode: str = "factorized",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"FasterSeg operators have stride 1 or 2, got {stride}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if skip_mode not in SKIP_MODES:
            raise ValueError(f"skip_mode must be one of {SKIP_MODES}, got {skip_mode!r}")
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.slimmable = slimmable
        self.width_choices = tuple(float(w) for w in width_choices)
        self.interpolation = interpolation
        self.skip_mode = skip_mode
        self.ratio = (1.0, 1.0)
        self._build()

    def _build(self) -> None:
        """Create the op's layers from ``self.c_in``, ``self.c_out``, ``self.stride`` (per operator)."""
        raise NotImplementedError

    def _conv(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> nn.Conv2d:
        cls = USConv2d if self.slimmable else nn.Conv2d
        return cls(c_in, c_out, kernel_size, stride, padding=kernel_size // 2, bias=False)

    def _bn(self, c: int) -> nn.BatchNorm2d:
        return USBatchNorm2d(c, self.width_choices) if self.slimmable else nn.BatchNorm2d(c)

    def set_ratio(self, ratio: tuple[float, float]) -> None:
        """Select (w_in, w_out) width ratios for the following forward passes (slimmable ops only)."""
        if not self.slimmable:
            raise RuntimeError(f"{type(self).__name__} was built with slimmable=False; it has fixed widths")
        w_in, w_out = float(ratio[0]), float(ratio[1])
        self.ratio = (w_in, w_out)
        # conv×2 ops: the first conv maps w_in → w_out, the second w_out → w_out (§1.3).
        for conv_name, bn_name, widths in (("conv1", "bn1", (w_in, w_out)), ("conv2", "bn2", (w_out, w_out))):
            conv = getattr(self, conv_name, None)
            if isinstance(conv, USConv2d):
                conv.set_width(widths)
            bn = getattr(self, bn_name, None)
            if isinstance(bn, USBatchNorm2d):
                bn.set_width(w_out)

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize(x, size, self.interpolation)

    def extra_repr(self) -> str:
        return f"{self.c_in}→{self.c_out}, stride={self.stride}, slimmable={self.slimmable}"


class Skip(_Op):
    """Skip connection (op 0; the authors' ``FactorizedReduce``).

    * stride 1, fixed network: identity (needs c_in == c_out).
    * stride 1, supernet (slimmable): 1×1 conv → BN → ReLU, because the input and output widths of a
      supernet cell can differ.
    * stride 2, ``skip_mode="factorized"``: two 1×1 stride-2 convs, c_out/2 channels each, on x and on
      x shifted by one pixel; concat → BN → ReLU.
    * stride 2, ``skip_mode="single_conv"``: one 1×1 stride-2 conv → BN → ReLU (deployment variant, §10).
    """

    def _build(self) -> None:
        c_in, c_out, stride = self.c_in, self.c_out, self.stride
        slimmable, skip_mode = self.slimmable, self.skip_mode
        if stride == 1 and not slimmable:
            if c_in != c_out:
                raise ValueError(
                    f"a fixed-network stride-1 skip is the identity and needs c_in == c_out, got {c_in}→{c_out}"
                )
            self.mode = "identity"
        elif stride == 1:
            self.mode = "conv"
            self.conv1 = self._conv(c_in, c_out, 1, 1)
            self.bn1 = self._bn(c_out)
        elif skip_mode == "single_conv":
            self.mode = "conv"
            self.conv1 = self._conv(c_in, c_out, 1, 2)
            self.bn1 = self._bn(c_out)
        else:
            if c_out % 2:
                raise ValueError(f"FactorizedReduce splits c_out into two halves; c_out={c_out} is odd")
            self.mode = "factorized"
            self.conv1 = self._conv(c_in, c_out // 2, 1, 2)
            self.conv2 = self._conv(c_in, c_out // 2, 1, 2)
            self.bn1 = self._bn(c_out)

    def set_ratio(self, ratio: tuple[float, float]) -> None:
        if not self.slimmable:
            raise RuntimeError("Skip was built with slimmable=False; it has fixed widths")
        w_in, w_out = float(ratio[0]), float(ratio[1])
        self.ratio = (w_in, w_out)
        self.conv1.set_width((w_in, w_out))
        if self.mode == "factorized":  # both halves run at the output width; their concat feeds bn1
            self.conv2.set_width((w_in, w_out))
        self.bn1.set_width(w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) → (N, c_out, ⌈H/s⌉, ⌈W/s⌉)."""
        if self.mode == "identity":
            return x
        if self.mode == "conv":
            return F.relu(self.bn1(self.conv1(x)), inplace=True)
        shifted = x[:, :, 1:, 1:]
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            # Deviation: the original crashes on odd sizes (the two halves differ by one pixel); pad the
            # shifted copy with zeros at the bottom/right so both halves have ⌈H/2⌉ × ⌈W/2⌉ pixels.
            shifted = F.pad(shifted, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        y = torch.cat([self.conv1(x), self.conv2(shifted)], dim=1)
        return F.relu(self.bn1(y), inplace=True)


class Conv(_Op):
    """3×3 conv (op 1; the authors' ``BasicResidual1x``): conv3×3(stride) → BN → ReLU, no residual."""

    def _build(self) -> None:
        c_in, c_out, stride = self.c_in, self.c_out, self.stride
        self.conv1 = self._conv(c_in, c_out, 3, stride)
        self.bn1 = self._bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) → (N, c_out, ⌈H/s⌉, ⌈W/s⌉)."""
        return F.relu(self.bn1(self.conv1(x)), inplace=True)


class ZoomedConv(_Op):
    """Zoomed 3×3 conv (op 2; ``BasicResidual_downup_1x``).

    Resize to (⌊H/2⌋, ⌊W/2⌋) → conv3×3 (stride 1) → BN → [stride 1: resize back to (H, W)] → ReLU.
    At stride 2 the half-resolution result is the output; the conv itself never strides.
    """

    def _build(self) -> None:
        c_in, c_out = self.c_in, self.c_out  # zoomed: the conv itself never strides
        self.conv1 = self._conv(c_in, c_out, 3, 1)
        self.bn1 = self._bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) → (N, c_out, H, W) at stride 1, (N, c_out, ⌊H/2⌋, ⌊W/2⌋) at stride 2."""
        h, w = x.shape[-2:]
        y = self.bn1(self.conv1(self._resize(x, (h // 2, w // 2))))
        if self.stride == 1:
            y = self._resize(y, (h, w))
        return F.relu(y, inplace=True)


class Conv2x(_Op):
    """3×3 conv ×2 (op 3; ``BasicResidual2x``): conv3×3(s) → BN → ReLU → conv3×3 → BN → ReLU."""

    def _build(self) -> None:
        c_in, c_out, stride = self.c_in, self.c_out, self.stride
        self.conv1 = self._conv(c_in, c_out, 3, stride)
        self.bn1 = self._bn(c_out)
        self.conv2 = self._conv(c_out, c_out, 3, 1)
        self.bn2 = self._bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) → (N, c_out, ⌈H/s⌉, ⌈W/s⌉)."""
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)), inplace=True)


class ZoomedConv2x(_Op):
    """Zoomed 3×3 conv ×2 (op 4; ``BasicResidual_downup_2x``).

    Resize to half → conv3×3 → BN → ReLU → conv3×3 → BN → [stride 1: resize back] → ReLU.
    """

    def _build(self) -> None:
        c_in, c_out = self.c_in, self.c_out  # zoomed: the conv itself never strides
        self.conv1 = self._conv(c_in, c_out, 3, 1)
        self.bn1 = self._bn(c_out)
        self.conv2 = self._conv(c_out, c_out, 3, 1)
        self.bn2 = self._bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, H, W) → (N, c_out, H, W) at stride 1, (N, c_out, ⌊H/2⌋, ⌊W/2⌋) at stride 2."""
        h, w = x.shape[-2:]
        y = F.relu(self.bn1(self.conv1(self._resize(x, (h // 2, w // 2)))), inplace=True)
        y = self.bn2(self.conv2(y))
        if self.stride == 1:
            y = self._resize(y, (h, w))
        return F.relu(y, inplace=True)


OPS: dict[str, Callable[..., nn.Module]] = {
    "skip": Skip,
    "conv": Conv,
    "conv_downup": ZoomedConv,
    "conv_2x": Conv2x,
    "conv_2x_downup": ZoomedConv2x,
}  # insertion order = OP_NAMES = op index of α (checked in tests/test_ops.py)
