"""python -m common.capture: a generated capture posed back (up to a similarity), frame choice, one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from common.capture import Config, align_similarity, capture, main, pose_errors, sharpness, video_frames
from common.data.load import load_scene
from common.errors import UserError
from common.paths import look_at
from tests.conftest import REPO_ROOT

W, H, FOCAL = 320, 240, 260.0


def _noise_grids(seed=0):
    """Random grids of three octaves per surface (4 box faces + top, the ground): value noise for SIFT to find."""
    rng = np.random.default_rng(seed)
    return [[rng.uniform(0, 1, (n + 1, n + 1, 3)) for n in (3, 7, 15, 31, 63)] for _ in range(6)]


def _value_noise(grids, u, v):
    """Bilinearly interpolated random grids (u, v in [0, 1]), five octaves summed with weights 0.3 to 0.1:
    blobs at several scales, sharp enough at the finest for SIFT, distinctive at every scale."""
    colour = np.zeros(u.shape + (3,))
    for grid, weight in zip(grids, (0.3, 0.25, 0.2, 0.15, 0.1)):
        n = grid.shape[0] - 1
        x, y = np.clip(u, 0, 1) * n, np.clip(v, 0, 1) * n
        i, j = np.minimum(x.astype(int), n - 1), np.minimum(y.astype(int), n - 1)
        fx, fy = (x - i)[..., None], (y - j)[..., None]
        colour += weight * ((1 - fx) * (1 - fy) * grid[i, j] + fx * (1 - fy) * grid[i + 1, j]
                            + (1 - fx) * fy * grid[i, j + 1] + fx * fy * grid[i + 1, j + 1])
    return (colour - 0.5) * 2.2 + 0.5  # stretch the contrast


def render_textured(c2w: torch.Tensor, seed=0) -> np.ndarray:
    """A cube [-0.5, 0.5]^3 with value-noise faces standing on a ground plane z = -0.5 (|x|, |y| < 3) of value
    noise, over a grey sky, by exact ray casting (pinhole, FOCAL, W x H). c2w: (4, 4) OpenGL."""
    grids = _noise_grids(seed)
    rows, cols = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    dirs = np.stack([(cols - W / 2) / FOCAL, -(rows - H / 2) / FOCAL, -np.ones_like(cols)], -1).reshape(-1, 3)
    pose = c2w.double().numpy()
    d = dirs @ pose[:3, :3].T  # (R, 3)
    o = np.broadcast_to(pose[:3, 3], d.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (-0.5 - o) / d, (0.5 - o) / d  # slab method
        t_near = np.minimum(t0, t1).max(-1)
        t_far = np.maximum(t0, t1).min(-1)
        t_box = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
        t_ground = np.where(d[:, 2] < 0, (-0.5 - o[:, 2]) / d[:, 2], np.inf)
    hit_ground = o + t_ground[:, None] * d
    t_ground = np.where((np.abs(hit_ground[:, :2]) < 3).all(-1), t_ground, np.inf)
    image = np.full((len(d), 3), 0.55) + 0.2 * d[:, 2:3] / np.linalg.norm(d, axis=-1, keepdims=True)  # sky
    on_box = t_box < t_ground
    p = o[on_box] + t_box[on_box, None] * d[on_box] + 0.5  # in [0, 1]^3
    face = np.where(np.abs(p[:, 2] - 1) < 1e-6, 4, np.where(np.abs(p[:, 0] - 0.5) > np.abs(p[:, 1] - 0.5),
                                                         np.where(p[:, 0] > 0.5, 0, 1), np.where(p[:, 1] > 0.5, 2, 3)))
    colour = np.zeros((len(p), 3))
    for f in range(5):
        mine = face == f
        u, v = ((p[mine, 1], p[mine, 2]) if f in (0, 1) else (p[mine, 0], p[mine, 2]) if f in (2, 3)
                else (p[mine, 0], p[mine, 1]))
        colour[mine] = _value_noise(grids[f], u, v)
    image[on_box] = colour
    on_ground = np.isfinite(t_ground) & ~on_box
    q = (hit_ground[on_ground][:, :2] + 3) / 6
    image[on_ground] = _value_noise(grids[5], q[:, 0], q[:, 1]) * 0.85
    return np.clip(image.reshape(H, W, 3), 0, 1)


def known_cameras(n=12, step_deg=15.0):
    """n cameras 15 degrees apart on a wavy arc around the cube, looking at its centre (a user's walk around it)."""
    angles = torch.arange(n) * np.radians(step_deg)
    heights = 1.3 + 0.6 * torch.sin(3 * angles)  # not one circle: an orbit at one height leaves the focal length
    # free (a critical motion for self-calibration), and the mapper then trades it against the cameras' tilt
    eyes = torch.stack([2.6 * torch.cos(angles), 2.6 * torch.sin(angles), heights], -1)
    return look_at(eyes, torch.zeros(n, 3), torch.tensor([0.0, 0.0, 1.0]).expand(n, 3))


def _write_photos(folder, c2w):
    folder.mkdir(parents=True)
    for i, pose in enumerate(c2w):
        Image.fromarray((render_textured(pose) * 255 + 0.5).astype(np.uint8)).save(folder / f"shot_{i:02d}.png")


def _config(source, out, **overrides):
    return Config(input=str(source), out=str(out), threads=2, **overrides)


def test_alignment_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(20, 3))
    q = rng.normal(size=4)
    from common.data.colmap import qvec_to_rotation

    R = qvec_to_rotation(q / np.linalg.norm(q))
    moved = 2.5 * points @ R.T + np.array([1.0, -2.0, 0.5])
    s, R_found, t = align_similarity(points, moved)
    assert abs(s - 2.5) < 1e-9 and np.allclose(R_found, R) and np.allclose(t, [1.0, -2.0, 0.5])


def test_generated_capture_recovers_the_known_poses(tmp_path):
    """Render a textured scene from 12 known cameras, run the whole capture (OPENCV lens, exhaustive matching), and
    compare: every image posed, and after a similarity alignment the median rotation error below 1 degree and the
    median position error below 2% of the cameras' distance to the object. Measured on a 2-core machine: 0.30
    degrees and 0.22% (focal length 262.7 pixels for the true 260), in 11 s under a load average of 12. With 16
    cameras 22.5 degrees apart COLMAP posed only 5, and with cameras on one circle (all at one height) the
    rotations came out 3 degrees off: the focal length is then not determined (a critical motion)."""
    pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install -r requirements-capture.txt)")
    c2w = known_cameras()
    _write_photos(tmp_path / "photos", c2w)
    out = capture(_config(tmp_path / "photos", tmp_path / "scene"))
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["capture"]["registered"] == 12 and len(meta["frames"]) == 12
    assert (out / "reconstruction.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".scene.partial-*"))
    order = [int(f["original"].split("_")[1].split(".")[0]) for f in meta["frames"]]
    found = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float64)
    rotation_deg, position = pose_errors(found, c2w[order].double())
    position_fraction = position / 2.9  # distance of the known cameras from the origin (2.6, 1.3)
    assert np.median(rotation_deg) < 1.0, rotation_deg
    assert np.median(position_fraction) < 0.02, position_fraction
    # the normalisation: cameras at the stated radius around the focus, up along +z
    np.testing.assert_allclose(float(found[:, :3, 3].norm(dim=-1).mean()), 1.7, rtol=1e-4)
    assert float(found[:, 2, 1].mean()) > 0.85  # camera y axes (up) lean towards +z (the cameras look down)
    np.testing.assert_allclose(meta["fl_x"], FOCAL, rtol=0.03)
    # and the scene reads back through the dispatcher, every 8th frame held out
    scene = load_scene(str(out))
    assert len(scene.splits["train"].files) == 10 and len(scene.splits["test"].files) == 2


def test_too_few_registered_says_how_many_and_the_fix(tmp_path):
    pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install -r requirements-capture.txt)")
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # unrelated noise images: nothing matches geometrically
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(UserError) as err:
        capture(_config(folder, tmp_path / "out"))
    message = str(err.value)
    assert "only 0 of the 4 images" in message and "overlap" in message and "\n" not in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))  # nothing half-written


def test_video_keeps_the_sharpest_frame_of_each_stretch(tmp_path):
    import imageio.v2 as imageio

    sharp = (render_textured(known_cameras(1)[0]) * 255).astype(np.uint8)
    blurred = sharp.astype(np.float32)
    for _ in range(4):  # a box blur, four times: motion blur's loss of fine detail
        blurred = (blurred + np.roll(blurred, 1, 0) + np.roll(blurred, -1, 0) + np.roll(blurred, 1, 1)
                   + np.roll(blurred, -1, 1)) / 5
    blurred = blurred.astype(np.uint8)
    assert sharpness(sharp / 255.0) > 3 * sharpness(blurred / 255.0)
    writer = imageio.get_writer(tmp_path / "walk.mp4", fps=10, format="ffmpeg", quality=9, macro_block_size=8)
    for i in range(12):  # stretches of 3 frames; the sharp one is the middle one of each
        writer.append_data(sharp if i % 3 == 1 else blurred)
    writer.close()
    frames = video_frames(tmp_path / "walk.mp4", 4, max_size=80)
    assert [name for name, _ in frames] == ["frame_000001", "frame_000004", "frame_000007", "frame_000010"]
    assert frames[0][1].shape == (60, 80, 3)  # reduced by 2 for --max_size 80


def _error(cfg) -> str:
    with pytest.raises(UserError) as err:
        capture(cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_inputs_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no photographs" in _error(_config(empty, tmp_path / "o"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.png", (40, 30)), ("c.png", (30, 40))):
        Image.new("RGB", size).save(mixed / name)
    message = _error(_config(mixed, tmp_path / "o"))
    assert "mixed sizes" in message and "c.png" in message
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (40, 30)).save(broken / "a.png")
    (broken / "b.jpg").write_bytes(b"not a jpeg")
    assert "b.jpg" in _error(_config(broken, tmp_path / "o"))
    video = tmp_path / "nothing.mp4"
    video.write_bytes(b"")
    assert "nothing.mp4" in _error(_config(video, tmp_path / "o"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert "already exists" in _error(_config(mixed, taken))
    assert (taken / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.partial-*"))


def test_command_line_exits_2_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "common.capture", str(empty), "--out", str(tmp_path / "o")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    with pytest.raises(UserError, match="--radius"):
        main([str(empty), "--out", "o", "--radius", "0"])
