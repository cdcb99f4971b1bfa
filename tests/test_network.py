"""Fixed networks from an Architecture: published teacher/student, shapes, keys, counts, variants."""

from __future__ import annotations

import pytest
import torch
from conftest import load_reference

from fasterseg_core.latency.flops import count_complexity
from fasterseg_core.models import (
    OP_NAMES,
    Architecture,
    Branch,
    build_network,
    build_published,
    published_architecture,
)
from fasterseg_core.models.network import plan_cells

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_published_architecture_round_trips_and_matches_reference(role):
    arch = published_architecture(role)
    assert arch.role == role and arch.lasts == (2, 1)
    assert Architecture.from_json(arch.to_json()) == arch
    ref = load_reference(f"fasterseg_arch_{role}.json")
    assert list(arch.lasts) == ref["branch_choice"]["lasts"]
    for branch, end in zip(arch.branches, ref["branch_choice"]["lasts"]):
        cand = ref["candidate_branches"][str(end)]
        assert [OP_NAMES.index(o) for o in branch.ops] == cand["ops"]
        assert list(branch.path) == cand["path"]
        assert list(branch.chi) == [round(w) for w in cand["widths_in_twelfths"]]
    # every built cell: channels, stride and sharing as in the authors' built network
    built = {c["state_dict_prefix"]: c for b in ref["built_network"]["branches"] for c in b["cells"]}
    plans = {f"cells.{p.layer}-{b}": p for p in plan_cells(arch) for b in p.branches}
    assert set(plans) == set(built)
    for prefix, cell in built.items():
        p = plans[prefix]
        assert (p.op, p.c_in, p.c_out, p.stride) == (cell["op"], cell["C_in"], cell["C_out"], cell["stride"])
        assert list(p.branches) == cell["shared_by_branches"]


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_state_dict_keys_shapes_and_aliases_equal_the_authors(role):
    ref = load_reference(f"fasterseg_state_dict_{role}.json")
    net = build_published(role)
    sd = net.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(e["key"], e["shape"]) for e in ref["entries"]]
    assert [str(v.dtype).replace("torch.", "") for v in sd.values()] == [e["dtype"] for e in ref["entries"]]
    live = net.state_dict(keep_vars=True)
    first: dict[int, str] = {}
    ours = [None if first.setdefault(id(t), k) == k else first[id(t)] for k, t in live.items()]
    assert ours == [e["same_tensor_as"] for e in ref["entries"]]  # aliased keys are one tensor
    assert len(first) == ref["num_unique_tensors"]


@pytest.mark.parametrize(
    ("role", "total", "used"), [("student", 4_385_689, 3_421_875), ("teacher", 23_524_137, 22_115_203)]
)
def test_parameter_counts_equal_the_authors(role, total, used):
    with torch.device("meta"):  # counting needs shapes only
        net = build_published(role)
    assert sum(p.numel() for p in net.parameters()) == total
    c = count_complexity(net, (1, 3, 64, 128))
    assert (c.params, c.params_used) == (total, used)


def test_student_forward_train_and_eval():
    net = build_published("student")
    assert net.cells["0-0"] is net.cells["0-1"] and net.cells["3-0"] is not net.cells["3-1"]
    out = net(torch.randn(2, 3, 64, 128))
    assert out["out"].shape == (2, 19, 64, 128)
    assert [a.shape for a in out["aux"]] == [(2, 19, 64, 128)] * 2
    out["out"].mean().backward()  # aux heads are not part of this loss: only reached through "aux"
    assert net.stem[0].conv[0].weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 72, 96))  # not a multiple of 32: still at input size
    assert y["out"].shape == (1, 19, 72, 96) and y["aux"] == []


def test_aux_false_and_deploy_variant():
    net = build_published("student", num_classes=11, aux=False)
    keys = set(net.state_dict())
    assert not any(k.startswith(("heads16", "heads32")) for k in keys)
    assert net.heads8.conv_1x1.out_channels == 11
    net.train()
    assert net(torch.randn(2, 3, 64, 64))["aux"] == []

    torch.manual_seed(0)
    acc = build_published("student").eval()
    dep = build_published("student", deploy=True).eval()
    dep.load_state_dict(acc.state_dict())  # same keys: the published nets have no skip op
    assert {m.interpolation for m in dep.modules() if hasattr(m, "interpolation")} == {"nearest"}
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        a, d = acc(x)["out"], dep(x)["out"]
    assert a.shape == d.shape and not torch.allclose(a, d)


def _toy(role: str = "student", **kw) -> Architecture:
    return Architecture(role=role, stem_chi=8, head_chi=8, **kw)


@pytest.mark.parametrize(
    "branches",
    [
        # one branch ending at 1/8, one at 1/16, one at 1/32 with a stride-2 skip (FactorizedReduce)
        (Branch(ops=("conv", "conv_2x", "conv_downup"), path=(0, 0, 0), chi=(4, 8)),),
        (Branch(ops=("conv_2x_downup", "conv", "conv_2x"), path=(0, 1, 1), chi=(6, 10)),),
        (Branch(ops=("conv", "skip", "conv_2x", "conv"), path=(0, 0, 1, 2), chi=(4, 8, 12)),),
        # two branches: 1/32 + 1/8, sharing the first cell; and a first cell that downsamples at once
        (
            Branch(ops=("conv", "conv", "conv_2x", "conv"), path=(0, 0, 1, 2), chi=(4, 6, 8)),
            Branch(ops=("conv", "conv_downup"), path=(0, 0), chi=(4,)),
        ),
        (
            Branch(ops=("conv_2x", "conv", "conv"), path=(0, 1, 2), chi=(8, 10)),
            Branch(ops=("conv", "conv"), path=(0, 1), chi=(4,)),
        ),
    ],
)
def test_any_architecture_builds_and_runs(branches):
    arch = _toy(branches=branches)
    for deploy in (False, True):
        net = build_network(arch, num_classes=5, deploy=deploy)
        out = net(torch.randn(2, 3, 64, 96))
        assert out["out"].shape == (2, 5, 64, 96)
        assert len(out["aux"]) == (2 if 2 in arch.lasts else 0)
        assert all(a.shape == (2, 5, 64, 96) for a in out["aux"])


def test_shared_prefix_stops_before_a_last_cell():
    same = Branch(ops=("conv", "conv"), path=(0, 0), chi=(4,))
    arch = _toy(branches=(Branch(ops=("conv",) * 4, path=(0, 0, 1, 2), chi=(4, 4, 4)), same))
    # cell 1 is the last cell of branch 1 (head width) but not of branch 0: layer 0 shared, layer 1 not
    keys = [(p.key, p.branches) for p in plan_cells(arch)]
    assert keys == [("0-0", (0, 1)), ("1-0", (0,)), ("1-1", (1,)), ("2-0", (0,)), ("3-0", (0,))]
