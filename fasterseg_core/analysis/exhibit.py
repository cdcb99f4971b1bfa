"""An exhibit of the report: one table and/or figure with its label, title and caption.

An :class:`Exhibit` renders itself in a notebook (``_repr_mimebundle_``: HTML with the caption, the PNG, and
plain text), so a notebook cell ends with the exhibit and nothing else; the HTML carries
``data-exhibit="Table 1"`` for the report's browser test. Figures are rendered to PNG once and closed, so
matplotlib's inline backend does not show them a second time.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..storage import atomic_path, save_csv


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return spec.format(value)
    return str(value)


@dataclass
class Exhibit:
    """One table or figure of the report with its caption; renders itself in a notebook.

    Args:
        label: "Table 1", "Figure 3b", …
        title: one line.
        caption: what is shown and where the numbers come from.
        table: shown without its index; numbers are formatted with ``formats`` (column → format spec,
            default ``"{:.1f}"``), missing values as "—".
        figure: rendered once to PNG and closed (so the notebook does not show it twice).
        missing: why there is nothing to show (e.g. "01_search not run"); shown instead of the content.
        widths: column → share of the table's width (%), for a table of prose (the claims ledger): laid out
            at those widths, its text left-aligned and top-aligned; without it the browser sizes the columns.
    """

    label: str
    title: str
    caption: str
    table: pd.DataFrame | None = None
    figure: Figure | None = None
    missing: str = ""
    formats: dict[str, str] = field(default_factory=dict)
    widths: dict[str, float] = field(default_factory=dict)
    png: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.figure is not None:
            buf = io.BytesIO()
            self.figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            plt.close(self.figure)
            self.png = buf.getvalue()

    @property
    def slug(self) -> str:
        return self.label.lower().replace(" ", "_")

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``figures/<slug>.png`` and ``tables/<slug>.csv`` (what exists) under ``folder``."""
        out = []
        if self.png:
            with atomic_path(Path(folder) / "figures" / f"{self.slug}.png") as tmp:
                tmp.write_bytes(self.png)
            out.append(Path(folder) / "figures" / f"{self.slug}.png")
        if self.table is not None:
            out.append(save_csv(self.table, Path(folder) / "tables" / f"{self.slug}.csv", index=False))
        return out

    def table_html(self) -> str:
        assert self.table is not None
        specs = {c: self.formats.get(c, "{:.1f}") for c in self.table.columns}
        formatters = {c: (lambda v, s=spec: _cell(v, s)) for c, spec in specs.items()}
        text = self.table.to_html(
            index=False, formatters=formatters, na_rep="—", border=0, classes="dataframe", escape=True
        )
        if not self.widths:
            return text
        # the browser's automatic layout gives a column of long cells room by its longest line, and squeezes
        # the prose columns to a word a line; fixed shares keep every column readable on an A4 page
        cols = "".join(f'<col style="width: {self.widths.get(c, 0):g}%">' for c in self.table.columns)
        opening = text[: text.index(">") + 1]  # pandas' <table class="dataframe …">
        return ('<table class="dataframe fasterseg-prose" style="table-layout: fixed; width: 100%">'
                f"<colgroup>{cols}</colgroup>" + text[len(opening):])

    def to_html(self) -> str:
        """``<figure class="fasterseg-exhibit" data-exhibit="Table 1">`` with caption, table and image."""
        head = f"<b>{html.escape(self.label)}. {html.escape(self.title)}</b> {html.escape(self.caption)}"
        opening = (
            f'<figure class="fasterseg-exhibit" data-exhibit="{html.escape(self.label)}" '
            'style="margin: 0.8em 0; break-inside: avoid-page">'
        )
        parts = [opening]
        if self.missing:
            parts.append(
                f'<p class="fasterseg-missing"><i>Not available: {html.escape(self.missing)}</i></p>'
            )
        if self.png:
            data = base64.b64encode(self.png).decode()
            parts.append(
                f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.label)}" '
                'style="max-width: 100%">'
            )
        if self.table is not None and len(self.table):
            parts.append(self.table_html())
        parts.append(f'<figcaption style="font-size: 0.9em; margin-top: 0.3em">{head}</figcaption></figure>')
        return "\n".join(parts)

    def __str__(self) -> str:
        body = self.missing or (self.table.to_string(index=False) if self.table is not None else "[figure]")
        return f"{self.label}. {self.title}\n{body}\n{self.caption}"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": str(self), "text/html": self.to_html()}
        if self.png:
            bundle["image/png"] = base64.b64encode(self.png).decode()
        return bundle
