"""Occupancy-grid ray marching of Instant-NGP (Müller et al. 2022, Sec. 5.4 and Appendix E).

Glossary: R rays, K lattice points per ray (K_max the longest ray), N packed samples, G cells per axis of the
occupancy grid, M cells chosen by one grid update.

Instead of a fixed number of samples per ray, Instant-NGP marches each ray through a G^3 bitfield that marks the
cells of the scene box where the density is not negligible, and keeps only the samples that fall in occupied
cells: most rays then need a few dozen network evaluations instead of hundreds.

The samples of a ray lie on a lattice of fixed steps dt: ``t_k = t0 + (k + u) * dt``, u in [0, 1) the ray's
jitter, passed in so that every backend draws the same samples. Sample k is the interval [t_k, t_{k+1}]; it exists
while t_{k+1} <= t_end and is kept when the cell containing its midpoint is occupied; a ray keeps at most
``max_samples``. [t0, t_end] is the ray's segment inside the box, clipped to [near, far]. The lattice is a function
of k alone, so the CUDA kernel may jump over empty cells and still land exactly on the points that the twin
enumerates. (Instant-NGP grows the step with the distance for large scenes, Appendix E.1; the synthetic scenes of
04_hashnerf.py use fixed steps, the only kind here.)

Output (nerfacc's packed layout): ``ray_starts, ray_counts (R,) int32, t_starts, t_ends (N,) float32``; the
samples of ray r are ``[ray_starts[r], ray_starts[r] + ray_counts[r])``, front to back.

Three faces, as in every module of kernels/ (README, "Backends"): :func:`march_rays_torch` is the readable twin
(vectorised over all lattice points of all rays); ``kernels/ray_marching.cu`` marches one ray per thread and skips
empty cells; :func:`march_rays` picks one by ``backend``. :class:`OccupancyGrid` stores the grid and its bitfield
(Appendix E.2), with the per-cell kernels ``occupancy_update`` and ``pack_bitfield`` and their twins; when and
where they run (the update policy) is the lesson's, ``update_occupancy_grid`` in 04_hashnerf.py. The notebook 04_hashnerf draws a
grid and the samples of a few rays in its "Occupancy grid" cell.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kernels import backend as kernel_backend
from kernels.compositing import starts_from_counts

MODULE = "ray_marching"  # kernels/ray_marching.cu
TWIN_CHUNK_ELEMENTS = 1 << 22  # the twin handles R * K_max lattice points in chunks of rays of about this size


def _f32(value: float, device) -> torch.Tensor:
    """A () float32 tensor: the twin's scalars round exactly as the kernel's float arguments do."""
    return torch.tensor(value, dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------------------------------------
# The PyTorch twin
# ----------------------------------------------------------------------------------------------------------
def ray_aabb_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, aabb: torch.Tensor):
    """Slab test: the ray's parameter interval [t_min, t_max] inside the box (empty when t_min >= t_max).

    rays_o, rays_d: (R, 3); aabb: (2, 3) [min, max]. Returns t_min, t_max: (R,). A zero direction component gives
    +-inf, or NaN when the origin is on that slab's face; torch.fmin/fmax skip NaN like the kernel's fminf/fmaxf.
    """
    inv_d = 1.0 / rays_d  # (R, 3)
    t_lo = (aabb[0] - rays_o) * inv_d  # (R, 3) where the ray crosses the min faces
    t_hi = (aabb[1] - rays_o) * inv_d  # (R, 3) and the max faces
    t_enter, t_leave = torch.fmin(t_lo, t_hi), torch.fmax(t_lo, t_hi)  # (R, 3) per axis
    t_min = torch.full_like(rays_o[:, 0], -math.inf)  # (R,) folded axis by axis, in the kernel's order
    t_max = torch.full_like(rays_o[:, 0], math.inf)  # (R,)
    for dim in range(3):
        t_min = torch.fmax(t_min, t_enter[:, dim])
        t_max = torch.fmin(t_max, t_leave[:, dim])
    return t_min, t_max


def cell_indices_of(points: torch.Tensor, aabb: torch.Tensor, grid_res: int) -> torch.Tensor:
    """Index x + y*G + z*G^2 of the cell containing each point, clamped to the grid. points (..., 3) -> (...,) int64."""
    q = (points - aabb[0]) / (aabb[1] - aabb[0]) * grid_res  # (..., 3) in cells
    cell = torch.floor(q).to(torch.int64).clamp(0, grid_res - 1)  # (..., 3)
    return cell[..., 0] + cell[..., 1] * grid_res + cell[..., 2] * grid_res * grid_res


def bitfield_lookup(bitfield: torch.Tensor, cell_indices: torch.Tensor) -> torch.Tensor:
    """Occupancy of cells: bit (index & 7) of byte (index >> 3). (...,) int64 -> (...,) bool."""
    return ((bitfield[cell_indices >> 3].to(torch.int64) >> (cell_indices & 7)) & 1).bool()


def march_rays_torch(rays_o: torch.Tensor, rays_d: torch.Tensor, aabb: torch.Tensor, bitfield: torch.Tensor,
                     grid_res: int, *, near: float, far: float, dt: float, max_samples: int = 1024,
                     offsets: torch.Tensor | None = None):
    """Reference ray marching: every lattice point of every ray, tested against the grid, no skipping.

    Arguments and outputs as in :func:`march_rays`. Vectorised over (rays, lattice points), in chunks of rays so
    that memory stays bounded; uses the kernel's float32 formulas, so fixed steps give identical samples.
    """
    n_rays, device = rays_o.shape[0], rays_o.device
    offsets = torch.zeros(n_rays, device=device) if offsets is None else offsets
    counts, t_starts, t_ends = [], [], []
    t_min, t_max = ray_aabb_intersect(rays_o, rays_d, aabb)  # (R,)
    t0 = torch.fmax(t_min, _f32(near, device))  # (R,) enter the box, not before near
    t_end = torch.fmin(t_max, _f32(far, device))  # (R,) leave it, not after far
    hits = t0 < t_end  # (R,)

    dt_ = _f32(dt, device)  # the kernel's float dt
    steps_inside = (t_end - t0) / dt_  # (R,)
    # Lattice points per ray: t_{k+1} <= t_end needs k + 1 + u <= steps_inside; +2 covers float rounding.
    steps_inside = torch.where(hits, steps_inside, torch.zeros_like(steps_inside))
    # (float)k is exact below 2^24, no sensible march gets near it; the clamp only guards degenerate rays (d = 0).
    k_max = int(torch.ceil(steps_inside.max().clamp(max=2 ** 24)).item()) + 2 if n_rays > 0 else 0

    chunk = max(1, TWIN_CHUNK_ELEMENTS // max(k_max, 1))
    k = torch.arange(k_max + 1, device=device, dtype=torch.float32)  # (K+1,) lattice indices as floats
    for first in range(0, n_rays, chunk):
        rays = slice(first, first + chunk)
        u = offsets[rays, None]  # (r, 1)
        t_lattice = t0[rays, None] + (k + u) * dt_  # (r, K+1) t_k = t0 + (k + u) dt
        starts, stops = t_lattice[:, :-1], t_lattice[:, 1:]  # (r, K) sample k = [t_k, t_{k+1}]
        inside = (stops <= t_end[rays, None]) & hits[rays, None]  # (r, K)
        t_mid = (starts + stops) * 0.5  # (r, K)
        points = rays_o[rays, None, :] + t_mid[..., None] * rays_d[rays, None, :]  # (r, K, 3)
        occupied = bitfield_lookup(bitfield, cell_indices_of(points, aabb, grid_res))  # (r, K)
        keep = inside & occupied  # (r, K)
        keep &= torch.cumsum(keep.to(torch.int32), dim=1) <= max_samples  # (r, K) the first max_samples only
        counts.append(keep.sum(dim=1))  # (r,)
        t_starts.append(starts[keep])  # row-major: ray after ray, front to back
        t_ends.append(stops[keep])
    if n_rays == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=device)
        return torch.zeros(0, dtype=torch.int32, device=device), torch.zeros(0, dtype=torch.int32, device=device), \
            empty, empty.clone()
    ray_counts = torch.cat(counts).to(torch.int32)  # (R,)
    return starts_from_counts(ray_counts), ray_counts, torch.cat(t_starts), torch.cat(t_ends)


# ----------------------------------------------------------------------------------------------------------
# Public entry: the twin or the CUDA source
# ----------------------------------------------------------------------------------------------------------
def march_rays(rays_o: torch.Tensor, rays_d: torch.Tensor, aabb: torch.Tensor, bitfield: torch.Tensor,
               grid_res: int, *, near: float, far: float, dt: float, max_samples: int = 1024,
               offsets: torch.Tensor | None = None, backend: str = "torch"):
    """March rays through an occupancy grid (Instant-NGP Sec. 5.4, Appendix E) and pack the samples kept.

    Args:
        rays_o, rays_d: (R, 3) float32 origins and directions (any length; t is measured in units of |d|).
        aabb: (2, 3) float32 scene box [min, max], split into grid_res^3 cells.
        bitfield: (grid_res^3 / 8,) uint8; bit b of byte k is the occupancy of cell 8k + b; cell (x, y, z) has
            index x + y*G + z*G^2 (see :class:`OccupancyGrid`).
        grid_res: G, cells per axis (even, so that G^3 is a multiple of 8).
        near, far: the ray's segment inside the box is clipped to [near, far].
        dt: the fixed marching step (Instant-NGP: sqrt(3) / 1024 of the unit box for the synthetic scenes).
        max_samples: the most samples a ray keeps (its first ones, front to back).
        offsets: (R,) float32 jitter u in [0, 1) (e.g. torch.rand(R, generator=g) while training); None = 0.
        backend: "torch" (the twin), "cuda" (kernels/ray_marching.cu through CuPy, tensors on the GPU) or
            "emulated" (the same source compiled for the CPU). No gradients: samples are constants.

    Returns:
        ray_starts: (R,) int32; ray_counts: (R,) int32; t_starts, t_ends: (N,) float32, N = ray_counts.sum().
        The samples of each ray are sorted, do not overlap, lie inside the box and [near, far], and have their
        midpoints in occupied cells. Every backend gives identical samples (the same float32 formulas, no
        fused multiply-add).
    """
    if rays_o.dim() != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
        raise ValueError(f"expected rays_o and rays_d (R, 3), got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
    if aabb.shape != (2, 3):
        raise ValueError(f"aabb must be (2, 3) [min, max], got {tuple(aabb.shape)}")
    if grid_res < 2 or grid_res ** 3 % 8 or bitfield.shape != (grid_res ** 3 // 8,):
        raise ValueError(f"bitfield must be ({grid_res}^3 / 8,) uint8 for an even grid_res, got "
                         f"{tuple(bitfield.shape)} with grid_res={grid_res}")
    if not dt > 0:
        raise ValueError(f"need a marching step dt > 0, got {dt}")
    n_rays = rays_o.shape[0]
    if offsets is not None and offsets.shape != (n_rays,):
        raise ValueError(f"offsets must be ({n_rays},), got {tuple(offsets.shape)}")

    if backend == "torch":
        with torch.no_grad():
            return march_rays_torch(rays_o, rays_d, aabb, bitfield, grid_res, near=near, far=far, dt=dt,
                                    max_samples=max_samples, offsets=offsets)
    if backend not in kernel_backend.BACKENDS:
        raise kernel_backend.BackendError(
            f"unknown backend {backend!r}: choose one of {', '.join(kernel_backend.BACKENDS)}")

    device_type = kernel_backend.backend_device_type(backend)
    offsets = torch.zeros(n_rays, device=rays_o.device) if offsets is None else offsets
    rays_o, rays_d, aabb = rays_o.detach().contiguous(), rays_d.detach().contiguous(), aabb.contiguous()
    offsets, bitfield = offsets.contiguous(), bitfield.contiguous()
    for name, tensor in (("rays_o", rays_o), ("rays_d", rays_d), ("aabb", aabb), ("offsets", offsets)):
        kernel_backend.check_tensor(name, tensor, torch.float32, device_type)
    kernel_backend.check_tensor("bitfield", bitfield, torch.uint8, device_type)

    settings = (np.int32(grid_res), np.float32(near), np.float32(far), np.float32(dt), np.int32(max_samples),
                np.int32(n_rays))
    ray_counts = torch.zeros(n_rays, dtype=torch.int32, device=rays_o.device)  # (R,)
    kernel_backend.launch(MODULE, "march_rays_count", n_rays,
                          (rays_o, rays_d, offsets, aabb, bitfield, *settings, ray_counts), backend)
    ray_starts = starts_from_counts(ray_counts)  # (R,)
    n_samples = int(ray_counts.sum().item())  # the one synchronisation: the size of the packed arrays
    t_starts = torch.empty(n_samples, dtype=torch.float32, device=rays_o.device)  # (N,)
    t_ends = torch.empty(n_samples, dtype=torch.float32, device=rays_o.device)  # (N,)
    kernel_backend.launch(MODULE, "march_rays_write", n_rays,
                          (rays_o, rays_d, offsets, aabb, bitfield, *settings, ray_starts, t_starts, t_ends), backend)
    return ray_starts, ray_counts, t_starts, t_ends


# ----------------------------------------------------------------------------------------------------------
# Grid maintenance (Appendix E.2)
# ----------------------------------------------------------------------------------------------------------
def occupancy_update_torch(density: torch.Tensor, cell_indices: torch.Tensor, new_density: torch.Tensor,
                           decay: float) -> torch.Tensor:
    """Twin of the kernel ``occupancy_update``: density[c] = max(density[c] * decay, new) on distinct cells c.

    density: (G^3,) float32; cell_indices: (M,) int64, distinct; new_density: (M,) float32. Returns a new tensor.
    torch.fmax, like fmaxf, ignores a NaN density from the network.
    """
    ### BEGIN SOLUTION
    density = density.clone()
    density[cell_indices] = torch.fmax(density[cell_indices] * _f32(decay, density.device), new_density)
    return density
    ### END SOLUTION


def pack_bitfield_torch(density: torch.Tensor, threshold: float) -> torch.Tensor:
    """Twin of the kernel ``pack_bitfield``: bit b of byte k = density[8k + b] > threshold. (G^3,) -> (G^3/8,) uint8.

    Strictly greater: a cell whose value equals the threshold is empty, in both faces.
    """
    bits = (density.view(-1, 8) > _f32(threshold, density.device)).to(torch.int64)  # (G^3/8, 8)
    weights = 2 ** torch.arange(8, device=density.device)  # (8,) bit b has value 2^b
    return (bits * weights).sum(dim=1).to(torch.uint8)  # (G^3/8,)


def occupancy_update(density: torch.Tensor, cell_indices: torch.Tensor, new_density: torch.Tensor, decay: float,
                     backend: str = "torch") -> torch.Tensor:
    """density[c] = max(density[c] * decay, new) on the distinct cells c (Instant-NGP Appendix E.2).

    Args:
        density: (G^3,) float32, the decayed maximum per cell (left unchanged: the result is a new tensor).
        cell_indices: (M,) int64 distinct cell indices (a repeated cell would be two threads writing one address).
        new_density: (M,) float32, the new value of each chosen cell.
        decay: the factor applied to a chosen cell's old value before the max.
        backend: "torch" (:func:`occupancy_update_torch`), "cuda" or "emulated" (the kernel ``occupancy_update``).
    Returns:
        (G^3,) float32, the updated copy.
    """
    if cell_indices.shape != new_density.shape or cell_indices.dim() != 1:
        raise ValueError(f"cell_indices and new_density must both be (M,), got {tuple(cell_indices.shape)} and "
                         f"{tuple(new_density.shape)}")
    if backend == "torch":
        return occupancy_update_torch(density, cell_indices, new_density, decay)
    _check_backend_name(backend)
    device_type = kernel_backend.backend_device_type(backend)
    updated = density.contiguous().clone()  # (G^3,) the kernel updates it in place
    cell_indices, new_density = cell_indices.contiguous(), new_density.contiguous()
    kernel_backend.check_tensor("density", updated, torch.float32, device_type)
    kernel_backend.check_tensor("cell_indices", cell_indices, torch.int64, device_type)
    kernel_backend.check_tensor("new_density", new_density, torch.float32, device_type)
    n_cells = cell_indices.numel()
    kernel_backend.launch(MODULE, "occupancy_update", n_cells,
                          (updated, cell_indices, new_density, np.float32(decay), np.int32(n_cells)), backend)
    return updated


def pack_bitfield(density: torch.Tensor, threshold: float, backend: str = "torch") -> torch.Tensor:
    """Occupancy bits: bit b of byte k is density[8k + b] > threshold (strictly), cell index x + y*G + z*G^2.

    density: (G^3,) float32 with G^3 a multiple of 8. Returns the bitfield (G^3/8,) uint8. backend: "torch"
    (:func:`pack_bitfield_torch`), "cuda" or "emulated" (the kernel ``pack_bitfield``, one thread per byte).
    """
    if density.dim() != 1 or density.numel() % 8:
        raise ValueError(f"density must be (G^3,) with G^3 a multiple of 8, got {tuple(density.shape)}")
    if backend == "torch":
        return pack_bitfield_torch(density, threshold)
    _check_backend_name(backend)
    device_type = kernel_backend.backend_device_type(backend)
    density = density.contiguous()
    kernel_backend.check_tensor("density", density, torch.float32, device_type)
    n_bytes = density.numel() // 8
    bitfield = torch.empty(n_bytes, dtype=torch.uint8, device=density.device)  # (G^3/8,)
    kernel_backend.launch(MODULE, "pack_bitfield", n_bytes,
                          (density, np.float32(threshold), np.int32(n_bytes), bitfield), backend)
    return bitfield


def _check_backend_name(backend: str) -> None:
    if backend not in kernel_backend.BACKENDS:
        raise kernel_backend.BackendError(
            f"unknown backend {backend!r}: choose one of {', '.join(kernel_backend.BACKENDS)}")


class OccupancyGrid(torch.nn.Module):
    """The storage of Instant-NGP's occupancy grid (Appendix E.2): one value per cell and its bitfield.

    The policy that keeps it up to date (which cells are re-evaluated when, the decay, the threshold, the
    warm-up) belongs to the method and lives in the lesson: ``update_occupancy_grid`` in 04_hashnerf.py, built on
    this module's per-cell kernels :func:`occupancy_update` (decayed max) and :func:`pack_bitfield` (threshold
    into bits). The grid makes no assumption about the units of what it stores; 04_hashnerf.py stores sigma * dt,
    the optical thickness of one marching step, as Instant-NGP does.

    Args:
        aabb: (2, 3) scene box [min, max].
        resolution: G cells per axis (Instant-NGP: 128), even (8 cells per byte of the bitfield).

    Buffers: ``aabb`` (2, 3), ``density`` (G^3,) float32 (the stored values, named as in Instant-NGP), ``bitfield``
    (G^3/8,) uint8: bit b of byte k is the occupancy of cell 8k + b, and cell (x, y, z) has index x + y G + z G^2.
    Every bit starts set (:meth:`mark_all_occupied`), so that the first iterations sample everywhere.
    """

    def __init__(self, aabb: torch.Tensor, resolution: int = 128):
        super().__init__()
        if resolution < 2 or resolution % 2:
            raise ValueError(f"the occupancy grid resolution must be even (8 cells per byte), got {resolution}")
        self.resolution = resolution
        self.n_cells = resolution ** 3
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        self.register_buffer("density", torch.zeros(self.n_cells))  # (G^3,)
        self.register_buffer("bitfield", torch.zeros(self.n_cells // 8, dtype=torch.uint8))  # (G^3/8,)
        self.mark_all_occupied()

    def mark_all_occupied(self) -> None:
        """Set every bit: before the network has learned anything, no cell may be skipped."""
        self.bitfield.fill_(255)

    def occupancy_fraction(self) -> float:
        """Fraction of occupied cells (the lower, the fewer samples per ray)."""
        bits = (self.bitfield[:, None].to(torch.int64) >> torch.arange(8, device=self.bitfield.device)) & 1
        return float(bits.sum().item()) / self.n_cells

    def occupied_mask(self) -> torch.Tensor:
        """(G^3,) bool, cell by cell, unpacked from the bitfield."""
        return bitfield_lookup(self.bitfield, torch.arange(self.n_cells, device=self.bitfield.device))

    def cell_points(self, cell_indices: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniformly random point inside each cell. cell_indices: (M,) int64 -> (M, 3) float32 world positions.

        The random numbers come from ``generator`` (on its own device, then moved to the grid's).
        """
        res = self.resolution
        cell = torch.stack([cell_indices % res, (cell_indices // res) % res, cell_indices // (res * res)], -1)  # (M, 3)
        gen_device = generator.device if generator is not None else self.density.device
        jitter = torch.rand(cell.shape, generator=generator, device=gen_device).to(self.density.device)  # (M, 3)
        unit = (cell.to(torch.float32) + jitter) / res  # (M, 3) in [0, 1]^3
        return self.aabb[0] + unit * (self.aabb[1] - self.aabb[0])  # (M, 3)
