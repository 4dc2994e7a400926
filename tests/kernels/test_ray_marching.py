"""kernels/ray_marching: occupancy-grid marching (Instant-NGP Sec. 5.4, Appendix E), the twin against the CUDA
source (emulated on the CPU, CuPy on a GPU), the properties of the samples, and the grid maintenance kernels.

Tolerances: every face uses the same float32 formulas, so the samples must be identical (torch.equal).
"""
import math
import platform
from pathlib import Path

import pytest
import torch

from kernels import backend as kernel_backend
from kernels.ray_marching import (OccupancyGrid, march_rays, occupancy_update, occupancy_update_torch, pack_bitfield,
                                  pack_bitfield_torch, ray_aabb_intersect)

AABB = torch.tensor([[-1.0, -0.5, -1.5], [1.5, 1.0, 1.0]])  # deliberately not a cube, not centred


def random_bitfield(grid_res, fraction, seed):
    occupied = torch.rand(grid_res ** 3, generator=torch.Generator().manual_seed(seed)) < fraction  # (G^3,)
    return pack_bitfield_torch(occupied.float(), 0.5), occupied


def full_bitfield(grid_res):
    return torch.full((grid_res ** 3 // 8,), 255, dtype=torch.uint8)


def random_rays(n_rays, seed):
    """Rays from outside towards the box, some missing it, some starting inside, some axis-aligned or grazing."""
    generator = torch.Generator().manual_seed(seed)
    centre, size = AABB.mean(0), AABB[1] - AABB[0]
    rays_d = torch.randn(n_rays, 3, generator=generator)
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)  # (R, 3)
    rays_o = centre - 3.0 * rays_d + 0.6 * torch.randn(n_rays, 3, generator=generator)  # (R, 3) many hit, some miss
    quarter = n_rays // 4
    rays_o[:quarter] = AABB[0] + torch.rand(quarter, 3, generator=generator) * size  # starting inside the box
    rays_d[quarter:quarter + 10] = torch.tensor([0.0, 0.0, 1.0])  # axis-aligned: zero components
    rays_o[quarter:quarter + 10, :2] = AABB[0, :2] + torch.rand(10, 2, generator=generator) * size[:2]
    rays_o[quarter:quarter + 10, 2] = -4.0
    rays_d[quarter + 10:quarter + 15] = torch.tensor([1.0, 1e-7, -1e-7])  # grazing along x
    rays_o[quarter + 10:quarter + 15] = torch.tensor([-3.0, 0.2, -0.3])
    offsets = torch.rand(n_rays, generator=generator)  # (R,) jitter u
    return rays_o, rays_d, offsets


def per_ray(ray_starts, ray_counts, values):
    return [values[s:s + c] for s, c in zip(ray_starts.tolist(), ray_counts.tolist())]


def assert_same_samples(a, b):
    for name, x, y in zip(("ray_starts", "ray_counts", "t_starts", "t_ends"), a, b):
        assert x.dtype == y.dtype and torch.equal(x, y), f"{name} differ"


# ----------------------------------------------------------------------------------------------------------
# Twin vs CUDA source (emulated)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid_res,fraction,max_samples", [(16, 0.05, 1000), (32, 0.3, 1000), (64, 0.02, 24)])
def test_fixed_steps_emulated_kernel_gives_exactly_the_twins_samples(grid_res, fraction, max_samples):
    """The kernel skips empty cells, the twin tests every lattice point: same samples, bit for bit."""
    bitfield, _ = random_bitfield(grid_res, fraction, seed=grid_res)
    rays_o, rays_d, offsets = random_rays(400, seed=grid_res)
    settings = dict(near=0.5, far=5.0, dt=0.01, max_samples=max_samples, offsets=offsets)
    twin = march_rays(rays_o, rays_d, AABB, bitfield, grid_res, backend="torch", **settings)
    kernel = march_rays(rays_o, rays_d, AABB, bitfield, grid_res, backend="emulated", **settings)
    assert twin[1].sum() > 0
    assert_same_samples(twin, kernel)


def fma_flags():
    """Extra g++ flags under which the compiler may fuse a * b + c, or None when this CPU has no FMA."""
    if platform.machine() in ("aarch64", "arm64"):
        return ""  # FMA is part of the base instruction set
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() in ("x86_64", "AMD64") and cpuinfo.exists() and " fma " in cpuinfo.read_text():
        return "-mfma"
    return None


@pytest.mark.skipif(fma_flags() is None, reason="this CPU has no fused multiply-add to tempt the compiler")
def test_fixed_steps_stay_exact_when_the_emulation_may_use_fma(monkeypatch):
    """With FMA instructions available, g++ would fuse t0 + (k + u) * dt; -ffp-contract=off must keep it rounded twice."""
    monkeypatch.setenv("NERF_EMULATION_CXXFLAGS", fma_flags())
    monkeypatch.setattr(kernel_backend, "_emulated_libraries", {})  # build and load this module again, with the flag
    assert fma_flags() in " ".join(kernel_backend.emulation_flags())
    bitfield, _ = random_bitfield(32, 0.3, seed=32)
    rays_o, rays_d, offsets = random_rays(400, seed=32)
    settings = dict(near=0.5, far=5.0, dt=0.01, max_samples=1000, offsets=offsets)
    twin = march_rays(rays_o, rays_d, AABB, bitfield, 32, backend="torch", **settings)
    kernel = march_rays(rays_o, rays_d, AABB, bitfield, 32, backend="emulated", **settings)
    assert_same_samples(twin, kernel)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_no_rays_and_empty_grid_give_no_samples(backend):
    empty_grid = torch.zeros(16 ** 3 // 8, dtype=torch.uint8)
    rays_o, rays_d, offsets = random_rays(50, seed=1)
    starts, counts, t_starts, t_ends = march_rays(rays_o, rays_d, AABB, empty_grid, 16, near=0.0, far=10.0,
                                                  dt=0.01, offsets=offsets, backend=backend)
    assert counts.shape == starts.shape == (50,) and counts.dtype == starts.dtype == torch.int32
    assert counts.sum() == 0 and t_starts.shape == t_ends.shape == (0,) and t_starts.dtype == torch.float32
    none = torch.zeros(0, 3)
    starts, counts, t_starts, t_ends = march_rays(none, none, AABB, full_bitfield(16), 16, near=0.0, far=10.0,
                                                  dt=0.01, backend=backend)
    assert starts.shape == counts.shape == t_starts.shape == t_ends.shape == (0,)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_rays_that_miss_the_box_get_no_samples(backend):
    rays_o = torch.tensor([[5.0, 5.0, 5.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # last one is inside the box
    _, counts, _, _ = march_rays(rays_o, rays_d, AABB, full_bitfield(8), 8, near=0.0, far=10.0, dt=0.1,
                                 backend=backend)
    assert counts.tolist()[:2] == [0, 0] and counts[2] > 0
    # ... and so do rays whose [near, far] ends before the box
    _, counts, _, _ = march_rays(rays_o, rays_d, AABB, full_bitfield(8), 8, near=0.0, far=1e-3, dt=0.1,
                                 backend=backend)
    assert counts.sum() == 0


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_full_grid_samples_every_lattice_point_inside_the_box_up_to_the_cap(backend):
    """Full grid: the count is #{k >= 0 : t0 + (k + 1 + u) dt <= t_end} = floor((t_end - t0) / dt - u)."""
    rays_o, rays_d, offsets = random_rays(300, seed=3)
    near, far, dt = 0.5, 5.0, 0.02
    _, counts, t_starts, _ = march_rays(rays_o, rays_d, AABB, full_bitfield(8), 8, near=near, far=far, dt=dt,
                                        offsets=offsets, max_samples=10_000, backend=backend)
    t_min, t_max = ray_aabb_intersect(rays_o.double(), rays_d.double(), AABB.double())
    t0, t_end = t_min.clamp(min=near), t_max.clamp(max=far)
    steps = ((t_end - t0) / dt - offsets.double()).clamp(min=0)  # (R,) closed form in float64
    expected = torch.floor(steps).int()
    clear = (steps - steps.round()).abs() > 1e-3  # away from a float32 rounding of the last point
    assert clear.sum() > 250
    assert torch.equal(counts[clear], expected[clear])
    assert expected.max() > 100

    capped_starts, capped_counts, capped_t, _ = march_rays(rays_o, rays_d, AABB, full_bitfield(8), 8, near=near,
                                                           far=far, dt=dt, offsets=offsets, max_samples=17,
                                                           backend=backend)
    assert torch.equal(capped_counts, counts.clamp(max=17))
    # the cap keeps each ray's first samples: the first one starts at t0 + u dt
    hit = capped_counts > 0
    first = capped_t[capped_starts[hit].long()].double()
    assert torch.allclose(first, (t0 + offsets.double() * dt)[hit], atol=1e-5)


def test_samples_are_sorted_inside_the_box_and_near_far_with_occupied_midpoints():
    grid_res = 16
    bitfield, occupied = random_bitfield(grid_res, 0.25, seed=11)
    rays_o, rays_d, offsets = random_rays(300, seed=12)
    near, far = 0.3, 4.0
    starts, counts, t_starts, t_ends = march_rays(rays_o, rays_d, AABB, bitfield, grid_res, near=near, far=far,
                                                  dt=0.01, offsets=offsets, backend="emulated")
    assert torch.equal(starts.long(), torch.cumsum(counts.long(), 0) - counts.long())  # packed ray after ray
    ray_ids = torch.repeat_interleave(torch.arange(300), counts.long())  # (N,)
    assert (t_starts >= near).all() and (t_ends <= far).all() and (t_ends > t_starts).all()
    for values in per_ray(starts, counts, torch.stack([t_starts, t_ends], -1)):
        assert (values[1:, 0] >= values[:-1, 1]).all()  # sorted, non-overlapping
    tol = 1e-5
    for t in (t_starts, t_ends):
        points = rays_o[ray_ids] + t[:, None] * rays_d[ray_ids]  # (N, 3)
        assert ((points >= AABB[0] - tol) & (points <= AABB[1] + tol)).all()
    # Midpoints in occupied cells (an independent float64 lookup, away from cell faces).
    mids = (rays_o[ray_ids] + 0.5 * (t_starts + t_ends)[:, None] * rays_d[ray_ids]).double()
    q = (mids - AABB[0].double()) / (AABB[1] - AABB[0]).double() * grid_res
    cells = q.floor().long().clamp(0, grid_res - 1)
    away = ((q - q.round()).abs() > 1e-4).all(dim=1)
    index = cells[:, 0] + cells[:, 1] * grid_res + cells[:, 2] * grid_res ** 2
    assert away.sum() > 0.9 * len(away) and occupied[index[away]].all()


UNIT_BOX = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def one_cell_bitfield(grid_res, cell):
    occupied = torch.zeros(grid_res ** 3)
    occupied[cell[0] + cell[1] * grid_res + cell[2] * grid_res ** 2] = 1.0
    return pack_bitfield_torch(occupied, 0.5)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_a_sample_that_ends_exactly_at_the_exit_is_kept(backend):
    """t_k = 0.5 + 0.25 k is exact in float32: sample 3 = [1.25, 1.5] ends exactly where the ray leaves the box (and,
    with far = 1.0, sample 1 ends exactly at far). The rule is t_{k+1} <= t_end, equality included."""
    rays_o, rays_d = torch.tensor([[-0.5, 0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])  # enters at t = 0.5, leaves at 1.5
    settings = dict(dt=0.25, offsets=torch.zeros(1), backend=backend)
    _, counts, t_starts, t_ends = march_rays(rays_o, rays_d, UNIT_BOX, full_bitfield(4), 4, near=0.0, far=10.0,
                                             **settings)
    assert counts.tolist() == [4] and t_ends.tolist() == [0.75, 1.0, 1.25, 1.5]
    _, counts, _, t_ends = march_rays(rays_o, rays_d, UNIT_BOX, full_bitfield(4), 4, near=0.0, far=1.0, **settings)
    assert counts.tolist() == [2] and t_ends.tolist() == [0.75, 1.0]
    # Only the last cell along the ray occupied: the kernel jumps over the empty ones and must still keep it.
    _, counts, t_starts, t_ends = march_rays(rays_o, rays_d, UNIT_BOX, one_cell_bitfield(4, (3, 2, 2)), 4, near=0.0,
                                             far=10.0, **settings)
    assert counts.tolist() == [1] and (t_starts.item(), t_ends.item()) == (1.25, 1.5)


# ----------------------------------------------------------------------------------------------------------
# Grid maintenance
# ----------------------------------------------------------------------------------------------------------
def sphere_density(points):
    return 20.0 * (points.norm(dim=-1) < 0.5).float()  # (M,)


def test_pack_bitfield_kernel_matches_twin_and_bit_order():
    grid = OccupancyGrid(AABB, resolution=16)
    grid.density.copy_(torch.rand(16 ** 3, generator=torch.Generator().manual_seed(0)))
    grid.density[::7] = float("nan")  # a NaN density is never occupied
    for threshold in (0.0, 0.3, 0.99):
        grid.bitfield.copy_(pack_bitfield(grid.density, threshold, backend="emulated"))
        assert torch.equal(grid.bitfield, pack_bitfield_torch(grid.density, threshold))
        cell = 8 * 5 + 3  # bit 3 of byte 5
        assert ((grid.bitfield[5].item() >> 3) & 1) == int(grid.density[cell].item() > threshold)
    assert not grid.occupied_mask()[::7].any()


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_a_value_exactly_at_the_threshold_is_empty(backend):
    """Occupied means strictly above the threshold, compared in float32 on both faces."""
    for threshold in (0.01, 0.3, 1.0):
        at = torch.tensor(threshold, dtype=torch.float32)  # the threshold as the kernel receives it
        above, below = torch.nextafter(at, torch.tensor(2.0)), torch.nextafter(at, torch.tensor(0.0))
        density = torch.stack([at, above, below, at, above, at, below, above])  # (8,) one byte
        assert pack_bitfield(density, threshold, backend=backend).tolist() == [0b10010010]


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_occupancy_update_is_decay_then_max_over_several_random_updates(backend):
    """max(old * decay, new) and max(old, new) * decay agree when new = 0, so this compares on random values."""
    generator = torch.Generator().manual_seed(5)
    density = torch.rand(16 ** 3, generator=generator)  # (G^3,)
    expected = density.clone()
    for _ in range(4):
        cells = torch.randperm(16 ** 3, generator=generator)[:1500].sort().values  # (M,) distinct
        new = torch.rand(1500, generator=generator)  # (M,) about half above the decayed old values
        before = density.clone()
        density = occupancy_update(density, cells, new, 0.95, backend=backend)
        assert torch.equal(before, expected)  # the input is not modified
        expected[cells] = torch.maximum(expected[cells] * torch.tensor(0.95), new)  # Appendix E.2, in float32
        assert torch.equal(density, expected)
    assert torch.equal(occupancy_update_torch(before, cells, new, 0.95), density)


def test_occupancy_update_kernel_matches_twin_decayed_max():
    density = torch.rand(8 ** 3, generator=torch.Generator().manual_seed(1))
    cells = torch.randperm(8 ** 3, generator=torch.Generator().manual_seed(2))[:100].sort().values
    new = torch.rand(100, generator=torch.Generator().manual_seed(3)) * 0.8
    expected = occupancy_update_torch(density, cells, new, 0.95)
    assert torch.equal(expected[cells], torch.maximum(density[cells] * 0.95, new))
    untouched = torch.ones(8 ** 3, dtype=torch.bool)
    untouched[cells] = False
    assert torch.equal(expected[untouched], density[untouched])

    updated = {}
    for backend in ("torch", "emulated"):
        decayed = occupancy_update(density, cells, torch.zeros(100), 0.95, backend=backend)
        updated[backend] = (decayed, pack_bitfield(decayed, 0.5, backend=backend))
    assert torch.equal(updated["torch"][0], updated["emulated"][0])
    assert torch.equal(updated["torch"][1], updated["emulated"][1])


def test_a_new_grid_is_fully_occupied_and_can_be_reset():
    grid = OccupancyGrid(AABB, resolution=8)
    assert grid.occupancy_fraction() == 1.0 and grid.occupied_mask().all()
    grid.bitfield.zero_()
    assert grid.occupancy_fraction() == 0.0
    grid.mark_all_occupied()
    assert grid.occupancy_fraction() == 1.0


def test_cell_points_lie_in_their_cells():
    grid = OccupancyGrid(AABB, resolution=8)
    cells = torch.randint(0, 8 ** 3, (500,), generator=torch.Generator().manual_seed(0))
    points = grid.cell_points(cells, torch.Generator().manual_seed(1))  # (M, 3)
    q = (points - AABB[0]) / (AABB[1] - AABB[0]) * 8
    index = q.floor().long().clamp(0, 7)
    assert torch.equal(index[:, 0] + index[:, 1] * 8 + index[:, 2] * 64, cells)


# ----------------------------------------------------------------------------------------------------------
# CUDA through CuPy
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_march_matches_twin():
    grid_res = 32
    bitfield, _ = random_bitfield(grid_res, 0.2, seed=21)
    rays_o, rays_d, offsets = random_rays(2000, seed=22)
    args = [t.cuda() for t in (rays_o, rays_d, AABB, bitfield)]
    fixed = dict(near=0.2, far=6.0, dt=0.01, max_samples=256, offsets=offsets.cuda())
    twin = march_rays(*args, grid_res, backend="torch", **fixed)
    kernel = march_rays(*args, grid_res, backend="cuda", **fixed)
    assert_same_samples(twin, kernel)  # same float32 formulas, no fma on either side


@pytest.mark.gpu
def test_cuda_grid_update_and_packing_match_twin():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=32).cuda()
    every_cell = torch.arange(grid.n_cells, device="cuda")
    first = sphere_density(grid.cell_points(every_cell, torch.Generator(device="cuda").manual_seed(0)))
    some_cells = torch.randperm(grid.n_cells, device="cuda")[: grid.n_cells // 4].sort().values
    second = 0.5 * sphere_density(grid.cell_points(some_cells, torch.Generator(device="cuda").manual_seed(1)))
    results = {}
    for backend in ("torch", "cuda"):
        density = occupancy_update(torch.zeros_like(grid.density), every_cell, first, 0.95, backend=backend)
        density = occupancy_update(density, some_cells, second, 0.95, backend=backend)
        results[backend] = (density, pack_bitfield(density, 1.0, backend=backend))
    assert torch.equal(results["torch"][0], results["cuda"][0])
    assert torch.equal(results["torch"][1], results["cuda"][1])
