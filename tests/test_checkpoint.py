"""Checkpoint interoperability with the authors' released weights, and the keyed-initialisation samples."""

from __future__ import annotations

import io
from collections import OrderedDict

import pytest
import torch
from conftest import load_reference

from fasterseg_core.models import build_published
from fasterseg_core.models.state_dict import (
    CheckpointMismatchError,
    export_official_state_dict,
    keyed_state_dict,
    keyed_state_dict_for,
    load_official_state_dict,
)


@pytest.fixture(scope="module")
def student_sd():
    return keyed_state_dict_for(build_published("student"))


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_keyed_init_samples_reproduce_the_authors_network(role):
    """Same key-derived weights, loaded through the authors' key list → same outputs as their network."""
    ref = load_reference(f"fasterseg_state_dict_{role}.json")
    sample = load_reference("fasterseg_reference_figures.json")["deterministic_samples"][role]["keyed_init"]
    weights = keyed_state_dict((e["key"], e["shape"], e["same_tensor_as"]) for e in ref["entries"])
    net = build_published(role)
    report = load_official_state_dict(net, weights)
    assert report.ok
    net.eval()

    captured = {}
    for name, tag in (("stem", "stem_out"), ("ffm", "ffm_out"), ("heads8", "logits_1_8")):
        getattr(net, name).register_forward_hook(lambda m, i, o, tag=tag: captured.__setitem__(tag, o))
    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 512)
    assert x.flatten()[:5].tolist() == pytest.approx(sample["input_first_values"])
    with torch.no_grad():
        captured["output"] = net(x)["out"]

    for tag, y in captured.items():
        want = sample[tag]
        assert list(y.shape) == want["shape"], tag
        y = y.double()
        got = {"mean": y.mean(), "std": y.std(), "min": y.min(), "max": y.max(), "sum_abs": y.abs().sum()}
        for stat, value in got.items():
            assert value.item() == pytest.approx(want[stat], rel=1e-4, abs=1e-6), (tag, stat)
    out = captured["output"]
    per_class = out.double().mean(dim=(0, 2, 3)).tolist()
    assert per_class == pytest.approx(sample["output_per_class_mean"], rel=1e-4, abs=1e-6)
    # ties between logits are vanishingly unlikely at these magnitudes: require the exact histogram
    assert torch.bincount(out.argmax(1).flatten(), minlength=19).tolist() == sample["argmax_histogram"]


def test_export_matches_the_authors_key_list_and_round_trips(student_sd):
    ref = load_reference("fasterseg_state_dict_student.json")
    a = build_published("student")
    load_official_state_dict(a, student_sd)
    exported = export_official_state_dict(a)
    assert isinstance(exported, OrderedDict)
    assert [(k, list(v.shape)) for k, v in exported.items()] == [
        (e["key"], e["shape"]) for e in ref["entries"]
    ]
    for e in ref["entries"]:
        if e["same_tensor_as"]:
            assert exported[e["key"]] is exported[e["same_tensor_as"]]

    buffer = io.BytesIO()
    torch.save(exported, buffer)  # as the authors' code saves weights1.pt
    buffer.seek(0)
    b = build_published("student")
    load_official_state_dict(b, torch.load(buffer, weights_only=True))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    a.eval(), b.eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(a(x)["out"], b(x)["out"], rtol=0, atol=0)


def test_wrapped_and_prefixed_state_dicts_load(student_sd):
    net = build_published("student")
    prefixed = {"module." + k: v for k, v in student_sd.items()}
    assert load_official_state_dict(net, {"state_dict": prefixed}).ok
    torch.testing.assert_close(net.heads8.conv_1x1.bias, student_sd["heads8.conv_1x1.bias"])


def test_teacher_checkpoint_into_student_gives_a_clear_error():
    teacher_sd = keyed_state_dict_for(build_published("teacher"))
    with pytest.raises(CheckpointMismatchError) as err:
        load_official_state_dict(build_published("student"), teacher_sd)
    msg = str(err.value)
    assert "looks like a teacher checkpoint but the network is a student" in msg
    assert "missing key(s)" in msg and "unexpected key(s)" in msg and "different shape" in msg
    assert "stem.0.conv.0.weight: (48, 3, 3, 3) vs (32, 3, 3, 3)" in msg


def test_missing_unexpected_and_inconsistent_keys(student_sd):
    net = build_published("student")
    broken = dict(student_sd)
    del broken["heads8.conv_1x1.bias"]
    broken["heads8.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key\(s\): heads8.conv_1x1.bias"):
        load_official_state_dict(net, broken)
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected key\(s\): heads8.extra"):
        load_official_state_dict(net, broken)

    lenient = load_official_state_dict(net, broken, strict=False)  # the authors' own behaviour
    assert lenient.missing == ["heads8.conv_1x1.bias"] and lenient.unexpected == ["heads8.extra"]
    torch.testing.assert_close(net.heads8.conv_1x1.weight, student_sd["heads8.conv_1x1.weight"])

    aliased = dict(student_sd)
    aliased["cells.0-1._op._op.conv1.weight"] = aliased["cells.0-0._op._op.conv1.weight"] + 1
    with pytest.raises(CheckpointMismatchError, match="aliased keys"):
        load_official_state_dict(net, aliased)


def test_aux_and_class_hints(student_sd):
    with pytest.raises(CheckpointMismatchError, match="aux=False; use aux=True"):
        load_official_state_dict(build_published("student", aux=False), student_sd)
    no_aux = {k: v for k, v in student_sd.items() if not k.startswith(("heads16", "heads32"))}
    with pytest.raises(CheckpointMismatchError, match="only the auxiliary heads are missing"):
        load_official_state_dict(build_published("student"), no_aux)
    assert load_official_state_dict(build_published("student", aux=False), no_aux).ok
    with pytest.raises(CheckpointMismatchError, match="num_classes=19"):
        load_official_state_dict(build_published("student", num_classes=11), student_sd)
