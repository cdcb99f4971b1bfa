"""Checkpoint interoperability with the authors' released FasterSeg weights, both ways.

Method: ``docs/method.md`` §7 (key lists in ``shared/reference/fasterseg_state_dict_*.json``).
The authors' checkpoints (``weights0.pt`` teacher, ``weights1.pt`` student) are plain state dicts of
``Network_Multi_Path_Infer`` built in training mode: aux heads included, a cell shared by both branches
stored under both of its keys, BN ``num_batches_tracked`` included.

Our :class:`~fasterseg_core.models.network.FasterSegNetwork` uses the authors' module names and order,
so the mapping is the identity; what this module adds is *strictness* (the authors' loader silently
skipped any key it did not recognise) and errors that say what went wrong and how to fix it.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .network import FasterSegNetwork


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the network key for key and shape for shape."""


@dataclass
class LoadReport:
    """What :func:`load_official_state_dict` found (all lists empty for a perfect fit)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self, limit: int = 12) -> str:
        lines = ["state dict does not match the network:"]
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (
                    f", … ({len(items) - limit} more)" if len(items) > limit else ""
                )
                lines.append(f"  {len(items)} {name} key(s): {shown}")
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} key(s) with a different shape (checkpoint vs network):")
            lines += [f"    {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:limit]]
        lines += [f"  hint: {h}" for h in self.hints]
        return "\n".join(lines)


def _unwrap(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Accept ``{'state_dict': sd}`` wrappers and DataParallel's ``module.`` prefix."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (a mapping of key → tensor), got {type(state_dict).__name__}")
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state dict values must be tensors; not a tensor: {bad[:5]}")
    return sd


def _role_of(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Guess teacher/student from the stem width (teacher stem 48 channels, student 32)."""
    w = sd.get("stem.0.conv.0.weight")
    if w is None or w.dim() != 4:
        return None
    return {48: "teacher", 32: "student"}.get(int(w.shape[0]))


def _hints(net: FasterSegNetwork, sd: Mapping[str, torch.Tensor], report: LoadReport) -> list[str]:
    hints = []
    ours, theirs = net.arch.role, _role_of(sd)
    net_stem = int(net.stem[0].conv[0].weight.shape[0])
    ckpt_stem = sd["stem.0.conv.0.weight"].shape[0] if "stem.0.conv.0.weight" in sd else None
    if theirs is not None and ckpt_stem != net_stem:
        hints.append(
            f"this looks like a {theirs} checkpoint but the network is a {ours} (stem width {ckpt_stem} vs "
            f"{net_stem}); build the matching network, e.g. build_published({theirs!r})"
        )
    elif report.mismatched or report.missing or report.unexpected:
        cells_ckpt = {k.split(".")[1] for k in sd if k.startswith("cells.")}
        cells_net = set(net.cells.keys())
        if cells_ckpt != cells_net:
            hints.append(
                f"the checkpoint's cells ({len(cells_ckpt)} keys) differ from the network's ({len(cells_net)}); "
                "it was trained for another architecture: build the network from that architecture"
            )
    head = sd.get("heads8.conv_1x1.weight")
    if head is not None and int(head.shape[0]) != net.num_classes:
        hints.append(
            f"the checkpoint predicts {head.shape[0]} classes; build with num_classes={head.shape[0]}"
        )
    aux_unexpected = [k for k in report.unexpected if k.startswith(("heads16.", "heads32."))]
    if aux_unexpected and not net.has_aux:
        hints.append(
            "the checkpoint has auxiliary heads but the network was built with aux=False; use aux=True"
        )
    aux_missing = [k for k in report.missing if k.startswith(("heads16.", "heads32."))]
    if aux_missing and len(aux_missing) == len(report.missing):
        hints.append("only the auxiliary heads are missing: build with aux=False, or pass strict=False")
    return hints


def check_state_dict(net: FasterSegNetwork, state_dict: Mapping[str, object]) -> LoadReport:
    """Compare an authors'-format state dict with ``net`` without loading anything."""
    sd = _unwrap(state_dict)
    expected = net.state_dict()
    report = LoadReport(
        missing=[k for k in expected if k not in sd],
        unexpected=[k for k in sd if k not in expected],
        mismatched=[
            (k, tuple(sd[k].shape), tuple(v.shape))
            for k, v in expected.items()
            if k in sd and sd[k].shape != v.shape
        ],
    )
    if not report.ok:
        report.hints = _hints(net, sd, report)
    return report


def load_official_state_dict(
    net: FasterSegNetwork, state_dict: Mapping[str, object], *, strict: bool = True
) -> LoadReport:
    """Load a state dict keyed as the authors' checkpoints (``weights0.pt``/``weights1.pt``) into ``net``.

    Args:
        net: a network from :func:`build_network`/:func:`build_published` (not fused).
        state_dict: the authors' state dict, optionally wrapped as ``{"state_dict": sd}`` and/or with
            ``module.`` prefixes. Both keys of a shared cell must be present and hold equal tensors.
        strict: raise :class:`CheckpointMismatchError` on any missing, unexpected or mis-shaped key.
            With ``strict=False`` only keys present in both with equal shapes are loaded (the authors'
            own lenient behaviour) and the report lists the rest.

    Returns:
        A :class:`LoadReport` (empty lists after a strict load).
    """
    if not isinstance(net, FasterSegNetwork) or net.fused:
        raise TypeError(
            f"expected an unfused FasterSegNetwork (from build_network/build_published), got "
            f"{type(net).__name__}{' (fused)' if getattr(net, 'fused', False) else ''}; "
            "load the checkpoint first, then call fuse_for_inference"
        )
    sd = _unwrap(state_dict)
    report = check_state_dict(net, sd)
    if strict and not report.ok:
        raise CheckpointMismatchError(report.message())

    # A shared cell appears under two keys; both must carry the same tensor or loading is ambiguous.
    owner: dict[int, str] = {}
    for key, tensor in net.state_dict(keep_vars=True).items():
        first = owner.setdefault(id(tensor), key)
        if first != key and first in sd and key in sd and not torch.equal(sd[first], sd[key]):
            raise CheckpointMismatchError(
                f"aliased keys {first!r} and {key!r} name one shared cell tensor but hold different values "
                "in the checkpoint; it was not saved from a network with shared cells"
            )

    mismatched = {k for k, _, _ in report.mismatched}
    loadable = {k: v for k, v in sd.items() if k not in report.unexpected and k not in mismatched}
    net.load_state_dict(loadable, strict=strict)
    return report


def export_official_state_dict(net: FasterSegNetwork) -> OrderedDict[str, torch.Tensor]:
    """The state dict the authors' code expects: their keys, order and aliases, on CPU.

    Aliased keys of shared cells refer to the same tensor, so ``torch.save`` stores it once (as the
    released checkpoints do). Load the result in the authors' code with ``model.load_state_dict``.

    Args:
        net: an unfused network (its module names are the authors').

    Returns:
        OrderedDict key → detached CPU tensor.
    """
    if not isinstance(net, FasterSegNetwork) or net.fused:
        raise TypeError(
            "expected an unfused FasterSegNetwork (a fused network has no BatchNorm and no aux heads, "
            f"so the authors' code cannot load it), got {type(net).__name__}"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    copies: dict[int, torch.Tensor] = {}
    for key, tensor in net.state_dict(keep_vars=True).items():
        if id(tensor) not in copies:
            copies[id(tensor)] = tensor.detach().cpu()
        out[key] = copies[id(tensor)]
    return out


def keyed_state_dict(
    entries: Iterable[tuple[str, Sequence[int], str | None]],
) -> OrderedDict[str, torch.Tensor]:
    """Deterministic weights derived from the key names alone (for cross-implementation checks).

    This is the "keyed initialisation" of ``fasterseg_reference_figures.json``
    (``deterministic_samples.*.keyed_init``): for every key, in order, a generator seeded with
    ``zlib.crc32(key)`` draws conv weights ``randn · sqrt(2 / fan_in)``, BN weights ``1 + 0.1·randn``,
    biases (BN β and conv biases) and running means ``0.1·randn``, running variances ``0.5 + rand``;
    ``num_batches_tracked`` is 0. An aliased key gets its first key's tensor. Unlike a seeded global
    RNG, the result does not depend on construction order, so two implementations that agree on the
    keys get bit-identical weights.

    Args:
        entries: (key, shape, alias_of or None) in state-dict order, e.g. from
            ``[(k, v.shape, None) for k, v in net.state_dict().items()]`` or the reference key lists.

    Returns:
        OrderedDict key → float32 tensor (int64 for ``num_batches_tracked``).
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape, alias_of in entries:
        if alias_of is not None:
            out[key] = out[alias_of]
            continue
        shape = tuple(int(s) for s in shape)
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif len(shape) == 4:
            out[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
        elif leaf == "weight":
            out[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif leaf in ("bias", "running_mean"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif leaf == "running_var":
            out[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            raise ValueError(f"keyed_state_dict does not know how to initialise {key!r}")
    return out


def keyed_state_dict_for(net: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """:func:`keyed_state_dict` for the keys of ``net`` (aliases found by tensor identity)."""
    first: dict[int, str] = {}
    entries = []
    for key, tensor in net.state_dict(keep_vars=True).items():
        alias = first.setdefault(id(tensor), key)
        entries.append((key, tuple(tensor.shape), None if alias == key else alias))
    return keyed_state_dict(entries)
