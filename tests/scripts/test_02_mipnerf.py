"""02_mipnerf.py: the method's pieces against closed forms, and the script end to end on the built-in scene."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels.sampling as sampling

NO_VIDEO = ["--video_frames", "0"]


@pytest.fixture(scope="module")
def mip(request):
    import importlib

    return importlib.import_module("02_mipnerf")


# ---------------------------------------------------------------------------------------------------------
# Conical frustums (Eq. 7, Appendix A) and their lift to world space
# ---------------------------------------------------------------------------------------------------------
def closed_form_frustum(t0, t1, r):
    """The frustum's moments straight from their definition (the volume of a cone grows as t^2): the forms the
    stable Eq. 7 rewrites. Exact in float64 for well-separated t0 < t1."""
    mean = 3 * (t1**4 - t0**4) / (4 * (t1**3 - t0**3))
    second = 3 * (t1**5 - t0**5) / (5 * (t1**3 - t0**3))
    r_var = r**2 * 3 * (t1**5 - t0**5) / (20 * (t1**3 - t0**3))
    return mean, second - mean**2, r_var


def test_stable_frustum_moments_equal_the_closed_form_in_float64(mip):
    t0 = torch.tensor([[0.5, 2.0, 2.0, 3.7]], dtype=torch.float64)
    t1 = torch.tensor([[1.0, 2.5, 6.0, 3.9]], dtype=torch.float64)
    r = torch.tensor([0.03], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)  # the ray along z: the diagonal separates t from r
    mean, cov = mip.conical_frustum_to_gaussian(d, t0, t1, r)
    want_mean, want_t_var, want_r_var = closed_form_frustum(t0, t1, 0.03)
    torch.testing.assert_close(mean[..., 2], want_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(cov[..., 2], want_t_var, rtol=1e-9, atol=0)
    torch.testing.assert_close(cov[..., 0], want_r_var, rtol=1e-12, atol=0)
    torch.testing.assert_close(cov[..., 1], want_r_var, rtol=1e-12, atol=0)


def test_stable_form_stays_accurate_in_float32_where_the_closed_form_cancels(mip):
    # A short frustum far away: t1^3 - t0^3 loses most digits in float32; Eq. 7 does not.
    t0, t1 = torch.tensor([[4.0]]), torch.tensor([[4.002]])
    d, r = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([0.01])
    _, want_t_var, _ = closed_form_frustum(t0.double(), t1.double(), 0.01)
    _, cov = mip.conical_frustum_to_gaussian(d, t0, t1, r)
    _, naive_t_var, _ = closed_form_frustum(t0, t1, 0.01)
    stable_error = abs(float(cov[0, 0, 2]) - float(want_t_var)) / float(want_t_var)
    naive_error = abs(float(naive_t_var) - float(want_t_var)) / float(want_t_var)
    assert stable_error < 1e-3 < naive_error


def test_lifted_diagonal_is_the_diagonal_of_the_full_covariance(mip):
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(5, 3, generator=gen, dtype=torch.float64)  # unnormalised on purpose
    t_mean = torch.rand(5, 2, generator=gen, dtype=torch.float64) + 2
    t_var, r_var = torch.rand(5, 2, dtype=torch.float64) * 0.1, torch.rand(5, 2, dtype=torch.float64) * 0.01
    mean, cov_diag = mip.lift_gaussian(d, t_mean, t_var, r_var)
    outer = d[:, :, None] * d[:, None, :]  # (R, 3, 3)
    full = (t_var[..., None, None] * outer[:, None]
            + r_var[..., None, None] * (torch.eye(3, dtype=torch.float64) - outer / (d**2).sum(-1)[:, None, None])[:, None])
    torch.testing.assert_close(cov_diag, torch.diagonal(full, dim1=-2, dim2=-1))
    torch.testing.assert_close(mean, d[:, None, :] * t_mean[..., None])


def test_cone_radius_is_the_pixel_width_times_2_over_sqrt12(mip):
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    c2w = torch.eye(4)
    _, _, viewdirs, radii = mip.cast_pixel_rays(K, c2w, torch.tensor([0.5, 70.5]), torch.tensor([10.5, 99.5]), None)
    torch.testing.assert_close(radii, torch.full((2,), 2 / math.sqrt(12) / 100.0))
    torch.testing.assert_close(viewdirs.norm(dim=-1), torch.ones(2))


# ---------------------------------------------------------------------------------------------------------
# Integrated positional encoding (Eq. 14)
# ---------------------------------------------------------------------------------------------------------
def test_ipe_with_zero_variance_is_the_positional_encoding(mip):
    x = torch.randn(7, 3, dtype=torch.float64) * 3
    ipe = mip.integrated_pos_enc(x, torch.zeros_like(x), 0, 16)
    pe = mip.positional_encoding(x, 0, 16, append_identity=False)
    assert ipe.shape == (7, 96)
    torch.testing.assert_close(ipe, pe)
    scales = 2.0 ** torch.arange(16, dtype=torch.float64)
    torch.testing.assert_close(pe[:, :48], torch.sin((x[:, None, :] * scales[:, None]).flatten(1)))
    torch.testing.assert_close(pe[:, 48:], torch.cos((x[:, None, :] * scales[:, None]).flatten(1)))


def test_ipe_is_the_expected_encoding_under_the_gaussian(mip):
    # Monte Carlo: E[sin(2^l x)], E[cos(2^l x)] for x ~ N(mu, diag(var)), against the closed form of Eq. 14.
    gen = torch.Generator().manual_seed(1)
    mu = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    var = torch.tensor([[0.01, 0.04, 0.0025]], dtype=torch.float64)
    samples = mu + var.sqrt() * torch.randn(400_000, 3, generator=gen, dtype=torch.float64)
    monte_carlo = mip.positional_encoding(samples, 0, 6, append_identity=False).mean(0)
    ipe = mip.integrated_pos_enc(mu, var, 0, 6)[0]
    assert float((monte_carlo - ipe).abs().max()) < 5e-3  # the MC standard error is below 1/sqrt(4e5) ~ 1.6e-3
    # High frequencies fade: the last degree's features are ~0 for the widest coordinate (4^5 * 0.04 / 2 = 20).
    assert float(ipe[[16, 34]].abs().max()) < 1e-8


# ---------------------------------------------------------------------------------------------------------
# Learning rate, blur, stratified resampling
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step,expected", [(0, 5.0e-6), (1250, 3.530e-4), (2500, 4.943e-4), (500_000, 5.0e-5),
                                           (1_000_000, 5.0e-6)])
def test_learning_rate_matches_the_tabulated_paper_schedule(mip, step, expected):
    cfg = mip.Config()  # the paper's values: 5e-4 -> 5e-6 over 1M steps, 2500-step warm-up from 0.01
    assert mip.learning_rate(cfg, step) == pytest.approx(expected, rel=1e-3)


def test_blur_weights_by_hand(mip):
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.4]])
    # padded [0, 0, 1, 0, 0, .4, .4] -> 2-tap max [0, 1, 1, 0, .4, .4] -> 2-tap mean [.5, 1, .5, .2, .4]
    expected = torch.tensor([[0.5, 1.0, 0.5, 0.2, 0.4]]) + 0.01
    torch.testing.assert_close(mip.blur_weights(weights, 0.01), expected)


def stratum_counts(n_samples, draw_u=None):
    """Resample n posts from uniform weights on [0, 1]: then t = u, and the count of samples per stratum
    [k/n, (k+1)/n) shows how u was drawn."""
    n_rays = 64
    bins = torch.linspace(0, 1, 9).expand(n_rays, 9).contiguous()
    weights = torch.ones(n_rays, 8)
    gen = torch.Generator().manual_seed(0)
    t = sampling.sample_pdf(bins, weights, n_samples, stratified=True, generator=gen)  # (R, n)
    strata = (t * n_samples).floor().clamp(max=n_samples - 1).long()
    return torch.stack([torch.bincount(row, minlength=n_samples) for row in strata])  # (R, n)


def test_stratified_resampling_puts_one_sample_in_each_stratum():
    counts = stratum_counts(33)
    assert int(counts.max()) == 1 and int(counts.min()) == 1


def test_the_u_plus_u_bug_of_a_public_port_would_be_caught(monkeypatch):
    # bebeal/mipnerf-pytorch drew u = u + u + jitter: twice the strata, half the samples clamped to the far end.
    real_draw = sampling.draw_u

    def doubled(n_rays, n_samples, *, stratified=False, generator=None, device="cpu", dtype=torch.float32):
        strata = torch.arange(n_samples, dtype=dtype, device=device) / n_samples
        jitter = torch.rand(n_rays, n_samples, generator=generator, dtype=dtype) / n_samples
        return (strata + strata + jitter).clamp(max=1.0)

    monkeypatch.setattr(sampling, "draw_u", doubled)
    assert int(stratum_counts(33).max()) > 1  # the check of the test above fails on the bug
    monkeypatch.setattr(sampling, "draw_u", real_draw)
    assert int(stratum_counts(33).max()) == 1


def test_fine_posts_follow_the_blurred_coarse_weights(mip):
    # All coarse weight in one interval: after the blur the fine posts crowd into it and its two neighbours.
    t_vals = torch.linspace(2, 6, 33).expand(4, 33).contiguous()
    weights = torch.zeros(4, 32)
    weights[:, 10] = 1.0
    blurred = mip.blur_weights(weights, 0.01)
    fine = sampling.sample_pdf(t_vals, blurred, 33, stratified=True, generator=torch.Generator().manual_seed(0))
    inside = ((fine >= t_vals[:, 9:10]) & (fine <= t_vals[:, 12:13])).float().mean()
    assert float(inside) > 0.75  # 3 intervals of 32 hold 2.03 / 2.32 of the pdf mass
    assert torch.all(fine[:, 1:] >= fine[:, :-1])


# ---------------------------------------------------------------------------------------------------------
# The script end to end
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(mip, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("mip_quick")
    metrics = mip.main(["--quick", "--outdir", str(outdir), "--device", "cpu", "--backend", "torch",
                        "--export_mesh", "--mesh_resolution", "64", *NO_VIDEO])
    return outdir, metrics


@pytest.mark.slow
def test_mipnerf_quick_preset_reaches_24db_on_builtin_test_views(quick_run):
    outdir, metrics = quick_run
    assert metrics["mean_psnr"] >= 24.0, metrics
    saved = json.loads((outdir / "test" / "metrics.json").read_text())
    assert abs(saved["mean_psnr"] - metrics["mean_psnr"]) < 1e-9
    assert len(saved["views"]) == 4 and all(view["ssim"] > 0.5 for view in saved["views"])
    for name in ("config.json", "log.csv", "psnr.png", "test/rgb_000.png", "test/gt_000.png", "test/depth_000.png"):
        assert (outdir / name).is_file(), name


@pytest.mark.slow
def test_mipnerf_mesh_of_the_builtin_scene_lies_on_its_true_surface(quick_run):
    from common.data import builtin_scene
    from common.mesh import read_ply

    outdir, _ = quick_run
    vertices, faces, _ = read_ply(outdir / "mesh.ply")
    assert len(faces) > 1000
    voxel = 3.0 / 63  # the Blender box [-1.5, 1.5]^3 at 64 nodes per axis; the quick preset's level is 5
    distance = builtin_scene.sdf(torch.from_numpy(vertices)).abs()
    assert float(distance.median()) < voxel and float(torch.quantile(distance, 0.9)) < 2 * voxel


def test_dense_volume_render_equals_the_packed_composite_kernel(mip):
    from kernels import starts_from_counts
    from kernels.compositing import composite

    gen = torch.Generator().manual_seed(0)
    t_vals = torch.sort(torch.rand(5, 9, generator=gen) * 4 + 2, dim=-1).values  # (R, S+1)
    sigma, rgb = torch.rand(5, 8, generator=gen) * 3, torch.rand(5, 8, 3, generator=gen)
    norms = 1 + torch.rand(5, generator=gen)
    dense = mip.volume_render(sigma, rgb, t_vals, norms)
    counts = torch.full((5,), 8, dtype=torch.int32)
    weights, opacity, color, depth = composite((sigma * norms[:, None]).reshape(-1), rgb.reshape(-1, 3),
                                               t_vals[:, :-1].reshape(-1).contiguous(),
                                               t_vals[:, 1:].reshape(-1).contiguous(), starts_from_counts(counts),
                                               counts, backend="torch")
    torch.testing.assert_close(dense["weights"], weights.view(5, 8))
    torch.testing.assert_close(dense["color"], color)
    torch.testing.assert_close(dense["depth"], depth)


def _train_args(outdir, iters):
    # 25 x 25 images (--downscale 4) keep the final test render cheap; the training steps are the real ones.
    # A few steps learn less than a constant image would show: warn, do not stop (--no-dead_model_check).
    return ["--quick", "--iters", str(iters), "--ckpt_every", "3", "--batch_rays", "128", "--outdir", str(outdir),
            "--device", "cpu", "--backend", "torch", "--n_test_views", "1", "--downscale", "4",
            "--no-dead_model_check", *NO_VIDEO]


def test_mipnerf_ctrl_c_then_resume_matches_an_uninterrupted_run(mip, tmp_path, single_thread):
    import os
    import signal

    mip.main(_train_args(tmp_path / "straight", 6))
    straight = torch.load(tmp_path / "straight" / "ckpt_000006.pt", weights_only=False)

    real_sample, calls = mip.sample_pixels, []

    def sample_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while step 4 is being computed
        return real_sample(*args, **kwargs)

    mip.sample_pixels = sample_then_ctrl_c
    try:
        with pytest.raises(SystemExit) as exit_info:
            mip.main(_train_args(tmp_path / "cut", 6))
    finally:
        mip.sample_pixels = real_sample
    assert exit_info.value.code == 130 and (tmp_path / "cut" / "ckpt_000004.pt").exists()
    mip.main(_train_args(tmp_path / "cut", 6) + ["--resume"])
    resumed = torch.load(tmp_path / "cut" / "ckpt_000006.pt", weights_only=False)
    for name, tensor in straight["mlp"].items():
        torch.testing.assert_close(resumed["mlp"][name], tensor, rtol=0, atol=0, msg=name)


def test_export_mesh_on_a_forward_facing_scene_is_a_one_line_error(mip, tmp_path, capsys):
    from common.cli import run_main

    fern = Path(__file__).resolve().parents[3] / "shared" / "data" / "nerf_llff_data" / "fern"
    if not (fern / "poses_bounds.npy").exists():
        pytest.skip("fern not found")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: mip.main(["--scene", str(fern), "--llff_factor", "8", "--export_mesh",
                                   "--outdir", str(tmp_path / "run")]))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "--export_mesh" in message and "\n" not in message
