"""common/data/llff.py: the fern capture loads with NeRF's conventions, and its NDC rays span [-1, 1]."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.llff import ndc_rays, ndc_to_world, read_poses_bounds, spiral_focus_depth, spiral_poses
from common.data.load import load_scene
from common.errors import UserError
from common.rays import get_rays

# Real data lives beside the project (tests/conftest.py, SHARED_DATA); tests skip without it.
FERN = Path(__file__).resolve().parents[3] / "shared" / "data" / "nerf_llff_data" / "fern"


@pytest.fixture(scope="module")
def fern():
    if not (FERN / "poses_bounds.npy").exists():
        pytest.skip("fern not found at ../shared/data/nerf_llff_data/fern")
    return load_scene(str(FERN), llff_factor=8)


def test_fern_splits_sizes_and_intrinsics(fern):
    assert [f.split("/")[-1] for f in fern.splits["test"].files] == ["image000.png", "image008.png", "image016.png"]
    assert len(fern.splits["train"].images) == 17 and fern.splits["val"].files == fern.splits["test"].files
    train = fern.splits["train"]
    assert train.images.shape[1:] == (378, 504, 3) and (train.cameras.height, train.cameras.width) == (378, 504)
    poses, _ = read_poses_bounds(FERN)
    torch.testing.assert_close(train.cameras.K[0, 0, 0], torch.tensor(poses[0, 2, 4] / 8, dtype=torch.float32))
    torch.testing.assert_close(train.cameras.K[0, :2, 2], torch.tensor([252.0, 189.0]))
    assert fern.near == 0.0 and fern.far == 1.0 and not fern.white_background


def test_fern_poses_are_rescaled_recentred_and_opengl(fern):
    assert float(fern.bounds.min()) == pytest.approx(1 / 0.75, rel=1e-5)
    c2w = torch.cat([fern.splits["train"].cameras.c2w, fern.splits["test"].cameras.c2w])
    assert float(c2w[:, :3, 3].mean(0).norm()) < 0.05  # recentred: the cameras sit around the origin
    rotations = c2w[:, :3, :3]
    torch.testing.assert_close(rotations.transpose(1, 2) @ rotations, torch.eye(3).expand(20, 3, 3), atol=1e-5, rtol=0)
    # [down, right, back] -> [right, up, back] is a proper rotation: a sign slip would make it a reflection.
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(20), atol=1e-5, rtol=0)
    # Forward-facing after the axis reorder: every camera looks roughly along -z (its z axis is ~ +z).
    assert float(c2w[:, 2, 2].min()) > 0.9


def test_fern_ndc_rays_start_on_the_near_plane_and_the_scene_fills_the_cube(fern):
    test = fern.splits["test"].cameras
    for i in range(len(test)):
        rays_o, rays_d = get_rays(test.K[i], test.c2w[i], test.height, test.width)
        ndc_o, ndc_d = ndc_rays(rays_o, rays_d, test.K[i])
        torch.testing.assert_close(ndc_o[:, 2], torch.full_like(ndc_o[:, 2], -1.0))  # the near plane z' = -1
        torch.testing.assert_close((ndc_o + ndc_d)[:, 2], torch.ones_like(ndc_o[:, 2]))  # t = 1 is infinity
        # The scene between this image's depth bounds lies inside the NDC cube: z' strictly inside (-1, 1), and
        # x', y' inside [-1, 1] up to the small offset of the camera from the reference (average) camera.
        for depth in fern.bounds[i * 8]:
            points = rays_o + float(depth) * rays_d  # rays_d has camera z = -1: t is depth
            ndc_z = 1 + 2 * 1.0 / points[:, 2]  # after recentring, camera z ~ world z
            assert float(ndc_z.min()) > -1 and float(ndc_z.max()) < 1
        inside = ((ndc_o + 0.5 * ndc_d)[:, :2].abs() <= 1.0).all(-1).float().mean()
        assert float(inside) > 0.85
    # The reference camera itself sees exactly [-1, 1]^2 at every t.
    K = test.K[0]
    rays_o, rays_d = get_rays(K, torch.eye(4), test.height, test.width)
    ndc_o, ndc_d = ndc_rays(rays_o, rays_d, K)
    for t in (0.0, 0.5, 1.0):
        assert float((ndc_o + t * ndc_d)[:, :2].abs().max()) <= 1.0 + 1e-5


def test_ndc_to_world_inverts_the_map(fern):
    K = fern.splits["train"].cameras.K[0]
    rays_o, rays_d = get_rays(K, fern.splits["train"].cameras.c2w[3], 6, 8)
    ndc_o, ndc_d = ndc_rays(rays_o, rays_d, K)
    t = torch.rand(rays_o.shape[0], 1) * 0.9
    world = ndc_to_world(ndc_o + t * ndc_d, K)
    # The world point lies on the original ray: (world - o) is parallel to d.
    offset = world - rays_o
    cross = torch.cross(offset, rays_d, dim=-1).norm(dim=-1) / (offset.norm(dim=-1) * rays_d.norm(dim=-1))
    assert float(cross.max()) < 1e-4


def test_spiral_path_circles_the_average_camera_looking_forward(fern):
    poses = spiral_poses(fern, 12)
    assert poses.shape == (12, 4, 4)
    assert float(poses[:, 2, 2].min()) > 0.9  # looking along -z, like the captures
    assert 1.3 < spiral_focus_depth(fern.bounds) < 5 * float(fern.bounds.max())


def test_llff_folder_without_poses_bounds_is_a_one_line_error(tmp_path):
    (tmp_path / "images_4").mkdir()
    with pytest.raises(UserError, match="poses_bounds.npy"):
        load_scene(str(tmp_path))


def test_image_count_not_matching_the_poses_is_a_one_line_error(tmp_path):
    if not (FERN / "poses_bounds.npy").exists():
        pytest.skip("fern not found")
    shutil.copy(FERN / "poses_bounds.npy", tmp_path / "poses_bounds.npy")
    (tmp_path / "images_8").mkdir()
    for name in ("image000.png", "image001.png"):
        shutil.copy(FERN / "images_8" / name, tmp_path / "images_8" / name)
    with pytest.raises(UserError, match="2 images in images_8/ but 20 poses"):
        load_scene(str(tmp_path), llff_factor=8)


def test_malformed_poses_bounds_is_a_one_line_error(tmp_path):
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(UserError, match=r"not \(N, 17\)"):
        read_poses_bounds(tmp_path)


def _generated_llff(root: Path, n: int = 9, full_hw=(32, 48), focal: float = 40.0, folders=(2,)) -> dict:
    """An LLFF folder: n cameras side by side looking the same way, poses_bounds.npy recording the full size
    (32 x 48, focal 40), and images_<f>/ for each f in `folders` holding random images reduced by f.
    Returns {f: (n, H / f, W / f, 3) the images written}."""
    from PIL import Image

    rng = np.random.default_rng(0)
    H, W = full_hw
    rows = []
    for i in range(n):
        pose = np.zeros((3, 5))
        pose[:, :3] = np.eye(3)  # [down, right, backwards] axes along the world's
        pose[:, 3] = [0.1 * (i % 3), 0.1 * (i // 3), 0.0]
        pose[:, 4] = [H, W, focal]
        rows.append(np.concatenate([pose.ravel(), [2.0, 10.0]]))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", np.array(rows))
    written = {}
    for f in folders:
        (root / f"images_{f}").mkdir()
        images = rng.integers(0, 256, (n, H // f, W // f, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / f"images_{f}" / f"image{i:03d}.png")
        written[f] = images.astype(np.float32) / 255
    return written


def test_downscale_reads_the_reduced_folder_or_reduces_the_nearest_finer_one(tmp_path):
    """--downscale d with --llff_factor f reads images_<f d>/ when it exists, else reduces images_<f>/ by d
    (area averaging); the focal length follows the loaded width (40 x 12 / 48 = 10 for f d = 4)."""
    written = _generated_llff(tmp_path / "a", folders=(2,))
    scene = load_scene(str(tmp_path / "a"), llff_factor=2, downscale=2)
    train = scene.splits["train"]
    assert train.images.shape[1:] == (8, 12, 3)
    assert float(train.cameras.K[0, 0, 0]) == pytest.approx(10.0)
    reduced = written[2].reshape(9, 8, 2, 12, 2, 3).mean(axis=(2, 4))  # 2 x 2 block means of images_2/
    torch.testing.assert_close(train.images, torch.from_numpy(reduced[[1, 2, 3, 4, 5, 6, 7]]), atol=1e-6, rtol=0)
    assert train.files[0] == "images_2/image001.png"
    written = _generated_llff(tmp_path / "b", folders=(2, 4))  # images_4/ present: read as it is
    scene = load_scene(str(tmp_path / "b"), llff_factor=2, downscale=2, max_images=3)
    torch.testing.assert_close(scene.splits["train"].images, torch.from_numpy(written[4][[1, 2, 3]]), atol=1e-6,
                               rtol=0)
    assert scene.splits["train"].files[0] == "images_4/image001.png" and len(scene.splits["test"].files) == 2
    default = load_scene(str(tmp_path / "b"), llff_factor=2)  # downscale 1: images_2/ as before
    assert default.splits["train"].images.shape[1:] == (16, 24, 3)
    assert float(default.splits["train"].cameras.K[0, 0, 0]) == pytest.approx(20.0)


def test_downscale_without_a_folder_to_reduce_or_too_large_is_refused_in_one_line(tmp_path):
    _generated_llff(tmp_path, folders=(2,))
    with pytest.raises(UserError, match=r"neither images_3/ nor images/ .*it holds images_2") as err:
        load_scene(str(tmp_path), llff_factor=1, downscale=3)  # 3 is no multiple of 2: nothing to reduce
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"--llff_factor x --downscale = 64 is larger than the images"):
        load_scene(str(tmp_path), llff_factor=2, downscale=32)
