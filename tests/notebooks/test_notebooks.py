"""Every notebook in notebooks/ runs top to bottom without an error, and is stored executed, with its outputs.

The notebooks are executed headless with nbclient, in a kernel that runs *this* interpreter (the project's
virtual environment), from the notebooks/ folder, with matplotlib's non-interactive Agg backend.
"""
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _ids(paths):
    return [path.stem for path in paths]


@pytest.fixture
def python3_kernel_of_this_interpreter(tmp_path, monkeypatch):
    """Make the kernel name "python3" start this interpreter.

    Jupyter looks kernelspecs up in JUPYTER_PATH before the user's and the environment's folders, so a
    python3 kernelspec installed for another Python (a conda base, the system Python) cannot shadow the
    project's virtual environment, where torch and the project's requirements are installed.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (this interpreter)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits this environment: no window ever opens
    return "python3"


# Absolute paths of the machine that executed a notebook must not end up in its stored outputs.
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/tmp/|/home/|/root/|/Users/|[A-Z]:\\\\)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_executed_top_to_bottom_without_errors(path):
    # A reader sees the figures before running anything, so notebooks are committed with their outputs, from one
    # clean run: every code cell executed once, in order, none ending in an error, no machine paths in the outputs.
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code_cells]
    assert counts == list(range(1, len(code_cells) + 1)), (
        f"{path.name}: execution counts {counts}: run the notebook top to bottom in a fresh kernel and save it")
    errors = [i for i, cell in enumerate(code_cells) if any(out.output_type == "error" for out in cell.outputs)]
    assert not errors, f"{path.name}: code cells {errors} end in an error"
    for i, cell in enumerate(code_cells):
        text = json.dumps([out for out in cell.outputs if out.output_type != "display_data"])
        match = MACHINE_PATH.search(text)
        assert match is None, f"{path.name}: code cell {i} prints a path of this machine ({match.group(0)}...)"
    assert any(out.output_type == "display_data" for cell in code_cells for out in cell.outputs), (
        f"{path.name}: no figure in the stored outputs")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes_without_error(path, python3_kernel_of_this_interpreter):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=python3_kernel_of_this_interpreter,
                            resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    try:
        client.execute()
    except CellExecutionError as err:
        # The message holds the failing cell's source and the traceback from the kernel.
        pytest.fail(f"{path.name}: a cell raised an error\n{err}", pytrace=False)
