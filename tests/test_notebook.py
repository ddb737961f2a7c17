"""notebooks/quickstart.ipynb runs top to bottom in a real kernel, offline, and shows its results inline."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 120  # the whole notebook is meant to finish in under 2 minutes on a CPU


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_quickstart_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOLLM_NOTEBOOK_RESULTS", str(tmp_path))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Afterwards the kernel must still draw inline: picollm's figures never switch the matplotlib backend.
    nb.cells.append(nbformat.v4.new_code_cell("import matplotlib\nprint('backend', matplotlib.get_backend())"))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    print(f"quickstart.ipynb ran in {time.perf_counter() - started:.1f}s")
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    shown = [out.get("data", {}) for out in outputs if out.output_type in ("execute_result", "display_data")]
    images = sum("data:image/png;base64," in data.get("text/html", "") for data in shown)
    assert images >= 4  # the loss curves, inspect's bars, the noise figures, the study's plots
    text = "\n".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "offline" in text  # the fallback to the built-in corpus says so
    assert "step/s" in text and "trial/s" in text  # progress bars in a kernel, whose stderr is no TTY
    assert (tmp_path / "studies" / "quick" / "best.yaml").is_file()
    assert "optim:" in text  # the exported best config was printed
    assert "backend module://matplotlib_inline.backend_inline" in text
