import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from common.data import blender
from common.data.blender import load_blender
from common.data.load import load_scene
from common.data.scene import background_color, check_scene, composite_on_background, downscale_area
from common.errors import UserError

LEGO_HOWTO = (
    "download nerf_synthetic.zip from the NeRF authors' folder "
    "https://drive.google.com/drive/folders/128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1 (README, 'Getting the data') and unzip "
    "it so that data/nerf_synthetic/lego/transforms_train.json exists, or pass --datadir"
)


def test_lego_loads_with_blender_focal_cameras_and_rgba(lego_dir):
    scene = load_scene("lego", str(lego_dir), max_images={"train": 2, "val": 1, "test": 1})
    assert scene.name == "lego" and scene.white_background
    assert (scene.near, scene.far) == (2.0, 6.0)
    assert scene.aabb.shape == (2, 3)
    meta = json.loads((lego_dir / "transforms_train.json").read_text())
    train = scene.splits["train"]
    assert train.images.shape == (2, 400, 400, 4) and train.images.dtype == torch.float32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert (train.cameras.height, train.cameras.width) == (400, 400)
    focal = 0.5 * 400 / math.tan(0.5 * meta["camera_angle_x"])
    torch.testing.assert_close(train.cameras.K[0], torch.tensor([[focal, 0, 200], [0, focal, 200], [0, 0, 1.0]]))
    torch.testing.assert_close(train.cameras.c2w[1], torch.tensor(meta["frames"][1]["transform_matrix"]))
    assert train.files == ["train/r_0.png", "train/r_1.png"]
    radii = train.cameras.c2w[:, :3, 3].norm(dim=-1)
    assert torch.allclose(radii, torch.full_like(radii, 4.03), atol=0.1)
    png = iio.imread(lego_dir / "train" / "r_1.png")
    np.testing.assert_allclose(train.images[1].numpy(), png / 255.0, atol=1e-6)
    assert [len(scene.splits[s].files) for s in ("val", "test")] == [1, 1]


def test_lego_downscale_averages_areas_and_scales_K(lego_dir):
    full = load_scene("lego", str(lego_dir), splits=("train",), max_images={"train": 1}).splits["train"]
    half = load_scene("lego", str(lego_dir), downscale=2, splits=("train",), max_images={"train": 1}).splits["train"]
    assert half.images.shape == (1, 200, 200, 4)
    torch.testing.assert_close(half.cameras.K[0, :2], full.cameras.K[0, :2] / 2)
    # Composited on white, the downscaled image is the 2x2 block mean of the composited full image.
    white_full = composite_on_background(full.images[0], 1.0).reshape(200, 2, 200, 2, 3).mean(dim=(1, 3))
    torch.testing.assert_close(composite_on_background(half.images[0], 1.0), white_full, atol=1e-5, rtol=0)


def test_lego_datadir_may_be_the_nerf_synthetic_folder(lego_dir):
    scene = load_scene("lego", str(lego_dir.parent), splits=("val",), max_images=1)
    assert scene.root == lego_dir and scene.splits["val"].images.shape[0] == 1


def test_missing_lego_folder_says_how_to_get_the_data(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        load_scene("lego", str(tmp_path / "nowhere"))
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "transforms_train.json") in message
    assert LEGO_HOWTO in message and "\n" not in message
    monkeypatch.setattr(blender, "REPO_ROOT", tmp_path)  # the default location: <repo>/data/nerf_synthetic/lego
    with pytest.raises(UserError, match="data/nerf_synthetic/lego/transforms_train.json not found"):
        load_scene("lego")


def test_unknown_scene_name_and_missing_scene_path_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown scene 'legoo'"):
        load_scene("legoo")
    with pytest.raises(UserError, match="not found"):
        load_scene(str(tmp_path / "missing_scene"))


def test_small_blender_scene_loads_from_a_path(blender_scene):
    scene = load_scene(str(blender_scene), max_images={"train": 1})
    assert scene.name == "scene"
    assert scene.splits["train"].images.shape == (1, 8, 8, 4)
    assert scene.splits["val"].images.shape == (2, 8, 8, 4)
    assert len(scene.splits["test"].cameras) == 2


def test_rgb_images_load_with_three_channels(tmp_path, make_blender_scene):
    root = make_blender_scene(tmp_path / "rgb", channels=3, splits=("train",))
    assert load_blender(root, splits=("train",)).splits["train"].images.shape == (2, 8, 8, 3)


def test_missing_image_names_the_file(blender_scene):
    (blender_scene / "train" / "r_1.png").unlink()
    with pytest.raises(UserError) as err:
        load_blender(blender_scene)
    message = str(err.value)
    assert "transforms_train.json names 1 frame(s) whose images are missing" in message
    assert str(blender_scene / "train" / "r_1.png") in message and "re-extract" in message


def test_transforms_naming_absent_frames_counts_them(blender_scene):
    path = blender_scene / "transforms_val.json"
    meta = json.loads(path.read_text())
    meta["frames"] += [dict(meta["frames"][0], file_path=f"./val/r_{i}") for i in (7, 8, 9)]
    path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"transforms_val.json names 3 frame\(s\) whose images are missing"):
        load_blender(blender_scene)
    assert load_blender(blender_scene, max_images={"val": 2}).splits["val"].images.shape[0] == 2


def test_unreadable_image_names_the_file(blender_scene):
    bad = blender_scene / "test" / "r_0.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(UserError) as err:
        load_blender(blender_scene)
    assert str(err.value).startswith(f"cannot read image {bad}")
    assert "\n" not in str(err.value)


def test_images_of_mixed_sizes_are_refused(blender_scene):
    iio.imwrite(blender_scene / "train" / "r_1.png", np.zeros((6, 8, 4), dtype=np.uint8))
    with pytest.raises(UserError, match=r"images of mixed sizes .* is 8x8 but .*r_1.png is 8x6"):
        load_blender(blender_scene)


def test_malformed_transforms_json_says_where(blender_scene):
    path = blender_scene / "transforms_train.json"
    path.write_text('{\n  "camera_angle_x": 0.69,\n  "frames": [\n')
    with pytest.raises(UserError, match=r"transforms_train.json is not valid JSON \(.* line 4"):
        load_blender(blender_scene)
    path.write_text(json.dumps({"camera_angle_x": 0.69, "frames": [{"file_path": "./train/r_0"}]}))
    with pytest.raises(UserError, match="frame 0 needs a 4x4 numeric 'transform_matrix'"):
        load_blender(blender_scene)
    path.write_text(json.dumps({"frames": []}))
    with pytest.raises(UserError, match="non-empty list 'frames'"):
        load_blender(blender_scene)


def test_missing_split_file_is_a_user_error(blender_scene):
    (blender_scene / "transforms_test.json").unlink()
    with pytest.raises(UserError, match="transforms_test.json not found"):
        load_blender(blender_scene)
    assert set(load_blender(blender_scene, splits=("train", "val")).splits) == {"train", "val"}


def test_downscale_is_a_premultiplied_block_mean_that_commutes_with_compositing():
    rng = np.random.default_rng(1)
    rgba = rng.random((6, 9, 4)).astype(np.float32)
    rgba[..., 3] = rng.choice([0.0, 0.3, 1.0], size=(6, 9))
    small = downscale_area(rgba, 3)
    assert small.shape == (2, 3, 4)
    np.testing.assert_allclose(small[..., 3], rgba[..., 3].reshape(2, 3, 3, 3).mean(axis=(1, 3)), atol=1e-6)
    for background in (0.0, 1.0, 0.25):
        composited_then_small = composite_on_background(torch.from_numpy(rgba), background)
        composited_then_small = composited_then_small.reshape(2, 3, 3, 3, 3).mean(dim=(1, 3))
        small_then_composited = composite_on_background(torch.from_numpy(small), background)
        torch.testing.assert_close(small_then_composited, composited_then_small, atol=1e-6, rtol=0)


def test_straight_gt_protocol_averages_rgba_as_stored_and_darkens_edges_over_white():
    """--gt_protocol straight reproduces the common loaders (average RGBA, composite after): a block half covered
    by a white object, half transparent black, comes out grey over white instead of white."""
    rgba = np.zeros((2, 2, 4), dtype=np.float32)
    rgba[0, :, :] = 1.0  # top row: opaque white; bottom row: transparent black (as Blender writes empty pixels)
    straight = downscale_area(rgba, 2, "straight")
    np.testing.assert_allclose(straight[0, 0], [0.5, 0.5, 0.5, 0.5])
    over_white_straight = composite_on_background(torch.from_numpy(straight), 1.0)
    over_white_ours = composite_on_background(torch.from_numpy(downscale_area(rgba, 2)), 1.0)
    torch.testing.assert_close(over_white_ours, torch.ones(1, 1, 3))  # white object on white: white
    torch.testing.assert_close(over_white_straight, torch.full((1, 1, 3), 0.75))  # the darker edge
    with pytest.raises(UserError, match="gt_protocol"):
        downscale_area(rgba, 2, "resize")


def test_composite_on_background_and_background_colors():
    rgba = torch.tensor([[1.0, 0.0, 0.0, 0.25], [0.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(composite_on_background(rgba, 1.0), torch.tensor([[1.0, 0.75, 0.75], [0.0, 1.0, 0.0]]))
    black = background_color("black", (2, 3))
    torch.testing.assert_close(composite_on_background(rgba, black), torch.tensor([[0.25, 0, 0], [0, 1.0, 0]]))
    assert torch.equal(background_color("white", (2, 5, 3)), torch.ones(2, 5, 3))
    first = background_color("random", (4, 3), torch.Generator().manual_seed(3))
    again = background_color("random", (4, 3), torch.Generator().manual_seed(3))
    assert first.shape == (4, 3) and torch.equal(first, again) and 0 <= first.min() and first.max() <= 1
    rgb = torch.rand(3, 3)
    assert composite_on_background(rgb, 1.0) is rgb
    with pytest.raises(ValueError):
        background_color("green", (1, 3))
    with pytest.raises(ValueError):
        background_color("white", (4,))  # the shape includes the RGB axis


def test_builtin_scene_in_an_unwritable_place_is_a_user_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write the built-in scene into .*a_file/builtin.*--datadir"):
        load_scene("builtin", str(blocker / "builtin"))


# --- non-finite camera data ---------------------------------------------------------------------------------------
def _edit_transforms(root, split, edit):
    path = root / f"transforms_{split}.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))  # json.dumps writes NaN / Infinity, which json.loads reads back: no error there
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_pose_is_refused_naming_the_file_and_the_frame(blender_scene, value):
    def poison(meta):
        meta["frames"][1]["transform_matrix"][0][3] = value

    path = _edit_transforms(blender_scene, "val", poison)
    with pytest.raises(UserError) as err:
        load_blender(blender_scene)
    assert str(err.value) == (f"{path}: frame 1 (./val/r_1) has a non-finite 'transform_matrix' (NaN or Infinity); "
                              f"fix or re-download it")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, 0.0, 4.0])
def test_a_camera_angle_that_is_not_a_finite_angle_is_refused(blender_scene, value):
    path = _edit_transforms(blender_scene, "train", lambda meta: meta.update(camera_angle_x=value))
    with pytest.raises(UserError, match=r"'camera_angle_x' is .*, it must be an angle in radians in \(0, pi\)") as err:
        load_blender(blender_scene)
    assert str(path) in str(err.value)


def test_check_scene_refuses_non_finite_bounds_and_intrinsics(blender_scene):
    scene = load_blender(blender_scene)
    scene.splits["test"].cameras.K[1, 0, 0] = float("nan")
    with pytest.raises(UserError, match=r"transforms_test\.json: frame 1 \(test/r_1.png\) of the test split has a "
                                        r"non-finite camera"):
        check_scene(scene)
    scene = load_blender(blender_scene)
    scene.far = float("inf")
    with pytest.raises(UserError, match="the far bound of scene .* is inf"):
        check_scene(scene)


def test_a_float_image_holding_nan_is_refused(tmp_path, make_blender_scene):
    root = make_blender_scene(tmp_path / "scene", splits=("train",))
    image = np.full((8, 8), 0.5, np.float32)
    image[3, 3] = np.nan
    iio.imwrite(root / "train" / "r_0.tiff", image, plugin="pillow")
    _edit_transforms(root, "train", lambda meta: meta["frames"][0].update(file_path="./train/r_0.tiff"))
    with pytest.raises(UserError, match=r"r_0\.tiff holds NaN or infinite values"):
        load_blender(root, splits=("train",))


# --- RGB images: the background they are taken to have ------------------------------------------------------------
def test_rgba_scenes_load_silently_with_a_white_background(blender_scene, capsys):
    scene = load_blender(blender_scene)
    assert scene.background == 1.0 and all(split.has_alpha for split in scene.splits.values())
    assert capsys.readouterr().err == ""


def test_rgb_images_are_taken_to_be_on_white_with_one_warning(tmp_path, make_blender_scene, capsys):
    root = make_blender_scene(tmp_path / "rgb", channels=3)
    for split in ("train", "val", "test"):  # RGB renders on white: border pixels are white
        for path in (root / split).glob("*.png"):
            image = iio.imread(path)
            image[0], image[-1], image[:, 0], image[:, -1] = 255, 255, 255, 255
            iio.imwrite(path, image)
    scene = load_blender(root)
    assert scene.background == 1.0 and not scene.splits["train"].has_alpha
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"warning: {root}: the train, val, test images have no alpha channel; they are taken to be "
                          f"on a white background (the Blender protocol), for training and for scoring")
    assert "border pixels" not in err


def test_rgb_images_on_black_get_a_hint_in_the_warning(tmp_path, make_blender_scene, capsys):
    root = make_blender_scene(tmp_path / "rgb", channels=3, splits=("train",))
    for path in (root / "train").glob("*.png"):
        image = np.zeros((8, 8, 3), np.uint8)
        image[3:5, 3:5] = 200  # a small object on black: what dropping the alpha of an RGBA render gives
        iio.imwrite(path, image)
    load_blender(root, splits=("train",))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "their border pixels average 0.00, not 1: if the background is not white" in err
