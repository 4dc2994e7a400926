"""The built-in *unbounded* scene: the built-in objects inside a distant textured sky sphere.

mip-NeRF 360 (03) is about captures whose background lies at every distance. Its built-in scene is the
object scene of `common.data.builtin_scene` (the same four analytic shapes, the same shading, the same cameras on a
sphere of radius 4 looking at the origin, with a wider field of view) placed inside a sphere of radius
SKY_RADIUS = 25 that carries a smooth procedural texture. Every ray hits something, so the images are opaque: stored as
RGBA with alpha 1 everywhere (no background colour to assume or composite), and the far background is six times farther than the objects: a NeRF sampling linearly between near and far
wastes most samples on empty space, and a bounded NeRF cannot put the sky at its true distance.

Written in the Blender layout (transforms_{train,val,test}.json + {split}/r_<i>.png, read by
`common.data.blender.load_blender`), with one difference: the poses in the JSON files are in a world scaled by
WORLD_SCALE = 0.4 (cameras at radius 1.6, objects within 0.52 of the origin, sky at radius 10). A uniform scaling
of the world and the cameras leaves every image unchanged; it plays the part of mip-NeRF 360's pose
normalisation (cameras inside [-1, 1]^3 after `transform_poses_pca`), so that the objects lie inside the unit ball
that the scene contraction leaves untouched and the sky in the contracted shell (contract(10) has norm 1.9).
"""
import json
import math
from pathlib import Path

import torch

from common.data import builtin_scene
from common.data.blender import write_blender_split
from common.data.builtin_scene import STAMP_FILE, camera_poses, render_views
from common.data.scene import atomic_write_bytes
from common.rays import rays_through_pixels

# Bump when anything below changes: `ensure_unbounded_scene` regenerates data stamped with another version.
SCENE_VERSION = 2
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data" / "builtin_unbounded"
DEFAULT_RESOLUTION = 64
CAMERA_ANGLE_X = 1.0  # radians (57 degrees): wider than lego's 0.69, so every view shows sky around the objects
SKY_RADIUS = 25.0  # world units of builtin_scene (cameras at radius 4)
WORLD_SCALE = 0.4  # written poses = world poses scaled by this (see the module docstring)
# Near/far of the rays in the *written* (scaled) units: the nearest shape is ~2.8 from a camera (1.1 scaled)
# and the sky at most SKY_RADIUS + 4 = 29 (11.6 scaled). 03 uses its own near/far (0.2, 1e6: the paper's).
NEAR, FAR = 0.5, 12.0


def sky_colour(directions: torch.Tensor) -> torch.Tensor:
    """Texture of the sky sphere as a function of the direction from the origin to the sky point.

    A vertical gradient (a sandy ground below the horizon, blue above) times smooth stripes in longitude and
    latitude, so that the background has detail a model must place at the right distance, yet no edge
    sharper than a few pixels. directions: (..., 3), any length -> (..., 3) in [0, 1].
    """
    d = torch.nn.functional.normalize(directions, dim=-1)
    longitude = torch.atan2(d[..., 1], d[..., 0])  # (...,) in (-pi, pi]
    latitude = torch.asin(d[..., 2].clamp(-1.0, 1.0))  # (...,) in [-pi/2, pi/2]
    up = torch.sigmoid(8.0 * latitude)[..., None]  # (..., 1): 0 below the horizon, 1 above
    ground = torch.tensor([0.62, 0.50, 0.34], dtype=d.dtype, device=d.device)
    sky = torch.tensor([0.35, 0.58, 0.88], dtype=d.dtype, device=d.device)
    base = ground * (1 - up) + sky * up  # (..., 3)
    stripes = 0.75 + 0.25 * (torch.sin(6.0 * longitude) * torch.cos(5.0 * latitude))[..., None]  # (..., 1)
    return (base * stripes).clamp(0.0, 1.0)


def sky_hit(rays_o: torch.Tensor, rays_d: torch.Tensor) -> torch.Tensor:
    """Ray parameter t where rays from inside the sky sphere leave it: |o + t d| = SKY_RADIUS, the positive root.
    rays_o, rays_d: (R, 3) -> (R,)."""
    a = (rays_d * rays_d).sum(-1)
    half_b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - SKY_RADIUS**2  # < 0 inside the sphere, so the root is real and positive
    return (-half_b + torch.sqrt(half_b**2 - a * c)) / a


def render_unbounded_views(c2w: torch.Tensor, H: int, W: int, focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Opaque RGB images and depths of the objects over the sky. c2w: (N, 4, 4) world cameras (unscaled).

    The objects come anti-aliased with their coverage alpha from `builtin_scene.render_views`; the sky, smooth
    at the pixel scale, is shaded at the pixel centre and composited under them: rgb = obj * a + sky * (1 - a).
    Returns rgb (N, H, W, 3) and depth along the optical axis (N, H, W), the object's where one is hit.
    """
    objects = render_views(c2w, H, W, focal)  # (N, H, W, 4) straight alpha
    K = torch.tensor([[focal, 0.0, W / 2], [0.0, focal, H / 2], [0.0, 0.0, 1.0]])
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    u, v = cols.reshape(-1).float() + 0.5, rows.reshape(-1).float() + 0.5  # (H*W,)
    rgb, depth = [], []
    for pose in c2w.float():
        rays_o, rays_d = rays_through_pixels(K, pose, u, v)  # (H*W, 3); rays_d has camera-frame z = -1
        t_sky = sky_hit(rays_o, rays_d)
        sky = sky_colour(rays_o + t_sky[:, None] * rays_d).reshape(H, W, 3)
        rgb.append(sky)
        depth.append(t_sky.reshape(H, W))
    rgb, depth = torch.stack(rgb), torch.stack(depth)
    alpha = objects[..., 3:]
    rgb = objects[..., :3] * alpha + rgb * (1.0 - alpha)
    t_obj, hit = builtin_scene.trace_rays(*_centre_rays(c2w.float(), K, H, W))
    depth = torch.where(hit.reshape(depth.shape), t_obj.reshape(depth.shape), depth)
    return rgb.clamp(0.0, 1.0), depth


def _centre_rays(c2w: torch.Tensor, K: torch.Tensor, H: int, W: int):
    view, row, col = torch.meshgrid(torch.arange(c2w.shape[0]), torch.arange(H), torch.arange(W), indexing="ij")
    return rays_through_pixels(K, c2w[view.reshape(-1)], col.reshape(-1) + 0.5, row.reshape(-1) + 0.5)


def _stamp(resolution: int, n_train: int, n_val: int, n_test: int) -> dict:
    return dict(kind="unbounded", version=SCENE_VERSION, resolution=resolution, n_train=n_train, n_val=n_val, n_test=n_test)


def write_unbounded_scene(root, n_train: int = 60, n_val: int = 4, n_test: int = 8,
                          resolution: int = DEFAULT_RESOLUTION) -> Path:
    """Render the scene and write it in the Blender layout under `root` (opaque RGBA PNGs, poses scaled by
    WORLD_SCALE), the version stamp last. Deterministic. Returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / STAMP_FILE).unlink(missing_ok=True)
    focal = 0.5 * resolution / math.tan(0.5 * CAMERA_ANGLE_X)
    for split, poses in camera_poses(n_train, n_val, n_test).items():
        rgb, _ = render_unbounded_views(poses, resolution, resolution, focal)
        rgba = torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1)  # opaque: alpha 1 everywhere
        scaled = poses.clone()
        scaled[:, :3, 3] *= WORLD_SCALE
        write_blender_split(root, split, rgba, scaled, {"camera_angle_x": CAMERA_ANGLE_X, "world_scale": WORLD_SCALE})
    atomic_write_bytes(root / STAMP_FILE, json.dumps(_stamp(resolution, n_train, n_val, n_test)).encode())
    return root


def ensure_unbounded_scene(root=None) -> Path:
    """Return `root` (default data/builtin_unbounded), (re)generating it when its stamp is missing or stale."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    try:
        stamp = json.loads((root / STAMP_FILE).read_text())
        if stamp.get("version") == SCENE_VERSION and stamp.get("kind") == "unbounded":
            return root
    except (OSError, ValueError, AttributeError):
        pass
    return write_unbounded_scene(root)
