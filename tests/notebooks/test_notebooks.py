"""Every notebook in notebooks/ runs top to bottom without an error, and is stored without outputs.

The notebooks are executed headless with nbclient, in a kernel that runs *this* interpreter (the project's
virtual environment), from the notebooks/ folder, with matplotlib's non-interactive Agg backend.
"""
import json
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path):
    # Outputs (images, timings, progress bars) belong to a run, not to the repository: CI executes the notebooks.
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs; clear them before committing"


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
