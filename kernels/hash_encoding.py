"""Multiresolution hash encoding of Instant-NGP (Müller et al. 2022, Sec. 3, Eq. 2-4).

Glossary: N points, L levels, F features per level, T rows per level's table (T = 2^log2_table_size).

A point x in [0, 1]^3 is looked up on L grids of growing resolution. Level l has scale and resolution
(Eq. 2-3, with the ``- 1`` that tiny-cuda-nn, the authors' implementation, adds)::

    b       = exp((ln N_max - ln N_min) / (L - 1))          # per-level growth factor
    scale_l = N_min * b^l - 1
    res_l   = ceil(scale_l) + 1                             # vertices per axis

On level l the point sits at ``pos = x * scale_l + 0.5`` (tiny-cuda-nn's half-vertex offset, which staggers the
levels so that their vertices do not all line up at the origin). The 8 vertices of its cell are looked up in
the level's table theta_l (T, F): densely (``x + y*res + z*res^2``) while res_l^3 <= T, otherwise through
the spatial hash of Eq. 4, ``(x*1) XOR (y*2654435761) XOR (z*805459861) mod T`` in uint32 arithmetic. The
8 feature vectors are blended trilinearly; the L results are concatenated into an (N, L*F) encoding laid out
``[point][level][feature]``.

Three faces, as in every module of kernels/ (README, "Backends"): :func:`hash_encode_torch` is the readable twin
(pure torch ops, so twice differentiable: the SDF script needs d(encoding)/dx inside its loss);
``kernels/hash_encoding.cu`` has the forward and a first-order backward (table gradient with atomicAdd, position
gradient written per level and summed here); :func:`hash_encode` picks one by ``backend``. The notebook 04_hashnerf
builds the encoding step by step in its "Hash encoding" cell.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kernels import backend as kernel_backend

MODULE = "hash_encoding"  # kernels/hash_encoding.cu
MAX_FEATURES = 8  # MAX_FEATURES of the .cu: the kernel keeps one level's F features in registers

# Eq. 4 of Instant-NGP: one large prime per dimension (pi_1 = 1 keeps x's bits as they are).
HASH_PRIMES = (1, 2654435761, 805459861)


# ----------------------------------------------------------------------------------------------------------
# Level geometry (Eq. 2-3, and tiny-cuda-nn)
# ----------------------------------------------------------------------------------------------------------
def level_scales(n_levels: int, base_resolution: float, max_resolution: float) -> torch.Tensor:
    """scale_l = N_min * b^l - 1 with b = exp((ln N_max - ln N_min) / (L - 1)) (Eq. 2-3, and tiny-cuda-nn).

    Returns scales: (L,) float32, computed in float64 and rounded once, so every backend sees the same numbers.
    """
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    if not 1 <= base_resolution <= max_resolution:
        raise ValueError(f"need 1 <= base_resolution <= max_resolution, got {base_resolution}, {max_resolution}")
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1)) if n_levels > 1 else 1.0
    scales = [base_resolution * growth ** level - 1.0 for level in range(n_levels)]
    return torch.tensor(scales, dtype=torch.float64).to(torch.float32)  # (L,)


def level_resolutions(scales: torch.Tensor) -> torch.Tensor:
    """res_l = ceil(scale_l) + 1 vertices per axis (as in tiny-cuda-nn), from the float32 scales. Returns (L,) int32."""
    return (torch.ceil(scales.to(torch.float32)) + 1).to(torch.int32)  # (L,)


def is_dense_level(resolutions: torch.Tensor, table_size: int) -> torch.Tensor:
    """True for levels whose res^3 vertices fit in the table: those are indexed 1:1, never hashed. (L,) bool."""
    res = resolutions.to(torch.int64)
    return res * res * res <= table_size


# ----------------------------------------------------------------------------------------------------------
# The PyTorch twin
# ----------------------------------------------------------------------------------------------------------
def spatial_hash(corners: torch.Tensor) -> torch.Tensor:
    """Eq. 4 without the ``mod T``: (x*1) XOR (y*2654435761) XOR (z*805459861).

    corners: (..., 3) int64 vertex coordinates. Returns (...,) int64 whose low 32 bits are the uint32 hash of
    the CUDA kernel (products in int64 agree with uint32 products modulo 2^32, and the caller masks with T-1).
    """
    x, y, z = corners.unbind(-1)
    return (x * HASH_PRIMES[0]) ^ (y * HASH_PRIMES[1]) ^ (z * HASH_PRIMES[2])


def grid_index(corners: torch.Tensor, res: torch.Tensor, table_size: int) -> torch.Tensor:
    """Table row of each vertex: dense ``x + y*res + z*res^2`` when res^3 <= T, else the spatial hash; mod T.

    corners: (..., 3) int64; res: () int64 vertices per axis; table_size T, a power of two.
    Returns (...,) int64 in [0, T). As in the kernel (and tiny-cuda-nn), a corner at coordinate res (reached on
    the far faces x = 1 of some levels because of the +0.5 offset) wraps onto another row of a dense level.
    """
    x, y, z = corners.unbind(-1)
    dense_index = x + y * res + z * res * res  # (...,) x fastest, then y, then z
    index = torch.where(res * res * res <= table_size, dense_index, spatial_hash(corners))  # (...,)
    return index & (table_size - 1)  # mod T, T a power of two


def trilinear_weights(frac: torch.Tensor, corner_offsets: torch.Tensor) -> torch.Tensor:
    """w_c = prod_d (frac_d if corner c is above in d else 1 - frac_d).

    frac: (N, 3) in [0, 1); corner_offsets: (8, 3) of 0/1. Returns (N, 8). Polynomial in frac, so any
    number of derivatives w.r.t. the position exist (piecewise, inside a cell).
    """
    per_dim = torch.where(corner_offsets.bool(), frac[:, None, :], 1 - frac[:, None, :])  # (N, 8, 3)
    return per_dim[..., 0] * per_dim[..., 1] * per_dim[..., 2]  # (N, 8)


def cube_corners(device: torch.device | str) -> torch.Tensor:
    """(8, 3) int64 offsets of a cell's corners; corner c is +1 in x for bit 0, y for bit 1, z for bit 2."""
    return torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.int64, device=device)


def hash_encode_torch(x: torch.Tensor, table: torch.Tensor, scales: torch.Tensor,
                      resolutions: torch.Tensor) -> torch.Tensor:
    """Reference hash encoding (Sec. 3, Eq. 2-4) in plain PyTorch; differentiable any number of times.

    Arguments and output as in :func:`hash_encode`; works in any floating dtype (float64 for gradcheck). The
    gradient w.r.t. x is that of the trilinear interpolation inside each cell (the cell index, a floor, is
    piecewise constant).
    """
    n_levels, table_size, n_features = table.shape
    corner_offsets = cube_corners(x.device)  # (8, 3)
    resolutions = resolutions.to(device=x.device, dtype=torch.int64)  # (L,)
    encoded_levels = []
    for level in range(n_levels):
        pos = x * scales[level] + 0.5  # (N, 3) tiny-cuda-nn's +0.5 offset staggers the levels
        pos_grid = torch.floor(pos)  # (N, 3) lower vertex of the cell
        frac = pos - pos_grid  # (N, 3) position inside the cell, in [0, 1)
        corners = pos_grid.to(torch.int64)[:, None, :] + corner_offsets  # (N, 8, 3)
        rows = grid_index(corners, resolutions[level], table_size)  # (N, 8)
        features = table[level][rows]  # (N, 8, F) theta_l[h(c)]
        weights = trilinear_weights(frac, corner_offsets)  # (N, 8)
        encoded_levels.append((weights[..., None] * features).sum(dim=1))  # (N, F)
    return torch.cat(encoded_levels, dim=-1) if encoded_levels else x.new_zeros(x.shape[0], 0)  # (N, L*F)


# ----------------------------------------------------------------------------------------------------------
# The CUDA source (through CuPy or the CPU emulation) as an autograd Function
# ----------------------------------------------------------------------------------------------------------
SECOND_DERIVATIVE_MESSAGE = (
    "the {backend} hash encoding has a first-order backward only (its CUDA kernel writes plain numbers); "
    "second derivatives (create_graph=True, e.g. the eikonal loss of an SDF) need backend='torch', whose twin "
    "is differentiable any number of times")


class _HashEncodeFunction(torch.autograd.Function):
    """Forward and first-order backward of kernels/hash_encoding.cu. Gradients flow to the table and to x."""

    @staticmethod
    def forward(ctx, x, table, scales, resolutions, backend):
        n_points, (n_levels, table_size, n_features) = x.shape[0], table.shape
        encoded = torch.empty(n_points, n_levels * n_features, dtype=torch.float32, device=x.device)  # (N, L*F)
        kernel_backend.launch(MODULE, "hash_encode_forward", n_points * n_levels,
                              (x, table, scales, resolutions, encoded,
                               np.int32(n_points), np.int32(n_levels), np.int32(n_features), np.uint32(table_size)),
                              backend)
        ctx.save_for_backward(x, table, scales, resolutions)
        ctx.backend = backend
        return encoded

    @staticmethod
    def backward(ctx, grad_encoded):
        if torch.is_grad_enabled():  # backward(create_graph=True) or autograd.grad(..., create_graph=True)
            raise kernel_backend.BackendError(SECOND_DERIVATIVE_MESSAGE.format(backend=ctx.backend))
        x, table, scales, resolutions = ctx.saved_tensors
        n_points, (n_levels, table_size, n_features) = x.shape[0], table.shape
        need_position_grad, need_table_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table = torch.zeros_like(table) if need_table_grad else table.new_empty(0)  # (L, T, F) atomicAdd target
        # (L, N, 3): one partial per (level, point), summed below; no atomics, so the result is deterministic.
        position_grads = (x.new_empty(n_levels, n_points, 3) if need_position_grad else x.new_empty(0))
        if need_table_grad or need_position_grad:
            kernel_backend.launch(MODULE, "hash_encode_backward", n_points * n_levels,
                                  (x, table, scales, resolutions, grad_encoded.contiguous(), grad_table,
                                   position_grads, np.int32(n_points), np.int32(n_levels), np.int32(n_features),
                                   np.uint32(table_size), np.int32(need_table_grad), np.int32(need_position_grad)),
                                  ctx.backend)
        grad_x = position_grads.sum(dim=0) if need_position_grad else None  # (N, 3)
        return grad_x, (grad_table if need_table_grad else None), None, None, None


def hash_encode(x: torch.Tensor, table: torch.Tensor, scales: torch.Tensor, resolutions: torch.Tensor,
                backend: str = "torch") -> torch.Tensor:
    """Multiresolution hash encoding (Instant-NGP Sec. 3, Eq. 2-4).

    Args:
        x: (N, 3) positions in [0, 1]^3 (normalise the scene box first); float32, or any float dtype for "torch".
        table: (L, T, F) trainable feature vectors theta, T a power of two; float32 for "cuda"/"emulated".
        scales: (L,) float32 scale_l = N_min * b^l - 1 (see :func:`level_scales`).
        resolutions: (L,) int32 res_l = ceil(scale_l) + 1 (see :func:`level_resolutions`).
        backend: "torch" (the twin, differentiable any number of times), "cuda" (kernels/hash_encoding.cu through
            CuPy, tensors on the GPU) or "emulated" (the same source compiled for the CPU). The compiled backends
            are first-order: asking them for a second derivative (create_graph=True) raises a BackendError that
            says to use "torch".

    Returns:
        encoded: (N, L*F) laid out [point][level][feature]. Differentiable w.r.t. table and x.
    """
    if x.dim() != 2 or x.shape[-1] != 3 or table.dim() != 3:
        raise ValueError(f"expected x (N, 3) and table (L, T, F), got {tuple(x.shape)} and {tuple(table.shape)}")
    n_levels, table_size, n_features = table.shape
    if table_size & (table_size - 1) or table_size == 0:
        raise ValueError(f"the table size T must be a power of two (the hash is masked with T-1), got {table_size}")
    if scales.shape != (n_levels,) or resolutions.shape != (n_levels,):
        raise ValueError(f"scales and resolutions must be ({n_levels},), got {tuple(scales.shape)}, "
                         f"{tuple(resolutions.shape)}")
    if backend == "torch":
        return hash_encode_torch(x, table, scales, resolutions)
    if backend not in kernel_backend.BACKENDS:
        raise kernel_backend.BackendError(
            f"unknown backend {backend!r}: choose one of {', '.join(kernel_backend.BACKENDS)}")
    if n_features > MAX_FEATURES:
        raise ValueError(f"the CUDA hash encoding supports up to {MAX_FEATURES} features per level, got {n_features}")
    if table_size > 2 ** 31:
        raise ValueError(f"the CUDA hash encoding indexes rows with 32 bits: T <= 2^31, got {table_size}")

    device_type = kernel_backend.backend_device_type(backend)
    x, scales, resolutions = x.contiguous(), scales.contiguous(), resolutions.contiguous()
    kernel_backend.check_tensor("x", x, torch.float32, device_type)
    kernel_backend.check_tensor("table", table, torch.float32, device_type)
    kernel_backend.check_tensor("scales", scales, torch.float32, device_type)
    kernel_backend.check_tensor("resolutions", resolutions, torch.int32, device_type)
    return _HashEncodeFunction.apply(x, table, scales, resolutions, backend)


# ----------------------------------------------------------------------------------------------------------
# The module a model holds
# ----------------------------------------------------------------------------------------------------------
class HashEncoding(torch.nn.Module):
    """Trainable multiresolution hash grid (Instant-NGP Sec. 3; defaults as in its Table 1 for NeRF).

    Args:
        n_levels: L, number of resolution levels (paper: 16).
        n_features: F, features per level (paper: 2).
        log2_table_size: log2 of T, rows per level (paper: 14 to 24; 19 for NeRF).
        base_resolution: N_min, the coarsest resolution (paper: 16).
        max_resolution: N_max, the finest resolution (paper: 512 to 524288; 2048 * scene size for NeRF).

    Attributes:
        table: (L, T, F) float32 parameter, initialised uniform(-1e-4, 1e-4) (Sec. 4, "Initialization").
        scales: (L,) float32 buffer scale_l; resolutions: (L,) int32 buffer res_l (derived, not saved).
        output_dim: L * F.
    """

    def __init__(self, n_levels: int = 16, n_features: int = 2, log2_table_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048):
        super().__init__()
        self.n_levels, self.n_features, self.table_size = n_levels, n_features, 2 ** log2_table_size
        self.output_dim = n_levels * n_features
        scales = level_scales(n_levels, base_resolution, max_resolution)
        self.register_buffer("scales", scales, persistent=False)  # (L,)
        self.register_buffer("resolutions", level_resolutions(scales), persistent=False)  # (L,)
        self.table = torch.nn.Parameter(torch.empty(n_levels, self.table_size, n_features))  # (L, T, F)
        torch.nn.init.uniform_(self.table, -1e-4, 1e-4)

    def forward(self, x: torch.Tensor, backend: str = "torch") -> torch.Tensor:
        """x: (N, 3) in [0, 1]^3 -> (N, L*F). See :func:`hash_encode` for the backends."""
        return hash_encode(x, self.table, self.scales, self.resolutions, backend)

    def extra_repr(self) -> str:
        return (f"levels={self.n_levels}, features={self.n_features}, table_size={self.table_size}, "
                f"resolutions={self.resolutions.tolist()}")
