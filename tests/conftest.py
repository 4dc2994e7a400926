"""Shared pytest set-up: import the project from the repo root, find the shared data, mark GPU tests."""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Real data sets live beside the project (../shared/data), never inside it; tests that need them skip cleanly.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LEGO_DIR = SHARED_DATA / "nerf_synthetic" / "lego"


def gpu_available() -> bool:
    try:
        import torch
        import cupy  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU and CuPy (skipped otherwise)")
    config.addinivalue_line("markers", "slow: trains a model or executes a notebook (runs in CI too)")


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def lego_dir():
    if not (LEGO_DIR / "transforms_train.json").exists():
        pytest.skip(f"real lego scene not found at ../shared/data/nerf_synthetic/lego")
    return LEGO_DIR
