"""03 - mip-NeRF 360: Unbounded Anti-Aliased Neural Radiance Fields.

Barron, Mildenhall, Verbin, Srinivasan, Hedman. CVPR 2022. https://arxiv.org/abs/2111.12077
Reference implementation: google-research/multinerf (its README: it reproduces the paper's results); where the
recipe below comes from that code rather than the paper's text, the comment says so.

Real captures have backgrounds at every distance. What is new relative to mip-NeRF (02) and NeRF (01):
  * scene contraction (Eq. 10): space outside the unit ball is squeezed into the shell 1 < |x| < 2, so one MLP
    covers everything out to infinity; mip-NeRF's Gaussians (conical frustums, Eq. 7 of mip-NeRF) are pushed
    through the contraction by linearisation (their covariance becomes J Sigma J^T);
  * ray distances are sampled in normalised disparity s (Eq. 11, g(t) = 1/t): evenly spaced s are evenly spaced
    in 1/t, so samples crowd near the camera and thin out far away (the gap between neighbours grows like t^2),
    and the whole ray out to t_f = 1e6 fits in s in [0, 1];
  * a small *proposal* MLP (density only) proposes where the samples go, twice, and is trained to bound the
    NeRF MLP's weights from above (the interlevel loss, Eq. 13); the big NeRF MLP is evaluated only at the
    final, few samples (32 of the 64 + 64 + 32);
  * the distortion loss (Eq. 15) pulls each ray's weights into as compact a blob as possible: no floaters,
    no semi-transparent haze.
Loss: Charbonnier data term on the NeRF level only + interlevel + 0.01 distortion; Adam 2e-3 -> 2e-5.
Scenes: the paper's recipe is for captures with a background at every distance. An object over a white
background (a Blender scene: lego, the built-in object scene) gets multinerf's Blender recipe instead (near 2,
far 6, no contraction, the white background composited, an MSE data term): under the 360 recipe the
Charbonnier loss drives such a scene to all white (see resolve_recipe, and --recipe).

Read it top to bottom: Config, the geometry (Gaussians, contraction, IPE), the MLPs, resampling, losses,
rendering, the training loop, evaluation, main. notebooks/03_mipnerf360.ipynb draws each piece.
Glossary of shapes: R rays in a batch, S samples (intervals) per ray, so S + 1 interval ends, D = 3.

    python 03_mipnerf360.py                          # built-in unbounded scene, CPU preset on a CPU
    python 03_mipnerf360.py --quick                  # 800 steps: 29.0 dB on 4 test views, 70 s (README)
    python 03_mipnerf360.py --scene lego --datadir ../shared/data/nerf_synthetic --quick   # Blender recipe
    python 03_mipnerf360.py --scene ../shared/data/fox --downscale 8   # an Instant-NGP transforms.json capture
    python 03_mipnerf360.py --scene data/360_v2/garden                 # a 360 capture (poses_bounds.npy, images_4/)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import RunConfig, parse_config, resolve_device, run_main
from common.data.llff360 import load_llff360
from common.data.load import load_scene
from common.data.scene import composite_on_background
from common.errors import UserError
from common.evaluation import evaluate_split, final_evaluation, render_view
from common.metrics import mse_to_psnr
from common.numerics import NORM_EPS
from common.paths import focus_point, orbit_path, spiral_path
from common.rays import sample_ray_batch
from common.run_folder import RunFolder
from common.training import TrainingRun, check_finite, prepare_run, seed_everything
from common.video import colorize_depth, write_video
from kernels.backend import resolve_backend
from kernels.distortion_loss import distortion_loss as distortion_loss_kernel
from kernels.sampling import invert_cdf

PAPER_BATCH_RAYS = 16384


# ================================================================================================
# Config
# ================================================================================================
SCENE_LAYOUTS = ("unbounded", "object")  # the captures this lesson suits (the scene contraction is made for backgrounds at every distance); common/data/load.py warns on others

@dataclass
class Config(RunConfig):
    """mip-NeRF 360 (Barron et al. 2022) on one scene. The defaults are multinerf's 360.gin (the paper's), with
    these exceptions: the MLPs encode along the 3 axes, not 21 icosahedron directions (integrated_pos_enc);
    an object over a white background gets the Blender recipe (--recipe); a 360 capture is read at 1/4 size as
    multinerf does, but every other scene at the size --downscale says (1 by default). Presets (PRESETS) size it
    for a CPU."""

    # The settings every script shares (--datadir, --outdir, --backend, --device, --seed, --quick, --preset,
    # --resume, --time_budget_s, logging and outputs) come from common/cli.py, RunConfig.
    scene: str = field(default="builtin_unbounded", metadata={"help": "builtin_unbounded (generated: objects inside a distant sky), builtin, a Blender scene name, or a folder: Blender layout, a transforms.json capture (Instant-NGP's fox), or a capture with poses_bounds.npy + images_N/ (N = --downscale, 4 unless given, as multinerf; without images_N/, the coarsest images_g/ with g dividing N, reduced by N/g), always read as a 360 capture (no NDC, even for a forward-facing LLFF one)"})
    iters: int = field(default=250_000, metadata={"help": "training iterations (paper: 250k at 16384 rays)"})
    # --- rays (Sec. 2, Eq. 11) ---
    recipe: Literal["auto", "360", "blender"] = field(default="auto", metadata={"help": "how rays meet the scene. 360 (the paper; multinerf's 360.gin): near 0.2, far 1e6, s spaced in disparity (Eq. 11), the contraction (Eq. 10), an opaque last interval that learns the background. blender (multinerf's blender_256.gin, for an object over a white background): the scene's near/far (2/6 for Blender scenes), s linear in t, no contraction, the background composited where the weights do not sum to 1. auto: blender for scenes with a white background (Blender layout: lego, builtin), 360 for the rest"})
    near: Optional[float] = field(default=None, metadata={"help": "t_n, near plane of every ray (scene units); none: the recipe's (360: 0.2; blender: the scene's, 2 for Blender scenes)", "above": 0})
    far: Optional[float] = field(default=None, metadata={"help": "t_f, far plane; none: the recipe's (360: 1e6, with an opaque last interval; blender: the scene's, 6 for Blender scenes)", "above": 0})
    # --- networks (Sec. 3, multinerf 360.gin) ---
    nerf_depth: int = field(default=8, metadata={"help": "layers of the NeRF MLP", "min": 1})
    nerf_width: int = field(default=1024, metadata={"help": "units per layer of the NeRF MLP", "min": 1})
    prop_depth: int = field(default=4, metadata={"help": "layers of the proposal MLP (density only)", "min": 1})
    prop_width: int = field(default=256, metadata={"help": "units per layer of the proposal MLP", "min": 1})
    skip_layer: int = field(default=4, metadata={"help": "the input is concatenated again after layer index this (multinerf: i % 4 == 0, i > 0)", "min": 1})
    bottleneck_width: int = field(default=256, metadata={"help": "NeRF MLP feature passed to the view-dependent branch", "min": 1})
    view_width: int = field(default=128, metadata={"help": "units of the one-layer view-dependent branch", "min": 1})
    max_deg_point: int = field(default=12, metadata={"help": "IPE frequencies 2^0..2^(this-1) of contracted points", "min": 1})
    deg_view: int = field(default=4, metadata={"help": "positional-encoding frequencies of the view direction", "min": 0})
    # --- sampling (Sec. 3, multinerf Model.__call__) ---
    n_prop_samples: tuple[int, ...] = field(default=(64, 64), metadata={"help": "intervals per proposal round (one proposal MLP, queried once per round)", "min": 2})
    n_nerf_samples: int = field(default=32, metadata={"help": "intervals at which the NeRF MLP is evaluated", "min": 2})
    dilation_bias: float = field(default=0.0025, metadata={"help": "proposal histogram dilation: bias + multiplier / (product of the sample counts so far) (multinerf)", "min": 0})
    dilation_multiplier: float = field(default=0.5, metadata={"help": "see dilation_bias", "min": 0})
    anneal_slope: float = field(default=10.0, metadata={"help": "resampling weights are raised to the power bias(train_frac, this) (multinerf)", "above": 0})
    resample_padding: float = field(default=0.0, metadata={"help": "added to the weights before resampling (0 in 360.gin)", "min": 0})
    # --- losses (Sec. 4, Eq. 13, 15) ---
    data_loss: Literal["auto", "charb", "mse"] = field(default="auto", metadata={"help": "data term on the NeRF level: charb (Charbonnier, the paper's, multinerf's 360.gin) or mse (multinerf's Blender configs); auto: charb under --recipe 360, mse under --recipe blender (see resolve_recipe: the Charbonnier loss drives a white-background scene to all white)"})
    charb_padding: float = field(default=0.001, metadata={"help": "epsilon of the Charbonnier data loss sqrt(x^2 + eps^2)", "above": 0})
    interlevel_loss_mult: float = field(default=1.0, metadata={"help": "weight of the proposal (interlevel) loss, Eq. 13", "min": 0})
    distortion_loss_mult: float = field(default=0.01, metadata={"help": "lambda of the distortion loss, Eq. 15", "min": 0})
    # --- optimisation ---
    batch_rays: int = field(default=PAPER_BATCH_RAYS, metadata={"help": "rays per iteration (paper: 16384). Linear scaling rule (multinerf's maintainers): if you divide the batch by k, multiply --iters and --lr_delay_steps by k and divide --lr and --lr_final by k; --linear_scaling does it for you", "min": 1})
    linear_scaling: bool = field(default=False, metadata={"help": "apply the linear scaling rule to iters, lr, lr_final and lr_delay_steps relative to the paper's 16384 rays"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate at the start (log-linear decay)", "above": 0})
    lr_final: float = field(default=2e-5, metadata={"help": "learning rate at the last iteration", "above": 0})
    lr_delay_steps: int = field(default=512, metadata={"help": "warm-up steps: lr is scaled by a sine ease-in from lr_delay_mult to 1", "min": 0})
    lr_delay_mult: float = field(default=0.01, metadata={"help": "lr scale at step 0", "min": 0, "max": 1})
    adam_eps: float = field(default=1e-6, metadata={"help": "Adam epsilon (multinerf: 1e-6)", "above": 0})
    grad_max_norm: float = field(default=1e-3, metadata={"help": "clip each MLP's gradient to this norm separately (0 = off)", "min": 0})
    chunk: int = field(default=4096, metadata={"help": "rays per forward pass when rendering whole images", "min": 1})
    mixed_precision: bool = field(default=False, metadata={"help": "fp16 autocast for the MLPs on a GPU only (sampling, CDFs and losses stay fp32). Off by default: multinerf trains in fp32, and this project has not measured a run with it on"})

    def check(self) -> None:
        """Settings that depend on each other, checked once after parsing (common/cli.py, parse_config)."""
        if self.near is not None and self.far is not None and not self.near < self.far:
            raise UserError(f"--near {self.near:g} --far {self.far:g}: the near plane must be closer than the far one")


# Presets: named sets of overrides. Explicit command-line values always win over a preset.
PRESETS = {
    "paper": {},
    # The method sized for a CPU: minutes per thousand steps rather than the paper's GPU-days (not timed yet at
    # these sizes). Departures and why: 1024 rays per step (the paper's 16384 are 16 times the work of a step),
    # MLPs of 6x128 (NeRF) and 2x64 (proposal), rounds of 32 and 32 proposal samples and 16 NeRF samples, a few
    # thousand steps; small networks tolerate, and need to learn in so few steps, a learning rate far above the
    # linear scaling rule's 2e-3 / 16; no gradient clipping (multinerf's bound of 1e-3 per MLP was chosen for its
    # 8x1024 network and 16384-ray batches, and we have not tuned one for these sizes). Whole views render 1024
    # rays at a time, not 4096: 8 lego 100x100 test views took 11.9 s instead of 13.5 s on 2 idle CPU cores.
    "cpu": dict(iters=4000, batch_rays=1024, chunk=1024, nerf_depth=6, nerf_width=128, prop_depth=2, prop_width=64,
                bottleneck_width=64, view_width=64, n_prop_samples=(32, 32), n_nerf_samples=16, lr=5e-3,
                lr_final=1e-4, lr_delay_steps=100, grad_max_norm=0.0, ckpt_every=1000, video_frames=40,
                log_every=50),
    # 800 steps: 29.0 dB / 0.925 on 4 test views of the built-in unbounded scene, 52 s of training on the idle 2-core
    # machine (benchmarks/results/quick-presets-cpu-amd-epyc-2026-12-03-2029.json). Departs further from the paper: IPE up
    # to 2^9 (max_deg_point 10), 24 + 24 proposal and 16 NeRF intervals, 4x96 and 2x32 MLPs.
    "quick": dict(iters=800, batch_rays=512, nerf_depth=4, nerf_width=96, prop_depth=2, prop_width=32,
                  bottleneck_width=48, view_width=48, max_deg_point=10, n_prop_samples=(24, 24),
                  n_nerf_samples=16, lr=6e-3, lr_final=3e-4, lr_delay_steps=50, grad_max_norm=0.0,
                  ckpt_every=600, video_frames=20, log_every=25, n_test_views=4),
}


# ================================================================================================
# Geometry: conical frustums as Gaussians, the contraction, and the integrated positional encoding
# ================================================================================================
def conical_frustum_to_gaussian(rays_d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, radii: torch.Tensor):
    """Mean and full covariance of the cone section between t0 and t1 (mip-NeRF Eq. 7, in the stable form of
    its code, with mu = (t0 + t1) / 2 and the half-width hw = (t1 - t0) / 2):
        t_mean = mu + 2 mu hw^2 / (3 mu^2 + hw^2)
        t_var  = hw^2 / 3 - (4 / 15) hw^4 (12 mu^2 - hw^2) / (3 mu^2 + hw^2)^2
        r_var  = r^2 (mu^2 / 4 + (5 / 12) hw^2 - (4 / 15) hw^4 / (3 mu^2 + hw^2))
        mean = t_mean d,  cov = t_var d d^T + r_var (I - d d^T / |d|^2)     (mip-NeRF Eq. 8, lifted to 3-D)
    r is the cone's radius at t = 1 (the pixel's); d is *not* normalised. 360 needs the full 3x3 covariance
    (not mip-NeRF's diagonal) because the contraction mixes the axes.
    rays_d: (R, 3); t0, t1: (R, S); radii: (R,). Returns mean (R, S, 3) relative to the ray origin, cov (R, S, 3, 3).
    """
    mu, hw = (t0 + t1) / 2, (t1 - t0) / 2  # (R, S)
    denom = 3 * mu**2 + hw**2
    t_mean = mu + 2 * mu * hw**2 / denom
    t_var = hw**2 / 3 - (4 / 15) * hw**4 * (12 * mu**2 - hw**2) / denom**2
    r_var = radii[:, None] ** 2 * (mu**2 / 4 + (5 / 12) * hw**2 - (4 / 15) * hw**4 / denom)  # (R, S)
    d_outer = rays_d[:, :, None] * rays_d[:, None, :]  # (R, 3, 3)
    eye = torch.eye(3, dtype=rays_d.dtype, device=rays_d.device)
    perp = eye - d_outer / (rays_d**2).sum(-1)[:, None, None]  # (R, 3, 3) projector orthogonal to d
    mean = t_mean[..., None] * rays_d[:, None, :]  # (R, S, 3)
    cov = t_var[..., None, None] * d_outer[:, None] + r_var[..., None, None] * perp[:, None]  # (R, S, 3, 3)
    return mean, cov


def contract(x: torch.Tensor) -> torch.Tensor:
    """Eq. 10: contract(x) = x if |x| <= 1, else (2 - 1 / |x|) x / |x|. Written as ((2 sqrt(m) - 1) / m) x with
    m = max(|x|^2, eps) as in multinerf: the clamp keeps the gradient finite at x = 0 (|x| has no gradient there).
    x: (..., 3) -> (..., 3), every output inside the ball of radius 2."""
    ### BEGIN SOLUTION
    m = (x**2).sum(-1, keepdim=True).clamp(min=NORM_EPS)  # (..., 1)
    return torch.where(m <= 1, x, (2 * torch.sqrt(m) - 1) / m * x)
    ### END SOLUTION


def inv_contract(z: torch.Tensor) -> torch.Tensor:
    """The inverse of Eq. 10 for |z| < 2: x = z / (2 |z| - |z|^2) outside the unit ball. z: (..., 3)."""
    m = (z**2).sum(-1, keepdim=True).clamp(min=NORM_EPS)
    return torch.where(m <= 1, z, z / (2 * torch.sqrt(m) - m))


def contract_jacobian(x: torch.Tensor) -> torch.Tensor:
    """d contract / dx. Inside the unit ball the identity; outside, with r = |x| and s(r) = (2r - 1) / r^2,
    contract(x) = s x and J = s I + x (grad s)^T = s I + 2 (1 - r) / r^4 x x^T.  x: (..., 3) -> (..., 3, 3)."""
    m = (x**2).sum(-1).clamp(min=NORM_EPS)[..., None, None]  # (..., 1, 1) = r^2
    r = torch.sqrt(m)
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    outside = (2 * r - 1) / m * eye + 2 * (1 - r) / m**2 * (x[..., :, None] * x[..., None, :])
    return torch.where(m <= 1, eye.expand_as(outside), outside)


def contract_gaussian(mean: torch.Tensor, cov: torch.Tensor):
    """Push a Gaussian through the contraction by linearising it at the mean (Sec. 2, as a Kalman filter does):
    mean' = contract(mean), cov' = J cov J^T with J the Jacobian at the mean (multinerf `track_linearize`).
    mean: (..., 3); cov: (..., 3, 3). Returns the same shapes."""
    J = contract_jacobian(mean)  # (..., 3, 3)
    return contract(mean), J @ cov @ J.transpose(-1, -2)


def integrated_pos_enc(mean: torch.Tensor, var: torch.Tensor, max_deg: int) -> torch.Tensor:
    """IPE (mip-NeRF Eq. 14): E[sin(2^l x)] for x ~ N(mean, var) is exp(-4^l var / 2) sin(2^l mean), per axis,
    for l = 0 .. max_deg - 1; cos as sin(. + pi/2). Frequencies finer than the Gaussian are damped away.
    We encode along the three axes (the diagonal of the covariance), as mip-NeRF does; multinerf's 360 config
    projects onto the 21 directions of a twice-subdivided icosahedron instead (a departure, for readability).
    mean, var: (..., 3) -> (..., 3 * 2 * max_deg)."""
    scales = 2.0 ** torch.arange(max_deg, dtype=mean.dtype, device=mean.device)  # (L,)
    y = (mean[..., None, :] * scales[:, None]).flatten(-2)  # (..., L*3)
    y_var = (var[..., None, :] * scales[:, None] ** 2).flatten(-2)  # (..., L*3)
    damping = torch.exp(-0.5 * torch.cat([y_var, y_var], dim=-1))
    return damping * torch.sin(torch.cat([y, y + 0.5 * math.pi], dim=-1))


def pos_enc(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """Plain positional encoding of view directions with the identity appended (multinerf deg_view = 4 -> 27-D),
    in 02's layout (x, every sine, then every cosine; 01_nerf.py interleaves sine and cosine per frequency).
    x: (..., 3) -> (..., 3 + 6 n_freqs)."""
    scales = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)
    y = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(y), torch.sin(y + 0.5 * math.pi)], dim=-1)


# ================================================================================================
# Ray distances in normalised disparity (Eq. 11)
# ================================================================================================
def t_to_s(t: torch.Tensor, near: float, far: float, disparity: bool = True) -> torch.Tensor:
    """Eq. 11 with g(t) = 1/t: s = (g(t) - g(t_n)) / (g(t_f) - g(t_n)), so s = 0 at near and 1 at far.
    disparity=False: g(t) = t, s linear in t (multinerf's Blender configs, which set no raydist_fn)."""
    if not disparity:
        return (t - near) / (far - near)
    return (1 / t - 1 / near) / (1 / far - 1 / near)


def s_to_t(s: torch.Tensor, near: float, far: float, disparity: bool = True) -> torch.Tensor:
    """The inverse of Eq. 11: t = 1 / (s / t_f + (1 - s) / t_n). Uniform steps in s are uniform in disparity 1/t:
    half of [0, 1] in s covers t from t_n to 2 t_n, the other half everything beyond (see the notebook's
    figure). disparity=False: t = t_n + s (t_f - t_n)."""
    if not disparity:
        return near + s * (far - near)
    return 1 / (s / far + (1 - s) / near)


# The two ways 03 lays rays through a scene (--recipe). RECIPE_360 is the paper's; the Blender one is what
# multinerf's configs/blender_256.gin does for an object over a white background.
RECIPE_360_NEAR, RECIPE_360_FAR = 0.2, 1e6


def resolve_recipe(cfg: Config, scene) -> Config:
    """cfg with --recipe auto and --data_loss auto replaced by what suits `scene`, and near/far filled in where
    left unset.

    Why a second recipe. An object-centred capture over a white background (lego: cameras at radius 4, the
    object inside radius 1.5, white around it on most pixels) trained with the 360 recipe and its Charbonnier
    loss renders white only: 9.7 dB on lego's test views, the score of a white image. The cause is the loss.
    The Charbonnier loss is an L1 in effect (its gradient has the same size however small the error), and the
    constant that minimises an L1 over a set of pixels is their *median*, here white, where the mean that MSE
    settles on is a grey that still depends on the object. Before the model can tell rays apart, every step
    pushes towards white; within 20 steps the colour head's sigmoid inputs pass 30 (and reach the hundreds), its
    gradient is zero in float32, the density collapses or stops mattering, and nothing can bring the object
    back. (Measured on lego at 100x100 with the quick preset: Charbonnier dies under both recipes, even at
    --lr 1e-3; MSE reaches 18-19 dB in 100 steps under both; see tests/scripts/test_03_mipnerf360.py.)
    multinerf trains Blender scenes with configs/blender_256.gin, not 360.gin: data_loss_type 'mse', near 2,
    far 6, no ray-distance warp (s linear in t), no contraction (no warp_fn), and a white background
    composited where the weights sum below 1 (bg_intensity_range (1, 1), opaque_background False). That is
    our Blender recipe; the contraction is not needed there, since between near 2 and far 6 every sample lies
    within a bounded box around the object. (blender_256.gin also turns the distortion loss off and uses one
    proposal round of 128 samples; here those stay what --distortion_loss_mult and --n_prop_samples say.)
    """
    recipe = cfg.recipe
    if recipe == "auto":
        recipe = "blender" if scene.white_background else "360"
    if recipe == "blender":
        near = scene.near if cfg.near is None else cfg.near
        far = scene.far if cfg.far is None else cfg.far
    else:
        near = RECIPE_360_NEAR if cfg.near is None else cfg.near
        far = RECIPE_360_FAR if cfg.far is None else cfg.far
    if not near < far:
        raise UserError(f"--near {near:g} --far {far:g} (with the scene's bounds where unset): the near plane must "
                        f"be closer than the far one")
    data_loss = cfg.data_loss if cfg.data_loss != "auto" else ("mse" if recipe == "blender" else "charb")
    return dataclasses.replace(cfg, recipe=recipe, near=near, far=far, data_loss=data_loss)


def ray_geometry(cfg: Config) -> tuple[bool, float, float]:
    """(is the 360 recipe, near, far) of a cfg; an unresolved cfg (recipe auto, near/far unset) is the 360
    recipe with the paper's near 0.2 and far 1e6."""
    is_360 = cfg.recipe != "blender"
    near = cfg.near if cfg.near is not None else RECIPE_360_NEAR
    far = cfg.far if cfg.far is not None else RECIPE_360_FAR
    return is_360, near, far


# ================================================================================================
# Model: one MLP class for the proposal MLP (density only) and the NeRF MLP
# ================================================================================================
class MipMLP(nn.Module):
    """IPE of the contracted Gaussian -> ReLU trunk (the input concatenated again after layer `skip_layer`) ->
    density softplus(raw - 1); with rgb, a bottleneck joined with the view-direction encoding -> one layer ->
    sigmoid colour, widened by rgb_padding = 0.001 (multinerf MLP). He-uniform initialisation (multinerf)."""

    def __init__(self, depth: int, width: int, cfg: Config, with_rgb: bool):
        super().__init__()
        in_dim = 3 * 2 * cfg.max_deg_point
        self.max_deg, self.deg_view, self.skip_layer, self.with_rgb = cfg.max_deg_point, cfg.deg_view, cfg.skip_layer, with_rgb
        self.trunk = nn.ModuleList()
        for i in range(depth):
            fan_in = in_dim if i == 0 else width + (in_dim if (i - 1) % cfg.skip_layer == 0 and i > 1 else 0)
            self.trunk.append(nn.Linear(fan_in, width))
        skip_at_end = (depth - 1) % cfg.skip_layer == 0 and depth > 1  # the input joins the trunk's output too
        out_dim = width + (in_dim if skip_at_end else 0)
        self.density_head = nn.Linear(out_dim, 1)
        if with_rgb:
            self.bottleneck = nn.Linear(out_dim, cfg.bottleneck_width)
            self.view_layer = nn.Linear(cfg.bottleneck_width + 3 + 6 * cfg.deg_view, cfg.view_width)
            self.rgb_head = nn.Linear(cfg.view_width, 3)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, mean: torch.Tensor, var: torch.Tensor, viewdirs: torch.Tensor | None = None):
        """mean, var: (N, 3) contracted Gaussians (var = the diagonal of the covariance); viewdirs: (N, 3) unit.
        Returns density (N,) >= 0 and rgb (N, 3) in [-0.001, 1.001] (None without rgb)."""
        x = integrated_pos_enc(mean, var, self.max_deg)  # (N, 6 L)
        h = x
        for i, layer in enumerate(self.trunk):
            h = F.relu(layer(h), inplace=True)  # in place: no second copy of each output (01's trunk: 27% less time on 2 CPU cores)
            if i % self.skip_layer == 0 and i > 0:
                h = torch.cat([h, x], dim=-1)
        density = F.softplus(self.density_head(h).squeeze(-1) - 1.0)  # (N,): density_bias = -1
        if not self.with_rgb:
            return density, None
        h = torch.cat([self.bottleneck(h), pos_enc(viewdirs, self.deg_view)], dim=-1)
        rgb = torch.sigmoid(self.rgb_head(F.relu(self.view_layer(h))))  # (N, 3)
        return density, rgb * (1 + 2 * 0.001) - 0.001  # rgb_padding: lets the sigmoid reach 0 and 1


# ================================================================================================
# Resampling from the proposal histogram (multinerf stepfun.py)
# ================================================================================================
def max_dilate_weights(sdist: torch.Tensor, weights: torch.Tensor, dilation: float):
    """Widen a histogram: every interval [s_i, s_{i+1}] grows by `dilation` on both sides and the density
    (weight / width) at each s becomes the max over the grown intervals that cover it; then back to weights,
    renormalised to sum 1 (multinerf `max_dilate_weights`). It keeps the next round from missing a surface
    that the proposal put just beside its own samples. Returns the first and last ends dropped, as multinerf
    does (they are zero-width intervals at the clipped domain ends).
    sdist: (R, S+1) in [0, 1]; weights: (R, S). Returns sdist (R, 3S - 1), weights (R, 3S - 2)."""
    widths = sdist[:, 1:] - sdist[:, :-1]  # (R, S)
    pdf = torch.where(widths > 0, weights / widths.clamp(min=NORM_EPS), torch.zeros_like(weights))
    s0, s1 = sdist[:, :-1] - dilation, sdist[:, 1:] + dilation  # (R, S) grown intervals
    s_dilated = torch.sort(torch.cat([sdist, s0, s1], dim=-1), dim=-1).values.clamp(0.0, 1.0)  # (R, 3S+1)
    covers = (s0[:, None, :] <= s_dilated[:, :, None]) & (s1[:, None, :] > s_dilated[:, :, None])  # (R, 3S+1, S)
    pdf_dilated = torch.where(covers, pdf[:, None, :], torch.zeros_like(covers, dtype=pdf.dtype)).amax(-1)[:, :-1]
    w = pdf_dilated * (s_dilated[:, 1:] - s_dilated[:, :-1])  # (R, 3S)
    w = w / w.sum(-1, keepdim=True).clamp(min=NORM_EPS)
    return s_dilated[:, 1:-1], w[:, 1:-1]


def anneal_power(train_frac: float, slope: float) -> float:
    """Schlick's bias curve bias(x, s) = s x / ((s - 1) x + 1): 0 at the start, 1 at the end, 0.53 at 10% for
    s = 10. The resampling histogram is w^this: flat early (explore the whole ray), sharp later (multinerf)."""
    return slope * train_frac / ((slope - 1) * train_frac + 1)


def sample_intervals(sdist: torch.Tensor, logits: torch.Tensor, n: int, perturb: bool,
                     generator: torch.Generator | None, backend: str = "torch") -> torch.Tensor:
    """Draw n interval *centres* from the histogram softmax(logits) over [s_i, s_{i+1}] by inverting its
    piecewise-linear CDF, then return the n + 1 interval ends: midpoints between centres, the first and last
    end reflected about the first and last centre, clipped to [0, 1] (multinerf `sample_intervals`).
    Training draws u on a regular grid shifted by one jitter per ray; evaluation uses the stratum centres.
    backend "cuda" / "emulated" inverts the CDF with kernels/sampling.cu (one thread per ray walks bins and u
    together; the same numbers as `interp` here, tested equal); "torch" uses `interp` below.
    sdist: (R, S+1); logits: (R, S). Returns (R, n+1), sorted."""
    R = sdist.shape[0]
    w = torch.softmax(logits, dim=-1)  # (R, S)
    cdf = torch.cat([torch.zeros_like(w[:, :1]), torch.cumsum(w[:, :-1], -1).clamp(max=1), torch.ones_like(w[:, :1])], -1)
    eps = torch.finfo(sdist.dtype).eps
    if perturb:
        u_max = eps + (1 - eps) / n
        max_jitter = (1 - u_max) / (n - 1) - eps
        jitter = torch.rand(R, 1, generator=generator, device="cpu").to(sdist.device) * max_jitter
        u = torch.linspace(0, 1 - u_max, n, device=sdist.device) + jitter  # (R, n)
    else:
        pad = 1 / (2 * n)
        u = torch.linspace(pad, 1 - pad - eps, n, device=sdist.device).expand(R, n)
    if backend == "torch":
        centres = interp(u.contiguous(), cdf, sdist)  # (R, n)
    else:  # the same inverse CDF of the histogram w (no padding: softmax already sums to 1)
        centres = invert_cdf(sdist.detach().float(), w.detach().float(), u.float(), backend, padding=0.0)
    mid = (centres[:, 1:] + centres[:, :-1]) / 2
    first, last = 2 * centres[:, :1] - mid[:, :1], 2 * centres[:, -1:] - mid[:, -1:]
    return torch.cat([first, mid, last], dim=-1).clamp(0.0, 1.0)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, row by row (numpy.interp per ray); xp sorted.
    x: (R, n); xp, fp: (R, K). Returns (R, n)."""
    hi = torch.searchsorted(xp.contiguous(), x, right=True).clamp(1, xp.shape[-1] - 1)
    lo = hi - 1
    x0, x1, f0, f1 = xp.gather(-1, lo), xp.gather(-1, hi), fp.gather(-1, lo), fp.gather(-1, hi)
    frac = ((x - x0) / (x1 - x0).clamp(min=NORM_EPS)).clamp(0.0, 1.0)
    return f0 + frac * (f1 - f0)


# ================================================================================================
# Losses: interlevel (Eq. 13), distortion (Eq. 15), Charbonnier data term
# ================================================================================================
def outer_measure(s: torch.Tensor, s_env: torch.Tensor, w_env: torch.Tensor) -> torch.Tensor:
    """Eq. 12: bound(s_i, s_{i+1}) = sum of the envelope weights of every envelope interval that overlaps
    [s_i, s_{i+1}], read off the envelope's cumulative sum (multinerf `inner_outer`).
    s: (R, S+1) NeRF interval ends; s_env: (R, P+1), w_env: (R, P) the proposal histogram. Returns (R, S)."""
    cum = torch.cat([torch.zeros_like(w_env[:, :1]), torch.cumsum(w_env, -1)], dim=-1)  # (R, P+1)
    idx = torch.searchsorted(s_env.contiguous(), s.contiguous(), right=True)  # first end > s
    idx_hi = idx.clamp(max=s_env.shape[-1] - 1)
    idx_lo = (idx - 1).clamp(min=0)  # last end <= s
    return cum.gather(-1, idx_hi[:, 1:]) - cum.gather(-1, idx_lo[:, :-1])


def interlevel_loss(s: torch.Tensor, w: torch.Tensor, s_prop: torch.Tensor, w_prop: torch.Tensor) -> torch.Tensor:
    """Eq. 13: L_prop = sum_i max(0, w_i - bound_i)^2 / w_i: the proposal histogram must envelop the NeRF
    weights. The paper sums over a ray's intervals; multinerf (`lossfun_outer`, and this function) takes the
    mean over rays and intervals, i.e. the paper's sum divided by the number of NeRF intervals, a constant
    factor that --interlevel_loss_mult absorbs. The NeRF side is detached, so this loss trains only the proposal
    MLP (the paper's stop-gradient).
    s, w: (R, S+1), (R, S) of the NeRF level; s_prop, w_prop: of one proposal round. Returns a scalar."""
    s, w = s.detach(), w.detach()
    bound = outer_measure(s, s_prop, w_prop)  # (R, S)
    return (torch.clamp(w - bound, min=0) ** 2 / (w + torch.finfo(w.dtype).eps)).mean()


def distortion_loss(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 15: L_dist = sum_ij w_i w_j |m_i - m_j| + (1/3) sum_i w_i^2 (s_{i+1} - s_i), m_i interval midpoints
    in s, in linear time: with the midpoints sorted, sum_ij w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_i - M_i)
    where W_i = sum_{j<i} w_j and M_i = sum_{j<i} w_j m_j (DVGO v2's trick; the tests check it against the
    quadratic definition). s: (R, S+1); w: (R, S). Returns (R,)."""
    ### BEGIN SOLUTION
    m = (s[:, 1:] + s[:, :-1]) / 2  # (R, S)
    W = torch.cumsum(w, -1) - w  # (R, S) exclusive prefix sums
    M = torch.cumsum(w * m, -1) - w * m
    inter = 2 * (w * (m * W - M)).sum(-1)
    intra = (w**2 * (s[:, 1:] - s[:, :-1])).sum(-1) / 3
    return inter + intra
    ### END SOLUTION


def charbonnier(x: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """sqrt((x - target)^2 + eps^2), a smooth L1 (Sec. 4). Mean over everything."""
    return torch.sqrt((x - target) ** 2 + eps**2).mean()


# ================================================================================================
# Rendering: proposal rounds, then the NeRF MLP
# ================================================================================================
def alpha_weights(density: torch.Tensor, tdist: torch.Tensor, rays_d: torch.Tensor, opaque: bool = True) -> torch.Tensor:
    """Volume rendering weights w_i = T_i (1 - exp(-sigma_i delta_i)) (NeRF Eq. 3) with delta_i = (t_{i+1} - t_i)|d|.
    opaque (the 360 recipe): the last interval is opaque (its sigma delta set to infinity, multinerf
    `opaque_background`): every ray's weights sum to exactly 1, the last interval stands for everything beyond.
    Otherwise (the Blender recipe) the weights sum to at most 1 and the background fills the rest.
    density: (R, S); tdist: (R, S+1)."""
    sigma_delta = density * (tdist[:, 1:] - tdist[:, :-1]) * rays_d.norm(dim=-1, keepdim=True)  # (R, S)
    if opaque:
        sigma_delta = torch.cat([sigma_delta[:, :-1], torch.full_like(sigma_delta[:, -1:], math.inf)], dim=-1)
    alpha = 1 - torch.exp(-sigma_delta)
    trans = torch.exp(-torch.cat([torch.zeros_like(sigma_delta[:, :1]), torch.cumsum(sigma_delta[:, :-1], -1)], -1))
    return alpha * trans  # (R, S)


def pixel_radii(K: torch.Tensor) -> float:
    """Radius at t = 1 of the cone through a pixel: the pixel's width in the z = -1 plane, 0.5 (1/fx + 1/fy),
    times 2/sqrt(12) (mip-NeRF: the Gaussian then has the variance of a uniform distribution over the pixel)."""
    return float(0.5 * (1 / K[0, 0] + 1 / K[1, 1]) * 2 / math.sqrt(12))


def render_rays(prop_mlp: MipMLP, nerf_mlp: MipMLP, rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float,
                cfg: Config, train_frac: float, perturb: bool, generator: torch.Generator | None = None,
                backend: str = "torch", background: float = 1.0) -> dict:
    """From rays (R, 3) to colours (Sec. 3). Start from one interval s in [0, 1] with weight 1; each round dilates
    the previous histogram, anneals it, draws new intervals from it (no gradient through their ends), casts
    their Gaussians, contracts them (the 360 recipe) and queries an MLP; the proposal MLP for the rounds of
    n_prop_samples, the NeRF MLP for the last. cfg as resolved by `resolve_recipe`; background: the grey level
    composited where the weights sum below 1 (Blender recipe only). Returns rgb (R, 3), depth (R,),
    opacity (R,) and the (s, weights) of every round in "levels" for the losses."""
    is_360, near, far = ray_geometry(cfg)
    R = rays_o.shape[0]
    viewdirs = F.normalize(rays_d, dim=-1)
    radii = torch.full((R,), radius, device=rays_o.device)
    sdist = torch.tensor([0.0, 1.0], device=rays_o.device).expand(R, 2)
    weights = torch.ones(R, 1, device=rays_o.device)
    counts = list(cfg.n_prop_samples) + [cfg.n_nerf_samples]
    use_amp = cfg.mixed_precision and rays_o.is_cuda
    levels = []
    for level, n in enumerate(counts):
        is_nerf = level == len(counts) - 1
        if level > 0:  # dilation shrinks as the histogram sharpens over the rounds (multinerf)
            dilation = cfg.dilation_bias + cfg.dilation_multiplier / math.prod(counts[:level])
            sdist, weights = max_dilate_weights(sdist, weights, dilation)
        # Anneal the histogram, w^p; zero-width intervals get no samples. multinerf marks zero-weight intervals
        # with log(0) = -inf too; here they get log(NORM_EPS) instead, as good as no samples when some interval
        # has weight, and an even spread (not a NaN from a softmax of only -inf) on a ray whose weights are all
        # 0, which the Blender recipe has (empty space, no opaque last interval).
        usable = sdist[:, 1:] > sdist[:, :-1]
        logits = anneal_power(train_frac, cfg.anneal_slope) * torch.log((weights + cfg.resample_padding).clamp(min=NORM_EPS))
        logits = torch.where(usable, logits, torch.full_like(logits, -math.inf))
        sdist = sample_intervals(sdist, logits, n, perturb, generator, backend).detach()  # (R, n+1), stop-gradient
        tdist = s_to_t(sdist, near, far, disparity=is_360)  # (R, n+1) metric distances
        mean, cov = conical_frustum_to_gaussian(rays_d, tdist[:, :-1], tdist[:, 1:], radii)  # (R,n,3), (R,n,3,3)
        mean = rays_o[:, None, :] + mean
        if is_360:
            mean, cov = contract_gaussian(mean, cov)
        var = torch.diagonal(cov, dim1=-2, dim2=-1)  # (R, n, 3)
        mlp = nerf_mlp if is_nerf else prop_mlp
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):  # MLPs only; the rest stays fp32
            density, rgb = mlp(mean.reshape(-1, 3), var.reshape(-1, 3),
                               viewdirs[:, None, :].expand(R, n, 3).reshape(-1, 3) if is_nerf else None)
        weights = alpha_weights(density.float().view(R, n), tdist, rays_d, opaque=is_360)  # (R, n)
        levels.append((sdist, weights))
    opacity = weights.sum(-1)  # (R,): exactly 1 under the 360 recipe (opaque last interval)
    rgb = (weights[..., None] * rgb.float().view(R, n, 3)).sum(1)  # (R, 3)
    if not is_360:
        rgb = rgb + (1 - opacity[:, None]) * background
    # Depth: the expected s (over the weights, renormalised) converted back to t (a mean of t would be dominated
    # by the last, huge interval of the 360 recipe).
    s_mean = (weights * (sdist[:, 1:] + sdist[:, :-1]) / 2).sum(-1) / opacity.clamp(min=NORM_EPS)
    return dict(rgb=rgb, depth=s_to_t(s_mean.clamp(0.0, 1.0), near, far, disparity=is_360), opacity=opacity,
                levels=levels)


# ================================================================================================
# Training loop
# ================================================================================================
def train_progress(cfg: Config, step: int, elapsed_s: float = 0.0, total: int | None = None) -> float:
    """Fraction of training done, in [0, 1]: step / total (default cfg.iters), or the fraction of the time budget
    spent if that is further along."""
    progress = step / max(cfg.iters if total is None else total, 1)
    if cfg.time_budget_s > 0:
        progress = max(progress, elapsed_s / cfg.time_budget_s)
    return min(progress, 1.0)


def learning_rate(cfg: Config, step: int, elapsed_s: float = 0.0) -> float:
    """Log-linear decay from lr to lr_final, times the warm-up lr_delay_mult + (1 - lr_delay_mult)
    sin(pi/2 clip(step / lr_delay_steps, 0, 1)) (mip-NeRF / multinerf `learning_rate_decay`)."""
    p = train_progress(cfg, step, elapsed_s)
    delay = cfg.lr_delay_mult + (1 - cfg.lr_delay_mult) * math.sin(0.5 * math.pi * min(max(step / max(cfg.lr_delay_steps, 1), 0.0), 1.0))
    return delay * math.exp(math.log(cfg.lr) * (1 - p) + math.log(cfg.lr_final) * p)


def apply_linear_scaling(cfg: Config) -> Config:
    """The linear scaling rule for a batch k times smaller than the paper's: k times the steps (and warm-up),
    the learning rates divided by k."""
    k = PAPER_BATCH_RAYS / cfg.batch_rays
    return dataclasses.replace(cfg, iters=round(cfg.iters * k), lr_delay_steps=round(cfg.lr_delay_steps * k),
                               lr=cfg.lr / k, lr_final=cfg.lr_final / k, linear_scaling=False)


def compute_losses(out: dict, target: torch.Tensor, cfg: Config, backend: str = "torch") -> dict:
    """The data term (Charbonnier, or MSE: --data_loss) on the NeRF level's colour, + interlevel (Eq. 13) for every proposal round against the NeRF
    weights, + distortion (Eq. 15) on the NeRF level, in s. backend "cuda" / "emulated" computes the distortion
    loss with kernels/distortion_loss.cu (the same numbers as `distortion_loss` above, tested equal)."""
    s_nerf, w_nerf = out["levels"][-1]
    if cfg.data_loss == "mse":
        data = F.mse_loss(out["rgb"], target)
    else:  # "charb", and "auto" before resolve_recipe (the paper's)
        data = charbonnier(out["rgb"], target, cfg.charb_padding)
    prop = sum(interlevel_loss(s_nerf, w_nerf, s, w) for s, w in out["levels"][:-1])
    dist = (distortion_loss(s_nerf, w_nerf) if backend == "torch" else distortion_loss_kernel(s_nerf, w_nerf, backend)).mean()
    total = data + cfg.interlevel_loss_mult * prop + cfg.distortion_loss_mult * dist
    return dict(loss=total, data=data, interlevel=prop, distortion=dist)


def train(cfg: Config) -> dict:
    """Train the proposal and NeRF MLPs; evaluate on the test split; write pictures and videos. Returns the metrics."""
    device = resolve_device(cfg.device)
    backend = resolve_backend(cfg.backend, device)  # resampling and distortion-loss kernels; the rest is PyTorch
    seed_everything(cfg.seed)
    if (Path(cfg.scene) / "poses_bounds.npy").is_file():
        # Every poses_bounds.npy capture is read as a 360 capture (PCA-normalised poses, no NDC), forward-facing
        # LLFF ones too: 03 has no NDC path (02 has). multinerf reads 360 captures at 1/4 size (factor 4); a
        # full-size capture is tens of GB as float32, so that is the default here too unless --downscale is given.
        downscale = cfg.downscale if "downscale" in (cfg.cli_options or ()) else 4
        scene = load_llff360(cfg.scene, downscale=downscale)
    else:
        scene = load_scene(cfg.scene, cfg.datadir, downscale=cfg.downscale, gt_protocol=cfg.gt_protocol)
    cfg = resolve_recipe(cfg, scene)
    print(f"recipe {cfg.recipe}: near {cfg.near:g}, far {cfg.far:g}"
          + (", s in disparity, contraction, opaque last interval" if cfg.recipe == "360"
             else ", s linear in t, no contraction, background composited") + f"; data loss {cfg.data_loss}")
    train_split = scene.splits["train"]
    # What RGBA targets are composited on: under the 360 recipe the opaque last interval learns it, under the
    # Blender recipe render_rays composites it.
    background = scene.background
    radius = pixel_radii(train_split.cameras.K[0])

    prop_mlp = MipMLP(cfg.prop_depth, cfg.prop_width, cfg, with_rgb=False).to(device)
    nerf_mlp = MipMLP(cfg.nerf_depth, cfg.nerf_width, cfg, with_rgb=True).to(device)
    params = list(prop_mlp.parameters()) + list(nerf_mlp.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision and device.type == "cuda")
    generator = torch.Generator().manual_seed(cfg.seed)  # CPU generator: the same rays on every device
    render_fn = make_image_renderer(prop_mlp, nerf_mlp, radius, cfg, device, backend, background)

    def save_state() -> dict:
        return dict(prop_mlp=prop_mlp.state_dict(), nerf_mlp=nerf_mlp.state_dict(), optimizer=optimizer.state_dict(),
                    generator=generator.get_state())

    def load_state(state: dict) -> None:
        prop_mlp.load_state_dict(state["prop_mlp"])
        nerf_mlp.load_state_dict(state["nerf_mlp"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])

    def validate() -> float:
        return evaluate_split(render_fn, scene.splits["val"], None, n_views=1, background=background,
                              progress=False)["mean_psnr"]

    # Resume, logging, held-out checks, checkpoints, time budget, Ctrl-C: common/training.py, TrainingRun.
    with TrainingRun(cfg, "03_mipnerf360", scene, device, backend, save_state, load_state, validate,
                     render=render_fn) as run:
        def training_step(step: int) -> None:  # one step of the loop below
            rays_o, rays_d, target = sample_ray_batch(train_split, cfg.batch_rays, generator)
            rays_o, rays_d, target = rays_o.to(device), rays_d.to(device), target.to(device)
            target_rgb = composite_on_background(target, background)

            # multinerf's train_frac = (step - 1) / (max_steps - 1): 0 at the first step, 1 at the last.
            train_frac = train_progress(cfg, step - 1, run.elapsed(), cfg.iters - 1)
            out = render_rays(prop_mlp, nerf_mlp, rays_o, rays_d, radius, cfg, train_frac, perturb=True,
                              generator=generator, backend=backend, background=background)
            losses = compute_losses(out, target_rgb, cfg, backend)

            lr = learning_rate(cfg, step, run.elapsed())
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            # A NaN or infinite loss or gradient stops the run here, naming the step. (multinerf instead zeroes
            # non-finite gradients with nan_to_num; we would rather know.)
            check_finite(step, losses["loss"], params, lr=lr, scaler=scaler)
            scaler.unscale_(optimizer)
            if cfg.grad_max_norm > 0:  # each MLP clipped on its own (multinerf)
                torch.nn.utils.clip_grad_norm_(prop_mlp.parameters(), cfg.grad_max_norm)
                torch.nn.utils.clip_grad_norm_(nerf_mlp.parameters(), cfg.grad_max_norm)
            scaler.step(optimizer)
            scaler.update()
            run.log(step, loss=losses["loss"].item(), psnr=mse_to_psnr(F.mse_loss(out["rgb"].detach(), target_rgb).item()),
                    lr=lr)

        for step in run.steps():  # a GPU out-of-memory error halves the rays per step and runs the step again
            run.train_step(training_step, step, optimizer)

    metrics = final_evaluation(render_fn, scene, cfg.outdir, cfg.n_test_views, 0, background,
                               camera_path=cfg.camera_path, iters=run.step, backend=backend, device=str(device),
                               preset=cfg.preset, gt_protocol=cfg.gt_protocol, dead_model_check=cfg.dead_model_check,
                               lpips_weights=cfg.lpips_weights)
    if cfg.video_frames > 0:  # an orbit and a spiral, each in colour and depth
        videos = render_videos(render_fn, scene, Path(cfg.outdir), cfg.video_frames)
        print("videos: " + ", ".join(str(v) for v in videos))
    return metrics


# ================================================================================================
# Evaluation helpers (thin: the work is in common/evaluation.py)
# ================================================================================================
def make_image_renderer(prop_mlp, nerf_mlp, radius: float, cfg: Config, device, backend: str = "torch",
                        background: float = 1.0):
    """A function (rays_o, rays_d) -> {'rgb', 'depth', 'opacity'} for whole images: deterministic samples, and
    the annealing finished (train_frac = 1). cfg as resolved by `resolve_recipe`."""

    @torch.no_grad()
    def render_fn(rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict[str, torch.Tensor]:
        out = render_rays(prop_mlp, nerf_mlp, rays_o.to(device), rays_d.to(device), radius, cfg, 1.0, perturb=False,
                          backend=backend, background=background)
        return {key: out[key].cpu() for key in ("rgb", "depth", "opacity")}

    render_fn.chunk = cfg.chunk
    return render_fn


def render_videos(render_fn, scene, outdir: Path, n_frames: int, fps: int = 24) -> list[Path]:
    """An orbit around the point the training cameras look at (along the arc they cover, for a capture of one
    side: common/paths.py, orbit_path), and a spiral around their average pose, each as
    a colour and a depth video. Depth is coloured by disparity (1 / depth) between the 2nd and 98th percentile of
    each path's first frame, near in dark blue and far in red (turbo), so that the distant background shows as
    far rather than saturating a depth scale that reaches to the far plane."""
    cams = scene.splits["train"].cameras
    written = []
    for name, poses in (("orbit", orbit_path(cams.c2w, n_frames)),
                        ("spiral", spiral_path(cams.c2w, focus_depth=_focus_distance(cams.c2w), n_frames=n_frames))):
        frames = [render_view(render_fn, cams.K[0], c2w, cams.height, cams.width) for c2w in poses]
        disparity = [1 / f["depth"].clamp(min=NORM_EPS) for f in frames]
        lo, hi = torch.quantile(disparity[0].flatten(), torch.tensor([0.02, 0.98])).tolist()
        rgb = torch.stack([f["rgb"].clamp(0, 1) for f in frames]).numpy()
        depth = torch.stack([torch.as_tensor(colorize_depth(hi - d, 0.0, hi - lo)) for d in disparity]).numpy()
        written.append(write_video(outdir / f"video_{name}_rgb.mp4", (rgb * 255).astype("uint8"), fps=fps))
        written.append(write_video(outdir / f"video_{name}_depth.mp4", (depth * 255).astype("uint8"), fps=fps))
    return written


def _focus_distance(c2w: torch.Tensor) -> float:
    """Mean distance from the cameras to the point their optical axes pass closest to (the spiral's focus)."""
    return float((c2w[:, :3, 3] - focus_point(c2w)).norm(dim=-1).mean())


# ================================================================================================
# main
# ================================================================================================
def main(argv=None) -> dict:
    cfg = parse_config(Config, argv, presets=PRESETS)
    if cfg.linear_scaling:
        cfg = apply_linear_scaling(cfg)
    # The run folder checked; with --resume or --render_only, the settings of the checkpoint being continued.
    cfg = prepare_run(cfg, "03_mipnerf360", required_keys=("prop_mlp", "nerf_mlp"))
    # The folder is this run's until its last file is written (test renders, videos, mesh), not only while it trains.
    with RunFolder(cfg.outdir):
        return train(cfg)


if __name__ == "__main__":
    run_main(main)
