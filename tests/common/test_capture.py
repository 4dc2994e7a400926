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
from common.data.textured_scene import FOCAL, known_cameras, render_textured, write_photos
from common.errors import UserError
from tests.conftest import REPO_ROOT, SHARED_DATA


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
    write_photos(tmp_path / "photos", c2w)
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


def test_every_numeric_option_has_a_range():
    from common.cli import unranged_numeric_fields

    assert unranged_numeric_fields(Config) == []


def test_video_capture_poses_the_sharp_frames(tmp_path):
    """A video input end to end (frame choice, sequential matching): each of the 12 views appears twice, blurred
    then sharp; --frames 12 keeps the sharp one of each pair, and the poses come back as from the photos."""
    pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install -r requirements-capture.txt)")
    import imageio.v2 as imageio

    c2w = known_cameras()
    writer = imageio.get_writer(tmp_path / "walk.mp4", fps=4, format="ffmpeg", quality=10, macro_block_size=8)
    for pose in c2w:
        sharp = render_textured(pose)
        blurred = sharp.copy()
        for _ in range(4):
            blurred = (blurred + np.roll(blurred, 1, 0) + np.roll(blurred, -1, 0) + np.roll(blurred, 1, 1)
                       + np.roll(blurred, -1, 1)) / 5
        for image in (blurred, sharp):
            writer.append_data((image * 255 + 0.5).astype(np.uint8))
    writer.close()
    out = capture(_config(tmp_path / "walk.mp4", tmp_path / "scene", frames=12))
    meta = json.loads((out / "transforms.json").read_text())
    assert [f["original"] for f in meta["frames"]] == [f"frame_{2 * i + 1:06d}" for i in range(12)]
    found = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float64)
    rotation_deg, position = pose_errors(found, c2w.double())
    assert np.median(rotation_deg) < 1.0 and np.median(position / 2.9) < 0.02, (rotation_deg, position)


FOX_DIR = SHARED_DATA / "fox"


def test_fox_capture_agrees_with_the_given_poses(tmp_path):
    """The fox's 50 frames (Instant-NGP's, posed by COLMAP at full resolution with an OPENCV lens) through the
    capture command at 135x240 (--max_size 240, 2 threads), aligned to the given transforms.json by a similarity:
    at least 45 of the 50 frames registered, median rotation error below 1.5 degrees and median position error
    below 1.5% of the given cameras' mean distance from their centroid. Measured (benchmarks/capture_poses.py
    --max_size 240 --threads 2, 2 CPU cores, load average 0.7): 50 of 50, 0.59 degrees and 0.45%, capture 13 s;
    at 270x480 0.66 degrees and 0.20%. The bounds leave 2.5x and 3x margin."""
    pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install -r requirements-capture.txt)")
    if not (FOX_DIR / "transforms.json").is_file():
        pytest.skip("fox scene not found at ../shared/data/fox")
    from benchmarks.capture_poses import capture_and_compare

    compared = capture_and_compare(FOX_DIR, tmp_path / "fox", max_size=240, threads=2)
    assert compared["meta"]["capture"]["registered"] >= 45 and len(compared["frames"]) >= 45
    assert (compared["meta"]["w"], compared["meta"]["h"]) == (135, 240)
    assert np.median(compared["rotation_deg"]) < 1.5, compared["rotation_deg"]
    assert np.median(compared["position"]) / compared["spread"] < 0.015, compared["position"] / compared["spread"]
