"""Chamfer distance (the averaging step of the DTU protocol) and mesh surface sampling, against cases with known answers."""
import math

import numpy as np
import pytest
import torch

from common.metrics import chamfer_distance, sample_mesh_surface


def _sphere_points(n, radius, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True)


def test_marching_cubes_sphere_against_points_on_the_sphere_lands_within_a_voxel():
    from skimage import measure

    res, radius, half = 64, 0.7, 1.0
    axis = np.linspace(-half, half, res)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    sdf = np.sqrt(x**2 + y**2 + z**2) - radius
    voxel = 2 * half / (res - 1)
    verts, faces, _, _ = measure.marching_cubes(sdf, level=0.0, spacing=(voxel,) * 3)
    verts = verts - half
    points = sample_mesh_surface(verts, faces, 20000, seed=1)
    assert np.abs(np.linalg.norm(points, axis=1) - radius).max() < voxel  # the samples lie on the mesh
    result = chamfer_distance(points, _sphere_points(20000, radius))
    assert result["chamfer"] < voxel, result
    assert result["chamfer"] == pytest.approx(0.5 * (result["accuracy"] + result["completeness"]))
    # A sphere of another radius is as far off as the radii differ (to the sampling's resolution).
    other = chamfer_distance(points, _sphere_points(20000, radius + 0.1))
    assert other["accuracy"] == pytest.approx(0.1, abs=0.2 * voxel)


def test_accuracy_and_completeness_are_the_two_directions():
    plane = np.stack(np.meshgrid(np.linspace(0, 1, 101), np.linspace(0, 1, 101), indexing="ij"), -1).reshape(-1, 2)
    reference = np.concatenate([plane, np.zeros((len(plane), 1))], axis=1)
    # Half of the reference rebuilt exactly: accurate (0) but incomplete.
    half = reference[reference[:, 0] <= 0.5]
    result = chamfer_distance(torch.from_numpy(half), reference)
    assert result["accuracy"] == 0.0
    assert result["completeness"] == pytest.approx(np.mean(np.maximum(reference[:, 0] - 0.5, 0.0)), abs=1e-9)
    # The whole plane lifted by 0.02: every distance is 0.02 both ways.
    lifted = reference + np.array([0.0, 0.0, 0.02])
    result = chamfer_distance(lifted, reference)
    assert result["accuracy"] == pytest.approx(0.02) and result["completeness"] == pytest.approx(0.02)
    # DTU's max_dist: a far outlier is left out of the mean (without it, it would dominate).
    with_outlier = np.concatenate([lifted, [[0.0, 0.0, 100.0]]])
    assert chamfer_distance(with_outlier, reference, max_dist=20.0)["accuracy"] == pytest.approx(0.02)
    assert chamfer_distance(with_outlier, reference)["accuracy"] > 0.02 + 90.0 / len(with_outlier)
    assert chamfer_distance(np.zeros((0, 3)), reference)["chamfer"] == math.inf


def test_mesh_samples_are_uniform_by_area():
    # Two triangles of areas 1/2 and 4/2 in the plane z = 0: the big one receives about 4/5 of the points.
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [4, 0, 0], [2, 2, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    points = sample_mesh_surface(vertices, faces, 10000, seed=3)
    assert np.all(points[:, 2] == 0)
    in_big = points[:, 0] >= 2 - 1e-12
    assert in_big.mean() == pytest.approx(0.8, abs=0.02)
    big = points[in_big]
    assert np.all(big[:, 1] >= 0) and np.all(big[:, 1] <= 4 - big[:, 0] + 1e-9)  # inside the big triangle
