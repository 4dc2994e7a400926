"""360 captures in the LLFF layout: the poses_bounds.npy reader and mip-NeRF 360's PCA normalisation."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from common.data.llff360 import load_llff360, read_poses_bounds, transform_poses_pca
from common.paths import look_at
from tests.conftest import SHARED_DATA


def _ring_capture(n=16):
    """Cameras on a tilted, shifted, scaled ring, all looking at the ring's centre. Returns c2w (n, 4, 4), centre."""
    angles = torch.arange(n) * 2 * math.pi / n
    eyes = torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles), torch.full_like(angles, 1.0)], -1)
    c2w = look_at(eyes, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])).double()
    tilt = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.3, 0.5], [0.3, 0.0, -0.2], [-0.5, 0.2, 0.0]],
                                                dtype=torch.float64))  # a rotation
    world = torch.eye(4, dtype=torch.float64)
    world[:3, :3], world[:3, 3] = 2.5 * tilt, torch.tensor([10.0, -4.0, 7.0], dtype=torch.float64)
    moved = world @ c2w
    moved[:, :3, :3] /= 2.5  # keep unit axes: only the positions are scaled
    return moved


def test_pca_normalisation_puts_a_ring_of_cameras_in_the_unit_cube_with_z_up():
    poses, transform = transform_poses_pca(_ring_capture())
    t = poses[:, :3, 3]
    assert float(t.abs().max()) == pytest.approx(1.0)
    torch.testing.assert_close(t.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    assert float(t[:, 2].abs().max()) < 1e-9  # the ring lies in z = 0: its axis became z
    assert float(poses[:, 2, 1].mean()) > 0.9  # cameras' up vectors point to +z
    rot = poses[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand_as(rot))


def test_reader_turns_llff_axes_into_opengl(tmp_path):
    # One camera: LLFF columns [down, right, backwards]; in OpenGL [right, up, backwards] = [col1, -col0, col2].
    down, right, back = [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]
    pose = np.array([down, right, back, [1.0, 2.0, 3.0], [600.0, 800.0, 500.0]]).T  # (3, 5)
    np.save(tmp_path / "poses_bounds.npy", np.concatenate([pose.reshape(1, 15), [[1.5, 20.0]]], 1))
    c2w, hwf, bounds = read_poses_bounds(tmp_path / "poses_bounds.npy")
    torch.testing.assert_close(c2w[0, :3, 0], torch.tensor(right, dtype=torch.float64))
    torch.testing.assert_close(c2w[0, :3, 1], -torch.tensor(down, dtype=torch.float64))
    torch.testing.assert_close(c2w[0, :3, 3], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert hwf[0].tolist() == [600.0, 800.0, 500.0] and bounds[0].tolist() == [1.5, 20.0]


def test_fern_loads_with_focal_scaled_to_its_images():
    fern = SHARED_DATA / "nerf_llff_data" / "fern"
    if not (fern / "poses_bounds.npy").exists():
        pytest.skip("fern not found at ../shared/data/nerf_llff_data/fern")
    scene = load_llff360(fern, downscale=8, splits=("test",))
    test = scene.splits["test"]
    assert len(test.images) == 3 and test.images.shape[1:] == (378, 504, 3)  # 20 images, every 8th held out
    focal_full = float(np.load(fern / "poses_bounds.npy")[0, 14])
    assert float(test.cameras.K[0, 0, 0]) == pytest.approx(focal_full * 504 / 4032, rel=1e-6)
    assert float(test.cameras.c2w[:, :3, 3].abs().max()) <= 1.0 + 1e-6


def test_a_factor_without_its_folder_reads_the_nearest_finer_folder_reduced_by_area(tmp_path):
    """--downscale 8 with only images_2/ (and images_3/, which does not divide 8): images_2/ reduced by 4, the
    focal length following the width actually loaded; a factor no folder divides is refused in one line."""
    from common.errors import UserError

    c2w = _ring_capture(n=8)
    llff = torch.stack([-c2w[:, :3, 1], c2w[:, :3, 0], c2w[:, :3, 2], c2w[:, :3, 3]], -1)  # OpenGL -> LLFF columns
    hwf = torch.tensor([32.0, 48.0, 40.0], dtype=torch.float64).expand(8, 3)[..., None]
    poses = torch.cat([llff, hwf], -1).reshape(8, 15).numpy()
    np.save(tmp_path / "poses_bounds.npy", np.concatenate([poses, np.tile([[1.0, 10.0]], (8, 1))], 1))
    rng = np.random.default_rng(0)
    for name, (h, w) in (("images_2", (16, 24)), ("images_3", (10, 16))):
        (tmp_path / name).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name / f"{i:03d}.png")
    scene = load_llff360(tmp_path, downscale=8, splits=("test",))
    test = scene.splits["test"]
    assert test.images.shape[1:] == (4, 6, 3) and test.files[0].startswith("images_2/")
    first = np.asarray(Image.open(tmp_path / "images_2" / "000.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(test.images[0].numpy(), first.reshape(4, 4, 6, 4, 3).mean((1, 3)), atol=1e-5)
    assert float(test.cameras.K[0, 0, 0]) == pytest.approx(40.0 * 6 / 48)
    with pytest.raises(UserError, match="no images_5/, no images_<g>/ with g dividing 5 and no images/ .*images_2, images_3"):
        load_llff360(tmp_path, downscale=5)
