"""Instant-NGP / nerfstudio transforms.json: lens distortion on the rays, scale/offset, absent frames, fox."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from common.data.load import load_scene
from common.data.ngp_transforms import load_ngp_transforms
from common.errors import UserError
from common.paths import look_at
from common.rays import distort, get_rays, rays_through_pixels, undistort
from tests.conftest import SHARED_DATA

DISTORTION = dict(k1=0.12, k2=-0.06, p1=0.004, p2=-0.003)


def _write_capture(root, poses, n_absent=1, **extra):
    (root / "images").mkdir(parents=True)
    frames = []
    for i, pose in enumerate(poses):
        Image.fromarray(np.full((48, 64, 3), 40 * i, dtype=np.uint8)).save(root / "images" / f"{i:04d}.png")
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": pose.tolist()})
    for j in range(n_absent):
        frames.append({"file_path": f"images/missing_{j}.png", "transform_matrix": poses[0].tolist()})
    meta = {"fl_x": 70.0, "fl_y": 72.0, "cx": 33.0, "cy": 23.5, "w": 64, "h": 48, **DISTORTION, "frames": frames,
            **extra}
    (root / "transforms.json").write_text(json.dumps(meta))
    return meta


def test_undistort_inverts_distort():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 1000, generator=g, dtype=torch.float64) - 0.5) * 1.2
    coeffs = torch.tensor(list(DISTORTION.values()), dtype=torch.float64)
    x_d, y_d = distort(x, y, coeffs)
    assert (x_d - x).abs().max() > 1e-3  # the lens does move points
    x_u, y_u = undistort(x_d, y_d, coeffs)
    torch.testing.assert_close(x_u, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_u, y, rtol=0, atol=1e-12)


def test_a_point_projected_through_the_lens_lies_on_the_undistorted_ray(tmp_path, capsys):
    poses = look_at(torch.tensor([[3.0, -2.0, 1.0], [-2.5, 2.0, 1.5]]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    _write_capture(tmp_path, poses, scale=0.5, offset=[0.5, 0.5, 0.5])
    scene = load_ngp_transforms(tmp_path, splits=("train",))
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "skipping 1 of 3 frames whose image file is absent" in warnings[0]
    cams = scene.splits["train"].cameras  # frame 1 (frame 0 is held out as test)
    # Points in the file's world frame, projected by the OpenCV model with the file's intrinsics.
    g = torch.Generator().manual_seed(1)
    points = (torch.rand(200, 3, generator=g) - 0.5) * 1.0
    c2w = poses[1]
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # (n, 3) in the OpenGL camera frame (looks along -z)
    x, y = cam[:, 0] / -cam[:, 2], -cam[:, 1] / -cam[:, 2]  # OpenCV normalised coordinates (y down)
    x_d, y_d = distort(x, y, torch.tensor(list(DISTORTION.values())))
    u, v = 70.0 * x_d + 33.0, 72.0 * y_d + 23.5
    rays_o, rays_d = rays_through_pixels(cams.K[0], cams.c2w[0], u, v, cams.distortion[0])
    # The loader's frame is x' = 0.5 x (scale 0.5; the default offset cancels against the cube's centre).
    target = points * 0.5
    t = ((target - rays_o) * rays_d).sum(-1) / (rays_d * rays_d).sum(-1)
    miss = (rays_o + t[:, None] * rays_d - target).norm(dim=-1)
    assert miss.max() < 1e-5
    # Without undoing the distortion the rays would miss by far more.
    rays_o, rays_d = rays_through_pixels(cams.K[0], cams.c2w[0], u, v)
    t = ((target - rays_o) * rays_d).sum(-1) / (rays_d * rays_d).sum(-1)
    assert (rays_o + t[:, None] * rays_d - target).norm(dim=-1).max() > 1e-3


def test_intrinsics_scale_with_downscale_and_the_box_follows_aabb_scale(tmp_path, capsys):
    poses = look_at(torch.tensor([[3.0, -2.0, 1.0], [-2.5, 2.0, 1.5]]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    _write_capture(tmp_path, poses, n_absent=0, aabb_scale=4)
    scene = load_scene(str(tmp_path), downscale=2)
    assert "skipping" not in capsys.readouterr().err  # nothing absent: no warning
    cams = scene.splits["test"].cameras
    assert (cams.height, cams.width) == (24, 32)
    torch.testing.assert_close(cams.K[0], torch.tensor([[35.0, 0, 16.5], [0, 36.0, 11.75], [0, 0, 1]]))
    torch.testing.assert_close(scene.aabb, torch.tensor([[-2.0] * 3, [2.0] * 3]))
    torch.testing.assert_close(cams.c2w[0, :3, 3], poses[0, :3, 3] * 0.33)  # default scale, offset - 0.5 = 0
    # Whole-image rays honour the distortion too (the corners bend most).
    plain_o, plain_d = get_rays(cams.K[0], cams.c2w[0], 24, 32)
    _, bent_d = get_rays(cams.K[0], cams.c2w[0], 24, 32, cams.distortion[0])
    assert not torch.allclose(plain_d, bent_d)


def test_a_fisheye_capture_is_refused_with_the_file_named(tmp_path):
    poses = look_at(torch.tensor([[3.0, -2.0, 1.0]]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    _write_capture(tmp_path, poses, camera_model="OPENCV_FISHEYE", k3=0.01)
    with pytest.raises(UserError, match="transforms.json describes a fisheye"):
        load_ngp_transforms(tmp_path)


def test_fox_loads_its_50_existing_frames_with_distortion(capsys):
    fox = SHARED_DATA / "fox"
    if not (fox / "transforms.json").exists():
        pytest.skip("fox not found at ../shared/data/fox")
    scene = load_scene(str(fox), downscale=16, splits=("test",))
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ", 2)[-1] for line in lines] == ["skipping 17 of 67 frames whose image file is absent"]
    test = scene.splits["test"]
    assert len(test.images) == math.ceil(50 / 8) and test.images.shape[1:] == (120, 67, 3)
    assert test.cameras.distortion is not None and float(test.cameras.distortion[0, 0]) == pytest.approx(0.0578421)
