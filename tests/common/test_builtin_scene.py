"""The built-in scene: exact SDF, renders consistent with the geometry, Blender layout, speed, determinism."""
import json
import math
import shutil

import imageio.v3 as iio
import pytest
import torch

from common.data import builtin_scene
from common.data.builtin_scene import (
    BOUND_RADIUS,
    CAMERA_ANGLE_X,
    albedo,
    camera_poses,
    ensure_builtin_scene,
    primitive_distances,
    render_views,
    sdf,
    trace_rays,
    write_builtin_scene,
)
from common.data.load import load_scene
from common.rays import get_rays


def _surface_points(n: int, seed: int = 0) -> torch.Tensor:
    """Points on the surface: random points projected along the SDF gradient, p - sdf(p) grad sdf(p).

    For an exact SDF one projection lands on the surface (the gradient points to the nearest surface point
    and sdf is the distance to it); a mere bound would fall short. Returns (n, 3) float64.
    """
    generator = torch.Generator().manual_seed(seed)
    points = (torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1) * BOUND_RADIUS
    points.requires_grad_(True)
    distance = sdf(points)
    (grad,) = torch.autograd.grad(distance.sum(), points)
    return (points - distance[:, None] * grad).detach()


def test_sdf_is_exact_at_simple_points():
    sphere, torus, capsule, box = (builtin_scene.SPHERE, builtin_scene.TORUS, builtin_scene.CAPSULE,
                                   builtin_scene.ROUNDED_BOX)
    centre = torch.tensor(sphere["center"], dtype=torch.float64)
    above_sphere = centre + torch.tensor([0.0, 0.0, sphere["radius"] + 0.05], dtype=torch.float64)
    tube_centre = torch.tensor(torus["center"], dtype=torch.float64) + torch.tensor([torus["major_radius"], 0, 0])
    capsule_mid = torch.tensor([capsule["a"], capsule["b"]], dtype=torch.float64).mean(dim=0)
    box_centre = torch.tensor(box["center"], dtype=torch.float64)
    points = torch.stack([centre, above_sphere, tube_centre, capsule_mid, box_centre])
    expected = torch.tensor(
        [-sphere["radius"], 0.05, -torus["minor_radius"], -capsule["radius"], -min(box["half_size"])],
        dtype=torch.float64,
    )
    torch.testing.assert_close(sdf(points), expected, atol=1e-12, rtol=0)
    far = torch.tensor([[20.0, 0.0, 0.0]], dtype=torch.float64)  # far away, |p| - (distance to the nearest shape)
    assert abs(float(sdf(far)) - 20.0) < BOUND_RADIUS


def test_sdf_is_a_true_distance_to_densely_sampled_surface_points():
    surface = _surface_points(200_000)  # (n, 3)
    assert sdf(surface).abs().max() < 1e-6  # one projection reaches the surface: the SDF is exact, not a bound
    queries = (torch.rand(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1) * 2.0
    nearest = torch.cdist(queries, surface).min(dim=1).values  # brute-force distance to the surface samples
    # The samples are ~0.01 apart, so the brute-force distance overestimates by at most a few 1e-3 (outside).
    outside = sdf(queries) > 0
    assert outside.sum() > 32
    torch.testing.assert_close(sdf(queries)[outside], nearest[outside], atol=5e-3, rtol=0)


def test_sdf_gradient_has_unit_norm_almost_everywhere():
    points = ((torch.rand(20_000, 3, dtype=torch.float64) * 2 - 1) * 1.5).requires_grad_(True)
    (grad,) = torch.autograd.grad(sdf(points).sum(), points)
    unit = (grad.norm(dim=-1) - 1).abs() < 1e-9
    assert unit.float().mean() > 0.99  # |grad| = 1 (eikonal) except on the measure-zero kinks


def test_shapes_are_disjoint_and_inside_the_bounds():
    surface = _surface_points(50_000, seed=2)
    distances = primitive_distances(surface)  # (n, 4)
    own = distances.abs().argmin(dim=-1)
    others = distances.clone()
    others[torch.arange(len(own)), own] = math.inf
    assert others.min() > 0.15  # disjoint, so min over shapes is exact inside too
    assert surface.norm(dim=-1).max() < BOUND_RADIUS
    assert surface.abs().max() < 1.5  # inside [-1.5, 1.5]^3
    sphere_of_bound = torch.nn.functional.normalize(torch.randn(10_000, 3, dtype=torch.float64), dim=-1)
    assert (sdf(sphere_of_bound * BOUND_RADIUS) > 0).all()
    # A camera at radius 4 sees everything within 4 sin(fov / 2) of the origin: no shape is ever cut off.
    assert surface.norm(dim=-1).max() < 4 * math.sin(CAMERA_ANGLE_X / 2)


def test_albedo_is_the_colour_of_the_nearest_shape():
    centre = torch.tensor([builtin_scene.SPHERE["center"]])
    torch.testing.assert_close(albedo(centre), torch.tensor([builtin_scene.ALBEDOS[1]]))


def test_sphere_tracing_agrees_with_a_dense_search_along_the_rays():
    poses = camera_poses(n_train=3)["train"]
    focal = 0.5 * 24 / math.tan(0.5 * CAMERA_ANGLE_X)
    K = torch.tensor([[focal, 0, 12.0], [0, focal, 12.0], [0, 0, 1]])
    rays_o, rays_d = get_rays(K, poses[0], 24, 24)
    t, hit = trace_rays(rays_o, rays_d)
    assert 0.1 < hit.float().mean() < 0.9
    # First zero crossing of the SDF among 4000 samples per ray between depth 2 and 6.
    t_dense = torch.linspace(2.0, 6.0, 4000)
    values = sdf(rays_o[:, None] + t_dense[None, :, None] * rays_d[:, None])  # (R, 4000)
    inside = values < 0
    dense_hit = inside.any(dim=1)
    assert torch.equal(dense_hit, hit)
    first_inside = t_dense[inside.float().argmax(dim=1)]
    assert (first_inside[hit] - t[hit]).abs().max() < 2e-3  # the sample spacing is 1e-3
    points = rays_o[hit] + t[hit, None] * rays_d[hit]
    assert sdf(points).abs().max() < 1e-3


def test_rendered_alpha_matches_the_geometry_of_pixel_centre_rays():
    poses = camera_poses(n_train=5)["train"][[0, 3]]
    H = W = 40
    focal = 0.5 * W / math.tan(0.5 * CAMERA_ANGLE_X)
    images = render_views(poses, H, W, focal)
    assert images.shape == (2, H, W, 4)
    K = torch.tensor([[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1]])
    for image, pose in zip(images, poses):
        rays_o, rays_d = get_rays(K, pose, H, W)
        t, hit = trace_rays(rays_o, rays_d)
        alpha = image[..., 3].reshape(-1)
        opaque, empty = alpha == 1.0, alpha == 0.0
        assert opaque.sum() > 50 and empty.sum() > 50
        assert hit[opaque].all() and not hit[empty].any()
        depth_points = rays_o[opaque] + t[opaque, None] * rays_d[opaque]
        assert sdf(depth_points).abs().max() < 1e-3
        # Partial coverage only on edges (anti-aliasing); colours of empty pixels are 0.
        assert ((alpha > 0) & (alpha < 1)).any()
        assert image.reshape(-1, 4)[empty, :3].abs().max() == 0


def test_render_views_is_deterministic_and_independent_of_batching():
    poses = camera_poses(n_train=4)["train"]
    focal = 0.5 * 20 / math.tan(0.5 * CAMERA_ANGLE_X)
    together = render_views(poses, 20, 20, focal)
    assert torch.equal(together, render_views(poses, 20, 20, focal))
    assert torch.equal(together[2:3], render_views(poses[2:3], 20, 20, focal))


def test_cameras_look_at_the_origin_from_radius_4_mostly_from_above():
    poses = camera_poses()
    assert [len(poses[s]) for s in ("train", "val", "test")] == [100, 8, 8]
    for c2w in poses.values():
        centres = c2w[:, :3, 3]
        torch.testing.assert_close(centres.norm(dim=-1), torch.full((len(c2w),), 4.0))
        forward = -c2w[:, :3, 2]  # the camera looks along -z
        torch.testing.assert_close(forward, -centres / 4.0, atol=1e-6, rtol=0)
    assert (poses["train"][:, 2, 3] > 0).float().mean() > 0.9
    # Test cameras are other positions than the training ones (at least 2 degrees away from all of them).
    unit = lambda c: torch.nn.functional.normalize(c[:, :3, 3], dim=-1)  # noqa: E731
    cosines = unit(poses["test"]) @ unit(poses["train"]).T
    assert cosines.max() < math.cos(math.radians(2.0))
    assert torch.equal(camera_poses()["test"], poses["test"])


def test_generated_scene_has_the_blender_layout_and_is_fast(builtin_scene_generation):
    builtin_scene_dir, seconds = builtin_scene_generation
    assert seconds < 10.0  # typically 3-4 s of CPU time
    for split, count in (("train", 100), ("val", 8), ("test", 8)):
        meta = json.loads((builtin_scene_dir / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == pytest.approx(CAMERA_ANGLE_X)
        assert len(meta["frames"]) == count
        assert meta["frames"][0]["file_path"] == f"./{split}/r_0"
        image = iio.imread(builtin_scene_dir / split / f"r_{count - 1}.png")
        assert image.shape == (100, 100, 4) and image.dtype.name == "uint8"
    stamp = json.loads((builtin_scene_dir / builtin_scene.STAMP_FILE).read_text())
    assert stamp["version"] == builtin_scene.SCENE_VERSION and stamp["resolution"] == 100


def test_loaded_builtin_scene_is_consistent_with_its_sdf(builtin_scene_dir):
    scene = load_scene("builtin", str(builtin_scene_dir), max_images={"train": 2, "val": 1, "test": 1})
    assert scene.name == "builtin"
    train = scene.splits["train"]
    assert train.images.shape == (2, 100, 100, 4)
    cameras = train.cameras
    rays_o, rays_d = get_rays(cameras.K[1], cameras.c2w[1], cameras.height, cameras.width)
    t, hit = trace_rays(rays_o, rays_d)
    alpha = train.images[1, ..., 3].reshape(-1)
    assert hit[alpha == 1].all() and not hit[alpha == 0].any()
    assert sdf(rays_o[alpha == 1] + t[alpha == 1, None] * rays_d[alpha == 1]).abs().max() < 1e-3


def test_load_scene_builtin_uses_data_builtin_and_regenerates_on_a_version_change(
    tmp_path, monkeypatch, builtin_scene_dir
):
    from pathlib import Path

    assert builtin_scene.DEFAULT_ROOT == Path(builtin_scene.__file__).resolve().parents[2] / "data" / "builtin"
    root = tmp_path / "data" / "builtin"
    shutil.copytree(builtin_scene_dir, root)
    monkeypatch.setattr(builtin_scene, "DEFAULT_ROOT", root)
    calls = []

    def small_write(where, **kwargs):  # stands in for the full generation, records the call
        calls.append(Path(where))
        return write_builtin_scene(where, n_train=2, n_val=1, n_test=1, resolution=16)

    monkeypatch.setattr(builtin_scene, "write_builtin_scene", small_write)
    scene = load_scene("builtin", None, splits=("test",), max_images=1)  # stamp current: no regeneration
    assert calls == [] and scene.root == root
    stamp = root / builtin_scene.STAMP_FILE
    stamp.write_text(json.dumps({"version": builtin_scene.SCENE_VERSION - 1}))
    scene = load_scene("builtin", None)
    assert calls == [root] and scene.splits["train"].images.shape == (2, 16, 16, 4)
    stamp.unlink()
    ensure_builtin_scene()
    assert calls == [root, root]


def test_write_builtin_scene_is_byte_for_byte_deterministic(tmp_path):
    first = write_builtin_scene(tmp_path / "a", n_train=2, n_val=1, n_test=1, resolution=24)
    second = write_builtin_scene(tmp_path / "b", n_train=2, n_val=1, n_test=1, resolution=24)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 3 + 4 + 1  # json files, PNGs, stamp
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert not list(first.rglob("*.tmp"))
