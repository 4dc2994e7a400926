"""Camera paths for rendering videos: a circle around an object, a spiral for forward-facing captures.

Poses are camera-to-world (4, 4) matrices in the OpenGL/Blender convention (x right, y up, looks along -z),
the same as `common.data.scene.Cameras.c2w`; the world's up axis is +z for Blender scenes.
"""
import json
import math
from pathlib import Path

import torch

from common.errors import UserError
from common.numerics import safe_normalize


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Camera-to-world matrix of a camera at `eye` looking at `target`, with `up` roughly up in the image.

    eye, target, up: (..., 3). Returns (..., 4, 4) float32. The camera z axis points *away* from the target
    (the camera looks along -z); x = up x z is the image's right; y = z x x is the image's up.
    `up` must not be parallel to the viewing direction.
    """
    eye, target, up = torch.broadcast_tensors(eye.float(), target.float(), up.float())
    z_axis = safe_normalize(eye - target)  # (..., 3) backwards
    x_axis = safe_normalize(torch.cross(up, z_axis, dim=-1))  # (..., 3) right
    y_axis = torch.cross(z_axis, x_axis, dim=-1)  # (..., 3) up, unit length already
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=torch.float32, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = x_axis, y_axis, z_axis, eye
    c2w[..., 3, 3] = 1.0
    return c2w


def spherical_path(n_frames: int, radius: float = 4.0, elevation_deg: float = -30.0) -> torch.Tensor:
    """n_frames cameras on a horizontal circle around the origin, all looking at the origin (z up).

    elevation_deg follows the `phi` of NeRF's `pose_spherical(theta, phi, radius)`, the rotation of the camera
    about the x axis: a *negative* angle puts the camera above the object looking down, so the default -30 is
    NeRF's Blender video (cameras 30 degrees above the equator). The azimuth covers [-180, 180) degrees evenly,
    starting at -y and turning clockwise seen from above, the same camera positions as NeRF's
    `render_poses` for the same arguments.
    Returns (n_frames, 4, 4) float32.
    """
    azimuths = torch.linspace(-math.pi, math.pi, n_frames + 1, dtype=torch.float64)[:-1]  # drop the repeat of -pi
    height_angle = math.radians(-elevation_deg)
    eyes = torch.stack(
        [
            radius * math.cos(height_angle) * torch.sin(azimuths),
            radius * math.cos(height_angle) * torch.cos(azimuths),
            torch.full_like(azimuths, radius * math.sin(height_angle)),
        ],
        dim=-1,
    )  # (n, 3)
    return look_at(eyes, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))


def average_pose(c2w: torch.Tensor) -> torch.Tensor:
    """Mean camera of a set (LLFF's `poses_avg`): mean centre, mean viewing direction, mean up vector.

    c2w: (N, 4, 4). Returns (4, 4) float32 with an orthonormal rotation.
    """
    c2w = c2w.float()
    center = c2w[:, :3, 3].mean(dim=0)  # (3,)
    z_axis = safe_normalize(c2w[:, :3, 2].sum(dim=0))  # (3,) mean backward direction
    up = c2w[:, :3, 1].sum(dim=0)  # (3,) mean image-up direction
    return look_at(center, center - z_axis, up)


def spiral_path(
    c2w: torch.Tensor,
    focus_depth: float,
    n_frames: int = 120,
    n_rotations: float = 2.0,
    radius_percentile: float = 90.0,
    zrate: float = 0.5,
) -> torch.Tensor:
    """Spiral of cameras around the average pose of a forward-facing capture (LLFF's `render_path_spiral`).

    c2w: (N, 4, 4) training poses (OpenGL convention); focus_depth: distance in front of the average camera of
    the point every path camera looks at (NeRF uses a blend of the scene's near and far bounds);
    the spiral's half-widths along the average camera's x, y, z axes are the `radius_percentile` percentile of
    the absolute camera offsets from the average pose; z oscillates `zrate` times slower than x and y.
    Returns (n_frames, 4, 4) float32.
    """
    mean_c2w = average_pose(c2w)  # (4, 4)
    offsets = (c2w[:, :3, 3].float() - mean_c2w[:3, 3]) @ mean_c2w[:3, :3]  # (N, 3) in the average camera frame
    radii = torch.quantile(offsets.abs(), radius_percentile / 100.0, dim=0)  # (3,)
    thetas = torch.linspace(0.0, 2.0 * math.pi * n_rotations, n_frames + 1)[:-1]  # (n,)
    # The average camera looks along its -z, so the focus point is focus_depth along -z.
    focus = mean_c2w[:3, 3] - focus_depth * mean_c2w[:3, 2]  # (3,)
    local = torch.stack([torch.cos(thetas), -torch.sin(thetas), -torch.sin(thetas * zrate)], dim=-1) * radii  # (n, 3)
    eyes = mean_c2w[:3, 3] + local @ mean_c2w[:3, :3].T  # (n, 3)
    return look_at(eyes, focus.expand_as(eyes), mean_c2w[:3, 1].expand_as(eyes))


def focus_point(c2w: torch.Tensor) -> torch.Tensor:
    """The point closest, in the least-squares sense, to every camera's optical axis (the line through the
    camera centre along its viewing direction -z): argmin_p sum_i |(I - d_i d_i^T)(p - o_i)|^2, i.e. the
    solution of sum_i (I - d_i d_i^T) p = sum_i (I - d_i d_i^T) o_i. For cameras around an object, what they
    look at. c2w: (N, 4, 4). Returns (3,) float32."""
    c2w = c2w.double()
    dirs = -c2w[:, :3, 2] / c2w[:, :3, 2].norm(dim=-1, keepdim=True)  # (N, 3) viewing directions
    projectors = torch.eye(3, dtype=torch.float64) - dirs[:, :, None] * dirs[:, None, :]  # (N, 3, 3)
    lhs = projectors.sum(dim=0)
    rhs = (projectors @ c2w[:, :3, 3, None]).sum(dim=0)  # (3, 1)
    # The pseudo-inverse: when every axis is parallel (one camera, or a still capture) the system is singular and
    # any point of the common axis fits; this picks the one nearest the origin instead of failing.
    return (torch.linalg.pinv(lhs) @ rhs)[:, 0].float()


# A capture whose cameras leave a gap of more than this around the focus point (seen from above) does not
# surround it: its orbit sweeps only the arc the cameras cover, since behind the gap nothing was ever seen.
ORBIT_MAX_GAP = math.pi / 2


def orbit_path(c2w: torch.Tensor, n_frames: int = 120) -> torch.Tensor:
    """n_frames cameras on a circle around the cameras' focus point (`focus_point`), all looking at it.

    The circle lies in the plane orthogonal to the cameras' mean up vector (their mean y axis), at their mean
    height above the focus point and their mean horizontal distance from it. When the cameras surround the
    focus point (no gap between their azimuths wider than ORBIT_MAX_GAP) the path flies the whole circle from
    the first camera's azimuth: the capture's own orbit. When they do not (a hand-held capture of one side, as
    Instant-NGP's fox), it sweeps the arc they cover, there and back, easing at its ends, instead of flying
    into the unseen side. The scene needs no particular world frame (unlike `spherical_path`, which assumes
    z up and the object at the origin).
    c2w: (N, 4, 4) training poses. Returns (n_frames, 4, 4) float32.
    """
    c2w = c2w.float()
    (centre, up, e1, e2, height, radius), start, span, surrounds = _orbit_frame(c2w)
    if surrounds:  # the cameras surround the focus point: the whole circle
        angles = torch.linspace(0.0, 2.0 * math.pi, n_frames + 1)[:-1]  # (n,)
    else:  # one side only: from the camera after the widest gap, counter-clockwise to the one before it, and back
        phase = torch.linspace(0.0, 2.0 * math.pi, n_frames + 1)[:-1]  # (n,)
        angles = start + span * (1 - torch.cos(phase)) / 2  # (n,) start -> start + span -> back, slow at the ends
    eyes = centre + height * up + radius * (torch.cos(angles)[:, None] * e1 + torch.sin(angles)[:, None] * e2)
    return look_at(eyes, centre.expand_as(eyes), up.expand_as(eyes))


def _orbit_frame(c2w: torch.Tensor):
    """Where the cameras are, seen from above their focus point: ((centre, up, e1, e2, mean height, mean
    horizontal distance), start, span, surrounds): the centre is `focus_point`, up the cameras' mean y axis, e1
    points to the first camera and e2 = up x e1; the cameras' azimuths cover the arc [start, start + span]
    (radians counter-clockwise from e1) that leaves out the widest gap between two of them (span 2 pi - that
    gap); surrounds: that gap is at most ORBIT_MAX_GAP."""
    centre = focus_point(c2w)  # (3,)
    up = safe_normalize(c2w[:, :3, 1].sum(dim=0))  # (3,)
    offsets = c2w[:, :3, 3] - centre  # (N, 3)
    heights = offsets @ up  # (N,)
    horizontal = offsets - heights[:, None] * up  # (N, 3)
    e1 = safe_normalize(horizontal[0])
    e2 = torch.cross(up, e1, dim=-1)
    azimuths = torch.sort(torch.atan2(horizontal @ e2, horizontal @ e1) % (2 * math.pi)).values  # (N,) camera 0 at 0
    gaps = torch.diff(azimuths, append=azimuths[:1] + 2 * math.pi)  # (N,) gap after each sorted camera
    widest = int(gaps.argmax())
    start, span = float(azimuths[(widest + 1) % len(azimuths)]), 2 * math.pi - float(gaps[widest])
    frame = (centre, up, e1, e2, float(heights.mean()), float(horizontal.norm(dim=-1).mean()))
    return frame, start, span, float(gaps[widest]) <= ORBIT_MAX_GAP


def default_video_path(c2w: torch.Tensor, n_frames: int) -> torch.Tensor:
    """The path of a run's video when none is given. Cameras all around an object at the world origin with +z
    up (the Blender layout, the built-in scenes): `spherical_path` at their mean radius, NeRF's own video. Any
    other capture (one side of an object, as fox; a world frame wherever the capture software put it):
    `orbit_path` around the point the cameras look at, on the arc they cover.
    c2w: (N, 4, 4) training poses. Returns (n_frames, 4, 4) float32."""
    c2w = c2w.float()
    radius = float(c2w[:, :3, 3].norm(dim=-1).mean())
    (centre, up, *_), _, _, surrounds = _orbit_frame(c2w)  # up: the cameras' mean image-up direction
    if surrounds and float(centre.norm()) < 0.25 * radius and float(up[2]) > 0.9:
        return spherical_path(n_frames, radius=radius)
    return orbit_path(c2w, n_frames)


def load_camera_path(path) -> torch.Tensor:
    """Camera-to-world poses for a custom video (--camera_path), from a JSON file holding either a list of 4x4
    matrices or {"frames": [{"transform_matrix": 4x4}, ...]} (the layout of transforms_*.json, so a Blender
    split's cameras can be replayed). OpenGL convention, as everywhere here. Returns (N, 4, 4) float32."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the camera path {path} ({err}): give a JSON file of 4x4 poses") from None
    frames = data.get("frames") if isinstance(data, dict) else data
    try:
        poses = torch.tensor([f["transform_matrix"] if isinstance(f, dict) else f for f in frames],
                             dtype=torch.float32)
    except (TypeError, KeyError, ValueError):
        poses = None
    if poses is None or poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) == 0:
        raise UserError(f"{path} is not a list of 4x4 camera-to-world matrices (nor {{'frames': [{{"
                        f"'transform_matrix': ...}}]}}): fix the file")
    if not torch.isfinite(poses).all():
        raise UserError(f"{path} holds a NaN or infinite number in its poses: fix the file")
    return poses
