"""Derivation of discrete architectures from searched α/β/γ (spec §4, §6)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fasterseg_core.models.architecture import Architecture
from fasterseg_core.models.derive import (
    DerivationError,
    branch_objective,
    choose_lasts,
    derive_architecture,
    derive_candidates,
    load_raw_arch_json,
)
from fasterseg_core.models.ops import OP_NAMES, channels

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
ROLES = ("teacher", "student")
L = 16


def _reference(role: str) -> tuple[dict, dict]:
    path = REFERENCE / f"fasterseg_arch_{role}.json"
    if not path.exists():
        pytest.skip(f"reference file {path} not available")
    return json.loads(path.read_text()), load_raw_arch_json(path)


# ---- the published files ------------------------------------------------------------------------
@pytest.mark.parametrize("faithful", [True, False])
@pytest.mark.parametrize("role", ROLES)
def test_candidates_match_reference(role: str, faithful: bool) -> None:
    ref, raw = _reference(role)
    candidates = derive_candidates(raw, role, faithful_quirks=faithful)
    assert sorted(candidates) == [0, 1, 2]
    for e, branch in candidates.items():
        want = ref["candidate_branches"][str(e)]
        assert want["end_scale"] == branch.end_stride
        assert list(branch.ops) == want["op_names"]
        assert [OP_NAMES.index(o) for o in branch.ops] == want["ops"]
        assert list(branch.path) == want["path"]
        assert [8 * 2**p for p in branch.path] == want["input_stride_per_cell"]
        assert list(branch.downs) == want["downs"]
        assert list(branch.chi) == [int(c) for c in want["widths_in_twelfths"]]
        assert [c / 12 for c in branch.chi] == pytest.approx(want["widths"], abs=1e-12)


@pytest.mark.parametrize("role", ROLES)
def test_architecture_matches_built_network(role: str) -> None:
    """Every cell's op, strides and channel counts equal the network the authors' code built."""
    ref, raw = _reference(role)
    arch = derive_architecture(raw, role)
    built = ref["built_network"]
    assert list(arch.lasts) == built["lasts"] == ref["branch_choice"]["lasts"]
    stem_chi, head_chi = (round(12 * w) for w in ref["derivation_settings"]["stem_head_width"])
    assert (arch.stem_chi, arch.head_chi) == (stem_chi, head_chi)
    assert len(arch.branches) == len(built["branches"])
    for branch, want in zip(arch.branches, built["branches"]):
        assert branch.end_stride == want["end_stride"]
        assert len(branch) == want["num_cells"] == len(want["cells"])
        for layer, cell in enumerate(want["cells"]):
            s_in = 8 * 2 ** branch.path[layer]
            down = branch.downs[layer]
            c_in = channels(8, arch.stem_chi) if layer == 0 else channels(s_in, branch.chi[layer - 1])
            last = layer == len(branch) - 1
            c_out = channels(s_in, arch.head_chi) if last else channels(s_in * (1 + down), branch.chi[layer])
            got = {
                "layer": layer, "op": branch.ops[layer], "op_index": OP_NAMES.index(branch.ops[layer]),
                "C_in": c_in, "C_out": c_out, "stride": 1 + down, "in_stride": s_in,
                "out_stride": s_in * (1 + down),
            }
            assert got == {k: cell[k] for k in got}


@pytest.mark.parametrize("role", ROLES)
def test_derived_equals_published(role: str) -> None:
    _, raw = _reference(role)
    from fasterseg_core.models.published import published_architecture

    published = published_architecture(role)
    for faithful in (True, False):
        arch = derive_architecture(raw, role, faithful_quirks=faithful)
        assert arch == published
        assert Architecture.from_json(arch.to_json()) == published


@pytest.mark.parametrize("role", ROLES)
def test_branch_choice_objectives(role: str) -> None:
    ref, raw = _reference(role)
    choice = ref["branch_choice"]
    assert branch_objective(raw["mIoU02"], raw["latency02"]) == pytest.approx(
        choice["objective_02"], rel=1e-12
    )
    assert branch_objective(raw["mIoU12"], raw["latency12"]) == pytest.approx(
        choice["objective_12"], rel=1e-12
    )
    assert list(choose_lasts(raw)) == choice["lasts"]
    arch = derive_architecture(raw, role)
    assert arch.notes["objective_12"] == pytest.approx(choice["objective_12"], rel=1e-12)


def test_key_spellings_and_index_selection() -> None:
    """Keys without the index, and a dict holding both indices, give the same result."""
    _, student = _reference("student")
    _, teacher = _reference("teacher")
    plain = {k.replace("_1_", "_"): v for k, v in student.items()}
    assert derive_candidates(plain, "student") == derive_candidates(student, "student")
    both = {**student, **teacher}
    assert derive_architecture(both, "student") == derive_architecture(student, "student")
    assert derive_architecture(both, "teacher") == derive_architecture(teacher, "teacher")
    as_lists = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in student.items()}
    assert derive_architecture(as_lists, "student") == derive_architecture(student, "student")


def test_raw_inputs_are_not_mutated() -> None:
    _, raw = _reference("teacher")
    before = {k: v.clone() for k, v in raw.items() if isinstance(v, torch.Tensor)}
    derive_architecture(raw, "teacher")
    for k, v in before.items():
        assert torch.equal(raw[k], v), k


# ---- input validation ---------------------------------------------------------------------------
def _uniform(k: int = 1, n_w: int = 5) -> dict[str, torch.Tensor]:
    shapes = {
        "alpha_0": (L, 5), "alpha_1": (L - 1, 5), "alpha_2": (L - 2, 5), "beta_1": (L - 2, 2),
        "beta_2": (L - 3, 2), "ratio_0": (L - 1, n_w), "ratio_1": (L - 1, n_w), "ratio_2": (L - 2, n_w),
    }
    return {f"{n.split('_')[0]}_{k}_{n.split('_')[1]}": torch.zeros(s) for n, s in shapes.items()}


def test_bad_inputs_name_the_problem() -> None:
    params = _uniform()
    with pytest.raises(ValueError, match="role must be"):
        derive_candidates(params, "pupil")
    with pytest.raises(ValueError, match="no architecture tensors for role 'teacher'"):
        derive_candidates(params, "teacher")  # only index-1 tensors present
    broken = dict(params)
    del broken["beta_1_2"]
    with pytest.raises(ValueError, match="missing beta_1_2"):
        derive_candidates(broken, "student")
    broken = {**params, "alpha_1_1": torch.zeros(L, 5)}
    with pytest.raises(ValueError, match=r"alpha_1_1 has shape \(16, 5\), expected \(15, 5\)"):
        derive_candidates(broken, "student")
    with pytest.raises(ValueError, match="width columns"):
        derive_candidates(params, "student", width_choices_chi=(4, 12))
    with pytest.raises(ValueError, match="metrics"):
        derive_architecture(params, "student")


# ---- the rules of §4 on constructed parameters --------------------------------------------------
def _no_skip_params() -> dict[str, torch.Tensor]:
    """Student parameters whose best op is zoomed conv ×2 everywhere (no skip, no removal)."""
    p = _uniform()
    for s in range(3):
        p[f"alpha_1_{s}"][:] = torch.tensor([-5.0, 0.0, 0.0, 0.0, 1.0])
    return p


def test_paths_follow_beta() -> None:
    p = _no_skip_params()
    p["beta_1_1"][:, 0] = -3.0
    p["beta_1_2"][:, 0] = -3.0
    p["beta_1_1"][7, 0] = 3.0  # e=1: k = 1 + (argmax over rows 1..12, 0-based in that slice) = 7
    p["beta_1_1"][2, 0] = 2.0
    p["beta_1_2"][5, 0] = 3.0  # e=2: best pair i=2, j=5 (row 7 needs j >= 9) → downs at 3 and 7
    c = derive_candidates(p, "student")
    assert c[0].path == (0,) * L
    assert [t for t, d in enumerate(c[1].downs) if d] == [7]
    assert [t for t, d in enumerate(c[2].downs) if d] == [3, 7]
    assert all(len(b) == L and set(b.ops) == {"conv_2x_downup"} for b in c.values())


def test_widths_follow_ratio_rows() -> None:
    p = _no_skip_params()
    p["beta_1_1"][4, 0] = 1.0  # e=1 down at cell 4: cells 5.. read stride 16
    for s, (rows, offset) in enumerate(((L - 1, 0), (L - 1, 1), (L - 2, 2))):
        for r in range(rows):
            p[f"ratio_1_{s}"][r, (r + s) % 5] = 3.0  # a distinct pattern per scale
    b = derive_candidates(p, "student")[1]
    chi = (4, 6, 8, 10, 12)
    # widths[t] = output of cell t = the feature cell t+1 reads: ratio_0[t] at stride 8, ratio_1[t] at 16
    want = [chi[t % 5] if b.path[t + 1] == 0 else chi[(t + 1) % 5] for t in range(L - 1)]
    assert list(b.chi) == want


def test_teacher_never_skips_and_keeps_full_width() -> None:
    p = _uniform(k=0, n_w=1)
    for s in range(3):
        p[f"alpha_0_{s}"][:] = torch.tensor([5.0, 0.0, 1.0, 0.0, 0.0])  # skip best, zoomed conv second
    for b in derive_candidates(p, "teacher").values():
        assert len(b) == L and set(b.ops) == {"conv_downup"} and set(b.chi) == {12}


def test_skip_cells_removed_with_their_widths() -> None:
    """A removed cell t drops widths[t]; a removed last cell drops the last width (§4.4)."""
    p = _no_skip_params()
    for r in range(L - 1):
        p["ratio_1_0"][r, r % 5] = 3.0
    p["alpha_1_0"][7] = torch.tensor([4.0, 0.0, 0.0, 2.0, 0.0])  # cells 7 and 15 best op: skip
    p["alpha_1_0"][15] = torch.tensor([3.0, 0.0, 0.0, 2.0, 0.0])
    b = derive_candidates(p, "student")[0]
    chi = (4, 6, 8, 10, 12)
    widths = [chi[t % 5] for t in range(L - 1)]
    assert len(b) == L - 2
    assert list(b.chi) == widths[:7] + widths[8:14]  # widths[7] (cell 7) and widths[14] (last) dropped
    # at most 16 - min_len skip cells go; the rest take their second-best op
    for r in range(L):
        p["alpha_1_0"][r] = torch.tensor([4.0 + r / 100, 0.0, 2.0, 0.0, 0.0])
    b = derive_candidates(p, "student")[0]
    assert len(b) == round(L / 3) and set(b.ops) == {"conv_downup"}


def _stretch_params() -> dict[str, torch.Tensor]:
    """e=1 down at cell 8, e=2 downs at cells 3 and 11; cells 9-15 at stride 16 prefer skip for e=1.

    alpha_1 rows 8 and 9 (cells 9 and 10) tie for the lowest skip probability of that stretch.
    """
    p = _no_skip_params()
    p["beta_1_1"][:, 0] = -3.0
    p["beta_1_2"][:, 0] = -3.0
    p["beta_1_1"][8, 0] = 3.0
    p["beta_1_1"][2, 0] = 2.0
    p["beta_1_2"][9, 0] = 3.0
    p["alpha_1_1"][8] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    p["alpha_1_1"][9] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    p["alpha_1_1"][10:15] = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0])
    p["ratio_1_1"][9, 2] = 5.0  # output of cell 9: χ = 8
    p["ratio_1_1"][10, 3] = 5.0  # output of cell 10: χ = 10
    return p


def test_stretch_rule_stale_candidates_and_alpha_mutation() -> None:
    p = _stretch_params()
    faithful = derive_candidates(p, "student", faithful_quirks=True)
    corrected = derive_candidates(p, "student", faithful_quirks=False)
    # e=1: the whole stride-16 stretch (cells 9-15) is skip. The rule forbids skip on cell 10 (tie with
    # cell 9 → later cell), but the stale list still removes it: the faithful branch ends at stride 8.
    assert [t for t, d in enumerate(faithful[1].downs) if d] == []
    assert len(faithful[1]) == 9 and faithful[1].end_scale == 0
    assert corrected[1].path == (0,) * 9 + (1,) and corrected[1].ops[-1] == "conv"
    # e=2: faithful α still carries the forbid of cell 10 (in-place mutation), so only cell 9 is removed
    # (its width χ=8 goes, cell 10's χ=10 stays); corrected removes both skip cells.
    assert len(faithful[2]) == L - 1 and faithful[2].ops[9] == "conv"
    assert 10 in faithful[2].chi and 8 not in faithful[2].chi
    assert len(corrected[2]) == L - 2 and {8, 10}.isdisjoint(corrected[2].chi)
    metrics = {"mIoU02": 0.1, "mIoU12": 0.2, "latency02": 6.0, "latency12": 6.0}
    with pytest.raises(DerivationError, match="faithful_quirks=False"):
        derive_architecture(p, "student", metrics=metrics)
    arch = derive_architecture(p, "student", metrics=metrics, faithful_quirks=False)
    assert arch.lasts == (2, 1)


def test_beta_resoftmax_quirk() -> None:
    """Cumulative re-softmax of β (faithful) flips the best stride-32 path on close calls (§4.1)."""
    p = _no_skip_params()
    p["beta_1_1"][:, 0] = -20.0
    p["beta_1_2"][:, 0] = -20.0
    # pair A (i=5, j=8): logits 0 and 0.25; pair B (i=1, j=4): logits -1 and 4.75. After one softmax A's
    # product is larger (0.281 vs 0.267), after three (the faithful e=2 call) B's (0.258 vs 0.271).
    p["beta_1_1"][5, 0], p["beta_1_2"][8, 0] = 0.0, 0.25
    p["beta_1_1"][1, 0], p["beta_1_2"][4, 0] = -1.0, 4.75

    def sig(d: float) -> float:
        return 1 / (1 + math.exp(-d))

    assert sig(0) * sig(0.25) > sig(-1) * sig(4.75)
    faithful = derive_candidates(p, "student", faithful_quirks=True)[2]
    corrected = derive_candidates(p, "student", faithful_quirks=False)[2]
    assert [t for t, d in enumerate(corrected.downs) if d] == [6, 10]
    assert [t for t, d in enumerate(faithful.downs) if d] == [2, 6]


def test_branch_choice_rule() -> None:
    assert branch_objective(0.5, 8.3) == pytest.approx(0.5)
    assert branch_objective(0.5, 2 * 8.3) == pytest.approx(0.5 * 2**-0.07)
    m = {"mIoU02": 0.70, "latency02": 6.0, "mIoU12": 0.70, "latency12": 6.5}
    assert choose_lasts(m) == (2, 0)  # same accuracy, faster
    assert choose_lasts({**m, "latency12": 6.0}) == (2, 1)  # exact tie → [2, 1] (strict >)
    p = _no_skip_params()
    assert derive_architecture(p, "student", metrics=m).lasts == (2, 0)
    assert derive_architecture(p, "student", lasts=(2, 1)).lasts == (2, 1)
    with pytest.raises(ValueError, match="lasts must be"):
        derive_architecture(p, "student", lasts=(1, 2))
