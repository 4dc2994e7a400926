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


def exit_status(main, argv) -> int:
    """The exit status a script's command line would end with: 0 when `run_main(main, argv)` returns, else the
    SystemExit code it raises (2 for a one-line error, 3 for a dead model, ...)."""
    from common.cli import run_main

    try:
        run_main(main, argv)
    except SystemExit as exit_info:
        return exit_info.code
    return 0


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


@pytest.fixture(scope="session")
def local_ray_cluster(tmp_path_factory):
    """A real local Ray cluster (`ray start --head`, 2 CPUs), started once for the session and stopped after it;
    yields the address to pass as `ray_address`. Skips where Ray is not installed (requirements-cluster.txt)."""
    import os
    import socket
    import subprocess

    pytest.importorskip("ray", reason="Ray not installed (pip install -r requirements-cluster.txt)")
    ray_cli = Path(sys.executable).parent / "ray"
    with socket.socket() as s:  # a free port for the head's GCS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp_dir = tmp_path_factory.mktemp("ray")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO_ROOT))
    subprocess.run([str(ray_cli), "start", "--head", "--num-cpus=2", f"--port={port}", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                   check=True, env=env, capture_output=True, timeout=120)
    address = f"127.0.0.1:{port}"
    try:
        yield address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([str(ray_cli), "stop", "--force"], env=env, capture_output=True, timeout=120)
