"""kernels/compositing: the twin against the CUDA source (emulated on the CPU, and on a GPU when there is one),
gradcheck of the twin, and properties of NeRF's quadrature (Eq. 3).

Tolerances (float32 unless stated):
  * twin vs emulated kernel, forward and backward: rtol 1e-5, atol 1e-6. Both sum each ray front to back in the
    same order; what differs is exp/expm1 (libm vs PyTorch's vectorised versions) and PyTorch's float64
    accumulation inside cumsum, a few ulp. No atomics are involved (one thread owns a ray).
  * kernel (float32) vs twin in float64: rtol 1e-4, atol 1e-5: float32 rounding of sums of up to ~40 terms.
  * cuda vs twin on the GPU: rtol 1e-4, atol 1e-5 (CUDA's expf/expm1f are within 2 ulp of libm's).
  * gradcheck: float64, PyTorch's defaults (eps 1e-6, atol 1e-5, rtol 1e-3).
"""
import math

import pytest
import torch

from kernels.compositing import composite, composite_torch, ray_indices_from_counts, starts_from_counts

FORWARD_TOL = dict(rtol=1e-5, atol=1e-6)
FLOAT64_TOL = dict(rtol=1e-4, atol=1e-5)
GPU_TOL = dict(rtol=1e-4, atol=1e-5)


def packed_rays(counts, *, sigma_scale=3.0, near=2.0, seed=0, dtype=torch.float32):
    """Random packed samples: per ray, sorted intervals starting at `near`, densities in [0, sigma_scale)."""
    generator = torch.Generator().manual_seed(seed)
    ray_counts = torch.as_tensor(counts, dtype=torch.int32)  # (R,)
    ray_starts = starts_from_counts(ray_counts)  # (R,)
    n_samples = int(ray_counts.sum())
    deltas = 0.02 + 0.2 * torch.rand(n_samples, generator=generator, dtype=torch.float64)  # (N,)
    ray_indices = ray_indices_from_counts(ray_counts)  # (N,)
    # t_start of a sample = near + sum of the deltas before it on the same ray (per-ray exclusive cumsum).
    t_starts = torch.zeros(n_samples, dtype=torch.float64)
    for start, count in zip(ray_starts.tolist(), ray_counts.tolist()):
        t_starts[start:start + count] = near + torch.cumsum(deltas[start:start + count], 0) - deltas[start:start + count]
    t_ends = t_starts + deltas
    sigmas = sigma_scale * torch.rand(n_samples, generator=generator, dtype=torch.float64)  # (N,)
    rgbs = torch.rand(n_samples, 3, generator=generator, dtype=torch.float64)  # (N, 3)
    assert ray_indices.shape == (n_samples,)
    cast = lambda x: x.to(dtype)
    return dict(sigmas=cast(sigmas), rgbs=cast(rgbs), t_starts=cast(t_starts), t_ends=cast(t_ends),
                ray_starts=ray_starts, ray_counts=ray_counts)


def upstream_gradients(outputs, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.dtype) for out in outputs]


def render_with_grads(inputs, backend, gradients, early_stop_eps=0.0, dtype=None):
    """Forward + backward; returns (weights, opacity, color, depth, dL/dsigmas, dL/drgbs)."""
    inputs = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    sigmas = inputs["sigmas"].clone().requires_grad_(True)
    rgbs = inputs["rgbs"].clone().requires_grad_(True)
    outputs = composite(sigmas, rgbs, inputs["t_starts"], inputs["t_ends"], inputs["ray_starts"],
                        inputs["ray_counts"], early_stop_eps=early_stop_eps, backend=backend)
    torch.autograd.backward(outputs, [g.to(o.dtype) for g, o in zip(gradients, outputs)])
    grad_sigmas = sigmas.grad if sigmas.grad is not None else torch.zeros_like(sigmas)
    grad_rgbs = rgbs.grad if rgbs.grad is not None else torch.zeros_like(rgbs)
    return [o.detach() for o in outputs] + [grad_sigmas, grad_rgbs]


def assert_all_close(actual, expected, **tol):
    names = ["weights", "opacity", "color", "depth", "grad_sigmas", "grad_rgbs"]
    for name, a, e in zip(names, actual, expected):
        assert a.shape == e.shape, name
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.to(e.dtype), e, **tol, msg=lambda m: f"{name}: {m}")


EDGE_CASES = {
    "random": dict(counts=[5, 0, 17, 1, 40, 3, 0, 8, 12, 25]),
    "zero_sample_rays": dict(counts=[0, 4, 0, 0, 6, 0]),
    "empty_space": dict(counts=[7, 3, 12], sigma_scale=0.0),
    "huge_density": dict(counts=[9, 1, 20], sigma_scale=1e6),
    "single_ray": dict(counts=[33]),
    "no_samples_at_all": dict(counts=[0, 0, 0]),
    "no_rays": dict(counts=[]),
}


@pytest.mark.parametrize("early_stop_eps", [0.0, 1e-2])
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_composite_emulated_matches_twin_forward_and_backward(case, early_stop_eps):
    inputs = packed_rays(**EDGE_CASES[case])
    twin_outputs = composite_torch(**inputs, early_stop_eps=early_stop_eps)
    gradients = upstream_gradients(twin_outputs)
    expected = render_with_grads(inputs, "torch", gradients, early_stop_eps)
    actual = render_with_grads(inputs, "emulated", gradients, early_stop_eps)
    assert_all_close(actual, expected, **FORWARD_TOL)


@pytest.mark.parametrize("case", ["random", "huge_density", "empty_space"])
def test_composite_emulated_matches_float64_twin(case):
    inputs = packed_rays(**EDGE_CASES[case])
    gradients = upstream_gradients(composite_torch(**inputs))
    expected = render_with_grads(inputs, "torch", gradients, dtype=torch.float64)
    actual = render_with_grads(inputs, "emulated", gradients)
    assert_all_close(actual, expected, **FLOAT64_TOL)


def test_composite_edge_values_are_what_the_equations_say():
    # Empty space: nothing is seen, yet a density gradient exists (dL/dsigma_k = delta_k v_k since T = 1, w = 0).
    empty = packed_rays([4], sigma_scale=0.0)
    weights, opacity, color, depth = composite(**empty, backend="emulated")
    assert torch.equal(weights, torch.zeros(4)) and opacity.item() == 0.0 and depth.item() == 0.0
    assert torch.equal(color, torch.zeros(1, 3))
    # A wall of density 1e6: the first sample takes everything, the rest is hidden, nothing overflows.
    wall = packed_rays([5], sigma_scale=1e6)
    weights, opacity, color, depth = composite(**wall, backend="emulated")
    assert weights[0].item() == pytest.approx(1.0) and torch.all(weights[1:] == 0)
    torch.testing.assert_close(color[0], wall["rgbs"][0])
    # Zero-sample rays render as nothing.
    rays = packed_rays([0, 3, 0])
    _, opacity, color, depth = composite(**rays, backend="emulated")
    assert opacity[0] == 0 and opacity[2] == 0 and torch.all(color[[0, 2]] == 0) and depth[0] == 0


@pytest.mark.parametrize("early_stop_eps", [0.0, 0.3])
def test_composite_twin_passes_gradcheck_in_float64(early_stop_eps):
    inputs = packed_rays([3, 0, 6, 1], sigma_scale=6.0, dtype=torch.float64)
    sigmas = inputs.pop("sigmas").requires_grad_(True)
    rgbs = inputs.pop("rgbs").requires_grad_(True)

    def render(sigmas, rgbs):
        return composite_torch(sigmas, rgbs, **inputs, early_stop_eps=early_stop_eps)

    if early_stop_eps > 0:
        # The long ray must stop, and no T_i may sit within the finite-difference step of eps (a flipped mask).
        weights = render(sigmas, rgbs)[0].detach()
        start, count = inputs["ray_starts"][2].item(), inputs["ray_counts"][2].item()
        trans = 1.0 - (torch.cumsum(weights[start:start + count], 0) - weights[start:start + count])
        assert (weights[start:start + count] == 0).any()
        assert ((trans - early_stop_eps).abs() > 1e-3).all()
    assert torch.autograd.gradcheck(render, (sigmas, rgbs))


def test_composite_early_stop_drops_exactly_the_samples_behind_transmittance_eps():
    eps = 1e-2
    inputs = packed_rays([30, 30, 5], sigma_scale=4.0, seed=3)
    weights_all, opacity_all, _, _ = composite(**inputs, backend="emulated")
    weights, opacity, _, _ = composite(**inputs, early_stop_eps=eps, backend="emulated")
    for start, count in zip(inputs["ray_starts"].tolist(), inputs["ray_counts"].tolist()):
        ray_all = weights_all[start:start + count]
        trans = 1.0 - (torch.cumsum(ray_all, 0) - ray_all)  # (S,) T_i = 1 - sum_{j<i} w_j
        kept = trans >= eps
        assert torch.equal(weights[start:start + count][~kept], torch.zeros(int((~kept).sum())))
        torch.testing.assert_close(weights[start:start + count][kept], ray_all[kept])
    stopped = opacity < opacity_all
    assert stopped.any(), "the test scene should make at least one ray stop"
    assert (opacity[stopped] > 1.0 - eps).all()  # a ray stops only once it is nearly opaque


def test_composite_weights_sum_to_at_most_one_and_transmittance_never_increases():
    inputs = packed_rays([1, 10, 50, 200], sigma_scale=20.0, seed=5)
    weights, opacity, _, _ = composite(**inputs, backend="emulated")
    assert (weights >= 0).all() and (opacity <= 1.0 + 1e-6).all()
    torch.testing.assert_close(opacity, torch.stack([weights[s:s + c].sum() for s, c in zip(
        inputs["ray_starts"].tolist(), inputs["ray_counts"].tolist())]))
    for start, count in zip(inputs["ray_starts"].tolist(), inputs["ray_counts"].tolist()):
        sigmas = inputs["sigmas"][start:start + count]
        deltas = inputs["t_ends"][start:start + count] - inputs["t_starts"][start:start + count]
        alphas = -torch.expm1(-sigmas * deltas)  # (S,)
        visible = alphas > 1e-3
        trans = weights[start:start + count][visible] / alphas[visible]  # T_i recovered from w_i = T_i alpha_i
        assert (trans <= 1.0 + 1e-6).all()
        assert (trans[1:] <= trans[:-1] * (1 + 1e-5) + 1e-7).all()


def test_composite_quadrature_matches_closed_form_on_a_constant_density_slab():
    # Constant sigma on [near, near + L]: opacity = 1 - exp(-sigma L) for any number of samples (the quadrature
    # is exact for piecewise-constant density), and the expected depth
    #   int_0^L (near + t) sigma exp(-sigma t) dt = near (1 - e^{-sigma L}) + (1 - e^{-sigma L}(1 + sigma L)) / sigma
    # is reached as the midpoint rule converges.
    sigma, length, near = 1.5, 2.0, 2.0
    closed_opacity = 1.0 - math.exp(-sigma * length)
    closed_depth = near * closed_opacity + (1.0 - math.exp(-sigma * length) * (1.0 + sigma * length)) / sigma
    depth_errors = []
    for n_samples in (4, 64, 1024):
        edges = torch.linspace(near, near + length, n_samples + 1, dtype=torch.float64)
        ray = dict(sigmas=torch.full((n_samples,), sigma), rgbs=torch.ones(n_samples, 3),
                   t_starts=edges[:-1].float(), t_ends=edges[1:].float(),
                   ray_starts=torch.zeros(1, dtype=torch.int32), ray_counts=torch.tensor([n_samples], dtype=torch.int32))
        _, opacity, color, depth = composite(**ray, backend="emulated")
        assert opacity.item() == pytest.approx(closed_opacity, abs=2e-6)
        torch.testing.assert_close(color[0], opacity.expand(3))  # white medium: colour = opacity
        depth_errors.append(abs(depth.item() - closed_depth))
    assert depth_errors[0] > depth_errors[1] > depth_errors[2]
    assert depth_errors[-1] < 1e-4


def test_composite_emulated_accepts_unordered_rays_and_leaves_unclaimed_samples_at_zero():
    # Ray ranges need not follow the packing order, and samples no ray claims get weight and gradient 0.
    inputs = packed_rays([4, 6, 3])
    inputs["ray_starts"] = torch.tensor([9, 0, 4], dtype=torch.int32)
    inputs["ray_counts"] = torch.tensor([3, 4, 2], dtype=torch.int32)  # sample 6..8 belong to no ray
    gradients = upstream_gradients(composite_torch(**inputs))
    expected = render_with_grads(inputs, "torch", gradients)
    actual = render_with_grads(inputs, "emulated", gradients)
    assert_all_close(actual, expected, **FORWARD_TOL)
    assert torch.all(actual[0][6:9] == 0) and torch.all(actual[4][6:9] == 0)


def test_composite_rejects_bad_inputs_with_clear_messages():
    inputs = packed_rays([2, 3])
    with pytest.raises(ValueError, match="sigmas must be torch.float32"):
        composite(**{**inputs, "sigmas": inputs["sigmas"].double()}, backend="emulated")
    with pytest.raises(ValueError, match="ray_counts must be torch.int32"):
        composite(**{**inputs, "ray_counts": inputs["ray_counts"].long()}, backend="emulated")
    with pytest.raises(ValueError, match="outside"):
        composite(**{**inputs, "ray_counts": torch.tensor([2, 9], dtype=torch.int32)}, backend="emulated")
    with pytest.raises(ValueError, match="rgbs"):
        composite(**{**inputs, "rgbs": inputs["rgbs"][:, :2].contiguous()}, backend="emulated")
    from kernels.backend import BackendError
    with pytest.raises(BackendError, match="unknown backend"):
        composite(**inputs, backend="triton")


def test_packing_helpers():
    counts = torch.tensor([2, 0, 3, 1], dtype=torch.int32)
    assert starts_from_counts(counts).tolist() == [0, 2, 2, 5]
    assert starts_from_counts(counts).dtype == torch.int32
    indices = ray_indices_from_counts(counts)
    assert indices.tolist() == [0, 0, 2, 2, 2, 3] and indices.dtype == torch.int64
    assert starts_from_counts(torch.zeros(0, dtype=torch.int32)).shape == (0,)
    assert ray_indices_from_counts(torch.zeros(0, dtype=torch.int32)).shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("early_stop_eps", [0.0, 1e-2])
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_composite_cuda_matches_twin(case, early_stop_eps):
    inputs = {k: v.cuda() for k, v in packed_rays(**EDGE_CASES[case]).items()}
    twin_outputs = composite_torch(**inputs, early_stop_eps=early_stop_eps)
    gradients = [g.cuda() for g in upstream_gradients([o.cpu() for o in twin_outputs])]
    expected = render_with_grads(inputs, "torch", gradients, early_stop_eps)
    actual = render_with_grads(inputs, "cuda", gradients, early_stop_eps)
    for a in actual:
        assert a.is_cuda
    assert_all_close(actual, expected, **GPU_TOL)
