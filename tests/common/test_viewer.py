"""common/viewer.py: the live viewer, on a tiny NeRF trained here, seen through a real browser (headless Chromium).

The browser test skips with one line where Chromium is not installed (CI installs it: .ci/run). Set
VIEWER_SCREENSHOT=<file.png> to keep the browser's screenshot (the README's picture was taken so).
"""
import importlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

viser = pytest.importorskip("viser", reason="viser is not installed (pip install -r requirements-viewer.txt)")

from common.errors import UserError  # noqa: E402
from common.scene3d import opencv_wxyz  # noqa: E402
from common.viewer import (Viewer, check_port_free, frame_intrinsics, view_renderer_from_rays,  # noqa: E402
                           viewer_c2w)

REPO_ROOT = Path(__file__).resolve().parents[2]
# A NeRF small enough to train in seconds on a loaded CPU, yet far enough from its initial state that its render
# depends on where the camera is: 2 layers of 32 units, 16 + 16 samples per ray, 12x12-pixel training images.
TINY = ["--quick", "--iters", "60", "--net_depth", "2", "--net_width", "32", "--n_coarse", "16", "--n_fine", "16",
        "--batch_rays", "256", "--downscale", "8", "--video_frames", "0", "--n_test_views", "1", "--device", "cpu",
        "--backend", "torch", "--no-dead_model_check", "--ckpt_every", "60"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 01_nerf run of 60 tiny steps, trained with --viewer open (no browser): the hook runs in the loop."""
    outdir = tmp_path_factory.mktemp("viewer") / "tiny"
    nerf = importlib.import_module("01_nerf")
    nerf.main([*TINY, "--outdir", str(outdir), "--viewer", "--viewer_port", str(free_port())])
    return outdir


def tiny_viewer(run_dir: Path, **kwargs) -> Viewer:
    """A Viewer on the run's checkpoint, rebuilt as --render_only rebuilds it (the saved config)."""
    from common.data.load import load_scene

    nerf = importlib.import_module("01_nerf")
    state = torch.load(sorted(run_dir.glob("ckpt_*.pt"))[-1], map_location="cpu", weights_only=False)
    cfg = nerf.Config(**state["config"])
    coarse, fine = nerf.NeRFField(cfg), nerf.NeRFField(cfg)
    coarse.load_state_dict(state["coarse"])
    fine.load_state_dict(state["fine"])
    scene = load_scene(cfg.scene, cfg.datadir, downscale=cfg.downscale)
    render_fn = nerf.make_image_renderer(coarse, fine, scene, cfg, "torch", scene.background, torch.device("cpu"))
    return Viewer(view_renderer_from_rays(render_fn), scene, host="127.0.0.1", port=free_port(), **kwargs)


def test_viewer_camera_is_the_opengl_camera_it_came_from():
    from common.paths import look_at
    from common.rays import get_rays

    c2w = look_at(torch.tensor([3.0, -2.0, 1.5]), torch.tensor([0.2, 0.1, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    back = viewer_c2w(c2w[:3, 3].numpy(), opencv_wxyz(c2w))
    torch.testing.assert_close(back, c2w, atol=1e-5, rtol=0)
    K, H, W = frame_intrinsics(fov=0.8, aspect=16 / 9, long_side=64)
    assert (W, H) == (64, 36)
    rays_o, rays_d = get_rays(K, back, H, W)
    top_cam = rays_d.reshape(H, W, 3)[0, W // 2] @ c2w[:3, :3]  # a ray of the top row, in the camera frame
    # its elevation: fov/2 at the image's edge, so tan(fov/2) (H - 1) / H at the top row's pixel centres; above the
    # optical axis (camera +y is up), not below
    assert math.atan2(float(top_cam[1]), -float(top_cam[2])) == pytest.approx(math.atan(math.tan(0.4) * (H - 1) / H))


def test_busy_or_out_of_range_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"--viewer_port {port} is busy"):
            check_port_free(port)
        # the script refuses it before loading any data, in one line, exit status 2
        done = subprocess.run([sys.executable, "01_nerf.py", "--quick", "--viewer", "--viewer_port", str(port),
                               "--outdir", str(tmp_path / "run")], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "is busy" in done.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="out of range"):
        check_port_free(80)


def test_viewer_command_serves_a_finished_run_and_stops_on_ctrl_c(tiny_run):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "common.viewer", str(tiny_run), "--port", str(port)],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("serving this model" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any(f"viewer: http://localhost:{port}" in line for line in lines), "".join(lines)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "<title>Viser</title>" in page
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_without_a_browser_the_viewer_renders_and_sends_nothing(tiny_run):
    viewer = tiny_viewer(tiny_run)
    try:
        for step in range(1, 30):
            assert viewer.poll(step, 12.0) < 0.5
        assert viewer.frames_rendered == 0
        assert viewer.status.content == "waiting for the first frame"  # not even the step: no client to show it to
    finally:
        viewer.close()


def _canvas(shot: np.ndarray) -> np.ndarray:
    """The part of a screenshot that only the 3D canvas covers (viser's panel is top right, its notice top
    left, the axes gizmo bottom left)."""
    h, w = shot.shape[:2]
    return shot[int(0.45 * h): int(0.92 * h), int(0.12 * w): int(0.55 * w)].astype(np.float64)


def _frame_region(frame: np.ndarray, shot_shape) -> np.ndarray:
    """The same region of a frame, stretched to the screenshot's size as the browser stretches it."""
    from PIL import Image

    h, w = shot_shape[:2]
    stretched = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
    return _canvas(stretched)


def _wait_for_frames(viewer, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while viewer.frames_rendered < count:
        assert time.monotonic() < deadline, f"no frame {count} within {timeout} s"
        viewer.poll()
        time.sleep(0.05)


def test_browser_shows_the_models_render_and_it_follows_the_camera(tiny_run):
    from tests.browser import Browser

    with Browser(width=800, height=600) as browser:
        viewer = tiny_viewer(tiny_run)
        try:
            page = browser.open(f"http://127.0.0.1:{viewer.port}")
            _wait_for_frames(viewer, 1)
            viewer.poll(step=7, psnr=12.5)  # during training: the step and the PSNR are shown once a client looks
            assert viewer.status.content.startswith("step 7 · PSNR 12.50 dB")
            client = next(iter(viewer.server.get_clients().values()))
            viewer.show_scene.value = False  # the frustums and the box off: the canvas shows the render alone
            # depth: after 60 tiny steps the RGB render is still a near-uniform grey (about 11.6 dB), while the
            # depth picture already has the objects' silhouette (turbo colours on white), which moves with the camera
            viewer.mode.value = "depth"
            shots, frames = [], []
            for eye in ([3.5, 0.5, 1.2], [-0.5, -3.5, 2.0]):  # the built-in scene from +x, then from -y
                count = viewer.frames_rendered
                client.camera.position = np.array(eye)
                client.camera.look_at = np.zeros(3)
                _wait_for_frames(viewer, count + 1)
                frames.append(viewer.last_frame.copy())
                time.sleep(1.0)  # the jpeg travels and is drawn
                shots.append(browser_shot := page.screenshot())
            if os.environ.get("VIEWER_SCREENSHOT"):
                viewer.show_scene.value = True
                time.sleep(1.0)
                from PIL import Image

                Image.fromarray(page.screenshot()).save(os.environ["VIEWER_SCREENSHOT"])
        finally:
            viewer.close()
    assert not any(url.startswith(("http://", "https://")) and "127.0.0.1" not in url for url in page.requests)
    # the two frames differ, and so does what the browser shows ...
    assert np.abs(frames[0].astype(float) - frames[1].astype(float)).mean() > 5
    a, b = _canvas(shots[0]), _canvas(shots[1])
    assert np.abs(a - b).mean() > 5
    # ... and what it shows is the frame rendered for its camera: closer to it than to the other one
    for shot, own, other in ((shots[0], frames[0], frames[1]), (shots[1], frames[1], frames[0])):
        to_own = np.abs(_canvas(shot) - _frame_region(own, browser_shot.shape)).mean()
        to_other = np.abs(_canvas(shot) - _frame_region(other, browser_shot.shape)).mean()
        assert to_own < 0.7 * to_other, (to_own, to_other)


def test_frame_picture_shows_rgb_depth_and_normals_as_stated():
    from matplotlib import colormaps

    from common.viewer import frame_picture

    out = {"rgb": torch.tensor([[[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]]]),
           "depth": torch.tensor([[2.0, 0.3]]), "opacity": torch.tensor([[1.0, 0.1]]),
           "normal": torch.tensor([[[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]])}
    assert frame_picture(out, "rgb", 2.0, 6.0).tolist() == [[[255, 128, 0], [0, 0, 255]]]
    depth = frame_picture(out, "depth", 2.0, 6.0)
    near_colour = (np.asarray(colormaps["turbo"](0.0)[:3]) * 255 + 0.5).astype(np.uint8)
    assert depth[0, 0].tolist() == near_colour.tolist()  # at the near bound: the first turbo colour
    assert depth[0, 1].tolist() == [255, 255, 255]  # opacity 0.1: the ray hits nothing, white
    assert frame_picture(out, "normal", 2.0, 6.0).tolist() == [[[128, 128, 255], [0, 128, 128]]]
