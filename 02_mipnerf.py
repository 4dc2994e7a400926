"""02 - mip-NeRF: A Multiscale Representation for Anti-Aliasing Neural Radiance Fields.

Barron, Mildenhall, Tancik, Hedman, Martin-Brualla, Srinivasan. ICCV 2021. https://arxiv.org/abs/2103.13415

The second lesson. NeRF (01_nerf.py) casts one infinitely thin ray per pixel and encodes single points, so a
pixel's colour depends on where along its footprint the samples happen to fall: trained at one resolution, it
aliases (jaggies, shimmer) when rendered smaller, and blurs when rendered larger. mip-NeRF casts a *cone* per pixel
and reasons about the whole volume each sample stands for:
  * each interval [t_i, t_{i+1}] of a cone is a conical frustum, approximated by a Gaussian whose mean and
    variances have closed forms (Sec. 3.1, Eq. 7 and Appendix A), lifted to world space with a diagonal covariance;
  * the integrated positional encoding (IPE, Eq. 14) is the expected value of NeRF's encoding under that Gaussian:
    frequencies whose period is smaller than the frustum fade to 0, so the MLP sees its input at the scale of the
    pixel, and one model renders well at every resolution;
  * one MLP is queried at both levels (NeRF trains two), with 128 + 128 samples; the fine samples are drawn from
    the coarse weights after a 2-tap max, a 2-tap blur and 0.01 added to every weight (Sec. 3.2), and the fine
    level uses only those (it does not merge the coarse samples in).
Data: Blender scenes as in 01; their multiscale version (`--multiscale`: every image at 1, 1/2, 1/4, 1/8 resolution,
common/data/multiscale.py), and LLFF forward-facing captures rendered in NDC with cylinders instead of cones
(common/data/llff.py). Shared plumbing lives in common/, compositing and inverse-CDF sampling in kernels/.

Glossary of shapes: R rays in a batch, S intervals per ray (S + 1 fence posts t), N = R*S samples, L frequencies.

    python 02_mipnerf.py                          # built-in scene, CPU preset on a CPU, paper's on a GPU
    python 02_mipnerf.py --quick                  # the small preset the tests train: 1000 steps of a 4-layer MLP
    python 02_mipnerf.py --multiscale             # the multiscale built-in scene, PSNR per scale
    python 02_mipnerf.py --scene lego --multiscale --downscale 4   # multiscale lego from a 100 px base
    python 02_mipnerf.py --scene ../shared/data/nerf_llff_data/fern --llff_factor 8   # forward-facing, NDC
    python 02_mipnerf.py --export_mesh            # also write mesh.ply (marching cubes of the density)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import RunConfig, parse_config, resolve_device, run_main
from common.data.llff import ForwardFacingScene, ndc_rays, ndc_to_world, spiral_poses
from common.data.load import load_scene
from common.data.multiscale import build_multiscale, evaluate_levels, levels_of, load_multiscale, sample_pixels
from common.data.scene import composite_on_background
from common.errors import UserError
from common.evaluation import check_model_learned
from common.lpips import load_lpips
from common.memory import views_surviving_out_of_memory
from common.mesh import marching_cubes, sample_grid, write_ply
from common.metrics import mse_to_psnr
from common.numerics import DIVISION_EPS, safe_normalize
from common.paths import load_camera_path, spherical_path
from common.rays import rays_through_pixels
from common.run_folder import RunFolder
from common.training import TrainingRun, check_finite, prepare_run, seed_everything
from common.video import colorize_depth, write_video
from kernels import starts_from_counts
from kernels.backend import resolve_backend
from kernels.compositing import composite
from kernels.sampling import sample_pdf


# ================================================================================================
# Config
# ================================================================================================
SCENE_LAYOUTS = ("object", "forward-facing")  # the captures this lesson suits (Blender scenes and LLFF in NDC, as the paper); common/data/load.py warns on others

@dataclass
class Config(RunConfig):
    """mip-NeRF (Barron et al. 2021) on one scene. Defaults are the paper's (google/mipnerf); presets size it for a CPU."""

    iters: int = field(default=1_000_000, metadata={"help": "training iterations (paper: 1M)"})
    # --- data ---
    multiscale: bool = field(default=False, metadata={"help": "train and test on the multiscale version of a Blender scene (built once, cached)"})
    multiscale_dir: str = field(default="", metadata={"help": "where the multiscale cache goes (default: <outdir>/../<scene>_multiscale)"})
    multiscale_loss: bool = field(default=True, metadata={"help": "weight each pixel's loss by its area ratio 4^level (paper); off = 1 for all"})
    llff_factor: int = field(default=4, metadata={"help": "LLFF scenes: read images_<factor>/ (paper: 4)", "min": 1})
    # --- model (Sec. 3, google/mipnerf models.py) ---
    min_deg: int = field(default=0, metadata={"help": "lowest IPE frequency 2^min_deg (Eq. 14)", "min": 0})
    max_deg: int = field(default=16, metadata={"help": "IPE frequencies 2^min_deg .. 2^(max_deg-1): 3*2*16 = 96 features", "min": 1})
    deg_view: int = field(default=4, metadata={"help": "frequencies of the view-direction PE (with the identity: 27 features)", "min": 0})
    net_depth: int = field(default=8, metadata={"help": "layers of the trunk", "min": 1})
    net_width: int = field(default=256, metadata={"help": "units per trunk layer", "min": 1})
    skip_layer: int = field(default=4, metadata={"help": "the input is concatenated again after layer index skip_layer (the 6th layer sees it)", "min": 0})
    net_width_view: int = field(default=128, metadata={"help": "units of the one view-dependent layer", "min": 1})
    density_bias: float = field(default=-1.0, metadata={"help": "sigma = softplus(raw + bias)", "finite": True})
    rgb_padding: float = field(default=0.001, metadata={"help": "rgb = sigmoid(raw) * (1 + 2 eps) - eps", "min": 0, "below": 0.5})
    density_noise: float = field(default=-1.0, metadata={"help": "std of Gaussian noise on raw density while training; -1 = paper's (1 for LLFF, else 0)", "min": -1})
    ray_shape: str = field(default="auto", metadata={"help": "cone | cylinder | auto (paper: cylinder for LLFF/NDC, cone otherwise)"})
    disable_integration: bool = field(default=False, metadata={"help": "ablation: zero covariance, IPE becomes NeRF's PE"})
    # --- rendering (Sec. 3.2) ---
    n_samples: int = field(default=128, metadata={"help": "intervals per ray at each of the two levels", "min": 1})
    resample_padding: float = field(default=0.01, metadata={"help": "alpha added to the blurred coarse weights before resampling", "min": 0})
    chunk: int = field(default=4096, metadata={"help": "rays per forward pass when rendering whole images", "min": 1})
    # --- optimisation (google/mipnerf utils.py Config) ---
    batch_rays: int = field(default=4096, metadata={"help": "rays per iteration", "min": 1})
    lr: float = field(default=5e-4, metadata={"help": "learning rate at the start of the log-linear decay", "above": 0})
    lr_final: float = field(default=5e-6, metadata={"help": "learning rate at the last iteration", "above": 0})
    lr_delay_steps: int = field(default=2500, metadata={"help": "sine warm-up length", "min": 0})
    lr_delay_mult: float = field(default=0.01, metadata={"help": "the warm-up starts at lr * this", "min": 0, "max": 1})
    coarse_loss_mult: float = field(default=0.1, metadata={"help": "weight of the coarse level's loss (lambda)", "min": 0})
    mixed_precision: bool = field(default=False, metadata={"help": "fp16 autocast for the MLP on a GPU, compositing stays fp32 (the paper trains in fp32; unmeasured here)"})
    # --- outputs ---
    export_mesh: bool = field(default=False, metadata={"help": "write mesh.ply: marching cubes of the density in the scene box"})
    mesh_resolution: int = field(default=256, metadata={"help": "grid nodes per axis for --export_mesh", "min": 2})
    mesh_threshold: float = field(default=50.0, metadata={"help": "density level of the surface for --export_mesh", "above": 0})

    def check(self) -> None:
        """Settings that depend on each other, checked once after parsing (common/cli.py, parse_config)."""
        if self.min_deg >= self.max_deg:
            raise UserError(f"--min_deg {self.min_deg} --max_deg {self.max_deg}: the IPE needs min_deg < max_deg "
                            f"(its frequencies are 2^min_deg .. 2^(max_deg-1))")


PRESETS = {
    "paper": {},
    # 01's cpu preset, mip-NeRF's way (departs from the paper to fit a CPU): a narrower, shallower MLP, 32 + 32 samples,
    # 512 rays per step, a short warm-up and a learning rate six times the paper's (small networks trained for a
    # few thousand steps need it, as in 01's cpu preset). On multiscale lego (100 px base) it makes 3.8 steps/s on 2 CPU
    # cores; 5 minutes of it beat 5 minutes of 01 at 1/4 and 1/8 scale (benchmarks/results/multiscale-01-vs-02-*).
    # Whole views render 1024 rays at a time, not 4096: 8 lego 100x100 test views took 11.2 s instead of 16.4 s on 2
    # idle CPU cores.
    "cpu": dict(iters=2500, net_depth=6, net_width=96, net_width_view=48, n_samples=32, batch_rays=512, chunk=1024,
                lr=3e-3, lr_final=3e-4, lr_delay_steps=100, ckpt_every=500, video_frames=40, log_every=25,
                mesh_resolution=128),
    # The size of 01's quick preset; a step costs about what one of 01's quick steps costs (measured side by side on
    # 2 shared CPU cores: 2.2 s each under heavy load). The test asks 24 dB of it on the built-in scene. Its
    # densities stay small (at most 15 after 429 steps, measured), so its surface level is 5, not 50.
    "quick": dict(iters=1000, net_depth=4, net_width=64, net_width_view=32, n_samples=32, batch_rays=512, lr=5e-3,
                  lr_final=5e-4, lr_delay_steps=50, ckpt_every=500, video_frames=20, log_every=20, n_test_views=4,
                  mesh_resolution=96, mesh_threshold=5.0),
}


# ================================================================================================
# The method's pieces: cones and frustums (Sec. 3.1), IPE (Eq. 14), the MLP (Sec. 3.2)
# ================================================================================================
def conical_frustum_to_gaussian(d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, radius: torch.Tensor):
    """Mean and variances of the frustum of a cone between t0 and t1, in the numerically stable form of Eq. 7
    (derivation in Appendix A; notebooks/02_mipnerf.ipynb draws one). With t_mu = (t0 + t1) / 2 and the
    *half*-width t_delta = (t1 - t0) / 2:
        mu_t      = t_mu + 2 t_mu t_delta^2 / (3 t_mu^2 + t_delta^2)
        sigma_t^2 = t_delta^2 / 3 - (4/15) t_delta^4 (12 t_mu^2 - t_delta^2) / (3 t_mu^2 + t_delta^2)^2
        sigma_r^2 = r^2 (t_mu^2 / 4 + (5/12) t_delta^2 - (4/15) t_delta^4 / (3 t_mu^2 + t_delta^2))
    (the naive forms, ratios of differences of t^3, t^4, t^5, cancel catastrophically for short frustums).
    d: (R, 3) unnormalised ray directions; t0, t1: (R, S); radius: (R,) the cone's radius at t = 1.
    Returns mean (R, S, 3) relative to the ray origin, cov_diag (R, S, 3).
    """
    t_mu, t_delta = (t0 + t1) / 2, (t1 - t0) / 2  # (R, S)
    denom = 3 * t_mu**2 + t_delta**2  # (R, S)
    t_mean = t_mu + 2 * t_mu * t_delta**2 / denom  # (R, S)
    t_var = t_delta**2 / 3 - (4 / 15) * t_delta**4 * (12 * t_mu**2 - t_delta**2) / denom**2  # (R, S)
    r_var = radius[:, None] ** 2 * (t_mu**2 / 4 + (5 / 12) * t_delta**2 - (4 / 15) * t_delta**4 / denom)  # (R, S)
    return lift_gaussian(d, t_mean, t_var, r_var)


def cylinder_to_gaussian(d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, radius: torch.Tensor):
    """A cylinder of radius r between t0 and t1 (mip-NeRF uses them for LLFF scenes in NDC): the moments of a
    uniform segment and disc, mu_t = (t0 + t1) / 2, sigma_t^2 = (t1 - t0)^2 / 12, sigma_r^2 = r^2 / 4.
    Shapes as in `conical_frustum_to_gaussian`."""
    t_mean, t_var = (t0 + t1) / 2, (t1 - t0) ** 2 / 12  # (R, S)
    r_var = (radius[:, None] ** 2 / 4).expand_as(t_mean)  # (R, S)
    return lift_gaussian(d, t_mean, t_var, r_var)


def lift_gaussian(d: torch.Tensor, t_mean: torch.Tensor, t_var: torch.Tensor, r_var: torch.Tensor):
    """From the ray's frame to world space (Sec. 3.1): mu = mu_t d, and the diagonal of
    Sigma = sigma_t^2 d d^T + sigma_r^2 (I - d d^T / |d|^2), which is all IPE needs:
        diag(Sigma) = sigma_t^2 (d * d) + sigma_r^2 (1 - d * d / |d|^2).
    d: (R, 3); t_mean, t_var, r_var: (R, S). Returns mean (R, S, 3), cov_diag (R, S, 3)."""
    mean = d[:, None, :] * t_mean[..., None]  # (R, S, 3)
    d_sq = d**2  # (R, 3)
    d_norm_sq = d_sq.sum(dim=-1, keepdim=True).clamp(min=DIVISION_EPS)  # (R, 1)
    cov_diag = t_var[..., None] * d_sq[:, None, :] + r_var[..., None] * (1 - d_sq / d_norm_sq)[:, None, :]  # (R,S,3)
    return mean, cov_diag


def pixel_radius_factor() -> float:
    """The cone's radius is the pixel's width scaled by 2 / sqrt(12) (Sec. 3.1): sqrt(12) is the ratio of a unit
    interval's width to its standard deviation, so the cone's cross-section has the pixel footprint's variance."""
    return 2.0 / math.sqrt(12.0)


def cast_pixel_rays(K: torch.Tensor, c2w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, ndc_near: float | None):
    """Rays through pixel centres (u, v) with their cone radii (google/mipnerf datasets.py `_generate_rays`).

    The radius at t = 1 is the distance between the (unnormalised, camera z = -1) directions of this pixel and
    its right neighbour, times 2 / sqrt(12): 1 / f_x for a pinhole. For LLFF (ndc_near set) the rays are mapped
    to NDC (common/data/llff.py) and the radius is the mean distance from the NDC origin to those of the right and
    lower neighbours (the authors' (dx + dy) / 2); the view directions stay the world directions, as theirs, but
    normalised to unit length: google/mipnerf passes LLFF's unnormalised pre-NDC directions as viewdirs (a quirk of
    its loader), a departure that only changes the view branch's input scale for LLFF.
    K: (3, 3) or (R, 3, 3); c2w: (4, 4) or (R, 4, 4); u, v: (R,).
    Returns origins (R, 3), directions (R, 3), viewdirs (R, 3) unit, radii (R,).
    """
    origins, directions = rays_through_pixels(K, c2w, u, v)  # (R, 3) each
    viewdirs = safe_normalize(directions)  # (R, 3)
    if ndc_near is None:
        _, dirs_right = rays_through_pixels(K, c2w, u + 1.0, v)
        radii = (dirs_right - directions).norm(dim=-1) * pixel_radius_factor()  # (R,)
        return origins.contiguous(), directions, viewdirs, radii
    ndc_o, ndc_d = ndc_rays(origins, directions, K, ndc_near)  # (R, 3) each
    right_o, _ = ndc_rays(*rays_through_pixels(K, c2w, u + 1.0, v), K, ndc_near)
    below_o, _ = ndc_rays(*rays_through_pixels(K, c2w, u, v + 1.0), K, ndc_near)
    radii = 0.5 * ((right_o - ndc_o).norm(dim=-1) + (below_o - ndc_o).norm(dim=-1)) * pixel_radius_factor()  # (R,)
    return ndc_o, ndc_d, viewdirs, radii


def safe_sin(x: torch.Tensor) -> torch.Tensor:
    """sin(x), with |x| >= 100 pi first reduced modulo 100 pi (a multiple of 2 pi, so sin is unchanged up to
    float32 rounding). mip-NeRF's `safe_sin` does this because "jnp.sin() on a TPU may NaN out for large values"
    (its comment); PyTorch's sin on a CPU or GPU does not, so here it only keeps the two implementations
    computing the same numbers."""
    wrap = 100 * math.pi
    return torch.sin(torch.where(x.abs() < wrap, x, torch.remainder(x, wrap)))


def integrated_pos_enc(mean: torch.Tensor, cov_diag: torch.Tensor, min_deg: int, max_deg: int) -> torch.Tensor:
    """Eq. 14: gamma(mu, Sigma) = [sin(mu_gamma) * exp(-diag(Sigma_gamma) / 2), cos(mu_gamma) * exp(-...)], with
    mu_gamma = (2^l mu) and diag(Sigma_gamma) = (4^l diag(Sigma)) for l = min_deg .. max_deg - 1: the expected
    value of sin(2^l x) under x ~ N(mu, sigma^2) is sin(2^l mu) exp(-4^l sigma^2 / 2). A frequency whose period is
    shorter than the Gaussian is averaged away. cos is written sin(y + pi/2).
    mean, cov_diag: (..., 3) -> (..., 2 * 3 * L).
    """
    ### BEGIN SOLUTION
    scales = 2.0 ** torch.arange(min_deg, max_deg, device=mean.device, dtype=mean.dtype)  # (L,)
    y = (mean[..., None, :] * scales[:, None]).flatten(-2)  # (..., L*3)
    y_var = (cov_diag[..., None, :] * scales[:, None] ** 2).flatten(-2)  # (..., L*3)
    attenuation = torch.exp(-0.5 * y_var)  # (..., L*3)
    return torch.cat([attenuation, attenuation], -1) * safe_sin(torch.cat([y, y + 0.5 * math.pi], -1))  # (..., 2*L*3)
    ### END SOLUTION


def positional_encoding(x: torch.Tensor, min_deg: int, max_deg: int, append_identity: bool = True) -> torch.Tensor:
    """NeRF's encoding (Eq. 4 of NeRF, without pi) in the same layout as IPE: [sin(2^l x), cos(2^l x)] (and x).
    The layout is mip-NeRF's: every sine, then every cosine. 01_nerf.py interleaves them per frequency, as NeRF's
    code does; the two hold the same features in another order, which a dense first layer does not care about.
    It is IPE with zero variance, which a test checks. x: (..., D) -> (..., D * (2 L + append_identity))."""
    scales = 2.0 ** torch.arange(min_deg, max_deg, device=x.device, dtype=x.dtype)  # (L,)
    y = (x[..., None, :] * scales[:, None]).flatten(-2)  # (..., L*D)
    encoded = safe_sin(torch.cat([y, y + 0.5 * math.pi], dim=-1))  # (..., 2*L*D)
    return torch.cat([x, encoded], dim=-1) if append_identity else encoded


class MipMLP(nn.Module):
    """One MLP for both levels (google/mipnerf models.py `MLP`): a ReLU trunk on IPE(x) with a skip connection,
    density from the trunk, then a bottleneck joined with PE(d) through one narrower layer for the colour.
    Every layer starts from Glorot-uniform weights and zero biases: mip-NeRF's MLP sets glorot_uniform itself
    (flax's own default for Dense kernels is LeCun-normal); zero biases are flax's default."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        in_pos = 2 * 3 * (cfg.max_deg - cfg.min_deg)  # 96 for degrees 0..16
        in_view = 3 * (1 + 2 * cfg.deg_view)  # 27
        width = cfg.net_width
        self.trunk = nn.ModuleList(
            nn.Linear(in_pos if i == 0 else width + (in_pos if i == cfg.skip_layer + 1 else 0), width)
            for i in range(cfg.net_depth))
        self.density_head = nn.Linear(width, 1)
        self.bottleneck = nn.Linear(width, width)
        self.view_layer = nn.Linear(width + in_view, cfg.net_width_view)
        self.rgb_head = nn.Linear(cfg.net_width_view, 3)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, mean, cov_diag, viewdirs, density_noise: torch.Tensor | None = None):
        """mean, cov_diag: (N, 3) Gaussians; viewdirs: (N, 3) unit; density_noise: (N,) or None.
        Returns sigma (N,) > 0 and rgb (N, 3) in [-eps, 1 + eps] (density first, as 03's MipMLP; mip-NeRF's MLP
        returns them the other way round)."""
        cfg = self.cfg
        encoded_x = integrated_pos_enc(mean, cov_diag, cfg.min_deg, cfg.max_deg)  # (N, 96)
        h = encoded_x
        for i, layer in enumerate(self.trunk):
            if i == cfg.skip_layer + 1:
                h = torch.cat([h, encoded_x], dim=-1)  # the skip connection: the 6th layer sees IPE(x) again
            h = F.relu(layer(h), inplace=True)  # in place: no second copy of each output (01's trunk: 27% less time on 2 CPU cores)
        raw_density = self.density_head(h).squeeze(-1)  # (N,)
        if density_noise is not None:
            raw_density = raw_density + density_noise  # regularises LLFF scenes (paper: std 1, training only)
        sigma = F.softplus(raw_density + cfg.density_bias)  # smooth, never a dead zero gradient (Sec. 3.2)
        h = torch.cat([self.bottleneck(h), positional_encoding(viewdirs, 0, cfg.deg_view)], dim=-1)
        rgb = torch.sigmoid(self.rgb_head(F.relu(self.view_layer(h))))  # (N, 3)
        # Widened sigmoid: 0 and 1 are reachable with finite pre-activations (white backgrounds).
        return sigma, rgb * (1 + 2 * cfg.rgb_padding) - cfg.rgb_padding


# ================================================================================================
# Rendering: sample intervals, cast them, encode, composite; resample from the blurred weights (Sec. 3.2)
# ================================================================================================
def sample_along_rays(n_rays: int, n_samples: int, near: float, far: float, randomized: bool,
                      generator: torch.Generator | None, device) -> torch.Tensor:
    """S + 1 fence posts linear in depth; with `randomized`, each post jitters inside its stratum (NeRF Eq. 2
    applied to the posts, as in the authors' code). Returns t_vals (R, S+1) sorted; interval i is [t_i, t_{i+1}]."""
    t_vals = torch.linspace(near, far, n_samples + 1, device=device).expand(n_rays, -1)  # (R, S+1)
    if not randomized:
        return t_vals.contiguous()
    mids = 0.5 * (t_vals[:, 1:] + t_vals[:, :-1])  # (R, S)
    upper = torch.cat([mids, t_vals[:, -1:]], dim=-1)  # (R, S+1)
    lower = torch.cat([t_vals[:, :1], mids], dim=-1)  # (R, S+1)
    u = torch.rand(n_rays, n_samples + 1, generator=generator, device="cpu").to(device)  # (R, S+1)
    return lower + (upper - lower) * u


def blur_weights(weights: torch.Tensor, padding: float) -> torch.Tensor:
    """The resampling pdf of Sec. 3.2: w'_k = (max(w_{k-1}, w_k) + max(w_k, w_{k+1})) / 2 + alpha.
    The 2-tap max then 2-tap mean is a wide, cheap envelope of the coarse weights (a surface seen by the coarse
    level is not missed by the fine one), and alpha = 0.01 keeps some samples in empty space.
    weights: (R, S) -> (R, S); the ends are padded with their own values."""
    padded = torch.cat([weights[:, :1], weights, weights[:, -1:]], dim=-1)  # (R, S+2)
    maxes = torch.maximum(padded[:, :-1], padded[:, 1:])  # (R, S+1)
    return 0.5 * (maxes[:, :-1] + maxes[:, 1:]) + padding  # (R, S)


def volume_render(sigma: torch.Tensor, rgb: torch.Tensor, t_vals: torch.Tensor,
                  ray_norms: torch.Tensor) -> dict[str, torch.Tensor]:
    """NeRF's Eq. 3 over the S intervals [t_i, t_{i+1}] of each ray. Unlike 01 there is no last interval to the
    far plane: the S + 1 fence posts bound exactly S frustums. delta_i = (t_{i+1} - t_i) |d|.
    sigma: (R, S); rgb: (R, S, 3); t_vals: (R, S+1); ray_norms: (R,) |d|.
    Returns weights (R, S), opacity (R,), color (R, 3), depth (R,) = sum_i w_i (t_i + t_{i+1}) / 2."""
    delta = (t_vals[:, 1:] - t_vals[:, :-1]) * ray_norms[:, None]  # (R, S)
    alpha = 1.0 - torch.exp(-sigma * delta)  # (R, S)
    optical_depth = torch.cumsum(sigma * delta, dim=-1)  # (R, S) sum_{j<=i}
    trans = torch.exp(-torch.cat([torch.zeros_like(optical_depth[:, :1]), optical_depth[:, :-1]], dim=-1))  # (R, S)
    weights = trans * alpha  # (R, S)
    return dict(weights=weights, opacity=weights.sum(dim=-1), color=(weights[..., None] * rgb).sum(dim=1),
                depth=(weights * 0.5 * (t_vals[:, 1:] + t_vals[:, :-1])).sum(dim=-1))


def render_level(mlp: MipMLP, rays: dict, t_vals: torch.Tensor, cfg: Config, backend: str, ray_shape: str,
                 noise_std: float, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Cast the intervals of t_vals (R, S+1) as Gaussians, query the MLP at them, composite (NeRF Eq. 3).

    As in 01, --backend torch composites with the dense `volume_render` above and the other backends with the
    packed kernel of kernels/compositing.py (the same numbers). The kernel takes delta = t_end - t_start, so |d|
    is folded into sigma: (sigma_i |d|) (t_{i+1} - t_i); its depth output is then sum_i w_i t_mid_i too.
    """
    n_rays, n_samples = t_vals.shape[0], t_vals.shape[1] - 1
    t0, t1 = t_vals[:, :-1], t_vals[:, 1:]  # (R, S)
    to_gaussian = conical_frustum_to_gaussian if ray_shape == "cone" else cylinder_to_gaussian
    mean, cov_diag = to_gaussian(rays["directions"], t0, t1, rays["radii"])  # (R, S, 3) each
    mean = mean + rays["origins"][:, None, :]  # (R, S, 3) in world (or NDC) space
    if cfg.disable_integration:
        cov_diag = torch.zeros_like(cov_diag)  # ablation "mip-NeRF w/o IPE": NeRF's encoding of the means
    viewdirs = rays["viewdirs"][:, None, :].expand_as(mean)  # (R, S, 3)
    noise = None
    if noise_std > 0:
        noise = noise_std * torch.randn(n_rays * n_samples, generator=generator, device="cpu").to(mean.device)
    use_amp = cfg.mixed_precision and mean.is_cuda
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        sigma, rgb = mlp(mean.reshape(-1, 3), cov_diag.reshape(-1, 3), viewdirs.reshape(-1, 3), noise)  # (N,),(N,3)
    sigma = sigma.float().view(n_rays, n_samples)  # (R, S) rendering always in fp32
    rgb = rgb.float().view(n_rays, n_samples, 3)  # (R, S, 3)
    ray_norms = rays["directions"].norm(dim=-1)  # (R,)
    if backend == "torch":
        return volume_render(sigma, rgb, t_vals, ray_norms)
    counts = torch.full((n_rays,), n_samples, dtype=torch.int32, device=t_vals.device)  # (R,) every ray: S samples
    weights, opacity, color, depth = composite(
        (sigma * ray_norms[:, None]).reshape(-1).contiguous(), rgb.reshape(-1, 3).contiguous(),
        t0.reshape(-1).contiguous(), t1.reshape(-1).contiguous(), starts_from_counts(counts), counts, backend=backend)
    return dict(weights=weights.view(n_rays, n_samples), opacity=opacity, color=color, depth=depth)


def render_rays(mlp: MipMLP, rays: dict, near: float, far: float, cfg: Config, backend: str, ray_shape: str,
                background: float, randomized: bool, noise_std: float = 0.0,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """From cones to colours: the whole method on one screen (Sec. 3.2).

    rays: 'origins', 'directions', 'viewdirs' (R, 3) and 'radii' (R,) from `cast_pixel_rays`.
    1. coarse: S + 1 stratified fence posts between near and far, the MLP at their S frustums;
    2. fine: S + 1 new posts drawn by inverse-CDF sampling (kernels/sampling.py, stratified u = (k + U) / (S+1)
       as in the paper's code; for rendering, the strata centres (k + 0.5) / (S+1) where the authors take
       linspace(0, 1 - eps, S+1)) from the blurred coarse weights; they are constants (no gradient between levels);
    3. the *same* MLP at the fine frustums.
    Returns rgb_coarse, rgb (R, 3) over `background`, depth (R,) the expected t clipped to [near, far], opacity (R,).
    """
    t_vals = sample_along_rays(rays["origins"].shape[0], cfg.n_samples, near, far, randomized, generator,
                               rays["origins"].device)
    coarse = render_level(mlp, rays, t_vals, cfg, backend, ray_shape, noise_std, generator)
    t_vals = sample_pdf(t_vals, blur_weights(coarse["weights"].detach(), cfg.resample_padding), cfg.n_samples + 1,
                        stratified=randomized, generator=generator, backend=backend)  # (R, S+1), detached
    fine = render_level(mlp, rays, t_vals, cfg, backend, ray_shape, noise_std, generator)

    def over_background(out):
        return out["color"] + (1.0 - out["opacity"])[:, None] * background

    depth = torch.where(fine["opacity"] > DIVISION_EPS, fine["depth"] / fine["opacity"].clamp(min=DIVISION_EPS),
                        torch.full_like(fine["depth"], far)).clamp(near, far)  # (R,)
    return dict(rgb_coarse=over_background(coarse), rgb=over_background(fine), depth=depth, opacity=fine["opacity"])


# ================================================================================================
# Training loop
# ================================================================================================
def learning_rate(cfg: Config, step: int, elapsed_s: float = 0.0) -> float:
    """Log-linear decay from lr to lr_final, times a sine warm-up from lr_delay_mult over lr_delay_steps
    (google/mipnerf math.py `learning_rate_decay`). Progress runs over --iters or over --time_budget_s,
    whichever is further along, so a run cut short by its budget still ends on the small learning rate."""
    progress = step / max(cfg.iters, 1)
    if cfg.time_budget_s > 0:
        progress = max(progress, elapsed_s / cfg.time_budget_s)
    progress = min(progress, 1.0)
    decayed = math.exp((1 - progress) * math.log(cfg.lr) + progress * math.log(cfg.lr_final))
    if cfg.lr_delay_steps <= 0:
        return decayed
    warm = min(max(step / cfg.lr_delay_steps, 0.0), 1.0)
    return decayed * (cfg.lr_delay_mult + (1 - cfg.lr_delay_mult) * math.sin(0.5 * math.pi * warm))


def weighted_mse(rgb: torch.Tensor, target: torch.Tensor, lossmult: torch.Tensor) -> torch.Tensor:
    """sum_r m_r |rgb_r - target_r|^2 / (3 sum_r m_r): each pixel weighs its area ratio m (4^level) in a
    multiscale batch (1 otherwise). The authors divide by sum m only (3 times this number); Adam does not see a
    constant factor, and this way PSNR = -10 log10(loss) holds."""
    return (lossmult[:, None] * (rgb - target) ** 2).sum() / (3 * lossmult.sum())


def load_data(cfg: Config, outdir: Path):
    """The scene: a Blender scene (or the built-in one), its multiscale version (built once, cached), a folder in
    the multiscale layout (metadata.json) or an LLFF capture."""
    if not cfg.multiscale:
        return load_scene(cfg.scene, cfg.datadir, downscale=cfg.downscale, gt_protocol=cfg.gt_protocol,
                          llff_factor=cfg.llff_factor)
    base = load_scene(cfg.scene, cfg.datadir, max_images=1, llff_factor=cfg.llff_factor)  # finds the folder only
    if isinstance(base, ForwardFacingScene):
        raise UserError("--multiscale builds from a Blender scene; LLFF captures are single-scale: drop --multiscale")
    if hasattr(base, "levels"):  # already multiscale (metadata.json)
        return load_multiscale(base.root)
    suffix = (f"_x{cfg.downscale}" if cfg.downscale > 1 else "") + ("_straight" if cfg.gt_protocol == "straight" else "")
    cache = Path(cfg.multiscale_dir) if cfg.multiscale_dir else outdir.parent / f"{base.name}{suffix}_multiscale"
    print(f"multiscale data: {cache}")
    return load_multiscale(build_multiscale(base.root, cache, downscale=cfg.downscale, protocol=cfg.gt_protocol))


def train(cfg: Config) -> dict:
    """Train the one MLP; evaluate every scale of the test split; write pictures, videos (and a mesh). Returns the metrics."""
    device = resolve_device(cfg.device)
    backend = resolve_backend(cfg.backend, device)
    seed_everything(cfg.seed)
    if cfg.ray_shape not in ("auto", "cone", "cylinder"):
        raise UserError(f"--ray_shape must be cone, cylinder or auto, got {cfg.ray_shape!r}")
    scene = load_data(cfg, Path(cfg.outdir))
    ndc_near = scene.ndc_near if isinstance(scene, ForwardFacingScene) else None
    if cfg.export_mesh and ndc_near is not None:
        raise UserError("--export_mesh needs an object scene in a box; a forward-facing scene lives in NDC: drop it")
    ray_shape = cfg.ray_shape if cfg.ray_shape != "auto" else ("cylinder" if ndc_near is not None else "cone")
    noise_std = cfg.density_noise if cfg.density_noise >= 0 else (1.0 if ndc_near is not None else 0.0)
    train_levels = levels_of(scene, "train")  # one level, or the four scales of a multiscale scene
    background = 1.0 if scene.white_background else 0.0

    mlp = MipMLP(cfg).to(device)
    params = list(mlp.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)  # flax's defaults
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision and device.type == "cuda")
    generator = torch.Generator().manual_seed(cfg.seed)  # CPU generator: the same rays on every device
    render_view_fn = make_view_renderer(mlp, scene, cfg, backend, ray_shape, device)

    def save_state() -> dict:
        return dict(mlp=mlp.state_dict(), optimizer=optimizer.state_dict(), generator=generator.get_state())

    def load_state(state: dict) -> None:
        mlp.load_state_dict(state["mlp"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])

    def validate() -> float:
        return evaluate_levels(render_view_fn, levels_of(scene, "val")[:1], None, n_views=1, background=background,
                               progress=False)["mean_psnr"]

    # Resume, logging, held-out checks, checkpoints, time budget, Ctrl-C: common/training.py, TrainingRun.
    with TrainingRun(cfg, "02_mipnerf", scene, device, backend, save_state, load_state, validate,
                     render=render_view_fn) as run:
        def training_step(step: int) -> None:  # one step of the loop below
            # Rays from all pixels of all images (and scales) at once: the authors' batching for LLFF and multiscale
            # data; for single-scale Blender they draw each batch from one image, we do not.
            batch = sample_pixels(train_levels, cfg.batch_rays, generator)
            origins, directions, viewdirs, radii = cast_pixel_rays(batch["K"], batch["c2w"], batch["u"], batch["v"],
                                                                   ndc_near)
            rays = {key: value.to(device) for key, value in
                    dict(origins=origins, directions=directions, viewdirs=viewdirs, radii=radii).items()}
            target = composite_on_background(batch["target"], background).to(device)  # RGBA over white
            lossmult = batch["lossmult"].to(device) if cfg.multiscale_loss else torch.ones(cfg.batch_rays, device=device)

            out = render_rays(mlp, rays, scene.near, scene.far, cfg, backend, ray_shape, background,
                              randomized=True, noise_std=noise_std, generator=generator)
            # Sec. 3.2: lambda * coarse loss + fine loss, lambda = 0.1.
            loss_fine = weighted_mse(out["rgb"], target, lossmult)
            loss = cfg.coarse_loss_mult * weighted_mse(out["rgb_coarse"], target, lossmult) + loss_fine

            lr = learning_rate(cfg, step, run.elapsed())
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            check_finite(step, loss, params, lr=lr, scaler=scaler)  # a NaN stops the run before the update
            scaler.step(optimizer)
            scaler.update()
            run.log(step, loss=loss.item(), psnr=mse_to_psnr(loss_fine.item()), lr=lr)

        for step in run.steps():  # a GPU out-of-memory error halves the rays per step and runs the step again
            run.train_step(training_step, step, optimizer)

    outdir = Path(cfg.outdir)
    metrics = evaluate(render_view_fn, scene, outdir, cfg, iters=run.step, backend=backend, device=str(device),
                       preset=cfg.preset)
    check_model_learned(metrics, keep_going=not cfg.dead_model_check)  # a dead model stops here, before videos
    if cfg.video_frames > 0 or cfg.camera_path:
        videos = render_videos(render_view_fn, scene, outdir, cfg.video_frames, cfg.camera_path)
        print("videos: " + ", ".join(str(v) for v in videos))
    if cfg.export_mesh:
        try:
            metrics["mesh"] = str(export_mesh(mlp, scene, outdir, cfg, device))
        except UserError as err:  # no surface at that level: say so, keep the trained model and its results
            print(f"--export_mesh: {err} (--mesh_threshold); no mesh written")
    return metrics


# ================================================================================================
# Evaluation, videos, mesh (thin: the work is in common/)
# ================================================================================================
def make_view_renderer(mlp: MipMLP, scene, cfg: Config, backend: str, ray_shape: str, device):
    """A function (K, c2w, H, W) -> {'rgb' (H,W,3), 'depth' (H,W), 'opacity' (H,W)} on the CPU, deterministic.
    It needs the camera, not just rays: a cone's radius comes from the pixel spacing."""
    ndc_near = scene.ndc_near if isinstance(scene, ForwardFacingScene) else None
    background = 1.0 if scene.white_background else 0.0

    @torch.no_grad()
    def render_view_fn(K: torch.Tensor, c2w: torch.Tensor, H: int, W: int) -> dict[str, torch.Tensor]:
        rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                                    indexing="ij")
        u, v = cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5  # (H*W,) pixel centres, row-major
        origins, directions, viewdirs, radii = cast_pixel_rays(K, c2w, u, v, ndc_near)
        outputs = {"rgb": [], "depth": [], "opacity": []}
        for start in range(0, H * W, render_view_fn.chunk):  # halved on GPU out of memory (common/memory.py)
            part = slice(start, start + render_view_fn.chunk)
            rays = dict(origins=origins[part].to(device), directions=directions[part].to(device),
                        viewdirs=viewdirs[part].to(device), radii=radii[part].to(device))
            out = render_rays(mlp, rays, scene.near, scene.far, cfg, backend, ray_shape, background, randomized=False)
            for key in outputs:
                outputs[key].append(out[key].cpu())
        return {key: torch.cat(value).reshape(H, W, *value[0].shape[1:]) for key, value in outputs.items()}

    render_view_fn.chunk = cfg.chunk
    return views_surviving_out_of_memory(render_view_fn)


def evaluate(render_view_fn, scene, outdir: Path, cfg: Config, **facts) -> dict:
    """PSNR, SSIM and LPIPS of the test views at every scale (one scale for single-scale scenes) -> <outdir>/test."""
    metrics = evaluate_levels(render_view_fn, levels_of(scene, "test"), outdir / "test",
                              n_views=cfg.n_test_views or None, background=1.0 if scene.white_background else 0.0,
                              near=scene.near, far=scene.far, lpips_fn=load_lpips(cfg.lpips_weights),
                              scene=scene.name, **facts)
    scales = ", ".join(f"1/{2 ** s['label']}: {s['psnr']:.2f}" for s in metrics["per_scale"])
    print(f"test: PSNR {metrics['mean_psnr']:.2f} dB, SSIM {metrics['mean_ssim']:.4f} "
          f"({scales}) -> {outdir / 'test'}")
    return metrics


def normals_from_depth(points: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Normals of the surface the depth map describes: the cross product of its finite differences along image
    rows and columns, turned to face the camera, in the camera frame (OpenGL: x right, y up, z towards the viewer).
    These are the normals of the *rendered depth*, not the gradient of the density field (a choice: they cost no
    second backward pass, mean the same in NDC and world space, and show what the depth maps imply; they are as
    noisy as the depth). points: (H, W, 3) world points of the depth map. Returns (H, W, 3) unit vectors."""
    d_col = torch.gradient(points, dim=1)[0]  # (H, W, 3) along columns (image right)
    d_row = torch.gradient(points, dim=0)[0]  # (H, W, 3) along rows (image down)
    normals = safe_normalize(torch.cross(d_row, d_col, dim=-1))  # (H, W, 3)
    towards_camera = c2w[:3, 3] - points  # (H, W, 3)
    normals = torch.where((normals * towards_camera).sum(-1, keepdim=True) < 0, -normals, normals)
    return normals @ c2w[:3, :3]  # (H, W, 3) world -> camera: R^T n, written n^T R


def render_videos(render_view_fn, scene, outdir: Path, n_frames: int, camera_path: str | None = None) -> list[Path]:
    """Colour, depth and normal videos: a spherical path around an object scene (at the training cameras' mean
    radius, 30 degrees up), a spiral for a forward-facing one (common/data/llff.py); also along --camera_path if given."""
    cams = levels_of(scene, "train")[0].split.cameras
    is_ndc = isinstance(scene, ForwardFacingScene)
    paths = {}
    if n_frames > 0:
        paths["video"] = spiral_poses(scene, n_frames) if is_ndc else \
            spherical_path(n_frames, radius=float(cams.c2w[:, :3, 3].norm(dim=-1).mean()))
    if camera_path:
        paths[f"video_{Path(camera_path).stem}"] = load_camera_path(camera_path)
    return [video for name, poses in paths.items()
            for video in render_path(render_view_fn, scene, poses, cams, outdir, name, is_ndc)]


def render_path(render_view_fn, scene, poses, cams, outdir: Path, name: str, is_ndc: bool) -> list[Path]:
    """Render the poses (T, 4, 4) with the first training camera's intrinsics: <name>_{rgb,depth,normals}.mp4."""
    frames = {"rgb": [], "depth": [], "normals": []}
    K, H, W = cams.K[0], cams.height, cams.width
    rows, cols = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    for c2w in poses:
        out = render_view_fn(K, c2w, H, W)
        origins, directions = rays_through_pixels(K, c2w, cols.reshape(-1), rows.reshape(-1))  # (H*W, 3)
        if is_ndc:  # t is along the NDC ray: map the NDC point back to world space
            ndc_o, ndc_d = ndc_rays(origins, directions, K, scene.ndc_near)
            points = ndc_to_world(ndc_o + out["depth"].reshape(-1, 1) * ndc_d, K, scene.ndc_near)
            depth_image = colorize_depth(out["depth"], 0.0, 1.0)  # NDC t: 0 at the near plane, 1 at infinity
        else:
            points = origins + out["depth"].reshape(-1, 1) * directions
            depth_image = colorize_depth(out["depth"], scene.near, scene.far)
        normals = normals_from_depth(points.reshape(H, W, 3), c2w)
        empty = (out["opacity"] < 0.5)[..., None] if not is_ndc else torch.zeros(H, W, 1, dtype=torch.bool)
        frames["rgb"].append(out["rgb"].clamp(0, 1))
        frames["depth"].append(torch.as_tensor(depth_image))
        frames["normals"].append(torch.where(empty, torch.ones(3), 0.5 * normals + 0.5))  # n in [-1,1] -> colour
    return [write_video(outdir / f"{name}_{kind}.mp4", torch.stack(images).numpy(), fps=24)
            for kind, images in frames.items()]


def export_mesh(mlp: MipMLP, scene, outdir: Path, cfg: Config, device) -> Path:
    """Marching cubes of the density on a mesh_resolution^3 grid of the scene box -> <outdir>/mesh.ply (world units).
    Each node is queried as a Gaussian with the variance of a voxel-wide box (voxel^2 / 12 per axis), the scale the
    grid can show; the surface is the level --mesh_threshold."""
    voxel = (scene.aabb[1] - scene.aabb[0]) / (cfg.mesh_resolution - 1)  # (3,)
    cov = (voxel**2 / 12).to(device)  # (3,)

    def density(points: torch.Tensor) -> torch.Tensor:  # (P, 3) -> (P,)
        sigma, _ = mlp(points, cov.expand_as(points), torch.zeros_like(points))
        return sigma

    values = sample_grid(density, scene.aabb, cfg.mesh_resolution, chunk=cfg.chunk * 16, device=device)
    vertices, faces = marching_cubes(values, scene.aabb, cfg.mesh_threshold, inside="above")
    path = write_ply(outdir / "mesh.ply", vertices, faces)
    print(f"mesh: {len(vertices)} vertices, {len(faces)} faces at density {cfg.mesh_threshold:g} -> {path}")
    return path


# ================================================================================================
# main
# ================================================================================================
def main(argv=None) -> dict:
    cfg = parse_config(Config, argv, presets=PRESETS)
    # The run folder checked; with --resume or --render_only, the settings of the checkpoint being continued.
    cfg = prepare_run(cfg, "02_mipnerf", required_keys=("mlp",),
                      output_settings=("export_mesh", "mesh_resolution", "mesh_threshold"))
    # The folder is this run's until its last file is written (test renders, videos, mesh), not only while it trains.
    with RunFolder(cfg.outdir):
        return train(cfg)


if __name__ == "__main__":
    run_main(main)
