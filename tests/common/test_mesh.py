"""common/mesh.py: grids in world units, marching cubes on analytic fields, PLY round trips."""
import numpy as np
import pytest
import torch

from common.data import builtin_scene
from common.errors import UserError
from common.mesh import grid_points, marching_cubes, read_ply, sample_grid, write_ply

BOX = torch.tensor([[-1.0, -0.8, -0.6], [1.2, 1.0, 0.9]])  # deliberately not a cube, not centred


def face_normals_and_centres(vertices, faces):
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return np.cross(b - a, c - a), (a + b + c) / 3.0


def test_grid_points_span_the_box_with_nodes_on_its_faces():
    points = grid_points(BOX, 5)
    assert points.shape == (5, 5, 5, 3)
    assert torch.allclose(points[0, 0, 0], BOX[0]) and torch.allclose(points[-1, -1, -1], BOX[1])
    assert torch.allclose(points[1, 0, 0] - points[0, 0, 0], torch.tensor([2.2 / 4, 0.0, 0.0]))  # x along axis 0
    assert torch.allclose(points[0, 0, 1] - points[0, 0, 0], torch.tensor([0.0, 0.0, 1.5 / 4]))  # z along axis 2


def test_sample_grid_evaluates_in_chunks_at_the_nodes():
    calls = []

    def fn(p):
        calls.append(p.shape[0])
        return p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2]

    values = sample_grid(fn, BOX, 7, chunk=50)
    points = grid_points(BOX, 7)
    expected = (points[..., 0] + 10 * points[..., 1] + 100 * points[..., 2]).numpy()
    assert values.shape == (7, 7, 7)
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-5)
    assert max(calls) <= 50 and sum(calls) == 7 ** 3


@pytest.mark.parametrize("inside", ["above", "below"])
def test_sphere_mesh_lies_on_the_sphere_in_world_units_with_outward_faces(inside):
    # A sphere of radius 0.5 centred off the origin, in a non-cubic box: a wrong index -> world mapping (e.g.
    # dividing by anything but res - 1 per axis, or forgetting the box's min corner) moves it off the sphere.
    centre, radius, res = np.array([0.1, 0.05, 0.1]), 0.5, 64
    dist = lambda p: (p - torch.tensor(centre, dtype=torch.float32)).norm(dim=-1)  # noqa: E731
    if inside == "above":  # a density-like field: 1 at the centre, level 1 - r on the sphere
        values, level = sample_grid(lambda p: 1.0 - dist(p), BOX, res), 1.0 - radius
    else:  # a signed distance: level 0
        values, level = sample_grid(lambda p: dist(p) - radius, BOX, res), 0.0
    vertices, faces = marching_cubes(values, BOX, level, inside=inside)
    voxel = float(((BOX[1] - BOX[0]) / (res - 1)).max())
    error = np.abs(np.linalg.norm(vertices - centre, axis=1) - radius)
    assert error.max() < 0.1 * voxel  # a linear field along the normal: marching cubes is nearly exact
    normals, centres = face_normals_and_centres(vertices, faces)
    assert np.all(np.sum(normals * (centres - centre), axis=1) > 0)  # every face points out of the solid
    assert faces.dtype == np.int64 and faces.max() < len(vertices)


def test_builtin_scene_mesh_lies_on_its_true_surface_within_a_voxel():
    res = 48
    aabb = torch.tensor([[-1.3] * 3, [1.3] * 3])
    values = sample_grid(builtin_scene.sdf, aabb, res)
    vertices, _ = marching_cubes(values, aabb, 0.0, inside="below")
    voxel = 2.6 / (res - 1)
    distance = builtin_scene.sdf(torch.from_numpy(vertices)).abs()
    assert float(distance.max()) < voxel


def test_empty_level_set_is_a_one_line_user_error():
    values = np.zeros((4, 4, 4), dtype=np.float32)
    with pytest.raises(UserError, match="no surface at level 50"):
        marching_cubes(values, BOX, 50.0)


@pytest.mark.parametrize("ascii", [False, True])
@pytest.mark.parametrize("with_colors", [False, True])
def test_ply_round_trip(tmp_path, ascii, with_colors):
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(10, 3)).astype(np.float32)
    faces = rng.integers(0, 10, size=(7, 3))
    colors = rng.random((10, 3)) if with_colors else None
    path = write_ply(tmp_path / "sub" / "m.ply", vertices, faces, colors=colors, ascii=ascii)
    text = path.read_bytes()
    assert text.startswith(b"ply\nformat " + (b"ascii" if ascii else b"binary_little_endian"))
    v, f, c = read_ply(path)
    np.testing.assert_allclose(v, vertices, rtol=1e-6)
    np.testing.assert_array_equal(f, faces)
    if with_colors:
        np.testing.assert_array_equal(c, (colors * 255 + 0.5).astype(np.uint8))
    else:
        assert c is None


def test_read_ply_rejects_other_files(tmp_path):
    path = tmp_path / "x.ply"
    path.write_text("hello")
    with pytest.raises(UserError, match="not a PLY"):
        read_ply(path)
