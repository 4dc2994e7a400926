"""Numbered scripts start with a digit, so they are loaded with importlib (as the notebooks do)."""
import importlib

import pytest


@pytest.fixture(scope="session")
def nerf_script():
    return importlib.import_module("01_nerf")


@pytest.fixture(scope="session")
def hashnerf_script():
    return importlib.import_module("04_hashnerf")


@pytest.fixture
def single_thread():
    """Run the test on one CPU thread. Resume tests compare weights bit for bit, and the hash table's gradient is
    a scatter-add whose float summation order depends on how PyTorch splits it over threads; with one thread
    two runs of the same steps give the same bits, so any difference left is a resume bug."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
