"""The multi-resolution supernet (spec §2) and derivation from arbitrary α/β/γ (spec §4, §5)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fasterseg_core.config import ModelConfig
from fasterseg_core.models.architecture import Architecture
from fasterseg_core.models.derive import DerivationError, derive_architecture
from fasterseg_core.models.network import build_network
from fasterseg_core.models.supernet import HEAD_NAMES, WIDTH_MODES, Supernet, WidthRef, build_supernet

# A small supernet keeps the default suite fast: 8 layers, F = 6 (the smallest base whose channel counts
# the slimmable rounding reproduces exactly); the full-size one is tested under @slow.
SMALL = {"num_layers": 8, "base_channels": 6}
X_HW = (64, 128)  # smallest input whose stride-32 features can still be zoomed (2×4 → 1×2)
CASES = [(0, m) for m in ("max", "min", "random")] + [(1, m) for m in WIDTH_MODES]


@pytest.fixture(scope="module")
def net() -> Supernet:
    torch.manual_seed(0)
    return Supernet(19, **SMALL)


def _loss(out: dict) -> torch.Tensor:
    return sum(y.float().mean() for y in out["heads"].values())


@pytest.mark.parametrize("arch_idx,mode", CASES)
def test_forward_backward_reaches_arch_parameters(net: Supernet, arch_idx: int, mode: str) -> None:
    torch.set_num_threads(1)
    net.train()
    net.zero_grad(set_to_none=True)
    x = torch.randn(1, 3, *X_HW, generator=torch.Generator().manual_seed(1))
    out = net(x, arch_idx, mode, generator=torch.Generator().manual_seed(2))
    assert set(out["heads"]) == set(HEAD_NAMES)
    assert out["out"] is out["heads"]["8s_32s"] and len(out["aux"]) == 4
    for y in out["heads"].values():
        assert y.shape == (1, 19, X_HW[0] // 8, X_HW[1] // 8)  # training mode: 1/8 resolution
        assert torch.isfinite(y).all()
    _loss(out).backward()
    for name, p in net.arch.items():
        k = int(name.split("_")[1])
        gets_grad = k == arch_idx and (not name.startswith("ratio") or mode == "gumbel")
        if gets_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    stem_grads = [p.grad for p in net.stems[arch_idx].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in stem_grads)
    assert all(p.grad is None for p in net.stems[1 - arch_idx].parameters())


def test_eval_mode_upsamples_by_8(net: Supernet) -> None:
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.randn(1, 3, *X_HW), 1, "max")
    finally:
        net.train()
    assert all(y.shape == (1, 19, *X_HW) for y in out["heads"].values())


def test_teacher_has_no_width_logits(net: Supernet) -> None:
    with pytest.raises(ValueError, match="'gumbel' widths are for the student"):
        net(torch.randn(1, 3, *X_HW), 0, "gumbel")
    with pytest.raises(ValueError, match="width_mode must be one of"):
        net(torch.randn(1, 3, *X_HW), 1, "widest")


def test_parameter_groups_are_disjoint_and_complete(net: Supernet) -> None:
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert arch.isdisjoint(weights)
    assert arch | weights == {id(p) for p in net.parameters()}
    assert len(arch) == 16 and len(net.arch_parameters(1)) == 8
    L = SMALL["num_layers"]
    want = {
        "alpha_1_0": (L, 5),
        "alpha_1_1": (L - 1, 5),
        "alpha_1_2": (L - 2, 5),
        "beta_1_1": (L - 2, 2),
        "beta_1_2": (L - 3, 2),
        "ratio_1_0": (L - 1, 5),
        "ratio_1_1": (L - 1, 5),
        "ratio_1_2": (L - 2, 5),
    }
    assert {n: tuple(t.shape) for n, t in net.arch_state(1).items()} == want
    assert tuple(net.arch_state(0)["ratio_0_0"].shape) == (L - 1, 1)  # teacher: one width column
    assert all(
        torch.all(t == 1e-3) for t in Supernet(19, num_layers=4, base_channels=6).arch_state(1).values()
    )


def test_gumbel_widths_reproducible_with_generator(net: Supernet) -> None:
    def rows(seed: int) -> list[float]:
        sample = net.sample_widths(1, "gumbel", torch.Generator().manual_seed(seed))
        return [w.ratio for scale in sample for w in scale]

    assert rows(3) == rows(3)
    assert rows(3) != rows(4)
    sample = net.sample_widths(1, "gumbel", torch.Generator().manual_seed(3))
    gates = [w.gate for scale in sample for w in scale]
    assert all(g is not None and float(g.detach()) == 1.0 and g.requires_grad for g in gates)
    assert {w.ratio for scale in net.sample_widths(0, "min") for w in scale} == {4 / 12}


def test_gumbel_follows_width_logits(net: Supernet) -> None:
    """A strongly preferred width is (almost) always sampled."""
    state = net.arch_state(1)
    try:
        net.load_arch_state(
            {
                n: torch.tensor([[0.0, 0.0, 0.0, 12.0, 0.0]]).expand_as(t)
                for n, t in state.items()
                if n.startswith("ratio")
            }
        )
        sample = net.sample_widths(1, "gumbel", torch.Generator().manual_seed(0))
        assert {w.ratio for scale in sample for w in scale} == {10 / 12}
    finally:
        net.load_arch_state(state)


def _ops_with_grad(net: Supernet) -> list[list[int]]:
    """Per mixed op (``op`` and ``down`` of every cell): indices of the operators whose weights got a gradient."""
    used = []
    for _, cell in net.cell_slots():
        for mixed in (cell.op, cell.down):
            if mixed is not None:
                used.append(
                    [o for o, op in enumerate(mixed.ops) if any(p.grad is not None for p in op.parameters())]
                )
    return used


@pytest.mark.parametrize("arch_idx,mode", [(0, "max"), (1, "gumbel"), (1, "min")])
def test_sampled_path_runs_one_operator_per_cell_and_trains_alpha_and_beta(
    net: Supernet, arch_idx: int, mode: str
) -> None:
    """``path="sample"`` (search.path_sampling): one operator per cell, shared by its op and down, and one
    input per two-input cell; α and β still receive a gradient through the straight-through sample."""
    torch.set_num_threads(1)
    net.train()
    net.zero_grad(set_to_none=True)
    x = torch.randn(1, 3, *X_HW, generator=torch.Generator().manual_seed(1))
    out = net(x, arch_idx, mode, generator=torch.Generator().manual_seed(2), path="sample")
    assert all(y.shape == (1, 19, X_HW[0] // 8, X_HW[1] // 8) for y in out["heads"].values())
    _loss(out).backward()
    used = _ops_with_grad(net)
    # at most one operator each: none for a dead output (the input not taken by the next cell, not
    # computed) or the parameter-free identity skip of a stride-1 op
    assert all(len(ops) <= 1 for ops in used) and sum(map(len, used)) > 0, used
    both_live = 0
    for _, cell in net.cell_slots():  # a cell's op and down run the same sampled operator
        if cell.down is not None:
            ran = [
                [o for o, op in enumerate(m.ops) if op.conv1.weight.grad is not None]
                for m in (cell.op, cell.down)
            ]
            if ran[0] and ran[1]:  # both outputs live (and the op not the weight-free identity skip)
                both_live += 1
                assert ran[0] == ran[1], ran
    assert both_live > 0
    for name, p in net.arch.items():
        if int(name.split("_")[1]) == arch_idx and name.startswith(("alpha", "beta")):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # the stride-8 chain always reaches the heads, so each of its cells' α rows is trained
    assert (net.arch[f"alpha_{arch_idx}_0"].grad.abs().sum(-1) > 0).all()
    # different draws pick different operators; the same draw the same ones
    picks = []
    for seed in (2, 2, 3):
        net.zero_grad(set_to_none=True)
        _loss(net(x, arch_idx, mode, generator=torch.Generator().manual_seed(seed), path="sample")).backward()
        picks.append(_ops_with_grad(net))
    assert picks[0] == picks[1] != picks[2]


def test_argmax_path_runs_the_most_likely_operator_deterministically(net: Supernet) -> None:
    state = net.arch_state(1)
    try:
        preferred = {n: torch.zeros_like(t) for n, t in state.items() if n.startswith("alpha")}
        for t in preferred.values():
            t[:, 3] = 5.0  # conv_2x everywhere
        net.load_arch_state(preferred)
        net.train()
        net.zero_grad(set_to_none=True)
        x = torch.randn(1, 3, *X_HW)
        a = net(x, 1, "max", path="argmax")
        _loss(a).backward()
        used = _ops_with_grad(net)  # [] for a dead output
        assert all(ops in ([3], []) for ops in used), used
        assert used.count([3]) >= SMALL["num_layers"], used  # at least the stride-8 chain
        assert all(p.grad is None for n, p in net.arch.items() if n.startswith(("alpha", "beta")))
        with torch.no_grad():
            b = net(x, 1, "max", path="argmax")
        assert all(torch.equal(a["heads"][h], b["heads"][h]) for h in HEAD_NAMES)
        with pytest.raises(ValueError, match="path must be one of"):
            net(x, 1, "max", path="single")
    finally:
        net.load_arch_state(state)


def test_cell_slots_follow_the_width_table(net: Supernet) -> None:
    L = SMALL["num_layers"]
    slots = {(s.layer, s.scale): (s, cell) for s, cell in net.cell_slots()}
    assert len(slots) == sum(min(i, 2) + 1 for i in range(L))
    s, cell = slots[(0, 0)]
    assert (s.width_in, s.width_out, s.width_down) == (
        WidthRef("stem"),
        WidthRef("ratio", 0, 0),
        WidthRef("ratio", 1, 0),
    )
    s, cell = slots[(3, 1)]
    assert (s.width_in, s.width_out, s.width_down) == (
        WidthRef("ratio", 1, 2),
        WidthRef("ratio", 1, 3),
        WidthRef("ratio", 2, 2),
    )
    assert (s.alpha_row, s.beta_row, s.channels) == (2, 1, 16 * 6)
    assert (cell.op.c_in, cell.op.c_out, cell.down.c_in, cell.down.c_out, cell.down.stride) == (
        96,
        96,
        96,
        192,
        2,
    )
    s, cell = slots[(L - 1, 2)]
    assert s.width_out == WidthRef("head") and s.width_down is None and cell.down is None
    assert s.beta_row == L - 4  # rows of beta_2 are cells 3 … L-1
    assert slots[(1, 1)][0].beta_row is None and slots[(2, 2)][0].beta_row is None


def test_build_supernet_from_config() -> None:
    cfg = ModelConfig(num_layers=4, base_channels=6)
    net = build_supernet(cfg, num_classes=7)
    assert net.num_layers == 4 and net.decoders[1].heads["8s"].conv_1x1.out_channels == 7
    with pytest.raises(ValueError, match="base_channels multiple of 6"):
        Supernet(19, num_layers=4, base_channels=4)


def test_search_state_derives_to_buildable_network(net: Supernet) -> None:
    arch = derive_architecture(
        net.arch_state(1), "student", lasts=(2, 1), num_layers=SMALL["num_layers"], faithful_quirks=False
    )
    assert arch.lasts == (2, 1)
    model = build_network(arch, 19).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *X_HW))["out"].shape == (1, 19, *X_HW)


@pytest.mark.slow
def test_full_size_supernet_teacher_and_student() -> None:
    torch.set_num_threads(1)
    net = build_supernet(ModelConfig(), num_classes=19)
    conv_weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    # Users of the authors' search report a "251 M parameter" supernet (spec §12.2, issue #9/#56).
    assert round(conv_weights / 1e6) == 251
    x = torch.randn(1, 3, *X_HW)
    for arch_idx, mode in ((0, "max"), (1, "gumbel")):
        net.zero_grad(set_to_none=True)
        _loss(net(x, arch_idx, mode)).backward()
        for name, p in net.arch.items():
            if name.split("_")[1] == str(arch_idx) and (mode == "gumbel" or not name.startswith("ratio")):
                assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ---- property: any searched parameters give a buildable, serialisable network -------------------
@st.composite
def _arch_params(draw: st.DrawFn) -> tuple[str, dict, dict, bool]:
    role = draw(st.sampled_from(["teacher", "student"]))
    k, n_w, L = (0, 1, 16) if role == "teacher" else (1, 5, 16)
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([1e-3, 0.1, 1.0, 5.0]))
    skip_bias = draw(st.sampled_from([0.0, 1.0, 3.0]))  # push towards the skip-removal rules
    g = torch.Generator().manual_seed(seed)
    shapes = {
        f"alpha_{k}_0": (L, 5),
        f"alpha_{k}_1": (L - 1, 5),
        f"alpha_{k}_2": (L - 2, 5),
        f"beta_{k}_1": (L - 2, 2),
        f"beta_{k}_2": (L - 3, 2),
        f"ratio_{k}_0": (L - 1, n_w),
        f"ratio_{k}_1": (L - 1, n_w),
        f"ratio_{k}_2": (L - 2, n_w),
    }
    params = {n: spread * torch.randn(s, generator=g) for n, s in shapes.items()}
    for s in range(3):
        params[f"alpha_{k}_{s}"][:, 0] += skip_bias
    metrics = {
        "mIoU02": draw(st.floats(0.01, 0.9)),
        "mIoU12": draw(st.floats(0.01, 0.9)),
        "latency02": draw(st.floats(1.0, 20.0)),
        "latency12": draw(st.floats(1.0, 20.0)),
    }
    return role, params, metrics, draw(st.booleans())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_arch_params())
def test_random_parameters_derive_build_run_and_round_trip(case: tuple[str, dict, dict, bool]) -> None:
    torch.set_num_threads(1)
    role, params, metrics, faithful = case
    try:
        arch = derive_architecture(params, role, metrics=metrics, faithful_quirks=faithful)
    except DerivationError:
        assert faithful  # only the original's stale candidate list can lose a branch's end scale
        arch = derive_architecture(params, role, metrics=metrics, faithful_quirks=False)
    assert arch.lasts in ((2, 0), (2, 1)) and "skip" not in sum((b.ops for b in arch.branches), ())
    assert Architecture.from_json(arch.to_json()) == arch
    model = build_network(arch, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *X_HW))["out"]
    assert out.shape == (1, 5, *X_HW) and torch.isfinite(out).all()
