"""COLMAP models: binary and text read back exactly, COLMAP's conventions on the rays, normalisation, damaged files."""
import numpy as np
import pytest
import torch
from PIL import Image

from common.data.colmap import (ColmapCamera, ColmapImage, ColmapModel, c2w_from_colmap, colmap_from_c2w,
                                load_colmap, qvec_to_rotation, read_model, rotation_to_qvec, write_model)
from common.data.load import load_scene
from common.data.scene import normalise_poses
from common.errors import UserError
from common.paths import look_at
from common.rays import distort, rays_through_pixels

W, H = 40, 30
PARAMS = np.array([52.0, 50.5, 20.25, 14.75, 0.08, -0.03, 0.002, -0.001])  # OPENCV fx fy cx cy k1 k2 p1 p2
TARGET = np.array([0.3, -0.2, 1.1])  # the point every camera looks at (world units of the "COLMAP" model)


def _known_model(n_images=10, n_points=60, seed=0):
    """A COLMAP model made from known cameras (an orbit at height, tilted world axes, scale 3) and known points,
    with every point's keypoints projected exactly as COLMAP's OPENCV model does."""
    rng = np.random.default_rng(seed)
    tilt = qvec_to_rotation(np.array([0.9, 0.2, -0.3, 0.1]))  # COLMAP's world: any orientation
    up = tilt @ np.array([0.0, 0.0, 1.0])
    angles = np.linspace(0, 2 * np.pi, n_images, endpoint=False)
    eyes = TARGET + 3.0 * (tilt @ np.stack([np.cos(angles), np.sin(angles), 0.4 * np.ones_like(angles)])).T
    c2w = look_at(torch.tensor(eyes), torch.tensor(TARGET).expand(n_images, 3), torch.tensor(up).expand(n_images, 3))
    c2w = c2w.double().numpy()
    xyz = TARGET + rng.uniform(-0.5, 0.5, (n_points, 3))
    cameras = {1: ColmapCamera("OPENCV", W, H, PARAMS.copy())}
    images, tracks = {}, {i: [] for i in range(n_points)}
    for i in range(n_images):
        qvec, tvec = colmap_from_c2w(c2w[i])
        camera = qvec_to_rotation(qvec) @ xyz.T + tvec[:, None]  # (3, P) OpenCV camera frame
        x_d, y_d = distort(torch.tensor(camera[0] / camera[2]), torch.tensor(camera[1] / camera[2]),
                           torch.tensor(PARAMS[4:]))
        xys = np.stack([PARAMS[0] * x_d.numpy() + PARAMS[2], PARAMS[1] * y_d.numpy() + PARAMS[3]], -1)
        images[i + 1] = ColmapImage(qvec, tvec, 1, f"frame_{i:03d}.png", xys, np.arange(n_points, dtype=np.int64))
        for p in range(n_points):
            tracks[p].append((i + 1, p))
    points = {p: (xyz[p], rng.integers(0, 256, 3).astype(np.uint8), float(rng.uniform(0, 1)),
                  np.array(tracks[p], dtype=np.int32)) for p in range(n_points)}
    return ColmapModel(cameras, images, points), c2w


def _write_project(root, binary=True, **kwargs):
    model, c2w = _known_model(**kwargs)
    write_model(model, root / "sparse" / "0", binary=binary)
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for image in model.images.values():
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / image.name)
    return model, c2w


def _assert_same(a: ColmapModel, b: ColmapModel):
    assert a.cameras.keys() == b.cameras.keys() and a.images.keys() == b.images.keys()
    assert a.points.keys() == b.points.keys()
    for i, cam in a.cameras.items():
        assert (cam.model, cam.width, cam.height) == (b.cameras[i].model, b.cameras[i].width, b.cameras[i].height)
        np.testing.assert_array_equal(cam.params, b.cameras[i].params)
    for i, im in a.images.items():
        other = b.images[i]
        assert (im.name, im.camera_id) == (other.name, other.camera_id)
        for x, y in ((im.qvec, other.qvec), (im.tvec, other.tvec), (im.xys, other.xys),
                     (im.point3d_ids, other.point3d_ids)):
            np.testing.assert_array_equal(x, y)
    for i, (xyz, rgb, error, track) in a.points.items():
        xyz2, rgb2, error2, track2 = b.points[i]
        np.testing.assert_array_equal(xyz, xyz2)
        np.testing.assert_array_equal(rgb, rgb2)
        np.testing.assert_array_equal(track, track2)
        assert error == error2


@pytest.mark.parametrize("binary", [True, False])
def test_model_reads_back_exactly(tmp_path, binary):
    model, _ = _known_model()
    write_model(model, tmp_path, binary=binary)
    assert (tmp_path / ("cameras.bin" if binary else "cameras.txt")).is_file()
    _assert_same(model, read_model(tmp_path))


def test_pycolmap_reads_our_model_and_we_read_its(tmp_path):
    """The formats are COLMAP's, not only our own: pycolmap reads what we write, and what pycolmap writes (both
    layouts) reads back to the same model."""
    pycolmap = pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install -r requirements-capture.txt)")
    model, _ = _known_model(n_images=4, n_points=12)
    write_model(model, tmp_path / "ours")
    reconstruction = pycolmap.Reconstruction(str(tmp_path / "ours"))
    assert reconstruction.num_reg_images() == 4 and reconstruction.num_points3D() == 12
    np.testing.assert_allclose(reconstruction.cameras[1].params, PARAMS)
    for binary in (True, False):
        out = tmp_path / f"theirs_{binary}"
        out.mkdir()
        (reconstruction.write_binary if binary else reconstruction.write_text)(str(out))
        theirs = read_model(out)
        for i, im in model.images.items():
            assert theirs.images[i].name == im.name
            np.testing.assert_allclose(c2w_from_colmap(theirs.images[i]), c2w_from_colmap(im), atol=1e-9)
            np.testing.assert_allclose(theirs.images[i].xys, im.xys, rtol=1e-12 if binary else 1e-6)
        np.testing.assert_allclose(theirs.points_xyz(), model.points_xyz(), rtol=1e-12 if binary else 1e-6)


def test_quaternion_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        np.testing.assert_allclose(rotation_to_qvec(qvec_to_rotation(q)), q, atol=1e-12)


@pytest.mark.parametrize("binary", [True, False])
def test_rays_of_the_loaded_scene_pass_through_the_points(tmp_path, binary):
    """The whole chain of conventions (quaternion, world-to-camera, OpenCV -> OpenGL axes, the pixel centre at
    0.5, the OPENCV lens, the normalisation): the ray through each keypoint, undistorted by common/rays.py, passes
    through its 3D point mapped into the scene's frame."""
    model, _ = _write_project(tmp_path, binary=binary)
    scene = load_scene(str(tmp_path))
    assert set(scene.splits) == {"train", "val", "test"}
    assert scene.splits["test"].files == ["images/frame_000.png", "images/frame_008.png"]
    assert len(scene.splits["train"].files) == 8
    assert scene.splits["train"].images.shape == (8, H, W, 3)
    _, similarity = normalise_poses(torch.tensor(np.stack([c2w_from_colmap(im) for im in model.images.values()])),
                                    1.7)
    xyz = model.points_xyz() @ similarity[:3, :3].numpy().T + similarity[:3, 3].numpy()
    np.testing.assert_allclose(scene.points.numpy(), xyz, atol=1e-5)
    split = scene.splits["train"]
    cams = split.cameras
    np.testing.assert_allclose(cams.K[0].numpy(), [[52.0, 0, 20.25], [0, 50.5, 14.75], [0, 0, 1]])
    np.testing.assert_allclose(cams.distortion[0].numpy(), PARAMS[4:], rtol=1e-6)
    for row, name in enumerate(split.files):
        image = next(im for im in model.images.values() if name.endswith(im.name))
        u, v = (torch.tensor(image.xys[:, k], dtype=torch.float64) for k in (0, 1))
        rays_o, rays_d = rays_through_pixels(cams.K[row].double(), cams.c2w[row].double(), u, v,
                                             cams.distortion[row].double())
        d = rays_d / rays_d.norm(dim=-1, keepdim=True)
        offset = torch.tensor(xyz) - rays_o
        distance = (offset - (offset * d).sum(-1, keepdim=True) * d).norm(dim=-1)
        assert float(distance.max()) < 1e-4, (name, float(distance.max()))


def test_normalisation_centres_the_focus_levels_up_and_scales(tmp_path):
    _, c2w = _write_project(tmp_path)
    scene = load_scene(str(tmp_path))
    poses = torch.cat([scene.splits["train"].cameras.c2w, scene.splits["test"].cameras.c2w]).double()
    centres = poses[:, :3, 3]
    np.testing.assert_allclose(float(centres.norm(dim=-1).mean()), 1.7, rtol=1e-5)  # the stated radius
    up = poses[:, :3, 1].mean(0)
    assert float(up[2] / up.norm()) > 1 - 1e-6  # the cameras' mean up is +z
    forward = -poses[:, :3, 2]
    # every camera looks at the origin (the known TARGET of the model)
    cosine = (forward * -centres).sum(-1) / centres.norm(dim=-1)
    assert float(cosine.min()) > 1 - 1e-6
    assert scene.near < 0.2 and scene.far > 1.7
    assert bool((scene.aabb[0] <= -1).all() and (scene.aabb[1] >= 1).all())


def test_forward_facing_focus_comes_from_the_points():
    """Parallel optical axes meet nowhere: the focus is the median depth of the points along the mean axis."""
    eyes = torch.tensor([[x, y, 0.0] for x in (-0.2, 0.0, 0.2) for y in (-0.1, 0.1)])
    c2w = look_at(eyes, eyes + torch.tensor([0.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 0.0]).expand(6, 3))
    points = torch.tensor([[0.0, 0.0, -z] for z in (3.0, 4.0, 5.0)])
    _, similarity = normalise_poses(c2w, 1.0, points)
    focus = torch.tensor([0.0, 0.0, -4.0, 1.0], dtype=torch.float64)
    np.testing.assert_allclose((similarity @ focus)[:3].numpy(), 0.0, atol=1e-9)


def _one_line_error(tmp_path, name):
    with pytest.raises(UserError) as err:
        load_scene(str(tmp_path))
    message = str(err.value)
    assert name in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("part", ["cameras", "images", "points3D"])
def test_truncated_binary_file_names_the_file(tmp_path, part):
    _write_project(tmp_path, n_images=3, n_points=5)
    path = tmp_path / "sparse" / "0" / f"{part}.bin"
    path.write_bytes(path.read_bytes()[:-5])
    assert "damaged" in _one_line_error(tmp_path, str(path))


def test_trailing_bytes_and_bad_text_name_the_file(tmp_path):
    _write_project(tmp_path, n_images=3, n_points=5)
    path = tmp_path / "sparse" / "0" / "cameras.bin"
    path.write_bytes(path.read_bytes() + b"\0\0\0")
    _one_line_error(tmp_path, str(path))
    text = tmp_path / "text"
    _write_project(text, binary=False, n_images=3, n_points=5)
    path = text / "sparse" / "0" / "images.txt"
    path.write_text(path.read_text().replace("frame_001.png", "").replace("1 0.", "1 zero", 1))
    _one_line_error(text, str(path))


def test_missing_part_and_unsupported_camera(tmp_path):
    model, _ = _write_project(tmp_path, n_images=3, n_points=5)
    (tmp_path / "sparse" / "0" / "points3D.bin").unlink()
    _one_line_error(tmp_path, "points3D.bin")
    model.cameras[1] = ColmapCamera("OPENCV_FISHEYE", W, H, PARAMS.copy())
    write_model(model, tmp_path / "sparse" / "0")
    assert "OPENCV_FISHEYE" in _one_line_error(tmp_path, "cameras.bin")


def test_images_of_another_size_are_refused(tmp_path):
    _write_project(tmp_path, n_images=3, n_points=5)
    Image.fromarray(np.zeros((H // 2, W // 2, 3), dtype=np.uint8)).save(tmp_path / "images" / "frame_001.png")
    _one_line_error(tmp_path, "frame_001.png")


def test_downscale_scales_the_intrinsics(tmp_path):
    _write_project(tmp_path, n_images=3, n_points=5)
    scene = load_colmap(tmp_path, downscale=2)
    cams = scene.splits["train"].cameras
    assert (cams.height, cams.width) == (H // 2, W // 2)
    np.testing.assert_allclose(cams.K[0].numpy(), [[26.0, 0, 10.125], [0, 25.25, 7.375], [0, 0, 1]])


# --- layouts: which reader a folder holding several gets, and the warning for an unsuited script -------------

def test_a_folder_with_several_layouts_is_read_as_the_script_needs(tmp_path, make_blender_scene, capsys):
    from common.data.load import LAYOUTS

    _write_project(tmp_path, n_images=9, n_points=20)
    make_blender_scene(tmp_path)  # transforms_{train,val,test}.json beside images/ and sparse/0
    scene = load_scene(str(tmp_path), layouts=("object",))
    assert scene.layout == "object" and scene.camera_files["train"].name == "transforms_train.json"
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "read as blender" in warning and "colmap (sparse/0)" in warning
    scene = load_scene(str(tmp_path), layouts=("unbounded", "object"))
    assert scene.layout == "unbounded" and scene.camera_files["train"].name == "images.bin"
    assert "read as colmap" in capsys.readouterr().err
    # the user's choice: the format's own file, or the model folder
    assert load_scene(str(tmp_path / "sparse" / "0"), layouts=("object",)).camera_files["train"].name == "images.bin"
    assert load_scene(str(tmp_path / "transforms_train.json")).layout == "object"
    assert set(LAYOUTS) == {"object", "forward-facing", "unbounded"}


def test_an_unsuited_script_says_so_in_one_line(tmp_path, capsys):
    _write_project(tmp_path, n_images=9, n_points=20)
    load_scene(str(tmp_path), layouts=("unbounded",))
    assert capsys.readouterr().err == ""
    load_scene(str(tmp_path), layouts=("object",))
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "unbounded capture" in warning and "03_mipnerf360.py or 04_hashnerf.py" in warning


def test_camera_layout_tells_forward_facing_from_surrounding():
    from common.data.scene import camera_layout

    eyes = torch.tensor([[x, y, 0.0] for x in (-0.3, 0.0, 0.3) for y in (-0.2, 0.2)])
    facing = look_at(eyes, eyes * 0.2 + torch.tensor([0.0, 0.0, -4.0]), torch.tensor([0.0, 1.0, 0.0]).expand(6, 3))
    assert camera_layout(facing) == "forward-facing"
    angles = torch.linspace(0, 3.0, 8)  # half an orbit is enough to surround
    eyes = torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles), torch.ones(8)], -1)
    around = look_at(eyes, torch.zeros(8, 3), torch.tensor([0.0, 0.0, 1.0]).expand(8, 3))
    assert camera_layout(around) == "surrounding"


def test_every_script_declares_layouts_that_agree_with_the_dispatcher():
    """SCENE_LAYOUTS of the five scripts (read without importing them) are layouts the dispatcher knows, and the
    scripts its warning suggests for a layout are exactly those that declare it."""
    import ast

    from common.data.load import LAYOUTS, SUITED_SCRIPTS
    from tests.conftest import REPO_ROOT

    declared = {}
    for script in sorted(REPO_ROOT.glob("0[1-5]_*.py")):
        tree = ast.parse(script.read_text())
        values = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "SCENE_LAYOUTS" for t in node.targets)]
        assert len(values) == 1 and set(values[0]) <= set(LAYOUTS), script.name
        declared[script.name] = values[0]
    assert len(declared) == 5
    for layout in LAYOUTS:
        suggested = {name for name in declared if name in SUITED_SCRIPTS[layout]}
        assert suggested == {name for name, layouts in declared.items() if layout in layouts}, layout
