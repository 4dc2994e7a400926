"""Numerical guards, each a small named helper with a comment on the failure it prevents.

Scripts use these names instead of bare `1e-10` / `1e10` so that every guard has one definition and one reason.
"""
import torch

# NeRF's compositing multiplies (1 - alpha_i + eps) so that the cumulative product (the transmittance T_i) never
# becomes exactly 0 and its gradient stays finite (the official NeRF code uses 1e-10).
TRANSMITTANCE_EPS = 1e-10
# Denominator guard for ratios such as the expected depth sum_i w_i t_i / sum_i w_i on rays with no weight.
DIVISION_EPS = 1e-10
# Length below which a vector is treated as zero when normalising (e.g. the gradient of an SDF at a kink).
NORM_EPS = 1e-8
# Stand-in for an infinite interval: NeRF sets the last delta of each ray to 1e10 so that the last sample absorbs
# whatever light is left.
INFINITE_DELTA = 1e10
# exp(x) overflows float32 for x > log(3.4e38) ~ 88.7; densities pass through exp, so we clamp just below.
FLOAT32_MAX_EXPONENT = 88.0
# Instant-NGP's truncated exponential clamps the exponent of the *gradient* at 15 (exp(15) ~ 3.3e6), which keeps
# one spiky sample from blowing up the update of the whole hash table.
TRUNC_EXP_MAX_EXPONENT = 15.0


def safe_exp(x: torch.Tensor, max_exponent: float = FLOAT32_MAX_EXPONENT) -> torch.Tensor:
    """exp(x) with the exponent clamped so float32 never overflows to inf (inf * 0 would give NaN weights).

    x: any shape; returns the same shape. The gradient is 0 where the clamp is active.
    """
    return torch.exp(x.clamp(max=max_exponent))


class _TruncExp(torch.autograd.Function):
    """exp(x) forward; backward uses exp(min(x, 15)) (Instant-NGP, Mueller et al. 2022, density activation)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * torch.exp(x.clamp(max=TRUNC_EXP_MAX_EXPONENT))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """Density activation of Instant-NGP: exact exp(x) forward, gradient clamped to exp(15) (see `_TruncExp`).

    x: any shape (the raw density output, e.g. (N,)); returns exp(x) of the same shape.
    """
    return _TruncExp.apply(x)


def safe_normalize(v: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """v / |v| along the last axis; vectors shorter than eps are divided by eps instead of by ~0 (no NaN).

    v: (..., D); returns (..., D).
    """
    return v / v.norm(dim=-1, keepdim=True).clamp(min=eps)


def safe_sqrt(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """sqrt(max(x, eps)): the gradient 1/(2 sqrt(x)) of sqrt is infinite at 0, so we keep x away from 0.

    x: any shape; returns the same shape.
    """
    return torch.sqrt(x.clamp(min=eps))
