"""common/scene3d.py: what each drawing helper adds to a viser scene (how many things, where, in which colour).

One viser server (127.0.0.1, a port the OS picks) serves every test of this module; each test draws under its
own name and reads the handles back, as the browser would receive them.
"""
import math
import re

import numpy as np
import pytest
import torch

viser = pytest.importorskip("viser", reason="viser is not installed (pip install -r requirements-viewer.txt)")

from common import scene3d  # noqa: E402
from common.data.scene import Cameras  # noqa: E402
from common.paths import look_at  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    server = scene3d.offline_server()
    yield server.scene
    server.stop()


def _rotate(wxyz, vector):
    return viser.transforms.SO3(np.asarray(wxyz, np.float64)).apply(np.asarray(vector, np.float64))


def test_box_edges_are_the_twelve_edges_of_the_box(scene):
    aabb = np.array([[-1.0, -2.0, 0.5], [1.0, 3.0, 2.5]])
    handle = scene3d.add_box(scene, aabb, name="/test_box", color=(10, 20, 30))
    edges = np.asarray(handle.points)
    assert edges.shape == (12, 2, 3)
    steps = edges[:, 1] - edges[:, 0]
    # every edge moves along exactly one axis, by the box's full extent on it; four edges per axis
    assert np.all((np.abs(steps) > 0).sum(axis=-1) == 1)
    axes = np.argmax(np.abs(steps), axis=-1)
    assert np.bincount(axes, minlength=3).tolist() == [4, 4, 4]
    np.testing.assert_allclose(np.abs(steps).max(axis=-1), (aabb[1] - aabb[0])[axes])
    corners = {tuple(p) for p in edges.reshape(-1, 3).tolist()}
    assert corners == {(x, y, z) for x in (-1, 1) for y in (-2, 3) for z in (0.5, 2.5)}
    assert np.asarray(handle.colors).reshape(-1, 3)[0].tolist() == [10, 20, 30]


def test_cameras_sit_at_their_centres_and_look_where_the_opengl_camera_looks(scene):
    eyes = torch.tensor([[4.0, 0.0, 1.0], [0.0, -3.0, 2.0], [-2.0, 2.0, -1.0]])
    c2w = torch.stack([look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])) for eye in eyes])
    H, W, focal = 30, 40, 35.0
    K = torch.tensor([[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1]]).expand(3, 3, 3)
    images = torch.rand(3, H, W, 4)
    handles = scene3d.add_cameras(scene, Cameras(c2w, K, H, W), images, name="/test_cams", max_image_side=16)
    assert len(handles) == 3
    for handle, pose in zip(handles, c2w.double().numpy()):
        np.testing.assert_allclose(handle.position, pose[:3, 3], atol=1e-6)
        # viser's frustum looks along its +z (OpenCV) and its +y is image-down: our camera looks along -z, y up
        np.testing.assert_allclose(_rotate(handle.wxyz, [0, 0, 1]), -pose[:3, 2], atol=1e-6)
        np.testing.assert_allclose(_rotate(handle.wxyz, [0, 1, 0]), -pose[:3, 1], atol=1e-6)
        # looks at the origin, where look_at aimed it
        np.testing.assert_allclose(_rotate(handle.wxyz, [0, 0, 1]), -pose[:3, 3] / np.linalg.norm(pose[:3, 3]),
                                   atol=1e-6)
        assert handle.fov == pytest.approx(2 * math.atan(H / 2 / focal))
        assert handle.aspect == pytest.approx(W / H)
        assert handle._image_data is not None  # the picture travels with the frustum
    only_every_other = scene3d.add_cameras(scene, Cameras(c2w, K, H, W), name="/test_cams_sparse", every=2)
    assert len(only_every_other) == 2 and only_every_other[0]._image_data is None


def test_rays_samples_sit_on_their_rays_coloured_by_each_rays_weights(scene):
    rays_o = torch.tensor([[0.0, 0.0, 4.0], [1.0, 1.0, 1.0]])
    rays_d = torch.tensor([[0.0, 0.0, -1.0], [0.5, 0.0, 0.0]])
    t_vals = torch.tensor([[2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 4.0]])
    weights = torch.tensor([[0.0, 0.02, 0.01, 0.0], [0.9, 0.0, 0.0, 0.0]])
    lines, samples = scene3d.add_rays(scene, rays_o, rays_d, t_vals, weights, name="/test_rays")
    segments = np.asarray(lines.points)
    np.testing.assert_allclose(segments, [[[0, 0, 2], [0, 0, -1]], [[1, 1, 1], [3, 1, 1]]], atol=1e-6)
    points = np.asarray(samples.points)
    assert points.shape == (8, 3)
    np.testing.assert_allclose(points[:4], [[0, 0, 2], [0, 0, 1], [0, 0, 0], [0, 0, -1]], atol=1e-6)
    np.testing.assert_allclose(points[4:], [[1, 1, 1], [1.5, 1, 1], [2, 1, 1], [3, 1, 1]], atol=1e-6)
    colors = np.asarray(samples.colors)
    top, bottom = scene3d.weight_colors(np.array([[1.0, 0.0]]))[0]
    # each ray's largest weight gets the top colour, even the faint ray (0.02); weight 0 the bottom one
    assert colors[1].tolist() == top.tolist() and colors[4].tolist() == top.tolist()
    assert colors[0].tolist() == bottom.tolist() and colors[5].tolist() == bottom.tolist()
    assert colors[2].tolist() not in (top.tolist(), bottom.tolist())  # half the largest: in between


def test_points_keep_positions_and_float_colours_become_bytes(scene):
    points = np.array([[3.001, -2.5, 0.25], [0.0, 1e-3, 7.5]])
    handle = scene3d.add_points(scene, points, np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]), name="/test_points")
    np.testing.assert_allclose(handle.points, points, atol=1e-6)  # float32: float16 would move 3.001 to 3.0
    assert np.asarray(handle.colors).tolist() == [[255, 0, 128], [0, 255, 0]]
    grey = scene3d.add_points(scene, points, (90, 90, 90), name="/test_points_grey")
    assert np.asarray(grey.colors).tolist() == [[90, 90, 90], [90, 90, 90]]


def test_grid_cells_are_cubes_of_the_cell_size_at_their_corners(scene):
    corners = np.array([[0.0, 0.0, 0.0], [0.5, -0.25, 1.0], [-1.0, 2.0, 0.75]])
    handle = scene3d.add_grid_cells(scene, corners, 0.25, colors=np.array([[1.0, 0, 0]] * 3), name="/test_cells")
    np.testing.assert_allclose(handle.batched_positions, corners)
    assert len(handle.batched_wxyzs) == 3
    vertices = np.asarray(handle.vertices)
    np.testing.assert_allclose(vertices.min(axis=0), [0, 0, 0])
    np.testing.assert_allclose(vertices.max(axis=0), [0.25, 0.25, 0.25])
    assert np.asarray(handle.batched_colors).tolist() == [[255, 0, 0]] * 3
    # the cube's faces are wound counter-clockwise seen from outside: each face's normal points away from the
    # centre (viser lights and culls front faces by this winding)
    cube_vertices, faces = scene3d.unit_cube()
    a, b, c = (cube_vertices[faces[:, k]] for k in range(3))
    outward = np.einsum("fi,fi->f", np.cross(b - a, c - a), (a + b + c) / 3 - 0.5)
    assert np.all(outward > 0)
    assert np.all(np.einsum("vi,vi->v", scene3d.vertex_normals(cube_vertices, faces), cube_vertices - 0.5) > 0)


def test_mesh_normals_start_at_vertices_and_point_out_of_a_sphere(scene):
    # an octahedron: vertex normals of a convex solid centred at the origin point away from it
    vertices = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    mesh, normals = scene3d.add_mesh(scene, vertices, faces, name="/test_mesh", normal_length=0.5)
    np.testing.assert_allclose(mesh.vertices, vertices)
    assert np.asarray(mesh.faces).shape == (8, 3)
    segments = np.asarray(normals.points)
    assert segments.shape == (6, 2, 3)
    np.testing.assert_allclose(segments[:, 0], vertices)
    np.testing.assert_allclose(segments[:, 1], 1.5 * vertices, atol=1e-6)  # outwards, length 0.5
    _, none = scene3d.add_mesh(scene, vertices, faces, name="/test_mesh_bare", normal_length=0)
    assert none is None


def test_gaussians_carry_their_means_and_covariances(scene):
    means = np.array([[0.0, 1.0, 2.0], [-1.0, 0.5, 0.0]])
    covs = np.stack([np.diag([0.01, 0.04, 0.09]), np.diag([0.25, 0.01, 0.01])])
    handle = scene3d.add_gaussians(scene, means, covs, name="/test_gaussians")
    buffer = np.asarray(handle.buffer)
    assert buffer.shape[0] == 2
    np.testing.assert_allclose(buffer[:, :3].view(np.float32), means, atol=1e-6)
    # the upper triangle (xx, xy, xz, yy, yz, zz) as float16: the diagonal is where we put it
    cov = buffer[:, 4:7].copy().view(np.float16).astype(np.float64)
    np.testing.assert_allclose(cov[:, [0, 3, 5]], [[0.01, 0.04, 0.09], [0.25, 0.01, 0.01]], rtol=2e-3)


def test_notebook_html_is_one_page_with_the_scene_and_no_network_address():
    server = scene3d.offline_server()
    try:
        scene3d.add_box(server.scene, [[-1, -1, -1], [1, 1, 1]])
        output = scene3d.notebook_html(server, height=300).data
    finally:
        server.stop()
    assert output.startswith("<div><iframe srcdoc=") and 'height="300"' in output
    assert "__VISER_EMBED_DATA__" in output  # the scene's messages are inside the page
    assert re.search(r"https?://(?!www\.w3\.org/)", output) is None  # the SVG namespace is a name, not a fetch


def test_embed_draws_on_a_fresh_scene_and_displays_the_page(capsys, monkeypatch):
    import IPython.display

    shown, drawn = [], []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    assert scene3d.embed(lambda scene: drawn.append(scene3d.add_points(scene, np.zeros((4, 3)), name="/p"))) is None
    assert len(drawn) == 1 and np.asarray(drawn[0].points).shape == (4, 3)
    assert len(shown) == 1 and "__VISER_EMBED_DATA__" in shown[0].data
    assert "http" not in capsys.readouterr().out  # viser's banner (its address) is not printed into the cell
