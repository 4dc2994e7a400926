import torch

from common.numerics import (
    FLOAT32_MAX_EXPONENT,
    safe_exp,
    safe_normalize,
    safe_sqrt,
)


def test_safe_exp_equals_exp_below_the_clamp_and_never_overflows_float32():
    x = torch.tensor([-5.0, 0.0, 3.0, 80.0, 1000.0])
    out = safe_exp(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:4], torch.exp(x[:4]))
    torch.testing.assert_close(out[4], torch.exp(torch.tensor(FLOAT32_MAX_EXPONENT)))


def test_safe_normalize_gives_unit_vectors_and_no_nan_for_zero_vectors():
    v = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    n = safe_normalize(v)
    torch.testing.assert_close(n[0], torch.tensor([0.6, 0.8, 0.0]))
    assert torch.equal(n[1], torch.zeros(3))
    n.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_safe_sqrt_has_a_finite_gradient_at_zero():
    x = torch.tensor([0.0, 4.0], requires_grad=True)
    y = safe_sqrt(x)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(y[1], torch.tensor(2.0))
