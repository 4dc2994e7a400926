"""Numbered scripts start with a digit, so they are loaded with importlib (as the notebooks do)."""
import importlib

import pytest


@pytest.fixture(scope="session")
def nerf_script():
    return importlib.import_module("01_nerf")


@pytest.fixture(scope="session")
def hashnerf_script():
    return importlib.import_module("04_hashnerf")
