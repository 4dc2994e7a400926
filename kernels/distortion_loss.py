"""The distortion loss of mip-NeRF 360 (Barron et al. 2022, Eq. 15) in linear time per ray.

Glossary: R rays, S intervals per ray (S + 1 interval ends).

    L(s, w) = sum_{i,j} w_i w_j |m_i - m_j| + (1/3) sum_i w_i^2 (s_{i+1} - s_i),   m_i = (s_i + s_{i+1}) / 2

It pulls the weights of each ray into one compact blob (no floaters). Written as a double sum it costs O(S^2)
per ray; with the midpoints sorted, prefix sums make it O(S) (see kernels/distortion_loss.cu for the algebra).

Three faces, as every module of kernels/ (kernels/__init__.py): :func:`distortion_loss_torch` is the readable twin (cumsum, autograd
does the backward), ``kernels/distortion_loss.cu`` computes the loss and its gradient in two passes per ray, and
:func:`distortion_loss` dispatches by backend. The interval ends are constants: only w gets a gradient (in
03_mipnerf360.py the ends are drawn without gradient).
"""
from __future__ import annotations

import numpy as np
import torch

from kernels import backend as kernel_backend

MODULE = "distortion_loss"  # kernels/distortion_loss.cu


def distortion_loss_torch(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Reference Eq. 15 in O(S) per ray, any floating dtype. s: (R, S+1) sorted; w: (R, S). Returns (R,)."""
    m = (s[:, 1:] + s[:, :-1]) / 2  # (R, S) midpoints
    prefix_w = torch.cumsum(w, -1) - w  # (R, S) W_i = sum_{j<i} w_j
    prefix_wm = torch.cumsum(w * m, -1) - w * m  # (R, S) M_i = sum_{j<i} w_j m_j
    inter = 2 * (w * (m * prefix_w - prefix_wm)).sum(-1)
    intra = (w**2 * (s[:, 1:] - s[:, :-1])).sum(-1) / 3
    return inter + intra


class _DistortionLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, w, backend):
        n_rays, n_intervals = w.shape
        loss = torch.empty(n_rays, dtype=w.dtype, device=w.device)
        kernel_backend.launch(MODULE, "distortion_loss_forward", n_rays,
                              (s, w, np.int32(n_rays), np.int32(n_intervals), loss), backend)
        ctx.save_for_backward(s, w)
        ctx.backend = backend
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        s, w = ctx.saved_tensors
        n_rays, n_intervals = w.shape
        grad_w = torch.empty_like(w)
        kernel_backend.launch(MODULE, "distortion_loss_backward", n_rays,
                              (s, w, grad_loss.contiguous(), np.int32(n_rays), np.int32(n_intervals), grad_w),
                              ctx.backend)
        return None, grad_w, None


def distortion_loss(s: torch.Tensor, w: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Eq. 15 of mip-NeRF 360 per ray.

    Args:
        s: (R, S+1) float32 interval ends along each ray, sorted ascending (mip-NeRF 360: normalised distance).
        w: (R, S) float32 weights of the intervals.
        backend: "torch" (the twin), "cuda" (kernels/distortion_loss.cu through CuPy) or "emulated" (the same
            source compiled for the CPU).

    Returns:
        loss: (R,) float32. Differentiable with respect to w; s is a constant (the kernel gives it no gradient).
    """
    if s.dim() != 2 or w.dim() != 2 or s.shape != (w.shape[0], w.shape[1] + 1):
        raise ValueError(f"expected s (R, S+1) and w (R, S); got {tuple(s.shape)} and {tuple(w.shape)}")
    if backend == "torch":
        return distortion_loss_torch(s, w)
    if backend not in kernel_backend.BACKENDS:
        raise kernel_backend.BackendError(
            f"unknown backend {backend!r}: choose one of {', '.join(kernel_backend.BACKENDS)}")
    device_type = kernel_backend.backend_device_type(backend)
    s, w = s.detach().contiguous(), w.contiguous()
    for name, tensor in (("s", s), ("w", w)):
        kernel_backend.check_tensor(name, tensor, torch.float32, device_type)
    return _DistortionLossFunction.apply(s, w, backend)
