"""01 - NeRF: Representing Scenes as Neural Radiance Fields for View Synthesis.

Mildenhall, Srinivasan, Tancik, Barron, Ramamoorthi, Ng. ECCV 2020. https://arxiv.org/abs/2003.08934

The first lesson. A scene is a function F(x, d) -> (c, sigma): an MLP maps a 3-D point x and a viewing
direction d to a colour c and a volume density sigma. A pixel's colour is the volume rendering integral of
that field along the pixel's camera ray (Eq. 1), estimated by quadrature (Eq. 3). Everything is learned from
posed photographs with a plain photometric loss (Eq. 6). What makes it work:
  * positional encoding of x and d (Eq. 4), without which an MLP cannot fit fine detail;
  * hierarchical sampling: a coarse network tells where the surfaces are, and a fine network is evaluated
    where the coarse weights are large (Eq. 5).

Read it top to bottom: Config, the model (encoding, MLP), rendering, the training loop, evaluation, main.
Shared plumbing (datasets, rays, metrics, logging, video) lives in common/; compositing and inverse-CDF
sampling, the two hot loops, live in kernels/ as a PyTorch twin and a CUDA kernel (--backend).

Glossary of shapes: R rays in a batch, S samples per ray, N = R*S packed samples, C colour channels.

    python 01_nerf.py                     # built-in scene, CPU-friendly preset on a CPU, paper's on a GPU
    python 01_nerf.py --quick             # under 3 minutes on 2 CPU cores, 25 dB on the built-in scene
    python 01_nerf.py --scene lego        # the real Blender scene from data/nerf_synthetic/lego
    python 01_nerf.py --resume            # continue the last run in the same output folder
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import RunConfig, parse_config, resolve_device, run_main
from common.data.load import load_scene
from common.data.scene import composite_on_background
from common.errors import UserError
from common.evaluation import evaluate_split, final_evaluation
from common.metrics import mse_to_psnr
from common.rays import sample_ray_batch
from common.run_folder import RunFolder
from common.training import TrainingRun, check_finite, decayed_learning_rate, prepare_run, seed_everything
from kernels import starts_from_counts
from kernels.backend import resolve_backend
from kernels.compositing import composite
from kernels.sampling import sample_pdf


# ================================================================================================
# Config
# ================================================================================================
SCENE_LAYOUTS = ("object",)  # the captures this lesson suits (NeRF's Blender scenes; no NDC here, so no LLFF); common/data/load.py warns on others

@dataclass
class Config(RunConfig):
    """NeRF (Mildenhall et al. 2020) on one scene. Defaults are the paper's; presets (PRESETS) size it for a CPU."""

    # The settings every script shares (--scene, --datadir, --outdir, --backend, --device, --seed, --quick,
    # --preset, --resume, --time_budget_s, logging and outputs) come from common/cli.py, RunConfig.
    iters: int = field(default=200_000, metadata={"help": "training iterations (paper: 100k-300k)", "min": 1})
    # --- model (Sec. 5, Appendix A) ---
    pos_freqs: int = field(default=10, metadata={"help": "L for positions in Eq. 4", "min": 0})
    dir_freqs: int = field(default=4, metadata={"help": "L for viewing directions in Eq. 4", "min": 0})
    net_depth: int = field(default=8, metadata={"help": "layers of the density trunk", "min": 1})
    net_width: int = field(default=256, metadata={"help": "units per layer", "min": 2})
    skip_layer: int = field(default=4, metadata={"help": "0-based index of the layer after which gamma(x) is concatenated again (4: after the 5th layer, Fig. 7)", "min": 0})
    density_activation: str = field(default="relu", metadata={"help": "relu (paper) | softplus (mip-NeRF's softplus(x - 1): never a zero gradient)"})
    # --- rendering (Sec. 5.2) ---
    n_coarse: int = field(default=64, metadata={"help": "stratified samples per ray, coarse network", "min": 3})
    n_fine: int = field(default=128, metadata={"help": "importance samples per ray, fine network", "min": 0})
    early_stop_eps: float = field(default=0.0, metadata={"help": "stop compositing once transmittance < eps (0 = off)", "min": 0, "below": 1})
    chunk: int = field(default=4096, metadata={"help": "rays per forward pass when rendering whole images", "min": 1})
    # --- optimisation (Sec. 5.3) ---
    batch_rays: int = field(default=1024, metadata={"help": "rays per iteration (paper: 4096)", "min": 1})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate at the start", "above": 0})
    lr_final: float = field(default=5e-5, metadata={"help": "learning rate at the last iteration (exponential decay)", "above": 0})
    precrop_iters: int = field(default=500, metadata={"help": "sample only the central part of images for this many iterations", "min": 0})
    precrop_fraction: float = field(default=0.5, metadata={"help": "size of that central part", "above": 0, "max": 1})
    mixed_precision: bool = field(default=False, metadata={"help": "fp16 autocast for the MLPs on a GPU, compositing stays fp32 (the paper trains in fp32)"})


# Presets: named sets of overrides. Explicit command-line values always win over a preset.
PRESETS = {
    "paper": {},
    # The same method sized for about 10 minutes on two CPU cores: a narrower, shallower MLP, fewer samples and
    # rays per step, so that a few thousand steps fit. Small networks tolerate (and need, to learn within a few
    # thousand steps) a learning rate ten times the paper's. softplus density: see NeRFField.
    "cpu": dict(iters=2500, net_depth=6, net_width=96, n_coarse=32, n_fine=32, batch_rays=512, chunk=1024,
                precrop_iters=250, lr=3e-3, lr_final=3e-4, density_activation="softplus", ckpt_every=500,
                video_frames=40, log_every=25),
    # One to two minutes on two CPU cores, above 24 dB on the built-in scene's test views.
    "quick": dict(iters=1000, net_depth=4, net_width=64, pos_freqs=8, n_coarse=32, n_fine=32, batch_rays=512,
                  chunk=1024, precrop_iters=0, lr=5e-3, lr_final=5e-4, density_activation="softplus",
                  ckpt_every=500, video_frames=20, log_every=20, n_test_views=4),
}


# ================================================================================================
# Model: positional encoding (Eq. 4) and the radiance-field MLP (Fig. 7)
# ================================================================================================
def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """gamma(p) = (p, sin(2^0 p), cos(2^0 p), ..., sin(2^(L-1) p), cos(2^(L-1) p)): Eq. 4, applied to every
    coordinate of p and laid out frequency by frequency: each term is a whole D-vector (all coordinates' sines
    at 2^0, then their cosines at 2^0, then 2^1, ...), the layout of the authors' code.

    The paper writes 2^k * pi * p; the authors' code (and ours) drops the pi, because scene coordinates are
    not normalised to [-1, 1] and the extra factor would alias the highest frequencies. The identity is kept
    as in their code. notebooks/01_nerf.ipynb fits a 2-D image with and without it to show why it matters.
    x: (..., D) -> (..., D * (1 + 2 * n_freqs))
    """
    ### BEGIN SOLUTION
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)  # (L,)
    angles = x[..., None, :] * freqs[:, None]  # (..., L, D)
    encoded = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)  # (..., L*2D)
    return torch.cat([x, encoded], dim=-1)
    ### END SOLUTION


def encoding_dim(n_freqs: int, dims: int = 3) -> int:
    return dims * (1 + 2 * n_freqs)


# ================================================================================================
# A 2-D image field: the positional-encoding experiment of notebooks/01_nerf.ipynb (Sec. 5.1 of NeRF, Fig. 4's idea)
# ================================================================================================
def image_field(coords: torch.Tensor, n_freqs: int, *layers: torch.Tensor) -> torch.Tensor:
    """An image as a neural field: pixel coordinates -> RGB, through gamma of Eq. 4 and a ReLU MLP.

        rgb(x) = sigmoid(W_K relu(... relu(W_0 gamma(x) + b_0) ...) + b_K)

    gamma is positional_encoding with n_freqs = L frequencies; L = 0 gives gamma(x) = x, the plain coordinates
    (positional_encoding returns x itself then). layers = (W_0, b_0, W_1, b_1, ..., W_K, b_K), the weights of
    K + 1 linear layers in nn.Linear's layout (W_k (out, in), b_k (out,)): ReLU after every layer but the last,
    a sigmoid after the last so that colours lie in [0, 1].
    coords: (N, 2) -> rgb (N, 3) (W_K has 3 rows).
    """
    ### BEGIN SOLUTION
    h = positional_encoding(coords, n_freqs)  # (N, 2 (1 + 2L))
    n_layers = len(layers) // 2
    for k in range(n_layers):
        h = F.linear(h, layers[2 * k], layers[2 * k + 1])
        h = torch.sigmoid(h) if k == n_layers - 1 else F.relu(h)
    return h
    ### END SOLUTION


def init_image_field(n_freqs: int, width: int, depth: int, seed: int) -> list[torch.Tensor]:
    """Weights for image_field: `depth` hidden ReLU layers of `width` units, drawn like nn.Linear's default
    (uniform in +-1/sqrt(fan_in)) from a generator seeded with `seed`, so that a fit is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [encoding_dim(n_freqs, dims=2)] + [width] * depth + [3]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = fan_in ** -0.5
        layers.append((torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound)
        layers.append((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
    return layers


def fit_image_field(coords: torch.Tensor, target: torch.Tensor, n_freqs: int, steps: int, width: int = 128,
                    depth: int = 2, lr: float = 3e-3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit image_field to target colours (N, 3) at coords (N, 2) with full-batch Adam on the mean squared error.
    Deterministic (fixed initialisation, no sampling). Returns the fitted colours (N, 3) and the PSNR of the fit
    before each step (steps,), in dB (-10 log10 MSE, images in [0, 1])."""
    layers = [weight.requires_grad_(True) for weight in init_image_field(n_freqs, width, depth, seed)]
    optimizer = torch.optim.Adam(layers, lr=lr)
    curve = []
    for _ in range(steps):
        loss = ((image_field(coords, n_freqs, *layers) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(-10.0 * torch.log10(loss.detach()))
    with torch.no_grad():
        return image_field(coords, n_freqs, *layers), torch.stack(curve)


class NeRFField(nn.Module):
    """F(x, d) -> (rgb, sigma). Appendix A / Fig. 7: a ReLU trunk on gamma(x) with a skip connection, sigma
    from the trunk alone (so geometry cannot depend on the view), then one more layer that sees gamma(d)
    for the view-dependent colour."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.pos_freqs, self.dir_freqs, self.skip_layer = cfg.pos_freqs, cfg.dir_freqs, cfg.skip_layer
        if cfg.density_activation not in ("relu", "softplus"):
            raise UserError(f"--density_activation must be relu or softplus, got {cfg.density_activation!r}")
        self.density_activation = cfg.density_activation
        in_pos, in_dir, width = encoding_dim(cfg.pos_freqs), encoding_dim(cfg.dir_freqs), cfg.net_width
        layers = []
        for i in range(cfg.net_depth):
            fan_in = in_pos if i == 0 else width + (in_pos if i == cfg.skip_layer + 1 else 0)
            layers.append(nn.Linear(fan_in, width))
        self.trunk = nn.ModuleList(layers)
        self.sigma_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.rgb_hidden = nn.Linear(width + in_dir, width // 2)
        self.rgb_head = nn.Linear(width // 2, 3)

    def forward(self, points: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points, dirs: (N, 3) -> rgb (N, 3) in [0,1], sigma (N,) >= 0."""
        encoded_x = positional_encoding(points, self.pos_freqs)  # (N, 3+6L)
        h = encoded_x
        for i, layer in enumerate(self.trunk):
            if i == self.skip_layer + 1:
                h = torch.cat([h, encoded_x], dim=-1)  # skip: gamma(x) joins the 5th layer's output (Fig. 7)
            h = F.relu(layer(h), inplace=True)  # in place: no second copy of each output (01's trunk: 27% less time on 2 CPU cores)
        raw_sigma = self.sigma_head(h).squeeze(-1)  # (N,)
        # Density must be non-negative. ReLU (the paper's) has zero gradient for negative inputs: a sample whose
        # density starts at 0 gets no signal, and a small network can stall at a blank image for a while.
        # softplus(x - 1) (mip-NeRF, Sec. 4) is smooth and starts near-transparent (softplus(-1) = 0.31).
        if self.density_activation == "relu":
            sigma = F.relu(raw_sigma)
        else:
            sigma = F.softplus(raw_sigma - 1.0)
        h = torch.cat([self.feature(h), positional_encoding(dirs, self.dir_freqs)], dim=-1)
        rgb = torch.sigmoid(self.rgb_head(F.relu(self.rgb_hidden(h))))  # (N, 3)
        return rgb, sigma


# ================================================================================================
# Rendering: stratified sampling (Eq. 2), volume rendering (Eq. 3), hierarchical sampling (Eq. 5)
# ================================================================================================
def stratified_samples(n_rays: int, n_samples: int, near: float, far: float, perturb: bool,
                       generator: torch.Generator | None, device) -> torch.Tensor:
    """Eq. 2: t_i ~ U[t_n + (i-1)/S (t_f - t_n), t_n + i/S (t_f - t_n)]; the bin midpoint when not perturbed.
    Returns (R, S) sorted depths."""
    edges = torch.linspace(near, far, n_samples + 1, device=device)  # (S+1,)
    lower, upper = edges[:-1], edges[1:]
    if perturb:
        u = torch.rand(n_rays, n_samples, generator=generator, device="cpu").to(device)  # (R, S)
    else:
        u = torch.full((n_rays, n_samples), 0.5, device=device)
    return lower + (upper - lower) * u  # (R, S)


def volume_render(sigma: torch.Tensor, rgb: torch.Tensor, t_vals: torch.Tensor, far: float) -> dict[str, torch.Tensor]:
    """Eq. 3, the quadrature of the volume rendering integral, for R rays of S samples each:

        C(r) = sum_i T_i (1 - exp(-sigma_i delta_i)) c_i,   T_i = exp(-sum_{j<i} sigma_j delta_j)

    Sample i stands for the interval [t_i, t_{i+1}]; the last one ends at the far plane (the authors' code makes
    it 1e10 long instead, so the last sample soaks up all light left; ending at `far` lets a ray that meets
    nothing stay transparent and show the background). delta = t_{i+1} - t_i as Eq. 3 writes it, in units of t:
    our rays_d have camera-frame z = -1 (common/rays.py), so t is depth along the optical axis and sigma is a
    density per unit of depth. The authors' code multiplies delta by |d|, making sigma a density per world unit
    (04 does the same by normalising d); without it, one sigma makes a corner ray (|d| ~ 1.1) about 10% less
    opaque per unit of length than the centre ray. We keep the equation as written: with |d| the quick preset,
    tuned without it, reached 22.7 dB instead of its 24 dB bar in the CI run of this revision.
    sigma: (R, S) >= 0; rgb: (R, S, 3); t_vals: (R, S) sorted.
    Returns weights (R, S), opacity (R,), color (R, 3), depth (R,) (expected t of the interval midpoints).
    """
    ### BEGIN SOLUTION
    t_ends = torch.cat([t_vals[:, 1:], torch.full_like(t_vals[:, :1], far)], dim=-1)  # (R, S) t_{i+1}
    delta = t_ends - t_vals  # (R, S) interval lengths in units of t
    alpha = 1.0 - torch.exp(-sigma * delta)  # (R, S) opacity of each interval
    # T_i: the light that survives everything before sample i (an exclusive cumulative sum of sigma * delta).
    optical_depth = torch.cumsum(sigma * delta, dim=-1)  # (R, S) sum_{j<=i}
    trans = torch.exp(-torch.cat([torch.zeros_like(optical_depth[:, :1]), optical_depth[:, :-1]], dim=-1))  # (R, S)
    weights = trans * alpha  # (R, S) w_i = T_i alpha_i, also the pdf for Eq. 5
    return dict(weights=weights, opacity=weights.sum(dim=-1),  # (R,)
                color=(weights[..., None] * rgb).sum(dim=1),  # (R, 3)
                depth=(weights * 0.5 * (t_vals + t_ends)).sum(dim=-1))  # (R,)
    ### END SOLUTION


def transmittance(sigmas: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """T_i of Eq. 3, the fraction of light that travels from the start of the ray to sample i unabsorbed:

        T_i = exp(-sum_{j<i} sigma_j delta_j)

    an EXCLUSIVE cumulative sum (sample i's own interval is not in its T_i), so T_1 = 1 always. volume_render
    above computes the same thing inline; here it stands alone, to be checked by hand on a few numbers.
    sigmas, deltas: (..., S) densities >= 0 and interval lengths along each ray -> T (..., S) in (0, 1].
    """
    ### BEGIN SOLUTION
    optical_depth = torch.cumsum(sigmas * deltas, dim=-1)  # (..., S) sum_{j<=i}
    exclusive = torch.cat([torch.zeros_like(optical_depth[..., :1]), optical_depth[..., :-1]], dim=-1)  # sum_{j<i}
    return torch.exp(-exclusive)
    ### END SOLUTION


def render_along_rays(field: NeRFField, rays_o: torch.Tensor, rays_d: torch.Tensor, t_vals: torch.Tensor,
                      far: float, cfg: Config, backend: str) -> dict[str, torch.Tensor]:
    """Evaluate the field at the samples t_vals (R, S) and composite them (Eq. 3).

    Two paths compute the same numbers (tests/scripts/test_01_nerf.py checks it): with --backend torch, the
    dense `volume_render` above, Eq. 3 as you would write it; otherwise the packed `composite` kernel of
    kernels/compositing.cu, which walks each ray in one GPU thread, stops once a ray is opaque and has a
    closed-form backward (no (R, S) intermediates kept for autograd). The packed layout is trivial here: every
    ray has S samples.
    """
    n_rays, n_samples = t_vals.shape
    points = rays_o[:, None, :] + t_vals[..., None] * rays_d[:, None, :]  # (R, S, 3)
    view_dirs = F.normalize(rays_d, dim=-1)[:, None, :].expand_as(points)  # (R, S, 3)
    use_amp = cfg.mixed_precision and points.is_cuda
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        rgb, sigma = field(points.reshape(-1, 3), view_dirs.reshape(-1, 3))  # (N, 3), (N,)
    sigma = sigma.float().view(n_rays, n_samples)  # (R, S) rendering always in fp32
    rgb = rgb.float().view(n_rays, n_samples, 3)  # (R, S, 3)
    if backend == "torch" and cfg.early_stop_eps == 0:
        return volume_render(sigma, rgb, t_vals, far)
    t_ends = torch.cat([t_vals[:, 1:], torch.full_like(t_vals[:, :1], far)], dim=-1)  # (R, S)
    counts = torch.full((n_rays,), n_samples, dtype=torch.int32, device=t_vals.device)  # (R,)
    weights, opacity, color, depth = composite(
        sigma.reshape(-1).contiguous(), rgb.reshape(-1, 3).contiguous(),
        t_vals.reshape(-1).contiguous(), t_ends.reshape(-1).contiguous(), starts_from_counts(counts), counts,
        early_stop_eps=cfg.early_stop_eps, backend=backend)
    return dict(weights=weights.view(n_rays, n_samples), opacity=opacity, color=color, depth=depth)


def render_rays(coarse: NeRFField, fine: NeRFField, rays_o: torch.Tensor, rays_d: torch.Tensor,
                near: float, far: float, cfg: Config, backend: str, background: torch.Tensor | float,
                perturb: bool, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """From rays (R, 3) to colours: the whole method on one screen (Sec. 5.2).

    1. the coarse network at S_c stratified samples;
    2. S_f more samples drawn from the piecewise-constant pdf of the coarse weights (Eq. 5), treated as
       constants (no gradient flows through the sample positions);
    3. the fine network at the union of both sets, sorted.
    Colours are composited over `background` (white for Blender scenes): C + (1 - opacity) * bg.
    """
    t_coarse = stratified_samples(rays_o.shape[0], cfg.n_coarse, near, far, perturb, generator, rays_o.device)
    out_coarse = render_along_rays(coarse, rays_o, rays_d, t_coarse, far, cfg, backend)

    # Bins for Eq. 5: midpoints between coarse samples, as in the authors' code; the end weights are dropped.
    mids = 0.5 * (t_coarse[:, 1:] + t_coarse[:, :-1])  # (R, S_c - 1)
    t_importance = sample_pdf(mids, out_coarse["weights"][:, 1:-1].detach(), cfg.n_fine, stratified=perturb,
                              generator=generator, backend=backend)  # (R, S_f)
    t_fine, _ = torch.sort(torch.cat([t_coarse, t_importance], dim=-1), dim=-1)  # (R, S_c + S_f)
    out_fine = render_along_rays(fine, rays_o, rays_d, t_fine, far, cfg, backend)

    def over_background(out):
        return out["color"] + (1.0 - out["opacity"])[:, None] * background

    return dict(rgb_coarse=over_background(out_coarse), rgb=over_background(out_fine),
                depth=out_fine["depth"], opacity=out_fine["opacity"])


# ================================================================================================
# Training loop
# ================================================================================================
def central_crop(split, fraction: float) -> tuple[int, int, int, int]:
    """Precrop (a trick of the PyTorch port nerf-pytorch; the paper does not use it): for the first iterations, draw rays only from the
    central `fraction` of each image, so that the object is learnt before the white background, which would
    otherwise pull every density towards zero. Returns (row_lo, row_hi, col_lo, col_hi), at least one pixel."""
    _, height, width, _ = split.images.shape
    half_h, half_w = max(1, round(height * fraction / 2)), max(1, round(width * fraction / 2))
    return (max(0, height // 2 - half_h), min(height, height // 2 + half_h),
            max(0, width // 2 - half_w), min(width, width // 2 + half_w))


def learning_rate(cfg: Config, step: int, elapsed_s: float = 0.0) -> float:
    """Exponential decay from lr to lr_final over the run, or over the time budget if that ends first."""
    return decayed_learning_rate(cfg.lr, cfg.lr_final, step, cfg.iters, elapsed_s, cfg.time_budget_s)


def train(cfg: Config) -> dict:
    """Train coarse and fine networks; evaluate on the test split; write pictures and videos. Returns the metrics."""
    device = resolve_device(cfg.device)
    backend = resolve_backend(cfg.backend, device)
    seed_everything(cfg.seed)
    scene = load_scene(cfg.scene, cfg.datadir, downscale=cfg.downscale, gt_protocol=cfg.gt_protocol)
    train_split = scene.splits["train"]
    background = scene.background  # white for Blender scenes (RGB images are taken to be on it too)

    coarse, fine = NeRFField(cfg).to(device), NeRFField(cfg).to(device)
    params = list(coarse.parameters()) + list(fine.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-7)  # Sec. 5.3
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision and device.type == "cuda")
    generator = torch.Generator().manual_seed(cfg.seed)  # CPU generator: the same rays on every device
    render_fn = make_image_renderer(coarse, fine, scene, cfg, backend, background, device)

    def save_state() -> dict:
        return dict(coarse=coarse.state_dict(), fine=fine.state_dict(), optimizer=optimizer.state_dict(),
                    generator=generator.get_state())

    def load_state(state: dict) -> None:
        coarse.load_state_dict(state["coarse"])
        fine.load_state_dict(state["fine"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])

    def validate() -> float:
        return evaluate_split(render_fn, scene.splits["val"], None, n_views=1, background=background,
                              progress=False)["mean_psnr"]

    # Resume, logging, held-out checks, checkpoints, time budget, Ctrl-C: common/training.py, TrainingRun.
    with TrainingRun(cfg, "01_nerf", scene, device, backend, save_state, load_state, validate,
                     render=render_fn) as run:
        def training_step(step: int) -> None:  # one step of the loop below
            pixels = central_crop(train_split, cfg.precrop_fraction) if step <= cfg.precrop_iters else None
            rays_o, rays_d, target = sample_ray_batch(train_split, cfg.batch_rays, generator, pixel_box=pixels)
            rays_o, rays_d, target = rays_o.to(device), rays_d.to(device), target.to(device)
            target_rgb = composite_on_background(target, background)  # RGBA over white; RGB as it is

            out = render_rays(coarse, fine, rays_o, rays_d, scene.near, scene.far, cfg, backend, background,
                              perturb=True, generator=generator)
            # Eq. 6: squared error of both the coarse and the fine rendering.
            loss_fine = F.mse_loss(out["rgb"], target_rgb)
            loss = F.mse_loss(out["rgb_coarse"], target_rgb) + loss_fine

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

    return final_evaluation(render_fn, scene, cfg.outdir, cfg.n_test_views, cfg.video_frames, background,
                            camera_path=cfg.camera_path, iters=run.step, backend=backend, device=str(device),
                            preset=cfg.preset, gt_protocol=cfg.gt_protocol, dead_model_check=cfg.dead_model_check,
                            lpips_weights=cfg.lpips_weights)


# ================================================================================================
# Evaluation helpers (thin: the work is in common/evaluation.py)
# ================================================================================================
def make_image_renderer(coarse, fine, scene, cfg: Config, backend: str, background, device):
    """A function (rays_o, rays_d) -> {'rgb', 'depth', 'opacity'} for whole images, without perturbation."""

    @torch.no_grad()
    def render_fn(rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict[str, torch.Tensor]:
        out = render_rays(coarse, fine, rays_o.to(device), rays_d.to(device), scene.near, scene.far, cfg,
                          backend, background, perturb=False)
        return {key: out[key].cpu() for key in ("rgb", "depth", "opacity")}

    render_fn.chunk = cfg.chunk
    return render_fn


# ================================================================================================
# main
# ================================================================================================
def main(argv=None) -> dict:
    cfg = parse_config(Config, argv, presets=PRESETS)
    # The run folder checked; with --resume or --render_only, the settings of the checkpoint being continued.
    cfg = prepare_run(cfg, "01_nerf", required_keys=("coarse", "fine"))
    # The folder is this run's until its last file is written (test renders, videos, mesh), not only while it trains.
    with RunFolder(cfg.outdir):
        return train(cfg)


if __name__ == "__main__":
    run_main(main)
