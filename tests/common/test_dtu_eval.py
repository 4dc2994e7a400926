"""common/dtu_eval.py: DTU's evaluation on synthetic ground truth written in DTU's file formats (.mat observation
mask and plane, a PLY point cloud), where every answer is known: a sphere of radius 50 mm, a mesh 1 mm outside it."""
import numpy as np
import pytest
import torch

from common.dtu_eval import dtu_chamfer, read_ply_points, sample_triangles_densely, thin_points
from common.errors import UserError
from common.mesh import marching_cubes, sample_grid

SCAN, RADIUS = 24, 50.0


def _write_ground_truth(root, observed_half_only=False, plane_z=-200.0, extra_reference=None):
    from scipy.io import savemat

    (root / "ObsMask").mkdir(parents=True, exist_ok=True)
    (root / "Points" / "stl").mkdir(parents=True, exist_ok=True)
    resolution, box = 4.0, np.array([[-80.0, -80.0, -80.0], [80.0, 80.0, 80.0]])
    n = int((box[1, 0] - box[0, 0]) / resolution) + 1
    mask = np.ones((n, n, n), dtype=bool)
    if observed_half_only:  # no camera saw x > 0
        centres_x = box[0, 0] + resolution * np.arange(n)
        mask[centres_x > 0] = False
    savemat(root / "ObsMask" / f"ObsMask{SCAN}_10.mat", dict(ObsMask=mask, BB=box, Res=np.array([[resolution]])))
    savemat(root / "ObsMask" / f"Plane{SCAN}.mat", dict(P=np.array([[0.0], [0.0], [1.0], [-plane_z]])))  # z > plane_z
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40000, 3))
    points = RADIUS * points / np.linalg.norm(points, axis=-1, keepdims=True)
    if extra_reference is not None:
        points = np.concatenate([points, extra_reference])
    rows = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                        ("blue", "u1"), ("alpha", "u1")])
    rows["x"], rows["y"], rows["z"] = points.T
    rows["red"] = rows["green"] = rows["blue"] = rows["alpha"] = 200
    header = ("ply\nformat binary_little_endian 1.0\ncomment a synthetic stand-in for stl024_total.ply\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\nend_header\n")
    (root / "Points" / "stl" / f"stl{SCAN:03d}_total.ply").write_bytes(header.encode() + rows.tobytes())
    return points


@pytest.fixture(scope="module")
def sphere_mesh():
    """A mesh of the sphere of radius 51 mm (1 mm outside the ground truth), in millimetres."""
    box = torch.tensor([[-60.0] * 3, [60.0] * 3])
    values = sample_grid(lambda p: p.norm(dim=-1) - (RADIUS + 1.0), box, 48)
    return marching_cubes(values, box, level=0.0, inside="below")


def test_a_mesh_1mm_outside_the_truth_scores_1mm_both_ways(sphere_mesh, tmp_path):
    truth = _write_ground_truth(tmp_path)
    assert np.allclose(read_ply_points(tmp_path / "Points" / "stl" / "stl024_total.ply"), truth, atol=1e-5)
    scores = dtu_chamfer(*sphere_mesh, tmp_path, SCAN, spacing=1.0)
    # 1 mm, plus the floors of two finite samplings (ground truth ~0.9 mm apart, the thinned mesh 1 mm apart).
    assert 1.0 < scores["accuracy"] < 1.2 and 1.0 < scores["completeness"] < 1.3, scores
    assert scores["chamfer"] == pytest.approx(0.5 * (scores["accuracy"] + scores["completeness"]))


def test_the_observation_mask_the_plane_and_the_truncation_each_leave_out_what_they_should(sphere_mesh, tmp_path):
    vertices, faces = sphere_mesh
    # A floater 12 mm outside the truth on the +x side (a 10 x 10 mm square at x = 62 mm): it hurts accuracy where
    # it is observed, and not where no camera saw it (up to the thinning's randomness, a thousandth of a mm here).
    floater = np.array([[62.0, -5.0, -5.0], [62.0, 5.0, -5.0], [62.0, 5.0, 5.0], [62.0, -5.0, 5.0]], dtype=np.float32)
    with_floater = (np.concatenate([vertices, floater]),
                    np.concatenate([faces, np.array([[0, 1, 2], [0, 2, 3]]) + len(vertices)]))
    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    _write_ground_truth(seen)
    _write_ground_truth(unseen, observed_half_only=True)
    base_seen = dtu_chamfer(vertices, faces, seen, SCAN, spacing=1.0)
    assert dtu_chamfer(*with_floater, seen, SCAN, spacing=1.0)["accuracy"] > base_seen["accuracy"] + 0.03
    base_unseen = dtu_chamfer(vertices, faces, unseen, SCAN, spacing=1.0)
    assert dtu_chamfer(*with_floater, unseen, SCAN, spacing=1.0)["accuracy"] == pytest.approx(base_unseen["accuracy"],
                                                                                           abs=0.005)
    # Ground-truth points below the plane (a ground slab at z = -60 the mesh does not have, 9 to 16 mm from it) leave
    # completeness alone; the same points above the plane (plane lowered) count, unless truncated (max_dist 5 mm).
    slab = np.stack(np.meshgrid(np.linspace(-20, 20, 30), np.linspace(-20, 20, 30), [-60.0]), -1).reshape(-1, 3)
    below = tmp_path / "below"
    _write_ground_truth(below, plane_z=-55.0, extra_reference=slab)
    assert dtu_chamfer(vertices, faces, below, SCAN, spacing=1.0)["completeness"] == pytest.approx(
        base_seen["completeness"], abs=1e-9)
    counted = tmp_path / "counted"
    _write_ground_truth(counted, plane_z=-200.0, extra_reference=slab)
    assert dtu_chamfer(vertices, faces, counted, SCAN, spacing=1.0)["completeness"] > base_seen["completeness"] + 0.05
    assert dtu_chamfer(vertices, faces, counted, SCAN, spacing=1.0, max_dist=5.0)["completeness"] == pytest.approx(
        base_seen["completeness"], abs=1e-9)


def test_dense_sampling_then_thinning_keeps_points_at_the_spacing():
    vertices = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    dense = sample_triangles_densely(vertices, np.array([[0, 1, 2]]), 0.5)
    assert len(dense) > 200 and np.all(dense[:, 0] + dense[:, 1] <= 10 + 1e-9)
    thin = thin_points(dense, 1.0)
    from scipy.spatial import cKDTree

    distances = cKDTree(thin).query(thin, k=2)[0][:, 1]
    assert distances.min() > 1.0 and cKDTree(thin).query(dense)[0].max() <= 1.0  # apart, yet covering


def test_missing_ground_truth_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="ObsMask24_10.mat not found"):
        dtu_chamfer(np.zeros((3, 3)), np.array([[0, 1, 2]]), tmp_path, SCAN)
