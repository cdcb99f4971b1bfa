"""The published numbers shipped with the package (``fasterseg_core/published/results.json``): they load
without ``../shared``, every source id exists, every number equals the reference data it was taken from
(skipped when ``../shared`` is absent), and the claims ledger has its six claims."""

from __future__ import annotations

import builtins
import io
from importlib import resources
from pathlib import Path

import pytest
from conftest import REFERENCE, load_reference

from fasterseg_core.analysis.published import FORMAT, Claim, Published, Value, load_published

UNITS = {"%", "M", "G", "FPS", "ms", "h", "s", "points", "px (H x W)", "fraction"}
CLAIMS = {  # (a)-(f) of the claims ledger
    "study_trained_on_par_with_distilled",
    "study_distilled_above_teacher_val",
    "paper_distillation_improves_student",
    "paper_student_meets_latency_target",
    "study_student_much_faster_than_teacher",
    "paper_student_params_flops",
}
# paper.<key> → path in fasterseg_reference_figures.json["published"]
PAPER_PATHS = {
    "cityscapes_val_miou": "cityscapes_table4.rows.FasterSeg.0",
    "cityscapes_test_miou": "cityscapes_table4.rows.FasterSeg.1",
    "cityscapes_fps": "cityscapes_table4.rows.FasterSeg.2",
    "cityscapes_resolution": "cityscapes_table4.rows.FasterSeg.3",
    "student_params": "fasterseg_student_complexity.params_M",
    "student_flops": "fasterseg_student_complexity.GFLOPs_at_1024x2048",
    "pytorch_fps": "speed_protocol.pytorch_fps_same_gpu",
    "released_student_val_miou": "released_checkpoint_note.student_val_mIoU_of_released_weights_reported_by_user",
    "camvid_miou": "camvid.mIoU",
    "camvid_fps": "camvid.FPS",
}
SPEC_ONLY = {"latency_target_fps_min", "latency_target_fps_max"}  # spec §3.3 (the authors' search config)
TEXT_KEYS = {  # study.figure1.text.<key> → figure1_test_per_class_iou.stated_in_report_text.<key>
    "trained_student_300ep_test_miou_abstract": "abstract_trained_student_300ep_test_miou",
    "trained_student_300ep_test_miou_body": "body_trained_student_300ep_test_miou",
    "students_100ep_test_miou_body": "body_trained_and_distilled_student_100ep_test_miou_3sf",
    "paper_vs_released_weights_gap_body": "body_paper_vs_pretrained_weights_gap_approx_points",
}
# Every read of pub.study / pub.paper in analysis/accuracy.py and analysis/speed.py ("*": every key or item).
@pytest.fixture(scope="module")
def pub() -> Published:
    return load_published()


def get(doc, path: str):
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def value_refs(node, prefix: str = "") -> dict[str, dict]:
    """Dotted path → every value object (``value``) and series (``values`` or ``epochs``) in the document."""
    out = {}
    if isinstance(node, dict):
        if "source" in node and ("value" in node or "values" in node or "epochs" in node):
            out[prefix] = node
        if "value" not in node:
            for k, v in node.items():
                if k not in ("claims", "sources"):
                    out |= value_refs(v, f"{prefix}.{k}" if prefix else k)
    return out


def same(a, b) -> bool:
    """Equal and of the same JSON type: a carried 71.5 must not be a 71 or a "71.5"."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_loads_from_package_data_without_opening_anything_outside_the_package(monkeypatch):
    package = Path(str(resources.files("fasterseg_core"))).resolve()
    opened: list[Path] = []

    def spy(real):
        def open_(file, *args, **kwargs):
            if isinstance(file, (str, Path)):
                opened.append(Path(file).resolve())
            return real(file, *args, **kwargs)

        return open_

    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    pub = load_published()
    assert opened, "the spy saw no file opened"
    assert all(p.is_relative_to(package) for p in opened), opened
    assert package / "published" / "results.json" in opened
    assert pub.doc["format"] == FORMAT


def test_rejects_another_format():
    with pytest.raises(ValueError, match="fasterseg-published/1"):
        Published({"format": "something/0"})


# ---- (b) sources, units, shape ------------------------------------------------------------------------


def test_every_source_id_used_exists_and_has_a_citation(pub):
    sources = pub.doc["sources"]
    assert {"paper", "study"} <= set(sources)
    assert all(s["citation"] and s["short"] for s in sources.values())
    study = sources["study"]
    assert study["repository"] == "the-dropouts/fasterseg-results" and len(study["commit"]) == 40
    assert set(study["files_per_section"]) == {"table1", "figure1", "table2", "curves", "times"}

    used = []

    def walk(node):
        if isinstance(node, dict):
            used.extend(node[k] for k in ("source", "note_source") if k in node)
            for k, v in node.items():
                if k != "sources":
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(pub.doc)
    assert used and set(used) <= set(sources), set(used) - set(sources)
    assert set(pub.sources()) == set(sources) and pub.source("paper").startswith("W. Chen")


def test_every_value_has_value_unit_source_and_where(pub):
    refs = value_refs(pub.doc)
    assert len(refs) > 60
    for ref, node in refs.items():
        assert node["source"] and node["where"], ref
        assert node["unit"] in UNITS, (ref, node["unit"])
        if "value" in node:
            assert isinstance(pub.value(ref), Value)
    assert pub.paper_value("camvid_miou").status == "unverified"  # kept as the reference file has it
    assert {"paper.teacher_fps", "paper.distillation_ablation"} <= set(pub.not_recorded)


def test_cite_gives_short_caption_labels(pub):
    assert pub.cite("paper.cityscapes_val_miou") == "paper, Table 4"
    assert pub.cite("study.table1") == "study, Table 1"
    assert pub.cite("study.table1.models.teacher_100ep") == "study, Table 1"
    assert pub.cite("study.figure1.models.trained_student_300ep.class_iou") == "study, Figure 1"
    assert pub.cite("study.table2.columns.reproduced_B.fps") == "study, Table 2"
    assert pub.cite("paper.latency_target_fps_max").startswith("method notes")
    with pytest.raises(KeyError):
        pub.cite("paper.no_such_value")


def test_typed_accessors(pub):
    t1 = {r.key: r for r in pub.study_table1()}
    assert t1["teacher_100ep"].validation_miou == 56.7 and t1["trained_student_300ep"].mean_pixel_acc == 94.8
    f1 = pub.study_figure1()
    assert len(f1.classes) == 19 and len(f1.submissions) == 4
    assert all(list(s.class_iou) == f1.classes for s in f1.submissions)
    assert (
        f1.bar_values["FasterSeg Student (published result)"] == pub.paper_value("cityscapes_test_miou").value
    )
    t2 = pub.study_table2()
    assert t2.columns["reproduced_B"].fps == 195.9 and t2.hardware["B"].gpu == "NVIDIA RTX 3080 Ti"
    assert t2.teacher_fps_text == 79.2 and {g.model for g in t2.logs} == {"student", "teacher"}
    curves = pub.study_curves()
    assert len(curves) == 5 and len(curves["300epoch_trainscratch_student"].epochs) == 300
    assert curves["100epoch_trainscratch_teacher"].epochs[-1].valid_miou == {"teacher": 0.567}
    assert curves["100epoch_trainscratch_teacher"].epochs[1].valid_miou == {}
    times = pub.study_times()
    assert (
        times.from_logs["student_300ep"]["wall_total_h"] == 55.916
        and times.stated["distillation_100ep"]["hours"] == 52
    )


# ---- (c) fidelity to ../shared/reference ---------------------------------------------------------------


def test_every_carried_value_equals_the_reference(pub):
    study = load_reference("reproduction_2022.json")
    paper = load_reference("fasterseg_reference_figures.json")["published"]

    def reference(ref: str):
        p = ref.split(".")
        if p[0] == "paper":
            return get(paper, PAPER_PATHS[p[1]])
        sec, rest = p[1], p[2:]
        if sec == "table1":
            return get(study, "table1_validation.models." + ".".join(rest[1:]))
        if sec == "figure1":
            f1 = study["figure1_test_per_class_iou"]
            if rest[0] == "bar_values":
                return f1["figure_bar_values"][".".join(rest[1:])]
            if rest[0] == "text":
                return f1["stated_in_report_text"][TEXT_KEYS[rest[1]]]
            return f1["models"][rest[1]]["class_iou"]
        if sec == "table2":
            t2 = study["table2_latency"]
            if rest[0] == "columns":
                return t2[rest[2]][rest[1]]
            if rest[0] == "teacher_fps_text":
                return t2["teacher_fps_stated_in_text"]
            return t2["logs"][rest[1]][rest[2]]
        if sec == "curves":
            return [
                {k: e[k] for k in ("epoch", "train_mIoU", "valid_mIoU") if k in e}
                for e in study["training_curves"]["runs"][rest[1]]["epochs"]
            ]
        times = study["training_times_hours"]
        if rest[0] == "stated":
            return times["stated_in_report"][rest[1]]["hours"]
        return times["from_log_timestamps"][rest[1]][rest[2]]

    refs = value_refs(pub.doc)
    checked = 0
    for ref, node in refs.items():
        if ref.split(".")[-1] in SPEC_ONLY:
            continue
        carried = node.get("value", node.get("values", node.get("epochs")))
        assert same(carried, reference(ref)), ref
        checked += 1
    assert checked == len(refs) - len(SPEC_ONLY)


def test_latency_target_window_matches_the_spec(pub):
    spec = REFERENCE.parent / "spec" / "fasterseg.md"
    if not spec.exists():
        pytest.skip(f"spec {spec} not available")
    lo, hi = pub.paper_value("latency_target_fps_min").value, pub.paper_value("latency_target_fps_max").value
    assert f"Target window {lo}–{hi} FPS" in spec.read_text()


# ---- (d) the claims ledger -----------------------------------------------------------------------------


def test_claims_have_source_wording_and_published_numbers(pub):
    claims = {c.id: c for c in pub.claims()}
    assert CLAIMS <= set(claims)
    for c in claims.values():
        assert isinstance(c, Claim)
        assert c.source in pub.doc["sources"] and c.where and c.claim, c.id
        assert c.wording in ("paraphrase", "paraphrased from the numbers"), c.id
        assert c.wording == "paraphrased from the numbers" or c.wording_basis, c.id
        assert c.numbers, c.id
        for n in c.numbers:
            v = pub.value(n["ref"])
            assert same(n["value"], v.value) and n["unit"] == v.unit, (c.id, n["ref"])
    assert claims["paper_student_params_flops"].numbers[0]["value"] == 4.4
    assert claims["paper_student_params_flops"].numbers[1]["value"] == 28.2
