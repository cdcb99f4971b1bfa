"""The checkpoint format: save, load and resume training and search, and networks from any checkpoint.

One format for every checkpoint this package writes (``format: "fasterseg-checkpoint/1"``), a dict of
tensors and plain containers (loaded with ``weights_only=True``):

=================  ===========================================================================
``kind``           ``"train"`` (a training stage) or ``"search"`` (``01_search``)
``key``            the stage identity it was computed from (resume only from the same key)
``epoch``          epochs completed
``model``          the network's (or supernet's) state dict
training extras    ``optimizer``, ``scheduler``, ``rng`` (every generator), ``history``, ``best``,
                   ``seconds_total``; ``arch``, ``num_classes``, ``role``; ``metrics`` (val scores)
search extras      ``weight_optimizer`` (``None`` once the search has finished), ``scheduler``,
                   ``arch_optimizers``, ``lambda``, ``history``, ``arch_history``
=================  ===========================================================================

Networks load from ours (:func:`load_stage_model`, :func:`load_checkpoint_model`) or from the authors'
released plain state dicts (``weights0.pt`` teacher, ``weights1.pt`` student; key layout in
:mod:`fasterseg_core.models.state_dict`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .models import (
    Architecture,
    CheckpointMismatchError,
    FasterSegNetwork,
    build_network,
    load_official_state_dict,
    published_architecture,
)
from .runs import get_stage, stage_dir, stage_seeds
from .storage import load_torch, save_torch

FORMAT = "fasterseg-checkpoint/1"
_LEGACY_TRAIN_FORMAT = "fasterseg-train/1"  # training checkpoints written before the format was shared
KINDS = ("train", "search")
# Training-only entries that evaluation never needs (dropped from the info of a loaded network).
_TRAINING_STATE = ("model", "optimizer", "scheduler", "rng", "history")


# ---- generators ------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every generator's state (Python, NumPy, torch CPU and CUDA), for the checkpoint."""
    # NumPy's key array as a tensor: checkpoints load with weights_only=True (tensors and containers only)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- save / load -----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, kind: str, key: str, epoch: int, model: Mapping[str, Any],
                    **entries: Any) -> Path:
    """Write a checkpoint atomically (a kill mid-write leaves the previous file intact).

    Args:
        kind: "train" or "search".
        key: the stage identity the state was computed from.
        epoch: epochs completed.
        model: the state dict.
        entries: the kind's extras (see the module docstring).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return save_torch({"format": FORMAT, "kind": kind, "key": key, "epoch": epoch, "model": model, **entries},
                      path)


def _load_file(path: Path, mmap: bool = False) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # mmap: reading the key of a 2 GB search checkpoint must not load all of it
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap) if mmap else load_torch(path)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {first}); expected a torch.save file of "
            "tensors and plain containers (ours or the authors' state dict). A stage's own checkpoint: rerun the "
            "stage (make report), which finds it changed and sets it aside, or with --force (FORCE=1) to retrain"
        ) from e


def kind_of(obj: Any) -> str | None:
    """"train"/"search" for one of our checkpoints (legacy training format included), else None."""
    if not isinstance(obj, Mapping):
        return None
    if obj.get("format") == FORMAT:
        return obj.get("kind")
    return "train" if obj.get("format") == _LEGACY_TRAIN_FORMAT else None


def load_checkpoint(path: str | Path, kind: str, *, mmap: bool = False) -> dict[str, Any]:
    """One of our checkpoints of the given kind (on the CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not readable, or not one of our checkpoints of that kind (the message says what it is).
    """
    path = Path(path)
    obj = _load_file(path, mmap=mmap)
    found = kind_of(obj)
    if found != kind:
        what = f"a {found} checkpoint" if found else "not one of this package's checkpoints"
        raise ValueError(f"{path} is {what}, not a {kind} checkpoint ({FORMAT})")
    return obj


def resumable(path: str | Path, kind: str, key: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it exists and was computed from ``key``, else ``None``."""
    path = Path(path)
    if not path.exists():
        return None
    ckpt = load_checkpoint(path, kind, mmap=kind == "search")
    return ckpt if ckpt.get("key") == key else None


# ---- networks from checkpoints --------------------------------------------------------------------
def resolve_architecture(arch: str | Path | Architecture) -> Architecture:
    """``"teacher"``/``"student"`` (the published networks, §6), a ``fasterseg-arch/1`` JSON path, or as is."""
    if isinstance(arch, Architecture):
        return arch
    if str(arch) in ("teacher", "student"):
        return published_architecture(str(arch))
    path = Path(arch)
    if not path.is_file():
        raise FileNotFoundError(
            f"architecture {str(arch)!r} is neither 'teacher'/'student' (the published networks) nor an "
            "existing arch JSON file (e.g. outputs/<profile>/01_search/arch_student.json)"
        )
    return Architecture.from_json(path)


def _strip_prefix(sd: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _build_and_load(arch: Architecture, num_classes: int, state_dict: Mapping[str, Any], path: Path,
                    what: str) -> FasterSegNetwork:
    """Build ``arch`` (aux heads only when the weights have them) and load ``state_dict`` strictly."""
    # torch.compile wraps the module as ``_orig_mod``; DistributedDataParallel's ``module.`` is handled
    # by load_official_state_dict.
    state_dict = _strip_prefix(state_dict, "_orig_mod.")
    has_aux = any(k.startswith(("heads16.", "heads32.", "module.heads16.")) for k in state_dict)
    net = build_network(arch, num_classes, aux=has_aux)
    try:
        load_official_state_dict(net, state_dict, strict=True)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(
            f"{path}: the {what} does not fit the {arch.role} architecture it was loaded into "
            f"({num_classes} classes).\n{e}"
        ) from None
    return net


def _network_from_training_checkpoint(
    ckpt: Mapping[str, Any], path: Path, arch: str | Path | Architecture | None = None,
    num_classes: int | None = None,
) -> tuple[FasterSegNetwork, dict[str, Any]]:
    missing = [k for k in ("model", "arch", "num_classes") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: a training checkpoint without {missing}; it was not written by the engine")
    own = Architecture.from_dict(ckpt["arch"])
    if arch is not None:
        given = resolve_architecture(arch)
        if given != own:
            raise CheckpointMismatchError(
                f"{path} was trained for its own {own.role} architecture, which differs from the given "
                f"{given.role} architecture ({arch}); leave the architecture out to use the checkpoint's"
            )
    k = int(ckpt["num_classes"])
    if num_classes is not None and num_classes != k:
        raise CheckpointMismatchError(f"{path} predicts {k} classes, not the {num_classes} asked for")
    net = _build_and_load(own, k, ckpt["model"], path, "checkpoint's model state")
    info = {key: v for key, v in ckpt.items() if key not in _TRAINING_STATE}
    info.update(path=str(path), source="ours")
    return net, info


def stage_checkpoint_path(cfg: RunConfig, stage: str, which: str = "best", seed: int | None = None) -> Path:
    """``outputs/<profile>/<stage>/seed-<s>/checkpoints/{best,last}.pt`` of a training stage (``seed`` None:
    the stage's first seed)."""
    st = get_stage(stage)
    if st.section is None:
        raise ValueError(f"{st.name} is not a training stage; training stages write checkpoints")
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    seed = stage_seeds(cfg, st.name)[0] if seed is None else seed
    return stage_dir(cfg, st.name, seed) / "checkpoints" / f"{which}.pt"


def load_stage_model(cfg: RunConfig, stage: str, which: str = "best", device: torch.device | str = "cpu",
                     seed: int | None = None) -> tuple[FasterSegNetwork, dict]:
    """The network a training stage saved, ready for evaluation (the stage need not be complete).

    Args:
        cfg: the run configuration (its ``output_dir`` locates the stage).
        stage: ``"02_teacher"``, ``"03_distill"`` or ``"04_student"`` (or ``teacher``/``distill``/``student``).
        which: ``"best"`` (best validation epoch, what the paper reports) or ``"last"`` (final epoch, what
            the authors released; §12.2 #4).
        device: where to put the network.
        seed: which seed's run (``None``: the stage's first seed).

    Returns:
        (network in eval mode on ``device``, checkpoint info: every entry except the training state, plus
        ``path``, ``source="ours"``, ``stage``, ``which`` and ``seed``).

    Raises:
        FileNotFoundError: the stage has not written that checkpoint (the message names the notebook).
        CheckpointMismatchError: the weights do not fit the architecture stored with them.
    """
    path = stage_checkpoint_path(cfg, stage, which, seed)
    name = get_stage(stage).name
    if not path.is_file():
        raise FileNotFoundError(
            f"stage {name} has no {which} checkpoint for profile {cfg.profile!r} ({path} is missing); run "
            f"notebooks/{name}.ipynb first (make report PROFILE={cfg.profile}), or evaluate a checkpoint "
            "file with --checkpoint PATH --arch teacher|student"
        )
    net, info = _network_from_training_checkpoint(load_checkpoint(path, "train"), path)
    info["stage"], info["which"], info["seed"] = name, which, int(path.parent.parent.name.split("-", 1)[1])
    return net.to(device).eval(), info


def load_checkpoint_model(
    path: str | Path, arch: str | Path | Architecture | None = None, num_classes: int | None = None,
    official: bool | None = None, device: torch.device | str = "cpu",
) -> tuple[FasterSegNetwork, dict]:
    """A network from any checkpoint file: one of our training checkpoints or the authors' state dict.

    Args:
        path: the file (``checkpoints/best.pt``, or the authors' ``weights0.pt``/``weights1.pt``).
        arch: ``"teacher"``/``"student"`` (published, §6) or an arch JSON path. Required for the authors'
            weights (they carry no architecture); optional for ours (if given, it must be the same).
        num_classes: output classes; ``None`` takes the checkpoint's (ours: stored; authors': the width
            of ``heads8.conv_1x1``).
        official: ``True`` = the authors' format, ``False`` = ours, ``None`` = detect.
        device: where to put the network.

    Returns:
        (network in eval mode on ``device``, info with ``path``, ``source`` ("ours"/"official"), ``arch``
        (arch dict), ``num_classes`` and, for ours, the checkpoint's metadata).

    Raises:
        CheckpointMismatchError: the weights do not fit the architecture (the message says which keys,
            and hints e.g. "this looks like a student checkpoint").
    """
    path = Path(path)
    obj = _load_file(path)
    ours = kind_of(obj) == "train"
    official = not ours if official is None else official
    if official and ours:
        raise ValueError(f"{path} is one of our training checkpoints, not the authors' state dict")
    if not official:
        if not ours:
            raise ValueError(
                f"{path} is not one of our training checkpoints; for the authors' released weights pass "
                "official=True (command line: leave --official out, it is detected) with an architecture"
            )
        net, info = _network_from_training_checkpoint(obj, path, arch, num_classes)
        return net.to(device).eval(), info
    if arch is None:
        raise ValueError(
            f"{path} is a plain state dict (the authors' format) and carries no architecture; pass "
            "arch='teacher' (weights0.pt), arch='student' (weights1.pt) or an arch JSON path"
        )
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    sd = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    sd = _strip_prefix(_strip_prefix(sd, "module."), "_orig_mod.")
    a = resolve_architecture(arch)
    if num_classes is None:
        head = sd.get("heads8.conv_1x1.weight")
        if not isinstance(head, torch.Tensor):
            raise CheckpointMismatchError(
                f"{path} has no heads8.conv_1x1.weight (the segmentation head); it is not a FasterSeg state dict"
            )
        num_classes = int(head.shape[0])
    net = _build_and_load(a, num_classes, sd, path, "state dict")
    info = {"path": str(path), "source": "official", "arch": a.to_dict(), "num_classes": num_classes}
    return net.to(device).eval(), info
