"""Latency harness: the §10 protocol, backends reported truthfully, ONNX agreement, lookup tables."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fasterseg_core.latency import BACKENDS, export_onnx, measure, prepare
from fasterseg_core.latency.backends import _PREPARERS, BackendUnavailable
from fasterseg_core.latency.measure import summarise, time_prepared


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    ).eval()


FAST = {"warmup": 1, "min_loop_s": 0.01, "timed_s": 0.02, "min_iters": 3}


@pytest.mark.parametrize("backend", ["eager", "channels_last", "bf16", "ort", "ort_int8"])
def test_available_backends_return_positive_finite_figures(backend):
    calib = [torch.randn(1, 3, 32, 32) for _ in range(2)]
    r = measure(_tiny_net(), (1, 3, 32, 32), "cpu", backend, name="tiny", calibration_images=calib, **FAST)
    assert r.status == "ok", r.reason
    for v in (r.median_ms, r.mean_ms, r.p90_ms, r.p99_ms, r.fps):
        assert v is not None and math.isfinite(v) and v > 0
    assert r.median_ms <= r.p90_ms <= r.p99_ms
    assert r.iterations >= 3
    rec = r.record
    assert rec["backend"] == backend and rec["device"] == "cpu"
    assert rec["torch_threads"] == torch.get_num_threads()
    assert rec["input_hw"] == [32, 32] and rec["batch"] == 1
    expected_runtime = "onnxruntime" if backend.startswith("ort") else "torch"
    assert rec["backend_version"].startswith(expected_runtime)


@pytest.mark.parametrize("backend", [name for name, b in BACKENDS.items() if b.device == "cuda"])
def test_unavailable_backend_is_reported_not_substituted(backend):
    r = measure(_tiny_net(), (1, 3, 16, 16), "cpu", backend, **FAST)
    assert r.status == "unavailable"
    assert r.median_ms is None and r.fps is None and r.iterations == 0
    assert "CUDA" in r.reason and r.reason == BACKENDS[backend].device_reason


# ---- the backend table ----------------------------------------------------------------------------

# How far each precision may stray from fp32 eager on the tiny network: the tolerances of the tests above
# (fp32 paths 1e-4, bf16 5e-2) and of the CUDA-graph test (fp16 2e-2). int8 had no numeric test before; it
# gets bf16's bound (measured here: 1.4e-2 of the largest logit).
PRECISION_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 2e-2, "int8": 5e-2}


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_row_is_complete(name):
    from fasterseg_core.latency.suite import LOW_PRECISION

    row = BACKENDS[name]
    assert row.name == name
    assert row.runtime in _PREPARERS, f"{name}: no preparer for runtime {row.runtime!r}"
    assert row.precision in PRECISION_TOLERANCE
    # below fp32 means the suite checks its agreement with fp32 eager
    assert (name in LOW_PRECISION) == (row.precision != "fp32") == row.low_precision
    assert (row.device == "either") == (row.device_reason == ""), "a device-bound row says why"


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_available_here_runs_and_agrees_with_eager(name):
    row = BACKENDS[name]
    if row.device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{name} needs CUDA")
    device = "cuda" if row.device == "cuda" else "cpu"
    net, gen = _tiny_net(), torch.Generator().manual_seed(0)
    x, other = torch.randn(1, 3, 24, 24, generator=gen), torch.randn(1, 3, 24, 24, generator=gen)
    try:
        cand = prepare(net, x, name, device, calibration_images=[x, other])
    except BackendUnavailable as e:  # e.g. tensorrt not installed on a CUDA machine
        pytest.skip(str(e))
    assert cand.info["backend"] == name
    ref = prepare(net, x, "eager", device)
    tol = PRECISION_TOLERANCE[row.precision]
    for got, want in ((cand.run().float().cpu(), ref.forward(x)), (cand.forward(other), ref.forward(other))):
        assert torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max()), name
    if row.runtime.startswith("torch"):  # the torch preparers record the layout they ran
        nhwc = row.channels_last_on(torch.device(device).type)
        assert cand.info["memory_format"] == ("channels_last" if nhwc else "contiguous"), name


def test_cudagraph_fp16_is_checked_for_agreement():
    """It was missing from the suite's low-precision list, so its agreement with fp32 was never checked."""
    import pandas as pd

    from fasterseg_core.latency.suite import LOW_PRECISION, low_precision_table

    assert "cudagraph_fp16" in LOW_PRECISION
    frame = pd.DataFrame([
        {"network": "n", "backend": b, "status": "ok", "median_ms": ms, "agreement_pixel_agreement": agree,
         "agreement_logit_rel_error": 0.01, "agreement_reference_classes": 3.0}
        for b, ms, agree in (("eager", 2.0, None), ("cudagraph_fp16", 1.0, 0.999))
    ])
    assert ("n", "cudagraph_fp16") in low_precision_table(frame).index


def test_lookup_tables_refuse_backends_the_table_marks_unusable():
    from fasterseg_core.latency.lut import build_lut

    for name in (n for n, b in BACKENDS.items() if not b.lut_usable):
        with pytest.raises(ValueError, match="cannot time a lookup table"):
            build_lut("cpu", name, (64, 128), progress=False)


def test_prepare_raises_for_unavailable_and_rejects_unknown():
    with pytest.raises(BackendUnavailable):
        prepare(_tiny_net(), torch.randn(1, 3, 8, 8), "tensorrt", "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        prepare(_tiny_net(), torch.randn(1, 3, 8, 8), "openvino", "cpu")
    assert set(BACKENDS) >= {"eager", "compile", "ort", "ort_int8"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["cudagraph", "cudagraph_fp16"])
def test_cuda_graph_replay_matches_eager(backend):
    net = _tiny_net()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = prepare(net, x, "eager", "cuda")
    cand = prepare(net, x, backend, "cuda")
    tol = 1e-4 if backend == "cudagraph" else 2e-2
    torch.testing.assert_close(cand.run().float().cpu(), ref.forward(x), rtol=tol, atol=tol)
    other = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cand.forward(other), ref.forward(other), rtol=tol, atol=tol)


def test_prepare_leaves_the_callers_network_untouched():
    net = _tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepare(net, torch.randn(1, 3, 8, 8), "channels_last", "cpu").run()
    w = net[0].weight
    assert w.is_contiguous() and w.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_backends_agree_with_eager_on_the_same_input():
    net, x = _tiny_net(), torch.randn(1, 3, 24, 24)
    ref = prepare(net, x, "eager").run()
    for backend, tol in (("channels_last", 1e-5), ("ort", 1e-4), ("bf16", 5e-2)):
        out = prepare(net, x, backend).run().float()
        assert torch.allclose(out, ref, rtol=tol, atol=tol * ref.abs().max()), backend


def test_protocol_calibrates_then_times_about_the_requested_budget():
    calls = []
    times = time_prepared(
        lambda: calls.append(1), lambda: None, warmup=3, min_loop_s=0.001, timed_s=0.0, min_iters=7
    )
    assert len(times) == 7 and all(t >= 0 for t in times)
    assert len(calls) >= 3 + 1 + 7  # warm-up, at least one calibration loop, timed executions


def test_summary_statistics_are_exact():
    s = summarise([4.0, 1.0, 3.0, 2.0, 10.0])
    assert s["median_ms"] == 3.0 and s["mean_ms"] == 4.0 and s["fps"] == pytest.approx(1000 / 3)
    assert s["p90_ms"] == pytest.approx(4.0 + 0.6 * 6.0)


def test_onnx_export_is_valid_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    net, x = _tiny_net(), torch.randn(1, 3, 16, 20)
    data = export_onnx(net, x, tmp_path / "tiny.onnx")
    onnx.checker.check_model(onnx.load_from_string(data))
    assert (tmp_path / "tiny.onnx").stat().st_size == len(data)


# ---- published networks ---------------------------------------------------------------------------

REFERENCE = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_onnx_export_of_published_networks_matches_eager(role):
    from fasterseg_core.models.published import build_published

    torch.manual_seed(0)
    net = build_published(role, num_classes=19).eval()
    x = torch.randn(1, 3, 64, 128)
    ref = prepare(net, x, "eager").run()
    out = prepare(net, x, "ort").run()
    assert out.shape == ref.shape == (1, 19, 64, 128)
    rel = (out - ref).abs().max() / ref.abs().max()
    assert rel < 1e-4, f"{role}: ONNX Runtime differs from eager by {rel:.2e} (relative)"


# ---- lookup tables ---------------------------------------------------------------------------------


def test_lut_entries_cover_the_search_space_like_the_authors_table():
    from fasterseg_core.latency.lut import lut_entries

    keys = {e.key for e in lut_entries((1024, 2048))}
    # 3 scales × 25 width pairs × 5 ops at stride 1, plus stride 2 at scales 8 and 16
    assert (
        sum(k.startswith(("Basic", "Factorized")) for k in keys) == 3 * 25 * 5 + 2 * 25 * 5 + 4
    )  # + 4 stem ops
    if REFERENCE.exists():
        import json

        authors = set(json.loads((REFERENCE / "fasterseg_latency_lookup_table.json").read_text())["table_ms"])
        # every entry we time is one the authors timed (they also kept two stale stem variants)
        assert keys <= authors and len(authors - keys) == 2


def test_lut_round_trips_and_estimate_is_the_sum_of_its_entries(tmp_path):
    from fasterseg_core.latency.lut import LatencyTable, build_lut, estimate_latency, network_entries
    from fasterseg_core.models.published import published_architecture

    arch = published_architecture("student")
    keys = network_entries(arch, (64, 128))
    lut = build_lut(
        "cpu", "eager", (64, 128), "test-cpu", budget_s=0.0, min_iters=1, progress=False, only=keys
    )
    assert set(lut.entries) == set(keys)
    assert all(v > 0 and math.isfinite(v) for v in lut.entries.values())
    again = LatencyTable.load(lut.save(tmp_path / "lut.json"))
    assert again.entries == lut.entries and again.input_hw == (64, 128) and again.hardware_tag == "test-cpu"
    assert estimate_latency(arch, again) == pytest.approx(sum(lut.entries[k] for k in keys))
    # shared cells are charged once: three cells of the student are shared by both branches
    assert len(keys) == 3 + 16 + 6 + 2


def test_the_latency_stage_prices_a_network_on_the_searchs_table():
    """05_latency reuses 01_search's table of the device (timing only entries it lacks), with the run's class
    count: the published student has one table latency in the whole report, not one per stage and convention."""
    from fasterseg_core.latency.lut import LatencyTable, estimate_latency, network_entries
    from fasterseg_core.latency.suite import Candidate, _table_for
    from fasterseg_core.models.published import published_architecture

    arch = published_architecture("student")
    keys = {k for f in (True, False) for k in network_entries(arch, (64, 128), 11, faithful_quirks=f)}
    search_table = LatencyTable({k: 0.5 for k in keys}, (64, 128), "t", "eager")
    table = _table_for([Candidate("published student", None, arch)], torch.device("cpu"), (64, 128), "t", 11,
                       search_table)
    assert table.entries == search_table.entries  # nothing timed again
    assert estimate_latency(arch, table, 11) == estimate_latency(arch, search_table, 11)
    assert any(k.startswith("head") and k.endswith("Cout11") for k in keys), "the head is priced for the run's classes"


@pytest.mark.slow
def test_full_table_at_smoke_resolution_builds_and_resumes():
    from fasterseg_core.latency.lut import LatencyTable, build_lut, lut_entries

    keys = [e.key for e in lut_entries((64, 128))]
    partial = LatencyTable({k: 123.0 for k in keys[:-10]}, (64, 128), "t", "eager")
    lut = build_lut(
        "cpu", "eager", (64, 128), "t", budget_s=0.0, min_iters=1, progress=False, resume_from=partial
    )
    assert all(lut.entries[k] == 123.0 for k in keys[:-10]) and len(lut.entries) == len(keys)


def test_missing_entry_names_the_key_and_the_fix():
    from fasterseg_core.latency.lut import LatencyTable, estimate_latency
    from fasterseg_core.models.published import published_architecture

    with pytest.raises(KeyError, match="build a table at the network's resolution"):
        estimate_latency(published_architecture("student"), LatencyTable({}, (64, 128), "empty", "eager"))


@pytest.mark.skipif(not REFERENCE.exists(), reason="needs ../shared/reference")
@pytest.mark.parametrize("role, expected", [("student", 6.4139770511337275), ("teacher", 25.225902916112148)])
def test_authors_table_reproduces_their_network_estimates(role, expected):
    import json

    from fasterseg_core.latency.lut import estimate_latency, load_authors_lut
    from fasterseg_core.models.published import published_architecture

    lut = load_authors_lut(REFERENCE / "fasterseg_latency_lookup_table.json")
    figures = json.loads((REFERENCE / "fasterseg_reference_figures.json").read_text())
    assert figures["latency_lookup_estimates"][role]["lasts_[2,1]_ms"] == pytest.approx(expected)
    arch = published_architecture(role)
    assert estimate_latency(arch, lut) == pytest.approx(expected, rel=1e-12)
    # without the zoomed-conv×2 naming bug the same table charges less
    assert estimate_latency(arch, lut, faithful_quirks=False) < expected


def test_cli_times_a_network_and_writes_json(tmp_path):
    import json

    from fasterseg_core.cli import main

    out = tmp_path / "r.json"
    assert (
        main(
            [
                "latency",
                "--arch",
                "student",
                "--size",
                "64x128",
                "--backend",
                "eager",
                "--backend",
                "tensorrt",
                "--timed-seconds",
                "0.05",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["eager", "tensorrt"]
    assert rows[0]["status"] == "ok" and rows[0]["params"] == 4385689
    assert rows[1]["status"] == "unavailable"


def test_agreement_is_total_for_equal_networks_and_partial_for_different_ones():
    from fasterseg_core.latency.agreement import agreement

    net, x = _tiny_net(), torch.randn(1, 3, 16, 16)
    ref = prepare(net, x, "eager")
    imgs = [torch.randn(1, 3, 16, 16) for _ in range(3)]
    labels = [torch.randint(0, 4, (1, 16, 16)) for _ in range(3)]
    same = agreement(ref, prepare(net, x, "ort"), imgs, labels, num_classes=4)
    assert same["pixel_agreement"] == 1.0 and same["images"] == 3
    assert same["miou_change"] == pytest.approx(0.0, abs=1e-12)
    other = agreement(ref, prepare(_shifted(net), x, "eager"), imgs)
    assert other["pixel_agreement"] < 1.0


def _shifted(net: nn.Module) -> nn.Module:
    """The same network with a different last-layer bias: predictions must change somewhere."""
    import copy

    moved = copy.deepcopy(net)
    with torch.no_grad():
        moved[-1].bias.add_(torch.tensor([5.0, -5.0, 0.0, 0.0]))
    return moved


def test_cpu_compile_freezes_weights_runs_channels_last_and_matches_eager():
    net = _tiny_net()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    compiled = prepare(net, x, "compile", "cpu")
    assert "frozen weights" in compiled.info["backend_version"]
    assert compiled.info["memory_format"] == "channels_last"
    eager = prepare(net, x, "eager", "cpu")
    torch.testing.assert_close(compiled.run(), eager.run(), rtol=1e-4, atol=1e-5)
    other = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(compiled.forward(other), eager.forward(other), rtol=1e-4, atol=1e-5)
