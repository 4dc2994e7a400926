import math

import torch

from common.paths import average_pose, look_at, spherical_path, spiral_path


def _nerf_pose_spherical(theta_deg, phi_deg, radius):
    """NeRF's Blender render pose, rebuilt from its definition: translate along z, tilt about x by phi,
    turn about y by theta, then swap to Blender's z-up world."""
    t = torch.eye(4, dtype=torch.float64)
    t[2, 3] = radius
    phi, theta = math.radians(phi_deg), math.radians(theta_deg)
    rot_phi = torch.tensor([[1, 0, 0, 0], [0, math.cos(phi), -math.sin(phi), 0],
                            [0, math.sin(phi), math.cos(phi), 0], [0, 0, 0, 1]], dtype=torch.float64)
    rot_theta = torch.tensor([[math.cos(theta), 0, -math.sin(theta), 0], [0, 1, 0, 0],
                              [math.sin(theta), 0, math.cos(theta), 0], [0, 0, 0, 1]], dtype=torch.float64)
    swap = torch.tensor([[-1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    return (swap @ rot_theta @ rot_phi @ t).float()


def _check_rotations(c2w):
    rotation = c2w[..., :3, :3]
    identity = torch.eye(3).expand_as(rotation)
    torch.testing.assert_close(rotation.transpose(-1, -2) @ rotation, identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(rotation.shape[:-2]), atol=1e-5, rtol=0)


def test_look_at_points_minus_z_at_the_target_with_up_kept_upright():
    c2w = look_at(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.5, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    _check_rotations(c2w)
    direction = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, 0.0]) - torch.tensor([3.0, 1.0, 2.0]), dim=0)
    torch.testing.assert_close(-c2w[:3, 2], direction)
    assert c2w[2, 1] > 0 and abs(float(c2w[2, 0])) < 1e-6  # image up has positive world z; no roll


def test_spherical_path_matches_nerf_render_poses_and_stays_above_the_object():
    poses = spherical_path(40)
    assert poses.shape == (40, 4, 4)
    _check_rotations(poses)
    centres = poses[:, :3, 3]
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((40,), 4.0))
    torch.testing.assert_close(centres[:, 2], torch.full((40,), 2.0))  # 30 degrees above: 4 sin 30
    thetas = torch.linspace(-180, 180, 41)[:-1]
    for i in (0, 7, 23):
        torch.testing.assert_close(poses[i], _nerf_pose_spherical(float(thetas[i]), -30.0, 4.0), atol=1e-5, rtol=0)
    below = spherical_path(8, radius=3.0, elevation_deg=20.0)
    assert (below[:, 2, 3] < 0).all() and torch.allclose(below[:, :3, 3].norm(dim=-1), torch.tensor(3.0))


def test_average_pose_of_identical_poses_is_that_pose():
    pose = look_at(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(average_pose(pose.expand(5, 4, 4)), pose, atol=1e-6, rtol=0)


def test_spiral_path_circles_the_average_camera_and_looks_at_the_focus_point():
    # A forward-facing rig: cameras on a small patch of the plane z = 0 looking along -z (OpenGL), world y up.
    generator = torch.Generator().manual_seed(0)
    eyes = torch.cat([torch.rand(12, 2, generator=generator) - 0.5, torch.zeros(12, 1)], dim=-1)
    poses = look_at(eyes, eyes - torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0]))
    path = spiral_path(poses, focus_depth=5.0, n_frames=30, n_rotations=2)
    assert path.shape == (30, 4, 4)
    _check_rotations(path)
    focus = eyes.mean(dim=0) - torch.tensor([0.0, 0.0, 5.0])
    to_focus = torch.nn.functional.normalize(focus - path[:, :3, 3], dim=-1)
    torch.testing.assert_close(-path[:, :3, 2], to_focus, atol=1e-5, rtol=0)
    offsets = path[:, :3, 3] - eyes.mean(dim=0)
    radii = torch.quantile((eyes - eyes.mean(dim=0)).abs(), 0.9, dim=0)
    assert (offsets[:, :2].abs() <= radii[:2] + 1e-5).all()
    assert offsets[:, 0].max() > 0.9 * radii[0]  # it really goes around
    assert (path[:, 1, 1] > 0.9).all()  # image up stays close to the rig's up


def test_default_video_path_is_nerfs_sphere_for_blender_cameras_and_an_orbit_of_the_capture_otherwise():
    from common.paths import default_video_path, focus_point, look_at, spherical_path

    # Blender-like: cameras on a sphere of radius 4 around the origin, +z up -> NeRF's spherical video.
    azimuths = torch.linspace(0, 2 * math.pi, 9)[:-1]
    eyes = torch.stack([4 * torch.cos(azimuths) * 0.8, 4 * torch.sin(azimuths) * 0.8, torch.full_like(azimuths, 2.4)], -1)
    blender = look_at(eyes, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(default_video_path(blender, 12), spherical_path(12, radius=4.0), atol=1e-4, rtol=0)
    # A capture of one side of an object far from the origin, y up (fox-like): the path circles what the cameras
    # look at, at their distance from it, and never goes round the back.
    target = torch.tensor([3.0, -2.0, 0.5])
    side = torch.deg2rad(torch.linspace(-40.0, 40.0, 7))
    eyes = target + torch.stack([2 * torch.sin(side), torch.full_like(side, 0.6), 2 * torch.cos(side)], -1)
    capture = look_at(eyes, target, torch.tensor([0.0, 1.0, 0.0]))
    path = default_video_path(capture, 16)
    distance = (path[:, :3, 3] - focus_point(capture)).norm(dim=-1)
    torch.testing.assert_close(distance, torch.full((16,), float((eyes - target).norm(dim=-1).mean())), atol=0.05, rtol=0)
    assert float(((path[:, :3, 3] - target)[:, 2]).min()) > 0  # stays on the cameras' side (+z of the target)


def test_default_video_path_of_a_one_sided_capture_around_the_origin_stays_on_its_side():
    """Fox's cameras look at the origin with +z up, as Blender's do, but from one side (90 degrees of azimuth):
    NeRF's full sphere would fly behind the object, so the path is the orbit of the arc instead."""
    from common.paths import default_video_path, look_at

    azimuths = torch.deg2rad(torch.linspace(0.0, 90.0, 10))
    eyes = torch.stack([3 * torch.cos(azimuths), 3 * torch.sin(azimuths), torch.full_like(azimuths, 1.5)], -1)
    capture = look_at(eyes, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    path = default_video_path(capture, 24)
    azimuth = torch.rad2deg(torch.atan2(path[:, 1, 3], path[:, 0, 3]))
    assert float(azimuth.min()) > -0.5 and float(azimuth.max()) < 90.5, azimuth
