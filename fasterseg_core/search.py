"""Architecture search: supernet pretraining, then alternating first-order search of α, β, γ and weights.

Spec: ``shared/spec/fasterseg.md`` §3 (re-implements the authors' ``search/train_search.py``,
``search/architect.py`` and ``search/config_search.py``), §4 (derivation, via
:mod:`fasterseg_core.models.derive`) and §12.1 (quirks). Paper: §3 and §4 of Chen et al., ICLR 2020.

Symbols: α (operator logits per cell), β (input choice of two-input cells), γ (width logits per feature
row, ``ratio_k_s``); architecture index k = 0 teacher, 1 student (they share every cell weight).

1. **Data** (§3.1): one permutation of the training split; the first half trains the weights, the second
   half the architecture.
2. **Pretraining** (§3.2): no architecture update; index 0 with the sandwich rule (widths all max, all
   min and two random draws), the four losses summed.
3. **Search** (§3.2–3.4), per iteration: (1) architecture step on an arch-half batch: the loss of four
   passes (teacher max, student Gumbel, student max, student min; OHEM summed over the five heads) plus
   λ·latency for the student, one Adam per index; (2) **all** gradients zeroed (the May-2021 fix), the same
   loss on a weight-half batch, gradient clipping, SGD.
4. **Per epoch** (§3.5): evaluate the five heads of both indices, derive teacher and student (§4), time
   their candidates on the latency table, adapt λ, save the architectures and an atomic checkpoint.
   The latency objective and λ live in :mod:`~fasterseg_core.search_latency`, derivation and artefacts
   in :mod:`~fasterseg_core.search_results`.

Deviation, opt-in (``search.path_sampling: true``, default false): every pass runs one sampled operator per
cell and one sampled input per two-input cell instead of all of them (``path="sample"`` of
:meth:`~fasterseg_core.models.supernet.Supernet.forward`), and the per-epoch evaluation runs the most likely
path (``path="argmax"``). The objective, the four passes, the latency term and λ are unchanged; a search
iteration then costs a few training steps of a derived network instead of tens (``benchmarks/search.py``).
Pretraining with uniform α then samples operators uniformly (single-path one-shot training).

Determinism: every epoch's randomness (data order, augmentation, random/Gumbel widths) is drawn from
generators seeded by (seed, phase, epoch) alone, and the checkpoint written after each epoch holds the
weights, α/β/γ, optimiser and scheduler states, λ and the history. Resuming after an interruption
therefore gives the same result as an uninterrupted run (bit-identical on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from .config import RunConfig, to_dict
from .data import build_dataset
from .latency.lut import LatencyTable
from .losses import OhemCrossEntropy, sum_over_heads
from .metrics import ConfusionMatrix
from .models.architecture import Architecture
from .models.network import init_weights_
from .models.supernet import HEAD_NAMES, Supernet, build_supernet
from .runs import Run, save_torch, seed_everything
from .search_latency import (
    REFERENCE_STUDENT_MS,
    SupernetLatency,
    adapt_lambda,
    published_student_ms,
    target_fps_window,
)
from .search_results import (
    ROLES,
    arch_snapshot,
    derive_networks,
    epoch_fields,
    final_metrics,
    pair_miou,
    save_artifacts,
)

_log = logging.getLogger(__name__)

# §3.2: the passes whose losses are summed for one step, as (architecture index, width mode).
PRETRAIN_PASSES = ((0, "max"), (0, "min"), (0, "random"), (0, "random"))  # sandwich rule
SEARCH_PASSES = ((0, "max"), (1, "gumbel"), (1, "max"), (1, "min"))
# How each index is evaluated after a search epoch: the teacher at full width, the student at the widths
# derivation keeps (argmax γ, §4.3).
EVAL_WIDTHS = {0: "max", 1: "argmax"}


def train_path(path_sampling: bool) -> str:
    """The supernet path mode of the training passes: "sample" with ``search.path_sampling``, else "mix"."""
    return "sample" if path_sampling else "mix"


def eval_path(path: str) -> str:
    """Evaluation runs the mixture (the paper) or, for a sampled search, the most likely path."""
    return "argmax" if path == "sample" else "mix"


# ---- data -----------------------------------------------------------------------------------------------
def split_search_data(num_images: int, seed: int) -> tuple[list[int], list[int]]:
    """§3.1: one random permutation; the first ⌊n/2⌋ images train the weights, the rest the architecture."""
    if num_images < 2:
        raise ValueError(f"the search needs at least 2 training images to split, got {num_images}")
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).tolist()
    half = num_images // 2
    return perm[:half], perm[half:]


def iterations_per_epoch(iters: int, min_iters: int, num_train: int, batch_size: int) -> int:
    """``iters`` if positive, else the authors' ``max(num_train // 2 // batch, min_iters)`` (§3.4)."""
    return iters if iters > 0 else max(num_train // 2 // batch_size, min_iters)


def ohem_min_kept(batch_size: int, crop_hw: Sequence[int]) -> int:
    """§3.2: ``batch·H·W // (16·8²)`` — 1/16 of the pixels of the 1/8-resolution loss."""
    return batch_size * crop_hw[0] * crop_hw[1] // (16 * 8 * 8)


def check_supernet_input(hw: Sequence[int], what: str) -> None:
    """Raise unless both sides are multiples of 32 and at least 64 (what the supernet's ops need)."""
    if any(d % 32 or d < 64 for d in hw):
        fix = [max(64, 32 * math.ceil(d / 32)) for d in hw]
        raise ValueError(
            f"{what} {list(hw)}: the supernet needs sides that are multiples of 32 and at least 64 (the "
            f"stride-2 skip needs even sizes at strides 8 and 16, the zoomed convs halve the stride-32 "
            f"features); use e.g. {fix}"
        )


def _epoch_seed(seed: int, phase: str, epoch: int) -> int:
    return seed + {"pretrain": 100_003, "search": 200_003}[phase] + 7_919 * epoch


def _epoch_loader(
    dataset: Dataset, indices: Sequence[int], batch_size: int, iters: int, seed: int, workers: int
) -> DataLoader:
    """``iters`` batches drawn from ``indices``, repeating shuffled passes as needed (§9.1 epoch rule)."""
    g = torch.Generator().manual_seed(seed)
    subset = Subset(dataset, list(indices))
    if len(subset) < batch_size:
        raise ValueError(f"a search half has {len(subset)} images, fewer than the batch size {batch_size}")
    sampler = RandomSampler(subset, num_samples=iters * batch_size, generator=g)
    # The same generator seeds the workers, so their augmentation is reproducible too.
    return DataLoader(subset, batch_size, sampler=sampler, num_workers=workers, drop_last=True, generator=g)


def _labels_at(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, H, W) int64 labels → (N, h, w) by nearest neighbour (the supernet's loss is at 1/8, §3.1)."""
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _pad_for_supernet(images: torch.Tensor) -> torch.Tensor:
    """Zero-pad (N, 3, H, W) at the bottom/right to sides that are multiples of 32, at least 64."""
    h, w = images.shape[-2:]
    th, tw = (max(64, 32 * math.ceil(d / 32)) for d in (h, w))
    return F.pad(images, (0, tw - w, 0, th - h)) if (th, tw) != (h, w) else images


# ---- model ----------------------------------------------------------------------------------------------
def supernet_loss_backward(
    net: Supernet,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: OhemCrossEntropy,
    passes: Iterable[tuple[int, str]],
    *,
    inputs: Sequence[torch.Tensor],
    generator: torch.Generator | None = None,
    path: str = "mix",
) -> float:
    """Σ over ``passes`` of the OHEM loss summed over the five heads (§3.2), backpropagated into ``inputs``.

    Each pass is backpropagated as soon as it is computed (gradients accumulate, so the result equals one
    backward of the sum while only one pass's activations are held in memory). Only ``inputs`` receive
    gradient: the architecture step never computes weight gradients and vice versa.

    Args:
        images: (N, 3, H, W) float crops; labels: (N, H, W) int64 at crop size (resized to the logits here).
        passes: (architecture index, width mode) per forward pass.
        path: the supernet's path mode, "mix" (the paper) or "sample" (``search.path_sampling``).

    Returns:
        The summed loss (a float).
    """
    total = 0.0
    target = None
    for arch_idx, mode in passes:
        heads = net(images, arch_idx, mode, generator=generator, path=path)["heads"]
        if target is None:
            target = _labels_at(labels, next(iter(heads.values())).shape[-2:])
        loss = sum_over_heads(criterion, heads, target)
        loss.backward(inputs=list(inputs))
        total += float(loss.detach())
    return total


def arch_step(
    net: Supernet,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: OhemCrossEntropy,
    arch_optimizers: Sequence[torch.optim.Optimizer],
    latency: SupernetLatency | None,
    lam: float,
    *,
    latency_scale: float = 1.0,
    generator: torch.Generator | None = None,
    path: str = "mix",
) -> dict[str, float]:
    """One first-order architecture update (§3.4 step 1) on an arch-half batch.

    Loss = the four search passes + ``lam · latency_scale · latency`` (student only; λ_teacher = 0, §3.3).

    Returns:
        ``{"loss": CE part, "latency": decoupled latency (ms), "lat_alpha"/"lat_beta"/"lat_gamma": terms}``.
    """
    for opt in arch_optimizers:
        opt.zero_grad(set_to_none=True)
    arch_params = net.arch_parameters()
    out = {"loss": supernet_loss_backward(net, images, labels, criterion, SEARCH_PASSES, inputs=arch_params,
                                          generator=generator, path=path)}  # fmt: skip
    if latency is not None:
        lat, terms = latency(generator)
        if lam > 0:
            (lam * latency_scale * lat).backward(inputs=net.arch_parameters(latency.arch_idx))
        out.update(latency=float(lat.detach()), **{f"lat_{k}": v for k, v in terms.items()})
    for opt in arch_optimizers:
        opt.step()
    return out


def weight_step(
    net: Supernet,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: OhemCrossEntropy,
    optimizer: torch.optim.Optimizer,
    passes: Iterable[tuple[int, str]],
    *,
    clip_norm: float,
    generator: torch.Generator | None = None,
    path: str = "mix",
) -> float:
    """One weight update (§3.4 step 2): zero **all** gradients, loss, backward, clip, SGD. Returns the loss.

    With ``path="sample"`` the operators no pass ran keep ``grad = None`` and SGD leaves them (and their
    momentum and weight decay) untouched this step, as in single-path supernet training.
    """
    # The May-2021 fix: without zeroing every parameter's gradient here, gradients the architecture step
    # left on the weights leak into this SGD step. (Our arch step computes none, but the rule stays explicit.)
    net.zero_grad(set_to_none=True)
    weights = net.weight_parameters()
    loss = supernet_loss_backward(
        net, images, labels, criterion, passes, inputs=weights, generator=generator, path=path
    )
    nn.utils.clip_grad_norm_(weights, clip_norm)  # "all model parameters": the arch grads are None here
    optimizer.step()
    return loss


@torch.no_grad()
def evaluate_heads(
    net: Supernet, loader: Iterable, arch_idx: int, width_mode: str, device: torch.device, path: str = "mix"
) -> dict[str, ConfusionMatrix]:
    """Confusion matrix of each of the five heads of one index over a whole split (eval mode, §3.5).

    ``path``: "mix" (the paper) or "argmax" (the most likely operator and input; a sampled search).

    Images are zero-padded to supernet-compatible sides and the logits cropped back to the label size.
    """
    was_training = net.training
    net.eval()
    cms = {name: ConfusionMatrix(net.num_classes) for name in HEAD_NAMES}
    try:
        for images, labels in loader:
            h, w = images.shape[-2:]
            heads = net(_pad_for_supernet(images.to(device)), arch_idx, width_mode, path=path)["heads"]
            labels = labels.to(device)
            for name, logits in heads.items():
                cms[name].update(logits[..., :h, :w].argmax(1), labels)
    finally:
        net.train(was_training)
    return cms


# ---- the whole search -----------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """What the search stage returns (and wrote to its run folder)."""

    teacher: Architecture
    student: Architecture
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    arch_history: list[dict[str, Any]]
    target_fps: tuple[float, float]
    num_classes: int
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _SearchData:
    """Datasets of one search: augmented crops for both phases, the two halves, the evaluation split."""

    pretrain: Dataset
    search: Dataset
    val: Dataset
    weight_half: list[int]
    arch_half: list[int]
    num_classes: int


def _search_data(cfg: RunConfig) -> _SearchData:
    sc = cfg.search

    def crops(crop_hw: Sequence[int]) -> Dataset:
        return build_dataset(cfg.data, "train", train=True, crop_hw=tuple(crop_hw), base_scale=sc.base_scale)

    pretrain, search_ = crops(sc.pretrain_crop_hw), crops(sc.search_crop_hw)
    val = build_dataset(cfg.data, "val", train=False, base_scale=sc.base_scale)
    if 0 < sc.eval_max_images < len(val):
        # evenly spaced over the split (video datasets list consecutive frames; the first N are one scene)
        k = sc.eval_max_images
        val = Subset(val, [i * len(val) // k for i in range(k)])
    weight_half, arch_half = split_search_data(len(pretrain), sc.seed)
    return _SearchData(pretrain, search_, val, weight_half, arch_half, pretrain.num_classes)


def _search_key(cfg: RunConfig) -> str:
    """Hash of what the search computes from (data, model, search sections): checkpoints must match it."""
    blob = json.dumps({k: to_dict(getattr(cfg, k)) for k in ("data", "model", "search")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_checkpoint(path: Path, key: str, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written by a search of the same configuration, else None."""
    if not path.exists():
        return None
    # mmap: reading the key of a 2 GB checkpoint must not load it all
    ckpt = torch.load(path, map_location=device, weights_only=True, mmap=True)
    if ckpt.get("key") != key:
        _log.warning("%s was written with another data/model/search configuration; starting over", path)
        return None
    return ckpt


class _Eta:
    """Prints how long a phase will take: after its first iteration, and after its first evaluation."""

    def __init__(self, phase: str, iters_left: int, evals_left: int, bar: Any) -> None:
        self.phase, self.iters_left, self.evals_left, self.bar = phase, iters_left, evals_left, bar
        self.announced_iter = self.announced_eval = False

    def iteration(self, seconds: float) -> None:
        if not self.announced_iter and self.iters_left > 0:
            self.announced_iter = True
            evals = f" plus {self.evals_left} evaluations" if self.evals_left else ""
            self.bar.write(
                f"{self.phase}: {self.iters_left} iterations × {seconds:.1f} s ≈ "
                f"{seconds * self.iters_left / 60:.1f} min{evals}"
            )

    def evaluation(self, seconds: float, iters_left: int, per_iter: float, evals_left: int) -> None:
        if not self.announced_eval and evals_left > 0:
            self.announced_eval = True
            self.bar.write(
                f"{self.phase}: one evaluation + derivation takes {seconds:.0f} s → about "
                f"{(iters_left * per_iter + evals_left * seconds) / 60:.1f} min left"
            )


def search(cfg: RunConfig, run: Run, lut: LatencyTable, *, progress: bool = True) -> SearchResult:
    """Run (or resume) pretraining and search, writing artefacts to ``run.dir`` (spec §3, §4).

    Args:
        cfg: the run configuration (``data``, ``model`` and ``search`` sections are used).
        run: the open ``01_search`` run (its device and folder).
        lut: the latency table of the target device at ``cfg.search.latency_input_hw``.
        progress: show tqdm bars (notebook-aware) and ETA lines.

    Returns:
        A :class:`SearchResult`; ``arch_teacher.json``, ``arch_student.json``, ``arch_params.json``,
        ``history.json``, ``arch_history.json`` and ``checkpoints/{pretrain,search}.pt`` are in ``run.dir``.
    """
    from tqdm.auto import tqdm

    sc, device = cfg.search, run.device
    path = train_path(sc.path_sampling)
    if sc.search_epochs < 1:
        raise ValueError("search.search_epochs must be at least 1 (the architecture is derived after each)")
    if tuple(lut.input_hw) != tuple(sc.latency_input_hw):
        raise ValueError(
            f"the latency table is for {list(lut.input_hw)} but search.latency_input_hw is "
            f"{list(sc.latency_input_hw)}; build a table at the search's resolution"
        )
    check_supernet_input(sc.pretrain_crop_hw, "search.pretrain_crop_hw")
    check_supernet_input(sc.search_crop_hw, "search.search_crop_hw")
    data = _search_data(cfg)
    key = _search_key(cfg)
    seed_everything(sc.seed)
    net = build_supernet(cfg.model, data.num_classes)
    init_weights_(net)
    net.to(device).train()
    # the latency objective and target first: a table that does not fit fails before hours of training
    try:
        latency = SupernetLatency(net, lut, arch_idx=1, faithful_quirks=sc.faithful_quirks,
                                  weights=sc.latency_weights)  # fmt: skip
        published_ms = published_student_ms(lut, data.num_classes, faithful_quirks=sc.faithful_quirks)
    except KeyError as e:
        raise ValueError(
            f"latency table {lut.hardware_tag!r} does not fit this search: {e.args[0]}. A table is specific to "
            f"its resolution, channel base and head class count; leave search.latency_table empty to build one "
            f"for this device ({data.num_classes} classes, {list(sc.latency_input_hw)})"
        ) from None
    latency_scale = REFERENCE_STUDENT_MS / published_ms if sc.latency_normalize else 1.0
    window = target_fps_window(lut, data.num_classes, explicit=sc.target_fps_window, rel=sc.target_window_rel,
                               faithful_quirks=sc.faithful_quirks)  # fmt: skip
    ckpt_dir = run.dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    # ---- phase 1: pretraining (done when a search checkpoint exists) ----
    ckpt = _load_checkpoint(ckpt_dir / "search.pt", key, device)
    history = [] if ckpt is not None else _pretrain(net, data, cfg, device, ckpt_dir, key, progress, tqdm)

    # ---- phase 2: search ----
    iters = iterations_per_epoch(sc.iters_per_epoch, sc.min_iters_per_epoch, len(data.search),
                                 sc.search_batch_size)  # fmt: skip
    criterion = OhemCrossEntropy(ohem_min_kept(sc.search_batch_size, sc.search_crop_hw), sc.ohem_thresh)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=sc.search_lr, momentum=sc.momentum,
                            weight_decay=sc.weight_decay)  # fmt: skip
    sched = torch.optim.lr_scheduler.ExponentialLR(w_opt, gamma=sc.lr_decay_per_epoch)
    a_opts = [
        torch.optim.Adam(net.arch_parameters(k), lr=sc.arch_lr, betas=tuple(sc.arch_betas),
                         weight_decay=sc.arch_weight_decay)
        for k in range(len(ROLES))
    ]  # fmt: skip
    lam, start, arch_history = sc.latency_lambda_init, 0, [arch_snapshot(net, 0)]
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        w_opt.load_state_dict(ckpt["weight_optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        for opt, state in zip(a_opts, ckpt["arch_optimizers"]):
            opt.load_state_dict(state)
        lam, start = float(ckpt["lambda"]), int(ckpt["epoch"])
        history, arch_history = list(ckpt["history"]), list(ckpt["arch_history"])

    eval_loader = DataLoader(data.val, sc.search_batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    bar = tqdm(total=sc.search_epochs * iters, initial=start * iters, desc="search", disable=not progress)
    eta = _Eta("search", (sc.search_epochs - start) * iters, sc.search_epochs - start, bar)
    per_iter = 0.0
    for epoch in range(start, sc.search_epochs):
        seed = _epoch_seed(sc.seed, "search", epoch)
        seed_everything(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        loaders = [
            _epoch_loader(data.search, half, sc.search_batch_size, iters, seed + 2 + i, cfg.data.num_workers)
            for i, half in enumerate((data.weight_half, data.arch_half))
        ]
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for (wx, wy), (ax, ay) in zip(*loaders):
            t_it = time.perf_counter()
            a = arch_step(net, ax.to(device), ay.to(device), criterion, a_opts, latency, lam,
                          latency_scale=latency_scale, generator=gen, path=path)  # fmt: skip
            w = weight_step(net, wx.to(device), wy.to(device), criterion, w_opt, SEARCH_PASSES,
                            clip_norm=sc.grad_clip_norm, generator=gen, path=path)  # fmt: skip
            step = {"loss_arch": a.pop("loss"), "loss_weights": w} | {f"{k}_ms": v for k, v in a.items()}
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v / iters
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{w:.3g}", lat_ms=f"{a['latency']:.3g}", lam=f"{lam:.3g}")
            eta.iteration(time.perf_counter() - t_it)
        train_s = time.perf_counter() - t0
        per_iter = train_s / iters
        lr = sched.get_last_lr()[0]
        sched.step()

        # ---- end of epoch (§3.3, §3.5): evaluate both indices' heads, derive, time, adapt λ ----
        t1 = time.perf_counter()
        miou = {
            role: {h: cm.compute()["miou"] for h, cm in evaluate_heads(net, eval_loader, k, EVAL_WIDTHS[k],
                                                                        device, eval_path(path)).items()}
            for k, role in enumerate(ROLES)
        }  # fmt: skip
        derived = derive_networks(net, cfg, lut, data.num_classes, pair_miou(miou))
        cand_fps = [1000.0 / ms for ms in derived["student"].candidates_ms.values() if ms is not None]
        # Deviation: when neither candidate derives under the original's rules (the derived student then
        # comes from the corrected derivation), λ follows that student instead of freezing for the epoch.
        cand_fps = cand_fps or [1000.0 / derived["student"].latency_ms]
        record = {
            "phase": "search",
            "epoch": epoch + 1,
            "lr": lr,
            "lambda": lam,
            "lambda_next": adapt_lambda(lam, cand_fps, window),
            "seconds_train": round(train_s, 2),
        }
        record |= sums | epoch_fields(miou, derived)
        lam = record["lambda_next"]
        history.append(record)
        arch_history.append(arch_snapshot(net, epoch + 1))
        record["seconds_eval"] = round(time.perf_counter() - t1, 2)
        files = save_artifacts(run, net, derived, pair_miou(miou), history, arch_history)
        save_torch(
            {"key": key, "epoch": epoch + 1, "model": net.state_dict(), "weight_optimizer": w_opt.state_dict(),
             "scheduler": sched.state_dict(), "arch_optimizers": [o.state_dict() for o in a_opts],
             "lambda": lam, "history": history, "arch_history": arch_history},
            ckpt_dir / "search.pt",
        )  # fmt: skip
        # the search checkpoint supersedes the pretraining one (a rerun never pretrains again): free 1-2 GB
        (ckpt_dir / "pretrain.pt").unlink(missing_ok=True)
        bar.set_postfix(epoch=epoch + 1, miou=f"{miou['student']['8s_32s']:.3f}",
                        fps=f"{record['student_fps']:.1f}", lam=f"{lam:.3g}")  # fmt: skip
        left = sc.search_epochs - epoch - 1
        eta.evaluation(record["seconds_eval"], left * iters, per_iter, left)
    bar.close()

    if start == sc.search_epochs:  # rerun of a finished search: derive again from the restored state
        last = history[-1]
        miou = {r: {h: last[f"miou_{r}_{h}"] for h in HEAD_NAMES} for r in ROLES}
        derived = derive_networks(net, cfg, lut, data.num_classes, pair_miou(miou))
        files = save_artifacts(run, net, derived, pair_miou(miou), history, arch_history)
    metrics = final_metrics(
        cfg, lut, derived, history, arch_history, window=window, published_ms=published_ms,
        latency_scale=latency_scale, lam=lam, per_iter=per_iter, arch_steps=iters * sc.search_epochs,
    )  # fmt: skip
    run.save_metrics(metrics)
    return SearchResult(
        teacher=derived["teacher"].arch, student=derived["student"].arch, metrics=metrics, history=history,
        arch_history=arch_history, target_fps=window, num_classes=data.num_classes, files=files,
    )  # fmt: skip


def _pretrain(net, data, cfg, device, ckpt_dir, key, progress, tqdm):  # type: ignore[no-untyped-def]
    """§3.2 pretraining on the weight half: index 0, sandwich widths, SGD + clipping; resumable per epoch.

    Returns:
        The pretraining history (one record per epoch).
    """
    sc = cfg.search
    path = train_path(sc.path_sampling)
    iters = iterations_per_epoch(sc.iters_per_epoch, sc.min_iters_per_epoch, len(data.pretrain),
                                 sc.pretrain_batch_size)  # fmt: skip
    criterion = OhemCrossEntropy(ohem_min_kept(sc.pretrain_batch_size, sc.pretrain_crop_hw), sc.ohem_thresh)
    opt = torch.optim.SGD(net.weight_parameters(), lr=sc.pretrain_lr, momentum=sc.momentum,
                          weight_decay=sc.weight_decay)  # fmt: skip
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=sc.lr_decay_per_epoch)
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = _load_checkpoint(ckpt_dir / "pretrain.pt", key, device)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start, history = int(ckpt["epoch"]), list(ckpt["history"])
    bar = tqdm(total=sc.pretrain_epochs * iters, initial=start * iters, desc="pretrain", disable=not progress)
    eta = _Eta("pretrain", (sc.pretrain_epochs - start) * iters, 0, bar)
    for epoch in range(start, sc.pretrain_epochs):
        seed = _epoch_seed(sc.seed, "pretrain", epoch)
        seed_everything(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        loader = _epoch_loader(data.pretrain, data.weight_half, sc.pretrain_batch_size, iters, seed + 2,
                               cfg.data.num_workers)  # fmt: skip
        total, t0 = 0.0, time.perf_counter()
        for x, y in loader:
            t_it = time.perf_counter()
            loss = weight_step(net, x.to(device), y.to(device), criterion, opt, PRETRAIN_PASSES,
                               clip_norm=sc.grad_clip_norm, generator=gen, path=path)  # fmt: skip
            total += loss
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3g}")
            eta.iteration(time.perf_counter() - t_it)
        history.append(
            {
                "phase": "pretrain",
                "epoch": epoch + 1,
                "lr": sched.get_last_lr()[0],
                "loss_weights": total / iters,
                "seconds_train": round(time.perf_counter() - t0, 2),
            }
        )
        sched.step()
        save_torch({"key": key, "epoch": epoch + 1, "model": net.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "history": history}, ckpt_dir / "pretrain.pt")  # fmt: skip
    bar.close()
    return history
