"""Runs that cannot fail silently (issue #9), end to end through the scripts' main().

Each case asserts the one-line message, the exit status, and that nothing already saved is lost.
"""
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.cli import run_main
from tests.conftest import exit_status

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["nerf_script", "hashnerf_script"]
# Cheap runs: a tiny scene (see small_scene) at 16 x 16 pixels, 2-10 steps of 128 rays, one test view, no video.
# A few steps learn less than a constant image would show: warn, do not stop (--no-dead_model_check).
FAST = ["--quick", "--device", "cpu", "--backend", "torch", "--batch_rays", "128", "--downscale", "2",
        "--n_test_views", "1", "--video_frames", "0", "--no-dead_model_check"]


def _run(script, argv, capsys):
    """(exit status, stderr) of run_main(script.main, argv); status 0 when main returns."""
    status = exit_status(script.main, argv)
    return status, capsys.readouterr().err


def _error_line(err: str) -> str:
    """The error line of stderr (progress bars and warnings may precede it); it must be the last line."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    """The built-in scene, small: 8 training views, 1 val, 1 test, 32 x 32 pixels (RGBA)."""
    from common.data.builtin_scene import write_builtin_scene

    root = tmp_path_factory.mktemp("scene") / "builtin_small"
    write_builtin_scene(root, n_train=8, n_val=1, n_test=1, resolution=32)
    return root


def _copy_scene(src: Path, dst: Path, image_fn=None) -> Path:
    """Copy a Blender-layout scene, passing every image through image_fn (uint8 array -> uint8 array)."""
    import imageio.v3 as iio

    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".png" and image_fn is not None:
                iio.imwrite(target, image_fn(iio.imread(path)))
            else:
                target.write_bytes(path.read_bytes())
    return dst


# --- options out of range: refused at parse time --------------------------------------------------------------
@pytest.mark.parametrize("script_name", SCRIPTS)
@pytest.mark.parametrize("flag, value, allowed", [
    ("--iters", "0", ">= 1"), ("--iters", "-5", ">= 1"), ("--ckpt_every", "0", ">= 1"), ("--log_every", "0", ">= 1"),
    ("--batch_rays", "0", ">= 1"), ("--chunk", "0", ">= 1"), ("--lr", "0", "> 0"), ("--seed", "-1", "in [0, 4294967295]"),
])
def test_numeric_options_out_of_range_are_refused_in_one_line(script_name, flag, value, allowed, request, tmp_path,
                                                              capsys):
    script = request.getfixturevalue(script_name)
    status, err = _run(script, ["--quick", flag, value, "--outdir", str(tmp_path / "run")], capsys)
    assert status == 2
    assert err == f"error: {flag} {value} is out of range: it must be {allowed}\n"
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_the_command_line_refuses_iters_0_with_exit_status_2(tmp_path):
    result = subprocess.run([sys.executable, "04_hashnerf.py", "--iters", "0", "--outdir", str(tmp_path / "run")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: --iters 0 is out of range: it must be >= 1\n"


# --- data: non-finite cameras, RGB images ---------------------------------------------------------------------
@pytest.mark.parametrize("script_name", SCRIPTS)
def test_a_nan_pose_is_refused_at_load_naming_file_and_frame(script_name, request, small_scene, tmp_path, capsys):
    script = request.getfixturevalue(script_name)
    scene = _copy_scene(small_scene, tmp_path / "scene")
    transforms = scene / "transforms_train.json"
    meta = json.loads(transforms.read_text())
    meta["frames"][3]["transform_matrix"][1][2] = float("nan")
    transforms.write_text(json.dumps(meta))  # writes the bare word NaN, which Python's json reads back as nan
    status, err = _run(script, FAST + ["--scene", str(scene), "--outdir", str(tmp_path / "run")], capsys)
    assert status == 2
    assert _error_line(err) == (f"error: {transforms}: frame 3 ({meta['frames'][3]['file_path']}) has a non-finite "
                                f"'transform_matrix' (NaN or Infinity); fix or re-download it")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_rgb_images_are_trained_and_scored_on_the_stated_white_background(nerf_script, small_scene, tmp_path,
                                                                          capsys):
    # The same scene as RGBA and as RGB composited on white: with a white background assumed for RGB data,
    # 01_nerf trains and scores both the same way, so the two runs agree to the 8-bit rounding of the images.
    def on_white(rgba):
        alpha = rgba[..., 3:] / 255.0
        return (rgba[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype("uint8")

    rgb_scene = _copy_scene(small_scene, tmp_path / "rgb", on_white)
    results = {}
    for name, scene in (("rgba", small_scene), ("rgb", rgb_scene)):
        argv = FAST + ["--iters", "3", "--scene", str(scene), "--outdir", str(tmp_path / name)]
        results[name] = nerf_script.main(argv)["mean_psnr"]
        warnings = [line for line in capsys.readouterr().err.splitlines()
                    if line.startswith("warning:") and "constant image" not in line]  # 3 steps: not yet learned
        if name == "rgba":
            assert warnings == []
        else:
            assert len(warnings) == 1 and "taken to be on a white background" in warnings[0]
    assert abs(results["rgb"] - results["rgba"]) < 0.05, results


# --- the run folder ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script_name", SCRIPTS)
def test_an_outdir_that_is_a_file_is_one_line_before_any_data_loads(script_name, request, tmp_path, capsys):
    script = request.getfixturevalue(script_name)
    (tmp_path / "notes.txt").write_text("mine")
    status, err = _run(script, FAST + ["--scene", str(tmp_path / "no_scene_here"),
                                       "--outdir", str(tmp_path / "notes.txt")], capsys)
    assert status == 2
    assert _error_line(err) == f"error: --outdir {tmp_path / 'notes.txt'} is a file, not a folder: pass another --outdir"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_second_run_on_a_busy_outdir_is_refused_naming_the_first(hashnerf_script, small_scene, tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); from common.run_folder import RunFolder\n"
         "with RunFolder(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.readline()",
         str(tmp_path / "run"), str(REPO_ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, err = _run(hashnerf_script, FAST + ["--iters", "2", "--scene", str(small_scene),
                                                    "--outdir", str(tmp_path / "run")], capsys)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert status == 2 and f"is in use by process {holder.pid} " in _error_line(err)
    assert not (tmp_path / "run" / "log.csv").exists()


# --- divergence --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_diverging_run_stops_at_that_step_and_keeps_finite_checkpoints(hashnerf_script, small_scene, tmp_path,
                                                                        capsys):
    argv = FAST + ["--iters", "10", "--ckpt_every", "1", "--lr", "1e6", "--lr_final", "1e6", "--scene", str(small_scene),
                   "--outdir", str(tmp_path)]
    status, err = _run(hashnerf_script, argv, capsys)
    assert status == 2
    line = _error_line(err)
    assert line.startswith("error: training diverged at step ") and "--lr" in line
    step = int(line.split("step ")[1].split(":")[0])
    checkpoints = sorted(tmp_path.glob("ckpt_*.pt"))
    assert checkpoints and torch.load(checkpoints[-1], weights_only=False)["step"] == step - 1
    for path in checkpoints:
        state = torch.load(path, weights_only=False)
        assert all(torch.isfinite(t).all() for t in state["field"].values() if t.is_floating_point())


# --- resume against another configuration ------------------------------------------------------------------------
@pytest.mark.slow
def test_resuming_a_hashnerf_folder_with_nerf_is_refused_in_one_line(nerf_script, hashnerf_script, small_scene,
                                                                      tmp_path, capsys):
    hashnerf_script.main(FAST + ["--iters", "2", "--scene", str(small_scene), "--outdir", str(tmp_path)])
    before = sorted(p.name for p in tmp_path.iterdir())
    status, err = _run(nerf_script, FAST + ["--iters", "4", "--resume", "--outdir", str(tmp_path)], capsys)
    assert status == 2 and "written by 04_hashnerf.py, not 01_nerf.py" in _error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_resuming_with_another_scene_is_refused_and_untyped_settings_come_from_the_checkpoint(
        nerf_script, small_scene, tmp_path, capsys):
    nerf_script.main(FAST + ["--iters", "2", "--net_width", "32", "--scene", str(small_scene), "--outdir", str(tmp_path)])
    status, err = _run(nerf_script, FAST + ["--iters", "4", "--resume", "--scene", "lego", "--outdir", str(tmp_path)],
                       capsys)
    assert status == 2 and "--scene lego (the checkpoint has" in _error_line(err)
    metrics = nerf_script.main(["--iters", "4", "--resume", "--device", "cpu", "--backend", "torch",
                                "--n_test_views", "1", "--video_frames", "0", "--no-dead_model_check", "--outdir",
                                str(tmp_path)])
    out = capsys.readouterr().out
    assert "resuming with the checkpoint's settings: " in out and "net_width=32" in out
    assert metrics["iters"] == 4


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(nerf_script, small_scene, tmp_path, capsys):
    base = FAST + ["--ckpt_every", "2", "--scene", str(small_scene), "--outdir", str(tmp_path)]
    nerf_script.main(base + ["--iters", "4"])
    (tmp_path / "ckpt_000004.pt").write_bytes(b"damaged")
    nerf_script.main(base + ["--iters", "6", "--resume"])
    err = capsys.readouterr().err
    assert "ckpt_000004.pt cannot be read" in err and "resuming from" in err and "ckpt_000002.pt" in err
    assert torch.load(tmp_path / "ckpt_000006.pt", weights_only=False)["step"] == 6


# --- signals -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_during_training_checkpoints_the_step_and_exits_143(hashnerf_script, small_scene, tmp_path):
    real_sample = hashnerf_script.sample_ray_batch
    calls = []

    def sample_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_sample(*args, **kwargs)

    hashnerf_script.sample_ray_batch = sample_then_sigterm
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_main(hashnerf_script.main, FAST + ["--iters", "50", "--ckpt_every", "100", "--scene",
                                                   str(small_scene), "--outdir", str(tmp_path)])
    finally:
        hashnerf_script.sample_ray_batch = real_sample
    assert exit_info.value.code == 143
    assert torch.load(tmp_path / "ckpt_000003.pt", weights_only=False)["step"] == 3


def test_ctrl_c_during_the_final_renders_is_one_line_and_keeps_the_checkpoint(nerf_script, small_scene, tmp_path,
                                                                              capsys, monkeypatch):
    def ctrl_c_while_rendering(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # outside the training loop: Python's default handler raises
        for _ in range(1000):
            pass

    monkeypatch.setattr(nerf_script, "final_evaluation", ctrl_c_while_rendering)
    status, err = _run(nerf_script, FAST + ["--iters", "2", "--scene", str(small_scene), "--outdir", str(tmp_path)],
                       capsys)
    assert status == 130
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)") and "Traceback" not in err
    assert torch.load(tmp_path / "ckpt_000002.pt", weights_only=False)["step"] == 2
