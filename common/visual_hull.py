"""Visual hull: the region of space whose projection falls inside the object's mask in every view (Laurentini 1994).

Any point of the object projects inside every mask, so the hull contains the object; it is the tightest such
region the silhouettes alone can give (concavities that no silhouette reveals stay filled). Jittor-Instant-NeuS
carves its occupancy grid with it before training, so that no sample is ever spent outside the hull.

Masks are the alpha channel of a split's images (Blender alpha, or the DTU masks that common/data/dtu.py puts there).
Glossary: P points, N views, G cells per axis, H x W image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.data.scene import Split


def project_points(points: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (u, v) of world points in a camera of the project's conventions (OpenGL axes, pixel
    (i, j) centred at (i + 0.5, j + 0.5)), and their depth in front of the camera.

    points: (P, 3); K: (3, 3); c2w: (4, 4). Returns uv (P, 2) and depth (P,) (> 0 in front of the camera).
    """
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # (P, 3) in the camera frame: R^T (x - C)
    depth = -cam[:, 2]  # the camera looks along -z
    u = K[0, 2] + K[0, 0] * cam[:, 0] / depth
    v = K[1, 2] - K[1, 1] * cam[:, 1] / depth  # image rows grow downwards, y points up
    return torch.stack([u, v], dim=-1), depth


def inside_all_masks(points: torch.Tensor, split: Split, dilate_px: int = 0, threshold: float = 0.5) -> torch.Tensor:
    """True where a point projects inside the mask (alpha > threshold) of every view that sees it.

    points: (P, 3) world points; split: images (N, H, W, 4) with the mask as alpha; dilate_px: grow every mask by
    this many pixels first (a square max filter), to keep points near the silhouette. A view in which a point
    falls outside the image, or behind the camera, says nothing about it (the point is kept by that view); a point
    that no view sees is dropped (nothing could be learned there). Returns (P,) bool.
    """
    if split.images.shape[-1] != 4:
        raise ValueError("the visual hull needs masks: images with an alpha channel (N, H, W, 4)")
    cams = split.cameras
    keep = torch.ones(points.shape[0], dtype=torch.bool)
    alive = torch.arange(points.shape[0])  # points no view has carved yet (the only ones worth projecting)
    seen_once = torch.zeros(points.shape[0], dtype=torch.bool)
    for view in range(len(cams)):
        mask = split.images[view, ..., 3] > threshold  # (H, W)
        if dilate_px > 0:
            mask = F.max_pool2d(mask[None, None].float(), 2 * dilate_px + 1, stride=1, padding=dilate_px)[0, 0] > 0
        uv, depth = project_points(points[alive], cams.K[view], cams.c2w[view])  # (A, 2), (A,)
        col, row = torch.floor(uv[:, 0]).long(), torch.floor(uv[:, 1]).long()  # pixel (col, row) holds uv
        seen = (depth > 0) & (col >= 0) & (col < cams.width) & (row >= 0) & (row < cams.height)  # (A,)
        inside = torch.zeros_like(seen)
        inside[seen] = mask[row[seen], col[seen]]
        carved = alive[seen & ~inside]
        keep[carved] = False
        seen_once[alive[seen]] = True
        alive = alive[inside | ~seen]
    return keep & seen_once


def carve_grid(aabb: torch.Tensor, resolution: int, split: Split, threshold: float = 0.5) -> torch.Tensor:
    """The cells of a resolution^3 grid over the box that the visual hull keeps (occupancy-grid order: cell
    (x, y, z) has index x + y G + z G^2). A cell is kept when its centre projects inside every mask grown by the
    largest on-screen half-diagonal of a cell, so a cell that the object only grazes is kept too.

    aabb: (2, 3) [min, max]. Returns (G^3,) bool.
    """
    cell = (aabb[1] - aabb[0]) / resolution  # (3,)
    index = torch.arange(resolution ** 3)
    ijk = torch.stack([index % resolution, (index // resolution) % resolution, index // resolution ** 2], -1)
    centres = aabb[0] + (ijk.float() + 0.5) * cell  # (G^3, 3)
    cams = split.cameras
    # On-screen radius of a cell: focal * half-diagonal / depth, at most that at the box point nearest to a camera.
    eyes = cams.c2w[:, :3, 3]  # (N, 3)
    nearest = float((eyes - torch.maximum(torch.minimum(eyes, aabb[1]), aabb[0])).norm(dim=-1).min())
    radius_px = float(cams.K[:, 0, 0].max()) * 0.5 * float(cell.norm()) / max(nearest, 1e-6)
    return inside_all_masks(centres, split, dilate_px=math.ceil(radius_px), threshold=threshold)


def hull_bbox(aabb: torch.Tensor, resolution: int, kept: torch.Tensor, margin_cells: int = 1) -> torch.Tensor:
    """The box around the kept cells of a grid (as from `carve_grid`), grown by `margin_cells` cells and clipped to
    aabb. kept: (G^3,) bool. Returns (2, 3) [min, max]; aabb itself when nothing is kept."""
    if not bool(kept.any()):
        return aabb.clone()
    index = torch.nonzero(kept).squeeze(-1)
    ijk = torch.stack([index % resolution, (index // resolution) % resolution, index // resolution ** 2], -1)
    cell = (aabb[1] - aabb[0]) / resolution
    lo = aabb[0] + (ijk.min(dim=0).values - margin_cells).float() * cell
    hi = aabb[0] + (ijk.max(dim=0).values + 1 + margin_cells).float() * cell
    return torch.stack([torch.maximum(lo, aabb[0]), torch.minimum(hi, aabb[1])])
