"""05 - Instant-NeuS: surfaces, not clouds. NeuS on a hash grid, with the speed-ups of Instant-NeuS.

NeuS: Wang, Liu, Liu, Theobalt, Komura, Wang. NeurIPS 2021. https://arxiv.org/abs/2106.10689
Hash grid and occupancy grid: Instant-NGP (Müller et al. 2022), as in 04_hashnerf.py.
Speed-ups: Instant-NSR / instant-nsr-pl and the Jittor Instant-NeuS entry (numerical gradients, visual hull,
progressive levels, post decoding, curvature loss, bounding-box estimation).

What is new relative to 04_hashnerf.py:
  * the field is a signed distance f(x) (negative inside), not a density: the surface is its zero level set,
    so a mesh comes out of marching cubes with no threshold to tune;
  * volume rendering turns the SDF into opacity with the logistic CDF Phi_s of a learned sharpness s, using the
    SDF at both ends of each interval (NeuS Eq. 13): the weights peak on the surface (unbiased) and the
    sharpness grows as training goes;
  * an eikonal loss keeps |grad f| = 1, with gradients by central differences (6 extra queries per sample);
  * the occupancy grid's test is the NeuS opacity of a cell, and before training the grid is carved with the
    masks of every view (the visual hull).
Read it top to bottom: Config, the field, NeuS opacity, rendering, losses, the training loop, meshes, main.
Glossary of shapes: R rays, N packed samples, L levels, F features per level, G geometry features, V vertices.

Frames: the field lives in a *unit frame* where the scene box is [-1, 1]^3 (instant-nsr-pl's radius 1); rays
are moved into it at the start of `render_rays` (x_unit = (x - centre) / half_size), and meshes are moved back.
For NeuS/DTU data the scene frame is already the unit sphere of cameras_sphere.npz (common/data/dtu.py), and meshes
go on to world units with its scale_mat.

    python 05_instant_neus.py                                  # built-in scene (CPU preset on a CPU)
    python 05_instant_neus.py --quick                          # 84 s on 2 cores; 26.6 dB, Chamfer 0.3% of the diagonal
    python 05_instant_neus.py --scene ../shared/data/dtu_scan24 --downscale 8   # DTU, NeuS layout
    python 05_instant_neus.py --scene <folder> --calc_bbox     # print the object's box for --bbox
    python 05_instant_neus.py --outdir runs/x --export_mesh --mesh_resolution 512  # mesh of a run's checkpoint
"""
from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import RunConfig, parse_config, resolve_device, run_main
from common.data.load import load_scene
from common.data.scene import background_color, composite_on_background
from common.errors import UserError
from common.evaluation import check_model_learned, evaluate_split, final_evaluation, render_view
from common.mesh import marching_cubes, sample_grid, write_ply
from common.metrics import chamfer_distance, mse_to_psnr, sample_mesh_surface
from common.numerics import safe_normalize
from common.paths import default_video_path
from common.rays import sample_ray_batch
from common.run_folder import RunFolder
from common.training import TrainingRun, check_finite, prepare_run, seed_everything, write_json
from common.video import save_image, write_video
from common.visual_hull import carve_grid, hull_bbox
from kernels import ray_indices_from_counts
from kernels.backend import auto_backend_note, resolve_backend
from kernels.compositing import composite
from kernels.hash_encoding import HashEncoding, hash_encode
from kernels.ray_marching import OccupancyGrid, cell_indices_of, march_rays, pack_bitfield

# From 04: the direction encoding (real spherical harmonics up to degree 3) and the occupancy-grid policy (which
# cells, decay, threshold, warm-up), reused rather than copied.
_hashnerf = importlib.import_module("04_hashnerf")
spherical_harmonics, update_occupancy_grid = _hashnerf.spherical_harmonics, _hashnerf.update_occupancy_grid

# NeuS adds 1e-5 to the numerator and denominator of its opacity (renderer.py), so that the ratio stays defined
# where Phi_s of the interval's start underflows to 0 (deep inside the object, where alpha then tends to 1).
NEUS_ALPHA_EPS = 1e-5
# Opacity is clipped away from 0 and 1 before the mask's binary cross-entropy (instant-nsr-pl, NeuS): log(0).
MASK_BCE_CLIP = 1e-3
# Post decoding divides the composited features by the opacity; nearly empty rays would blow them up.
POST_DECODING_MIN_OPACITY = 1e-3
# alpha -> the density of the compositing kernel: -log(1 - alpha) / delta is infinite at alpha = 1.
MAX_ALPHA = 1.0 - 1e-6


# ================================================================================================
# Config
# ================================================================================================
SCENE_LAYOUTS = ("object",)  # the captures this lesson suits (one surface inside the unit sphere, the background masked); common/data/load.py warns on others

@dataclass
class Config(RunConfig):
    """Instant-NeuS: NeuS (Wang et al. 2021) on a hash grid. Defaults follow instant-nsr-pl / Jittor Instant-NeuS;
    presets (PRESETS) size it for a CPU."""

    iters: int = field(default=20_000, metadata={"help": "training iterations (instant-nsr-pl: 20k)"})
    # --- hash-grid SDF (instant-nsr-pl neus-dtu, Jittor ProgressiveBandHashGrid) ---
    n_levels: int = field(default=16, metadata={"help": "L, hash-grid levels", "min": 1})
    n_features: int = field(default=2, metadata={"help": "F, features per level", "min": 1, "max": 8})
    log2_table_size: int = field(default=19, metadata={"help": "T = 2^this table entries per level", "min": 1, "max": 30})
    base_resolution: int = field(default=32, metadata={"help": "coarsest grid resolution (Instant-NeuS: 32)", "min": 1})
    max_resolution: int = field(default=2048, metadata={"help": "finest grid resolution", "min": 1})
    hidden_width: int = field(default=64, metadata={"help": "units of the SDF MLP's one hidden layer and the colour MLP", "min": 1})
    geo_features: int = field(default=12, metadata={"help": "geometry features passed from the SDF MLP to colour (instant-nsr-pl: 12 + the SDF; Jittor: 64)", "min": 0})
    init_radius: float = field(default=0.5, metadata={"help": "the sphere (geometric) initialisation's radius, unit frame", "above": 0, "max": 1})
    # --- NeuS (Sec. 3) ---
    init_variance: float = field(default=0.3, metadata={"help": "s = exp(10 * variance) at the start (NeuS: 0.3, s = e^3)", "finite": True})
    anneal_end: int = field(default=20_000, metadata={"help": "cosine annealing ends at this step (Jittor: 20k; NeuS wmask: 0)", "min": 0})
    # --- the Instant-NeuS features, each a flag ---
    numerical_gradients: bool = field(default=True, metadata={"help": "central differences for the SDF gradient (else autograd; needs --backend torch)"})
    progressive_levels: bool = field(default=True, metadata={"help": "switch hash levels on one at a time"})
    start_level: int = field(default=4, metadata={"help": "levels active at step 0 (Instant-NeuS: 4)", "min": 1})
    level_every: int = field(default=1000, metadata={"help": "steps between level additions (instant-nsr-pl: 1000, all 16 levels on by step 12k of 20k; Jittor: 2000 / 3000 over 80k / 50k steps)", "min": 1})
    visual_hull: bool = field(default=True, metadata={"help": "carve the occupancy grid with every view's mask before training"})
    post_decoding: bool = field(default=False, metadata={"help": "composite geometry features along the ray, decode colour once per ray"})
    curvature_weight: float = field(default=5e-4, metadata={"help": "weight of the mean |Laplacian of f| (Neuralangelo / Jittor scan24: 5e-4)", "min": 0})
    curvature_warmup: int = field(default=5000, metadata={"help": "curvature weight ramps up linearly over these steps, then decays per added level (Neuralangelo)", "min": 0})
    calc_bbox: bool = field(default=False, metadata={"help": "estimate the object's box from the masks, print it as --bbox, exit"})
    bbox: Optional[list[float]] = field(default=None, metadata={"help": "the object's box: xmin ymin zmin xmax ymax zmax (scene frame); the cube around it is the unit frame", "count": 6, "finite": True})
    # --- occupancy grid and marching (instant-nsr-pl on nerfacc) ---
    grid_resolution: int = field(default=128, metadata={"help": "occupancy grid cells per side", "min": 2, "multiple_of": 2})
    grid_update_every: int = field(default=16, metadata={"help": "steps between grid updates", "min": 1})
    grid_warmup: int = field(default=256, metadata={"help": "steps during which every cell is updated", "min": 0})
    grid_threshold: float = field(default=0.001, metadata={"help": "a cell is occupied when its NeuS opacity over one step is above this", "min": 0})
    grid_decay: float = field(default=0.95, metadata={"help": "decay of the running max per update", "min": 0, "max": 1})
    grid_policy: Literal["paper", "cheap"] = field(default="cheap", metadata={"help": "04's update_occupancy_grid policies: cheap (G^3/4 cells per update after the warm-up, only those decay; what this script has always used) or paper (Instant-NGP App. E.2: every cell decays, G^3/2 re-measured)"})
    steps_per_diagonal: int = field(default=1024, metadata={"help": "step = box diagonal / this (instant-nsr-pl: 1.732 * 2 / 1024)", "min": 1})
    max_samples: int = field(default=1024, metadata={"help": "cap on samples per ray", "min": 1})
    early_stop_eps: float = field(default=1e-4, metadata={"help": "stop compositing a ray once its transmittance is below this", "min": 0, "below": 1})
    chunk: int = field(default=4096, metadata={"help": "rays per forward pass when rendering whole images", "min": 1})
    # --- losses (NeuS Sec. 3.4) ---
    eikonal_weight: float = field(default=0.1, metadata={"help": "weight of (|grad f| - 1)^2 (NeuS: 0.1)", "min": 0})
    mask_weight: float = field(default=0.1, metadata={"help": "weight of the mask BCE on the opacity (NeuS wmask: 0.1; Jittor: 1.0)", "min": 0})
    # --- optimisation (instant-nsr-pl) ---
    batch_rays: int = field(default=1024, metadata={"help": "rays per step (Jittor: 1024; instant-nsr-pl grows a dynamic batch)", "min": 1})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of the hash table and MLPs", "above": 0})
    variance_lr: float = field(default=1e-3, metadata={"help": "learning rate of the sharpness s (10x lower)", "min": 0})
    warmup_iters: int = field(default=500, metadata={"help": "linear learning-rate warm-up from 1% (instant-nsr-pl Blender)", "min": 0})
    lr_final_ratio: float = field(default=0.1, metadata={"help": "the learning rate decays exponentially to lr * this", "above": 0, "max": 1})
    # --- meshes ---
    mesh_resolution: int = field(default=512, metadata={"help": "marching-cubes grid per side (NeuS: 512)", "min": 2})
    export_mesh: bool = field(default=False, metadata={"help": "no training: mesh the latest checkpoint of --outdir (rebuilt from its saved config) into <outdir>/mesh.ply"})
    chamfer_points: int = field(default=100_000, metadata={"help": "points sampled on the mesh and the reference for Chamfer", "min": 1})
    dtu_gt: Optional[str] = field(default=None, metadata={"help": "folder of DTU's ground truth (ObsMask/ and Points/ of the DTU MVS 2014 downloads): a DTU scene's mesh is then scored with DTU's protocol (common/dtu_eval.py; the scan number from the scene folder's name, e.g. dtu_scan24)"})

    def check(self) -> None:
        """Settings that depend on each other, checked once after parsing (common/cli.py, parse_config)."""
        if self.bbox is not None and not all(low < high for low, high in zip(self.bbox[:3], self.bbox[3:])):
            shown = " ".join(f"{v:g}" for v in self.bbox)
            raise UserError(f"--bbox {shown}: give xmin ymin zmin xmax ymax zmax, each max above its min")
        if not self.numerical_gradients and self.backend in ("cuda", "emulated"):
            raise UserError(f"--no-numerical_gradients needs --backend torch: autograd's second derivative (the "
                            f"eikonal loss) runs through the PyTorch hash encoding only, not --backend {self.backend}")


PRESETS = {
    "paper": {},
    # Sized for two CPU cores: fewer, coarser levels and a small table, a coarse grid and long steps (NeuS's
    # interval opacity, Eq. 13, stays exact for a plane whatever the step), levels added every 300 steps. Whole
    # views render 1024 rays at a time, not 4096: 8 lego 100x100 test views took 5.3 s instead of 6.1 s on 2 idle
    # CPU cores.
    "cpu": dict(iters=3000, n_levels=10, log2_table_size=16, base_resolution=16, max_resolution=512,
                grid_resolution=64, steps_per_diagonal=256, max_samples=256, batch_rays=1024, chunk=1024,
                start_level=4, level_every=300, anneal_end=1000, warmup_iters=100, grid_warmup=64, grid_update_every=8,
                grid_decay=0.8, curvature_warmup=500, mesh_resolution=256, ckpt_every=1000, video_frames=40,
                log_every=25),
    # The learns-test: 61 s of training on the idle 2-core machine, 26.6 dB on 4 test views
    # (benchmarks/results/quick-presets-cpu-amd-epyc-2026-12-03-2029.json); its 128^3 mesh: accuracy 0.0075,
    # completeness 0.0124 (floor 0.0086), Chamfer 0.30% of the object's diagonal (README).
    "quick": dict(iters=500, n_levels=8, log2_table_size=15, base_resolution=16, max_resolution=256,
                  grid_resolution=32, steps_per_diagonal=128, max_samples=128, batch_rays=512, start_level=4,
                  level_every=80, anneal_end=200, warmup_iters=50, grid_warmup=32, grid_update_every=8,
                  grid_decay=0.8, curvature_warmup=100, mesh_resolution=128, chamfer_points=30_000,
                  ckpt_every=250, video_frames=0, log_every=20, n_test_views=4),
}


# ================================================================================================
# The field: hash encoding (+ x) -> SDF MLP -> (f, geometry features); colour from features, normal, SH(d)
# ================================================================================================
class NeuSField(nn.Module):
    """f(x), geometry features h(x), colour c(h, n, d) and the sharpness s. Points are in the unit frame [-1, 1]^3.

    SDF MLP: [x, hash(x)] -> 1 hidden layer, Softplus(beta=100) -> 1 + G outputs, with the sphere initialisation of
    IDR/SAL (f(x) ~ |x| - init_radius at step 0). Colour MLP (instant-nsr-pl): [h, SH(d), n] -> 2 hidden ReLU
    layers -> sigmoid. The SDF path is float32 throughout (no autocast): finite differences of half floats are noise.
    Departures: no weight normalisation (instant-nsr-pl's SDF MLP has weight_norm, Jittor Instant-NeuS's has not);
    the normal fed to colour and to NeuS's cos(angle between ray and normal) is the *normalised* SDF gradient, as
    in instant-nsr-pl (NeuS passes the raw gradient, whose length the eikonal loss keeps near 1).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoding = HashEncoding(cfg.n_levels, cfg.n_features, cfg.log2_table_size, cfg.base_resolution,
                                     cfg.max_resolution)
        width, n_in = cfg.hidden_width, 3 + self.encoding.output_dim
        self.sdf_mlp = nn.Sequential(nn.Linear(n_in, width), nn.Softplus(beta=100), nn.Linear(width, 1 + cfg.geo_features))
        # Sphere initialisation (Atzmon & Lipman 2020, as in NeuS and instant-nsr-pl): the hidden layer sees only
        # x at first (hash inputs weighted 0), and the output layer's mean weight sqrt(pi / width) with bias -r
        # makes f(x) ~ |x| - r, a sphere the optimisation then deforms.
        first, last = self.sdf_mlp[0], self.sdf_mlp[2]
        nn.init.zeros_(first.bias)
        nn.init.zeros_(first.weight[:, 3:])
        nn.init.normal_(first.weight[:, :3], 0.0, math.sqrt(2) / math.sqrt(width))
        nn.init.normal_(last.weight, math.sqrt(math.pi) / math.sqrt(width), 1e-4)
        nn.init.constant_(last.bias, -cfg.init_radius)
        self.color_mlp = nn.Sequential(nn.Linear(cfg.geo_features + 16 + 3, width), nn.ReLU(), nn.Linear(width, width),
                                       nn.ReLU(), nn.Linear(width, 3))
        self.variance = nn.Parameter(torch.tensor(cfg.init_variance))  # s = exp(10 * variance) (NeuS)
        self.active_levels = cfg.n_levels  # set by the training loop (progressive levels)

    def inv_s(self) -> torch.Tensor:
        """The sharpness s of Phi_s (NeuS calls it inv_s: 1/s is the logistic's standard deviation scale)."""
        return torch.exp(10.0 * self.variance).clamp(1e-6, 1e6)

    def sdf(self, x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3) unit frame -> f (N,), geometry features (N, G). Only the first `active_levels` levels are looked
        up; the others contribute zeros (progressive levels: the table of a level is untouched until it is on)."""
        enc = self.encoding
        k = self.active_levels
        features = hash_encode(((x + 1) / 2).clamp(0, 1), enc.table[:k], enc.scales[:k], enc.resolutions[:k],
                               backend)  # (N, k*F): the hash grid works in [0, 1]^3
        features = F.pad(features, (0, (enc.n_levels - k) * enc.n_features))  # (N, L*F), zeros for levels still off
        h = self.sdf_mlp(torch.cat([x, features], dim=-1))  # (N, 1 + G)
        return h[:, 0], h[:, 1:]

    def color(self, features: torch.Tensor, normals: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """features (M, G), unit normals (M, 3), unit directions (M, 3) -> rgb (M, 3)."""
        return torch.sigmoid(self.color_mlp(torch.cat([features, spherical_harmonics(dirs), normals], dim=-1)))


def finite_difference_eps(cfg: Config, active_levels: int) -> float:
    """One cell of the finest active level, in the unit frame: eps = 2 / (N_min b^(l - 1)) (instant-nsr-pl's
    'progressive' finite-difference step). Smaller steps than a cell measure the trilinear interpolation's kinks,
    larger ones blur the surface the levels can resolve (notebook: 'numerical against analytic gradients')."""
    growth = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / max(cfg.n_levels - 1, 1))
    return 2.0 / (cfg.base_resolution * growth ** (active_levels - 1))


def sdf_with_gradient(field_: NeuSField, x: torch.Tensor, backend: str, eps: float | None):
    """f, features, grad f and the Laplacian of f at x (N, 3).

    eps not None (numerical gradients, Instant-NSR): f at x and at x +- eps e_i, 7 queries in one batch;
        grad_i f = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps);
        Laplacian f = sum_i (f(x + eps e_i) + f(x - eps e_i) - 2 f(x)) / eps^2   (the curvature loss's input).
      The offsets are clamped to the box (instant-nsr-pl). Every term is a first derivative of the network's
      output w.r.t. its weights, so the eikonal loss needs no second derivative through the hash kernel.
    eps None (analytic): grad f by autograd with create_graph=True; needs backend 'torch' (the CUDA hash kernel
      is first-order only); the Laplacian is not computed (None).
    Returns f (N,), features (N, G), grad (N, 3), laplacian (N,) or None.
    """
    if eps is None:
        training = torch.is_grad_enabled()  # rendering images runs under inference mode: leave it for this
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone().requires_grad_(True)
            f, features = field_.sdf(x, backend)
            grad = torch.autograd.grad(f.sum(), x, create_graph=training)[0]  # (N, 3)
        if not training:
            f, features, grad = f.detach(), features.detach(), grad.detach()
        return f, features, grad, None
    offsets = eps * torch.cat([torch.eye(3), -torch.eye(3)]).to(x)  # (6, 3): +e_x, +e_y, +e_z, -e_x, -e_y, -e_z
    shifted = (x[None] + offsets[:, None]).clamp(-1.0, 1.0).reshape(-1, 3)  # (6N, 3)
    f_all, features_all = field_.sdf(torch.cat([x, shifted]), backend)  # (7N,), (7N, G)
    n = x.shape[0]
    f, f_plus, f_minus = f_all[:n], f_all[n:].view(6, n)[:3], f_all[n:].view(6, n)[3:]  # (N,), (3, N), (3, N)
    grad = ((f_plus - f_minus) / (2 * eps)).T  # (N, 3)
    laplacian = ((f_plus + f_minus - 2 * f[None]) / eps ** 2).sum(dim=0)  # (N,)
    return f, features_all[:n], grad, laplacian


# ================================================================================================
# NeuS opacity (Sec. 3.2-3.3): from SDF values at the ends of an interval
# ================================================================================================
def neus_alpha(f: torch.Tensor, cos: torch.Tensor, deltas: torch.Tensor, inv_s: torch.Tensor,
               cos_anneal_ratio: float) -> torch.Tensor:
    """Discrete opacity of NeuS, Eq. 13: alpha_i = max((Phi_s(f(p_i)) - Phi_s(f(p_i+1))) / Phi_s(f(p_i)), 0).

    f (N,) is the SDF at the interval's midpoint; the values at its ends are extrapolated along the ray with the
    slope cos = d . n (N,): f -+ cos * delta / 2. Phi_s(x) = sigmoid(s x), the logistic CDF (Eq. 2). Cosine
    annealing (NeuS code): early on (ratio 0) the slope is replaced by (cos - 1) / 2 clipped to <= 0, so that
    back faces (cos > 0) and grazing rays still have a negative slope and give opacity; the ratio goes to 1, the
    true slope clipped to <= 0 (a ray leaving a surface, f rising, is transparent: the max(., 0) of Eq. 13).
    deltas (N,) interval lengths; inv_s () the sharpness s. Returns alpha (N,) in [0, 1].
    """
    ### BEGIN SOLUTION
    r = cos_anneal_ratio
    slope = -(F.relu(-cos * 0.5 + 0.5) * (1.0 - r) + F.relu(-cos) * r)  # (N,) <= 0
    f_start = f - slope * deltas * 0.5  # (N,) f(p_i)
    f_end = f + slope * deltas * 0.5  # (N,) f(p_i+1)
    cdf_start, cdf_end = torch.sigmoid(f_start * inv_s), torch.sigmoid(f_end * inv_s)  # (N,) Phi_s
    return ((cdf_start - cdf_end + NEUS_ALPHA_EPS) / (cdf_start + NEUS_ALPHA_EPS)).clamp(0.0, 1.0)
    ### END SOLUTION


def cell_opacity(f: torch.Tensor, step: float, inv_s: torch.Tensor) -> torch.Tensor:
    """The occupancy grid's test (instant-nsr-pl): the NeuS opacity of one marching step through a point with SDF f,
    taking the steepest slope (a ray straight into the surface, cos = -1). f (M,) -> (M,)."""
    return neus_alpha(f, torch.full_like(f, -1.0), torch.full_like(f, step), inv_s, 1.0)


# ================================================================================================
# Sphere tracing (Hart 1996): the first zero of an SDF along each ray, by steps of the distance it guarantees free
# ================================================================================================
def sphere_trace(sdf_fn, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float, far: float, n_steps: int,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """March each ray from t = near: t <- t + |f(o + t d)| / |d| until |f| < eps (a hit) or t > far (a miss).

    |f(p)| bounds the distance from p to the nearest surface of a true SDF, so a step of |f| along the ray (|f| / |d|
    in units of t, for rays_d of any length) can never jump over a surface. Stepping by |f| rather than f also finds
    the first surface from a start inside the shape (f < 0): the ray walks forward to where it leaves it. NeuS
    itself renders by volume rendering (render_rays); sphere tracing is how a trained SDF is shown without it,
    e.g. for a depth map of its zero level set.
    sdf_fn: points (R, 3) -> SDF (R,); rays_o, rays_d (R, 3). Each of the n_steps iterations evaluates the SDF
    once and first tests, then steps: a ray hits at the first t <= far with |f| < eps; it misses if t passes far
    or n_steps run out. Returns t (R,) (the hit's t, `far` for a miss) and hit (R,) bool.
    """
    ### BEGIN SOLUTION
    speed = rays_d.norm(dim=-1)  # (R,) |d|: t counts lengths of d
    t = torch.full_like(rays_o[:, 0], near)  # (R,)
    hit = torch.zeros_like(t, dtype=torch.bool)  # (R,)
    for _ in range(n_steps):
        f = sdf_fn(rays_o + t[:, None] * rays_d)  # (R,)
        hit = hit | ((f.abs() < eps) & (t <= far))
        marching = ~hit & (t <= far)  # a ray stops once it hits or passes far
        if not marching.any():
            break
        t = torch.where(marching, t + f.abs() / speed, t)
    return torch.where(hit, t, torch.full_like(t, far)), hit
    ### END SOLUTION


def primitive_sdf(shape: str, params: torch.Tensor):
    """The exact SDF of a sphere (params: centre, radius), a plane (unit normal n, offset: n . p - offset) or an
    axis-aligned box (centre, half sizes), as a function points (R, 3) -> (R,): shapes whose hits are known in
    closed form, to test sphere_trace."""
    if shape == "sphere":
        return lambda p: (p - params[:3]).norm(dim=-1) - params[3]
    if shape == "plane":
        return lambda p: p @ params[:3] - params[3]
    if shape == "box":
        def box(p):
            q = (p - params[:3]).abs() - params[3:6]  # (R, 3) per-axis distance outside the slab
            return q.clamp_min(0.0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0.0)
        return box
    raise ValueError(f"primitive_sdf: shape must be sphere, plane or box, got {shape!r}")


def sphere_trace_primitive(shape: str, params: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float,
                           far: float, n_steps: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sphere_trace on primitive_sdf(shape, params): what the course's grader calls (it can send arrays, not functions)."""
    return sphere_trace(primitive_sdf(shape, params), rays_o, rays_d, near, far, n_steps, eps)


# ================================================================================================
# Rendering: march the occupancy grid, NeuS opacity per interval, composite (NeRF Eq. 3 with NeuS alphas)
# ================================================================================================
def marching_step(cfg: Config) -> float:
    """Fixed step in the unit frame: the box diagonal 2 sqrt(3) over steps_per_diagonal."""
    return 2.0 * math.sqrt(3.0) / cfg.steps_per_diagonal


def render_rays(field_: NeuSField, grid: OccupancyGrid, frame: tuple, rays_o: torch.Tensor, rays_d: torch.Tensor,
                cfg: Config, backend: str, background, perturb: bool, cos_anneal_ratio: float = 1.0,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """From rays (R, 3) in the scene frame to colours. frame = (centre (3,), half_size) of the unit frame."""
    centre, half_size = frame
    rays_o = (rays_o - centre) / half_size  # (R, 3) unit frame
    rays_d = F.normalize(rays_d, dim=-1)  # (R, 3): t is a distance (in unit-frame units)
    n_rays = rays_o.shape[0]
    offsets = (torch.rand(n_rays, generator=generator).to(rays_o.device) if perturb
               else torch.full((n_rays,), 0.5, device=rays_o.device))  # (R,) jitter of the marching lattice
    ray_starts, ray_counts, t_starts, t_ends = march_rays(
        rays_o, rays_d, grid.aabb, grid.bitfield, grid.resolution, near=0.0, far=1e4, dt=marching_step(cfg),
        max_samples=cfg.max_samples, offsets=offsets, backend=backend)
    ray_of_sample = ray_indices_from_counts(ray_counts)  # (N,)
    dirs = rays_d[ray_of_sample]  # (N, 3)
    points = rays_o[ray_of_sample] + (0.5 * (t_starts + t_ends))[:, None] * dirs  # (N, 3) interval midpoints
    eps = finite_difference_eps(cfg, field_.active_levels) if cfg.numerical_gradients else None
    f, features, grad, laplacian = sdf_with_gradient(field_, points, backend, eps)  # (N,), (N, G), (N, 3), (N,)
    normals = safe_normalize(grad)  # (N, 3)
    deltas = t_ends - t_starts  # (N,)
    alphas = neus_alpha(f, (dirs * normals).sum(-1), deltas, field_.inv_s(), cos_anneal_ratio)  # (N,)
    # The compositing kernel takes densities: sigma = -log(1 - alpha) / delta gives back exactly this alpha
    # (1 - exp(-sigma delta)), so NeuS reuses 04's kernel for T_i = prod_{j<i} (1 - alpha_j) and w_i = T_i alpha_i.
    sigmas = -torch.log1p(-alphas.clamp(max=MAX_ALPHA)) / deltas  # (N,)
    if cfg.post_decoding:
        rgb_samples = torch.zeros_like(points)  # colour is decoded per ray below, not per sample
    else:
        rgb_samples = field_.color(features, normals, dirs)  # (N, 3)
    weights, opacity, color, depth = composite(sigmas.contiguous(), rgb_samples.contiguous(), t_starts, t_ends,
                                               ray_starts, ray_counts, early_stop_eps=cfg.early_stop_eps,
                                               backend=backend)

    def per_ray(values: torch.Tensor) -> torch.Tensor:  # sum_i w_i v_i for each ray: (N, D) -> (R, D)
        return torch.zeros(n_rays, values.shape[1], device=values.device).index_add(0, ray_of_sample,
                                                                                    weights[:, None] * values)

    ray_normals = per_ray(normals)  # (R, 3) composited normal (not unit: |.| <= opacity)
    if cfg.post_decoding:
        # Post decoding (Jittor Instant-NeuS): composite the geometry features (and normals) along the ray, then run
        # the colour MLP once per ray on their opacity-weighted means, instead of once per sample.
        scale = 1.0 / opacity.clamp(min=POST_DECODING_MIN_OPACITY)[:, None]  # (R, 1) weights -> weighted mean
        color = opacity[:, None] * field_.color(per_ray(features) * scale, safe_normalize(ray_normals), rays_d)
    rgb = color + (1.0 - opacity)[:, None] * background  # (R, 3)
    return dict(rgb=rgb, depth=depth * half_size, opacity=opacity, normal=ray_normals, grad=grad,
                laplacian=laplacian, n_samples=t_starts.shape[0])


# ================================================================================================
# Losses and schedules
# ================================================================================================
def eikonal_loss(grad: torch.Tensor) -> torch.Tensor:
    """(|grad f| - 1)^2 averaged over the samples (NeuS Eq. 14, Gropp et al. 2020): f stays a distance."""
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean() if grad.numel() else grad.sum()


def curvature_loss(laplacian: torch.Tensor | None) -> torch.Tensor:
    """mean |Laplacian f| (Neuralangelo / Jittor Instant-NeuS): penalises bends, smoothing noisy surfaces."""
    if laplacian is None or laplacian.numel() == 0:
        return torch.zeros(())
    return laplacian.abs().mean()


def curvature_weight(cfg: Config, step: int) -> float:
    """Neuralangelo's schedule (Jittor too): a linear ramp to curvature_weight over curvature_warmup steps, then
    divided by the level growth factor b for every level added since, since finer levels resolve real detail."""
    if step < cfg.curvature_warmup:
        return cfg.curvature_weight * step / max(cfg.curvature_warmup, 1)
    growth = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / max(cfg.n_levels - 1, 1))
    added = active_levels(cfg, step) - active_levels(cfg, cfg.curvature_warmup)
    return cfg.curvature_weight / growth ** max(added, 0)


def active_levels(cfg: Config, step: int) -> int:
    """Progressive levels (instant-nsr-pl ProgressiveBandHashGrid): start_level levels, one more every level_every."""
    if not cfg.progressive_levels:
        return cfg.n_levels
    return min(cfg.start_level + step // max(cfg.level_every, 1), cfg.n_levels)


def cos_anneal_ratio(cfg: Config, step: int) -> float:
    """NeuS's cosine annealing: min(1, step / anneal_end) (1 at once when anneal_end = 0)."""
    return 1.0 if cfg.anneal_end <= 0 else min(1.0, step / cfg.anneal_end)


def learning_rate_factor(cfg: Config, step: int) -> float:
    """instant-nsr-pl (Blender): linear warm-up from 1% over warmup_iters, then exponential decay to lr_final_ratio."""
    if step < cfg.warmup_iters:
        return 0.01 + 0.99 * step / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(cfg.iters - cfg.warmup_iters, 1)
    return cfg.lr_final_ratio ** min(progress, 1.0)


# ================================================================================================
# Occupancy grid: the visual hull, then NeuS opacity (05's grid policy)
# ================================================================================================
def update_grid(grid: OccupancyGrid, field_: NeuSField, hull: torch.Tensor, cfg: Config, step: int,
                generator: torch.Generator, backend: str) -> None:
    """05's grid policy: 04's update (`update_occupancy_grid`: which cells, decayed maximum, threshold), measuring
    in each cell the NeuS opacity of one marching step through a random point (`cell_opacity`, instant-nsr-pl),
    and 0 outside the visual hull, so that those cells stay empty for good. As s grows the opacity of cells away
    from the surface falls, and the grid is pruned from the SDF as training goes."""
    step_size = marching_step(cfg)

    @torch.no_grad()
    def opacity_fn(points: torch.Tensor) -> torch.Tensor:
        inside = hull[cell_indices_of(points, grid.aabb, grid.resolution)]  # (M,)
        return cell_opacity(field_.sdf(points, backend)[0], step_size, field_.inv_s()) * inside

    update_occupancy_grid(grid, step, cfg, opacity_fn, generator, backend)


def unit_frame(scene, cfg: Config) -> tuple[torch.Tensor, float]:
    """Centre and half size of the cube that becomes [-1, 1]^3: the cube around --bbox, else around the scene box."""
    box = torch.tensor(cfg.bbox, dtype=torch.float32).view(2, 3) if cfg.bbox else scene.aabb  # Config.check: min < max
    return 0.5 * (box[0] + box[1]), float((box[1] - box[0]).max()) / 2


def compute_hull(scene, frame, cfg: Config) -> torch.Tensor:
    """(G^3,) bool: the cells of the unit-frame grid inside every training mask (all True without masks or the flag)."""
    n_cells = cfg.grid_resolution ** 3
    train = scene.splits["train"]
    if not cfg.visual_hull or train.images.shape[-1] != 4:
        return torch.ones(n_cells, dtype=torch.bool)
    centre, half = frame
    box = torch.stack([centre - half, centre + half])  # (2, 3) the unit frame's cube in scene coordinates
    return carve_grid(box, cfg.grid_resolution, train)


# ================================================================================================
# Training loop
# ================================================================================================
def build(cfg: Config, scene, device):
    frame_centre, half = unit_frame(scene, cfg)
    frame = (frame_centre.to(device), half)
    field_ = NeuSField(cfg).to(device)
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=cfg.grid_resolution).to(device)
    return field_, grid, frame


def train(cfg: Config) -> dict:
    """Train the SDF field; evaluate views, extract and score the mesh; write pictures and videos. Returns metrics."""
    device = resolve_device(cfg.device)
    # auto on a CPU: the emulated kernels (the .cu compiled with g++), about twice as fast as the twins here, except for
    # autograd's SDF gradient (--no-numerical_gradients), whose second derivative only the twin has
    backend = resolve_backend(cfg.backend, device, cpu_choice="emulated" if cfg.numerical_gradients else "torch")
    if note := auto_backend_note(cfg.backend, backend):
        print(note)
    seed_everything(cfg.seed)
    scene = load_scene(cfg.scene, cfg.datadir, downscale=cfg.downscale, gt_protocol=cfg.gt_protocol)
    if cfg.calc_bbox:
        return estimate_bbox(scene, cfg)
    train_split = scene.splits["train"]
    test_background = 1.0 if scene.white_background else 0.0

    field_, grid, frame = build(cfg, scene, device)
    # Adam (0.9, 0.99, eps 1e-15) with the sharpness s on a 10x smaller learning rate: Jittor Instant-NeuS's
    # optimiser. instant-nsr-pl's NeuS configs (neus-dtu.yaml, neus-blender.yaml) name AdamW with these betas and
    # eps, so they also decay every weight by PyTorch's default 0.01 (times the learning rate) per step; we do not.
    optimizer = torch.optim.Adam([
        dict(params=field_.encoding.parameters(), lr=cfg.lr),
        dict(params=list(field_.sdf_mlp.parameters()) + list(field_.color_mlp.parameters()), lr=cfg.lr),
        dict(params=[field_.variance], lr=cfg.variance_lr),
    ], betas=(0.9, 0.99), eps=1e-15)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    generator = torch.Generator().manual_seed(cfg.seed)
    render_fn = make_image_renderer(field_, grid, frame, cfg, backend, test_background, device)

    # Visual hull (Jittor Instant-NeuS): before any training, every cell outside some view's mask is emptied for
    # good; the hull's cells start occupied and the first grid update measures them all.
    # (A resumed or rendered run gets its hull back from the checkpoint, in load_state.)
    hull = compute_hull(scene, frame, cfg).to(device) if not cfg.render_only else None
    if hull is not None:
        grid.bitfield.copy_(pack_bitfield(hull.float(), 0.5))

    def save_state() -> dict:
        return dict(field=field_.state_dict(), grid=grid.state_dict(), hull=hull, optimizer=optimizer.state_dict(),
                    generator=generator.get_state())

    def load_state(state: dict) -> None:
        nonlocal hull
        field_.load_state_dict(state["field"])
        grid.load_state_dict(state["grid"])
        hull = state["hull"].to(device)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        field_.active_levels = active_levels(cfg, int(state["step"]))

    def validate() -> float:
        return evaluate_split(render_fn, scene.splits["val"], None, n_views=1, background=test_background,
                              progress=False)["mean_psnr"]

    # Resume, logging, held-out checks, checkpoints, time budget, Ctrl-C: common/training.py, TrainingRun.
    with TrainingRun(cfg, "05_instant_neus", scene, device, backend, save_state, load_state, validate,
                     render=render_fn) as run:
        def training_step(step: int) -> None:  # one step of the loop below
            field_.active_levels = active_levels(cfg, step)  # progressive levels
            if step % cfg.grid_update_every == 0:
                update_grid(grid, field_, hull, cfg, step, generator, backend)

            rays_o, rays_d, target = sample_ray_batch(train_split, cfg.batch_rays, generator)
            rays_o, rays_d, target = rays_o.to(device), rays_d.to(device), target.to(device)
            if target.shape[-1] == 4:  # a mask: a random background per ray, the object must be opaque
                background = background_color("random", (rays_o.shape[0], 3), generator).to(device)
                target_rgb = composite_on_background(target, background)
            else:
                background, target_rgb = test_background, target
            out = render_rays(field_, grid, frame, rays_o, rays_d, cfg, backend, background, perturb=True,
                              cos_anneal_ratio=cos_anneal_ratio(cfg, step), generator=generator)
            # NeuS Sec. 3.4: L1 colour + eikonal + mask BCE, plus the curvature term of Instant-NeuS.
            loss_rgb = F.l1_loss(out["rgb"], target_rgb)
            loss = loss_rgb + cfg.eikonal_weight * eikonal_loss(out["grad"])
            if target.shape[-1] == 4 and cfg.mask_weight > 0:
                opacity = out["opacity"].clamp(MASK_BCE_CLIP, 1.0 - MASK_BCE_CLIP)
                loss = loss + cfg.mask_weight * F.binary_cross_entropy(opacity, target[:, 3])
            if curvature_weight(cfg, step) > 0:
                loss = loss + curvature_weight(cfg, step) * curvature_loss(out["laplacian"]).to(device)

            factor = learning_rate_factor(cfg, step)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            check_finite(step, loss, field_.parameters(), lr=cfg.lr * factor)  # a NaN stops the run here
            optimizer.step()
            run.log(step, loss=loss.item(), psnr=mse_to_psnr(F.mse_loss(out["rgb"], target_rgb).item()),
                    lr=cfg.lr * factor,
                    extra=lambda: dict(samples_per_ray=round(out["n_samples"] / cfg.batch_rays, 2),
                                       occupancy=round(grid.occupancy_fraction(), 4),
                                       inv_s=round(field_.inv_s().item(), 2), levels=field_.active_levels))

        for step in run.steps():  # a GPU out-of-memory error halves the rays per step and runs the step again
            run.train_step(training_step, step, optimizer)

    if cfg.export_mesh:  # --export_mesh --outdir <run>: only the mesh of its latest checkpoint
        # First one test view against a constant image: a dead model's SDF would mesh into a huge shapeless file.
        check_model_learned(evaluate_split(render_fn, scene.splits["test"], None, n_views=1, background=test_background,
                                           progress=False), keep_going=not cfg.dead_model_check, skipped="mesh",
                            kept=None)
        return extract_and_score_mesh(field_, frame, scene, cfg, backend, device, Path(cfg.outdir) / "mesh.ply")
    metrics = final_evaluation(render_fn, scene, cfg.outdir, cfg.n_test_views, cfg.video_frames, test_background,
                               camera_path=cfg.camera_path, iters=run.step, backend=backend, device=str(device),
                               preset=cfg.preset, gt_protocol=cfg.gt_protocol, dead_model_check=cfg.dead_model_check,
                               lpips_weights=cfg.lpips_weights)
    render_normals(render_fn, scene, Path(cfg.outdir), cfg)
    metrics.update(extract_and_score_mesh(field_, frame, scene, cfg, backend, device, Path(cfg.outdir) / "mesh.ply"))
    write_json(Path(cfg.outdir) / "test" / "metrics.json", metrics)
    return metrics


# ================================================================================================
# Evaluation: images, normal maps, the mesh and its Chamfer distance
# ================================================================================================
def make_image_renderer(field_: NeuSField, grid: OccupancyGrid, frame, cfg: Config, backend: str, background, device):
    """A function (rays_o, rays_d) -> {'rgb', 'depth', 'opacity', 'normal'} for whole images, without jitter."""

    @torch.no_grad()
    def render_fn(rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict[str, torch.Tensor]:
        out = render_rays(field_, grid, frame, rays_o.to(device), rays_d.to(device), cfg, backend, background,
                          perturb=False)
        return {key: out[key].cpu() for key in ("rgb", "depth", "opacity", "normal")}

    render_fn.chunk = cfg.chunk
    return render_fn


def normal_image(normals: torch.Tensor, background: float) -> torch.Tensor:
    """Composited normals (..., 3) in [-1, 1] (scaled by opacity) -> colours (n + 1) / 2 over the background."""
    opacity = normals.norm(dim=-1, keepdim=True).clamp(max=1.0)
    return (0.5 * (safe_normalize(normals) + 1.0)) * opacity + background * (1.0 - opacity)


def render_normals(render_fn, scene, outdir: Path, cfg: Config) -> None:
    """Normal maps of two test views (test/normal_XXX.png) and, with video_frames, a normal video on the same
    path as the colour and depth videos (common/paths.py, default_video_path: along the arc the training cameras
    cover, so a DTU object is seen from the side its cameras saw, not from a z-up sphere around it)."""
    test, bg = scene.splits["test"], 1.0 if scene.white_background else 0.0
    for index in range(min(2, len(test.images))):
        out = render_view(render_fn, test.cameras.K[index], test.cameras.c2w[index], test.cameras.height,
                          test.cameras.width)
        save_image(outdir / "test" / f"normal_{index:03d}.png", normal_image(out["normal"], bg))
    if cfg.video_frames > 0:
        cams = scene.splits["train"].cameras
        frames = [normal_image(render_view(render_fn, cams.K[0], c2w, cams.height, cams.width)["normal"], bg).numpy()
                  for c2w in default_video_path(cams.c2w, cfg.video_frames)]
        print("normal video: " + str(write_video(outdir / "video_normal.mp4", np.stack(frames), fps=24)))


@torch.no_grad()
def extract_mesh(field_: NeuSField, frame, scene, cfg: Config, backend: str, device, resolution: int):
    """Marching cubes on f = 0 over the unit-frame box, vertices moved back to world units, coloured by the colour
    MLP seen along the inward normal (instant-nsr-pl's 'albedo' view). Returns vertices (V, 3) float32 world units,
    faces (F, 3), colours (V, 3) in [0, 1]."""
    unit_box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    values = sample_grid(lambda x: field_.sdf(x, backend)[0], unit_box, resolution, chunk=65536, device=device)
    vertices, faces = marching_cubes(values, unit_box, level=0.0, inside="below")  # (V, 3) unit frame
    colors = []
    eps = finite_difference_eps(cfg, field_.active_levels) if cfg.numerical_gradients else None
    for start in range(0, len(vertices), 65536):
        x = torch.from_numpy(vertices[start:start + 65536]).to(device)
        _, features, grad, _ = sdf_with_gradient(field_, x, backend, eps)
        normals = safe_normalize(grad.detach())
        colors.append(field_.color(features.detach(), normals, -normals).cpu())
    centre, half = frame
    scene_vertices = vertices * half + centre.cpu().numpy()  # unit frame -> scene frame
    return to_world(scene, scene_vertices).astype(np.float32), faces, torch.cat(colors).numpy()


def to_world(scene, points: np.ndarray) -> np.ndarray:
    """Scene frame -> world units: scale_mat for NeuS/DTU scenes (v * scale_mat[0, 0] + scale_mat[:3, 3] in NeuS),
    the identity for Blender scenes. points (P, 3)."""
    scale_mat = getattr(scene, "scale_mat", None)
    if scale_mat is None:
        return np.asarray(points, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ scale_mat[:3, :3].T + scale_mat[:3, 3]


def builtin_reference_points(n_points: int, seed: int = 0) -> np.ndarray:
    """Points on the built-in scene's exact surface: a fine marching-cubes mesh of its exact SDF, sampled by area
    (with `seed`), then projected onto the surface along the exact normal (p - f(p) n(p)), so they lie on it to
    float precision."""
    from common.data import builtin_scene

    box = torch.tensor([[-1.5] * 3, [1.5] * 3])
    values = sample_grid(builtin_scene.sdf, box, 128)
    vertices, faces = marching_cubes(values, box, level=0.0, inside="below")
    points = torch.from_numpy(sample_mesh_surface(vertices, faces, n_points, seed=seed))  # (P, 3) float64
    for _ in range(2):
        points = points - builtin_scene.sdf(points)[:, None] * builtin_scene.normals(points)
    return points.numpy()


def extract_and_score_mesh(field_, frame, scene, cfg: Config, backend: str, device, path: Path) -> dict:
    """Write the mesh (PLY with vertex colours); on the built-in scene, its Chamfer distance to the exact surface,
    also as a fraction of the object's bounding-box diagonal."""
    start = time.perf_counter()
    vertices, faces, colors = extract_mesh(field_, frame, scene, cfg, backend, device, cfg.mesh_resolution)
    write_ply(path, vertices, faces, colors)
    result = dict(mesh=str(path), mesh_vertices=len(vertices), mesh_resolution=cfg.mesh_resolution)
    if scene.name == "builtin":
        result.update(builtin_surface_scores(vertices, faces, cfg.chamfer_points))
        print(f"mesh: accuracy {result['accuracy']:.4f} (mean exact distance of mesh samples to the surface), "
              f"completeness {result['completeness']:.4f} (exact-surface samples to mesh samples; two samplings of "
              f"the exact surface score {result['completeness_floor']:.4f}, the floor), Chamfer {result['chamfer']:.4f} "
              f"= {100 * result['chamfer_over_diagonal']:.2f}% of the object's diagonal")
    elif cfg.dtu_gt is not None:
        import re

        from common.dtu_eval import dtu_chamfer

        found = re.search(r"scan(\d+)", Path(str(scene.root)).name)
        if found is None:
            raise UserError(f"--dtu_gt: the scan number is read from the scene folder's name (e.g. dtu_scan24), and "
                            f"{Path(str(scene.root)).name!r} has none: rename the folder")
        scores = dtu_chamfer(vertices, faces, cfg.dtu_gt, int(found.group(1)))
        result.update(scores)
        print(f"mesh: DTU protocol (common/dtu_eval.py), scan {found.group(1)}: accuracy {scores['accuracy']:.3f}, "
              f"completeness {scores['completeness']:.3f}, Chamfer {scores['chamfer']:.3f} (mm)")
    else:
        print(f"mesh: no Chamfer distance computed for {scene.name}: it needs the scene's ground-truth surface (for DTU, "
              f"pass --dtu_gt with DTU's ObsMask/ and Points/, README 'DTU data and Chamfer')")
    print(f"mesh: {len(vertices)} vertices -> {path} ({time.perf_counter() - start:.1f} s)")
    return result


def builtin_surface_scores(vertices: np.ndarray, faces: np.ndarray, n_points: int) -> dict:
    """A mesh of the built-in scene against its exact surface, each number what its name says (world units):
      accuracy           mean |f*(p)| over n_points area samples p of the mesh, f* the exact SDF: the exact
                         distance from each sample to the surface, with no sampling floor;
      completeness       mean distance from n_points exact-surface samples to their nearest mesh sample (Chamfer's
                         second half); even a perfect mesh scores above 0 here, because two finite samplings of
                         one surface do not coincide:
      completeness_floor what two independent samplings of the exact surface score (the floor of `completeness`
                         at this n_points);
      chamfer            (accuracy + completeness) / 2, and chamfer_over_diagonal, that over the object's box
                         diagonal. (Not DTU's protocol: no 0.2 mm resampling, observation mask or plane filter.)"""
    from common.data import builtin_scene

    reference = builtin_reference_points(n_points)
    samples = sample_mesh_surface(vertices, faces, n_points, seed=1)
    accuracy = float(builtin_scene.sdf(torch.from_numpy(samples).double()).abs().mean())
    completeness = chamfer_distance(samples, reference)["completeness"]
    floor = chamfer_distance(builtin_reference_points(n_points, seed=1), reference)["completeness"]
    diagonal = float(np.linalg.norm(reference.max(axis=0) - reference.min(axis=0)))
    chamfer = 0.5 * (accuracy + completeness)
    return dict(accuracy=accuracy, completeness=completeness, completeness_floor=floor, chamfer=chamfer,
                bbox_diagonal=diagonal, chamfer_over_diagonal=chamfer / diagonal)


def estimate_bbox(scene, cfg: Config) -> dict:
    """--calc_bbox (Jittor Instant-NeuS's first run): the box around the visual hull of the masks, printed in the
    form the next run takes. The hull is a superset of the object, so the box holds it."""
    train = scene.splits["train"]
    if train.images.shape[-1] != 4:
        raise UserError(f"--calc_bbox needs masks (an alpha channel or mask/ images) in {scene.root}")
    resolution = max(cfg.grid_resolution, 64)
    kept = carve_grid(scene.aabb, resolution, train)
    box = hull_bbox(scene.aabb, resolution, kept, margin_cells=2)
    flags = " ".join(f"{v:.4f}" for v in box.flatten().tolist())
    print(f"object box from the visual hull of {len(train.images)} masks: --bbox {flags}")
    return dict(bbox=box.flatten().tolist())


# ================================================================================================
# main
# ================================================================================================
def main(argv=None) -> dict:
    cfg = parse_config(Config, argv, presets=PRESETS)
    if cfg.export_mesh:  # the mesh of a trained run's latest checkpoint, and nothing else: as --render_only
        cfg.render_only = True
    # The run folder checked; with --resume or --render_only, the settings of the checkpoint being continued.
    cfg = prepare_run(cfg, "05_instant_neus", required_keys=("field", "grid", "hull"),
                      output_settings=("export_mesh", "mesh_resolution", "chamfer_points"))
    # The folder is this run's until its last file is written (test renders, videos, mesh), not only while it trains.
    with RunFolder(cfg.outdir):
        return train(cfg)


if __name__ == "__main__":
    run_main(main)
