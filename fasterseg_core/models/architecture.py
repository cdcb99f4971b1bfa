"""A searched (or published) FasterSeg network as plain data, and its JSON form.

Method: ``docs/method.md`` §4-§6. A FasterSeg network is a stem, two branches of cells
(each a path over the strides 8/16/32 with one operator and one output width per cell) and a decoder.
Only the branches are searched, so an :class:`Architecture` holds just that, plus the stem/head width
and the role (teacher or student).

Vocabulary used throughout the package:

* ``chi`` (χ, "expansion ratio" of the paper) is a width in twelfths: ``w = chi / 12``. A feature at
  stride ``s`` with width ``chi`` has ``s * chi`` channels when the base channel count is 12.
  Storing widths as integers avoids float round-off in JSON and keys.
* ``path[l]`` is the *input* scale index (0, 1, 2 for strides 8, 16, 32) of cell ``l``; a cell whose
  successor sits one scale lower is a stride-2 ("down") cell.
* A branch ending at stride 32 is always branch 0 (the paper's Fig. 6 ordering, ``lasts[0] = 2``).

Our JSON format (``fasterseg-arch/1``) is readable by people: one entry per cell with the operator's
name, the stride its input lives at and its output width. It is *not* the authors' ``arch_*.pt``
layout; :func:`fasterseg_core.models.derive.derive_architecture` turns their raw α/β/γ into this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ops import OP_NAMES

FORMAT = "fasterseg-arch/1"
WIDTH_CHOICES_CHI = (4, 6, 8, 10, 12)  # W = [4/12 … 12/12], spec notation
ROLES = ("teacher", "student")


@dataclass(frozen=True)
class Branch:
    """One branch of cells, from the stem (stride 8) to its end stride.

    Attributes:
        ops: operator name per cell (keys of ``OPS``), length n.
        path: input scale index per cell (0, 1, 2 ↔ stride 8, 16, 32), length n, non-decreasing by
            at most 1 per cell, starting at 0.
        chi: output width (twelfths) of every cell except the last, length n - 1; the last cell's
            output width is the network's head width.
    """

    ops: tuple[str, ...]
    path: tuple[int, ...]
    chi: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "path", tuple(int(p) for p in self.path))
        object.__setattr__(self, "chi", tuple(int(c) for c in self.chi))
        n = len(self.ops)
        if n < 1:
            raise ValueError("a branch needs at least one cell")
        unknown = sorted(set(self.ops) - set(OP_NAMES))
        if unknown:
            raise ValueError(f"unknown operator(s) {unknown}; valid: {list(OP_NAMES)}")
        if len(self.path) != n or len(self.chi) != n - 1:
            raise ValueError(
                f"branch lengths disagree: {n} ops, {len(self.path)} path entries (need {n}), "
                f"{len(self.chi)} widths (need {n - 1})"
            )
        if self.path[0] != 0:
            raise ValueError("a branch starts at stride 8 (path[0] must be 0)")
        steps = [b - a for a, b in zip(self.path, self.path[1:])]
        if any(s not in (0, 1) for s in steps) or self.path[-1] > 2:
            raise ValueError(f"path {self.path} must rise by 0 or 1 per cell and stay within 0..2")
        bad = [c for c in self.chi if c not in WIDTH_CHOICES_CHI]
        if bad:
            raise ValueError(f"widths {bad} (twelfths) are not in {WIDTH_CHOICES_CHI}")

    @property
    def downs(self) -> tuple[int, ...]:
        """1 where the cell has stride 2 (its successor's input is one scale lower); last cell 0."""
        return tuple(b - a for a, b in zip(self.path, self.path[1:])) + (0,)

    @property
    def end_scale(self) -> int:
        """Scale index (0, 1, 2) of the branch output."""
        return self.path[-1]

    @property
    def end_stride(self) -> int:
        return 8 * 2**self.end_scale

    def __len__(self) -> int:
        return len(self.ops)


@dataclass(frozen=True)
class Architecture:
    """A derived FasterSeg network: branches plus stem/head width.

    Attributes:
        role: "teacher" (arch index 0) or "student" (arch index 1).
        branches: one or two branches in the authors' ``lasts`` order (the stride-32 branch first).
        stem_chi: stem width in twelfths (teacher 12, student 8).
        head_chi: head/decoder width in twelfths (teacher 12, student 8).
        base_channels: F of the spec (12); C(s, chi) = round(s * F * chi / 12).
        notes: free-form provenance (source file, search epoch, metrics); not used to build.
    """

    role: str
    branches: tuple[Branch, ...]
    stem_chi: int
    head_chi: int
    base_channels: int = 12
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(self.branches))
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not 1 <= len(self.branches) <= 2:
            raise ValueError(f"FasterSeg networks have 1 or 2 branches, got {len(self.branches)}")
        ends = [b.end_scale for b in self.branches]
        if len(ends) == 2 and (ends[0] != 2 or ends[1] == 2):
            raise ValueError(f"branch 0 must end at stride 32 and branch 1 before it; got ends {ends}")

    @property
    def lasts(self) -> tuple[int, ...]:
        """End scale index per branch, e.g. (2, 1) for the published networks."""
        return tuple(b.end_scale for b in self.branches)

    def channels(self, stride: int, chi: int) -> int:
        """C(s, w) of the spec: channels of a feature at ``stride`` with width ``chi`` twelfths."""
        return round(stride * self.base_channels * chi / 12)

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        branches = []
        for b in self.branches:
            cells = []
            for i, (op, p) in enumerate(zip(b.ops, b.path)):
                cells.append(
                    {
                        "op": op,
                        "in_stride": 8 * 2**p,
                        "down": bool(b.downs[i]),
                        "out_chi": b.chi[i] if i < len(b.chi) else None,  # None: head width
                    }
                )
            branches.append({"end_stride": b.end_stride, "cells": cells})
        return {
            "format": FORMAT,
            "role": self.role,
            "base_channels": self.base_channels,
            "stem_chi": self.stem_chi,
            "head_chi": self.head_chi,
            "branches": branches,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Architecture:
        if d.get("format") != FORMAT:
            raise ValueError(
                f"not a {FORMAT} architecture (format={d.get('format')!r}); the authors' arch_*.pt "
                "tensors are converted with fasterseg_core.models.derive.derive_architecture"
            )
        known = {"format", "role", "base_channels", "stem_chi", "head_chi", "branches", "notes"}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown architecture field(s) {extra}; valid: {sorted(known)}")
        branches = []
        for bd in d["branches"]:
            cells = bd["cells"]
            path = [{8: 0, 16: 1, 32: 2}[c["in_stride"]] for c in cells]
            branch = Branch(ops=[c["op"] for c in cells], path=path, chi=[c["out_chi"] for c in cells[:-1]])
            if branch.end_stride != bd["end_stride"]:
                raise ValueError(f"branch end_stride {bd['end_stride']} disagrees with its cells")
            branches.append(branch)
        return cls(
            role=d["role"],
            branches=tuple(branches),
            stem_chi=int(d["stem_chi"]),
            head_chi=int(d["head_chi"]),
            base_channels=int(d.get("base_channels", 12)),
            notes=dict(d.get("notes", {})),
        )

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text (and file, if ``path``) with one line per cell, so a diff reads like Fig. 6."""
        d = self.to_dict()
        head = {k: v for k, v in d.items() if k not in ("branches", "notes")}
        lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
        lines.append(' "branches": [')
        for bi, b in enumerate(d["branches"]):
            lines.append(f'  {{"end_stride": {b["end_stride"]}, "cells": [')
            cells = [f"   {json.dumps(c)}" for c in b["cells"]]
            lines.append(",\n".join(cells))
            lines.append("  ]}" + ("," if bi < len(d["branches"]) - 1 else ""))
        lines.append(" ],")
        lines.append(f' "notes": {json.dumps(d["notes"], default=str)}')
        lines.append("}")
        text = "\n".join(lines)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> Architecture:
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(path_or_text)
        return cls.from_dict(json.loads(text))
