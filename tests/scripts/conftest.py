"""Numbered scripts start with a digit, so they are loaded with importlib (as the notebooks do)."""
import importlib
import os
import signal

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


@pytest.fixture
def run_with_ctrl_c():
    """run(script, argv, step) runs script.main(argv) and sends a real SIGINT (Ctrl-C) while step `step` is
    being computed (when its ray batch is drawn). Returns (the SystemExit status, the batches drawn)."""

    def run(script, argv, step):
        real_sample = script.sample_ray_batch
        calls = []

        def sample_then_ctrl_c(*args, **kwargs):
            calls.append(1)
            if len(calls) == step:
                os.kill(os.getpid(), signal.SIGINT)
            return real_sample(*args, **kwargs)

        script.sample_ray_batch = sample_then_ctrl_c
        try:
            with pytest.raises(SystemExit) as exit_info:
                script.main(argv)
        finally:
            script.sample_ray_batch = real_sample
        return exit_info.value.code, len(calls)

    return run
