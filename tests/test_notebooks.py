"""Stage notebooks: static hygiene (house style §3.5-3.6) and, marked ``notebooks``, each notebook as the
smoke pipeline (``python -m fasterseg_core report --profile smoke``) executed it through papermill."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from fasterseg_core import runs
from fasterseg_core.config import load_config
from fasterseg_core.runs import STAGES

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# every numbered notebook in the folder, whether or not the stage table knows it (the test below checks)
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
REQUIRED_PARAMETERS = {"profile", "overrides", "hardware_tag"}
MAX_CELL_LINES = 12  # house style: about 10 lines per cell at most


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code(cell: nbformat.NotebookNode) -> ast.Module:
    # IPython magics and shell escapes are not Python; a stage notebook should not need them anyway
    source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
    return ast.parse(source)


def test_there_is_a_data_notebook():
    assert [p.stem for p in NOTEBOOKS][:1] == ["00_data"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
class TestHygiene:
    def test_named_after_a_pipeline_stage(self, path):
        assert path.stem in STAGES, f"{path.name}: stage notebooks are named {list(STAGES)}"

    def test_committed_without_outputs(self, path):
        for i, cell in enumerate(_read(path).cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} cell {i} has outputs; run `make strip-notebooks`"
                )
        assert "papermill" not in _read(path).metadata, f"{path.name} is an executed copy; commit the source"

    def test_papermill_reads_every_parameter(self, path):
        """The driver's parameters, each read by papermill's parser (a comment with ':' or '=' used to make it
        print "Unable to parse line" and "Passed unknown parameter" for every stage)."""
        from papermill.translators import PythonTranslator

        cell = next(c for c in _read(path).cells if "parameters" in c.metadata.get("tags", []))
        names = [p.name for p in PythonTranslator.inspect(cell)]
        assert names == ["profile", "overrides", "hardware_tag", "force"], f"{path.name}: {names}"

    def test_kernelspec_is_python3(self, path):
        assert _read(path).metadata.get("kernelspec", {}).get("name") == "python3"

    def test_title_first_then_parameters_then_config(self, path):
        cells = _read(path).cells
        assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
        code = [c for c in cells if c.cell_type == "code"]
        assert [c for c in code if "parameters" in c.metadata.get("tags", [])] == code[:1], (
            f"{path.name}: exactly one cell tagged 'parameters', the first code cell"
        )
        assert "load_config(profile, overrides)" in code[1].source
        assert f'start_run(cfg, "{path.stem}"' in "".join(c.source for c in code), (
            f"{path.name} must record its run as stage {path.stem!r} (the pipeline's skip test reads it)"
        )

    def test_parameters_cell_holds_only_literals(self, path):
        cell = next(c for c in _read(path).cells if "parameters" in c.metadata.get("tags", []))
        names = set()
        for stmt in _code(cell).body:
            assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.unparse(stmt)
            assert isinstance(stmt.targets[0], ast.Name), ast.unparse(stmt)
            ast.literal_eval(stmt.value)  # raises on anything but a literal
            names.add(stmt.targets[0].id)
        assert REQUIRED_PARAMETERS <= names

    def test_thin_cells_without_definitions(self, path):
        for i, cell in enumerate(_read(path).cells):
            if cell.cell_type != "code":
                continue
            where = f"{path.name} cell {i}"
            assert len(cell.source.strip().splitlines()) <= MAX_CELL_LINES, (
                f"{where}: move logic into the package"
            )
            for node in ast.walk(_code(cell)):
                assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), (
                    f"{where}: no def/class in notebooks; put it in fasterseg_core"
                )
                if isinstance(node, ast.ImportFrom):
                    assert all(alias.name != "*" for alias in node.names), f"{where}: star import"
            assert "sys.path" not in cell.source, f"{where}: no sys.path edits; the package is installed"


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stage_ran_under_papermill_with_smoke(path, smoke_pipeline):
    """Each notebook as ``make report PROFILE=smoke`` executed it: its run is complete, it wrote its metrics,
    no cell failed, and it shows at least one figure."""
    assert smoke_pipeline.returncode == 0, smoke_pipeline.stdout[-3000:] + smoke_pipeline.stderr[-3000:]
    cfg = load_config("smoke", smoke_pipeline.overrides)
    executed = cfg.output_dir / "notebooks" / path.name
    assert runs.is_complete(cfg, path.stem), f"{path.name} did not finish its run"
    assert (cfg.output_dir / path.stem / "metrics.json").exists()
    outputs = [o for c in _read(executed).cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no figure"
