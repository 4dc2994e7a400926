"""05_instant_neus.py: NeuS opacity against its closed form, numerical gradients against exact ones, the schedules,
the sphere initialisation, and end to end: it learns the built-in scene's images and its surface."""
import importlib
import json
import math

import numpy as np
import pytest
import torch

NO_VIDEO = ["--video_frames", "0"]


@pytest.fixture(scope="module")
def neus():
    return importlib.import_module("05_instant_neus")


def test_neus_opacity_of_a_plane_telescopes_to_the_closed_form_and_peaks_at_the_surface(neus):
    """A ray entering a plane: f(t) = cos * (t - t0) with cos = d.n < 0. By Eq. 13 the transmittance after any
    number of intervals telescopes to Phi_s(f(t_end)) / Phi_s(f(t_start)), and the weight is largest on the interval
    that holds the surface (NeuS Sec. 3.2: unbiased)."""
    t0, s, cos = 1.337, torch.tensor(40.0, dtype=torch.float64), -0.6
    edges = torch.linspace(0.5, 2.5, 81, dtype=torch.float64)
    mids, deltas = 0.5 * (edges[1:] + edges[:-1]), edges[1:] - edges[:-1]
    f = cos * (mids - t0)
    alphas = neus.neus_alpha(f, torch.full_like(f, cos), deltas, s, cos_anneal_ratio=1.0)
    cdf = lambda x: torch.sigmoid(s * x)  # noqa: E731
    exact = (cdf(cos * (edges[:-1] - t0)) - cdf(cos * (edges[1:] - t0))) / cdf(cos * (edges[:-1] - t0))
    outside = cdf(cos * (edges[:-1] - t0)) > 1e-2  # where NeuS's 1e-5 guard is negligible
    torch.testing.assert_close(alphas[outside], exact[outside], atol=1e-3, rtol=0)
    assert bool(outside.sum() > 30)
    trans = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - alphas]), 0)
    assert float(trans[-1]) == pytest.approx(float(cdf(cos * (edges[-1] - t0)) / cdf(cos * (edges[0] - t0))), abs=1e-4)
    weights = trans[:-1] * alphas
    peak = int(weights.argmax())
    assert edges[peak] <= t0 < edges[peak + 1]
    # Leaving the object (cos > 0, f rising): no opacity once out of it (the annealing over).
    leaving = neus.neus_alpha(-f, torch.full_like(f, -cos), deltas, s, cos_anneal_ratio=1.0)
    assert float(leaving[-f > 0.05].max()) < 1e-4


def test_cell_opacity_is_the_opacity_of_a_step_straight_into_the_surface(neus):
    s, step = torch.tensor(50.0), 0.02
    f = torch.tensor([-1.0, 0.0, 0.01, 1.0])
    got = neus.cell_opacity(f, step, s)
    start, end = torch.sigmoid(s * (f + step / 2)), torch.sigmoid(s * (f - step / 2))
    torch.testing.assert_close(got, ((start - end + 1e-5) / (start + 1e-5)).clamp(0, 1))
    assert got[1] > got[3] and got[3] < 1e-3  # far outside: empty


class _SphereField(torch.nn.Module):
    """Stands in for NeuSField with an exact SDF: f(x) = |x - c| - r (features: x itself)."""

    def __init__(self, centre, radius):
        super().__init__()
        self.centre, self.radius = torch.tensor(centre), radius

    def sdf(self, x, backend):
        return (x - self.centre).norm(dim=-1) - self.radius, x


def test_numerical_gradient_and_laplacian_of_a_sphere_match_the_exact_ones(neus):
    field_ = _SphereField([0.1, -0.05, 0.0], 0.4)
    x = torch.rand(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6
    x = x[(x - field_.centre).norm(dim=-1) > 0.1]
    r = (x - field_.centre).norm(dim=-1, keepdim=True)
    eps = 1e-3
    _, _, grad, laplacian = neus.sdf_with_gradient(field_, x, "torch", eps)
    torch.testing.assert_close(grad, (x - field_.centre) / r, atol=1e-4, rtol=0)  # central differences: O(eps^2)
    torch.testing.assert_close(laplacian, 2.0 / r[:, 0], atol=1e-3, rtol=1e-3)  # Laplacian of |x| in 3-D: 2/|x|
    _, _, grad_autograd, lap_none = neus.sdf_with_gradient(field_, x, "torch", None)
    torch.testing.assert_close(grad_autograd, (x - field_.centre) / r)
    assert lap_none is None


def test_finite_difference_step_is_one_cell_of_the_finest_active_level(neus):
    cfg = neus.Config(base_resolution=32, max_resolution=2048, n_levels=16)
    expected = {4: 0.02720, 5: 0.02062, 8: 0.008974, 12: 0.002960, 16: 0.0009766}  # METHODS.md 3.4 (radius 1)
    for level, eps in expected.items():
        assert neus.finite_difference_eps(cfg, level) == pytest.approx(eps, rel=2e-3)


def test_schedules_progressive_levels_curvature_and_cos_anneal(neus):
    cfg = neus.Config(n_levels=16, start_level=4, level_every=2000, curvature_weight=5e-4, curvature_warmup=5000,
                      anneal_end=20000, base_resolution=32, max_resolution=2048)
    assert [neus.active_levels(cfg, s) for s in (0, 1999, 2000, 10000, 10 ** 6)] == [4, 4, 5, 9, 16]
    assert neus.curvature_weight(cfg, 2500) == pytest.approx(2.5e-4)
    assert neus.curvature_weight(cfg, 5000) == pytest.approx(5e-4)
    assert neus.curvature_weight(cfg, 7000) == pytest.approx(5e-4 / 1.3195079107728942)  # one level added since
    assert neus.cos_anneal_ratio(cfg, 10000) == 0.5 and neus.cos_anneal_ratio(cfg, 30000) == 1.0
    cfg.progressive_levels = False
    assert neus.active_levels(cfg, 0) == 16


def test_sphere_initialisation_and_sharpness_at_step_0(neus):
    torch.manual_seed(0)
    cfg = neus.Config(n_levels=4, log2_table_size=12, base_resolution=8, max_resolution=64, hidden_width=64)
    field_ = neus.NeuSField(cfg)
    x = torch.rand(2000, 3) * 1.6 - 0.8
    with torch.no_grad():
        f, features = field_.sdf(x, "torch")
    assert features.shape == (2000, cfg.geo_features)
    # NeuS/IDR initialisation: f(x) ~ |x| - 0.5, a sphere, up to the approximation of 64 random hidden units
    # (NeuS's 8x256 network gets within ~1e-2; one layer of 64 within ~0.1 on average).
    r = x.norm(dim=-1)
    assert float((f - (r - 0.5)).abs().mean()) < 0.15
    assert bool((f[r < 0.25] < 0).all())  # the centre is inside
    assert float(field_.inv_s()) == pytest.approx(math.exp(3.0), rel=1e-5)  # s = exp(10 * 0.3)


@pytest.mark.slow
def test_instant_neus_learns_the_builtin_images_and_surface(neus, tmp_path):
    """Held-out PSNR >= 24 dB and a mesh whose Chamfer distance to the exact surface is below 1% of the object's
    bounding-box diagonal, on the emulated CUDA sources."""
    metrics = neus.main(["--quick", "--outdir", str(tmp_path), "--device", "cpu", "--backend", "emulated",
                         "--n_test_views", "4", *NO_VIDEO])
    assert metrics["mean_psnr"] >= 24.0, metrics
    assert metrics["chamfer_over_diagonal"] < 0.01, metrics
    saved = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert saved["chamfer"] == pytest.approx(metrics["chamfer"])
    from common.mesh import read_ply
    vertices, faces, colors = read_ply(tmp_path / "mesh.ply")
    assert colors is not None and len(faces) > 1000
    assert (tmp_path / "test" / "normal_000.png").exists()


@pytest.mark.slow
def test_scan24_visual_hull_keeps_what_a_short_run_finds_occupied(neus, tmp_path):
    """DTU scan 24 at 100x75: a short run *without* the visual hull prunes its occupancy grid from the SDF alone; the
    cells it keeps occupied (the object it found) lie inside the hull of the masks, which carves away much of the box."""
    from tests.conftest import SHARED_DATA

    scan = SHARED_DATA / "dtu_scan24"
    if not (scan / "cameras_sphere.npz").exists():
        pytest.skip("DTU scan 24 not found at ../shared/data/dtu_scan24")
    neus.main(["--scene", str(scan), "--downscale", "16", "--quick", "--no-visual_hull", "--iters", "150",
               "--batch_rays", "256", "--grid_update_every", "4", "--outdir", str(tmp_path), "--device", "cpu",
               "--backend", "emulated", "--n_test_views", "1", "--mesh_resolution", "32",
               "--no-dead_model_check", *NO_VIDEO])  # a short run: its grid is the point, not its PSNR
    state = torch.load(tmp_path / "ckpt_000150.pt", weights_only=False)
    bits = (state["grid"]["bitfield"][:, None].to(torch.int64) >> torch.arange(8)) & 1
    occupied = bits.flatten().bool()
    from common.data.dtu import load_dtu
    from common.visual_hull import carve_grid

    scene = load_dtu(scan, downscale=16)
    resolution = round(occupied.numel() ** (1 / 3))
    hull = carve_grid(scene.aabb, resolution, scene.splits["train"])
    assert float(occupied.float().mean()) < 0.6  # the run did prune the grid (measured: 43% left)
    assert float(hull.float().mean()) < 0.75  # (58%: scan 24's masks cover most of each image)
    inside = float(occupied[hull].sum()) / float(occupied.sum())  # measured: 0.94
    assert inside > 0.9 and inside > float(hull.float().mean()) + 0.2  # far above what chance would give


def test_builtin_surface_scores_measure_what_they_say(neus):
    """Accuracy is the exact SDF at mesh samples: about 0 for a mesh of the exact surface (no sampling floor) and
    the offset for a mesh moved off it; completeness sits on its reported floor for the exact mesh."""
    from common.data import builtin_scene
    from common.mesh import marching_cubes, sample_grid

    box = torch.tensor([[-1.5] * 3, [1.5] * 3])
    vertices, faces = marching_cubes(sample_grid(builtin_scene.sdf, box, 64), box, level=0.0, inside="below")
    exact = neus.builtin_surface_scores(vertices, faces, 8000)
    assert exact["accuracy"] < 0.003, exact
    assert exact["completeness_floor"] > 5 * exact["accuracy"], exact  # the floor dwarfs the true error
    assert exact["completeness"] == pytest.approx(exact["completeness_floor"], rel=0.15), exact
    moved = neus.builtin_surface_scores(vertices + np.array([0.05, 0.0, 0.0]), faces, 8000)
    assert 0.015 < moved["accuracy"] < 0.05, moved  # a shift of 0.05 along x: |f*| between 0 and 0.05 (the normal's x part)


def test_sphere_trace_finds_the_closed_form_hits_of_a_sphere_a_plane_and_a_box(neus):
    """Sphere tracing against the closed forms (float64): a unit sphere seen from z = -3 at impact distance b is hit
    at t = 3 - sqrt(1 - b^2) and missed for b > 1; a plane at height h is hit at t = h / cos of the angle to its
    normal, missed by rays parallel to it or going away; from inside a box the ray leaves through the face it meets
    first; rays_d of any length (t counts lengths of d); a hit beyond far is a miss."""
    impacts = torch.tensor([0.0, 0.3, 0.8, 1.2, 2.0], dtype=torch.float64)
    origins = torch.stack([impacts, torch.zeros(5, dtype=torch.float64), torch.full((5,), -3.0, dtype=torch.float64)], -1)
    directions = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64).expand(5, 3)  # |d| = 2: t halves
    sphere = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    t, hit = neus.sphere_trace(neus.primitive_sdf("sphere", sphere), origins, directions, 0.0, 5.0, 100, 1e-7)
    assert hit.tolist() == [True, True, True, False, False]
    torch.testing.assert_close(t[:3], (3.0 - torch.sqrt(1.0 - impacts[:3] ** 2)) / 2.0, rtol=0, atol=1e-6)
    assert t[3:].tolist() == [5.0, 5.0]  # a miss reports far

    plane = torch.tensor([0.0, 0.0, 1.0, -0.5], dtype=torch.float64)  # z = -0.5
    origins = torch.tensor([[0.0, 0.0, 1.5]] * 4 + [[0.0, 0.0, 9.5]], dtype=torch.float64)  # 2 above it (10 for the last)
    angles = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    down = torch.stack([torch.sin(angles), torch.zeros(3, dtype=torch.float64), -torch.cos(angles)], -1)
    directions = torch.cat([down, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)])
    t, hit = neus.sphere_trace(neus.primitive_sdf("plane", plane), origins, directions, 0.0, 6.0, 100, 1e-7)
    assert hit.tolist() == [True, True, True, False, False]  # parallel, and the last plane is 10 away with far = 6
    torch.testing.assert_close(t[:3], 2.0 / torch.cos(angles), rtol=0, atol=1e-6)

    box = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    inside = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.0, 0.0], [-3.0, 0.0, 0.0]], dtype=torch.float64)
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    t, hit = neus.sphere_trace(neus.primitive_sdf("box", box), inside, directions, 0.0, 10.0, 100, 1e-7)
    assert hit.all()
    torch.testing.assert_close(t, torch.tensor([0.8, 0.5, 2.0], dtype=torch.float64), rtol=0, atol=1e-6)


def test_a_dtu_mesh_is_scored_with_dtus_protocol_when_its_ground_truth_is_given(neus, tmp_path, monkeypatch, capsys):
    """--dtu_gt: the mesh of a DTU scene goes through common/dtu_eval.py (synthetic ground truth in DTU's formats, a
    mesh 1 mm outside it); without --dtu_gt, one line says no Chamfer was computed."""
    from types import SimpleNamespace

    from common.cli import parse_config
    from common.mesh import marching_cubes, sample_grid
    from tests.common.test_dtu_eval import _write_ground_truth

    _write_ground_truth(tmp_path / "gt")
    box = torch.tensor([[-60.0] * 3, [60.0] * 3])
    vertices, faces = marching_cubes(sample_grid(lambda p: p.norm(dim=-1) - 51.0, box, 32), box, level=0.0,
                                     inside="below")
    monkeypatch.setattr(neus, "extract_mesh", lambda *args: (vertices, faces, np.zeros_like(vertices, dtype=np.uint8)))
    scene = SimpleNamespace(name="dtu_scan24", root=tmp_path / "dtu_scan24")
    cfg = parse_config(neus.Config, ["--dtu_gt", str(tmp_path / "gt")])
    result = neus.extract_and_score_mesh(None, None, scene, cfg, "torch", "cpu", tmp_path / "mesh.ply")
    assert 0.8 < result["accuracy"] < 1.3 and 0.8 < result["completeness"] < 1.4, result  # 1 mm, a 32^3 mesh
    assert "DTU protocol" in capsys.readouterr().out
    result = neus.extract_and_score_mesh(None, None, scene, parse_config(neus.Config, []), "torch", "cpu",
                                         tmp_path / "mesh.ply")
    assert "accuracy" not in result and "no Chamfer distance computed for dtu_scan24" in capsys.readouterr().out


def test_auto_backend_keeps_the_twins_where_the_sdf_gradient_needs_autograd(neus, tmp_path, capsys):
    """05's auto picks the emulated kernels on a CPU, except with --no-numerical_gradients, whose eikonal loss
    needs the second derivative that only the PyTorch twin of the hash encoding has."""
    common = ["--quick", "--iters", "2", "--downscale", "4", "--n_test_views", "1", "--mesh_resolution", "16",
              "--no-dead_model_check", "--video_frames", "0", "--device", "cpu"]
    assert neus.main([*common, "--outdir", str(tmp_path / "auto")])["backend"] == "emulated"
    assert "backend auto -> emulated" in capsys.readouterr().out
    assert neus.main([*common, "--no-numerical_gradients", "--outdir", str(tmp_path / "autograd")])["backend"] == "torch"
