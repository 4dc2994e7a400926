"""DTU's surface evaluation (Jensen et al., CVPR 2014), the protocol behind the Chamfer figures of NeuS and its
successors, for a mesh in DTU's world units (millimetres) and DTU's ground-truth files.

The steps, as DTU's MATLAB evaluation and its Python port (DTUeval-python) take them:
  1. the mesh becomes a point cloud: every triangle is sampled on a regular barycentric grid fine enough for
     neighbouring points to be at most `spacing` (0.2 mm) apart, then the cloud is thinned so that no two kept
     points are closer than `spacing` (greedy, in a random order);
  2. accuracy uses the points inside DTU's observation mask (ObsMask<scan>_10.mat: a voxel grid `ObsMask` over
     the box `BB` with voxel size `Res`): the region some camera saw;
  3. completeness uses the ground-truth points (Points/stl/stl<scan>_total.ply) above the ground plane
     (Plane<scan>.mat: P with [x, y, z, 1] . P > 0), against the whole thinned cloud;
  4. each is the mean of the nearest-neighbour distances below `max_dist` (20 mm), and Chamfer is their mean.

This module was written from that description, and is tested on synthetic files in DTU's formats
(tests/common/test_dtu_eval.py); it has not been compared with DTU's MATLAB script on real DTU ground truth.
The greedy thinning loops in Python over the kept points: minutes for a full-resolution DTU mesh.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common.errors import UserError

PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "<i2", "ushort": "<u2", "int": "<i4", "uint": "<u4",
             "float": "<f4", "double": "<f8", "int8": "i1", "uint8": "u1", "int16": "<i2", "uint16": "<u2",
             "int32": "<i4", "uint32": "<u4", "float32": "<f4", "float64": "<f8"}


def dtu_ground_truth_files(root, scan: int) -> dict:
    """The three files DTU's evaluation reads for `scan`, under `root` (the folder holding ObsMask/ and Points/).
    UserError naming the first missing one."""
    root = Path(root)
    files = dict(obs_mask=root / "ObsMask" / f"ObsMask{scan}_10.mat", plane=root / "ObsMask" / f"Plane{scan}.mat",
                 points=root / "Points" / "stl" / f"stl{scan:03d}_total.ply")
    for name, path in files.items():
        if not path.is_file():
            raise UserError(f"{path} not found: DTU's ground truth needs ObsMask/ObsMask<scan>_10.mat, "
                            f"ObsMask/Plane<scan>.mat and Points/stl/stl<scan, 3 digits>_total.ply under {root} "
                            f"(the SampleSet and Points downloads of the DTU MVS 2014 page)")
    return files


def read_ply_points(path) -> np.ndarray:
    """The x, y, z of every vertex of a PLY file (binary little-endian or ascii, any other vertex properties
    ignored; faces ignored), as (N, 3) float64. DTU's stl<scan>_total.ply files are such point clouds."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise UserError(f"{path} is not a PLY file (no 'ply' ... 'end_header' header)")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    body = data[data.index(b"\n", end) + 1:]
    fmt = next((line.split()[1] for line in header if line.startswith("format")), "")
    n_vertices, properties, in_vertex = 0, [], False
    for line in header:
        words = line.split()
        if words[:1] == ["element"]:
            in_vertex = words[1] == "vertex"
            n_vertices = int(words[2]) if in_vertex else n_vertices
        elif words[:1] == ["property"] and in_vertex:
            if words[1] == "list" or words[1] not in PLY_TYPES:
                raise UserError(f"{path}: vertex property {' '.join(words[1:])} is not supported")
            properties.append((words[2], PLY_TYPES[words[1]]))
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names):
        raise UserError(f"{path}: its vertices have no x, y, z")
    if fmt == "ascii":
        rows = np.array(body.decode("ascii").split()[: n_vertices * len(names)], dtype=np.float64)
        rows = rows.reshape(n_vertices, len(names))
        return rows[:, [names.index("x"), names.index("y"), names.index("z")]]
    if fmt != "binary_little_endian":
        raise UserError(f"{path}: PLY format {fmt!r} is not supported (ascii or binary_little_endian)")
    rows = np.frombuffer(body, dtype=np.dtype(properties), count=n_vertices)
    return np.stack([rows["x"], rows["y"], rows["z"]], axis=-1).astype(np.float64)


def sample_triangles_densely(vertices: np.ndarray, faces: np.ndarray, spacing: float) -> np.ndarray:
    """Points on every triangle (a, b, c) on the grid a + (i / n1)(b - a) + (j / n2)(c - a), i / n1 + j / n2 <= 1,
    with n1 = ceil(|b - a| / spacing) and n2 = ceil(|c - a| / spacing): neighbours along either edge direction are
    at most `spacing` apart. Triangles are grouped by (n1, n2) so that each group is one array operation.
    Returns (P, 3) float64, the vertices included."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    n1 = np.maximum(np.ceil(np.linalg.norm(b - a, axis=-1) / spacing), 1).astype(np.int64)
    n2 = np.maximum(np.ceil(np.linalg.norm(c - a, axis=-1) / spacing), 1).astype(np.int64)
    clouds = [vertices]
    for k1, k2 in set(zip(n1.tolist(), n2.tolist())):
        group = (n1 == k1) & (n2 == k2)
        i, j = np.meshgrid(np.arange(k1 + 1) / k1, np.arange(k2 + 1) / k2, indexing="ij")
        keep = i + j <= 1 + 1e-9
        u, v = i[keep], j[keep]  # (G,) barycentric steps along b - a and c - a
        ga, gb, gc = a[group], b[group], c[group]
        points = ga[:, None] + u[None, :, None] * (gb - ga)[:, None] + v[None, :, None] * (gc - ga)[:, None]
        clouds.append(points.reshape(-1, 3))
    return np.concatenate(clouds)


def thin_points(points: np.ndarray, spacing: float, seed: int = 0) -> np.ndarray:
    """Greedy thinning: visit the points in a random order and keep one unless a kept point lies within
    `spacing` of it (DTU's downsampling to 0.2 mm). Returns the kept points, (K, 3)."""
    from scipy.spatial import cKDTree

    order = np.random.default_rng(seed).permutation(len(points))
    points = points[order]
    tree = cKDTree(points)
    removed = np.zeros(len(points), dtype=bool)
    for index in range(len(points)):
        if removed[index]:
            continue
        neighbours = tree.query_ball_point(points[index], r=spacing)
        removed[neighbours] = True
        removed[index] = False
    return points[~removed]


def in_observation_mask(points: np.ndarray, obs_mask: np.ndarray, box_min: np.ndarray, resolution: float) -> np.ndarray:
    """(P,) bool: the voxel of each point (rounded (p - box_min) / resolution) lies in the grid and is observed."""
    voxel = np.round((points - box_min[None]) / resolution).astype(np.int64)  # (P, 3)
    inside = np.all(voxel >= 0, axis=-1) & np.all(voxel < np.array(obs_mask.shape)[None], axis=-1)
    observed = np.zeros(len(points), dtype=bool)
    observed[inside] = obs_mask[voxel[inside, 0], voxel[inside, 1], voxel[inside, 2]].astype(bool)
    return observed


def dtu_chamfer(vertices: np.ndarray, faces: np.ndarray, ground_truth_root, scan: int, spacing: float = 0.2,
                max_dist: float = 20.0, seed: int = 0) -> dict:
    """DTU's accuracy, completeness and Chamfer (mm) of a mesh in DTU's world units (module docstring, steps 1-4).
    Returns {'accuracy', 'completeness', 'chamfer', 'n_points', 'n_points_observed', 'n_reference'}."""
    from scipy.io import loadmat
    from scipy.spatial import cKDTree

    files = dtu_ground_truth_files(ground_truth_root, scan)
    mask_file, plane_file = loadmat(files["obs_mask"]), loadmat(files["plane"])
    obs_mask, box, resolution = mask_file["ObsMask"], np.asarray(mask_file["BB"], dtype=np.float64), float(np.squeeze(mask_file["Res"]))
    plane = np.asarray(plane_file["P"], dtype=np.float64).reshape(4)
    reference = read_ply_points(files["points"])

    cloud = thin_points(sample_triangles_densely(vertices, faces, spacing), spacing, seed)  # step 1
    observed = cloud[in_observation_mask(cloud, obs_mask, box[0], resolution)]  # step 2
    above = reference[reference @ plane[:3] + plane[3] > 0]  # step 3
    if len(observed) == 0 or len(above) == 0:
        return dict(accuracy=math.inf, completeness=math.inf, chamfer=math.inf, n_points=len(cloud),
                    n_points_observed=len(observed), n_reference=len(above))
    to_reference = cKDTree(reference).query(observed)[0]
    to_cloud = cKDTree(cloud).query(above)[0]
    accuracy = float(to_reference[to_reference < max_dist].mean()) if (to_reference < max_dist).any() else math.inf
    completeness = float(to_cloud[to_cloud < max_dist].mean()) if (to_cloud < max_dist).any() else math.inf
    return dict(accuracy=accuracy, completeness=completeness, chamfer=0.5 * (accuracy + completeness),
                n_points=len(cloud), n_points_observed=len(observed), n_reference=len(above))
