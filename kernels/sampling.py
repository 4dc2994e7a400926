"""Hierarchical sampling: inverse-transform sampling of the coarse weights (NeRF, Mildenhall et al. 2020, Sec. 5.2).

Glossary: R rays, B bins per ray, n new samples per ray.

The coarse network's weights w_j (Eq. 5) along a ray, normalised, form a piecewise-constant pdf over the bins
[b_j, b_{j+1}]; the fine samples are drawn from it by inverting its piecewise-linear CDF:

    pdf_j = (w_j + padding) / sum_k (w_k + padding),   cdf_0 = 0,  cdf_{j+1} = cdf_j + pdf_j
    t(u)  = b_j + (u - cdf_j) / (cdf_{j+1} - cdf_j) (b_{j+1} - b_j)   for the bin j with cdf_j <= u < cdf_{j+1}.

The samples are constants: NeRF does not back-propagate through the sample positions (the fine samples only say
where to look; the coarse network learns from its own photometric loss), so nothing here is differentiable.

Three faces, as in every module of kernels/ (README, "Backends"): :func:`sample_pdf_torch` is the readable twin
(torch.searchsorted), ``kernels/sampling.cu`` walks bins and sorted u together in O(B + n) per ray, and
:func:`sample_pdf` draws the u (once, on the Python side, so every backend inverts the very same numbers) and
dispatches.
"""
from __future__ import annotations

import numpy as np
import torch

from kernels import backend as kernel_backend

MODULE = "sampling"  # kernels/sampling.cu

# Added to every weight before normalising, as in the NeRF reference code ("prevent nans"): a ray whose coarse
# weights are all 0 (empty space) then gets a uniform pdf instead of 0/0, and no bin has a zero-width cdf step.
# Passed to the CUDA kernel as an argument, so the two faces cannot disagree on it.
PDF_PADDING = 1e-5


def draw_u(n_rays: int, n_samples: int, *, stratified: bool = False, generator: torch.Generator | None = None,
           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The CDF values to invert: (R, n), sorted along each row, in [0, 1].

    Deterministic: the centres of n equal strata, u_k = (k + 0.5) / n, the same for every ray.
    Stratified: one uniform draw per stratum, u_k = (k + U[0, 1)) / n, from ``generator`` (drawn on the
    generator's device, then moved, so a CPU generator gives the same u on every device). In float32 the last
    one can round to exactly 1 (U = 1 - 2^-24, n >= 2): both faces then return the far edge of the last bin.
    """
    strata = torch.arange(n_samples, dtype=dtype, device=device)  # (n,) k
    if not stratified:
        return ((strata + 0.5) / n_samples).expand(n_rays, n_samples).contiguous()  # (R, n)
    draw_device = generator.device if generator is not None else device
    jitter = torch.rand(n_rays, n_samples, generator=generator, dtype=dtype, device=draw_device)  # (R, n) U[0,1)
    return (strata + jitter.to(device)) / n_samples  # (R, n); (k + U) / n < (k + 1) / n keeps rows sorted


def sample_pdf_torch(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor,
                     padding: float = PDF_PADDING) -> torch.Tensor:
    """Reference inverse-CDF sampling (NeRF Sec. 5.2) in plain PyTorch, any floating dtype.

    bins: (R, B+1) sorted edges; weights: (R, B) >= 0; u: (R, n) in [0, 1] (sorted rows give sorted samples);
    padding: added to every weight (PDF_PADDING for NeRF's coarse weights; 0 for a histogram that already sums
    to 1 with no empty ray, as mip-NeRF 360's proposal histograms).
    Returns samples: (R, n).
    """
    ### BEGIN SOLUTION
    n_bins = weights.shape[-1]
    # pdf_j = (w_j + padding) / total; the cdf divides the running sum by its own last entry, which is the same
    # number mathematically and makes cdf_B exactly 1 in floating point (the kernel does the same).
    running = torch.cumsum(weights + padding, dim=-1)  # (R, B)  sum_{k<=j} (w_k + padding)
    cdf = running / running[:, -1:]  # (R, B)  cdf_1 .. cdf_B
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], dim=-1)  # (R, B+1) cdf_0 = 0

    # Bin j with cdf_j <= u < cdf_{j+1}: searchsorted(right=True) returns the first index with cdf > u.
    above = torch.searchsorted(cdf, u.contiguous(), right=True)  # (R, n) in [1, B+1]
    bin_index = (above - 1).clamp(0, n_bins - 1)  # (R, n) j; u = 1 lands in the last bin
    cdf_left = torch.gather(cdf, 1, bin_index)  # (R, n) cdf_j
    cdf_right = torch.gather(cdf, 1, bin_index + 1)  # (R, n) cdf_{j+1}
    left = torch.gather(bins, 1, bin_index)  # (R, n) b_j
    right = torch.gather(bins, 1, bin_index + 1)  # (R, n) b_{j+1}

    # Linear interpolation inside the bin (the inverse of a piecewise-linear CDF). A zero-width cdf step
    # (possible only through float rounding) would divide 0 by 0: it gets fraction 0 instead.
    step = cdf_right - cdf_left  # (R, n)
    fraction = torch.where(step > 0, (u - cdf_left) / torch.where(step > 0, step, torch.ones_like(step)),
                           torch.zeros_like(step))  # (R, n)
    fraction = fraction.clamp(0.0, 1.0)  # u = 1 >= cdf_B sits on the far edge
    return torch.minimum(left + fraction * (right - left), right)  # (R, n) never one ulp past the bin
    ### END SOLUTION


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, *, stratified: bool = False,
               generator: torch.Generator | None = None, backend: str = "torch") -> torch.Tensor:
    """Draw ``n_samples`` positions per ray from the piecewise-constant pdf of ``weights`` (NeRF Sec. 5.2, Eq. 5).

    Args:
        bins: (R, B+1) float32 bin edges along each ray, sorted ascending (e.g. midpoints of the coarse samples).
        weights: (R, B) float32 non-negative weights of the bins (the coarse w_i; need not sum to 1).
        n_samples: number of new samples per ray.
        stratified: jitter u inside each of the n strata (training) instead of taking their centres (evaluation).
        generator: torch.Generator for the stratified jitter (reproducible runs).
        backend: "torch" (twin), "cuda" (kernels/sampling.cu through CuPy) or "emulated" (the source on the CPU).

    Returns:
        samples: (R, n_samples) float32, sorted along each ray, each inside [bins[:, 0], bins[:, -1]].
        No gradient: the positions are constants, as in the paper (the result is detached).

    The kernel walks the u of a ray in order and needs them sorted; the u drawn here by :func:`draw_u` are
    sorted by construction, and u never comes from the caller.
    """
    if bins.dim() != 2 or weights.dim() != 2 or bins.shape != (weights.shape[0], weights.shape[1] + 1):
        raise ValueError(f"expected bins (R, B+1) and weights (R, B); got {tuple(bins.shape)} and "
                         f"{tuple(weights.shape)}")
    if weights.shape[1] < 1:
        raise ValueError("sample_pdf needs at least one bin per ray (weights of shape (R, B) with B >= 1)")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    n_rays = bins.shape[0]
    bins, weights = bins.detach(), weights.detach()
    u = draw_u(n_rays, n_samples, stratified=stratified, generator=generator, device=bins.device,
               dtype=bins.dtype)  # (R, n)
    return invert_cdf(bins, weights, u, backend)


def invert_cdf(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor, backend: str,
               padding: float = PDF_PADDING) -> torch.Tensor:
    """The samples at given CDF values u (R, n), sorted per row in [0, 1], on one backend: for callers that
    draw their own u (mip-NeRF 360's one jitter per ray). bins (R, B+1), weights (R, B) as in sample_pdf;
    padding as in sample_pdf_torch. Returns (R, n); no gradient."""
    if backend == "torch":
        return sample_pdf_torch(bins, weights, u, padding)
    if backend not in kernel_backend.BACKENDS:
        raise kernel_backend.BackendError(
            f"unknown backend {backend!r}: choose one of {', '.join(kernel_backend.BACKENDS)}")

    n_rays, n_samples = u.shape
    device_type = kernel_backend.backend_device_type(backend)
    bins, weights, u = bins.contiguous(), weights.contiguous(), u.contiguous()
    kernel_backend.check_tensor("bins", bins, torch.float32, device_type)
    kernel_backend.check_tensor("weights", weights, torch.float32, device_type)
    kernel_backend.check_tensor("u", u, torch.float32, device_type)
    samples = torch.empty(n_rays, n_samples, dtype=torch.float32, device=bins.device)  # (R, n)
    if n_samples > 0:
        kernel_backend.launch(MODULE, "sample_pdf", n_rays,
                              (bins, weights, u, np.int32(n_rays), np.int32(weights.shape[1]), np.int32(n_samples),
                               np.float32(padding), samples), backend)
    return samples
