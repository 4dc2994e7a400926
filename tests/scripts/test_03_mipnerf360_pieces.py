"""03_mipnerf360.py, piece by piece: contraction, Gaussians, s-space, resampling, losses, schedule (fast)."""
import math

import pytest
import torch


@pytest.fixture(scope="module")
def m():
    import importlib

    return importlib.import_module("03_mipnerf360")


def _random_points(n, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64) * scale


# --- contraction (Eq. 10) ---------------------------------------------------------------------------------------
def test_contraction_is_the_identity_inside_the_unit_ball(m):
    x = _random_points(2000, 0.4)
    x = x[x.norm(dim=-1) <= 1]
    assert len(x) > 1000
    torch.testing.assert_close(m.contract(x), x, rtol=0, atol=0)


def test_contraction_maps_all_of_space_inside_radius_2(m):
    x = torch.cat([_random_points(5000, 10.0), _random_points(5000, 1e6, seed=1), _random_points(100, 1e30, seed=2)])
    z = m.contract(x)
    assert torch.isfinite(z).all()
    assert (z.norm(dim=-1) <= 2 + 1e-12).all()  # (2 - 1/|x| rounds to 2 for |x| = 1e30)
    assert (z[:10000].norm(dim=-1) < 2).all()  # strictly inside while 1/|x| is above float64 rounding
    # |contract(x)| = 2 - 1/|x| outside: the radius grows monotonically with |x| and the direction is kept.
    outside = x.norm(dim=-1) > 1
    torch.testing.assert_close(z[outside].norm(dim=-1), 2 - 1 / x[outside].norm(dim=-1))
    torch.testing.assert_close(torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(x, dim=-1))


def test_inverse_contraction_round_trips(m):
    x = torch.cat([_random_points(3000, 0.5), _random_points(3000, 5.0, seed=1), _random_points(300, 100.0, seed=2)])
    torch.testing.assert_close(m.inv_contract(m.contract(x)), x, rtol=1e-9, atol=1e-12)


def test_contraction_gradient_is_finite_at_the_origin(m):
    x = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    m.contract(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_analytic_jacobian_matches_autograd(m):
    x = torch.cat([_random_points(20, 0.3), _random_points(40, 4.0, seed=3)])
    analytic = m.contract_jacobian(x)  # (N, 3, 3)
    for i in range(len(x)):
        numeric = torch.autograd.functional.jacobian(lambda p: m.contract(p[None])[0], x[i])
        torch.testing.assert_close(analytic[i], numeric, rtol=1e-10, atol=1e-12)


def test_contracted_gaussian_covariance_is_the_linearised_covariance_of_samples(m):
    # A small Gaussian far out: the covariance of contracted samples approaches J Sigma J^T.
    mean = torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64)
    A = torch.tensor([[0.02, 0.0, 0.0], [0.01, 0.015, 0.0], [0.0, 0.005, 0.01]], dtype=torch.float64)
    cov = A @ A.T
    samples = mean + torch.randn(200_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ A.T
    new_mean, new_cov = m.contract_gaussian(mean, cov)
    torch.testing.assert_close(new_mean, m.contract(samples).mean(0), rtol=0, atol=2e-4)
    torch.testing.assert_close(new_cov, torch.cov(m.contract(samples).T), rtol=0, atol=2e-6)


# --- conical frustums and IPE ---------------------------------------------------------------------------------------
def test_frustum_gaussian_matches_its_closed_form_moments(m):
    # mip-NeRF's unstable closed forms: E[t] = 3 (t1^4 - t0^4) / (4 (t1^3 - t0^3)), E[t^2] = 3 (t1^5 - t0^5) / (5 (t1^3 - t0^3)),
    # and the radial variance r^2 (3/20) (t1^5 - t0^5) / (t1^3 - t0^3) per axis orthogonal to d.
    d = torch.tensor([[0.3, -0.2, -1.0]], dtype=torch.float64)
    t0, t1 = torch.tensor([[1.0, 2.5]], dtype=torch.float64), torch.tensor([[1.7, 4.0]], dtype=torch.float64)
    r = torch.tensor([0.01], dtype=torch.float64)
    mean, cov = m.conical_frustum_to_gaussian(d, t0, t1, r)
    e_t = 3 * (t1**4 - t0**4) / (4 * (t1**3 - t0**3))
    e_t2 = 3 * (t1**5 - t0**5) / (5 * (t1**3 - t0**3))
    r_var = r**2 * 3 / 20 * (t1**5 - t0**5) / (t1**3 - t0**3)
    torch.testing.assert_close(mean, e_t[..., None] * d[:, None, :])
    d_unit = d[0] / d[0].norm()
    along = torch.einsum("i,rsij,j->rs", d[0], cov, d[0]) / (d[0] @ d[0])  # variance along d: t_var |d|^2
    torch.testing.assert_close(along, (e_t2 - e_t**2) * (d[0] @ d[0]))
    ortho = torch.linalg.cross(d_unit, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    ortho = ortho / ortho.norm()
    torch.testing.assert_close(torch.einsum("i,rsij,j->rs", ortho, cov, ortho), r_var)


def test_ipe_with_zero_variance_is_plain_positional_encoding_and_shrinks_with_variance(m):
    x = _random_points(50, 1.0)
    encoded = m.integrated_pos_enc(x, torch.zeros_like(x), 6)
    scales = 2.0 ** torch.arange(6, dtype=torch.float64)
    y = (x[:, None, :] * scales[:, None]).flatten(1)
    torch.testing.assert_close(encoded, torch.cat([torch.sin(y), torch.cos(y)], -1))
    blurred = m.integrated_pos_enc(x, torch.full_like(x, 0.5), 6)
    assert (blurred.abs() <= encoded.abs() + 1e-12).all()
    assert blurred[:, -3:].abs().max() < 1e-6  # the finest frequency is averaged away


# --- s-space (Eq. 11) ---------------------------------------------------------------------------------------------
def test_s_space_round_trips_and_spends_half_the_samples_within_twice_the_near_plane(m):
    near, far = 0.2, 1e6
    t = torch.tensor([0.2, 0.3, 1.0, 10.0, 1e3], dtype=torch.float64)
    torch.testing.assert_close(m.s_to_t(m.t_to_s(t, near, far), near, far), t)
    assert m.t_to_s(torch.tensor(near), near, far) == 0 and abs(float(m.t_to_s(torch.tensor(far), near, far)) - 1) < 1e-12
    # g(t) = 1/t: s = 0.5 sits at t ~= 2 near.
    assert abs(float(m.s_to_t(torch.tensor(0.5, dtype=torch.float64), near, far)) - 2 * near) < 1e-6


# --- resampling ---------------------------------------------------------------------------------------------------
def test_anneal_power_values(m):
    values = [m.anneal_power(x, 10.0) for x in (0.0, 0.01, 0.1, 0.5, 1.0)]
    assert values == pytest.approx([0.0, 0.0917, 0.5263, 0.9091, 1.0], abs=1e-4)


def test_dilation_widens_the_support_and_keeps_weights_normalised(m):
    sdist = torch.linspace(0, 1, 11, dtype=torch.float64)[None]
    weights = torch.zeros(1, 10, dtype=torch.float64)
    weights[0, 4] = 1.0  # all weight in [0.4, 0.5]
    s_new, w_new = m.max_dilate_weights(sdist, weights, 0.05)
    assert s_new.shape == (1, 3 * 10 - 1) and w_new.shape == (1, 3 * 10 - 2)
    torch.testing.assert_close(w_new.sum(-1), torch.ones(1, dtype=torch.float64))
    support = (w_new[0] > 0).nonzero()[:, 0]
    lo, hi = float(s_new[0, support.min()]), float(s_new[0, support.max() + 1])
    assert lo == pytest.approx(0.35) and hi == pytest.approx(0.55)
    # the density is constant over the widened support: weight proportional to width
    widths = (s_new[0, 1:] - s_new[0, :-1])[support]
    torch.testing.assert_close(w_new[0, support] / widths, torch.full_like(widths, 1 / 0.2))


def test_sample_intervals_puts_all_samples_where_the_weight_is(m):
    sdist = torch.linspace(0, 1, 11)[None].repeat(4, 1)
    logits = torch.full((4, 10), -math.inf)
    logits[:, 7] = 0.0  # all mass in [0.7, 0.8]
    for perturb in (False, True):
        ends = m.sample_intervals(sdist, logits, 16, perturb, torch.Generator().manual_seed(0))
        assert ends.shape == (4, 17)
        assert (ends[:, 1:] >= ends[:, :-1]).all()
        centres = (ends[:, 1:] + ends[:, :-1]) / 2
        assert (centres >= 0.7 - 1e-6).all() and (centres <= 0.8 + 1e-6).all()


# --- losses -------------------------------------------------------------------------------------------------------
def _distortion_quadratic(s, w):
    """Eq. 15 as written: sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (s_{i+1} - s_i)."""
    mid = (s[:, 1:] + s[:, :-1]) / 2
    inter = (w[:, :, None] * w[:, None, :] * (mid[:, :, None] - mid[:, None, :]).abs()).sum((1, 2))
    return inter + (w**2 * (s[:, 1:] - s[:, :-1])).sum(-1) / 3


def test_distortion_loss_linear_form_equals_the_quadratic_definition(m):
    g = torch.Generator().manual_seed(0)
    s = torch.sort(torch.rand(64, 33, generator=g, dtype=torch.float64), -1).values
    w = torch.softmax(torch.randn(64, 32, generator=g, dtype=torch.float64) * 3, -1)
    torch.testing.assert_close(m.distortion_loss(s, w), _distortion_quadratic(s, w), rtol=1e-10, atol=1e-14)


def test_distortion_loss_of_a_delta_and_of_spread_weights(m):
    s = torch.linspace(0, 1, 11, dtype=torch.float64)[None]
    delta = torch.zeros(1, 10, dtype=torch.float64)
    delta[0, 3] = 1.0
    assert float(m.distortion_loss(s, delta)) == pytest.approx(0.1 / 3)  # w^2 delta / 3
    spread = torch.zeros(1, 10, dtype=torch.float64)
    spread[0, 3] = spread[0, 7] = 0.5  # a floater: the same mass split in two blobs
    assert float(m.distortion_loss(s, spread)) > float(m.distortion_loss(s, delta))


def test_interlevel_loss_is_zero_when_the_proposal_envelops_the_nerf_weights(m):
    g = torch.Generator().manual_seed(0)
    s_prop = torch.linspace(0, 1, 9, dtype=torch.float64)[None].repeat(8, 1)
    w_prop = torch.softmax(torch.randn(8, 8, generator=g, dtype=torch.float64), -1)
    # NeRF intervals refine the proposal's: each proposal interval split in 4, its weight shared out unevenly.
    s_nerf = torch.linspace(0, 1, 33, dtype=torch.float64)[None].repeat(8, 1)
    share = torch.softmax(torch.randn(8, 8, 4, generator=g, dtype=torch.float64), -1)
    w_nerf = (w_prop[..., None] * share).reshape(8, 32)
    assert float(m.interlevel_loss(s_nerf, w_nerf, s_prop, w_prop)) == 0.0
    # A proposal that misses the mass in one interval is penalised.
    w_bad = w_prop.clone()
    w_bad[:, 3] = 0
    assert float(m.interlevel_loss(s_nerf, w_nerf, s_prop, w_bad)) > 1e-4


def test_interlevel_loss_trains_only_the_proposal(m):
    s = torch.linspace(0, 1, 9)[None]
    w_nerf = torch.rand(1, 8, requires_grad=True)
    w_prop = torch.rand(1, 8, requires_grad=True)
    (m.interlevel_loss(s, w_nerf * 4, s, w_prop)).backward()
    assert w_nerf.grad is None and w_prop.grad is not None and w_prop.grad.abs().sum() > 0


def test_weights_sum_to_one_with_an_opaque_last_interval(m):
    density = torch.rand(16, 8) * 0.01
    tdist = torch.linspace(0.2, 1e6, 9)[None].repeat(16, 1)
    w = m.alpha_weights(density, tdist, torch.randn(16, 3))
    torch.testing.assert_close(w.sum(-1), torch.ones(16))


# --- schedule -----------------------------------------------------------------------------------------------------
def test_learning_rate_schedule_reproduces_multinerf_values(m):
    cfg = m.Config()
    got = [m.learning_rate(cfg, step) for step in (0, 256, 512, 125_000, 250_000)]
    assert got == pytest.approx([2.0e-5, 1.413e-3, 1.981e-3, 2.0e-4, 2.0e-5], rel=1e-3)


def test_linear_scaling_rule(m):
    cfg = m.apply_linear_scaling(m.Config(batch_rays=4096))
    assert (cfg.iters, cfg.lr_delay_steps) == (1_000_000, 2048)
    assert cfg.lr == pytest.approx(5e-4) and cfg.lr_final == pytest.approx(5e-6)


# --- the whole renderer ---------------------------------------------------------------------------------------------
def test_render_rays_shapes_and_stop_gradients(m):
    from common.cli import parse_config

    cfg = parse_config(m.Config, ["--quick"], presets=m.PRESETS)
    prop = m.MipMLP(cfg.prop_depth, cfg.prop_width, cfg, with_rgb=False)
    nerf = m.MipMLP(cfg.nerf_depth, cfg.nerf_width, cfg, with_rgb=True)
    g = torch.Generator().manual_seed(0)
    rays_o = torch.randn(32, 3, generator=g) * 0.1
    rays_d = torch.randn(32, 3, generator=g)
    out = m.render_rays(prop, nerf, rays_o, rays_d, 0.002, cfg, 0.3, perturb=True, generator=g)
    assert out["rgb"].shape == (32, 3) and out["depth"].shape == (32,)
    assert [s.shape[-1] - 1 for s, _ in out["levels"]] == [*cfg.n_prop_samples, cfg.n_nerf_samples]
    for s, w in out["levels"]:
        assert (s[:, 1:] >= s[:, :-1]).all() and not s.requires_grad
        torch.testing.assert_close(w.sum(-1), torch.ones(32))
    # The data loss reaches the NeRF MLP only; the interlevel loss the proposal MLP only.
    m.charbonnier(out["rgb"], torch.rand(32, 3), 1e-3).backward(retain_graph=True)
    assert all(p.grad is None for p in prop.parameters())
    nerf.zero_grad()
    s_nerf, w_nerf = out["levels"][-1]
    m.interlevel_loss(s_nerf, w_nerf, *out["levels"][0]).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in nerf.parameters())
    assert sum(p.grad.abs().sum() for p in prop.parameters() if p.grad is not None) > 0


def test_losses_on_the_emulated_distortion_kernel_equal_the_readable_ones(m):
    g = torch.Generator().manual_seed(3)
    s = torch.sort(torch.rand(16, 17, generator=g), -1).values
    w = torch.softmax(torch.randn(16, 16, generator=g), -1)
    out = dict(rgb=torch.rand(16, 3, generator=g), levels=[(s, w), (s, w)])
    cfg = m.Config()
    target = torch.rand(16, 3, generator=g)
    readable, kernel = m.compute_losses(out, target, cfg), m.compute_losses(out, target, cfg, "emulated")
    torch.testing.assert_close(kernel["distortion"], readable["distortion"], rtol=1e-5, atol=1e-7)


# --- resampling from the proposal histogram on kernels/sampling.cu ------------------------------------------------
@pytest.mark.parametrize("perturb", [True, False])
def test_resampling_on_the_emulated_kernel_equals_the_readable_interp(m, perturb):
    """sample_intervals inverts the histogram's CDF with `interp` (torch) or with kernels/sampling.cu (the same .cu
    that runs through CuPy on a GPU, here compiled for the CPU): the interval ends must agree, including rays whose
    histogram has empty (zero-weight, logit -inf) and zero-width intervals."""
    g = torch.Generator().manual_seed(5)
    R, S, n = 64, 24, 17
    sdist = torch.sort(torch.rand(R, S + 1, generator=g), -1).values
    sdist[:, 0], sdist[:, -1] = 0.0, 1.0
    sdist[:4, 5] = sdist[:4, 4]  # zero-width intervals on some rays
    logits = torch.randn(R, S, generator=g) * 3
    logits[::3, 2:9] = -math.inf  # empty stretches
    readable = m.sample_intervals(sdist, logits, n, perturb, torch.Generator().manual_seed(1))
    kernel = m.sample_intervals(sdist, logits, n, perturb, torch.Generator().manual_seed(1), backend="emulated")
    assert readable.shape == kernel.shape == (R, n + 1)
    torch.testing.assert_close(kernel, readable, rtol=0, atol=2e-5)
    # Not trivially equal: the ends follow the histogram, so a shuffled histogram gives other ends.
    shuffled = m.sample_intervals(sdist, logits.flip(-1), n, perturb, torch.Generator().manual_seed(1), backend="emulated")
    assert (shuffled - readable).abs().max() > 0.05


def test_render_rays_on_the_emulated_kernels_equals_torch(m):
    from common.cli import parse_config

    cfg = parse_config(m.Config, ["--quick"], presets=m.PRESETS)
    torch.manual_seed(0)
    prop = m.MipMLP(cfg.prop_depth, cfg.prop_width, cfg, with_rgb=False)
    nerf = m.MipMLP(cfg.nerf_depth, cfg.nerf_width, cfg, with_rgb=True)
    g = torch.Generator().manual_seed(0)
    rays_o, rays_d = torch.randn(48, 3, generator=g) * 0.1, torch.randn(48, 3, generator=g)
    outs = [m.render_rays(prop, nerf, rays_o, rays_d, 0.002, cfg, 0.7, perturb=True,
                          generator=torch.Generator().manual_seed(2), backend=backend)
            for backend in ("torch", "emulated")]
    for (s_torch, w_torch), (s_kernel, w_kernel) in zip(outs[0]["levels"], outs[1]["levels"]):
        torch.testing.assert_close(s_kernel, s_torch, rtol=0, atol=5e-5)
    torch.testing.assert_close(outs[1]["rgb"], outs[0]["rgb"], rtol=0, atol=1e-4)


# --- the two recipes: how rays meet an object-centred scene and an unbounded one -----------------------------------
def test_recipe_auto_gives_white_background_scenes_the_blender_recipe(m):
    from types import SimpleNamespace

    from common.cli import parse_config

    cfg = parse_config(m.Config, [], presets=m.PRESETS)
    blender = m.resolve_recipe(cfg, SimpleNamespace(white_background=True, near=2.0, far=6.0))
    assert (blender.recipe, blender.near, blender.far, blender.data_loss) == ("blender", 2.0, 6.0, "mse")
    unbounded = m.resolve_recipe(cfg, SimpleNamespace(white_background=False, near=0.5, far=12.0))
    assert (unbounded.recipe, unbounded.near, unbounded.far, unbounded.data_loss) == ("360", 0.2, 1e6, "charb")
    # What the user sets wins over the recipe's.
    forced = m.resolve_recipe(parse_config(m.Config, ["--recipe", "360", "--far", "50", "--data_loss", "mse"]),
                              SimpleNamespace(white_background=True, near=2.0, far=6.0))
    assert (forced.recipe, forced.near, forced.far, forced.data_loss) == ("360", 0.2, 50.0, "mse")
    with pytest.raises(Exception, match="near plane must be closer"):
        m.resolve_recipe(parse_config(m.Config, ["--near", "7"]), SimpleNamespace(white_background=True, near=2.0, far=6.0))


def test_blender_recipe_composites_the_background_and_samples_linearly_in_t(m):
    from types import SimpleNamespace

    from common.cli import parse_config

    cfg = m.resolve_recipe(parse_config(m.Config, ["--quick"], presets=m.PRESETS),
                           SimpleNamespace(white_background=True, near=2.0, far=6.0))
    torch.manual_seed(0)
    prop = m.MipMLP(cfg.prop_depth, cfg.prop_width, cfg, with_rgb=False)
    nerf = m.MipMLP(cfg.nerf_depth, cfg.nerf_width, cfg, with_rgb=True)
    # Empty space: a density of exactly 0 everywhere (the Blender recipe's white around the object). Every
    # ray's weights are 0, the colour is the background, and resampling from an all-zero histogram must spread
    # the samples evenly, not produce NaN (a softmax of only -inf).
    for net in (prop, nerf):
        torch.nn.init.zeros_(net.density_head.weight)
        torch.nn.init.constant_(net.density_head.bias, -200.0)
    g = torch.Generator().manual_seed(0)
    rays_o = torch.randn(16, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 4.0])
    rays_d = torch.nn.functional.normalize(torch.randn(16, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    out = m.render_rays(prop, nerf, rays_o, rays_d, 0.002, cfg, 1.0, perturb=True, generator=g, background=0.25)
    assert torch.isfinite(out["rgb"]).all() and torch.isfinite(out["depth"]).all()
    torch.testing.assert_close(out["rgb"], torch.full((16, 3), 0.25))
    torch.testing.assert_close(out["opacity"], torch.zeros(16))
    s, _ = out["levels"][-1]
    assert (s[:, 1:] - s[:, :-1]).max() < 3.0 / cfg.n_nerf_samples  # spread over the ray, not piled up
    # s is linear in t under the Blender recipe: s = 0.5 is halfway between near and far.
    assert float(m.s_to_t(torch.tensor(0.5), 2.0, 6.0, disparity=False)) == pytest.approx(4.0)
    assert float(m.t_to_s(torch.tensor(3.0), 2.0, 6.0, disparity=False)) == pytest.approx(0.25)
