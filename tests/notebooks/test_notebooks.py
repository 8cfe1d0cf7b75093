"""Every notebook in notebooks/ runs top to bottom, in under a minute, without an error.

Notebooks are found by glob, so a new one is tested the moment it is added. Each runs in a
fresh `python3` kernel with notebooks/ as its working directory (so `data/...` paths work)
and matplotlib on its non-interactive Agg backend.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
TIME_LIMIT = 60  # seconds, per notebook


def test_notebooks_are_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} keep outputs; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_uses_the_public_api_only(path):
    nb = nbformat.read(path, as_version=4)
    private = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
               and ("isthmus._" in cell.source or "._core" in cell.source)]
    assert not private, f"{path.name}: cells {private} reach into private modules"


@pytest.mark.timeout(TIME_LIMIT * 2)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    # The kernel inherits this process's environment.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's path notice
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=TIME_LIMIT,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    started = time.monotonic()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    elapsed = time.monotonic() - started
    assert elapsed < TIME_LIMIT, f"{path.name} took {elapsed:.0f} s; the limit is {TIME_LIMIT} s"
    # A warning is an error in the test suite; hold notebooks to the same rule.
    warned = [(i, out.text) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.outputs
              if out.output_type == "stream" and out.name == "stderr" and "Warning" in out.text]
    assert not warned, f"{path.name}: warnings in cells {warned}"
