"""Progress bars report where a stage is to the file the pipeline driver watches."""

from __future__ import annotations

from fasterseg_core import progress


def test_a_bar_mirrors_its_position_into_the_progress_file(tmp_path, monkeypatch):
    path = tmp_path / ".progress-02_teacher.json"
    monkeypatch.setenv(progress.ENV, str(path))
    bar = progress.bar(total=10, desc="train seed-12345", disable=False)
    assert progress.read(path)["n"] == 0 and progress.read(path)["total"] == 10  # written at creation
    for _ in range(10):
        bar.update(1)
    bar.close()  # closing writes the final position even within the one-second throttle
    state = progress.read(path)
    assert state["n"] == 10 and state["total"] == 10 and state["desc"] == "train seed-12345"


def test_without_the_variable_or_when_disabled_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    for _ in progress.bar(range(3), desc="x"):
        pass
    monkeypatch.setenv(progress.ENV, str(tmp_path / "p.json"))
    for _ in progress.bar(range(3), desc="x", disable=True):
        pass
    assert not (tmp_path / "p.json").exists() and progress.read(tmp_path / "p.json") is None
