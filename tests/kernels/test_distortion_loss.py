"""kernels/distortion_loss: mip-NeRF 360's Eq. 15 in linear time. The twin against the quadratic definition and
the CUDA source (emulated on the CPU, and on a GPU when there is one), forward and backward.

Tolerances: float32 prefix sums over S = 64 intervals round once per interval, relative error ~S 2^-24 ~ 4e-6 of
the loss (~0.1); we compare at rtol 1e-5, atol 1e-6 (loss) and atol 1e-5 (gradients, whose terms are O(1)).
"""
import pytest
import torch

from kernels.distortion_loss import distortion_loss, distortion_loss_torch
from tests.conftest import gpu_available

TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-5, atol=1e-5)


def random_rays(n_rays, n_intervals, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.sort(torch.rand(n_rays, n_intervals + 1, generator=g, dtype=torch.float64), -1).values
    w = torch.softmax(3 * torch.randn(n_rays, n_intervals, generator=g, dtype=torch.float64), -1)
    w[:, ::7] = 0.0  # some empty intervals
    return s.to(dtype), w.to(dtype)


def quadratic(s, w):
    mid = (s[:, 1:] + s[:, :-1]) / 2
    inter = (w[:, :, None] * w[:, None, :] * (mid[:, :, None] - mid[:, None, :]).abs()).sum((1, 2))
    return inter + (w**2 * (s[:, 1:] - s[:, :-1])).sum(-1) / 3


def test_twin_equals_the_quadratic_definition_in_float64():
    s, w = random_rays(32, 48, dtype=torch.float64)
    torch.testing.assert_close(distortion_loss_torch(s, w), quadratic(s, w), rtol=1e-12, atol=1e-15)


def test_twin_gradient_passes_gradcheck():
    s, w = random_rays(4, 9, dtype=torch.float64)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: distortion_loss_torch(s, x), (w,))


@pytest.mark.parametrize("n_intervals", [1, 16, 64])
def test_emulated_forward_and_backward_match_the_twin(n_intervals):
    s, w = random_rays(50, n_intervals, seed=n_intervals)
    grad_out = torch.rand(50, generator=torch.Generator().manual_seed(1))
    w_twin, w_kernel = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    expected = distortion_loss(s, w_twin, backend="torch")
    actual = distortion_loss(s, w_kernel, backend="emulated")
    torch.testing.assert_close(actual, expected, **TOL)
    (expected * grad_out).sum().backward()
    (actual * grad_out).sum().backward()
    torch.testing.assert_close(w_kernel.grad, w_twin.grad, **GRAD_TOL)


def test_emulated_handles_no_rays():
    s, w = torch.zeros(0, 5), torch.zeros(0, 4)
    assert distortion_loss(s, w, backend="emulated").shape == (0,)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"expected s \(R, S\+1\)"):
        distortion_loss(torch.zeros(3, 5), torch.zeros(3, 5))


@pytest.mark.gpu
def test_cuda_matches_the_twin():
    s, w = random_rays(1000, 64)
    s, w = s.cuda(), w.cuda().requires_grad_(True)
    w_twin = w.detach().clone().requires_grad_(True)
    torch.testing.assert_close(distortion_loss(s, w, backend="cuda"), distortion_loss(s, w_twin), **TOL)
    distortion_loss(s, w, backend="cuda").sum().backward()
    distortion_loss(s, w_twin).sum().backward()
    torch.testing.assert_close(w.grad, w_twin.grad, **GRAD_TOL)
