"""04 - Hash-grid NeRF: Instant Neural Graphics Primitives with a Multiresolution Hash Encoding.

Müller, Evans, Schied, Keller. SIGGRAPH 2022. https://arxiv.org/abs/2201.05989
Regularisers from the Jittor JHashNeRF entry (a sparsity loss on densities, total variation on the grid).

What is new relative to 01_nerf.py:
  * the positional encoding and the 8x256 MLP are replaced by a trainable multiresolution hash encoding
    (Sec. 3, Eq. 2-4) and two tiny MLPs: most of the capacity now lives in lookup tables, which are cheap to
    evaluate and to train, so a radiance field trains in minutes instead of hours;
  * the coarse network and hierarchical sampling are replaced by an occupancy grid (Sec. 5.4 / Appendix E):
    a bitfield over the scene box that marks cells where density is non-negligible, kept up to date during
    training, through which rays are marched with a fixed step, skipping empty space;
  * directions are encoded with spherical harmonics, the density uses a truncated exponential, the
    background is a random colour during training (so the model cannot paint the background into the
    object), and compositing stops rays early once they are opaque.

Read it top to bottom: Config, the field, rendering, losses, the training loop, evaluation, main.
Glossary of shapes: R rays, N packed samples (all rays' samples in one flat array), L levels, F features.

    python 04_hashnerf.py                 # built-in scene (CPU-sized preset on a CPU)
    python 04_hashnerf.py --quick         # under a minute on 2 CPU cores, 31 dB on the built-in scene
    python 04_hashnerf.py --scene lego    # the real Blender scene from data/nerf_synthetic/lego
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import RunConfig, parse_config, resolve_device, run_main
from common.data.load import load_scene
from common.data.scene import background_color, composite_on_background
from common.evaluation import evaluate_split, final_evaluation
from common.mesh import marching_cubes, sample_grid, write_ply
from common.metrics import mse_to_psnr
from common.rays import sample_ray_batch
from common.run_folder import RunFolder
from common.training import TrainingRun, check_finite, decayed_learning_rate, prepare_run, seed_everything
from kernels import ray_indices_from_counts
from kernels.backend import auto_backend_note, resolve_backend
from kernels.compositing import composite
from kernels.hash_encoding import HashEncoding, grid_index
from kernels.ray_marching import OccupancyGrid, march_rays, occupancy_update, pack_bitfield


# ================================================================================================
# Config
# ================================================================================================
SCENE_LAYOUTS = ("object", "unbounded")  # the captures this lesson suits (Instant-NGP's box, aabb_scale times the object's, holds a background); common/data/load.py warns on others

@dataclass
class Config(RunConfig):
    """Hash-grid NeRF (Instant-NGP, Müller et al. 2022). Defaults are the paper's; presets (PRESETS) size it for a CPU."""

    # The settings every script shares (--scene, --datadir, --outdir, --backend, --device, --seed, --quick,
    # --preset, --resume, --time_budget_s, logging and outputs) come from common/cli.py, RunConfig.
    iters: int = field(default=50_000, metadata={"help": "training iterations (the step schedule below lowers the rate at 20k, 30k and 40k of them); --time_budget_s stops a run by wall-clock time instead", "min": 1})
    # --- hash encoding (Sec. 3, Table 1) ---
    n_levels: int = field(default=16, metadata={"help": "L, resolution levels", "min": 1})
    n_features: int = field(default=2, metadata={"help": "F, features per level", "min": 1, "max": 8})
    log2_table_size: int = field(default=19, metadata={"help": "T = 2^this table entries per level", "min": 1, "max": 30})
    base_resolution: int = field(default=16, metadata={"help": "N_min, coarsest grid resolution", "min": 1})
    max_resolution: int = field(default=2048, metadata={"help": "N_max, finest grid resolution", "min": 1})
    hidden_width: int = field(default=64, metadata={"help": "units of the small MLPs (Sec. 5.4)", "min": 1})
    # --- occupancy grid and marching (Sec. 5.4, Appendix E) ---
    grid_resolution: int = field(default=128, metadata={"help": "occupancy grid cells per side", "min": 2, "multiple_of": 2})
    grid_update_every: int = field(default=16, metadata={"help": "iterations between occupancy updates", "min": 1})
    grid_warmup: int = field(default=256, metadata={"help": "iterations during which every cell is updated", "min": 0})
    grid_threshold: float = field(default=0.01, metadata={"help": "a cell is occupied when one step through it has optical thickness above this", "min": 0})
    grid_decay: float = field(default=0.95, metadata={"help": "decay of the running max of densities per update", "min": 0, "max": 1})
    grid_policy: Literal["paper", "cheap"] = field(default="paper", metadata={"help": "paper (App. E.2 as written): every update decays every cell and re-measures G^3/2 cells after the warm-up; cheap (the cpu and quick presets): G^3/4 cells, and only those decay"})
    steps_per_diagonal: int = field(default=1024, metadata={"help": "marching step = box diagonal / this (paper: sqrt(3)/1024 per unit)", "min": 1})
    max_samples: int = field(default=1024, metadata={"help": "cap on samples per ray", "min": 1})
    early_stop_eps: float = field(default=1e-4, metadata={"help": "stop a ray once its transmittance drops below this", "min": 0, "below": 1})
    chunk: int = field(default=8192, metadata={"help": "rays per forward pass when rendering whole images", "min": 1})
    # --- optimisation (Sec. 4) ---
    batch_rays: int = field(default=4096, metadata={"help": "rays per iteration (with --samples_per_batch: of the first iteration only)", "min": 1})
    samples_per_batch: int = field(default=1 << 18, metadata={"help": "App. E.3: keep the samples per iteration near this (paper: 2^18), the number of rays adapting to the samples each ray took in the last iteration; 0 = a fixed --batch_rays (the cpu and quick presets)", "min": 0})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate (paper: 1e-2)", "above": 0})
    lr_schedule: Literal["step", "exponential"] = field(default="step", metadata={"help": "step (Sec. 5.4): x lr_step_factor at lr_step_start iterations and every lr_step_every after; exponential (the cpu and quick presets, which run a few thousand steps): from lr to lr_final over --iters or the time budget"})
    lr_step_start: int = field(default=20_000, metadata={"help": "first step-down of the step schedule (paper: 20k)", "min": 1})
    lr_step_every: int = field(default=10_000, metadata={"help": "iterations between later step-downs (paper: 10k)", "min": 1})
    lr_step_factor: float = field(default=0.33, metadata={"help": "factor of each step-down (paper: 0.33)", "above": 0, "max": 1})
    lr_final: float = field(default=3e-4, metadata={"help": "learning rate at the last iteration of the exponential schedule", "above": 0})
    weight_decay: float = field(default=1e-6, metadata={"help": "L2 on the MLP weights only (paper: 1e-6)", "min": 0})
    sparsity_weight: float = field(default=0.0, metadata={"help": "JHashNeRF sparsity loss on densities (0 = off)", "min": 0})
    tv_weight: float = field(default=0.0, metadata={"help": "JHashNeRF total-variation loss on the hash grid (0 = off)", "min": 0})
    mixed_precision: bool = field(default=True, metadata={"help": "fp16 autocast for the MLPs on a GPU, compositing stays fp32 (Instant-NGP's MLPs run in half precision)"})
    # --- mesh ---
    export_mesh: bool = field(default=False, metadata={"help": "after training (or with --render_only), write mesh.ply: marching cubes on the density in the scene box"})
    mesh_resolution: int = field(default=256, metadata={"help": "grid nodes per axis for --export_mesh", "min": 2})
    mesh_threshold: float = field(default=2.5, metadata={"help": "density sigma of the surface for --export_mesh (Instant-NGP's default)", "above": 0})


PRESETS = {
    "paper": {},
    # The same method sized for two CPU cores: a smaller table, fewer and coarser levels, a coarser grid. The
    # grid also forgets faster (decay 0.8, every 8 steps): until it carves out empty space, every ray takes
    # its full quota of samples, the expensive phase, which 0.95 every 16 steps would stretch over ~400 steps.
    # It keeps a fixed 1024 rays per step, the exponential learning-rate decay and the cheap grid update (below).
    "cpu": dict(iters=2000, n_levels=12, log2_table_size=16, max_resolution=512, grid_resolution=64,
                steps_per_diagonal=256, max_samples=256, batch_rays=1024, chunk=1024, grid_warmup=64,
                grid_update_every=8, grid_decay=0.8, ckpt_every=500, video_frames=40, log_every=25,
                samples_per_batch=0, lr_schedule="exponential", grid_policy="cheap"),
    # About a minute on two CPU cores; above 26 dB on the built-in scene's test views.
    "quick": dict(iters=500, n_levels=8, log2_table_size=15, max_resolution=256, grid_resolution=32,
                  steps_per_diagonal=128, max_samples=128, batch_rays=1024, chunk=1024, grid_warmup=64,
                  grid_update_every=8, grid_decay=0.8, lr_final=1e-3, ckpt_every=250, video_frames=20,
                  log_every=20, n_test_views=4, samples_per_batch=0, lr_schedule="exponential", grid_policy="cheap"),
}


# ================================================================================================
# The field: hash encoding -> density MLP; spherical harmonics + features -> colour MLP (Sec. 5.4)
# ================================================================================================
def hash_grid_level(x: torch.Tensor, table: torch.Tensor, scale: float, resolution: int) -> torch.Tensor:
    """One level of the multiresolution hash encoding (Sec. 3), written out to read; HashEncoding below runs all
    L levels at once on the fast path (kernels/hash_encoding.py and .cu), and a test checks that level l of it
    equals this function.

    Eq. 2-3: the level's grid has scale_l = N_min b^l - 1 cells per unit (with tiny-cuda-nn's "- 1") and
    resolution_l = ceil(scale_l) + 1 vertices per axis. The point sits at x * scale_l + 0.5 (tiny-cuda-nn's
    half-vertex offset staggers the levels). Each of its cell's 8 vertices owns a row of the table: directly
    (x + y res + z res^2) while res^3 fits in T rows, otherwise through the spatial hash of Eq. 4,
    (x pi_1) XOR (y pi_2) XOR (z pi_3) mod T, where colliding vertices simply share a row (the gradient sorts
    out which one matters). The 8 rows are blended trilinearly.
    x: (N, 3) in [0, 1]; table: (T, F) with T a power of two. Returns (N, F).
    """
    ### BEGIN SOLUTION
    n_rows = table.shape[0]
    pos = x * scale + 0.5  # (N, 3) position in grid units
    lower = torch.floor(pos)  # (N, 3) the cell's lowest vertex
    frac = pos - lower  # (N, 3) where the point sits inside the cell, in [0, 1)
    encoded = torch.zeros(x.shape[0], table.shape[1], dtype=table.dtype, device=x.device)  # (N, F)
    for corner in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)):
        offset = torch.tensor(corner, device=x.device)  # (3,)
        vx, vy, vz = (lower.long() + offset).unbind(-1)  # (N,) each: this corner's integer vertex
        if resolution ** 3 <= n_rows:
            row = vx + vy * resolution + vz * resolution * resolution  # (N,) a dense level: one row per vertex
        else:
            row = (vx * 1) ^ (vy * 2654435761) ^ (vz * 805459861)  # (N,) Eq. 4, primes pi_1, pi_2, pi_3
        row = row & (n_rows - 1)  # mod T
        trilinear = torch.where(offset.bool(), frac, 1.0 - frac).prod(dim=-1)  # (N,) this corner's weight
        encoded = encoded + trilinear[:, None] * table[row]  # (N, F)
    return encoded
    ### END SOLUTION


def spherical_harmonics(dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics of unit directions, bands l = 0..3 (16 coefficients): the direction encoding of
    Instant-NGP (Sec. 5.4), which counts these 4 bands as "up to degree 4". Each constant is the normalisation
    K_l^m = sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!), times sqrt(2) for m != 0, with the polynomial's own factor
    folded in (e.g. l = 1: sqrt(3/(4 pi)) = 0.4886).
    dirs: (N, 3) unit vectors -> (N, 16)"""
    x, y, z = dirs.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),                       # l = 0
        -0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x,  # l = 1
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z,        # l = 2
        0.31539156525252005 * (2 * zz - xx - yy), -1.0925484305920792 * x * z,
        0.5462742152960396 * (xx - yy),
        -0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,  # l = 3
        -0.4570457994644658 * y * (4 * zz - xx - yy), 0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
        -0.4570457994644658 * x * (4 * zz - xx - yy), 1.445305721320277 * z * (xx - yy),
        -0.5900435899266435 * x * (xx - 3 * yy),
    ], dim=-1)


class TruncExp(torch.autograd.Function):
    """sigma = exp(x) forward; the backward uses exp(min(x, 15)) (the truncated exponential of the PyTorch
    ports of Instant-NGP, e.g. torch-ngp): exp lets sigma span many decades from a small network output, and
    clamping the gradient's exponent keeps one very dense sample from sending a huge update into every
    hash-table entry it touches."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x), with the gradient clamped at exp(15) ~ 3.3e6 (see TruncExp). x: any shape -> same shape."""
    return TruncExp.apply(x)


class HashField(nn.Module):
    """(x, d) -> (rgb, sigma). Density: hash encoding of x -> 1 hidden layer -> 16 outputs, the first of which
    is log-density (sigma = exp, truncated in the backward pass); colour: the 16 outputs and SH(d) -> 2 hidden
    layers -> rgb. Points are normalised to the unit cube of the scene box before encoding."""

    def __init__(self, cfg: Config, aabb: torch.Tensor):
        super().__init__()
        self.register_buffer("aabb", aabb.clone())  # (2, 3) min and max corners of the scene box
        self.encoding = HashEncoding(cfg.n_levels, cfg.n_features, cfg.log2_table_size,
                                     cfg.base_resolution, cfg.max_resolution)
        width = cfg.hidden_width
        self.density_mlp = nn.Sequential(nn.Linear(self.encoding.output_dim, width), nn.ReLU(), nn.Linear(width, 16))
        self.color_mlp = nn.Sequential(nn.Linear(16 + 16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                       nn.Linear(width, 3))

    def unit_cube(self, points: torch.Tensor) -> torch.Tensor:
        return ((points - self.aabb[0]) / (self.aabb[1] - self.aabb[0])).clamp(0.0, 1.0)  # (N, 3)

    def density(self, points: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """points (N, 3) world -> sigma (N,), geometry features (N, 16)."""
        features = self.encoding(self.unit_cube(points), backend=backend)  # (N, L*F)
        h = self.density_mlp(features)  # (N, 16)
        sigma = trunc_exp(h[:, 0].float())  # exp keeps sigma > 0 and lets it span decades
        return sigma, h

    def forward(self, points: torch.Tensor, dirs: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """points, dirs (N, 3) -> rgb (N, 3), sigma (N,)."""
        sigma, h = self.density(points, backend)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([h, spherical_harmonics(dirs).to(h.dtype)], dim=-1)))
        return rgb, sigma


def marching_step(aabb: torch.Tensor, cfg: Config) -> float:
    """A fixed step: the box diagonal divided into steps_per_diagonal (Instant-NGP: sqrt(3)/1024 for a unit cube)."""
    return float((aabb[1] - aabb[0]).norm()) / cfg.steps_per_diagonal


def update_occupancy_grid(grid: OccupancyGrid, step: int, cfg: Config, optical_thickness, generator: torch.Generator,
                          backend: str) -> None:
    """Instant-NGP's occupancy-grid policy (Appendix E.2), run every cfg.grid_update_every steps.

    1. Which cells: during the warm-up (the first cfg.grid_warmup steps) every cell; after it, M cells (see the
       policies below), half drawn uniformly over the grid (so that newly dense regions are found) and half among the cells marked
       occupied (so that the regions rays actually pass through stay fresh).
    2. Each chosen cell is measured at a random point inside it: its optical thickness sigma * dt for one marching
       step (the opacity-like quantity of Appendix E).
    3. Decayed maximum: value = max(decay * value, new), so a cell forgets a density the field no longer has,
       at a rate of cfg.grid_decay per update.
    4. Occupied: value > min(cfg.grid_threshold, mean value), the min keeping a dim early scene from vanishing.
    cfg.grid_policy "paper" is App. E.2 as written: every cell decays at each update (value *= decay), then the
    chosen cells take max(value, new); after the warm-up M = G^3/2 cells are chosen (for 128^3: 128^3/2, as the
    paper says). "cheap" (the cpu and quick presets) re-measures G^3/4 cells and decays only those: a cell no
    update visits keeps its value longer, and an update costs half the density queries.
    """
    n_cells, device = grid.n_cells, grid.density.device
    paper = cfg.grid_policy == "paper"
    if step <= cfg.grid_warmup:
        cells = torch.arange(n_cells, device=device)  # (G^3,) every cell
    else:
        n_chosen = n_cells // 2 if paper else n_cells // 4
        uniform = torch.randint(0, n_cells, (n_chosen // 2,), generator=generator)  # (M/2,) anywhere
        occupied = torch.nonzero(grid.occupied_mask()).flatten().cpu()  # (O,) cells marked occupied
        picks = torch.randint(0, max(len(occupied), 1), (n_chosen - n_chosen // 2,), generator=generator)
        near_surfaces = occupied[picks] if len(occupied) else picks[:0]  # (M/2,) where the scene is
        cells = torch.unique(torch.cat([uniform, near_surfaces])).to(device)  # (M,) distinct: one thread per cell
    points = grid.cell_points(cells, generator)  # (M, 3) a random point in each cell
    new_values = torch.cat([optical_thickness(chunk) for chunk in points.split(1 << 16)])  # (M,) sigma * dt
    if paper:  # 3. every cell forgets, then the measured ones take the max (the kernel with decay 1: max only)
        grid.density.mul_(cfg.grid_decay)
        grid.density.copy_(occupancy_update(grid.density, cells, new_values, 1.0, backend))
    else:  # 3. only the measured cells: max(decay * value, new) (kernel)
        grid.density.copy_(occupancy_update(grid.density, cells, new_values, cfg.grid_decay, backend))
    threshold = min(cfg.grid_threshold, float(grid.density.mean()))  # 4.
    grid.bitfield.copy_(pack_bitfield(grid.density, threshold, backend))  # bit b of byte k: cell 8k + b (kernel)


# ================================================================================================
# Rendering: march through the occupancy grid, evaluate the field at the samples, composite (Eq. 3 of NeRF)
# ================================================================================================
def render_rays(field: HashField, grid: OccupancyGrid, rays_o: torch.Tensor, rays_d: torch.Tensor, cfg: Config,
                backend: str, background: torch.Tensor | float, perturb: bool,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """From rays (R, 3) to colours. Directions are normalised so that t is a distance and the marching step
    is a length. Sample positions are the midpoints of the intervals the marcher emits."""
    rays_d = F.normalize(rays_d, dim=-1)  # (R, 3)
    n_rays = rays_o.shape[0]
    # Jitter the lattice per ray during training, so the field is trained between the fixed steps too.
    offsets = (torch.rand(n_rays, generator=generator).to(rays_o.device) if perturb
               else torch.full((n_rays,), 0.5, device=rays_o.device))  # (R,)
    ray_starts, ray_counts, t_starts, t_ends = march_rays(
        rays_o, rays_d, grid.aabb, grid.bitfield, grid.resolution, near=0.0, far=1e4,
        dt=marching_step(grid.aabb, cfg), max_samples=cfg.max_samples, offsets=offsets, backend=backend)
    ray_of_sample = ray_indices_from_counts(ray_counts)  # (N,)
    t_mid = 0.5 * (t_starts + t_ends)  # (N,)
    points = rays_o[ray_of_sample] + t_mid[:, None] * rays_d[ray_of_sample]  # (N, 3)
    use_amp = cfg.mixed_precision and points.is_cuda
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        rgb, sigma = field(points, rays_d[ray_of_sample], backend)  # (N, 3), (N,)
    weights, opacity, color, depth = composite(sigma.float().contiguous(), rgb.float().contiguous(), t_starts,
                                               t_ends, ray_starts, ray_counts,
                                               early_stop_eps=cfg.early_stop_eps, backend=backend)
    rgb_out = color + (1.0 - opacity)[:, None] * background  # (R, 3)
    return dict(rgb=rgb_out, depth=depth, opacity=opacity, sigma=sigma, n_samples=t_starts.shape[0])


# ================================================================================================
# Losses
# ================================================================================================
def sparsity_loss(sigma: torch.Tensor) -> torch.Tensor:
    """JHashNeRF's sparsity prior: a Cauchy penalty log(1 + sigma^2 / c) on sampled densities pushes empty space
    to exactly empty, which also keeps the occupancy grid tight. c = 0.5 (SNeRG, Hedman et al. 2021, Eq. 9)."""
    if sigma.numel() == 0:
        return sigma.sum()
    return torch.log1p(sigma.square() / 0.5).mean()


def total_variation(encoding: HashEncoding, n_vertices: int = 4096,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """JHashNeRF's total-variation prior on the hash grid: neighbouring vertices should hold similar features.

    On every dense level (res^3 <= T, one row per vertex), n_vertices random vertices v and their +x, +y, +z
    neighbours: mean over v, the 3 directions and the levels of ||theta[v + e_d] - theta[v]||^2 / F. Hashed levels
    are skipped: there, neighbouring vertices share rows with unrelated ones. Returns a () tensor, 0 when no
    level is dense."""
    table = encoding.table  # (L, T, F)
    table_size = table.shape[1]
    steps = torch.eye(3, dtype=torch.int64, device=table.device)  # (3, 3) unit steps +x, +y, +z
    level_losses = []
    for level, res in enumerate(encoding.resolutions.tolist()):
        if res ** 3 > table_size or res < 2:
            continue
        vertices = torch.randint(0, res - 1, (n_vertices, 3), generator=generator).to(table.device)  # (V, 3)
        res_t = torch.tensor(res, device=table.device)
        here = table[level][grid_index(vertices, res_t, table_size)]  # (V, F)
        there = table[level][grid_index(vertices[:, None, :] + steps, res_t, table_size)]  # (V, 3, F)
        level_losses.append(((there - here[:, None, :]) ** 2).mean())
    return torch.stack(level_losses).mean() if level_losses else table.new_zeros(())


# ================================================================================================
# Training loop
# ================================================================================================
def learning_rate(cfg: Config, step: int, elapsed_s: float = 0.0) -> float:
    """cfg.lr_schedule "step" (Sec. 5.4): lr, times lr_step_factor (0.33) at lr_step_start (20k) iterations and
    again every lr_step_every (10k) after. "exponential": from lr to lr_final over the run, or over the time
    budget if that ends first (the cpu and quick presets, whose runs end long before 20k steps)."""
    if cfg.lr_schedule == "step":
        n_drops = 0 if step < cfg.lr_step_start else 1 + (step - cfg.lr_step_start) // cfg.lr_step_every
        return cfg.lr * cfg.lr_step_factor ** n_drops
    return decayed_learning_rate(cfg.lr, cfg.lr_final, step, cfg.iters, elapsed_s, cfg.time_budget_s)


# The ray count moves in multiples of this. Instant-NGP rounds its count up to tiny-cuda-nn's batch granularity
# (256 in its current version); 128 keeps the small batches of a CPU run a little finer.
RAY_GRANULARITY = 128


def next_batch_rays(n_rays: int, n_samples: int, cfg: Config) -> int:
    """App. E.3: a fixed number of samples per batch (cfg.samples_per_batch, 2^18 in the paper) rather than a fixed
    number of rays. Early on the occupancy grid is full and each ray takes many samples, so a batch holds few
    rays; as the grid carves out empty space, rays get cheaper and the batch takes more of them, keeping the
    work per step (and the memory) steady. The next count scales the last one by target / measured samples,
    rounded up to RAY_GRANULARITY, between RAY_GRANULARITY and samples_per_batch (a ray takes at least one sample).
    With samples_per_batch 0 the count stays cfg.batch_rays."""
    if cfg.samples_per_batch <= 0:
        return cfg.batch_rays
    wanted = n_rays * cfg.samples_per_batch / max(n_samples, 1)
    rounded = -(-int(wanted) // RAY_GRANULARITY) * RAY_GRANULARITY
    return max(RAY_GRANULARITY, min(rounded, cfg.samples_per_batch))


def train(cfg: Config) -> dict:
    """Train the hash-grid field; evaluate on the test split; write pictures and videos. Returns the metrics."""
    device = resolve_device(cfg.device)
    # auto on a CPU: the emulated kernels (the .cu compiled with g++), about twice as fast as the twins here; torch where no compiler runs
    backend = resolve_backend(cfg.backend, device, cpu_choice="emulated")
    if note := auto_backend_note(cfg.backend, backend):
        print(note)
    seed_everything(cfg.seed)
    scene = load_scene(cfg.scene, cfg.datadir, downscale=cfg.downscale, gt_protocol=cfg.gt_protocol)
    train_split = scene.splits["train"]
    aabb = scene.aabb.to(device)
    test_background = scene.background  # white for Blender scenes (RGB images are taken to be on it too)

    field_ = HashField(cfg, aabb).to(device)
    grid = OccupancyGrid(aabb, resolution=cfg.grid_resolution).to(device)
    # Sec. 4: Adam (0.9, 0.99, eps 1e-15: the tables' rarely-touched entries need the tiny epsilon), with
    # weight decay on the MLPs only (decaying the tables would erase rarely visited entries).
    optimizer = torch.optim.Adam([
        dict(params=field_.encoding.parameters(), weight_decay=0.0),
        dict(params=list(field_.density_mlp.parameters()) + list(field_.color_mlp.parameters()),
             weight_decay=cfg.weight_decay),
    ], lr=cfg.lr, betas=(0.9, 0.99), eps=1e-15)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision and device.type == "cuda")
    generator = torch.Generator().manual_seed(cfg.seed)
    render_fn = make_image_renderer(field_, grid, cfg, backend, test_background, device)
    step_size = marching_step(aabb, cfg)

    def optical_thickness(points: torch.Tensor) -> torch.Tensor:
        """sigma * step: the opacity-like quantity the grid thresholds (Appendix E)."""
        with torch.no_grad():
            return field_.density(points, backend)[0] * step_size

    batch = dict(rays=cfg.batch_rays)  # rays in the next step; App. E.3 adapts it (next_batch_rays)

    def save_state() -> dict:
        return dict(field=field_.state_dict(), grid=grid.state_dict(), optimizer=optimizer.state_dict(),
                    generator=generator.get_state(), batch_rays=batch["rays"])

    def load_state(state: dict) -> None:  # the grid comes back too: a resumed run does not start fully occupied
        field_.load_state_dict(state["field"])
        grid.load_state_dict(state["grid"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        batch["rays"] = state.get("batch_rays", cfg.batch_rays)

    def validate() -> float:
        return evaluate_split(render_fn, scene.splits["val"], None, n_views=1, background=test_background,
                              progress=False)["mean_psnr"]

    # Resume, logging, held-out checks, checkpoints, time budget, Ctrl-C: common/training.py, TrainingRun.
    with TrainingRun(cfg, "04_hashnerf", scene, device, backend, save_state, load_state, validate,
                     render=render_fn) as run:
        def training_step(step: int) -> None:  # one step of the loop below
            if step % cfg.grid_update_every == 0:  # Appendix E.2: keep the grid in step with the field
                update_occupancy_grid(grid, step, cfg, optical_thickness, generator, backend)

            n_rays = batch["rays"]
            rays_o, rays_d, target = sample_ray_batch(train_split, n_rays, generator)
            rays_o, rays_d, target = rays_o.to(device), rays_d.to(device), target.to(device)
            # A random background per ray (for RGBA data): the model must make the object opaque where it is.
            if target.shape[-1] == 4:
                background = background_color("random", (rays_o.shape[0], 3), generator).to(device)
                target_rgb = composite_on_background(target, background)
            else:
                background, target_rgb = test_background, target

            out = render_rays(field_, grid, rays_o, rays_d, cfg, backend, background, perturb=True,
                              generator=generator)
            loss_rgb = F.mse_loss(out["rgb"], target_rgb)
            loss = loss_rgb
            if cfg.sparsity_weight > 0:
                loss = loss + cfg.sparsity_weight * sparsity_loss(out["sigma"])
            if cfg.tv_weight > 0:
                loss = loss + cfg.tv_weight * total_variation(field_.encoding, generator=generator)

            lr = learning_rate(cfg, step, run.elapsed())
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            check_finite(step, loss, field_.parameters(), lr=lr, scaler=scaler)  # a NaN stops the run here
            scaler.step(optimizer)
            scaler.update()
            batch["rays"] = next_batch_rays(n_rays, out["n_samples"], cfg)  # App. E.3
            # Marching statistics go to the CSV rows only (counting occupied cells unpacks the whole grid).
            run.log(step, loss=loss.item(), psnr=mse_to_psnr(loss_rgb.item()), lr=lr,
                    extra=lambda: dict(rays=n_rays, samples_per_ray=round(out["n_samples"] / n_rays, 2),
                                       occupancy=round(grid.occupancy_fraction(), 4)))

        for step in run.steps():  # a GPU out-of-memory error halves the rays per step and runs the step again
            run.train_step(training_step, step, optimizer, batch=batch)

    metrics = final_evaluation(render_fn, scene, cfg.outdir, cfg.n_test_views, cfg.video_frames, test_background,
                               camera_path=cfg.camera_path, iters=run.step, backend=backend, device=str(device),
                               preset=cfg.preset, gt_protocol=cfg.gt_protocol, dead_model_check=cfg.dead_model_check,
                               lpips_weights=cfg.lpips_weights)
    if cfg.export_mesh:
        export_mesh(field_, aabb, cfg, backend, device)
    return metrics


def export_mesh(field_: HashField, aabb: torch.Tensor, cfg: Config, backend: str, device) -> None:
    """<outdir>/mesh.ply: the surface sigma = cfg.mesh_threshold of the learned density, by marching cubes on a
    mesh_resolution^3 grid spanning the scene box (common/mesh.py), vertices in world units."""
    values = sample_grid(lambda points: field_.density(points, backend)[0], aabb.cpu(), cfg.mesh_resolution,
                         device=device)  # (res, res, res) sigma at the grid nodes
    vertices, faces = marching_cubes(values, aabb.cpu(), level=cfg.mesh_threshold, inside="above")
    path = write_ply(Path(cfg.outdir) / "mesh.ply", vertices, faces)
    print(f"mesh: {len(vertices)} vertices, {len(faces)} triangles -> {path}")


# ================================================================================================
# Evaluation helpers (thin: the work is in common/evaluation.py)
# ================================================================================================
def make_image_renderer(field_: HashField, grid: OccupancyGrid, cfg: Config, backend: str, background, device):
    """A function (rays_o, rays_d) -> {'rgb', 'depth', 'opacity'} for whole images, without jitter."""

    @torch.no_grad()
    def render_fn(rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict[str, torch.Tensor]:
        out = render_rays(field_, grid, rays_o.to(device), rays_d.to(device), cfg, backend, background, perturb=False)
        return {key: out[key].cpu() for key in ("rgb", "depth", "opacity")}

    render_fn.chunk = cfg.chunk
    return render_fn


# ================================================================================================
# main
# ================================================================================================
def main(argv=None) -> dict:
    cfg = parse_config(Config, argv, presets=PRESETS)
    # The run folder checked; with --resume or --render_only, the settings of the checkpoint being continued.
    cfg = prepare_run(cfg, "04_hashnerf", required_keys=("field", "grid"),
                      output_settings=("export_mesh", "mesh_resolution", "mesh_threshold"))
    # The folder is this run's until its last file is written (test renders, videos, mesh), not only while it trains.
    with RunFolder(cfg.outdir):
        return train(cfg)


if __name__ == "__main__":
    run_main(main)
