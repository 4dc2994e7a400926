"""04_hashnerf.py end to end on the PyTorch twins: it learns the built-in scene, carves the occupancy grid where
the scene is empty, and resumes exactly."""
import json

import pytest
import torch

NO_VIDEO = ["--video_frames", "0"]


@pytest.mark.slow
def test_hashnerf_torch_backend_reaches_26db_on_builtin_test_views(hashnerf_script, tmp_path):
    metrics = hashnerf_script.main(["--quick", "--outdir", str(tmp_path), "--device", "cpu", "--backend", "torch",
                                    "--n_test_views", "4", *NO_VIDEO])
    assert metrics["mean_psnr"] >= 26.0, metrics
    assert metrics["backend"] == "torch"
    saved = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert len(saved["views"]) == 4
    # Empty-space skipping works: the trained grid keeps a small part of the box (the shapes fill about 3% of
    # it), so rays take few samples.
    final = torch.load(sorted(tmp_path.glob("ckpt_*.pt"))[-1], weights_only=False)
    bits = (final["grid"]["bitfield"][:, None].to(torch.int64) >> torch.arange(8)) & 1
    assert bits.float().mean() < 0.3
    header, *rows = (tmp_path / "log.csv").read_text().splitlines()
    samples_per_ray = [float(row.split(",")[header.split(",").index("samples_per_ray")]) for row in rows]
    assert samples_per_ray[-1] < 0.5 * samples_per_ray[0]


@pytest.mark.slow
def test_paper_batching_adapts_the_rays_to_the_sample_budget_and_learns(hashnerf_script, tmp_path):
    """The GPU preset's choices on a CPU-sized run (App. E.3 batch of 16384 samples, App. E.2 grid update, the
    step schedule): while the grid is full each ray takes many samples and a step holds few rays; once it is
    carved the step holds many more, with the samples per step near the budget, and the model learns."""
    metrics = hashnerf_script.main(["--quick", "--iters", "300", "--samples_per_batch", "16384", "--grid_policy",
                                    "paper", "--lr_schedule", "step", "--lr_step_start", "200", "--lr_step_every",
                                    "50", "--downscale", "2", "--outdir", str(tmp_path), "--device", "cpu",
                                    "--backend", "torch", *NO_VIDEO])
    assert metrics["mean_psnr"] >= 26.0, metrics  # 28.1 dB measured (50x50 views)
    header, *rows = (tmp_path / "log.csv").read_text().splitlines()
    column = {name: i for i, name in enumerate(header.split(","))}
    rays = [int(row.split(",")[column["rays"]]) for row in rows]
    samples = [float(row.split(",")[column["samples_per_ray"]]) for row in rows]
    assert rays[-1] >= 8 * rays[0], rays  # 256 rays at the start, over 3000 at the end (measured)
    assert 0.5 * 16384 <= rays[-1] * samples[-1] <= 1.5 * 16384, (rays[-1], samples[-1])


def test_hashnerf_occupied_cells_cover_the_true_surface(hashnerf_script, tmp_path):
    """After a short training run, every cell the true geometry passes through well inside is still marked
    occupied: skipping it would cut a hole in the object. (The built-in scene's exact SDF is the reference.)"""
    from common.data.builtin_scene import sdf
    from kernels.ray_marching import OccupancyGrid

    hashnerf_script.main(["--quick", "--iters", "120", "--outdir", str(tmp_path), "--device", "cpu",
                          "--backend", "torch", "--n_test_views", "1", "--downscale", "2", *NO_VIDEO])
    state = torch.load(tmp_path / "ckpt_000120.pt", weights_only=False)
    grid = OccupancyGrid(state["grid"]["aabb"], resolution=round(state["grid"]["density"].numel() ** (1 / 3)))
    grid.load_state_dict(state["grid"])
    centres = grid.cell_points(torch.arange(grid.n_cells), generator=None)  # random points, one per cell
    cell_size = float((grid.aabb[1] - grid.aabb[0]).max()) / grid.resolution
    solid = sdf(centres) < -cell_size  # points well inside a shape
    occupied = grid.occupied_mask()
    assert solid.sum() > 50
    assert occupied[solid].float().mean() > 0.95
    assert occupied.float().mean() < 0.5

    # --export_mesh on the same checkpoint (--render_only): a PLY whose vertices lie near the true surface.
    from common.mesh import read_ply

    hashnerf_script.main(["--render_only", "--export_mesh", "--mesh_resolution", "64", "--outdir", str(tmp_path),
                          "--device", "cpu", "--backend", "torch", "--n_test_views", "1", *NO_VIDEO])
    vertices, faces, _ = read_ply(tmp_path / "mesh.ply")
    voxel = 3.0 / 63  # the built-in scene box is [-1.5, 1.5]^3
    assert len(faces) > 500
    distances = sdf(torch.as_tensor(vertices, dtype=torch.float32)).abs()
    assert distances.median() < 2 * voxel, float(distances.median())


def _train_args(outdir, iters, extra=()):
    # A few steps learn less than a constant image would show: warn, do not stop (--no-dead_model_check).
    return ["--quick", "--iters", str(iters), "--ckpt_every", "4", "--grid_update_every", "3", "--outdir",
            str(outdir), "--device", "cpu", "--backend", "torch", "--n_test_views", "1", "--downscale", "4",
            "--no-dead_model_check", *NO_VIDEO, *extra]


# The quick preset, and the paper's adaptive batch (App. E.3: the ray count of the next step is state to resume).
ADAPTIVE = ("--samples_per_batch", "8192", "--grid_policy", "paper", "--lr_schedule", "step", "--lr_step_start", "6",
            "--lr_step_every", "1")


@pytest.mark.parametrize("extra", [(), ADAPTIVE], ids=["quick", "adaptive_batch"])
def test_hashnerf_ctrl_c_then_resume_matches_an_uninterrupted_run(hashnerf_script, tmp_path, run_with_ctrl_c,
                                                                single_thread, extra):
    hashnerf_script.main(_train_args(tmp_path / "straight", 8, extra))
    reference = torch.load(tmp_path / "straight" / "ckpt_000008.pt", weights_only=False)

    status, _ = run_with_ctrl_c(hashnerf_script, _train_args(tmp_path / "resumed", 8, extra), step=5)
    assert status == 130
    assert (tmp_path / "resumed" / "ckpt_000005.pt").exists()

    hashnerf_script.main(_train_args(tmp_path / "resumed", 8, extra) + ["--resume"])
    resumed = torch.load(tmp_path / "resumed" / "ckpt_000008.pt", weights_only=False)
    assert resumed["step"] == 8
    assert resumed["batch_rays"] == reference["batch_rays"]
    for group in ("field", "grid"):
        for name, tensor in reference[group].items():
            torch.testing.assert_close(resumed[group][name], tensor, rtol=0, atol=0, msg=f"{group}.{name}")


@pytest.mark.slow
def test_hashnerf_trains_on_the_emulated_cuda_sources_too(hashnerf_script, tmp_path):
    """The whole training loop on the .cu kernels (compiled for the CPU): hash encoding forward and backward,
    marching, grid updates and compositing, as a GPU would run them."""
    metrics = hashnerf_script.main(["--quick", "--outdir", str(tmp_path), "--device", "cpu", "--backend", "emulated",
                                    "--n_test_views", "4", *NO_VIDEO])
    assert metrics["backend"] == "emulated"
    assert metrics["mean_psnr"] >= 26.0, metrics


def test_hashnerf_nan_loss_stops_the_run_at_that_step_and_keeps_finite_checkpoints(hashnerf_script, tmp_path,
                                                                                    capsys):
    """A learning rate of 1e6 blows the weights up within a few steps. The run must stop at the first step whose
    loss or gradient is not finite, with one line and status 2, never finish with exit 0 and a dead model; the
    checkpoint written before that step holds finite weights."""
    from common.cli import run_main

    argv = _train_args(tmp_path, 40) + ["--lr", "1e6", "--ckpt_every", "1"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(hashnerf_script.main, argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error:") and "diverged at step" in message and "--lr" in message
    bad_step = int(message.split("at step ")[1].split(":")[0])
    checkpoints = sorted(tmp_path.glob("ckpt_*.pt"))
    assert checkpoints and not (tmp_path / f"ckpt_{bad_step:06d}.pt").exists()
    last = torch.load(checkpoints[-1], weights_only=False)
    assert last["step"] == bad_step - 1
    assert all(torch.isfinite(t).all() for t in last["field"].values() if t.is_floating_point())
    assert not (tmp_path / "test" / "metrics.json").exists()  # no evaluation of a dead model


def test_trunc_exp_is_exact_forward_and_clamps_the_gradient_at_exp_15(hashnerf_script):
    x = torch.tensor([-3.0, 0.0, 10.0, 20.0, 50.0], dtype=torch.float64, requires_grad=True)
    y = hashnerf_script.trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.exp(x.detach().clamp(max=15.0)))


def test_trunc_exp_gradcheck_below_the_clamp(hashnerf_script):
    x = torch.linspace(-4.0, 4.0, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hashnerf_script.trunc_exp, (x,))


def test_render_only_rebuilds_the_model_from_the_checkpoint_and_reproduces_its_metrics(hashnerf_script, tmp_path,
                                                                                      capsys):
    """--render_only without --quick: today's defaults (the cpu preset) would build another network, so the
    config must come from the checkpoint; the test metrics must be those of the run that wrote it."""
    from common.cli import run_main

    outdir = tmp_path / "run"
    trained = hashnerf_script.main(_train_args(outdir, 12))
    poses = [[[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0.5], [0, 0, 0, 1]],
             [[0, 0, 1, 4], [1, 0, 0, 0], [0, 1, 0, 0.5], [0, 0, 0, 1]]]
    (tmp_path / "orbit.json").write_text(json.dumps({"frames": [{"transform_matrix": p} for p in poses]}))
    rendered = hashnerf_script.main(["--render_only", "--outdir", str(outdir), "--device", "cpu", "--backend",
                                     "torch", "--n_test_views", "1", "--video_frames", "0", "--no-dead_model_check",
                                     "--camera_path", str(tmp_path / "orbit.json")])
    assert rendered["iters"] == 12 and rendered["preset"] == trained["preset"]
    assert abs(rendered["mean_psnr"] - trained["mean_psnr"]) < 1e-6
    assert list(outdir.glob("video_orbit_rgb.*")) and list(outdir.glob("video_orbit_depth.*"))
    assert sorted(p.name for p in outdir.glob("ckpt_*.pt")) == ["ckpt_000004.pt", "ckpt_000008.pt", "ckpt_000012.pt"]

    with pytest.raises(SystemExit) as exit_info:  # nothing to render: one line, status 2
        run_main(hashnerf_script.main, ["--render_only", "--outdir", str(tmp_path / "empty"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_the_one_level_hash_encoding_on_the_page_equals_each_level_of_the_fast_encoding(hashnerf_script, backend):
    """hash_grid_level (Eq. 2-4 written out in 04) against level l of HashEncoding on the fast path: dense
    coarse levels and hashed fine levels alike, points on the far faces x = 1 included."""
    from kernels.hash_encoding import HashEncoding, hash_encode, is_dense_level

    torch.manual_seed(0)
    encoding = HashEncoding(n_levels=6, n_features=2, log2_table_size=10, base_resolution=4, max_resolution=64)
    torch.nn.init.uniform_(encoding.table, -1.0, 1.0)
    x = torch.rand(500, 3)
    x[:20, 0] = 1.0  # far face
    dense = is_dense_level(encoding.resolutions, encoding.table.shape[1])
    assert dense.any() and not dense.all()  # both kinds of level are exercised
    fast = hash_encode(x, encoding.table.detach(), encoding.scales, encoding.resolutions, backend=backend)  # (N, L*F)
    for level in range(6):
        reference = hashnerf_script.hash_grid_level(x, encoding.table[level].detach(), float(encoding.scales[level]),
                                                    int(encoding.resolutions[level]))
        torch.testing.assert_close(fast[:, 2 * level:2 * level + 2], reference, rtol=1e-5, atol=1e-6,
                                   msg=f"level {level}")


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_grid_policy_carves_a_sphere_then_refreshes_only_the_chosen_cells(hashnerf_script, backend):
    """update_occupancy_grid (Appendix E.2, on the page in 04): the warm-up evaluates every cell, so a sphere of
    density is found and empty corners are dropped; after the warm-up G^3/4 cells are re-evaluated, and only
    those decay (max(0.95 * value, 0) on a field that became empty): grid_policy "cheap", the CPU presets'."""
    import math

    from kernels.ray_marching import OccupancyGrid

    cfg = hashnerf_script.Config(grid_warmup=10, grid_decay=0.95, grid_threshold=1.0, grid_policy="cheap")
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16)
    generator = torch.Generator().manual_seed(0)
    sphere = lambda p: 20.0 * (p.norm(dim=-1) < 0.5).float()  # noqa: E731
    hashnerf_script.update_occupancy_grid(grid, 5, cfg, sphere, generator, backend)  # step 5: warm-up
    sphere_fraction = (4 / 3 * math.pi * 0.5 ** 3) / 8
    assert 0.5 * sphere_fraction < grid.occupancy_fraction() < 2.5 * sphere_fraction
    mask = grid.occupied_mask()
    assert mask[8 + 8 * 16 + 8 * 16 ** 2] and not mask[0]  # the centre cell is occupied, a corner is not

    before = grid.density.clone()
    hashnerf_script.update_occupancy_grid(grid, 20, cfg, lambda p: torch.zeros(len(p)), generator, backend)
    changed = grid.density != before
    assert 0 < int(changed.sum()) <= grid.n_cells // 4
    torch.testing.assert_close(grid.density[changed], before[changed] * 0.95, rtol=0, atol=0)
    # half the refreshed cells were drawn among the occupied ones: the sphere's cells are over-represented
    inside = before > 0
    assert changed[inside].float().mean() > changed[~inside].float().mean()


def test_total_variation_is_zero_on_constant_dense_levels_and_regularises_only_them(hashnerf_script):
    from kernels.hash_encoding import HashEncoding, is_dense_level

    torch.manual_seed(0)
    encoding = HashEncoding(n_levels=6, n_features=2, log2_table_size=10, base_resolution=4, max_resolution=64)
    torch.nn.init.uniform_(encoding.table, -1.0, 1.0)
    dense = is_dense_level(encoding.resolutions, encoding.table_size)
    assert dense.any() and not dense.all()
    loss = hashnerf_script.total_variation(encoding, n_vertices=256, generator=torch.Generator().manual_seed(0))
    assert loss.item() > 0
    loss.backward()
    grad = encoding.table.grad
    assert grad[dense].abs().sum() > 0 and grad[~dense].abs().sum() == 0  # hashed levels are not regularised
    with torch.no_grad():
        encoding.table[dense] = 0.5  # constant on the dense levels, random on the hashed ones
    assert hashnerf_script.total_variation(encoding, generator=torch.Generator().manual_seed(0)).item() == 0.0


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_paper_grid_policy_decays_every_cell_and_measures_half_the_grid(hashnerf_script, backend):
    """grid_policy "paper" (App. E.2 as written): after the warm-up an update decays *every* cell by 0.95 and
    re-measures G^3/2 cells (fewer after removing repeats), which take max(decayed value, new)."""
    from kernels.ray_marching import OccupancyGrid

    cfg = hashnerf_script.Config(grid_warmup=10, grid_decay=0.95, grid_threshold=1.0, grid_policy="paper")
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16)
    generator = torch.Generator().manual_seed(0)
    hashnerf_script.update_occupancy_grid(grid, 5, cfg, lambda p: 20.0 * (p.norm(dim=-1) < 0.5).float(), generator,
                                          backend)
    before = grid.density.clone()
    hashnerf_script.update_occupancy_grid(grid, 20, cfg, lambda p: torch.zeros(len(p)), generator, backend)
    torch.testing.assert_close(grid.density, before * 0.95, rtol=0, atol=0)  # all decayed, measured or not
    hashnerf_script.update_occupancy_grid(grid, 40, cfg, lambda p: torch.full((len(p),), 100.0), generator, backend)
    measured = int((grid.density == 100.0).sum())
    assert grid.n_cells // 4 < measured <= grid.n_cells // 2


@pytest.mark.parametrize("step,expected", [(0, 1e-2), (19_999, 1e-2), (20_000, 3.3e-3), (29_999, 3.3e-3),
                                           (30_000, 1.089e-3), (40_000, 3.5937e-4)])
def test_step_learning_rate_schedule_of_sec_5_4(hashnerf_script, step, expected):
    cfg = hashnerf_script.Config()  # the paper preset: lr 1e-2, x0.33 at 20k and every 10k after
    assert hashnerf_script.learning_rate(cfg, step) == pytest.approx(expected, rel=1e-9)


def test_batch_keeps_the_samples_per_step_near_the_target(hashnerf_script):
    """App. E.3: rays adapt so that rays x samples per ray stays near samples_per_batch (2^18)."""
    cfg = hashnerf_script.Config()
    assert cfg.samples_per_batch == 1 << 18
    assert hashnerf_script.next_batch_rays(4096, 4096 * 256, cfg) == 1024  # 256 samples a ray: 2^18 / 256
    assert hashnerf_script.next_batch_rays(1024, 1024 * 8, cfg) == 32768  # a carved grid: 8 a ray
    assert hashnerf_script.next_batch_rays(1000, 1000 * 3, cfg) % 128 == 0  # multiples of 128
    assert hashnerf_script.next_batch_rays(4096, 10 ** 9, cfg) == 128  # never below 128 rays
    assert hashnerf_script.next_batch_rays(4096, 0, cfg) == 1 << 18  # empty space: at most 2^18 rays
    fixed = hashnerf_script.Config(samples_per_batch=0, batch_rays=777)
    assert hashnerf_script.next_batch_rays(4096, 123456, fixed) == 777


def test_auto_backend_on_a_cpu_is_the_emulated_kernels_and_says_so(hashnerf_script, tmp_path, capsys):
    """No --backend on a CPU with g++: 04 runs the .cu compiled for the CPU (twice as fast as the twins here) and
    says so in one start-up line."""
    metrics = hashnerf_script.main(["--quick", "--iters", "2", "--downscale", "4", "--n_test_views", "1",
                                    "--no-dead_model_check", "--outdir", str(tmp_path), "--device", "cpu", *NO_VIDEO])
    assert metrics["backend"] == "emulated"
    assert capsys.readouterr().out.count("backend auto -> emulated") == 1
