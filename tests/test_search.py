"""Architecture search (spec §3, §4): data split, latency objective, λ rule, update steps, derivation, resume."""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path

import pytest
import torch

from fasterseg_core.config import load_config
from fasterseg_core.latency.cache import load_lut
from fasterseg_core.latency.lut import LatencyTable, lut_entries
from fasterseg_core.lifecycle import start_run
from fasterseg_core.losses import OhemCrossEntropy, ohem_min_kept, sum_over_heads
from fasterseg_core.machine import seed_everything
from fasterseg_core.models.architecture import Architecture
from fasterseg_core.models.network import build_network, init_weights_
from fasterseg_core.models.supernet import Supernet, build_supernet
from fasterseg_core.search import driver as search_mod
from fasterseg_core.search.data import check_supernet_input, iterations_per_epoch, split_search_data
from fasterseg_core.search.derivation import derive_role
from fasterseg_core.search.objective import (
    SupernetLatency,
    adapt_lambda,
    published_student_ms,
    target_fps_window,
)
from fasterseg_core.search.steps import SEARCH_PASSES, arch_step, weight_step
from fasterseg_core.stages import run_search
from fasterseg_core.storage import load_torch

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
AUTHORS_LUT = REFERENCE / "fasterseg_latency_lookup_table.json"
HW = (64, 128)  # latency-table resolution of the tiny search
TINY = {"num_layers": 6, "base_channels": 6}
MACS_PER_OP = {
    "skip": 1 / 9,
    "conv": 1.0,
    "conv_downup": 0.25,
    "conv_2x": 2.0,
    "conv_2x_downup": 0.5,
}  # F = 6: the smallest base the slimmable rounding keeps exact


def fake_lut(
    hw=HW, *, scale: float = 1.0, value: float | None = None, flops: bool = False, num_classes: int = 19
) -> LatencyTable:
    """A complete table for supernets of base 6 and networks of base 12 with reproducible made-up values:
    pseudo-random per key, one constant ``value``, or (``flops``) proportional to C_in·C_out·h·w."""
    entries = {}
    for base in (6, 12):
        for e in lut_entries(hw, base_channels=base, num_classes=num_classes):
            if value is not None:
                v = value
            elif flops:  # multiply-adds of the op (3×3 convs; zoomed ones at a quarter of the pixels)
                _, c_in, h, w = e.input_shape
                c_out = e.spec[2] if e.kind in ("op", "convnorm") else e.spec[-1]
                v = c_in * c_out * h * w * 1e-6 * (MACS_PER_OP.get(e.spec[0], 1.0) if e.kind == "op" else 1.0)
            else:
                v = 0.05 + (zlib.crc32(e.key.encode()) % 1000) / 1000
            entries[e.key] = scale * v
    return LatencyTable(entries=entries, input_hw=tuple(hw), hardware_tag="fake", backend="none")


@pytest.fixture
def tiny_net() -> Supernet:
    torch.manual_seed(0)
    return Supernet(19, **TINY)


def _batch(seed: int, n: int = 2, hw: tuple[int, int] = (64, 64)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 19, (n, *hw), generator=g)
    labels[:, :4] = 255
    return torch.randn(n, 3, *hw, generator=g), labels


# ---- data split and schedule (§3.1, §3.4) -------------------------------------------------------------
def test_split_is_one_permutation_into_disjoint_halves() -> None:
    w, a = split_search_data(2975, seed=12345)
    assert (len(w), len(a)) == (1487, 1488)
    assert set(w).isdisjoint(a) and set(w) | set(a) == set(range(2975))
    assert (w, a) == split_search_data(2975, seed=12345)
    assert w != sorted(w)  # shuffled, not the file order


def test_schedule_numbers_match_the_paper() -> None:
    assert iterations_per_epoch(0, 400, 2975, 3) == 495
    assert iterations_per_epoch(0, 400, 2975, 2) == 743
    assert iterations_per_epoch(40, 400, 2975, 2) == 40
    assert ohem_min_kept(3, (256, 512), loss_stride=8) == 384 and ohem_min_kept(2, (224, 448), loss_stride=8) == 196


def test_supernet_input_sizes_are_checked() -> None:
    check_supernet_input((64, 128), "crop")
    with pytest.raises(ValueError, match=r"use e.g. \[160, 224\]"):
        check_supernet_input((150, 224), "search.search_crop_hw")


# ---- differentiable latency (§3.3) ----------------------------------------------------------------------
@pytest.mark.parametrize("faithful", [True, False])
def test_each_latency_term_moves_only_its_parameters(tiny_net: Supernet, faithful: bool) -> None:
    lat = SupernetLatency(tiny_net, fake_lut(), faithful_quirks=faithful)
    expected = {"alpha": "alpha", "beta": "beta", "gamma": "ratio"}
    for term, kind in expected.items():
        tiny_net.zero_grad(set_to_none=True)
        value = lat.latency(term, torch.Generator().manual_seed(0))
        assert value.item() > lat.stem_ms
        value.backward()
        for name, p in tiny_net.arch.items():
            gets = name.startswith(kind) and name.split("_")[1] == "1"
            if gets and faithful and name == "beta_1_1":
                # Quirk (§3.3): the accumulation reads the last cell's β row (β_2) for every scale.
                assert p.grad is None or p.grad.abs().sum() == 0, name
            elif gets:
                assert p.grad is not None and p.grad.abs().sum() > 0, (term, name)
            else:
                assert p.grad is None or p.grad.abs().sum() == 0, (term, name)
    total, terms = lat(torch.Generator().manual_seed(0))
    w = lat.weights
    assert total.item() == pytest.approx(w[0] * terms["alpha"] + w[1] * terms["beta"] + w[2] * terms["gamma"])


def test_faithful_latency_charges_zoomed_conv2x_as_conv2x(tiny_net: Supernet) -> None:
    lut = fake_lut()
    poisoned = copy.deepcopy(lut)
    for key in poisoned.entries:
        if key.startswith("BasicResidual_downup_2x"):
            poisoned.entries[key] = 1e6
    for faithful, same in ((True, True), (False, False)):
        a = SupernetLatency(tiny_net, lut, faithful_quirks=faithful).latency("alpha").item()
        b = SupernetLatency(tiny_net, poisoned, faithful_quirks=faithful).latency("alpha").item()
        assert (a == b) is same


def test_latency_accumulation_by_hand() -> None:
    """L = 4, every table entry 1 ms, uniform α/β, full widths: the §3.3 rules worked out by hand.

    Stem S = 3 entries = 3 ms; every mixed op costs 1. Faithful (down charged after the cell's out, this
    layer's values): T8 = S+4, T16 = S+5.5, T32 = S+6.625 → 3S + 16.125. Corrected (each path = stem + 4
    cells): 3S + 12.
    """
    torch.manual_seed(0)
    net = Supernet(19, num_layers=4, base_channels=6)
    lut = fake_lut(value=1.0)
    for faithful, expected in ((True, 9 + 16.125), (False, 9 + 12.0)):
        got = SupernetLatency(net, lut, faithful_quirks=faithful).latency("alpha").item()
        assert got == pytest.approx(expected, rel=1e-6), faithful


@pytest.mark.skipif(not AUTHORS_LUT.exists(), reason="needs ../shared/reference")
def test_authors_table_covers_the_supernet_and_gives_the_paper_window() -> None:
    lut = load_lut(AUTHORS_LUT)
    assert published_student_ms(lut, 19) == pytest.approx(6.414, abs=1e-3)
    low, high = target_fps_window(lut, 19, rel=0.06)
    assert (low, high) == pytest.approx((1000 / 6.414 * 0.94, 1000 / 6.414 * 1.06), rel=1e-4)
    assert target_fps_window(lut, 19, explicit=(155, 175)) == (155.0, 175.0)
    torch.manual_seed(0)
    net = Supernet(19, num_layers=4)  # F = 12: every key the paper's supernet needs, at every scale
    lat = SupernetLatency(net, lut)  # looks every entry up (check_table) or raises KeyError
    assert 0 < lat.latency("alpha").item() < 1000


# ---- λ (§3.3) -------------------------------------------------------------------------------------------
def test_lambda_rule() -> None:
    window = (100.0, 120.0)
    assert adapt_lambda(0.01, [130.0, 90.0], window) == 0.005  # any too fast: halve (checked first)
    assert adapt_lambda(0.01, [110.0, 90.0], window) == 0.02  # one too slow: double
    assert adapt_lambda(0.01, [100.5, 119.0], window) == 0.01  # inside: keep
    assert adapt_lambda(0.01, [], window) == 0.01


def test_lambda_adapts_on_tables_where_the_student_is_too_slow_or_too_fast(tiny_net: Supernet) -> None:
    """One explicit window; the same student derived on a cheap table (too fast) and a slow one (too slow)."""
    cfg = load_config("smoke", {"model.num_layers": 6, "model.base_channels": 6})
    miou = {"02": 0.1, "12": 0.2}
    fps = {}
    for name, scale in (("cheap", 0.1), ("slow", 10.0)):
        d = derive_role(tiny_net.arch_state(1), "student", cfg, fake_lut(scale=scale), 19, miou)
        fps[name] = [1000 / ms for ms in d.candidates_ms.values() if ms is not None]
        assert fps[name]
    ref = max(fps["cheap"] + fps["slow"])
    window = target_fps_window(fake_lut(), 19, explicit=(ref / 10, ref / 2))
    assert adapt_lambda(0.01, fps["cheap"], window) == 0.005
    assert adapt_lambda(0.01, fps["slow"], window) == 0.02


# ---- the two update steps (§3.4) ------------------------------------------------------------------------
def test_arch_step_moves_only_architecture_and_weight_step_does_not_leak(tiny_net: Supernet) -> None:
    torch.set_num_threads(1)
    net = tiny_net.train()
    crit = OhemCrossEntropy(ohem_min_kept(2, (64, 64), loss_stride=8))
    weights_before = [p.detach().clone() for p in net.weight_parameters()]
    arch_before = {n: p.detach().clone() for n, p in net.arch.items()}
    opts = [torch.optim.Adam(net.arch_parameters(k), lr=3e-4, betas=(0.5, 0.999)) for k in (0, 1)]
    lat = SupernetLatency(net, fake_lut())
    x, y = _batch(1)
    out = arch_step(net, x, y, crit, opts, lat, 0.01, generator=torch.Generator().manual_seed(0))
    assert out["loss"] > 0 and out["latency"] > 0
    # the architecture gradient flows: every used α/β/γ moved (the teacher has no width logits to move)
    for name, p in net.arch.items():
        moved = not torch.equal(p, arch_before[name])
        assert moved == (name not in {"ratio_0_0", "ratio_0_1", "ratio_0_2"}), name
    # ... and no weight changed or holds a gradient
    assert all(torch.equal(a, b) for a, b in zip(weights_before, net.weight_parameters()))
    assert all(p.grad is None for p in net.weight_parameters())

    # Weight step: stale gradients on every parameter (what the arch step left before the May-2021 fix)
    # must not change the update: compare with a copy that starts clean.
    clean = copy.deepcopy(net)
    for p in net.parameters():
        p.grad = torch.full_like(p, 3.0)
    xw, yw = _batch(2)
    results = []
    for model in (net, clean):
        opt = torch.optim.SGD(model.weight_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        loss = weight_step(model, xw, yw, crit, opt, SEARCH_PASSES, clip_norm=5.0,
                           generator=torch.Generator().manual_seed(3))
        results.append(loss)
    assert results[0] == results[1]
    for a, b in zip(net.parameters(), clean.parameters()):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in net.arch_parameters())  # the weight step leaves α/β/γ alone


def test_sampled_path_steps_train_alpha_beta_and_only_the_sampled_operators(tiny_net: Supernet) -> None:
    """search.path_sampling: the arch step still moves α/β of both indices, and the weight step changes
    only the operators some pass ran (the others keep grad None: no update, no weight decay)."""
    torch.set_num_threads(1)
    net = tiny_net.train()
    crit = OhemCrossEntropy(ohem_min_kept(2, (64, 64), loss_stride=8))
    arch_before = {n: p.detach().clone() for n, p in net.arch.items()}
    opts = [torch.optim.Adam(net.arch_parameters(k), lr=3e-4, betas=(0.5, 0.999)) for k in (0, 1)]
    x, y = _batch(1)
    arch_step(net, x, y, crit, opts, SupernetLatency(net, fake_lut()), 0.01,
              generator=torch.Generator().manual_seed(0), path="sample")
    for k in (0, 1):
        assert not torch.equal(net.arch[f"alpha_{k}_0"], arch_before[f"alpha_{k}_0"])
        assert not torch.equal(net.arch[f"beta_{k}_1"], arch_before[f"beta_{k}_1"])
    assert all(p.grad is None for p in net.weight_parameters())

    ops = [op for _, cell in net.cell_slots() for m in (cell.op, cell.down) if m is not None for op in m.ops]
    before = [[p.detach().clone() for p in op.parameters()] for op in ops]
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    weight_step(net, *_batch(2), crit, opt, SEARCH_PASSES, clip_norm=5.0,
                generator=torch.Generator().manual_seed(3), path="sample")
    changed = [
        any(not torch.equal(a, b) for a, b in zip(old, op.parameters())) for old, op in zip(before, ops)
    ]
    ran = [any(p.grad is not None for p in op.parameters()) for op in ops]
    assert changed == ran and 0 < sum(changed) < len(ops) / 2  # four passes, one operator per cell each


def test_derived_networks_build_and_train(tiny_net: Supernet) -> None:
    torch.set_num_threads(1)
    cfg = load_config("smoke", {"model.num_layers": 6, "model.base_channels": 6})
    with torch.no_grad():  # a searched-looking state: some α rows decided
        for p in tiny_net.arch_parameters():
            p.normal_(0, 1, generator=torch.Generator().manual_seed(p.numel()))
    lut = fake_lut()
    for role in ("student", "teacher"):
        d = derive_role(
            tiny_net.arch_state(int(role == "student")), role, cfg, lut, 19, {"02": 0.1, "12": 0.2}
        )
        assert d.latency_ms > 0 and d.arch.lasts[0] == 2
        net = build_network(Architecture.from_json(d.arch.to_json()), 19)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x, y = _batch(5)
        crit = OhemCrossEntropy(ohem_min_kept(2, (64, 64), loss_stride=8) * 64)
        losses = []
        for _ in range(2):
            opt.zero_grad()
            out = net(x)
            loss = sum_over_heads(crit, [out["out"], *out["aux"]], y, weights=(1, 0.2, 0.2))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert out["out"].shape == (2, 19, 64, 64) and all(torch.isfinite(torch.tensor(losses)))


# ---- the whole stage: artefacts and resume (§3.5) -------------------------------------------------------
def _tiny_cfg(root: Path, lut_path: Path):
    return load_config("smoke", _tiny_overrides(root, lut_path))


def _tiny_overrides(root: Path, lut_path: Path) -> dict:
    return {
        "output_root": str(root), "model.num_layers": 6, "model.base_channels": 6,
        "data.synthetic_train_images": 8, "data.synthetic_eval_images": 2, "data.synthetic_hw": [64, 128],
        "search.pretrain_epochs": 2, "search.search_epochs": 2, "search.iters_per_epoch": 1,
        "search.pretrain_crop_hw": [64, 64], "search.search_crop_hw": [64, 64], "search.base_scale": 1.0,
        "search.latency_input_hw": list(HW), "search.latency_table": str(lut_path),
    }


def test_a_table_that_does_not_fit_fails_before_training(tmp_path: Path) -> None:
    lut_path = fake_lut(num_classes=7).save(tmp_path / "lut.json")  # heads for 7 classes, the data has 19
    cfg = _tiny_cfg(tmp_path, lut_path)
    with pytest.raises(ValueError, match="does not fit this search.*19 classes"):
        run_search(cfg, start_run(cfg, "01_search"), progress=False)
    assert not (tmp_path / "smoke" / "01_search" / "checkpoints" / "pretrain.pt").exists()


def test_search_with_path_sampling_runs_end_to_end(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    lut_path = fake_lut().save(tmp_path / "lut.json")
    cfg = load_config("smoke", {**_tiny_overrides(tmp_path, lut_path), "search.path_sampling": True,
                                "search.pretrain_epochs": 1, "search.search_epochs": 1})
    result = run_search(cfg, start_run(cfg, "01_search"), progress=False)
    assert [h["phase"] for h in result.history] == ["pretrain", "search"]
    for role in ("teacher", "student"):
        net = build_network(getattr(result, role), 19).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, 64, 128))["out"].shape == (1, 19, 64, 128)


def test_searches_start_from_one_shared_pretraining(tmp_path: Path) -> None:
    """A study pretrains once (scoring both indices after each epoch) and searches from there with several
    seeds; search.pretrain_student trains the student's own stem and decoder, which §3.2 leaves untouched."""
    torch.set_num_threads(1)
    lut_path = fake_lut().save(tmp_path / "lut.json")
    over = {**_tiny_overrides(tmp_path / "shared", lut_path), "search.path_sampling": True,
            "search.pretrain_epochs": 1, "search.search_epochs": 1}
    decoders = {}
    for student in (False, True):
        cfg = load_config("smoke", over | {"search.pretrain_student": student})
        run = start_run(cfg, "01_search")
        history = search_mod.pretrain(cfg, run, "study-pretrain", progress=False)
        assert [h["phase"] for h in history] == ["pretrain"]
        assert {"miou_teacher_8s_32s", "miou_student_16s_32s"} <= set(history[0])
        decoders[student] = load_torch(run.dir / "checkpoints" / "pretrain.pt")["model"]
    seed_everything(cfg.search.seed)  # the supernet as the driver builds it, before any step
    reference = build_supernet(cfg.model, 19)
    init_weights_(reference)
    untrained = reference.state_dict()
    student_head = [k for k in untrained if k.startswith(("decoders.1.", "stems.1.")) and k.endswith("weight")]
    assert all(torch.equal(decoders[False][k], untrained[k]) for k in student_head)  # §3.2: index 0 only
    assert not all(torch.equal(decoders[True][k], untrained[k]) for k in student_head)
    shared = run.dir / "checkpoints" / "pretrain.pt"
    results = []
    for seed in (1, 2):
        cfg = load_config("smoke", over | {"output_root": str(tmp_path / f"search-{seed}"), "search.seed": seed,
                                           "search.pretrain_student": True})
        results.append(search_mod.search(cfg, start_run(cfg, "01_search"), load_lut(lut_path), progress=False,
                                         pretrained=shared))
    assert all(r.history[0] == history[0] for r in results)  # the shared pretraining's record, not a new one
    assert [h["phase"] for h in results[0].history] == ["pretrain", "search"]
    assert results[0].arch_history[-1] != results[1].arch_history[-1]  # other seeds, other steps
    assert shared.exists()  # a search never deletes the pretraining it shares
    cfg = load_config("smoke", over | {"output_root": str(tmp_path / "x"), "search.pretrain_epochs": 2})
    run = start_run(cfg, "01_search")
    with pytest.raises(ValueError, match="holds 1 pretraining epochs, not search.pretrain_epochs = 2"):
        search_mod.search(cfg, run, load_lut(lut_path), progress=False, pretrained=shared)
    assert not (run.dir / "checkpoints").exists()  # refused before anything was written


@pytest.mark.slow
def test_resume_after_interruptions_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    torch.set_num_threads(1)
    lut_path = fake_lut().save(tmp_path / "lut.json")
    ref_cfg = _tiny_cfg(tmp_path / "ref", lut_path)
    reference = run_search(ref_cfg, start_run(ref_cfg, "01_search"), progress=False)

    cfg = _tiny_cfg(tmp_path / "cut", lut_path)
    real_step = search_mod.weight_step
    calls = {"n": 0}

    def interrupted(*args, stop_at: int, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(*args, **kwargs)

    # weight_step calls per run, one iteration per epoch: pretraining epochs 1-2 → calls 1-2, search 3-4.
    # First run: stop at call 2 (in pretraining epoch 2). The rerun resumes pretraining epoch 2 (call 1),
    # searches epoch 1 (2) and stops at call 3, in search epoch 2 (after its architecture step).
    for stop_at in (2, 3):
        calls["n"] = 0
        monkeypatch.setattr(
            search_mod, "weight_step", lambda *a, s=stop_at, **k: interrupted(*a, stop_at=s, **k)
        )
        with pytest.raises(KeyboardInterrupt):
            run_search(cfg, start_run(cfg, "01_search"), progress=False)
    monkeypatch.setattr(search_mod, "weight_step", real_step)
    ckpt = load_torch(tmp_path / "cut" / "smoke" / "01_search" / "checkpoints" / "search.pt")
    assert ckpt["epoch"] == 1  # the second interruption hit search epoch 2
    assert ckpt["weight_optimizer"] is not None  # a search in progress keeps its momentum, to resume
    resumed = run_search(cfg, start_run(cfg, "01_search"), progress=False)

    a = load_torch(tmp_path / "ref" / "smoke" / "01_search" / "checkpoints" / "search.pt")
    b = load_torch(tmp_path / "cut" / "smoke" / "01_search" / "checkpoints" / "search.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["lambda"] == b["lambda"]
    assert a["weight_optimizer"] is None and b["weight_optimizer"] is None  # finished: no momentum on disk
    strip = ("seconds_train", "seconds_eval")
    assert [{k: v for k, v in h.items() if k not in strip} for h in reference.history] == [
        {k: v for k, v in h.items() if k not in strip} for h in resumed.history
    ]
    assert reference.student == resumed.student and reference.teacher == resumed.teacher

    # the artefacts of §3.5 are there, and the derived networks build and run
    folder = tmp_path / "cut" / "smoke" / "01_search"
    params = json.loads((folder / "arch_params.json").read_text())
    assert set(params) == {"teacher", "student"} and "latency12" in params["student"]
    history = json.loads((folder / "arch_history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for role in ("teacher", "student"):
        net = build_network(Architecture.from_json(folder / f"arch_{role}.json"), 19).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, 64, 128))["out"].shape == (1, 19, 64, 128)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["student"]["latency_ms"] > 0 and len(metrics["target_fps"]) == 2


@pytest.mark.parametrize("faithful", [True, False])
def test_minimising_the_latency_term_alone_makes_the_supernet_faster(faithful: bool) -> None:
    """The gradient points the right way: descending the latency loss alone lowers each term.

    On a table whose cost grows with C_in·C_out, the γ term (a straight-through Gumbel estimate, noisy per
    sample) must on average make the narrowest width the most likely one.
    """
    torch.manual_seed(0)
    net = Supernet(19, **TINY)
    lat = SupernetLatency(net, fake_lut(flops=True), faithful_quirks=faithful, weights=(1.0, 1.0, 1.0))
    opt = torch.optim.SGD(net.arch_parameters(1), lr=0.5)
    first = {t: lat.latency(t).item() for t in ("alpha", "beta")}
    for step in range(60):
        opt.zero_grad()
        lat(torch.Generator().manual_seed(step))[0].backward()
        opt.step()
    for t, before in first.items():
        assert lat.latency(t).item() < before, t
    narrowest = torch.cat([net.arch[f"ratio_1_{s}"].argmax(-1) == 0 for s in range(3)])
    assert narrowest.float().mean() > 0.8
