"""Volume rendering of packed samples: NeRF's quadrature of the rendering integral (Mildenhall et al. 2020, Eq. 3).

Glossary: R rays, S samples per ray (S_max the longest ray), N packed samples.

Packed layout (nerfacc style): the samples of all rays live in flat arrays of length N; the samples of ray r are the
contiguous range ``[ray_starts[r], ray_starts[r] + ray_counts[r])``, in front-to-back order.

For the samples i of one ray (Eq. 3 and the weights of Eq. 5):

    delta_i = t_end_i - t_start_i
    alpha_i = 1 - exp(-sigma_i delta_i)
    T_i     = exp(-sum_{j<i} sigma_j delta_j)
    w_i     = T_i alpha_i
    opacity = sum_i w_i,   color = sum_i w_i c_i,   depth = sum_i w_i (t_start_i + t_end_i) / 2

Three faces, as in every module of kernels/ (README, "Backends"): :func:`composite_torch` is the readable twin
(autograd gives its backward); ``kernels/compositing.cu`` holds the forward kernel and a closed-form backward kernel
(derived in its comments); :func:`composite` picks one by ``backend``.
"""
from __future__ import annotations

import numpy as np
import torch

from kernels import backend as kernel_backend

MODULE = "compositing"  # kernels/compositing.cu


# ----------------------------------------------------------------------------------------------------------
# Packed-layout helpers
# ----------------------------------------------------------------------------------------------------------
def starts_from_counts(ray_counts: torch.Tensor) -> torch.Tensor:
    """Exclusive cumulative sum: where each ray's samples begin in the packed arrays.

    ray_counts: (R,) integer tensor, samples per ray.
    Returns ray_starts: (R,) int32, ``ray_starts[r] = sum_{q<r} ray_counts[q]``.
    """
    counts = ray_counts.to(torch.int64)
    return (torch.cumsum(counts, dim=0) - counts).to(torch.int32)  # (R,) exact in integers


def ray_indices_from_counts(ray_counts: torch.Tensor) -> torch.Tensor:
    """The ray each packed sample belongs to, for samples packed ray after ray.

    ray_counts: (R,) integer tensor. Returns ray_indices: (N,) int64 with N = ray_counts.sum(),
    e.g. counts [2, 0, 3] -> [0, 0, 2, 2, 2].
    """
    ray_ids = torch.arange(ray_counts.shape[0], device=ray_counts.device)  # (R,)
    return torch.repeat_interleave(ray_ids, ray_counts.to(torch.int64))  # (N,)


# ----------------------------------------------------------------------------------------------------------
# The PyTorch twin
# ----------------------------------------------------------------------------------------------------------
def composite_torch(sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                    ray_starts: torch.Tensor, ray_counts: torch.Tensor, *, early_stop_eps: float = 0.0):
    """Reference volume rendering (Eq. 3 of NeRF) in plain PyTorch; differentiable by autograd.

    Works in any floating dtype (float64 for gradcheck). Arguments and outputs as in :func:`composite`.

    The packed samples are gathered into a padded (R, S_max) grid so that the transmittance is an exact
    per-ray cumulative sum along the rows. (A single cumsum over all N packed samples minus per-ray offsets
    would give the same numbers in exact arithmetic, but loses the digits of short rays behind long ones.)
    """
    n_samples, n_rays = sigmas.shape[0], ray_counts.shape[0]
    device, dtype = sigmas.device, sigmas.dtype
    ray_starts, ray_counts = ray_starts.to(torch.int64), ray_counts.to(torch.int64)
    max_samples = int(ray_counts.max()) if n_rays > 0 else 0

    # Padded view: slot j of ray r holds packed sample ray_starts[r] + j when j < ray_counts[r].
    slots = torch.arange(max_samples, device=device)  # (S,)
    valid = slots[None, :] < ray_counts[:, None]  # (R, S)
    packed_index = torch.where(valid, ray_starts[:, None] + slots[None, :], 0)  # (R, S); padding reads sample 0

    def padded(values: torch.Tensor) -> torch.Tensor:
        """(N, ...) packed -> (R, S, ...) padded with zeros (zero optical depth: padding changes nothing)."""
        gathered = values[packed_index]  # (R, S, ...)
        mask = valid.reshape(valid.shape + (1,) * (values.dim() - 1))
        return torch.where(mask, gathered, torch.zeros((), dtype=values.dtype, device=device))

    deltas = t_ends - t_starts  # (N,) delta_i
    t_mids = 0.5 * (t_starts + t_ends)  # (N,)
    optical_depths = padded(sigmas * deltas)  # (R, S) s_i = sigma_i delta_i
    alphas = -torch.expm1(-optical_depths)  # (R, S) alpha_i = 1 - exp(-s_i), without cancellation for small s_i
    # T_i = exp(-sum_{j<i} s_j): an exclusive cumsum along each ray (shift, rather than cumsum - s, stays exact).
    accumulated = torch.cumsum(optical_depths, dim=1)  # (R, S) sum_{j<=i} s_j
    accumulated = torch.cat([torch.zeros_like(accumulated[:, :1]), accumulated[:, :-1]], dim=1)  # (R, S)
    trans = torch.exp(-accumulated)  # (R, S) T_i
    weights = trans * alphas  # (R, S) w_i = T_i alpha_i
    if early_stop_eps > 0:
        # Early ray termination: a sample whose transmittance fell below eps, and every later one, gets weight 0.
        weights = torch.where(trans >= early_stop_eps, weights, torch.zeros_like(weights))  # (R, S)

    opacity = weights.sum(dim=1)  # (R,)
    color = (weights[:, :, None] * padded(rgbs)).sum(dim=1)  # (R, 3)
    depth = (weights * padded(t_mids)).sum(dim=1)  # (R,)

    # Back to the packed layout; samples that belong to no ray keep weight 0, as in the kernel.
    packed_weights = torch.zeros(n_samples, dtype=dtype, device=device).index_put(
        (packed_index[valid],), weights[valid])  # (N,)
    return packed_weights, opacity, color, depth


# ----------------------------------------------------------------------------------------------------------
# The CUDA source (through CuPy or the CPU emulation) as an autograd Function
# ----------------------------------------------------------------------------------------------------------
class _CompositeFunction(torch.autograd.Function):
    """Forward and closed-form backward of kernels/compositing.cu. Gradients flow to sigmas and rgbs only."""

    @staticmethod
    def forward(ctx, sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts, early_stop_eps, backend):
        n_rays = ray_counts.shape[0]
        weights = torch.zeros_like(sigmas)  # (N,) zero where no ray writes
        opacity = torch.empty(n_rays, dtype=sigmas.dtype, device=sigmas.device)  # (R,)
        color = torch.empty(n_rays, 3, dtype=sigmas.dtype, device=sigmas.device)  # (R, 3)
        depth = torch.empty(n_rays, dtype=sigmas.dtype, device=sigmas.device)  # (R,)
        kernel_backend.launch(MODULE, "composite_forward", n_rays,
                              (sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts, np.int32(n_rays),
                               np.float32(early_stop_eps), weights, opacity, color, depth), backend)
        ctx.save_for_backward(sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts, weights)
        ctx.early_stop_eps, ctx.backend = early_stop_eps, backend
        return weights, opacity, color, depth

    @staticmethod
    def backward(ctx, grad_weights, grad_opacity, grad_color, grad_depth):
        sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts, weights = ctx.saved_tensors
        n_rays = ray_counts.shape[0]
        grad_sigmas = torch.zeros_like(sigmas)  # (N,)
        grad_rgbs = torch.zeros_like(rgbs)  # (N, 3)
        kernel_backend.launch(MODULE, "composite_backward", n_rays,
                              (sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts, weights,
                               grad_weights.contiguous(), grad_opacity.contiguous(), grad_color.contiguous(),
                               grad_depth.contiguous(), np.int32(n_rays), np.float32(ctx.early_stop_eps),
                               grad_sigmas, grad_rgbs), ctx.backend)
        return grad_sigmas, grad_rgbs, None, None, None, None, None, None


def composite(sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
              ray_starts: torch.Tensor, ray_counts: torch.Tensor, *, early_stop_eps: float = 0.0,
              backend: str = "torch"):
    """Volume rendering of packed samples (NeRF Eq. 3): weights, opacity, colour and depth of every ray.

    Args:
        sigmas: (N,) float32 densities sigma_i >= 0.
        rgbs: (N, 3) float32 colours c_i.
        t_starts, t_ends: (N,) float32 interval bounds along the ray, t_ends >= t_starts, front to back per ray.
        ray_starts: (R,) int32 first packed sample of each ray (see :func:`starts_from_counts`).
        ray_counts: (R,) int32 number of samples of each ray (0 allowed).
        early_stop_eps: early ray termination: once T_i < early_stop_eps the ray stops and that sample and all
            later ones get weight 0 (Instant-NGP uses 1e-4). 0 (default) renders every sample.
        backend: "torch" (the twin), "cuda" (kernels/compositing.cu through CuPy, tensors on the GPU) or
            "emulated" (the same source compiled for the CPU).

    Returns:
        weights: (N,) w_i = T_i alpha_i (0 for samples of no ray);
        opacity: (R,) sum_i w_i (accumulated alpha, 1 - final transmittance);
        color: (R, 3) sum_i w_i c_i (no background: add (1 - opacity) * background yourself);
        depth: (R,) sum_i w_i (t_start_i + t_end_i) / 2 (expected depth, not normalised by opacity).

    Differentiable w.r.t. sigmas and rgbs through all four outputs; the intervals and the packing are constants
    (the twin would also differentiate t_starts/t_ends, the CUDA backward does not).
    """
    if backend == "torch":
        return composite_torch(sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts,
                               early_stop_eps=early_stop_eps)
    if backend not in kernel_backend.BACKENDS:
        raise kernel_backend.BackendError(
            f"unknown backend {backend!r}: choose one of {', '.join(kernel_backend.BACKENDS)}")

    device_type = kernel_backend.backend_device_type(backend)
    sigmas, rgbs = sigmas.contiguous(), rgbs.contiguous()
    t_starts, t_ends = t_starts.contiguous(), t_ends.contiguous()
    ray_starts, ray_counts = ray_starts.contiguous(), ray_counts.contiguous()
    for name, tensor in (("sigmas", sigmas), ("rgbs", rgbs), ("t_starts", t_starts), ("t_ends", t_ends)):
        kernel_backend.check_tensor(name, tensor, torch.float32, device_type)
    for name, tensor in (("ray_starts", ray_starts), ("ray_counts", ray_counts)):
        kernel_backend.check_tensor(name, tensor, torch.int32, device_type)
    _check_packed_shapes(sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts)
    return _CompositeFunction.apply(sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts,
                                    float(early_stop_eps), backend)


def _check_packed_shapes(sigmas, rgbs, t_starts, t_ends, ray_starts, ray_counts) -> None:
    """Shapes always; sample ranges only on the CPU, where the check costs no GPU synchronisation.

    An out-of-range ray would make the kernel read past the arrays (a crash in the emulation, an illegal
    memory access on the GPU), so the emulated backend and CPU callers get a clear message instead.
    """
    n_samples = sigmas.shape[0]
    if sigmas.dim() != 1 or rgbs.shape != (n_samples, 3) or t_starts.shape != (n_samples,) \
            or t_ends.shape != (n_samples,):
        raise ValueError(f"expected sigmas (N,), rgbs (N, 3), t_starts (N,), t_ends (N,); got "
                         f"{tuple(sigmas.shape)}, {tuple(rgbs.shape)}, {tuple(t_starts.shape)}, {tuple(t_ends.shape)}")
    if ray_starts.dim() != 1 or ray_starts.shape != ray_counts.shape:
        raise ValueError(f"expected ray_starts (R,) and ray_counts (R,); got "
                         f"{tuple(ray_starts.shape)} and {tuple(ray_counts.shape)}")
    if ray_counts.device.type == "cpu" and ray_counts.numel() > 0:
        ends = ray_starts.to(torch.int64) + ray_counts
        if bool((ray_starts < 0).any()) or bool((ray_counts < 0).any()) or int(ends.max()) > n_samples:
            raise ValueError(f"ray_starts/ray_counts address samples outside [0, {n_samples}): "
                             f"build them with starts_from_counts(ray_counts)")
