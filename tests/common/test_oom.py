"""Runs that survive running out of GPU memory (issue #25), tested on the CPU by injecting the error.

torch.cuda.OutOfMemoryError can be constructed and raised on a CPU build. `FakeGpu` stands in for a GPU that
holds at most `max_rays` rays at once: it wraps a script's render_rays (or any function of a ray batch) and
raises the error, as the CUDA caching allocator does, whenever a call gets more rays. Injected with
monkeypatch from here only; nothing in the scripts or common/ knows about it.
"""
import dataclasses
import importlib
import json
import sys
import types

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.memory import SMALLEST_RAYS, out_of_memory_errors, render_retrying
from common.training import TrainingRun
from tests.conftest import exit_status

# A few steps on a tiny scene: the built-in scene at 16 x 16 pixels, one test view, no video.
CHEAP = ["--quick", "--device", "cpu", "--backend", "torch", "--downscale", "2", "--n_test_views", "1",
         "--video_frames", "0"]


class FakeGpu:
    """A GPU that fits `max_rays` rays: fn(...) raises torch.cuda.OutOfMemoryError when its first tensor argument
    has more rows. `sizes` lists every call's ray count, `errors` those that failed. A retry loop that does not
    shrink (a broken halving) would spin for ever: after `give_up` injected errors the test fails instead."""

    def __init__(self, fn, max_rays: int, give_up: int = 40):
        self.fn, self.max_rays, self.give_up = fn, max_rays, give_up
        self.sizes, self.errors = [], []

    def __call__(self, *args, **kwargs):
        rays = next(a for a in args if isinstance(a, torch.Tensor)).shape[0]
        self.sizes.append(rays)
        if rays > self.max_rays:
            self.errors.append(rays)
            if len(self.errors) > self.give_up:
                raise AssertionError(f"{len(self.errors)} out-of-memory errors and still retrying: {self.errors}")
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rays} rays' worth "
                                              f"(fake GPU of {self.max_rays} rays)")
        return self.fn(*args, **kwargs)


def _warnings(err: str) -> list[str]:
    """The out-of-memory warning lines of stderr (a progress bar may precede one on the same line)."""
    marker = "warning: GPU out of memory"
    return [line[line.index(marker):] for line in err.splitlines() if marker in line]


def _run(script, argv, capsys):
    """(exit status, stdout, stderr) of run_main(script.main, argv)."""
    status = exit_status(script.main, argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    """The built-in scene, small: 8 training views, 1 val, 1 test, 32 x 32 pixels (RGBA)."""
    from common.data.builtin_scene import write_builtin_scene

    root = tmp_path_factory.mktemp("scene") / "builtin_small"
    write_builtin_scene(root, n_train=8, n_val=1, n_test=1, resolution=32)
    return root


# --- the helpers, alone -------------------------------------------------------------------------------------
def test_the_error_types_are_torchs_and_cupys_when_cupy_is_loaded(monkeypatch):
    assert torch.cuda.OutOfMemoryError in out_of_memory_errors()

    class CupyOutOfMemory(Exception):
        pass

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(memory=types.SimpleNamespace(
        OutOfMemoryError=CupyOutOfMemory)), get_default_memory_pool=lambda: types.SimpleNamespace(
        free_all_blocks=lambda: None))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    assert CupyOutOfMemory in out_of_memory_errors()
    owner = types.SimpleNamespace(chunk=1024)
    calls = []

    def render_once(chunk):
        calls.append(chunk)
        assert len(calls) < 10, f"still retrying after {calls}"  # a halving that does not halve spins for ever
        if chunk > 600:
            raise CupyOutOfMemory("Out of memory allocating 1,073,741,824 bytes")
        return chunk

    assert render_retrying(owner, render_once) == 512 and calls == [1024, 512]


def test_render_retrying_halves_the_chunk_until_the_view_fits_and_keeps_it(capsys):
    def render_fn(rays):
        return rays.sum()

    render_fn.chunk = 1024
    gpu = FakeGpu(render_fn, max_rays=300)
    result = render_retrying(render_fn, lambda chunk: gpu(torch.ones(chunk, 3)), what="test view 0")
    assert float(result) == 256 * 3
    assert gpu.sizes == [1024, 512, 256]
    assert (render_fn.chunk, render_fn.chunk_at_start) == (256, 1024)
    err = capsys.readouterr().err
    assert len(_warnings(err)) == 2 and "test view 0" in err and "--chunk 256" in err
    # The next view starts at the halved chunk: no further error.
    render_retrying(render_fn, lambda chunk: gpu(torch.ones(chunk, 3)))
    assert gpu.sizes[-1] == 256 and len(gpu.errors) == 2


def test_render_retrying_stops_at_the_smallest_chunk_naming_chunk():
    def render_fn(rays):
        return rays

    render_fn.chunk = 1024
    gpu = FakeGpu(render_fn, max_rays=10)
    with pytest.raises(UserError) as info:
        render_retrying(render_fn, lambda chunk: gpu(torch.ones(chunk, 3)), what="a frame of video")
    assert gpu.sizes == [1024, 512, 256, SMALLEST_RAYS]
    message = str(info.value)
    assert "--chunk" in message and "a frame of video" in message and "\n" not in message


def test_other_errors_are_not_taken_for_out_of_memory():
    def render_once(chunk):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        render_retrying(types.SimpleNamespace(chunk=64), render_once)


@dataclasses.dataclass
class _Config:
    outdir: str
    batch_rays: int = 1024
    samples_per_batch: int = 0
    preset: str = "test"


def _training_run(cfg):
    """A TrainingRun on a stand-in scene (what its summary line reads: a name, two 4x4 training cameras)."""
    train = types.SimpleNamespace(cameras=type("Cameras", (list,), {"width": 4, "height": 4})([0, 0]))
    scene = types.SimpleNamespace(name="fake", splits={"train": train})
    return TrainingRun(cfg, "00_fake", scene, "cuda", "torch", save_state=dict, load_state=lambda state: None)


def test_train_step_halves_batch_rays_frees_the_gradients_and_runs_the_step_again(tmp_path, capsys):
    cfg = _Config(outdir=str(tmp_path))
    run = _training_run(cfg)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    seen_grads = []

    def step_body(rays):
        (weight * rays.sum()).sum().backward()  # a gradient exists when the fake allocation fails
        return rays

    gpu = FakeGpu(step_body, max_rays=300)

    def training_step(step):
        seen_grads.append(weight.grad)
        gpu(torch.ones(cfg.batch_rays, 3))

    run.train_step(training_step, 7, optimizer)
    assert gpu.sizes == [1024, 512, 256] and cfg.batch_rays == 256
    assert seen_grads[1] is None and seen_grads[2] is None  # zero_grad(set_to_none) between tries
    assert json.loads((tmp_path / "config.json").read_text())["batch_rays"] == 256
    assert [e["after"]["batch_rays"] for e in run.out_of_memory] == [512, 256]
    assert run.out_of_memory[0] == dict(step=7, before=dict(rays=1024, batch_rays=1024),
                                        after=dict(rays=512, batch_rays=512))
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 2 and "step 7" in lines[-1] and "--batch_rays 256" in lines[-1]


def test_train_step_halves_04s_adaptive_rays_and_sample_budget(tmp_path, capsys):
    cfg = _Config(outdir=str(tmp_path), batch_rays=4096, samples_per_batch=1 << 18)
    run = _training_run(cfg)
    batch = dict(rays=9000)  # what App. E.3 asked for this step
    gpu = FakeGpu(lambda rays: rays, max_rays=3000)
    run.train_step(lambda step: gpu(torch.ones(batch["rays"], 3)), 40, None, batch=batch)
    assert gpu.sizes == [9000, 4500, 2250]
    assert (batch["rays"], cfg.samples_per_batch, cfg.batch_rays) == (2250, 1 << 16, 1024)
    assert "--samples_per_batch 65536" in _warnings(capsys.readouterr().err)[-1]


def test_train_step_stops_in_one_line_at_the_smallest_batch(tmp_path):
    cfg = _Config(outdir=str(tmp_path), batch_rays=512)
    run = _training_run(cfg)
    gpu = FakeGpu(lambda rays: rays, max_rays=20)
    with pytest.raises(UserError) as info:
        run.train_step(lambda step: gpu(torch.ones(cfg.batch_rays, 3)), 3)
    assert gpu.sizes == [512, 256, SMALLEST_RAYS]
    message = str(info.value)
    assert "--batch_rays" in message and "step 3" in message and "kept" in message and "\n" not in message


def test_train_step_lets_other_errors_through(tmp_path):
    run = _training_run(_Config(outdir=str(tmp_path)))

    def training_step(step):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run.train_step(training_step, 1)
    assert run.out_of_memory == []


# --- end to end: 01 (training and rendering), 04 (its adaptive batch), resume, the stops ----------------------
@pytest.fixture(scope="module")
def nerf():
    return importlib.import_module("01_nerf")


@pytest.fixture(scope="module")
def hashnerf():
    return importlib.import_module("04_hashnerf")


def test_nerf_survives_out_of_memory_in_training_and_rendering_learns_and_resumes_with_the_halved_batch(
        nerf, tiny_scene, tmp_path, monkeypatch, capsys):
    """A fake GPU of 200 rays: the quick preset's 512 rays per step fail at step 1 and run again with 256, then
    128; its 1024-ray render chunk (a view here has 256 pixels) fails in the first held-out check and goes down
    to 128. The run still learns (test PSNR 1 dB above the constant image; 1.6 dB measured), records
    the halved values, and a --resume on the same GPU goes on at 128 rays without a new error in training."""
    gpu = FakeGpu(nerf.render_rays, max_rays=200)
    monkeypatch.setattr(nerf, "render_rays", gpu)
    argv = CHEAP + ["--iters", "100", "--eval_every", "50", "--ckpt_every", "100", "--scene", str(tiny_scene),
                    "--outdir", str(tmp_path)]
    status, out, err = _run(nerf, argv, capsys)
    assert status == 0, err
    lines = _warnings(err)
    # 512 -> 256 -> 128 rays at step 1; chunk 1024 -> 512 -> 256 -> 128 at the held-out check of step 50
    assert len(lines) == 5, err
    assert "at step 1 with 512 rays" in lines[0] and "--batch_rays 128" in lines[1] and "--chunk 128" in lines[-1]
    assert gpu.errors == [512, 256, 256, 256, 256]  # a view of 256 pixels fails with chunks 1024, 512 and 256
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["mean_psnr"] > metrics["constant_psnr"] + 1.0, metrics  # 12.48 against 10.87 dB measured
    assert metrics["chunk_after_out_of_memory"] == dict(before=1024, after=128)
    assert json.loads((tmp_path / "config.json").read_text())["batch_rays"] == 128
    header, *rows = (tmp_path / "log.csv").read_text().splitlines()
    assert "batch_rays" in header.split(",")
    state = torch.load(tmp_path / "ckpt_000100.pt", weights_only=False)
    assert state["config"]["batch_rays"] == 128 and [e["step"] for e in state["out_of_memory"]] == [1, 1]

    errors_before = len(gpu.errors)
    status, out, err = _run(nerf, CHEAP + ["--iters", "103", "--resume", "--outdir", str(tmp_path)], capsys)
    assert status == 0, err
    assert "batch_rays=128" in out and "--batch_rays 512 -> 128 at steps 1, 1" in out
    assert not any("rays per step" in line for line in _warnings(err)), err  # training: no new error
    assert json.loads((tmp_path / "config.json").read_text())["batch_rays"] == 128
    assert gpu.errors[errors_before:] == [256, 256, 256]  # only the new render function's chunk, 1024 -> 128


def test_hashnerf_paper_batching_halves_rays_and_sample_budget(hashnerf, tiny_scene, tmp_path, monkeypatch,
                                                               capsys):
    """04 with a sample budget (App. E.3) on a fake GPU of 2000 rays: the step's rays and --samples_per_batch are
    halved until the step fits, and the budget stays halved for the adaptation: no later step fails. (Learning
    through the halvings is 01's test above; 20 steps here, too few to beat a constant image.)"""
    gpu = FakeGpu(hashnerf.render_rays, max_rays=2000)
    monkeypatch.setattr(hashnerf, "render_rays", gpu)
    argv = CHEAP + ["--iters", "20", "--batch_rays", "4096", "--samples_per_batch", "32768", "--chunk", "1024",
                    "--no-dead_model_check", "--scene", str(tiny_scene), "--outdir", str(tmp_path)]
    status, out, err = _run(hashnerf, argv, capsys)
    assert status == 0, err
    lines = _warnings(err)
    assert lines and "with 4096 rays" in lines[0]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["samples_per_batch"] < 32768 and saved["batch_rays"] <= 2048
    assert gpu.errors == [4096, 2048] and max(gpu.sizes[2:]) <= 2000
    assert len(lines) == 2 and "--samples_per_batch 8192" in lines[-1]
    assert len(gpu.sizes) >= 2 + 20  # every step ran (and the test view)


def test_out_of_memory_at_the_smallest_batch_stops_in_one_line_and_keeps_the_checkpoint(nerf, tiny_scene,
                                                                                       tmp_path, monkeypatch, capsys):
    argv = CHEAP + ["--batch_rays", "256", "--scene", str(tiny_scene), "--outdir", str(tmp_path),
                    "--no-dead_model_check"]
    assert _run(nerf, argv + ["--iters", "2"], capsys)[0] == 0
    checkpoint = tmp_path / "ckpt_000002.pt"
    saved = checkpoint.read_bytes()
    monkeypatch.setattr(nerf, "render_rays", FakeGpu(nerf.render_rays, max_rays=50))
    status, out, err = _run(nerf, argv + ["--iters", "4", "--resume"], capsys)
    assert status == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: GPU out of memory at step 3 even with 128 rays") and "--batch_rays" in last
    assert "Traceback" not in err and checkpoint.read_bytes() == saved


def test_render_only_out_of_memory_at_the_smallest_chunk_names_chunk(nerf, tiny_scene, tmp_path, monkeypatch,
                                                                     capsys):
    argv = CHEAP + ["--batch_rays", "128", "--scene", str(tiny_scene), "--outdir", str(tmp_path),
                    "--no-dead_model_check"]
    assert _run(nerf, argv + ["--iters", "1"], capsys)[0] == 0
    monkeypatch.setattr(nerf, "render_rays", FakeGpu(nerf.render_rays, max_rays=50))
    status, out, err = _run(nerf, CHEAP + ["--render_only", "--outdir", str(tmp_path)], capsys)
    assert status == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: GPU out of memory rendering test view 0 even at 128 rays") and "--chunk" in last
    assert (tmp_path / "ckpt_000001.pt").is_file() and "Traceback" not in err


def test_the_mesh_grid_is_evaluated_in_smaller_chunks_after_out_of_memory(capsys):
    from common.mesh import sample_grid

    def density(points):
        return points.norm(dim=-1)

    gpu = FakeGpu(density, max_rays=300)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    values = sample_grid(gpu, aabb, resolution=10, chunk=1024)
    assert gpu.errors == [1000, 512] and max(gpu.sizes[2:]) == 256  # 1000 nodes: chunks of 1024, 512, 256
    assert np.allclose(values, sample_grid(density, aabb, resolution=10))  # every node, in order
    assert len(_warnings(capsys.readouterr().err)) == 2
    with pytest.raises(UserError, match="--mesh_resolution"):
        sample_grid(FakeGpu(density, max_rays=10), aabb, resolution=10, chunk=1024)
