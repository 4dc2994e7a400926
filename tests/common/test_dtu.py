"""The NeuS / DTU loader: camera decomposition against the projection matrices (real scan 24 and the built-in
scene exported in that layout), its one-line errors, and the visual hull of the masks."""
import shutil

import numpy as np
import pytest
import torch

from common.data.blender import load_blender
from common.data.dtu import decompose_projection, load_dtu, write_neus_layout
from common.data.load import load_scene
from common.errors import UserError
from common.visual_hull import carve_grid, project_points
from tests.conftest import SHARED_DATA

DTU_DIR = SHARED_DATA / "dtu_scan24"


@pytest.fixture(scope="module")
def scan24():
    if not (DTU_DIR / "cameras_sphere.npz").exists():
        pytest.skip("DTU scan 24 not found at ../shared/data/dtu_scan24")
    return load_dtu(DTU_DIR, downscale=8, holdout_every=0)


def test_decompose_projection_recovers_a_known_camera():
    rng = np.random.default_rng(0)
    K = np.array([[1000.0, 0.5, 320.0], [0.0, 990.0, 240.0], [0.0, 0.0, 1.0]])
    R, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    R *= np.sign(np.linalg.det(R))  # a proper rotation
    C = np.array([0.3, -2.0, 4.0])
    P = 7.5 * K @ np.concatenate([R, -R @ C[:, None]], axis=1)  # any scale
    K_found, c2w = decompose_projection(P)
    np.testing.assert_allclose(K_found, K, atol=1e-8)
    np.testing.assert_allclose(c2w[:3, :3], R.T, atol=1e-10)
    np.testing.assert_allclose(c2w[:3, 3], C, atol=1e-10)
    _, c2w_neg = decompose_projection(-P)  # the sign of P does not flip the camera
    np.testing.assert_allclose(c2w_neg, c2w, atol=1e-10)


def test_scan24_cameras_reproject_like_the_projection_matrices(scan24):
    """World points go to the same pixels through world_mat as through the decoded K and pose (OpenGL axes, pixel
    centres at +0.5, images 8x smaller); camera centres lie outside the unit sphere and look at it."""
    cameras = np.load(DTU_DIR / "cameras_sphere.npz")
    split = scan24.splits["train"]
    assert len(split.images) == 25 and split.images.shape[1:] == (150, 200, 4)
    points_unit = torch.from_numpy(np.random.default_rng(1).uniform(-0.5, 0.5, (50, 3))).float()
    for view, name in enumerate(split.files):
        i = int(name.split("/")[-1][:3])
        world = (cameras[f"scale_mat_{i}"] @ np.c_[points_unit.double().numpy(), np.ones(50)].T).T  # (50, 4)
        projected = (cameras[f"world_mat_{i}"] @ world.T).T
        uv_opencv = projected[:, :2] / projected[:, 2:3]  # pixel centres at integers, full resolution
        uv, depth = project_points(points_unit, split.cameras.K[view], split.cameras.c2w[view])
        np.testing.assert_allclose(uv.double().numpy(), (uv_opencv + 0.5) / 8, atol=2e-3)
        assert bool((depth > 0).all())
        centre = split.cameras.c2w[view, :3, 3]
        assert float(centre.norm()) > 1.0  # outside the unit sphere of interest
        looking = -split.cameras.c2w[view, :3, 2]  # OpenGL: the camera looks along -z
        to_origin = -centre / centre.norm()
        assert float(looking @ to_origin) > np.cos(np.radians(20))  # the sphere's centre is near the image centre
    assert scan24.scale_mat[0, 0] == pytest.approx(float(cameras["scale_mat_0"][0, 0]))


def test_scan24_visual_hull_is_tight_and_keeps_the_mask_centres(scan24):
    split = scan24.splits["train"]
    box = scan24.aabb
    kept = carve_grid(box, 32, split)
    # scan 24's masks cover about 65% of each image, and the 25 views all face one side: a loose hull.
    assert 0.05 < kept.float().mean() < 0.7
    # Rays through mask pixels of one view must cross the hull: sample the ray of the mask's centroid pixel.
    mask = split.images[0, ..., 3] > 0.5
    rows, cols = torch.nonzero(mask, as_tuple=True)
    from common.rays import rays_through_pixels
    rays_o, rays_d = rays_through_pixels(split.cameras.K[0], split.cameras.c2w[0], cols.float().mean()[None] + 0.5,
                                         rows.float().mean()[None] + 0.5)
    t = torch.linspace(0.5, 4.0, 2000)
    points = rays_o + t[:, None] * rays_d
    inside_box = (points.abs() < 1).all(dim=-1)
    cells = ((points[inside_box] + 1) / 2 * 32).long().clamp(0, 31)
    assert bool(kept[cells[:, 0] + 32 * cells[:, 1] + 32 * 32 * cells[:, 2]].any())


@pytest.mark.parametrize("digits", [3, 6])
def test_builtin_scene_exported_in_the_neus_layout_loads_back_with_the_same_cameras(tmp_path, digits):
    root = load_scene("builtin", splits=("train",), max_images=6).root
    blender = load_blender(root, splits=("train",), max_images=6).splits["train"]
    radius = 1.3
    scale_mat = np.diag([radius, radius, radius, 1.0])
    scale_mat[:3, 3] = [0.1, -0.2, 0.05]
    write_neus_layout(tmp_path, blender.images, blender.cameras.K, blender.cameras.c2w, scale_mat, digits=digits)
    assert (tmp_path / "image" / f"{0:0{digits}d}.png").exists()
    scene = load_scene(str(tmp_path))  # load_scene dispatches on cameras_sphere.npz
    views = torch.cat([scene.splits["test"].cameras.c2w, scene.splits["train"].cameras.c2w])
    # Held-out view 0 first, then the training views 1..5. Poses come back in the unit-sphere frame: world = scale_mat @ unit.
    expected = blender.cameras.c2w.double().clone()
    expected[:, :3, 3] = (expected[:, :3, 3] - torch.tensor(scale_mat[:3, 3])) / radius
    torch.testing.assert_close(views.double(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(scene.splits["train"].cameras.K, blender.cameras.K[1:], atol=1e-3, rtol=0)
    alpha = scene.splits["train"].images[..., 3]
    assert set(alpha.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(alpha, (blender.images[1:, ..., 3] > 0.5).float())


def _tiny_scene(tmp_path):
    root = load_scene("builtin", splits=("train",), max_images=3).root
    blender = load_blender(root, splits=("train",), max_images=3).splits["train"]
    write_neus_layout(tmp_path, blender.images, blender.cameras.K, blender.cameras.c2w, np.eye(4))
    return tmp_path


def test_bad_neus_scenes_fail_with_one_line_naming_the_fix(tmp_path):
    root = _tiny_scene(tmp_path / "a")
    (root / "mask" / "001.png").unlink()
    with pytest.raises(UserError, match=r"have no mask .*first: 001.png"):
        load_dtu(root)
    root = _tiny_scene(tmp_path / "b")
    cams = dict(np.load(root / "cameras_sphere.npz"))
    del cams["world_mat_2"]
    np.savez(root / "cameras_sphere.npz", **cams)
    with pytest.raises(UserError, match=r"no world_mat entry .*image/002.png"):
        load_dtu(root)
    root = _tiny_scene(tmp_path / "c")
    from common.video import save_image
    save_image(root / "image" / "001.png", np.zeros((50, 60, 3), dtype=np.uint8))
    with pytest.raises(UserError, match=r"different sizes"):
        load_dtu(root)
    root = _tiny_scene(tmp_path / "d")
    shutil.rmtree(root / "image")
    with pytest.raises(UserError, match=r"no images"):
        load_dtu(root)
    (root / "cameras_sphere.npz").unlink()
    with pytest.raises(UserError, match=r"cameras_sphere.npz not found"):
        load_dtu(root)


def test_visual_hull_keeps_every_cell_inside_the_builtin_shapes_and_little_else():
    from common.data.builtin_scene import sdf

    scene = load_scene("builtin", splits=("train",), max_images=40)
    G = 32
    kept = carve_grid(scene.aabb, G, scene.splits["train"])
    index = torch.arange(G ** 3)
    ijk = torch.stack([index % G, (index // G) % G, index // G ** 2], -1)
    centres = scene.aabb[0] + (ijk.float() + 0.5) * (scene.aabb[1] - scene.aabb[0]) / G
    distance = sdf(centres)
    cell = 3.0 / G
    assert bool(kept[distance < cell].all())  # every cell the object enters survives
    assert float(kept[distance > 0.5].float().mean()) < 0.01  # space far from the object is carved away
    assert float(kept.float().mean()) < 0.2


def test_public_copy_variants_read_like_the_neus_layout(tmp_path):
    """images/ and masks/ for image/ and mask/, JPEG for PNG (upper-case suffix too), and extra files beside the
    data: the same cameras, the same masks and the photographs up to JPEG's loss."""
    from PIL import Image

    reference = load_dtu(_tiny_scene(tmp_path / "neus"), holdout_every=0).splits["train"]
    root = _tiny_scene(tmp_path / "public")
    (root / "image").rename(root / "images")
    (root / "mask").rename(root / "masks")
    for i, path in enumerate(sorted((root / "images").iterdir())):
        suffix = ".JPG" if i == 1 else ".jpg"
        Image.open(path).convert("RGB").save(path.with_suffix(suffix), quality=95)
        path.unlink()
    mask = root / "masks" / "002.png"
    Image.open(mask).convert("L").save(mask.with_suffix(".jpg"), quality=95)
    mask.unlink()
    for extra in ("README.txt", "images/.DS_Store", "images/notes.txt", "masks/Thumbs.db", "images/000_small.png"):
        (root / extra).write_bytes(b"not data")
    (root / "images" / "004.png").mkdir()  # a folder named like an image is no image
    np.save(root / "poses_bounds.npy", np.zeros((3, 17)))
    loaded = load_dtu(root, holdout_every=0).splits["train"]
    assert loaded.files == ["images/000.jpg", "images/001.JPG", "images/002.jpg"]
    torch.testing.assert_close(loaded.cameras.c2w, reference.cameras.c2w)
    torch.testing.assert_close(loaded.cameras.K, reference.cameras.K)
    assert torch.equal(loaded.images[..., 3], reference.images[..., 3])  # masks: JPEG noise is far from 0.5
    assert float((loaded.images[..., :3] - reference.images[..., :3]).abs().mean()) < 0.02


def test_ambiguous_or_missing_variants_are_one_line_errors(tmp_path):
    root = _tiny_scene(tmp_path / "both")
    shutil.copytree(root / "image", root / "images")
    with pytest.raises(UserError, match=r"images in both image/ and images/") as err:
        load_dtu(root)
    assert "\n" not in str(err.value)
    root = _tiny_scene(tmp_path / "twice")
    shutil.copy(root / "image" / "001.png", root / "image" / "001.jpg")
    with pytest.raises(UserError, match=r"two files for view 1: 001.jpg and 001.png"):
        load_dtu(root)
    root = _tiny_scene(tmp_path / "tiff")
    for path in (root / "image").iterdir():
        path.rename(path.with_suffix(".tif"))
    with pytest.raises(UserError, match=r"image/ holds 3 other file\(s\) \(e.g. 000.tif") as err:
        load_dtu(root)
    assert "\n" not in str(err.value)
    root = _tiny_scene(tmp_path / "nomask")
    shutil.rmtree(root / "mask")
    with pytest.raises(UserError, match=r"neither mask/ nor masks/ exists"):
        load_dtu(root)
