"""The committed notebooks: valid nbformat v4, outputs stripped, and consumers of the project's
code that define nothing of their own (no function, no class)."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["retrain.ipynb", "kpis.ipynb"]


def code_cells(name: str) -> list:
    nb = nbformat.read(NOTEBOOKS / name, as_version=nbformat.NO_CONVERT)
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_valid_v4_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    cells = code_cells(name)
    assert cells
    for c in cells:
        assert c.execution_count is None and c.outputs == [], f"{name} cell {c.get('id')}: outputs not stripped"
    assert {"kernelspec", "language_info"} >= set(nb.metadata), nb.metadata


@pytest.mark.parametrize("name", NAMES)
def test_no_definitions_and_imports_from_the_project(name):
    imported = set()
    for c in code_cells(name):
        tree = ast.parse(c.source)   # no magics either: every cell is plain Python
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defined, f"{name} cell {c.get('id')} defines {[n.name for n in defined]}: put logic in models/"
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module:
                imported.add(n.module.split(".")[0])
            elif isinstance(n, ast.Import):
                imported |= {a.name.split(".")[0] for a in n.names}
    assert "vicino" in imported, f"{name} imports nothing of the project: {sorted(imported)}"


def test_retrain_publishes_through_the_gate_only():
    source = "\n".join(c.source for c in code_cells("retrain.ipynb"))
    assert "train_and_publish(" in source and "publish=True" in source
    assert "force" not in source


@pytest.mark.parametrize("name, variables", [
    ("retrain.ipynb", ["VICINO_NOTEBOOK_DATA", "VICINO_MODEL_DIR", "VICINO_URL", "VICINO_ADMIN_TOKEN",
                       "VICINO_NOTEBOOK_FAST"]),
    ("kpis.ipynb", ["VICINO_URL", "VICINO_ADMIN_TOKEN", "VICINO_KPI_FROM", "VICINO_KPI_TO"]),
])
def test_parameters_come_from_the_environment_in_the_first_cell(name, variables):
    first = code_cells(name)[0].source
    assert all(f'"{v}"' in first or f"'{v}'" in first for v in variables)
