"""Benchmark records: one JSON file per run of a benchmark, named by what was measured and where.

A benchmark's printed summary is for the person at the terminal; its record is what others cite (house style
§3.14). ``benchmarks/results/<benchmark>/<name>.json`` holds the benchmark's own figures and, beside them,
the provenance every record carries (:data:`PROVENANCE`): a one-line ``headline``, the ``date``, the exact
``command``, the commit (``git``: sha and dirty flag) and the ``machine`` (CPU model and ISA flags, threads,
GPU, torch version, hardware tag). The name is ``<hardware tag>-<date>`` unless the benchmark gives its own
(``benchmarks/recipe.py`` adds the stage, ``benchmarks/report_time.py`` starts with the profile).

A record is never overwritten by another measurement: its name takes the first free ``-2``, ``-3`` … suffix. Only
the same command rerun at the same commit replaces its own record (a rerun of ``benchmarks/recipe.py`` reuses its
finished runs); at another commit it measured other code, and the earlier record stands beside it.
A record transcribed from older prose instead of written by its benchmark says where from in
``migrated_from``; one its own author declared unusable (a disturbed host) carries ``void``: the reason.

``python -m fasterseg_core results`` (``make results``) lists the newest record per benchmark and machine;
``--readme README.md`` rewrites the README's measured rows from the records (:func:`readme_block`), so that
no measured figure is typed by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import project_root
from .latency.measure import environment_record
from .machine import cpu_generation, git_state, hardware_tag, isa_flags, now
from .storage import save_json

RESULTS = Path("benchmarks") / "results"  # in the project folder
# What every record carries beside its benchmark's own figures.
PROVENANCE = ("benchmark", "headline", "date", "command", "git", "machine")
# The ISA flags a table shows beside torch's capability ("AVX512" alone cannot say whether bf16 is native).
SHOWN_FLAGS = ("avx512_bf16", "amx_tile")
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
_MAX_SUFFIX = 99


def results_root() -> Path:
    """``benchmarks/results`` of the project folder (:func:`~fasterseg_core.config.project_root`)."""
    return project_root() / RESULTS


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed, e.g. ``python benchmarks/data.py --batches 12`` (``argv``: default ``sys.argv``).

    A script path that a re-execution made absolute is shown relative to the working directory again.
    """
    args = list(sys.argv if argv is None else argv)
    if args and Path(args[0]).is_absolute():
        try:
            args[0] = str(Path(args[0]).relative_to(Path.cwd()))
        except ValueError:
            pass
    return shlex.join([Path(sys.executable).name, *args])


def machine_record(device: str = "cpu") -> dict[str, Any]:
    """This machine as a record names it: :func:`~fasterseg_core.latency.measure.environment_record` (CPU model,
    torch's ISA capability, threads, GPU and driver, versions), the hardware tag and the CPU's ISA flags."""
    return environment_record(device) | {"hardware_tag": hardware_tag(), "cpu_flags": isa_flags(),
                                         "cpu_generation": cpu_generation()}


def record_path(folder: Path, name: str, command: str, sha: str | None = None) -> Path:
    """``folder/<name>.json``, or the first free ``-N`` suffix when that file holds another measurement's record:
    another command's, or the same command's at another commit than ``sha``.

    Raises:
        FileExistsError: 99 records of other measurements already hold the name.
    """
    for n in range(1, _MAX_SUFFIX + 1):
        path = folder / f"{name}{'' if n == 1 else f'-{n}'}.json"
        if not path.exists() or _measurement_of(path) == (command, sha):
            return path
    raise FileExistsError(f"{_MAX_SUFFIX} records named {name}-* under {folder}: move some aside")


def write_record(
    benchmark: str,
    payload: Mapping[str, Any],
    argv: Sequence[str] | None = None,
    *,
    headline: str,
    name: str = "",
    command: str = "",
    git: Mapping[str, Any] | None = None,
    date: str = "",
    device: str = "cpu",
    root: Path | None = None,
) -> Path:
    """Write one run of a benchmark to ``<root>/<benchmark>/<name>.json`` and return the path.

    Args:
        benchmark: the benchmark's name (its script's stem), also the folder.
        payload: the benchmark's own figures (JSON-ready); it must not hold the :data:`PROVENANCE` keys.
        argv: the command line (default ``sys.argv``), recorded as ``python <argv…>``.
        headline: the one line ``python -m fasterseg_core results`` shows for this record.
        name: the file name without suffix (default ``<hardware tag>-<date>``).
        command: the command to record instead of ``argv`` (e.g. the ``make report`` a record describes).
        git: the commit to record instead of this checkout's (e.g. the one a report ran at).
        date: ISO date to record (default today).
        device: the device the figures were measured on (``cuda`` adds the GPU and driver).
        root: the records folder (default :func:`results_root`).
    """
    clash = sorted(set(payload) & set(PROVENANCE))
    if clash:
        raise ValueError(f"the payload of a {benchmark} record must not set {clash}: write_record sets them")
    if not headline or "\n" in headline:
        raise ValueError(f"a {benchmark} record needs a one-line headline, got {headline!r}")
    date = date or dt.date.today().isoformat()
    command = command or command_line(argv)
    machine = machine_record(device)
    record = {"benchmark": benchmark, "headline": headline, "date": date, "command": command,
              "git": dict(git) if git is not None else git_state(), "machine": machine, "recorded_at": now(),
              **payload}
    folder = (root or results_root()) / benchmark
    path = record_path(folder, name or f"{machine['hardware_tag']}-{date}", command, record["git"].get("sha"))
    save_json(record, path)
    return path


@dataclass(frozen=True)
class Record:
    """One record file: where it is (``path``; ``shown``: relative to the project) and what it holds."""

    path: Path
    shown: str
    data: dict[str, Any]

    @property
    def benchmark(self) -> str:
        return str(self.data.get("benchmark") or self.path.parent.name)

    @property
    def machine(self) -> dict[str, Any]:
        return self.data.get("machine") or {}

    @property
    def machine_key(self) -> tuple[str, str, str, str, str]:
        """What tells machine kinds apart: hardware tag, CPU model, torch's ISA capability, CPU generation (a
        Zen 4 and a Zen 5 are both "AMD EPYC" with AVX512), GPU."""
        m = self.machine
        return (str(m.get("hardware_tag")), str(m.get("cpu_model")), str(m.get("cpu_isa")),
                str(m.get("cpu_generation", "")), str(m.get("gpu_name")))

    @property
    def cpu(self) -> str:
        """``AMD EPYC (AVX512, avx512_bf16)``: the CPU model, torch's capability and the decisive ISA flags."""
        m = self.machine
        isa = [*filter(None, [m.get("cpu_isa")]), *(f for f in m.get("cpu_flags") or [] if f in SHOWN_FLAGS)]
        isa += [m["cpu_generation"]] if m.get("cpu_generation") else []
        cpu = f"{m.get('cpu_model') or '?'}" + (f" ({', '.join(isa)})" if isa else "")
        return f"{m['gpu_name']}; {cpu}" if m.get("gpu_name") else cpu

    @property
    def commit(self) -> str:
        git = self.data.get("git") or {}
        sha = git.get("sha")
        return "?" if not sha else sha[:7] + ("+dirty" if git.get("dirty") else "")

    @property
    def headline(self) -> str:
        text = str(self.data.get("headline") or "—")
        return f"(transcribed) {text}" if self.data.get("migrated_from") else text

    @property
    def order(self) -> tuple[str, str, int, str]:
        """Oldest first: date, time of writing (where recorded), the name's ``-N`` suffix, the name."""
        date = str(self.data.get("date", ""))
        rest = self.path.stem.split(date, 1)[1] if date and date in self.path.stem else ""
        suffix = re.fullmatch(r".*?-(\d+)", rest)
        return date, str(self.data.get("recorded_at", "")), int(suffix.group(1)) if suffix else 1, self.path.name


def _measurement_of(path: Path) -> tuple[str | None, str | None] | None:
    """The command and commit an existing record names; ``None`` for an unreadable file (never overwritten)."""
    try:
        data = _read(path)
    except (ValueError, TypeError):
        return None
    return data.get("command"), (data.get("git") or {}).get("sha")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON record ({e})") from e
    if not isinstance(data, dict):
        raise TypeError(f"{path}: a record is a JSON object, got {type(data).__name__}")
    return data


def load_records(root: Path | None = None) -> list[Record]:
    """Every record under ``root`` (default :func:`results_root`): ``<benchmark>/*.json``, oldest first.

    Raises:
        ValueError: a file that is not JSON; TypeError: JSON that is not an object (both name the file).
    """
    root = root or results_root()
    base = root.parents[1] if len(root.parents) > 1 else root
    records = [Record(p, str(p.relative_to(base)), _read(p)) for p in sorted(root.glob("*/*.json"))]
    return sorted(records, key=lambda r: (r.order, r.benchmark))


def newest_per_benchmark_and_machine(records: Iterable[Record]) -> list[Record]:
    """The newest record of each (benchmark, stage, machine kind), void ones left out, sorted by benchmark and
    machine. The stage and the fixed settings are ``recipe.py``'s (``--stage``, ``--set``): a teacher's length
    and a student's recipe are different questions, and so are two teacher lengths."""
    newest: dict[tuple[str, str, tuple[str, ...]], Record] = {}
    for r in sorted(records, key=lambda r: r.order):
        if not r.data.get("void"):
            question = f"{r.data.get('stage', '')} {json.dumps(r.data.get('set') or {}, sort_keys=True)}"
            newest[r.benchmark, question, r.machine_key] = r
    return sorted(newest.values(), key=lambda r: (r.benchmark, r.machine_key, str(r.data.get("stage", ""))))


def results_frame(records: Iterable[Record]) -> pd.DataFrame:
    """One row per record: benchmark, machine (hardware tag), CPU (ISA), date, commit, headline, record."""
    rows = [{"benchmark": r.benchmark, "machine": r.machine.get("hardware_tag", "?"), "CPU (ISA)": r.cpu,
             "date": r.data.get("date", "?"), "commit": r.commit, "headline": r.headline, "record": r.shown}
            for r in records]
    columns = ["benchmark", "machine", "CPU (ISA)", "date", "commit", "headline", "record"]
    return pd.DataFrame(rows, columns=columns)


def text_table(frame: pd.DataFrame) -> str:
    """``frame`` as plain text for a terminal, every column left-aligned."""
    cells = frame.astype(str)
    widths = {c: max([len(c), *cells[c].str.len()]) for c in cells.columns}
    return cells.to_string(index=False, justify="left", formatters={c: f"{{:<{w}}}".format for c, w in widths.items()})


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table (every cell as text, ``|`` escaped)."""
    lines = [list(map(str, frame.columns)), ["---"] * len(frame.columns), *frame.astype(str).values.tolist()]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in lines)


def readme_block(records: Iterable[Record]) -> str:
    """The README's measured rows: the newest ``make report`` record (``report``) per profile and machine kind."""
    newest: dict[tuple[str, tuple[str, ...]], Record] = {}
    for r in sorted(records, key=lambda r: r.order):
        if r.benchmark == "report" and not r.data.get("void"):
            newest[str(r.data.get("profile")), r.machine_key] = r
    rows = [newest[k] for k in sorted(newest)]
    # narrow enough for the README: the CPU names the machine kind, and every record lies under benchmarks/results/
    frame = results_frame(rows).drop(columns=["benchmark", "machine"]).rename(columns={"headline": "make report"})
    frame["record"] = [str(r.path.relative_to(r.path.parents[1])) for r in rows]
    frame.insert(0, "profile", [str(r.data.get("profile")) for r in rows])
    return markdown_table(frame.rename(columns={"record": "record (benchmarks/results/)"}))


def update_readme(text: str, block: str) -> str:
    """``text`` with everything between :data:`README_BEGIN` and :data:`README_END` replaced by ``block``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README needs a line {README_BEGIN} and, after it, a line {README_END}")
    return text[: start + len(README_BEGIN)] + "\n" + block + "\n" + text[end:]


def readme_rows(text: str) -> str:
    """What stands between the README's markers now (without the newlines next to them)."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README needs a line {README_BEGIN} and, after it, a line {README_END}")
    return text[start + len(README_BEGIN) : end].strip("\n")
