"""Kernel microbenchmarks: every kernel of kernels/ on every backend this device offers, timed the same way.

For each kernel and case the harness builds seeded inputs once, moves them to the device, runs each backend once
to check its outputs against the PyTorch twin, then warms up and times repeated calls (``torch.cuda.synchronize()``
before and after each call on a GPU). It prints the median and the interquartile range (IQR) of the per-call times
and the speed-up of each backend over ``torch``, and saves everything, with the machine, the versions and the
exact command, as JSON.

    python benchmarks/bench_kernels.py                                  # realistic sizes, every backend here
    python benchmarks/bench_kernels.py --sizes small --backends torch,emulated   # CPU smoke run, ~30 s
    python benchmarks/bench_kernels.py --kernels hash_encoding --repeats 50 --out my.json

Cases (sizes "full"; "small" shrinks every one of them for a CPU):
    compositing     forward, forward+backward     R = 4096 rays, ~128 packed samples per ray (N ~ 2^19)
    sampling        inverse-CDF, stratified       R = 4096 rays, 62 coarse bins -> 128 fine samples
    hash_encoding   forward; fwd+bwd (table grad); fwd+bwd (table and input grads)
                                                  N = 2^18 points, L = 16, F = 2, T = 2^19
    ray_marching    sphere of occupied cells; full grid   R = 4096 rays, 128^3 grid, a step of one cell
    occupancy       one grid update (Appendix E.2 of Instant-NGP), 128^3 grid, G^3/4 cells

Glossary: R rays, S samples per ray, N packed samples or points, L levels, F features per level, T table rows,
G cells per axis of the occupancy grid.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repo root importable (the package import needs nothing)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks import machine as machine_info
from common.errors import UserError
from kernels import backend as kernel_backend
from kernels.compositing import composite, ray_indices_from_counts, starts_from_counts
from kernels.sampling import sample_pdf

KERNELS = ("compositing", "sampling", "hash_encoding", "ray_marching", "occupancy")

# Sizes. "full" is what one training iteration of 01_nerf / 04_hashnerf hands to each kernel on a GPU
# (Instant-NGP's defaults for the hash grid: L = 16, F = 2, T = 2^19, N_min = 16; a 128^3 occupancy grid).
SIZES = {
    "full": dict(n_rays=4096, samples_per_ray=128, n_coarse=64, n_points=2 ** 18, n_levels=16, n_features=2,
                 log2_table_size=19, base_resolution=16, max_resolution=2048, grid_res=128),
    "small": dict(n_rays=256, samples_per_ray=64, n_coarse=32, n_points=2 ** 14, n_levels=16, n_features=2,
                  log2_table_size=15, base_resolution=16, max_resolution=512, grid_res=32),
}

# The built-in scene's geometry (common/data/builtin_scene.py): objects in [-1.5, 1.5]^3, cameras at radius 4, near 2, far 6.
SCENE_HALF_SIZE, CAMERA_RADIUS, NEAR, FAR = 1.5, 4.0, 2.0, 6.0
SPHERE_RADIUS = 1.0  # the occupied cells of the "sphere" marching case: 4/3 pi / 27, about 16% of the box

# A compiled backend "matches" the twin when max |out - twin| <= MATCH_TOLERANCE * max |twin| over each output.
# Relative to the largest value, because the table gradient of the hash grid is a sum of hundreds of atomicAdds
# per row whose order differs from the twin's: its error scales with the size of the sums, not of each entry.
MATCH_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One timed operation. ``build(backend)`` returns a function that runs it once and returns its outputs."""
    kernel: str
    variant: str
    sizes: str
    build: Callable[[str], Callable[[], object]]
    describe: Callable[[object], dict] | None = None  # facts about the outputs worth recording (samples per ray)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator: inputs are drawn on the CPU and moved, so every device gets the very same numbers."""
    return torch.Generator().manual_seed(seed)


def compositing_cases(size: dict, device: torch.device, seed: int) -> list[Case]:
    """Packed volume rendering (NeRF Eq. 3) of R rays with ~S samples each, S/2 to 3S/2 per ray."""
    n_rays, samples_per_ray = size["n_rays"], size["samples_per_ray"]
    generator = seeded(seed)
    ray_counts = torch.randint(samples_per_ray // 2, samples_per_ray + samples_per_ray // 2 + 1, (n_rays,),
                               generator=generator).to(torch.int32)  # (R,)
    ray_starts = starts_from_counts(ray_counts)  # (R,)
    n_samples = int(ray_counts.sum())
    # Sorted intervals from NEAR: t_start = NEAR + the deltas before the sample on its own ray.
    deltas = (FAR - NEAR) / samples_per_ray * (0.5 + torch.rand(n_samples, generator=generator, dtype=torch.float64))
    before = torch.cumsum(deltas, 0) - deltas  # (N,) exclusive cumsum over all rays
    ray_indices = ray_indices_from_counts(ray_counts)  # (N,)
    t_starts = NEAR + before - before[ray_starts.to(torch.int64)][ray_indices]  # (N,) per-ray exclusive cumsum
    t_ends = t_starts + deltas  # (N,)
    sigmas = 2.0 * torch.rand(n_samples, generator=generator)  # (N,) optical depth ~4 per ray: most rays saturate
    rgbs = torch.rand(n_samples, 3, generator=generator)  # (N, 3)
    grad_color = torch.randn(n_rays, 3, generator=generator)  # (R, 3) a fixed upstream gradient
    grad_opacity = torch.randn(n_rays, generator=generator)  # (R,)
    to = lambda t: t.to(device=device, dtype=torch.float32 if t.is_floating_point() else t.dtype).contiguous()
    sigmas, rgbs, t_starts, t_ends, grad_color, grad_opacity = map(
        to, (sigmas, rgbs, t_starts, t_ends, grad_color, grad_opacity))
    ray_starts, ray_counts = ray_starts.to(device), ray_counts.to(device)
    packing = (t_starts, t_ends, ray_starts, ray_counts)

    def forward(backend: str):
        def run():
            with torch.no_grad():
                return composite(sigmas, rgbs, *packing, backend=backend)  # weights, opacity, color, depth
        return run

    def forward_backward(backend: str):
        sigmas_leaf, rgbs_leaf = sigmas.clone().requires_grad_(True), rgbs.clone().requires_grad_(True)

        def run():
            weights, opacity, color, depth = composite(sigmas_leaf, rgbs_leaf, *packing, backend=backend)
            # The loss of a training step sees colour (and opacity, through the background): d/dsigma, d/drgb.
            return torch.autograd.grad((color, opacity), (sigmas_leaf, rgbs_leaf), (grad_color, grad_opacity))
        return run

    sizes = f"R={n_rays} N={n_samples:,}"
    return [Case("compositing", "forward", sizes, forward),
            Case("compositing", "forward+backward", sizes, forward_backward)]


def sampling_cases(size: dict, device: torch.device, seed: int) -> list[Case]:
    """Hierarchical sampling (NeRF Sec. 5.2): n_coarse stratified samples -> their midpoints as bin edges."""
    n_rays, n_coarse, n_fine = size["n_rays"], size["n_coarse"], size["samples_per_ray"]
    generator = seeded(seed + 1)
    t_coarse = torch.linspace(NEAR, FAR, n_coarse) + (FAR - NEAR) / n_coarse * torch.rand(
        n_rays, n_coarse, generator=generator)  # (R, n_coarse) sorted
    bins = (0.5 * (t_coarse[:, 1:] + t_coarse[:, :-1])).to(device).contiguous()  # (R, B+1), B = n_coarse - 2
    # (R, B), B = n_coarse - 2 as NeRF drops the two end weights. Bounded away from 0: the time does not depend on
    # the values, and a near-empty bin makes the inverse CDF so steep (dt/du = width / mass) that the faces' few-ulp
    # cdf differences move samples by a large part of a bin, which the output check would flag (tests/kernels/
    # test_sampling.py checks those cases through the cdf instead).
    weights = (0.01 + torch.rand(n_rays, n_coarse - 2, generator=generator)).to(device).contiguous()
    u_generator = torch.Generator(device=device)

    def build(backend: str):
        def run():
            u_generator.manual_seed(seed)  # every call (and every backend) inverts the same u
            return sample_pdf(bins, weights, n_fine, stratified=True, generator=u_generator, backend=backend)
        return run

    return [Case("sampling", "inverse-CDF (stratified)", f"R={n_rays} B={n_coarse - 2} n={n_fine}", build)]


def hash_encoding_cases(size: dict, device: torch.device, seed: int) -> list[Case]:
    """Instant-NGP's multiresolution hash encoding (Sec. 3): forward, and backward to the table (and to x)."""
    from kernels.hash_encoding import HashEncoding

    n_points, n_levels, n_features = size["n_points"], size["n_levels"], size["n_features"]
    encoding = HashEncoding(n_levels, n_features, size["log2_table_size"], size["base_resolution"],
                            size["max_resolution"])
    generator = seeded(seed + 2)
    with torch.no_grad():  # seeded table: HashEncoding's own init draws from the global generator
        encoding.table.copy_(torch.rand(encoding.table.shape, generator=generator) * 2 - 1)
    encoding = encoding.to(device)
    x = torch.rand(n_points, 3, generator=generator).to(device)  # (N, 3) in [0, 1]^3
    grad_encoded = torch.randn(n_points, n_levels * n_features, generator=generator).to(device)  # (N, L*F)

    def forward(backend: str):
        def run():
            with torch.no_grad():
                return encoding(x, backend=backend)  # (N, L*F)
        return run

    def backward_table(backend: str):
        def run():
            encoded = encoding(x, backend=backend)  # (N, L*F)
            return torch.autograd.grad(encoded, encoding.table, grad_encoded)  # (L, T, F)
        return run

    def backward_table_and_x(backend: str):
        x_leaf = x.clone().requires_grad_(True)

        def run():
            encoded = encoding(x_leaf, backend=backend)  # (N, L*F)
            return torch.autograd.grad(encoded, (encoding.table, x_leaf), grad_encoded)  # (L, T, F), (N, 3)
        return run

    sizes = f"N=2^{int(math.log2(n_points))} L={n_levels} F={n_features} T=2^{size['log2_table_size']}"
    return [Case("hash_encoding", "forward", sizes, forward),
            Case("hash_encoding", "fwd+bwd (table grad)", sizes, backward_table),
            Case("hash_encoding", "fwd+bwd (table + input grads)", sizes, backward_table_and_x)]


def scene_box(device: torch.device) -> torch.Tensor:
    return torch.tensor([[-SCENE_HALF_SIZE] * 3, [SCENE_HALF_SIZE] * 3], device=device)  # (2, 3)


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    """A closed-form scene for the grid: density 10 inside a sphere of radius SPHERE_RADIUS, 0 outside. (M,3)->(M,)"""
    return 10.0 * (points.norm(dim=-1) < SPHERE_RADIUS).to(torch.float32)


def ray_marching_cases(size: dict, device: torch.device, seed: int) -> list[Case]:
    """Occupancy-grid marching (Instant-NGP Sec. 5.4): a sphere of occupied cells, and a fully occupied grid."""
    from kernels.ray_marching import march_rays, pack_bitfield_torch

    n_rays, grid_res = size["n_rays"], size["grid_res"]
    generator = seeded(seed + 3)
    # Cameras on a sphere of radius 4 looking at points near the centre, as in the built-in and Blender scenes.
    rays_o = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=generator), dim=-1) * CAMERA_RADIUS
    targets = torch.rand(n_rays, 3, generator=generator) - 0.5  # (R, 3) in [-0.5, 0.5]^3
    rays_d = torch.nn.functional.normalize(targets - rays_o, dim=-1)  # (R, 3)
    rays_o, rays_d, aabb = rays_o.to(device), rays_d.to(device), scene_box(device)
    # Fixed steps of (box size) / S: a ray through the centre of a full grid gets about S samples.
    dt = 2 * SCENE_HALF_SIZE / size["samples_per_ray"]
    cell_centres = (torch.stack(torch.meshgrid(*[torch.arange(grid_res)] * 3, indexing="ij"), -1).flip(-1)
                    .reshape(-1, 3).to(torch.float32) + 0.5) / grid_res * 2 * SCENE_HALF_SIZE - SCENE_HALF_SIZE
    # (G^3, 3), cell x + y*G + z*G^2 (x fastest, as in OccupancyGrid)
    bitfields = {"sphere": pack_bitfield_torch(sphere_density(cell_centres), 0.5).to(device),
                 "full grid": torch.full((grid_res ** 3 // 8,), 255, dtype=torch.uint8, device=device)}

    def build_for(bitfield: torch.Tensor):
        def build(backend: str):
            def run():
                return march_rays(rays_o, rays_d, aabb, bitfield, grid_res, near=NEAR, far=FAR, dt=dt,
                                  backend=backend)  # ray_starts, ray_counts, t_starts, t_ends
            return run
        return build

    def describe(outputs) -> dict:
        ray_counts = outputs[1]
        return {"samples_per_ray": round(float(ray_counts.float().mean()), 1), "n_samples": int(ray_counts.sum())}

    cases = []
    for name, bitfield in bitfields.items():
        occupied = float(((bitfield.cpu()[:, None].to(torch.int64) >> torch.arange(8)) & 1).float().mean())
        cases.append(Case("ray_marching", f"{name} ({occupied:.0%} occupied)", f"R={n_rays} G={grid_res}^3 dt={dt:.4f}",
                          build_for(bitfield), describe))
    return cases


def occupancy_cases(size: dict, device: torch.device, seed: int) -> list[Case]:
    """One occupancy-grid update (Instant-NGP Appendix E.2): choose G^3/4 cells, evaluate, decay-max, pack bits.

    The whole public step is timed (cell choice, random points and the closed-form density are the same torch
    code on every backend); only the decay-max and the bit packing are kernels, so the speed-up is diluted.
    """
    from kernels.ray_marching import OccupancyGrid, occupancy_update, pack_bitfield

    grid_res = size["grid_res"]

    def build(backend: str):
        grid = OccupancyGrid(scene_box("cpu"), resolution=grid_res).to(device)  # a fresh grid per backend
        generator = torch.Generator(device=device)

        def run():
            # One update of 04_hashnerf.update_occupancy_grid (grid_policy cheap) after its warm-up: G^3/4 distinct
            # cells, the density at a random point of each, the decayed max and the bit packing (the last two are
            # kernels).
            generator.manual_seed(seed + 4)  # the same cells and points on every call and backend
            cells = torch.randperm(grid.n_cells, generator=generator, device=device)[: grid.n_cells // 4].sort().values
            new = sphere_density(grid.cell_points(cells, generator))
            grid.density.copy_(occupancy_update(grid.density, cells, new, 0.95, backend))
            grid.bitfield.copy_(pack_bitfield(grid.density, min(0.01, float(grid.density.mean())), backend))
            return grid.density, grid.bitfield
        return run

    return [Case("occupancy", "update (G^3/4 cells)", f"G={grid_res}^3", build)]


CASE_BUILDERS = {"compositing": compositing_cases, "sampling": sampling_cases, "hash_encoding": hash_encoding_cases,
                 "ray_marching": ray_marching_cases, "occupancy": occupancy_cases}


# ----------------------------------------------------------------------------------------------------------
# Timing and checking
# ----------------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    """Wait for the GPU: kernels launch asynchronously, so a timer must not stop before they finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(run: Callable[[], object], device: torch.device, warmup: int, repeats: int,
               max_seconds: float, min_repeats: int = 5) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then ``repeats`` timed ones (at least ``min_repeats``; stops
    early once the timed calls have taken ``max_seconds``)."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats:
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if len(times) >= min_repeats and time.perf_counter() - started > max_seconds:
            break
    return times


def summarize(times: list[float]) -> dict:
    """Median and quartiles in milliseconds: robust to the odd slow call (a context switch, a GC pause)."""
    ms = np.asarray(times) * 1e3
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3), "iqr_ms": float(q3 - q1),
            "min_ms": float(ms.min()), "mean_ms": float(ms.mean()), "repeats": len(times)}


def as_tensors(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for t in outputs if isinstance(t, torch.Tensor)]


def detached_copy(outputs) -> list[torch.Tensor]:
    return [t.detach().clone() for t in as_tensors(outputs)]


def compare(reference: list[torch.Tensor], outputs) -> dict:
    """Largest error of each output relative to the twin's largest value; shapes and dtypes must agree."""
    candidate = as_tensors(outputs)
    if len(candidate) != len(reference):
        return {"matches_torch": False, "mismatch": f"{len(candidate)} outputs, the twin gives {len(reference)}"}
    worst = 0.0
    for index, (ref, out) in enumerate(zip(reference, candidate)):
        if ref.shape != out.shape or ref.dtype != out.dtype:
            return {"matches_torch": False, "mismatch": f"output {index}: {tuple(out.shape)} {out.dtype}, "
                                                        f"the twin's is {tuple(ref.shape)} {ref.dtype}"}
        if ref.numel() == 0:
            continue
        ref64, out64 = ref.detach().double(), out.detach().double().to(ref.device)
        scale = float(ref64.abs().max())
        error = float((ref64 - out64).abs().max())
        worst = max(worst, error / scale if scale > 0 else error)
    return {"matches_torch": bool(worst <= MATCH_TOLERANCE), "max_rel_error": worst}


# ----------------------------------------------------------------------------------------------------------
# Backends and the run
# ----------------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no GPU here; use --device cpu")
    return torch.device(name)


def choose_backends(names: str, device: torch.device) -> list[str]:
    """'auto': torch and cuda on a GPU (cuda only when CuPy works), torch and emulated on a CPU. Torch first:
    it is the reference every other backend is checked and compared against."""
    if names == "auto":
        compiled = "cuda" if device.type == "cuda" else "emulated"
        try:
            kernel_backend.resolve_backend(compiled, device)
            wanted = ["torch", compiled]
        except kernel_backend.BackendError as error:
            print(f"note: skipping the {compiled} backend: {error}", file=sys.stderr)
            wanted = ["torch"]
    else:
        wanted = [name.strip() for name in names.split(",") if name.strip()]
        for name in wanted:
            kernel_backend.resolve_backend(name, device)  # a one-line BackendError says what to use instead
    return sorted(dict.fromkeys(wanted), key=lambda name: name != "torch")


def run_cases(cases: list[Case], backends: list[str], device: torch.device, args) -> list[dict]:
    rows = []
    for case in cases:
        reference, torch_median = None, None
        for backend in backends:
            row = {"kernel": case.kernel, "case": case.variant, "sizes": case.sizes, "backend": backend}
            try:
                run = case.build(backend)
                outputs = run()  # the first call compiles (cuda/emulated): never timed
                synchronize(device)
                if case.describe is not None:
                    row.update(case.describe(outputs))
                if backend == "torch":
                    reference = detached_copy(outputs)
                elif reference is not None:
                    row.update(compare(reference, outputs))
                del outputs
                row.update(summarize(time_calls(run, device, args.warmup, args.repeats, args.max_case_s)))
            except Exception as error:  # one failing kernel must not hide the others' numbers
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            if backend == "torch" and "median_ms" in row:
                torch_median = row["median_ms"]
            row["speedup_vs_torch"] = (torch_median / row["median_ms"]
                                       if torch_median is not None and "median_ms" in row else None)
            rows.append(row)
            print_row(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


TABLE_COLUMNS = (("kernel", 14), ("case", 30), ("sizes", 32), ("backend", 9), ("median ms", 11), ("IQR ms", 9),
                 ("vs torch", 9), ("check", 8), ("notes", 0))
NUMERIC_COLUMNS = ("median ms", "IQR ms", "vs torch")


def print_header() -> None:
    print("  ".join(name if not width else f"{name:>{width}}" if name in NUMERIC_COLUMNS else f"{name:<{width}}"
                    for name, width in TABLE_COLUMNS))
    print("-" * (sum(width for _, width in TABLE_COLUMNS) + 2 * len(TABLE_COLUMNS) + 10))


def print_row(row: dict) -> None:
    if "error" in row:
        cells = [row["kernel"], row["case"], row["sizes"], row["backend"], "error", "", "", "", row["error"]]
    else:
        speedup = f"{row['speedup_vs_torch']:.2f}x" if row.get("speedup_vs_torch") else ""
        check = {True: "ok", False: "MISMATCH", None: ""}[row.get("matches_torch")]
        notes = f"{row['samples_per_ray']} samples/ray" if "samples_per_ray" in row else ""
        if row.get("matches_torch") is False:
            notes = row.get("mismatch") or f"max rel error {row['max_rel_error']:.2e}"
        cells = [row["kernel"], row["case"], row["sizes"], row["backend"], f"{row['median_ms']:.3f}",
                 f"{row['iqr_ms']:.3f}", speedup, check, notes]
    line = []
    for (name, width), cell in zip(TABLE_COLUMNS, cells):
        line.append(cell if not width else f"{cell:>{width}}" if name in NUMERIC_COLUMNS else f"{cell:<{width}}")
    print("  ".join(line).rstrip(), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full",
                        help="full: one training iteration's worth on a GPU (default); small: a quick CPU smoke run")
    parser.add_argument("--backends", default="auto",
                        help="comma list of torch,cuda,emulated "
                             "(default auto: torch+cuda on a GPU, torch+emulated on a CPU)")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma list of {','.join(KERNELS)} (default all)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the inputs live (auto: cuda when PyTorch sees a GPU)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case and backend (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    parser.add_argument("--max_case_s", type=float, default=20.0,
                        help="stop timing a case after this many seconds (at least 5 calls; default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every input (default 0)")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/kernels-<device-slug>-<date>.json)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.kernels.split(",") if name and name not in KERNELS]
    if unknown:
        parser.error(f"unknown --kernels {','.join(unknown)}: choose from {','.join(KERNELS)}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    backends = choose_backends(args.backends, device)
    kernels = [name for name in KERNELS if name in args.kernels.split(",")]
    machine = machine_info.describe_machine(device)
    size = SIZES[args.sizes]
    print(f"device: {machine['gpu_name'] or machine['cpu_model']} ({device.type}, "
          f"{machine['cpu_cores_available']} cores, {machine['torch_threads']} torch threads); "
          f"backends: {', '.join(backends)}; sizes: {args.sizes}")
    print_header()

    rows = []
    for kernel in kernels:
        try:
            cases = CASE_BUILDERS[kernel](size, device, args.seed)
        except Exception as error:  # a kernel module that does not import yet: record it, time the rest
            row = {"kernel": kernel, "case": "(inputs)", "sizes": "", "backend": "-",
                   "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
            print_row(row)
            rows.append(row)
            continue
        rows.extend(run_cases(cases, backends, device, args))

    result = {
        "benchmark": "kernels",
        "created": machine_info.iso_now(),
        **machine_info.command_line(None if argv is None else ["benchmarks/bench_kernels.py", *argv]),
        "machine": machine,
        "versions": machine_info.software_versions(),
        "git": machine_info.git_revision(),
        "device": device.type,
        "backends": backends,
        "settings": {"sizes": args.sizes, "size_parameters": size, "repeats": args.repeats, "warmup": args.warmup,
                     "max_case_s": args.max_case_s, "seed": args.seed, "match_tolerance": MATCH_TOLERANCE,
                     "timer": "time.perf_counter around each call, torch.cuda.synchronize() before and after on a GPU"},
        "results": rows,
    }
    out = Path(args.out) if args.out else (
        machine_info.RESULTS_DIR / f"kernels-{machine_info.device_slug(machine)}-{machine_info.timestamp()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")
    failed = [row for row in rows if "error" in row or row.get("matches_torch") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:  # kernels.backend.BackendError included: one line, status 2, as the scripts do
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
