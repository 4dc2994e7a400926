"""Numerical guards, each a small named helper with a comment on the failure it prevents.

Scripts use these names instead of bare `1e-10` / `1e10` so that every guard has one definition and one reason.
"""
import torch

# Denominator guard for ratios whose denominator can be 0: an expected depth sum_i w_i t_i / sum_i w_i on a ray
# with no weight, a colour un-premultiplied by a zero alpha, a depth range of zero width.
DIVISION_EPS = 1e-10
# Length below which a vector is treated as zero when normalising (e.g. the gradient of an SDF at a kink).
NORM_EPS = 1e-8
# exp(x) overflows float32 for x > log(3.4e38) ~ 88.7; densities pass through exp, so we clamp just below.
FLOAT32_MAX_EXPONENT = 88.0


def safe_exp(x: torch.Tensor, max_exponent: float = FLOAT32_MAX_EXPONENT) -> torch.Tensor:
    """exp(x) with the exponent clamped so float32 never overflows to inf (inf * 0 would give NaN weights).

    x: any shape; returns the same shape. The gradient is 0 where the clamp is active.
    """
    return torch.exp(x.clamp(max=max_exponent))


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
