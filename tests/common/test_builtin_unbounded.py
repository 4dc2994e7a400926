"""The built-in unbounded scene (objects in a distant sky) and the orbit path used for 360 videos."""
import math

import torch

from common.data import builtin_unbounded
from common.data.builtin_scene import camera_poses
from common.data.load import load_scene
from common.paths import focus_point, look_at, orbit_path


def test_sky_hit_lands_on_the_sky_sphere_in_front_of_the_camera():
    g = torch.Generator().manual_seed(0)
    rays_o = torch.randn(100, 3, generator=g, dtype=torch.float64) * 3
    rays_d = torch.randn(100, 3, generator=g, dtype=torch.float64)
    t = builtin_unbounded.sky_hit(rays_o, rays_d)
    assert (t > 0).all()
    torch.testing.assert_close((rays_o + t[:, None] * rays_d).norm(dim=-1),
                               torch.full((100,), builtin_unbounded.SKY_RADIUS, dtype=torch.float64))


def test_scene_is_opaque_in_scaled_units_with_the_sky_far_behind_the_objects(tmp_path):
    builtin_unbounded.write_unbounded_scene(tmp_path, n_train=3, n_val=1, n_test=1, resolution=24)
    scene = load_scene("builtin_unbounded", datadir=str(tmp_path))
    train = scene.splits["train"]
    assert train.images.shape == (3, 24, 24, 4) and bool((train.images[..., 3] == 1).all())  # opaque
    radii = train.cameras.c2w[:, :3, 3].norm(dim=-1)
    torch.testing.assert_close(radii, torch.full((3,), 4.0 * builtin_unbounded.WORLD_SCALE))
    assert not scene.white_background and scene.near < 1.0 < 10.0 < scene.far
    # Depths of one view (world units): objects within ~4 +- 1.3 of the camera, sky at 21 to 29.
    focal = 0.5 * 24 / math.tan(0.5 * builtin_unbounded.CAMERA_ANGLE_X)
    _, depth = builtin_unbounded.render_unbounded_views(camera_poses(1, 1, 1)["test"], 24, 24, focal)
    assert float(depth.min()) < 5.5 and float(depth.max()) > 20.0


def test_orbit_path_circles_the_point_the_cameras_look_at():
    target = torch.tensor([0.3, -0.2, 0.5])
    eyes = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.2], [-2.0, 0.1, 0.9], [0.1, -2.0, 1.0]])
    c2w = look_at(eyes, target, torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(focus_point(c2w), target, atol=1e-5, rtol=0)
    path = orbit_path(c2w, 12)
    offsets = path[:, :3, 3] - target
    distance = offsets.norm(dim=-1)  # a circle around an axis through the target: one distance to it
    torch.testing.assert_close(distance, torch.full((12,), float(distance.mean())), atol=1e-4, rtol=0)
    assert abs(float(distance.mean()) - float((eyes - target).norm(dim=-1).mean())) < 0.1
    viewing = -path[:, :3, 2]  # every path camera looks at the target
    torch.testing.assert_close(torch.nn.functional.normalize(-offsets, dim=-1), viewing, atol=1e-5, rtol=0)


def test_orbit_path_of_a_one_sided_capture_sweeps_only_the_arc_the_cameras_cover():
    """Cameras on a 100-degree arc (a hand-held capture of one side, as fox): the orbit stays on that arc, reaches
    both of its ends, and never flies round to the side no camera saw."""
    target = torch.zeros(3)
    covered = torch.deg2rad(torch.linspace(40.0, 140.0, 9))  # azimuths of the cameras
    eyes = torch.stack([3 * torch.cos(covered), 3 * torch.sin(covered), torch.full_like(covered, 1.0)], dim=-1)
    c2w = look_at(eyes, target, torch.tensor([0.0, 0.0, 1.0]))
    path = orbit_path(c2w, 40)
    azimuth = torch.rad2deg(torch.atan2(path[:, 1, 3], path[:, 0, 3]))  # (40,)
    assert float(azimuth.min()) > 40.0 - 0.5 and float(azimuth.max()) < 140.0 + 0.5, azimuth
    assert float(azimuth.min()) < 41.0 and float(azimuth.max()) > 139.0  # both ends reached
    viewing = -path[:, :3, 2]  # still every camera looks at the target
    torch.testing.assert_close(torch.nn.functional.normalize(target - path[:, :3, 3], dim=-1), viewing, atol=1e-5,
                               rtol=0)
