"""Benchmark records (fasterseg_core.records): written with their provenance, never over another command's,
read back, the newest per benchmark and machine listed; and the records committed under benchmarks/results."""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path

import pytest

from fasterseg_core.eta import REPORT_TIMES
from fasterseg_core.machine import ISA_FLAGS, isa_flags
from fasterseg_core.records import (
    PROVENANCE,
    README_BEGIN,
    README_END,
    RESULTS,
    load_records,
    newest_per_benchmark_and_machine,
    readme_block,
    readme_rows,
    record_path,
    results_frame,
    write_record,
)

REPO = Path(__file__).resolve().parents[1]


def test_a_record_carries_its_provenance_and_never_replaces_another_measurement(tmp_path):
    path = write_record("data", {"images_per_s": 61.0}, ["benchmarks/data.py"], headline="61 img/s", root=tmp_path)
    record = json.loads(path.read_text())
    assert path.parent == tmp_path / "data" and path.name == f"{record['machine']['hardware_tag']}-{record['date']}.json"
    assert set(PROVENANCE) <= set(record) and record["images_per_s"] == 61.0
    assert record["command"].endswith("benchmarks/data.py") and record["date"] == dt.date.today().isoformat()
    assert set(record["git"]) == {"sha", "dirty"}
    machine = record["machine"]
    assert {"cpu_model", "cpu_isa", "torch_threads", "torch_version", "hardware_tag"} <= set(machine)
    assert machine["cpu_flags"] == isa_flags() and set(machine["cpu_flags"]) <= set(ISA_FLAGS)
    other = write_record("data", {"images_per_s": 11.0}, ["benchmarks/data.py", "--batches", "3"],
                         headline="11 img/s", root=tmp_path)
    assert other.name == path.name.replace(".json", "-2.json")
    assert json.loads(path.read_text())["images_per_s"] == 61.0  # the first command's record stands
    again = write_record("data", {"images_per_s": 62.0}, ["benchmarks/data.py"], headline="62 img/s", root=tmp_path)
    assert again == path and json.loads(path.read_text())["images_per_s"] == 62.0  # its own command's rerun
    # the same command at another commit measured other code: its record goes beside, the first one stands
    later = write_record("data", {"images_per_s": 70.0}, ["benchmarks/data.py"], headline="70 img/s", root=tmp_path,
                         git={"sha": "0" * 40, "dirty": False})
    assert later.name == path.name.replace(".json", "-3.json")
    assert json.loads(path.read_text())["images_per_s"] == 62.0


def test_a_record_needs_a_one_line_headline_and_keeps_provenance_its_own(tmp_path):
    with pytest.raises(ValueError, match="must not set"):
        write_record("data", {"date": "2020-01-01"}, ["x.py"], headline="h", root=tmp_path)
    with pytest.raises(ValueError, match="one-line headline"):
        write_record("data", {}, ["x.py"], headline="two\nlines", root=tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "n.json").write_text("{broken")  # unreadable: another command's, never overwritten
    assert record_path(tmp_path / "d", "n", "python x.py").name == "n-2.json"


def _record(root: Path, benchmark: str, name: str, date: str, cpu: str, **extra) -> None:
    machine = {"hardware_tag": "cpu-2core", "cpu_model": cpu, "cpu_isa": "AVX2"}
    data = {"benchmark": benchmark, "headline": f"{benchmark} {name}", "date": date, "command": f"python {name}",
            "git": {"sha": "0123456789abcdef", "dirty": False}, "machine": machine, **extra}
    (root / benchmark).mkdir(parents=True, exist_ok=True)
    (root / benchmark / f"{name}.json").write_text(json.dumps(data))


def test_the_newest_record_per_benchmark_and_machine(tmp_path):
    root = tmp_path / "benchmarks" / "results"
    _record(root, "train", "cpu-2core-2026-12-03", "2026-12-03", "AMD EPYC")
    _record(root, "train", "cpu-2core-2026-12-06", "2026-12-06", "AMD EPYC")
    _record(root, "train", "cpu-2core-2026-12-06-2", "2026-12-06", "AMD EPYC")  # later the same day
    _record(root, "train", "cpu-2core-2026-12-07", "2026-12-07", "AMD EPYC", void="a disturbed host")
    _record(root, "train", "cpu-2core-2026-11-27", "2026-11-27", "Intel Xeon", migrated_from="README.md@abc")
    _record(root, "data", "cpu-2core-2026-11-26", "2026-11-26", "Intel Xeon")
    records = load_records(root)
    assert [r.path.stem for r in records][:2] == ["cpu-2core-2026-11-26", "cpu-2core-2026-11-27"]
    newest = newest_per_benchmark_and_machine(records)
    assert [(r.benchmark, r.path.stem) for r in newest] == [
        ("data", "cpu-2core-2026-11-26"), ("train", "cpu-2core-2026-12-06-2"), ("train", "cpu-2core-2026-11-27")]
    frame = results_frame(newest)
    assert list(frame.columns) == ["benchmark", "machine", "CPU (ISA)", "date", "commit", "headline", "record"]
    row = frame.iloc[2]
    assert row["CPU (ISA)"] == "Intel Xeon (AVX2)" and row["commit"] == "0123456"
    assert row["headline"].startswith("(transcribed) ")  # a transcribed record says so
    assert frame.iloc[1]["record"] == "benchmarks/results/train/cpu-2core-2026-12-06-2.json"


def test_the_records_folders_other_code_reads_are_the_writers():
    from fasterseg_core.analysis.summary import RECIPES

    assert REPORT_TIMES == RESULTS / "report" and RECIPES == RESULTS / "recipe"


def test_every_committed_record_loads_with_commit_machine_command_and_date():
    records = load_records(REPO / RESULTS)
    assert records, "no records under benchmarks/results"
    assert not list((REPO / RESULTS).glob("*.json")), "a loose JSON file: records live in <benchmark>/"
    for r in records:
        data = r.data
        assert set(PROVENANCE) <= set(data), f"{r.shown} lacks {set(PROVENANCE) - set(data)}"
        assert data["benchmark"] == r.path.parent.name, r.shown
        assert dt.date.fromisoformat(data["date"]), r.shown
        assert data["command"] and "\n" not in data["headline"], r.shown
        assert set(data["git"]) >= {"sha", "dirty"} and data["git"]["sha"], r.shown
        assert {"hardware_tag", "cpu_model"} <= set(data["machine"]), r.shown
        for raw in data.get("raw", []):  # raw logs a record cites are committed beside it
            assert (REPO / raw).is_file(), f"{r.shown}: {raw} is missing"


def test_the_readme_measured_rows_are_generated_from_the_records():
    readme = (REPO / "README.md").read_text()
    assert readme_rows(readme) == readme_block(load_records(REPO / RESULTS)), (
        "README.md's measured rows differ from benchmarks/results: python -m fasterseg_core results --readme README.md")


BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_every_benchmark_writes_a_record(script):
    tree = ast.parse(script.read_text())
    imports = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "fasterseg_core.records" for alias in node.names}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id == "write_record"]
    assert "write_record" in imports and calls, f"{script.name} does not write its result with records.write_record"
    for call in calls:
        assert call.args and isinstance(call.args[0], ast.Constant), f"{script.name}: name the benchmark literally"
        assert call.args[0].value == script.stem or script.stem == "report_time", (
            f"{script.name} writes its records under {call.args[0].value}/, not {script.stem}/")
        assert any(k.arg == "headline" for k in call.keywords)


def test_the_results_command_lists_the_newest_record_per_benchmark_and_machine(tmp_path, capsys):
    from fasterseg_core.cli import main

    root = tmp_path / "benchmarks" / "results"
    _record(root, "train", "cpu-2core-2026-12-03", "2026-12-03", "AMD EPYC")
    _record(root, "train", "cpu-2core-2026-12-06", "2026-12-06", "AMD EPYC")
    _record(root, "search", "cpu-2core-2026-11-27", "2026-11-27", "Intel Xeon")
    assert main(["results", "--root", str(root), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| benchmark | machine | CPU (ISA) | date | commit | headline | record |"
    assert lines[2:] == [
        ("| search | cpu-2core | Intel Xeon (AVX2) | 2026-11-27 | 0123456 | search cpu-2core-2026-11-27 | "
         "benchmarks/results/search/cpu-2core-2026-11-27.json |"),
        ("| train | cpu-2core | AMD EPYC (AVX2) | 2026-12-06 | 0123456 | train cpu-2core-2026-12-06 | "
         "benchmarks/results/train/cpu-2core-2026-12-06.json |")]
    assert main(["results", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "train cpu-2core-2026-12-06" in text and "2026-12-03" not in text


def test_the_readme_rows_are_rewritten_from_the_report_records(tmp_path, capsys):
    from fasterseg_core.cli import main

    root = tmp_path / "benchmarks" / "results"
    for date in ("2026-12-02", "2026-12-07"):
        _record(root, "report", f"camvid-cpu-cpu-2core-{date}", date, "AMD EPYC", profile="camvid-cpu")
    _record(root, "train", "cpu-2core-2026-12-08", "2026-12-08", "AMD EPYC", profile="camvid-cpu")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_BEGIN}\nhand-typed\n{README_END}\nrest\n")
    args = ["results", "--root", str(root), "--readme", str(readme)]
    assert main([*args, "--check"]) == 1 and "hand-typed" in readme.read_text()
    assert main(args) == 0
    rows = readme_rows(readme.read_text()).splitlines()
    assert rows[0] == "| profile | CPU (ISA) | date | commit | make report | record (benchmarks/results/) |"
    assert len(rows) == 3 and "| 2026-12-07 |" in rows[2]  # one row per profile and machine kind: the newest report
    assert readme.read_text().endswith(f"{README_END}\nrest\n")
    assert main([*args, "--check"]) == 0
    capsys.readouterr()
