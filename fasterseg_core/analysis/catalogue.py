"""The exhibit catalogue: every table and figure of ``06_analysis``, in the order the report shows them.

:data:`CATALOGUE` is the one ordered list: the labels are numbered from it (Table 1, 2, … and Figure 1, 2, … in
order of appearance; a section with several exhibits of one kind numbers them 4a, 4b, …), ``06_analysis`` shows
its sections in this order, and :func:`contents` lists them. The study's Table 1, Figure 1 and Table 2 come first,
so they keep the study's numbers; the stage table ("Stages found") opens the notebook unnumbered.

    entries = ledger(art, pub)
    exhibits = build_exhibits(art, pub, entries, hardware=run.hardware)   # section key → its numbered exhibits
    contents(exhibits)                                                    # label, title, section
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from .accuracy import distillation_gain, figure1, table1, training_curves
from .artifacts import Artifacts
from .claims import Entry, claims_exhibit, paired_figure
from .exhibit import Exhibit
from .provenance import reproducibility
from .published import Published
from .search_story import search_story
from .speed import accuracy_latency, compute_table, table2


@dataclass(frozen=True)
class Inputs:
    """What every builder may read: the run's artifacts, the published numbers, the claims ledger, this machine."""

    art: Artifacts
    pub: Published
    entries: list[Entry]
    hardware: str


@dataclass(frozen=True)
class Section:
    """One section of ``06_analysis``: its key, its heading and the builder of its exhibits."""

    key: str
    heading: str
    build: Callable[[Inputs], list[Exhibit]]


CATALOGUE: tuple[Section, ...] = (
    Section("validation", "Validation accuracy", lambda i: [table1(i.art, i.pub)]),
    Section("per_class", "Per-class IoU on the test split", lambda i: [figure1(i.art, i.pub)]),
    Section("speed", "Parameters, FLOPs and speed", lambda i: [table2(i.art, i.pub)]),
    Section("claims", "Claims ledger", lambda i: [claims_exhibit(i.art, i.entries, i.pub)]),
    Section("paired", "Paired differences per seed", lambda i: [paired_figure(i.entries)]),
    Section("curves", "Training curves on a common axis", lambda i: [training_curves(i.art, i.pub)]),
    Section("compute", "Compute accounting", lambda i: [compute_table(i.art, i.pub)]),
    Section("search", "The search: derived networks, latency against its target, α/β/γ",
            lambda i: search_story(i.art)),
    Section("tradeoff", "Accuracy against latency",
            lambda i: [accuracy_latency(i.art, backend="eager", hardware=i.hardware)]),
    Section("gain", "What distillation changes, per class", lambda i: [distillation_gain(i.art, i.pub)]),
    Section("manifest", "Reproducibility manifest", lambda i: reproducibility(i.art)),
)
KINDS = ("Table", "Figure")  # what a builder's label starts with; the number is the catalogue's


def build_exhibits(art: Artifacts, pub: Published, entries: list[Entry], hardware: str = "") -> dict[str, list[Exhibit]]:
    """Every section's exhibits, built and numbered in catalogue order.

    Raises:
        ValueError: a builder gave an exhibit that is neither a table nor a figure.
    """
    inputs, count = Inputs(art, pub, entries, hardware), dict.fromkeys(KINDS, 0)
    out: dict[str, list[Exhibit]] = {}
    for section in CATALOGUE:
        exhibits = section.build(inputs)
        kinds = [e.label.split(" ", 1)[0] for e in exhibits]
        if set(kinds) - set(KINDS):
            raise ValueError(f"section {section.key}: labels {[e.label for e in exhibits]} must start with {KINDS}")
        for kind in dict.fromkeys(kinds):
            group = [e for e, k in zip(exhibits, kinds) if k == kind]
            count[kind] += 1
            for j, e in enumerate(group):
                e.label = f"{kind} {count[kind]}{string.ascii_lowercase[j] if len(group) > 1 else ''}"
        out[section.key] = exhibits
    return out


def contents(exhibits: dict[str, list[Exhibit]]) -> Exhibit:
    """The list of exhibits, in order: label, title and section (unnumbered: it lists the numbered ones)."""
    heading = {s.key: s.heading for s in CATALOGUE}
    rows = [{"exhibit": e.label, "title": e.title, "section": heading[key]}
            for key, group in exhibits.items() for e in group]
    return Exhibit("Contents", "Tables and figures", "In the order they follow; numbered from one catalogue "
                   "(fasterseg_core/analysis/catalogue.py).", pd.DataFrame(rows))
