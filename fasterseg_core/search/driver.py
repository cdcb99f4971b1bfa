"""The search stage: supernet pretraining, then alternating first-order search of α, β, γ and weights.

Method: ``docs/method.md`` §3 (paper §3: "multi-resolution branching search space", "latency-constrained
search"), §4 (derivation, via :mod:`fasterseg_core.models.derive`) and §12.1 (quirks of the original).

1. **Data** (§3.1, :mod:`.data`): one permutation of the training split; the first half trains the
   weights, the second half the architecture.
2. **Pretraining** (§3.2): no architecture update; index 0 with the sandwich rule, the four losses summed.
3. **Search** (§3.2–3.4, :mod:`.steps`): per iteration an architecture step and a weight step.
4. **Per epoch** (§3.5): evaluate the five heads of both indices, derive teacher and student (§4), time
   their candidates on the latency table, adapt λ (:mod:`.objective`), save the architectures and an
   atomic checkpoint (:mod:`.derivation`).

Every epoch's history record, the target window and the α/β/γ entropies also go to TensorBoard
(``01_search/tensorboard/``, :mod:`fasterseg_core.scalars`); ``history.json`` stays the record.

Deviation, opt-in (``search.path_sampling: true``, default false): every pass runs one sampled operator per
cell and one sampled input per two-input cell instead of all of them (``path="sample"`` of
:meth:`~fasterseg_core.models.supernet.Supernet.forward`), and the per-epoch evaluation runs the most likely
path (``path="argmax"``). The objective, the four passes, the latency term and λ are unchanged; a search
iteration then costs a few training steps of a derived network instead of tens (``benchmarks/search.py``).
Pretraining with uniform α then samples operators uniformly (single-path one-shot training).

Several processes (``torchrun``, one per GPU; gloo on the CPU): every rank holds the whole supernet, loads
the whole global batch and computes on its contiguous slice (:func:`.data.rank_slice`); the weight and the
α/β/γ gradients are averaged over the ranks before each step (:func:`~fasterseg_core.distributed.average_gradients`:
DDP's arithmetic without its wrapper, which cannot follow the steps' ``backward(inputs=...)`` into disjoint
parameter sets). Every rank seeds the same generators, so all draw the same widths and paths. Batch norm and
OHEM work per rank, as in the training stages without ``sync_bn``: each rank normalises with its slice's
statistics and mines its own hard pixels (``min_kept`` for its share of the batch), so W ranks equal one
process that runs each step on the W slices and averages their gradients, not one process on the whole
batch. (Deviation, forced: torch has no CPU SyncBatchNorm, and ``convert_sync_batchnorm`` would replace the
switchable ``USBatchNorm2d`` itself.) Rank 0's running statistics are broadcast before each evaluation,
so every rank evaluates, checkpoints and derives rank 0's model; the evaluation images are shared out and
the confusion counts summed, so all ranks derive the same networks and λ. Rank 0 alone writes.

Determinism: every epoch's randomness (data order, augmentation, random/Gumbel widths) is drawn from
generators seeded by (seed, phase, epoch) alone, and the checkpoint written after each epoch holds the
weights, α/β/γ, optimiser and scheduler states, λ and the history. Resuming after an interruption
therefore gives the same result as an uninterrupted run (bit-identical on the CPU).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..checkpoints import load_checkpoint, resumable, save_checkpoint
from ..config import RunConfig
from ..distributed import (
    DistInfo,
    barrier,
    broadcast_buffers,
    broadcast_parameters,
    init_distributed,
    local_device,
    mean_over_ranks,
)
from ..latency.lut import LatencyTable
from ..lifecycle import Run
from ..losses import OhemCrossEntropy, ohem_min_kept
from ..machine import seed_everything
from ..models.architecture import Architecture
from ..models.network import init_weights_
from ..models.supernet import HEAD_NAMES, Supernet, build_supernet
from ..progress import bar as progress_bar
from ..runs import resume_key
from ..scalars import SEARCH_LAYOUT, Scalars, search_tags, target_tags
from .data import (
    SearchData,
    check_batch_split,
    check_supernet_input,
    epoch_loader,
    epoch_seed,
    iterations_per_epoch,
    rank_share,
    rank_slice,
    search_data,
)
from .derivation import (
    ROLES,
    arch_entropies,
    arch_snapshot,
    derive_networks,
    epoch_fields,
    final_metrics,
    pair_miou,
    save_artifacts,
)
from .objective import (
    REFERENCE_STUDENT_MS,
    SupernetLatency,
    adapt_lambda,
    published_student_ms,
    target_fps_window,
)
from .steps import (
    EVAL_WIDTHS,
    SEARCH_PASSES,
    arch_step,
    eval_path,
    evaluate_heads,
    pretrain_passes,
    train_path,
    weight_step,
)

_log = logging.getLogger(__name__)


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


class _Eta:
    """Prints how long a phase will take: after its first iteration, and after its first evaluation."""

    def __init__(self, phase: str, iters_left: int, evals_left: int, bar: Any, enabled: bool = True) -> None:
        self.phase, self.iters_left, self.evals_left, self.bar = phase, iters_left, evals_left, bar
        self.announced_iter = self.announced_eval = not enabled  # tqdm.write prints even from a disabled bar

    def iteration(self, seconds: float) -> None:
        if not self.announced_iter and self.iters_left > 0:
            self.announced_iter = True
            evals = f" plus {self.evals_left} evaluations" if self.evals_left else ""
            self.bar.write(f"{self.phase}: {self.iters_left} iterations × {seconds:.1f} s ≈ "
                           f"{seconds * self.iters_left / 60:.1f} min{evals}")

    def evaluation(self, seconds: float, iters_left: int, per_iter: float, evals_left: int) -> None:
        if not self.announced_eval and evals_left > 0:
            self.announced_eval = True
            self.bar.write(f"{self.phase}: one evaluation + derivation takes {seconds:.0f} s → about "
                           f"{(iters_left * per_iter + evals_left * seconds) / 60:.1f} min left")


@dataclass
class _Objective:
    """The latency side of the search on one table: the differentiable estimate, scale and target."""

    latency: SupernetLatency
    published_ms: float
    scale: float
    window: tuple[float, float]


def _objective(cfg: RunConfig, net: Supernet, lut: LatencyTable, num_classes: int) -> _Objective:
    """Built before any training, so a table that does not fit fails before hours of work."""
    sc = cfg.search
    try:
        latency = SupernetLatency(net, lut, arch_idx=1, faithful_quirks=sc.faithful_quirks,
                                  weights=sc.latency_weights)
        published_ms = published_student_ms(lut, num_classes, faithful_quirks=sc.faithful_quirks)
    except KeyError as e:
        raise ValueError(
            f"latency table {lut.hardware_tag!r} does not fit this search: {e.args[0]}. A table is specific to "
            f"its resolution, channel base and head class count; leave search.latency_table empty to build one "
            f"for this device ({num_classes} classes, {list(sc.latency_input_hw)})"
        ) from None
    scale = REFERENCE_STUDENT_MS / published_ms if sc.latency_normalize else 1.0
    window = target_fps_window(lut, num_classes, explicit=sc.target_fps_window, rel=sc.target_window_rel,
                               faithful_quirks=sc.faithful_quirks)
    return _Objective(latency, published_ms, scale, window)


def search(cfg: RunConfig, run: Run, lut: LatencyTable, *, progress: bool = True,
           pretrained: Path | None = None) -> SearchResult:
    """Run (or resume) pretraining and search, writing artefacts to ``run.dir`` (method §3, §4).

    Args:
        cfg: the run configuration (``data``, ``model`` and ``search`` sections are used).
        run: the open ``01_search`` run (its device and folder).
        lut: the latency table of the target device at ``cfg.search.latency_input_hw``.
        progress: show tqdm bars (notebook-aware) and ETA lines.
        pretrained: a finished pretraining's checkpoint (:func:`pretrain`) to search from instead of
            pretraining here: the searches of a study share one pretrained supernet.

    Returns:
        A :class:`SearchResult`; ``arch_teacher.json``, ``arch_student.json``, ``arch_params.json``,
        ``history.json``, ``arch_history.json`` and ``checkpoints/{pretrain,search}.pt`` are in ``run.dir``.
        Under ``torchrun`` every rank returns the same result; rank 0 alone writes (module docstring).
    """
    sc = cfg.search
    info = init_distributed(run.device)
    device = local_device(run.device, info)
    progress = progress and info.main
    if tuple(lut.input_hw) != tuple(sc.latency_input_hw):
        raise ValueError(
            f"the latency table is for {list(lut.input_hw)} but search.latency_input_hw is "
            f"{list(sc.latency_input_hw)}; build a table at the search's resolution"
        )
    check_supernet_input(sc.pretrain_crop_hw, "search.pretrain_crop_hw")
    check_supernet_input(sc.search_crop_hw, "search.search_crop_hw")
    check_batch_split(cfg, info)
    shared = _pretrained_checkpoint(Path(pretrained), cfg) if pretrained is not None else None
    data = search_data(cfg)
    key = resume_key(cfg, "01_search")
    net = _new_supernet(cfg, data.num_classes, device)
    broadcast_parameters(net, info)  # already equal (same seed); DDP's guarantee, made explicit
    objective = _objective(cfg, net, lut, data.num_classes)
    ckpt_dir = run.dir / "checkpoints"
    if info.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)  # rank 0 has opened the run (start_run may set old results aside) before anyone reads it
    ckpt = resumable(ckpt_dir / "search.pt", "search", key)
    with Scalars(run.dir) as scalars:  # live curves, step = iterations of the stage (pretraining first); rank 0
        scalars.layout(SEARCH_LAYOUT)
        if ckpt is not None:
            history: list[dict[str, Any]] = []  # the search checkpoint holds it
        elif shared is not None:
            net.load_state_dict(shared["model"])
            history = list(shared["history"])
        else:
            history = _pretrain(net, data, cfg, device, ckpt_dir, key, progress, info, scalars)
        state = _SearchState(cfg, net, data, history, ckpt, info.world)
        derived, files = _search_epochs(cfg, run, net, data, lut, objective, state, key, progress, info, scalars)
    metrics = final_metrics(cfg, lut, derived, state.history, state.arch_history, window=objective.window,
                            published_ms=objective.published_ms, latency_scale=objective.scale, lam=state.lam,
                            per_iter=state.per_iter, arch_steps=state.iters * sc.search_epochs)
    if info.main:
        run.save_metrics(metrics)
    return SearchResult(teacher=derived["teacher"].arch, student=derived["student"].arch, metrics=metrics,
                        history=state.history, arch_history=state.arch_history, target_fps=objective.window,
                        num_classes=data.num_classes, files=files)


class _SearchState:
    """The search phase's optimisers, λ and histories, restored from a checkpoint when resuming.

    ``world``: the processes sharing each batch; OHEM's ``min_kept`` is for one rank's slice of it.
    """

    def __init__(self, cfg: RunConfig, net: Supernet, data: SearchData, history: list[dict[str, Any]],
                 ckpt: dict[str, Any] | None, world: int = 1) -> None:
        sc = cfg.search
        self.iters = iterations_per_epoch(sc.iters_per_epoch, sc.min_iters_per_epoch, len(data.search),
                                          sc.search_batch_size)
        self.criterion = OhemCrossEntropy(ohem_min_kept(sc.search_batch_size // world, sc.search_crop_hw, loss_stride=8),
                                          sc.ohem_thresh)
        self.w_opt = torch.optim.SGD(net.weight_parameters(), lr=sc.search_lr, momentum=sc.momentum,
                                     weight_decay=sc.weight_decay)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.w_opt, gamma=sc.lr_decay_per_epoch)
        self.a_opts = [torch.optim.Adam(net.arch_parameters(k), lr=sc.arch_lr, betas=tuple(sc.arch_betas),
                                        weight_decay=sc.arch_weight_decay) for k in range(len(ROLES))]
        self.epochs = sc.search_epochs
        self.lam, self.start, self.history = sc.latency_lambda_init, 0, history
        self.arch_history = [arch_snapshot(net, 0)]
        self.per_iter = 0.0
        if ckpt is not None:
            net.load_state_dict(ckpt["model"])
            if ckpt.get("weight_optimizer") is not None:  # None in a finished search's checkpoint (see save)
                self.w_opt.load_state_dict(ckpt["weight_optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            for opt, saved in zip(self.a_opts, ckpt["arch_optimizers"]):
                opt.load_state_dict(saved)
            self.lam, self.start = float(ckpt["lambda"]), int(ckpt["epoch"])
            self.history, self.arch_history = list(ckpt["history"]), list(ckpt["arch_history"])

    def save(self, path: Path, key: str, net: Supernet, epoch: int) -> None:
        """A finished search (``epoch`` = the last) has no weight step left, so its checkpoint drops the
        weights' SGD momentum, half its size (1 GB of the paper's 2 GB supernet checkpoint); the supernet's
        weights, α/β/γ and histories stay, for re-deriving and the report."""
        momentum = None if epoch == self.epochs else self.w_opt.state_dict()
        save_checkpoint(path, "search", key, epoch, net.state_dict(), weight_optimizer=momentum,
                        scheduler=self.sched.state_dict(), arch_optimizers=[o.state_dict() for o in self.a_opts],
                        **{"lambda": self.lam}, history=self.history, arch_history=self.arch_history)


def _search_epochs(cfg: RunConfig, run: Run, net: Supernet, data: SearchData, lut: LatencyTable,
                   objective: _Objective, state: _SearchState, key: str, progress: bool, info: DistInfo,
                   scalars: Scalars) -> tuple[dict[str, Any], dict[str, Path]]:
    """Phase 2: the search epochs from ``state.start`` on; returns the last derivation and its files (rank 0's)."""
    sc, device, iters = cfg.search, local_device(run.device, info), state.iters
    pretrain_steps = sc.pretrain_epochs * _pretrain_iters(cfg, data)  # the x-axis continues after pretraining
    eval_loader = _val_loader(cfg, data, info)
    bar = progress_bar(total=sc.search_epochs * iters, initial=state.start * iters, desc="search", disable=not progress)
    eta = _Eta("search", (sc.search_epochs - state.start) * iters, sc.search_epochs - state.start, bar, info.main)
    derived: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for epoch in range(state.start, sc.search_epochs):
        sums, train_s = _search_epoch(cfg, net, data, objective, state, epoch, device, bar, eta, info)
        state.per_iter = train_s / iters
        lr = state.sched.get_last_lr()[0]
        state.sched.step()
        # ---- end of epoch (§3.3, §3.5): evaluate both indices' heads, derive, time, adapt λ ----
        t1 = time.perf_counter()
        broadcast_buffers(net, info)  # every rank evaluates rank 0's running statistics (the checkpointed model)
        miou = _evaluate_indices(net, eval_loader, device, train_path(sc.path_sampling), info)
        derived = derive_networks(net, cfg, lut, data.num_classes, pair_miou(miou))
        cand_fps = [1000.0 / ms for ms in derived["student"].candidates_ms.values() if ms is not None]
        # Deviation: when neither candidate derives under the original's rules (the derived student then
        # comes from the corrected derivation), λ follows that student instead of freezing for the epoch.
        cand_fps = cand_fps or [1000.0 / derived["student"].latency_ms]
        record = {"phase": "search", "epoch": epoch + 1, "lr": lr, "lambda": state.lam,
                  "lambda_next": adapt_lambda(state.lam, cand_fps, objective.window),
                  "seconds_train": round(train_s, 2)}
        record |= sums | epoch_fields(miou, derived)
        state.lam = record["lambda_next"]
        state.history.append(record)
        state.arch_history.append(arch_snapshot(net, epoch + 1))
        record["seconds_eval"] = round(time.perf_counter() - t1, 2)
        if info.main:
            files = save_artifacts(run, net, derived, pair_miou(miou), state.history, state.arch_history)
        scalars.add(search_tags(record) | target_tags(objective.window)
                    | {f"entropy/{k}": v for k, v in arch_entropies(net).items()},
                    pretrain_steps + (epoch + 1) * iters)  # (before the checkpoint, as fit does)
        if info.main:
            state.save(run.dir / "checkpoints" / "search.pt", key, net, epoch + 1)
            # the search checkpoint supersedes the pretraining one (a rerun never pretrains again): free 1-2 GB
            (run.dir / "checkpoints" / "pretrain.pt").unlink(missing_ok=True)
        bar.set_postfix(epoch=epoch + 1, miou=f"{miou['student']['8s_32s']:.3f}",
                        fps=f"{record['student_fps']:.1f}", lam=f"{state.lam:.3g}")
        left = sc.search_epochs - epoch - 1
        eta.evaluation(record["seconds_eval"], left * iters, state.per_iter, left)
    bar.close()
    if state.start == sc.search_epochs:  # rerun of a finished search: derive again from the restored state
        last = state.history[-1]
        miou = {r: {h: last[f"miou_{r}_{h}"] for h in HEAD_NAMES} for r in ROLES}
        derived = derive_networks(net, cfg, lut, data.num_classes, pair_miou(miou))
        if info.main:
            files = save_artifacts(run, net, derived, pair_miou(miou), state.history, state.arch_history)
    return derived, files


def _search_epoch(cfg: RunConfig, net: Supernet, data: SearchData, objective: _Objective, state: _SearchState,
                  epoch: int, device: torch.device, bar: Any, eta: _Eta, info: DistInfo
                  ) -> tuple[dict[str, float], float]:
    """The iterations of one search epoch (architecture step, then weight step); (mean losses over the
    iterations and the ranks, seconds)."""
    sc, iters, path = cfg.search, state.iters, train_path(cfg.search.path_sampling)
    seed = epoch_seed(sc.seed, "search", epoch)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    loaders = [epoch_loader(data.search, half, sc.search_batch_size, iters, seed + 2 + i, cfg.data.num_workers)
               for i, half in enumerate((data.weight_half, data.arch_half))]
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    for (wx, wy), (ax, ay) in zip(*loaders):
        t_it = time.perf_counter()
        ax, ay, wx, wy = (rank_slice(t, info).to(device) for t in (ax, ay, wx, wy))
        a = arch_step(net, ax, ay, state.criterion, state.a_opts, objective.latency, state.lam,
                      latency_scale=objective.scale, generator=gen, path=path, info=info)
        w = weight_step(net, wx, wy, state.criterion, state.w_opt, SEARCH_PASSES, clip_norm=sc.grad_clip_norm,
                        generator=gen, path=path, info=info)
        step = {"loss_arch": a.pop("loss"), "loss_weights": w} | {f"{k}_ms": v for k, v in a.items()}
        for k, v in step.items():
            sums[k] = sums.get(k, 0.0) + v / iters
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{w:.3g}", lat_ms=f"{a['latency']:.3g}", lam=f"{state.lam:.3g}")
        eta.iteration(time.perf_counter() - t_it)
    if info.world > 1:  # the global batch's losses: this rank's slice's, averaged over the ranks
        sums = dict(zip(sums, mean_over_ranks(list(sums.values()), info, device)))
    return sums, time.perf_counter() - t0


def _evaluate_indices(net: Supernet, loader: DataLoader, device: torch.device, path: str, info: DistInfo
                      ) -> dict[str, dict[str, float]]:
    """Val mIoU of the five heads of both indices (teacher at full width, student at argmax widths); under
    ``torchrun`` each rank scores its share of the images and the counts are summed."""
    out: dict[str, dict[str, float]] = {}
    for k, role in enumerate(ROLES):
        cms = evaluate_heads(net, loader, k, EVAL_WIDTHS[k], device, eval_path(path))
        if info.world > 1:
            for cm in cms.values():
                cm.all_reduce()
        out[role] = {h: cm.compute()["miou"] for h, cm in cms.items()}
    return out


def _pretrain_iters(cfg: RunConfig, data: SearchData) -> int:
    """Iterations of one pretraining epoch (§3.1: the weight half at the pretraining batch size)."""
    sc = cfg.search
    return iterations_per_epoch(sc.iters_per_epoch, sc.min_iters_per_epoch, len(data.pretrain),
                                sc.pretrain_batch_size)


def pretrain(cfg: RunConfig, run: Run, key: str, *, progress: bool = True) -> list[dict[str, Any]]:
    """Pretraining alone (phase 1), one process, into ``run.dir/checkpoints/pretrain.pt``, resumable per epoch:
    the shared start of a study's searches (:func:`search`'s ``pretrained``). After every epoch both indices'
    five heads are scored on val (``miou_<role>_<head>`` in the history), so the study can show how far the
    supernet has learned before any search step.

    Args:
        key: what the checkpoint must have been computed from to be continued (the study's pretraining identity).

    Returns:
        The pretraining history (one record per epoch).
    """
    sc = cfg.search
    check_supernet_input(sc.pretrain_crop_hw, "search.pretrain_crop_hw")
    info = init_distributed(run.device)
    if info.world > 1:
        raise ValueError("a study's shared pretraining runs in one process; start it without torchrun")
    device = local_device(run.device, info)
    data = search_data(cfg)
    net = _new_supernet(cfg, data.num_classes, device)
    ckpt_dir = run.dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with Scalars(run.dir) as scalars:
        scalars.layout(SEARCH_LAYOUT)
        return _pretrain(net, data, cfg, device, ckpt_dir, key, progress, info, scalars, _val_loader(cfg, data, info))


def _new_supernet(cfg: RunConfig, num_classes: int, device: torch.device) -> Supernet:
    """The supernet before any step: seeded by ``search.seed``, §7.3 initialisation, in train mode."""
    seed_everything(cfg.search.seed)
    net = build_supernet(cfg.model, num_classes)
    init_weights_(net)
    return net.to(device).train()


def _val_loader(cfg: RunConfig, data: SearchData, info: DistInfo) -> DataLoader:
    """The per-epoch evaluation's batches: this rank's share of the val images, in order."""
    return DataLoader(rank_share(data.val, info), cfg.search.search_batch_size, shuffle=False,
                      num_workers=cfg.data.num_workers)


def _pretrained_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any]:
    """A finished pretraining's checkpoint (:func:`pretrain`; weights and history), checked before a search that
    starts there touches anything."""
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained supernet at {path}; run the shared pretraining first")
    ckpt = load_checkpoint(path, "search", mmap=True)
    if int(ckpt["epoch"]) != cfg.search.pretrain_epochs:
        raise ValueError(
            f"{path} holds {ckpt['epoch']} pretraining epochs, not search.pretrain_epochs = "
            f"{cfg.search.pretrain_epochs}; finish the shared pretraining (or set the same number of epochs)"
        )
    return ckpt


def _pretrain(net: Supernet, data: SearchData, cfg: RunConfig, device: torch.device, ckpt_dir: Path, key: str,
              progress: bool, info: DistInfo, scalars: Scalars, eval_loader: DataLoader | None = None
              ) -> list[dict[str, Any]]:
    """§3.2 pretraining on the weight half: index 0, sandwich widths, SGD + clipping; resumable per epoch
    (each rank on its slice of the global batch, gradients averaged; rank 0 checkpoints). With
    ``eval_loader`` both indices' heads are scored after every epoch (:func:`pretrain`).

    Returns:
        The pretraining history (one record per epoch).
    """
    sc = cfg.search
    path = train_path(sc.path_sampling)
    iters = _pretrain_iters(cfg, data)
    criterion = OhemCrossEntropy(ohem_min_kept(sc.pretrain_batch_size // info.world, sc.pretrain_crop_hw, loss_stride=8),
                                 sc.ohem_thresh)
    opt = torch.optim.SGD(net.weight_parameters(), lr=sc.pretrain_lr, momentum=sc.momentum,
                          weight_decay=sc.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=sc.lr_decay_per_epoch)
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = resumable(ckpt_dir / "pretrain.pt", "search", key)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:  # None once pretraining has finished (see below)
            opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start, history = int(ckpt["epoch"]), list(ckpt["history"])
    bar = progress_bar(total=sc.pretrain_epochs * iters, initial=start * iters, desc="pretrain", disable=not progress)
    eta = _Eta("pretrain", (sc.pretrain_epochs - start) * iters, 0, bar, info.main)
    for epoch in range(start, sc.pretrain_epochs):
        seed = epoch_seed(sc.seed, "pretrain", epoch)
        seed_everything(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        loader = epoch_loader(data.pretrain, data.weight_half, sc.pretrain_batch_size, iters, seed + 2,
                              cfg.data.num_workers)
        total, t0 = 0.0, time.perf_counter()
        for x, y in loader:
            t_it = time.perf_counter()
            x, y = rank_slice(x, info).to(device), rank_slice(y, info).to(device)
            loss = weight_step(net, x, y, criterion, opt, pretrain_passes(sc.pretrain_student), clip_norm=sc.grad_clip_norm,
                               generator=gen, path=path, info=info)
            total += loss
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3g}")
            eta.iteration(time.perf_counter() - t_it)
        if info.world > 1:  # the global batch's loss: the ranks' mean
            total = mean_over_ranks([total], info, device)[0]
        history.append({"phase": "pretrain", "epoch": epoch + 1, "lr": sched.get_last_lr()[0],
                        "loss_weights": total / iters, "seconds_train": round(time.perf_counter() - t0, 2)})
        if eval_loader is not None:
            miou = _evaluate_indices(net, eval_loader, device, path, info)
            history[-1] |= {f"miou_{role}_{h}": v for role, heads in miou.items() for h, v in heads.items()}
        sched.step()
        scalars.add(search_tags(history[-1]), (epoch + 1) * iters)
        if info.main:
            # pretraining's momentum ends with pretraining (the search phase starts an SGD of its own), so the
            # last epoch's checkpoint leaves it out: 1 GB less on disk beside the search's first checkpoint
            momentum = None if epoch + 1 == sc.pretrain_epochs else opt.state_dict()
            save_checkpoint(ckpt_dir / "pretrain.pt", "search", key, epoch + 1, net.state_dict(),
                            optimizer=momentum, scheduler=sched.state_dict(), history=history)
    bar.close()
    return history
