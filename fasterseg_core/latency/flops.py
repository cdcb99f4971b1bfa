"""Parameter and multiply-add counts of a network, in the authors' convention and in plain conv MACs.

Method: ``docs/method.md`` §7.2, §8. One multiply-add (MAC) = 1. Two conventions:

* ``conv_macs``: multiply-adds of every executed convolution, ``out_elements · (C_in/groups) · k_h · k_w``.
* ``thop_macs``: what the counter the authors pinned reports (thop 0.0.31.post2001170342, model in eval
  mode): conv MACs, plus 1 per output element of a conv with bias, plus 2 per input element of every
  BatchNorm; ReLU, interpolation (functional) and concatenation count 0.

The paper quotes 28.2 G for the FasterSeg student at 1×3×1024×2048. With this code the student counts
27.77 G conv MACs and 27.90 G in the thop convention, exactly the figures measured on the authors' own
network (``fasterseg_reference_figures.json``); the remaining 0.3 G (1.1 %) to the paper is unexplained
(the thop version used at paper time or counted interpolations are plausible causes, §13).

Counting runs the eval forward on the ``meta`` device by default: shapes only, no arithmetic, so even
the teacher at 1024×2048 is counted in well under a second, and ``net`` itself is never modified.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.slimmable import USBatchNorm2d


@dataclass
class Complexity:
    """Counts of one network at one input shape (all integers; multiply-adds, not FLOPs).

    Attributes:
        input_shape: (N, C, H, W) counted.
        params: unique parameters (shared modules counted once); the thop/paper convention, which
            includes modules the eval forward never runs (aux heads, FFM attention).
        params_used: unique parameters of the modules the eval forward actually runs.
        conv_macs: convolution multiply-adds.
        conv_bias_adds: one per output element of every biased convolution.
        bn_elements: input elements of every BatchNorm.
        params_by_module / conv_macs_by_module / thop_macs_by_module: the same, per top-level child.
    """

    input_shape: tuple[int, ...]
    params: int
    params_used: int
    conv_macs: int
    conv_bias_adds: int
    bn_elements: int
    params_by_module: dict[str, int] = field(default_factory=dict)
    conv_macs_by_module: dict[str, int] = field(default_factory=dict)
    thop_macs_by_module: dict[str, int] = field(default_factory=dict)

    @property
    def thop_macs(self) -> int:
        """The authors' (thop 0.0.31) total: conv MACs + bias adds + 2 · BN elements."""
        return self.conv_macs + self.conv_bias_adds + 2 * self.bn_elements

    def summary(self) -> dict[str, float]:
        """Headline numbers in M (params) and G (MACs) for reports."""
        return {
            "params_M": self.params / 1e6,
            "params_used_M": self.params_used / 1e6,
            "conv_GMACs": self.conv_macs / 1e9,
            "thop_GMACs": self.thop_macs / 1e9,
        }


def _unique_numel(params: list[nn.Parameter]) -> int:
    seen: dict[int, int] = {}
    for p in params:
        seen[id(p)] = p.numel()
    return sum(seen.values())


def count_complexity(
    net: nn.Module, input_shape: tuple[int, ...] = (1, 3, 1024, 2048), *, device: str | torch.device = "meta"
) -> Complexity:
    """Count parameters and multiply-adds of ``net``'s eval-mode forward at ``input_shape``.

    Args:
        net: any module built from Conv2d/BatchNorm2d (FasterSeg networks, the supernet, torchvision
            models). Its training flag is restored afterwards and its weights are not touched.
        input_shape: (N, C, H, W) of the float32 input.
        device: "meta" (default; shapes only) or a real device to run actual arithmetic.

    Returns:
        A :class:`Complexity`.
    """
    # Count on a copy: functional_call cannot swap the tensors of a module registered under two names
    # (the shared cells) and restore them correctly, and the caller's network must stay untouched.
    work = copy.deepcopy(net).eval()
    device = torch.device(device)
    work = work.to(device)
    top_of: dict[int, str] = {}
    for name, module in work.named_modules():  # first name wins for shared modules
        top_of.setdefault(id(module), name.split(".")[0] if name else "")

    conv_macs: dict[str, int] = defaultdict(int)
    bias_adds: dict[str, int] = defaultdict(int)
    bn_elems: dict[str, int] = defaultdict(int)
    ran: dict[int, nn.Module] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        ran[id(module)] = module
        top = top_of[id(module)]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            c_in = inputs[0].shape[1]  # the active input channels (slimmable convs use a slice)
            conv_macs[top] += output.numel() * (c_in // module.groups) * kh * kw
            if module.bias is not None:
                bias_adds[top] += output.numel()
        elif isinstance(module, _BatchNorm) and not isinstance(module, USBatchNorm2d):
            bn_elems[top] += inputs[0].numel()  # a switchable BN delegates to a counted private BN

    for m in work.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        work(torch.zeros(input_shape, device=device))
    net = work  # same structure and sharing as the caller's network

    used = [p for m in ran.values() for p in m.parameters(recurse=False)]
    tops = [name for name, _ in net.named_children()]
    params_by_module = {t: _unique_numel(list(getattr(net, t).parameters())) for t in tops}
    return Complexity(
        input_shape=tuple(input_shape),
        params=_unique_numel(list(net.parameters())),
        params_used=_unique_numel(used),
        conv_macs=sum(conv_macs.values()),
        conv_bias_adds=sum(bias_adds.values()),
        bn_elements=sum(bn_elems.values()),
        params_by_module=params_by_module,
        conv_macs_by_module={t: conv_macs[t] for t in tops if conv_macs.get(t)},
        thop_macs_by_module={
            t: conv_macs[t] + bias_adds[t] + 2 * bn_elems[t] for t in tops if t in conv_macs or t in bn_elems
        },
    )


@dataclass(frozen=True)
class CurrentCount:
    """What a current third-party counter reports for a network: ``thop`` (0.1.x) on the real eval forward."""

    counter: str  # e.g. "thop 0.1.1-2209072238"
    params: int  # the parameters of the modules it ran
    macs: int


def count_with_thop(net: nn.Module, input_shape: tuple[int, ...] = (1, 3, 1024, 2048)) -> CurrentCount:
    """The current ``thop`` release's count of ``net`` at ``input_shape``, beside :func:`count_complexity`'s
    reconstruction of the release the authors pinned (0.0.31): newer releases count more operations (e.g.
    upsampling), so the two differ by about 0.5 % on the FasterSeg student. Counted on a copy (thop adds
    buffers to every module it visits), on the CPU with real arithmetic.
    """
    import warnings
    from importlib.metadata import version

    work = copy.deepcopy(net).eval().cpu()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # thop 0.1.1 compares versions with distutils
        from thop import profile  # deferred: only the claims ledger needs a second counter

        macs, params = profile(work, inputs=(torch.zeros(input_shape),), verbose=False)
    return CurrentCount(f"thop {version('thop')}", int(params), int(macs))
