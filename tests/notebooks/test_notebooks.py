"""Every notebook in notebooks/ runs top to bottom without an error, and is stored executed, with its outputs.

The notebooks are executed headless with nbclient, in a kernel that runs *this* interpreter (the project's
virtual environment), from the notebooks/ folder, with matplotlib's non-interactive Agg backend.
"""
import json
import re
import sys
import time
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


# --- 3D scenes (common/scene3d.py): stored as self-contained pages, shown without a server or a network ---
SCENE3D_MARK = "# 3D (common/scene3d.py)"  # how a 3D cell's source starts
NOTEBOOKS_WITH_3D = ("01_nerf", "02_mipnerf", "03_mipnerf360", "04_hashnerf", "05_instant_neus")
# Each stored scene is one page holding viser's client (about 0.8 MB of inline JavaScript) and the scene's data;
# a notebook with two scenes and its figures weighs about 2.3 MB. The limit keeps clones and diffs reasonable.
NOTEBOOK_MAX_BYTES = 4_000_000
# Any address a page could fetch from. The SVG namespace http://www.w3.org/2000/svg (an XML name in viser's
# inline icon, never requested) is the one exception.
FETCHABLE_URL = re.compile(r"\b(?:https?|wss?|ftp)://(?!www\.w3\.org/2000/svg)", re.IGNORECASE)


def _scene3d_pages(path):
    """(cell number, the text/html of each output) for every 3D cell of the notebook."""
    nb = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    return [(i, [out.get("data", {}).get("text/html", "") for out in cell.outputs])
            for i, cell in enumerate(code_cells) if cell.source.startswith(SCENE3D_MARK)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_stays_below_its_size_limit(path):
    size = path.stat().st_size
    assert size < NOTEBOOK_MAX_BYTES, f"{path.name} is {size / 1e6:.1f} MB, above {NOTEBOOK_MAX_BYTES / 1e6:.0f} MB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_3d_scenes_are_self_contained(path):
    pages = _scene3d_pages(path)
    if path.stem in NOTEBOOKS_WITH_3D:
        assert pages, f"{path.name}: no 3D cell (a code cell starting with {SCENE3D_MARK!r})"
    for cell, outputs in pages:
        scenes = [html for html in outputs if "__VISER_EMBED_DATA__" in html]
        assert len(scenes) == 1, f"{path.name}: 3D cell {cell} has {len(scenes)} stored scenes, not 1"
        assert "<iframe srcdoc=" in scenes[0]
        for html in outputs:
            match = FETCHABLE_URL.search(html)
            assert match is None, f"{path.name}: 3D cell {cell} names an address: {html[match.start():][:60]!r}"


def test_a_stored_3d_scene_draws_in_a_browser_without_any_request():
    # The first scene of 01, as stored, in headless Chromium with the network switched off: every resource the page
    # asks for is inside it (data: and blob: addresses), and the 3D canvas draws something.
    import html as html_module

    from tests.browser import Browser

    (cell, outputs), *_ = _scene3d_pages(NOTEBOOKS_DIR / "01_nerf.ipynb")
    stored = next(out for out in outputs if "__VISER_EMBED_DATA__" in out)
    page_html = html_module.unescape(re.search(r'srcdoc="([^"]*)"', stored).group(1))
    with Browser(width=640, height=480) as browser:
        page = browser.open()
        page.call("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
                  uploadThroughput=-1)
        blank = page.screenshot()
        page.set_content(page_html)
        deadline = time.monotonic() + 30
        shot = blank
        while time.monotonic() < deadline:  # until the scene has been drawn (the canvas is not uniform)
            time.sleep(1.0)
            shot = page.screenshot()
            if shot.reshape(-1, 3).std(axis=0).max() > 20:
                break
    assert shot.reshape(-1, 3).std(axis=0).max() > 20, "the stored scene drew nothing"
    left = [url for url in page.requests if not url.startswith(("data:", "blob:", "about:"))]
    assert not left, f"the stored page asked for {left[:3]}"
