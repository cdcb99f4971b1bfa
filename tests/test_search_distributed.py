"""The search under the real ``torchrun`` CLI: two gloo processes compute what one process computes.

Each rank loads the whole global batch, keeps its slice, and the ranks average their gradients; batch norm
and OHEM work per rank (no CPU SyncBatchNorm; :mod:`fasterseg_core.search.driver`). The single-process
equivalent of 2 ranks × B/2 is therefore one process that runs every step on the two slices, from the same
generator state and with the same starting buffers (rank 0's are kept), and averages the two gradients.
:func:`_reference` does exactly that with the search's own building blocks; with one slice it is the
plain single-process search, which :func:`test_the_reference_with_one_slice_is_the_search` checks against
``run_search`` bit for bit. The ``torchrun`` run is compared with it on the derived architectures, the
final α/β/γ and weights, λ and the history; the audit hook of ``test_distributed`` shows rank 0 alone writes.

Tolerance: the ranks' gradients are summed by gloo and divided, as here, and only the evaluation's batching
differs (each rank scores half the images), so with one thread per process the results come out bit for bit
equal on our machine. The test allows ``rtol=1e-5, atol=1e-7`` for weights, α/β/γ and losses and 1e-3 for
mIoU (other BLAS builds and thread counts); the derived architectures and λ must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_distributed import WORLD, _torchrun
from test_search import HW, fake_lut
from torch.utils.data import DataLoader

from fasterseg_core.config import RunConfig, load_config
from fasterseg_core.distributed import DistInfo
from fasterseg_core.latency.cache import load_lut
from fasterseg_core.lifecycle import start_run
from fasterseg_core.losses import OhemCrossEntropy, ohem_min_kept
from fasterseg_core.machine import seed_everything
from fasterseg_core.models.architecture import Architecture
from fasterseg_core.models.network import init_weights_
from fasterseg_core.models.supernet import Supernet, build_supernet
from fasterseg_core.search import driver
from fasterseg_core.search.data import (
    check_batch_split,
    epoch_loader,
    epoch_seed,
    iterations_per_epoch,
    rank_share,
    rank_slice,
    search_data,
)
from fasterseg_core.search.derivation import ROLES, derive_networks, pair_miou
from fasterseg_core.search.objective import adapt_lambda
from fasterseg_core.search.steps import (
    EVAL_WIDTHS,
    PRETRAIN_PASSES,
    SEARCH_PASSES,
    eval_path,
    evaluate_heads,
    supernet_loss_backward,
    train_path,
)
from fasterseg_core.stages import run_search
from fasterseg_core.storage import load_torch

CPU = torch.device("cpu")


def _overrides(root: Path, lut_path: Path, **extra: Any) -> dict[str, Any]:
    """A tiny search (6 layers, base 6, 64×64 crops) of 1 pretraining and 2 search epochs, global batch 4."""
    return {
        "output_root": str(root), "model.num_layers": 6, "model.base_channels": 6,
        "data.synthetic_train_images": 8, "data.synthetic_eval_images": 4, "data.synthetic_hw": [64, 128],
        "data.num_workers": 0,
        "search.pretrain_epochs": 1, "search.search_epochs": 2, "search.iters_per_epoch": 2,
        "search.pretrain_batch_size": 4, "search.search_batch_size": 4,
        "search.pretrain_crop_hw": [64, 64], "search.search_crop_hw": [64, 64], "search.base_scale": 1.0,
        "search.latency_input_hw": list(HW), "search.latency_table": str(lut_path), "search.eval_max_images": 0,
        **extra,
    }


def _phase(sc, world: int, n_images: int, batch: int, crop_hw, lr: float, weights):
    """(iterations, OHEM criterion, SGD, its schedule) of one phase of the reference search, as the driver sets
    them up: OHEM's minimum kept per rank, on the rank's share of the batch."""
    iters = iterations_per_epoch(sc.iters_per_epoch, sc.min_iters_per_epoch, n_images, batch)
    crit = OhemCrossEntropy(ohem_min_kept(batch // world, crop_hw, loss_stride=8), sc.ohem_thresh)
    opt = torch.optim.SGD(weights, lr=lr, momentum=sc.momentum, weight_decay=sc.weight_decay)
    return iters, crit, opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=sc.lr_decay_per_epoch)


def _on_each_rank(net: Supernet, gen: torch.Generator, params: list[torch.nn.Parameter], world: int,
                  loss_of: Callable[[int], float]) -> float:
    """Run ``loss_of(rank)`` (a backward into ``params``) as each of ``world`` ranks would: from the same
    generator state and starting buffers; leave the ranks' mean gradient in ``params`` (summed in rank order
    and divided, as the all-reduce), rank 0's buffers and the generator where every rank leaves it.

    Returns:
        The ranks' mean loss.
    """
    gen_state = gen.get_state()
    start = [b.clone() for b in net.buffers()]
    grads: dict[int, list[torch.Tensor | None]] = {}
    losses: dict[int, float] = {}
    for r in reversed(range(world)):  # rank 0 last: its running statistics are the ones kept
        gen.set_state(gen_state)
        for b, s in zip(net.buffers(), start):
            b.copy_(s)
        for p in params:
            p.grad = None
        losses[r] = loss_of(r)
        grads[r] = [p.grad for p in params]
    for i, p in enumerate(params):
        per_rank = [grads[r][i] for r in range(world)]
        assert all((g is None) == (per_rank[0] is None) for g in per_rank), "ranks left different grads None"
        if per_rank[0] is not None:
            total = per_rank[0]
            for g in per_rank[1:]:
                total = total + g
            p.grad = total / world if world > 1 else total
    return sum(losses[r] for r in range(world)) / world if world > 1 else losses[0]


def _reference(cfg: RunConfig, world: int) -> dict[str, Any]:
    """One process computing what ``world`` ranks compute (module docstring); the search's own steps for
    ``world`` = 1. Returns the final state dict, the initial α/β/γ, λ, derived architectures, per-epoch rows."""
    sc = cfg.search
    lut = load_lut(sc.latency_table)
    path = train_path(sc.path_sampling)
    seed_everything(sc.seed)  # as start_run
    data = search_data(cfg)
    seed_everything(sc.seed)
    net = build_supernet(cfg.model, data.num_classes)
    init_weights_(net)
    net.train()
    objective = driver._objective(cfg, net, lut, data.num_classes)
    weights, arch = net.weight_parameters(), net.arch_parameters()
    arch_start = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("arch.")}

    def passes(images: torch.Tensor, labels: torch.Tensor, crit: OhemCrossEntropy, which: tuple,
               inputs: list[torch.nn.Parameter], gen: torch.Generator) -> Callable[[int], float]:
        def loss_of(r: int) -> float:
            x, y = rank_slice(images, DistInfo(r, world)), rank_slice(labels, DistInfo(r, world))
            return supernet_loss_backward(net, x, y, crit, which, inputs=inputs, generator=gen, path=path)

        return loss_of

    rows: list[dict[str, Any]] = []
    # ---- pretraining (§3.2) ----
    iters, crit, opt, sched = _phase(sc, world, len(data.pretrain), sc.pretrain_batch_size, sc.pretrain_crop_hw,
                                     sc.pretrain_lr, weights)
    for epoch in range(sc.pretrain_epochs):
        seed = epoch_seed(sc.seed, "pretrain", epoch)
        seed_everything(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        total = 0.0
        for x, y in epoch_loader(data.pretrain, data.weight_half, sc.pretrain_batch_size, iters, seed + 2, 0):
            net.zero_grad(set_to_none=True)
            total += _on_each_rank(net, gen, weights, world, passes(x, y, crit, PRETRAIN_PASSES, weights, gen))
            torch.nn.utils.clip_grad_norm_(weights, sc.grad_clip_norm)
            opt.step()
        rows.append({"phase": "pretrain", "epoch": epoch + 1, "loss_weights": total / iters})
        sched.step()
    # ---- search (§3.2-3.5) ----
    iters, crit, w_opt, sched = _phase(sc, world, len(data.search), sc.search_batch_size, sc.search_crop_hw,
                                       sc.search_lr, weights)
    a_opts = [torch.optim.Adam(net.arch_parameters(k), lr=sc.arch_lr, betas=tuple(sc.arch_betas),
                               weight_decay=sc.arch_weight_decay) for k in range(len(ROLES))]
    lam = sc.latency_lambda_init
    derived: dict[str, Any] = {}
    for epoch in range(sc.search_epochs):
        seed = epoch_seed(sc.seed, "search", epoch)
        seed_everything(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        loaders = [epoch_loader(data.search, half, sc.search_batch_size, iters, seed + 2 + i, 0)
                   for i, half in enumerate((data.weight_half, data.arch_half))]
        sums = {"loss_arch": 0.0, "loss_weights": 0.0}
        for (wx, wy), (ax, ay) in zip(*loaders):
            for o in a_opts:  # architecture step: the passes' mean gradient plus the (rank-free) latency term
                o.zero_grad(set_to_none=True)
            sums["loss_arch"] += _on_each_rank(net, gen, arch, world, passes(ax, ay, crit, SEARCH_PASSES, arch, gen))
            lat, _ = objective.latency(gen)
            (lam * objective.scale * lat).backward(inputs=net.arch_parameters(objective.latency.arch_idx))
            for o in a_opts:
                o.step()
            net.zero_grad(set_to_none=True)  # weight step
            sums["loss_weights"] += _on_each_rank(net, gen, weights, world,
                                                  passes(wx, wy, crit, SEARCH_PASSES, weights, gen))
            torch.nn.utils.clip_grad_norm_(weights, sc.grad_clip_norm)
            w_opt.step()
        sched.step()
        val = DataLoader(data.val, sc.search_batch_size, shuffle=False)
        miou = {role: {h: cm.compute()["miou"] for h, cm in
                       evaluate_heads(net, val, k, EVAL_WIDTHS[k], CPU, eval_path(path)).items()}
                for k, role in enumerate(ROLES)}
        derived = derive_networks(net, cfg, lut, data.num_classes, pair_miou(miou))
        fps = [1000.0 / ms for ms in derived["student"].candidates_ms.values() if ms is not None]
        lam_next = adapt_lambda(lam, fps or [1000.0 / derived["student"].latency_ms], objective.window)
        rows.append({"phase": "search", "epoch": epoch + 1, "lambda": lam, "lambda_next": lam_next,
                     **{k: v / iters for k, v in sums.items()},
                     **{f"miou_{r}_{h}": v for r in ROLES for h, v in miou[r].items()}})
        lam = lam_next
    return {"model": net.state_dict(), "arch_start": arch_start, "lambda": lam, "derived": {r: derived[r].arch for r in ROLES}, "rows": rows}


def _compare_rows(got: list[dict[str, Any]], ref: list[dict[str, Any]], *, exact: bool) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        for k, v in r.items():
            if isinstance(v, str) or exact or k.startswith("lambda"):
                assert g[k] == v, (r["phase"], r["epoch"], k)
            elif k.startswith("miou"):
                assert g[k] == pytest.approx(v, abs=1e-3), (r["phase"], r["epoch"], k)
            else:
                assert g[k] == pytest.approx(v, rel=1e-5), (r["phase"], r["epoch"], k)


def test_rank_slices_and_shares_partition_the_batch_and_the_images() -> None:
    batch = torch.arange(12).view(4, 3)
    parts = [rank_slice(batch, DistInfo(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), batch) and parts[0].shape == (2, 3)
    assert rank_slice(batch, DistInfo()) is batch  # one process: the batch itself, untouched
    images = list(range(5))
    shares = [list(rank_share(images, DistInfo(r, 2))) for r in range(2)]  # type: ignore[arg-type]
    assert sorted(shares[0] + shares[1]) == images and shares == [[0, 2, 4], [1, 3]]
    cfg = load_config("smoke", {"search.pretrain_batch_size": 3})
    check_batch_split(cfg, DistInfo(0, 1))
    with pytest.raises(ValueError, match="pretrain_batch_size 3 is the global batch.*2 processes"):
        check_batch_split(cfg, DistInfo(0, 2))


@pytest.mark.slow
def test_the_reference_with_one_slice_is_the_search(tmp_path: Path, one_thread) -> None:
    """The emulation below is the search itself when there is one rank: bit for bit."""
    lut_path = fake_lut().save(tmp_path / "lut.json")
    cfg = load_config("smoke", _overrides(tmp_path / "out", lut_path))
    result = run_search(cfg, start_run(cfg, "01_search", seed=cfg.search.seed), progress=False)
    ref = _reference(cfg, world=1)
    ckpt = load_torch(cfg.output_dir / "01_search" / "checkpoints" / "search.pt")
    assert ckpt["model"].keys() == ref["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(ckpt["model"][k], v), k
    assert ckpt["lambda"] == ref["lambda"]
    assert result.teacher == ref["derived"]["teacher"] and result.student == ref["derived"]["student"]
    _compare_rows(result.history, ref["rows"], exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("path_sampling", [False, True], ids=["mix", "sampled"])
def test_torchrun_two_processes_search_what_one_process_computes(tmp_path: Path, one_thread,
                                                                 path_sampling: bool) -> None:
    # sampled paths: every rank must draw the same operators and leave the same gradients None
    lut_path = fake_lut().save(tmp_path / "lut.json")
    overrides = _overrides(tmp_path / "outputs", lut_path, **{"search.path_sampling": path_sampling})
    stdout, writes = _torchrun(tmp_path, "01_search", overrides)
    cfg = load_config("smoke", overrides)
    ref = _reference(cfg, world=WORLD)
    out = cfg.output_dir / "01_search"

    # weights, BN buffers (rank 0's) and α/β/γ after the search: rank 0's checkpoint = the emulating process
    ckpt = load_torch(out / "checkpoints" / "search.pt")
    assert ckpt["epoch"] == cfg.search.search_epochs and ckpt["model"].keys() == ref["model"].keys()
    arch_keys = [k for k in ref["model"] if k.startswith("arch.")]
    assert len(arch_keys) == 16  # α, β, γ of both indices: compared like every other tensor
    for k, v in ref["model"].items():
        torch.testing.assert_close(ckpt["model"][k], v, rtol=1e-5, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")
    moved = max(float((ref["model"][k] - ref["arch_start"][k]).abs().max()) for k in arch_keys)
    assert moved > 1e-4, "the search did not move α/β/γ: the comparison would not test the arch step"
    assert ckpt["lambda"] == ref["lambda"]

    # the derived networks and the history (losses of the global batch, λ, mIoU summed over the ranks' shares)
    for role in ROLES:
        assert Architecture.from_json(out / f"arch_{role}.json") == ref["derived"][role], role
    history = json.loads((out / "history.json").read_text())
    _compare_rows(history, ref["rows"], exact=False)
    params = json.loads((out / "arch_params.json").read_text())
    for role, k in (("teacher", 0), ("student", 1)):
        for name, value in params[role].items():
            if name.startswith(("alpha", "beta", "ratio")):
                torch.testing.assert_close(torch.tensor(value), ref["model"][f"arch.{name}"], rtol=1e-5, atol=1e-7)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lambda_final"] == ref["lambda"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"

    # rank 0 alone writes; it writes every artefact; the summary line is printed once
    assert not writes.get("1"), f"rank 1 wrote into the output folder: {writes.get('1')}"
    assert not writes.get("agent"), f"the torchrun agent wrote: {writes.get('agent')}"
    written = {Path(p).name for _, p in writes.get("0", [])}
    for name in ("arch_teacher.json", "arch_student.json", "arch_params.json", "history.json", "metrics.json",
                 "search.pt", "manifest.json"):
        assert name in written, f"rank 0 did not write {name} (wrote {sorted(written)})"
    assert stdout.count("01_search: student") == 1 and f"({WORLD} processes)" in stdout
