"""The published numbers the report sets beside ours, shipped with the package.

``fasterseg_core/published/results.json`` (format ``fasterseg-published/1``) carries only the numbers the
report uses: the FasterSeg paper's (Chen et al., ICLR 2020, with this project's method notes and two GitHub issue
threads where they qualify a number) and those of the 2022 reproduction study (Lebedys, Galili & Tan,
"the study"; repository the-dropouts/fasterseg-results). Every value is an object with ``value``, ``unit``,
``source`` (an id of the file's ``sources`` table) and ``where`` (table, figure or section, then row and
column); a series (per-class IoU, per-epoch curves) names one source for the whole series. Percent values
are kept exactly as printed; the study's log values are fractions as logged.

:func:`load_published` reads the file through :mod:`importlib.resources`, so it works from an installed
package and never looks outside it. :meth:`Published.legacy_views` gives the same numbers in the shape the
analysis modules were first written against (the layout of the reference files in ``../shared/reference``,
which the tests compare these numbers with).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

FORMAT = "fasterseg-published/1"
RESOURCE = ("published", "results.json")  # inside the fasterseg_core package
PAPER_ARCH_STEPS = 30 * 743  # §3.4: 30 search epochs of 743 architecture steps each (22,290)


@dataclass(frozen=True)
class Value:
    """One published number (or string, e.g. a resolution) with its unit and where it is printed."""

    value: Any
    unit: str
    source: str
    where: str
    note: str = ""
    status: str = ""  # e.g. "unverified"; empty when the source gives no caveat
    conditions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Value:
        return cls(
            d["value"],
            d["unit"],
            d["source"],
            d["where"],
            d.get("note", ""),
            d.get("status", ""),
            dict(d.get("conditions", {})),
        )


@dataclass(frozen=True)
class Source:
    """An entry of the sources table; ``short`` is the name used in captions ("paper", "study")."""

    id: str
    short: str
    citation: str
    url: str = ""
    repository: str = ""
    commit: str = ""
    commit_date: str = ""
    files_per_section: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Table1Row:
    """A column of the study's Table 1 (Cityscapes val, percent as printed)."""

    key: str
    column_group: str
    column_label: str
    epochs: int
    weights: str
    mean_iu_no_back: float
    mean_pixel_acc: float
    validation_miou: float


@dataclass(frozen=True)
class Submission:
    """One of the study's Cityscapes test-server submissions: its Figure 1 label and 19 class IoUs (%)."""

    key: str
    figure_label: str
    weights: str
    class_iou: dict[str, float]


@dataclass(frozen=True)
class Figure1:
    """The study's Figure 1: submissions, the plotted mean IoUs (bar label → %) and the test mIoUs quoted
    in its text (key → :class:`Value`)."""

    classes: list[str]
    submissions: list[Submission]
    bar_values: dict[str, float]
    text: dict[str, Value]


@dataclass(frozen=True)
class Hardware:
    key: str
    label: str
    gpu: str
    cpu: str


@dataclass(frozen=True)
class Table2Column:
    """A column of the study's Table 2 (student, batch 1, 1024×2048); ``hardware`` is "A", "B" or ``None``
    for the column quoting the paper."""

    key: str
    label: str
    hardware: str | None
    params_M: float
    flops_G: float
    fps: float


@dataclass(frozen=True)
class LatencyLog:
    """One of the study's four latency logs (backend not logged); ``latency_ms_derived`` = 1000 / fps."""

    key: str
    model: str
    hardware: str
    params_M: float
    flops_G: float
    fps: float
    latency_ms_derived: float


@dataclass(frozen=True)
class Table2:
    hardware: dict[str, Hardware]
    columns: dict[str, Table2Column]
    logs: list[LatencyLog]
    teacher_fps_text: float


@dataclass(frozen=True)
class CurvePoint:
    """One epoch of a study run: mIoU per role (fractions); ``valid_miou`` is empty where not validated."""

    epoch: int
    train_miou: dict[str, float]
    valid_miou: dict[str, float]


@dataclass(frozen=True)
class CurveRun:
    name: str
    description: str
    trained_network: str
    distillation: bool
    teacher_weights: str | None
    epochs: list[CurvePoint]


@dataclass(frozen=True)
class StudyTimes:
    """Hours stated in the study's text (key → hours, qualifier, epochs) and measured from its logs
    (key → run, epochs, wall_total_h, train_s_per_epoch_mean)."""

    gpu_stated: str
    stated: dict[str, dict[str, Any]]
    from_logs: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Claim:
    """A published claim for the claims ledger: who makes it, a one-line paraphrase and its numbers
    (``ref`` is a dotted path to the value, resolvable with :meth:`Published.value`)."""

    id: str
    source: str
    where: str
    claim: str
    wording: str  # "paraphrase" or "paraphrased from the numbers"
    numbers: list[dict[str, Any]]
    wording_basis: str = ""
    numbers_note: str = ""


class Published:
    """Typed access to ``results.json``; build with :func:`load_published`."""

    def __init__(self, doc: dict[str, Any]):
        if doc.get("format") != FORMAT:
            raise ValueError(f"expected format {FORMAT!r}, got {doc.get('format')!r}")
        self.doc = doc
        self._study = doc["study"]

    # ---- generic --------------------------------------------------------------------------------------
    def node(self, ref: str) -> Any:
        """The raw JSON node at a dotted path from the document root ("study.table2.logs")."""
        node: Any = self.doc
        for part in ref.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError):
                raise KeyError(f"no {ref!r} in the published numbers (at {part!r})") from None
        return node

    def value(self, ref: str) -> Value:
        """The value object at a dotted path, e.g. ``"study.table2.logs.latency_teacher_B.fps"``."""
        return Value.from_json(self.node(ref))

    def paper_value(self, key: str) -> Value:
        """A paper number by key: ``cityscapes_val_miou``, ``cityscapes_test_miou``, ``cityscapes_fps``,
        ``student_params``, ``student_flops``, ``camvid_miou``, ``latency_target_fps_min`` … (see
        :meth:`paper_keys`)."""
        return self.value(f"paper.{key}")

    def paper_keys(self) -> list[str]:
        return list(self.doc["paper"])

    @property
    def not_recorded(self) -> dict[str, str]:
        """What the report might ask for but no source here gives (e.g. the paper's teacher FPS)."""
        return dict(self.doc["not_recorded"])

    def sources(self) -> dict[str, Source]:
        return {k: Source(k, **v) for k, v in self.doc["sources"].items()}

    def source(self, id: str) -> str:
        """The full citation of a source id ("paper", "study", "method", "issue4", "issue32")."""
        return self.doc["sources"][id]["citation"]

    def cite(self, ref: str) -> str:
        """A short label for captions: ``cite("paper.cityscapes_fps")`` → ``"paper, Table 4"``; a section
        (``"study.table1"``) or anything inside a series cites its nearest enclosing source."""
        parts = ref.split(".")
        for n in range(len(parts), 0, -1):
            node = self.node(".".join(parts[:n]))
            if isinstance(node, dict) and "source" in node and "where" in node:
                place = re.sub(r"\s*\([^)]*\)$", "", node["where"].split(", ")[0])
                return f"{self.doc['sources'][node['source']]['short']}, {place}"
        raise KeyError(f"{ref!r} has no source")

    @property
    def note(self) -> str:
        """A caption sentence naming where the published columns come from."""
        s = self.doc["sources"]["study"]
        return (
            "Published numbers: the paper (Chen et al., ICLR 2020) and the 2022 reproduction study "
            f"({s['repository']} at {s['commit'][:7]}), from fasterseg_core/published/results.json."
        )

    # ---- the study --------------------------------------------------------------------------------------
    def study_table1(self) -> list[Table1Row]:
        """The study's Table 1, one row per printed column, in the printed order."""
        rows = []
        for key, m in self._study["table1"]["models"].items():
            metrics = {k: m[k]["value"] for k in ("mean_iu_no_back", "mean_pixel_acc", "validation_miou")}
            rows.append(
                Table1Row(key, m["column_group"], m["column_label"], m["epochs"], m["weights"], **metrics)
            )
        return rows

    def study_figure1(self) -> Figure1:
        f = self._study["figure1"]
        subs = [
            Submission(k, m["figure_label"], m["weights"], dict(m["class_iou"]["values"]))
            for k, m in f["models"].items()
        ]
        bars = {label: v["value"] for label, v in f["bar_values"].items()}
        text = {k: Value.from_json(v) for k, v in f["text"].items()}
        return Figure1(list(f["classes"]), subs, bars, text)

    def study_table2(self) -> Table2:
        t = self._study["table2"]
        hardware = {k: Hardware(k, h["label"], h["gpu"], h["cpu"]) for k, h in t["hardware"].items()}
        columns = {
            k: Table2Column(
                k,
                c["label"],
                c.get("hardware"),
                c["params_M"]["value"],
                c["flops_G"]["value"],
                c["fps"]["value"],
            )
            for k, c in t["columns"].items()
        }
        logs = [
            LatencyLog(
                k,
                g["model"],
                g["hardware"],
                g["params_M"]["value"],
                g["flops_G"]["value"],
                g["fps"]["value"],
                g["latency_ms_derived"]["value"],
            )
            for k, g in t["logs"].items()
        ]
        return Table2(hardware, columns, logs, t["teacher_fps_text"]["value"])

    def study_curves(self) -> dict[str, CurveRun]:
        """The study's logged training runs by run folder name, with mIoU per epoch and role."""
        out = {}
        for name, r in self._study["curves"]["runs"].items():
            points = [
                CurvePoint(e["epoch"], dict(e["train_mIoU"]), dict(e.get("valid_mIoU", {})))
                for e in r["epochs"]
            ]
            out[name] = CurveRun(
                name, r["description"], r["trained_network"], r["distillation"], r["teacher_weights"], points
            )
        return out

    def study_times(self) -> StudyTimes:
        t = self._study["times"]
        stated = {
            k: {"hours": s["hours"]["value"], "qualifier": s["qualifier"], "epochs": s["epochs"]}
            for k, s in t["stated"].items()
        }
        logs = {
            k: {
                "run": g["run"],
                "epochs": g["epochs"],
                "wall_total_h": g["wall_total_h"]["value"],
                "train_s_per_epoch_mean": g["train_s_per_epoch_mean"]["value"],
            }
            for k, g in t["from_logs"].items()
        }
        return StudyTimes(t["gpu_stated"], stated, logs)

    def claims(self) -> list[Claim]:
        return [Claim(**c) for c in self.doc["claims"]]


def load_published() -> Published:
    """The published numbers from the package data (``fasterseg_core/published/results.json``)."""
    text = resources.files("fasterseg_core").joinpath(*RESOURCE).read_text(encoding="utf-8")
    return Published(json.loads(text))
