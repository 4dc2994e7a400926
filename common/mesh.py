"""Meshes from fields: sample a function on a grid in a box, marching cubes, PLY files.

    values = sample_grid(fn, aabb, resolution=256, chunk=65536)    # (res, res, res), fn evaluated at the nodes
    vertices, faces = marching_cubes(values, aabb, level=50.0)     # vertices in world units, faces (F, 3)
    write_ply("mesh.ply", vertices, faces, colors=None)            # binary little-endian PLY (or ascii=True)
    vertices, faces, colors = read_ply("mesh.ply")                 # the same arrays back (for tests and viewers)

The grid has its nodes on the box: node (i, j, k) sits at aabb_min + (i, j, k) * voxel, with
voxel = (aabb_max - aabb_min) / (res - 1) per axis, so the first and last nodes lie on the faces of the box.
Marching cubes (scikit-image, Lorensen & Cline 1987) returns vertex positions in node-index units; they are
mapped back to world units with exactly that spacing: world = aabb_min + index * voxel. (One public mip-NeRF port
divides the indices by its density threshold instead of by res - 1, which puts the mesh in the wrong place; the
tests check that the mesh of an analytic surface lies on it within a voxel.)

Axis order: values[i, j, k] is the value at x_i, y_j, z_k (index "ij" in torch.meshgrid), so vertex columns are
x, y, z. Which side of `level` is inside is the caller's choice: for a density, inside is above the level; for a
signed distance, inside is below 0; `marching_cubes(..., inside=...)` orients the faces so that their normals
point out of the solid either way.
Glossary: V vertices, F faces (triangles), P points.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.errors import UserError, warn, writing
from common.memory import error_reason, free_memory, out_of_memory_errors, smallest


def grid_points(aabb, resolution: int) -> torch.Tensor:
    """The nodes of a resolution^3 grid spanning the box, faces included.

    aabb: (2, 3) min corner, max corner (tensor or array-like). Returns (res, res, res, 3) float32 with
    points[i, j, k] = aabb_min + (i, j, k) * (aabb_max - aabb_min) / (res - 1).
    """
    if resolution < 2:
        raise ValueError(f"a grid needs at least 2 nodes per axis, got resolution={resolution}")
    aabb = torch.as_tensor(aabb, dtype=torch.float32)
    axes = [torch.linspace(float(aabb[0, d]), float(aabb[1, d]), resolution) for d in range(3)]  # 3 x (res,)
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (res, res, res, 3)


def sample_grid(fn: Callable[[torch.Tensor], torch.Tensor], aabb, resolution: int, chunk: int = 65536,
                device=None) -> np.ndarray:
    """Evaluate fn at every node of a resolution^3 grid in the box, `chunk` points at a time, without gradients.

    fn: (P, 3) float32 points (on `device`) -> (P,) values (e.g. a density or an SDF); aabb: (2, 3).
    Returns values (res, res, res) float32 numpy, values[i, j, k] = fn(node (i, j, k)) (see `grid_points`).
    Memory: one chunk of points and values at a time, plus the result (res^3 floats: 64 MiB at 256^3). A GPU
    out-of-memory error halves the chunk (one warning line) and evaluates that chunk again, down to
    common.memory.SMALLEST_RAYS points; then a one-line UserError (as the renders do, common/memory.py).
    """
    points = grid_points(aabb, resolution).reshape(-1, 3)  # (res^3, 3)
    values = np.empty(points.shape[0], dtype=np.float32)
    floor, start = smallest(chunk), 0
    with torch.no_grad():
        while start < points.shape[0]:
            batch = points[start:start + chunk]
            if device is not None:
                batch = batch.to(device)
            try:
                out = fn(batch).reshape(-1)
            except out_of_memory_errors() as err:
                reason = error_reason(err)
            else:
                if out.shape[0] != batch.shape[0]:
                    raise ValueError(f"fn must return one value per point: got {tuple(out.shape)} for {batch.shape[0]} points")
                values[start:start + chunk] = out.float().cpu().numpy()
                start += chunk
                continue
            del batch
            free_memory()
            if chunk <= floor:
                raise UserError(f"GPU out of memory evaluating the mesh grid even at {chunk} points at a time ({reason}):"
                                f" lower --mesh_resolution or use a GPU with more memory; the checkpoints are kept")
            chunk = max(floor, chunk // 2)
            warn(f"GPU out of memory evaluating the mesh grid ({reason}): going on with {chunk} points at a time")
    return values.reshape(resolution, resolution, resolution)


def marching_cubes(values: np.ndarray, aabb, level: float, inside: str = "above"):
    """Triangle mesh of the level set {x : value(x) = level} of a grid sampled as in `sample_grid`.

    values: (Rx, Ry, Rz) numpy or tensor, the field at the grid nodes of the box; aabb: (2, 3) the box;
    level: the iso-value (e.g. a density threshold, or 0 for an SDF);
    inside: "above" if the solid is where value > level (densities), "below" where value < level (SDFs).
        It only orients the faces: their normals (right-hand rule, v0 -> v1 -> v2) point out of the solid.
    Returns vertices (V, 3) float32 in world units, faces (F, 3) int64. UserError if the level set is empty
    (every value on one side of `level`), with the range of the values, so that the caller can pick a level.
    """
    from skimage import measure

    if inside not in ("above", "below"):
        raise ValueError(f"inside must be 'above' or 'below', got {inside!r}")
    values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    values = values.astype(np.float32)
    if values.ndim != 3 or min(values.shape) < 2:
        raise ValueError(f"values must be a 3-D grid with at least 2 nodes per axis, got shape {values.shape}")
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if not lo < level < hi:
        raise UserError(f"no surface at level {level:g}: the field ranges over [{lo:.4g}, {hi:.4g}] in the box; "
                        f"pick a level inside that range")
    aabb = np.asarray(torch.as_tensor(aabb, dtype=torch.float64))
    voxel = (aabb[1] - aabb[0]) / (np.asarray(values.shape, dtype=np.float64) - 1.0)  # (3,) world units per index
    verts, faces, _, _ = measure.marching_cubes(values, level=level, spacing=(1.0, 1.0, 1.0),
                                                gradient_direction="descent")
    vertices = (aabb[0] + verts.astype(np.float64) * voxel).astype(np.float32)  # index units -> world units
    faces = faces.astype(np.int64)
    # With "descent", the winding of skimage's triangles makes their normals point towards increasing values
    # (checked by tests/common/test_mesh.py on a sphere): out of a solid below the level (an SDF), into a solid
    # above it (a density), whose winding we therefore reverse.
    if inside == "above":
        faces = faces[:, ::-1].copy()
    return vertices, faces


def _made_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_ply(path, vertices, faces, colors=None, ascii: bool = False) -> Path:
    """Write a triangle mesh as PLY (binary little-endian by default, or ascii), creating parent folders.

    vertices: (V, 3) float (world units); faces: (F, 3) int; colors: optional (V, 3) per-vertex colours, float in
    [0, 1] (rounded to uint8) or uint8. Returns the path. Viewers (MeshLab, Blender, Open3D) read both forms.
    A full disk or a read-only place is one line naming the file (common.errors.writing).
    """
    to_np = lambda a: a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)  # noqa: E731
    vertices = to_np(vertices).astype(np.float32).reshape(-1, 3)
    faces = to_np(faces).astype(np.int32).reshape(-1, 3)
    if colors is not None:
        colors = to_np(colors)
        if colors.shape != vertices.shape:
            raise ValueError(f"colors must be (V, 3) like the vertices {vertices.shape}, got {colors.shape}")
        if colors.dtype != np.uint8:
            colors = (np.clip(colors.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError("faces index vertices that do not exist")
    header = ["ply", f"format {'ascii' if ascii else 'binary_little_endian'} 1.0", f"element vertex {len(vertices)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    path = Path(path)
    with writing(path), open(_made_parent(path), "wb") as file:  # a full disk: one line naming the file
        file.write(("\n".join(header) + "\n").encode("ascii"))
        if ascii:
            for i, v in enumerate(vertices):
                line = f"{v[0]:.7g} {v[1]:.7g} {v[2]:.7g}"
                if colors is not None:
                    line += f" {colors[i, 0]} {colors[i, 1]} {colors[i, 2]}"
                file.write((line + "\n").encode("ascii"))
            for f in faces:
                file.write(f"3 {f[0]} {f[1]} {f[2]}\n".encode("ascii"))
        else:
            vertex_fields = [("xyz", "<f4", (3,))] + ([("rgb", "u1", (3,))] if colors is not None else [])
            vertex_rows = np.empty(len(vertices), dtype=vertex_fields)
            vertex_rows["xyz"] = vertices
            if colors is not None:
                vertex_rows["rgb"] = colors
            file.write(vertex_rows.tobytes())
            face_rows = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
            face_rows["n"] = 3
            face_rows["idx"] = faces
            file.write(face_rows.tobytes())
    return path


def read_ply(path):
    """Read a triangle mesh written by `write_ply` (binary little-endian or ascii; x, y, z floats, optional
    red, green, blue uchars, faces as 'list uchar int' triangles).

    Returns vertices (V, 3) float32, faces (F, 3) int64, colors (V, 3) uint8 or None.
    UserError naming the file if it is not such a PLY.
    """
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise UserError(f"{path} is not a PLY file (no 'ply' ... 'end_header' header)")
    header = data[:end].decode("ascii").splitlines()
    body = data[end + len(b"end_header\n"):]
    fmt = next((line.split()[1] for line in header if line.startswith("format")), None)
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    has_color = any(line.endswith(" red") for line in header)
    n_vertices, n_faces = counts.get("vertex", 0), counts.get("face", 0)
    if fmt == "ascii":
        lines = body.decode("ascii").split("\n")
        vertex_rows = np.array([line.split() for line in lines[:n_vertices]], dtype=np.float64).reshape(n_vertices, -1)
        face_rows = np.array([line.split() for line in lines[n_vertices:n_vertices + n_faces]],
                             dtype=np.int64).reshape(n_faces, -1)
        vertices = vertex_rows[:, :3].astype(np.float32)
        colors = vertex_rows[:, 3:6].astype(np.uint8) if has_color else None
        faces = face_rows[:, 1:4]
    elif fmt == "binary_little_endian":
        vertex_fields = [("xyz", "<f4", (3,))] + ([("rgb", "u1", (3,))] if has_color else [])
        vertex_rows = np.frombuffer(body, dtype=vertex_fields, count=n_vertices)
        offset = vertex_rows.nbytes
        face_rows = np.frombuffer(body, dtype=[("n", "u1"), ("idx", "<i4", (3,))], count=n_faces, offset=offset)
        if n_faces and not np.all(face_rows["n"] == 3):
            raise UserError(f"{path} holds polygons that are not triangles; only triangle meshes are read")
        vertices = vertex_rows["xyz"].astype(np.float32)
        colors = vertex_rows["rgb"].copy() if has_color else None
        faces = face_rows["idx"].astype(np.int64)
    else:
        raise UserError(f"{path}: PLY format {fmt!r} is not supported (ascii or binary_little_endian)")
    return vertices, faces, colors
