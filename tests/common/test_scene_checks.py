"""The checks every Scene gets when it is built (common.data.scene.check_scene), whatever format built it, and the
raw-matrix check formats run before their own arithmetic (check_matrix). tests/scripts/test_probes.py runs every
script against damaged files of every layout; here the primitives themselves."""
import math

import pytest
import torch

from common.data.scene import Cameras, Scene, Split, check_matrix
from common.errors import UserError


def _scene(c2w=None, K=None, near=2.0, far=6.0, images=None, size=4, n=3, **extra):
    c2w = torch.eye(4).repeat(n, 1, 1) if c2w is None else c2w
    K = torch.tensor([[5.0, 0, 2], [0, 5.0, 2], [0, 0, 1]]).repeat(n, 1, 1) if K is None else K
    images = torch.zeros(n, size, size, 4) if images is None else images
    split = Split("test", images, Cameras(c2w, K, size, size), [f"test/r_{i}.png" for i in range(n)])
    return Scene("tiny", "somewhere", {"test": split}, near=near, far=far, aabb=torch.zeros(2, 3),
                 white_background=True, **extra)


def test_a_valid_scene_builds():
    assert _scene().splits["test"].cameras.height == 4


@pytest.mark.parametrize("edit, message", [
    (lambda c2w, K: c2w.__setitem__((1, 0, 3), math.nan), r"frame 1 \(test/r_1\.png\) of the test split has a "
                                                          r"non-finite camera"),
    (lambda c2w, K: c2w.__setitem__((2, slice(0, 3), 0), 0.0), r"frame 2 \(test/r_2\.png\) of the test split has a "
                                                               r"singular pose"),
    (lambda c2w, K: c2w.__setitem__((0, slice(0, 3), 2), torch.tensor([0.0, 1.0, 1e-9])), r"frame 0 .* singular"),
    (lambda c2w, K: K.__setitem__((1, 1, 1), 0.0), r"frame 1 .* intrinsics that make no image \(focal lengths fx = 5, "
                                                   r"fy = 0 pixels"),
    (lambda c2w, K: K.__setitem__((0, 0, 0), -5.0), r"frame 0 .* intrinsics that make no image"),
])
def test_building_a_scene_refuses_a_camera_no_renderer_can_use_naming_the_camera_file_and_frame(edit, message):
    c2w, K = torch.eye(4).repeat(3, 1, 1), torch.tensor([[5.0, 0, 2], [0, 5.0, 2], [0, 0, 1]]).repeat(3, 1, 1)
    edit(c2w, K)
    with pytest.raises(UserError, match=r"^cams\.json: " + message):
        _scene(c2w, K, camera_files={"test": "cams.json"})
    with pytest.raises(UserError, match=r"^split 'test' of somewhere: " + message):  # no camera file given
        _scene(c2w, K)


def test_a_uniformly_scaled_pose_is_no_singular_pose():
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, :3, :3] *= 1e-3  # small, but every direction kept
    _scene(c2w)


@pytest.mark.parametrize("kwargs, message", [
    (dict(near=3.0, far=3.0), r"near = 3, far = 3: the bounds need 0 <= near < far"),
    (dict(near=-1.0), r"near = -1, far = 6"),
    (dict(far=math.nan), r"the far bound of scene somewhere is nan"),
    (dict(n=0), r"the test split has no frame"),
    (dict(images=torch.zeros(3, 4, 5, 4)), r"the test cameras make 4x4 images but the images are 5x4 pixels"),
    (dict(images=torch.zeros(2, 4, 4, 4)), r"2 images but 3 poses and 3 intrinsics"),
    (dict(size=0, images=torch.zeros(3, 0, 0, 4)), r"make 0x0 images"),
])
def test_building_a_scene_refuses_bounds_and_splits_that_make_no_image(kwargs, message):
    with pytest.raises(UserError, match=message):
        _scene(**kwargs)


def test_every_level_of_a_multiscale_scene_is_checked():
    from common.data.multiscale import Level, MultiscaleScene

    good, bad = _scene().splits["test"], _scene().splits["test"]
    bad = Split("test", bad.images[:, :2, :2], Cameras(bad.cameras.c2w.clone(), bad.cameras.K.clone(), 2, 2),
                bad.files)
    bad.cameras.c2w[1, 0, 0] = math.inf
    with pytest.raises(UserError, match=r"^metadata\.json: frame 1 \(test/r_1\.png\) of the test split has a "
                                        r"non-finite camera"):
        MultiscaleScene("ms", "somewhere", {"test": good}, 2.0, 6.0, torch.zeros(2, 3), True,
                        camera_files={"test": "metadata.json"},
                        levels={"test": [Level(0, 1.0, good), Level(1, 4.0, bad)]})


@pytest.mark.parametrize("matrix, message", [
    ([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, math.nan, 0], [0, 0, 0, 1]], "holds NaN or Infinity"),
    ([[1.0, 0, 0, 5], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]], "is singular"),
    ([[0.0] * 4] * 3, "is singular"),
])
def test_check_matrix_names_the_entry_and_the_defect(matrix, message):
    with pytest.raises(UserError, match=rf"^cams\.npz: world_mat_3 {message}"):
        check_matrix(matrix, "cams.npz: world_mat_3")
    check_matrix([[2.0, 0, 0, 1], [0, 2, 0, 1], [0, 0, 2, 1], [0, 0, 0, 1]], "fine")
