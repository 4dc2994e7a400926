"""The built-in scene: four coloured analytic shapes, rendered by sphere tracing into the Blender layout.

Every script trains on it by default, so the project runs with no download: `write_builtin_scene` renders
`transforms_{train,val,test}.json` and RGBA PNGs exactly like NeRF's Blender scenes (same field of view as
lego, cameras on a sphere of radius 4 looking at the origin, near 2, far 6, transparent background) and
`common.data.blender.load_blender` reads it like any other Blender scene.

The geometry is known in closed form, which the tests use: `sdf(points)` is the exact signed distance to the
union of a rounded box, a sphere, a torus and a capsule (the classic exact formulas, as collected by Inigo
Quilez). The shapes are pairwise disjoint (gap >= 0.17), so min over the shapes is the exact distance to the
union everywhere, inside as well as outside (for overlapping shapes the min is exact only outside). The capsule
passes through the hole of the torus without touching it.

Shading is deliberately simple and view-independent: Lambert with one directional light plus ambient,
colour = albedo * (ambient + (1 - ambient) * max(0, n . l)), no shadows, no textures. Pixels are anti-aliased by
averaging 3 x 3 rays per pixel near silhouettes and occlusion edges (see `render_views`). World frame: z up
(Blender).
Glossary: R rays, N cameras or points, P primitives, H x W image, s supersampling factor per axis.
"""
import json
import math
from pathlib import Path

import torch

from common.data.blender import write_blender_split
from common.data.scene import atomic_write_bytes
from common.numerics import DIVISION_EPS
from common.paths import look_at
from common.rays import rays_through_pixels

# Bump when the geometry, shading, cameras or file layout change: `ensure_builtin_scene` regenerates data whose
# stamp holds another version.
SCENE_VERSION = 1
STAMP_FILE = "builtin_scene_version.json"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data" / "builtin"

DEFAULT_RESOLUTION = 100
CAMERA_ANGLE_X = 0.6911112070083618  # horizontal field of view of the Blender lego scene (radians)
CAMERA_RADIUS = 4.0
SUPERSAMPLE = 3  # rays per pixel per axis; odd, so the middle ray goes through the pixel centre
AMBIENT = 0.3
LIGHT_DIR = (0.45, -0.35, 0.82)  # towards the light, world frame (normalised when used)

# Shapes, pairwise at least 0.17 apart, all within radius 1.21 of the origin: a camera at radius 4 with lego's
# field of view sees everything inside radius 4 sin(camera_angle_x / 2) = 1.35, so no view cuts a shape off.
# Colours are the albedo, linear RGB in [0, 1].
ROUNDED_BOX = dict(center=(-0.55, 0.5, 0.3), half_size=(0.32, 0.26, 0.26), rounding=0.07, yaw_deg=30.0)
SPHERE = dict(center=(0.55, -0.5, 0.2), radius=0.38)
TORUS = dict(center=(0.0, 0.0, -0.5), major_radius=0.5, minor_radius=0.14)  # axis along z
CAPSULE = dict(a=(0.0, 0.0, -1.0), b=(0.0, 0.0, 0.75), radius=0.19)  # vertical, through the hole of the torus
ALBEDOS = (
    (0.85, 0.22, 0.18),  # box: red
    (0.20, 0.42, 0.90),  # sphere: blue
    (0.95, 0.75, 0.20),  # torus: gold
    (0.25, 0.75, 0.32),  # capsule: green
)

# Every shape lies inside the sphere of radius BOUND_RADIUS around the origin (the farthest surface point is at
# ~1.21; a test checks it).
BOUND_RADIUS = 1.3
# Sphere tracing: a ray hits when the distance falls below HIT_EPS (world units; float32 positions at distance
# ~4 are exact to ~5e-7, so this is well above rounding).
HIT_EPS = 1e-4
MAX_STEPS = 128
# Anti-aliasing: neighbouring pixels of one shape whose depths differ by more than this straddle an occlusion
# edge (a pixel is ~0.03 units wide at distance 4, so smooth surfaces stay well below it except at grazing angles).
DEPTH_JUMP = 0.1


def _distances_xyz(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> list:
    """Exact signed distances to the four shapes, from the coordinates as separate tensors.

    x, y, z: (...,) each. Returns [box, sphere, torus, capsule], each (...,). Written component-wise
    (no (..., 3) reductions), which is several times faster on a CPU and matters for sphere tracing.
    """
    # Rounded box: rotate into the box frame (by -yaw about z), then q = |p| - (b - r);
    # distance = |max(q, 0)| + min(max(q_x, q_y, q_z), 0) - r (outside part + inside part, exact).
    cx, cy, cz = ROUNDED_BOX["center"]
    cos, sin = math.cos(math.radians(ROUNDED_BOX["yaw_deg"])), math.sin(math.radians(ROUNDED_BOX["yaw_deg"]))
    rounding = ROUNDED_BOX["rounding"]
    hx, hy, hz = (h - rounding for h in ROUNDED_BOX["half_size"])
    lx, ly = x - cx, y - cy
    qx = (cos * lx + sin * ly).abs() - hx
    qy = (cos * ly - sin * lx).abs() - hy
    qz = (z - cz).abs() - hz
    outside = torch.sqrt(qx.clamp(min=0).square() + qy.clamp(min=0).square() + qz.clamp(min=0).square())
    inside = torch.maximum(torch.maximum(qx, qy), qz).clamp(max=0)
    d_box = outside + inside - rounding
    # Sphere: |p - c| - radius.
    cx, cy, cz = SPHERE["center"]
    d_sphere = torch.sqrt((x - cx).square() + (y - cy).square() + (z - cz).square()) - SPHERE["radius"]
    # Torus around the z axis: distance to the core circle in the (radial, axial) half-plane, minus the tube.
    cx, cy, cz = TORUS["center"]
    radial = torch.sqrt((x - cx).square() + (y - cy).square()) - TORUS["major_radius"]
    d_torus = torch.sqrt(radial.square() + (z - cz).square()) - TORUS["minor_radius"]
    # Capsule: distance to the closest point a + h (b - a) of the segment, h clamped to [0, 1], minus radius.
    (ax, ay, az), (bx, by, bz) = CAPSULE["a"], CAPSULE["b"]
    bax, bay, baz = bx - ax, by - ay, bz - az
    pax, pay, paz = x - ax, y - ay, z - az
    h = ((pax * bax + pay * bay + paz * baz) / (bax * bax + bay * bay + baz * baz)).clamp(0.0, 1.0)
    d_capsule = torch.sqrt((pax - h * bax).square() + (pay - h * bay).square() + (paz - h * baz).square())
    d_capsule = d_capsule - CAPSULE["radius"]
    return [d_box, d_sphere, d_torus, d_capsule]


def _bounding_spheres() -> list:
    """(centre, radius) of a sphere around each shape, for skipping empty space in `trace_rays`."""
    a, b = torch.tensor(CAPSULE["a"]), torch.tensor(CAPSULE["b"])
    return [
        (ROUNDED_BOX["center"], math.sqrt(sum(h * h for h in ROUNDED_BOX["half_size"]))),
        (SPHERE["center"], SPHERE["radius"]),
        (TORUS["center"], TORUS["major_radius"] + TORUS["minor_radius"]),
        (((a + b) / 2).tolist(), float((b - a).norm()) / 2 + CAPSULE["radius"]),
    ]


def _union(distances: list) -> torch.Tensor:
    out = distances[0]
    for d in distances[1:]:
        out = torch.minimum(out, d)
    return out


def primitive_distances(points: torch.Tensor) -> torch.Tensor:
    """Exact signed distance to each shape. points: (..., 3) -> (..., P), P = 4 (box, sphere, torus, capsule)."""
    return torch.stack(_distances_xyz(*points.unbind(-1)), dim=-1)


def sdf(points: torch.Tensor) -> torch.Tensor:
    """Exact signed distance to the scene (negative inside). points: (..., 3) -> (...,), world units."""
    return _union(_distances_xyz(*points.unbind(-1)))


def albedo(points: torch.Tensor) -> torch.Tensor:
    """Albedo of the nearest shape. points: (..., 3) -> (..., 3) in [0, 1]."""
    nearest = primitive_distances(points).argmin(dim=-1)  # (...,)
    return torch.tensor(ALBEDOS, dtype=points.dtype, device=points.device)[nearest]


def normals(points: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    """Outward unit normal = normalised gradient of the SDF, by finite differences in float64.

    Uses the four tetrahedron offsets k in {(1,-1,-1), (-1,-1,1), (-1,1,-1), (1,1,1)}:
    sum_k k sdf(p + h k) = 4 h grad sdf(p) + O(h^3), four SDF evaluations instead of six for central differences.
    points: (..., 3) -> (..., 3), same dtype as points.
    """
    p64 = points.double()
    corners = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=torch.float64,
                           device=points.device)
    grad = sum(corner * sdf(p64 + h * corner)[..., None] for corner in corners)  # (..., 3), = 4 h grad sdf
    return torch.nn.functional.normalize(grad, dim=-1).to(points.dtype)


def trace_rays(rays_o: torch.Tensor, rays_d: torch.Tensor, max_steps: int = MAX_STEPS):
    """Sphere tracing (Hart 1996): step along each ray by the SDF, which can never step through the surface.

    rays_o, rays_d: (R, 3), rays_d of any non-zero length. Returns t (R,) with the hit point at
    rays_o + t * rays_d (inf where the ray misses) and hit (R,) bool (|sdf| < HIT_EPS there, or < 10 HIT_EPS
    for the few grazing rays that use up max_steps).
    """
    length = rays_d.norm(dim=-1)  # (R,)
    dirs = rays_d / length[:, None]  # (R, 3) unit
    # March only between the first entry into and the last exit from the shapes' bounding spheres: rays that
    # miss them all are background at once, and the others start next to a shape.
    s_enter = torch.full_like(length, math.inf)
    s_leave = torch.zeros_like(length)
    for centre, radius in _bounding_spheres():
        # |o + s d - c| = radius: s^2 + 2 s (o - c).d + |o - c|^2 - radius^2 = 0.
        offset = rays_o - torch.tensor(centre, dtype=rays_o.dtype)  # (R, 3)
        half_b = (offset * dirs).sum(dim=-1)
        disc = half_b**2 - ((offset * offset).sum(dim=-1) - radius**2)
        root = disc.clamp(min=0.0).sqrt()
        crosses = (disc > 0) & (-half_b + root > 0)
        s_enter = torch.where(crosses, torch.minimum(s_enter, (-half_b - root).clamp(min=0.0)), s_enter)
        s_leave = torch.where(crosses, torch.maximum(s_leave, -half_b + root), s_leave)
    s_all = torch.where(torch.isfinite(s_enter), s_enter, 0.0)  # (R,) arc length from the origin of the ray
    hit = torch.zeros_like(s_all, dtype=torch.bool)
    ids = torch.nonzero(torch.isfinite(s_enter)).squeeze(-1)  # rays that cross at least one bounding sphere
    # Marching rays as rows (ox, oy, oz, dx, dy, dz, s_exit, s): one contiguous row per quantity (see
    # _distances_xyz), and one gather to drop the finished rays.
    state = torch.cat([rays_o[ids].T, dirs[ids].T, s_leave[ids][None], s_all[ids][None]])  # (8, r)
    converged = torch.zeros(ids.numel(), dtype=torch.bool)
    done = torch.zeros(ids.numel(), dtype=torch.bool)
    for step in range(max_steps):
        ox, oy, oz, dx, dy, dz, s_exit, s = state
        dist = _union(_distances_xyz(ox + s * dx, oy + s * dy, oz + s * dz))  # (r,)
        converged |= ~done & (dist < (HIT_EPS if step < max_steps - 1 else 10 * HIT_EPS))
        done |= converged
        state[7] = torch.where(done, s, s + dist)  # the SDF is a safe step: no surface is closer than dist
        done |= state[7] > s_exit  # past the last bounding sphere: a miss
        # Retire finished rays once they are a tenth of the batch (compacting costs about as much as a step).
        if int(done.sum()) * 10 >= done.numel() or step == max_steps - 1:
            s_all[ids] = state[7]
            hit[ids[converged]] = True
            keep = torch.nonzero(~done).squeeze(-1)
            ids, state, converged, done = ids[keep], state[:, keep], converged[keep], done[keep]
            if ids.numel() == 0:
                break
    t = torch.where(hit, s_all / length, torch.full_like(s_all, math.inf))
    return t, hit


def shade(points: torch.Tensor) -> torch.Tensor:
    """Lambert + ambient colour of surface points: albedo * (ambient + (1 - ambient) max(0, n . l)).

    points: (..., 3) on the surface -> (..., 3) in [0, 1].
    """
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR, dtype=points.dtype, device=points.device), dim=0)
    lambert = (normals(points) * light).sum(dim=-1).clamp(min=0.0)  # (...,)
    return albedo(points) * (AMBIENT + (1.0 - AMBIENT) * lambert)[..., None]


def _trace_and_shade(K: torch.Tensor, c2w: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
    """Premultiplied RGBA, depth and shape id (-1 for background) of rays through image points (u, v).

    K: (3, 3); c2w: (R, 4, 4); u, v: (R,). Returns rgba (R, 4), t (R,), shape_id (R,) int64.
    """
    rays_o, rays_d = rays_through_pixels(K, c2w, u, v)
    t, hit = trace_rays(rays_o, rays_d)
    rgba = torch.zeros(u.shape[0], 4)
    shape_id = torch.full((u.shape[0],), -1, dtype=torch.int64)
    points = rays_o[hit] + t[hit, None] * rays_d[hit]  # (r, 3) on the surface
    rgba[hit, :3] = shade(points)
    rgba[hit, 3] = 1.0
    shape_id[hit] = primitive_distances(points).argmin(dim=-1)
    return rgba, t, shape_id


def _edge_pixels(shape_id: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Pixels whose 4 neighbours include another shape, the background, or a depth jump > DEPTH_JUMP.

    shape_id, depth: (N, H, W). Returns (N, H, W) bool. Inside one shape the shading is smooth at the pixel
    scale (the box edges are rounded over ~3 pixels), so only these pixels need more than one ray.
    """
    ids = torch.nn.functional.pad(shape_id[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    depth = torch.nn.functional.pad(depth.nan_to_num(posinf=1e3)[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    H, W = shape_id.shape[1:]
    edge = torch.zeros_like(shape_id, dtype=torch.bool)
    for di, dj in ((0, 1), (1, 0), (1, 2), (2, 1)):  # up, left, right, down
        edge |= ids[:, di : di + H, dj : dj + W] != ids[:, 1:-1, 1:-1]
        edge |= (depth[:, di : di + H, dj : dj + W] - depth[:, 1:-1, 1:-1]).abs() > DEPTH_JUMP
    return edge


def render_views(c2w: torch.Tensor, H: int, W: int, focal: float, supersample: int = SUPERSAMPLE) -> torch.Tensor:
    """Render RGBA images of the scene (straight, not premultiplied, alpha; the background has alpha 0).

    c2w: (N, 4, 4) cameras (OpenGL convention); focal in pixels; principal point at the image centre.
    Anti-aliasing: one ray through every pixel centre first; then every pixel near a silhouette or a depth
    jump (`_edge_pixels`) is re-rendered as the mean of supersample^2 rays on a regular sub-pixel grid:
    alpha = fraction of rays that hit, rgb = premultiplied mean / alpha, so compositing the result on any
    background equals the mean of the composited sub-pixel rays.
    Views are rendered in groups of about 2^20 rays (memory stays small at any resolution), on one CPU thread
    (restored afterwards): two threads are only ~1.4x faster on an idle 2-core machine, but several times
    slower when another job shares the CPU, because each small parallel op waits for a preempted thread.
    Returns (N, H, W, 4) float32 in [0, 1].
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    views_per_group = max(1, 2**20 // (H * W))
    try:
        return torch.cat([
            _render_views(c2w[start : start + views_per_group], H, W, focal, supersample)
            for start in range(0, c2w.shape[0], views_per_group)
        ])
    finally:
        torch.set_num_threads(threads)


def _render_views(c2w: torch.Tensor, H: int, W: int, focal: float, supersample: int) -> torch.Tensor:
    N = c2w.shape[0]
    c2w = c2w.float()
    K = torch.tensor([[focal, 0.0, W / 2], [0.0, focal, H / 2], [0.0, 0.0, 1.0]])
    view, row, col = torch.meshgrid(torch.arange(N), torch.arange(H), torch.arange(W), indexing="ij")
    view, row, col = view.reshape(-1), row.reshape(-1), col.reshape(-1)  # (N*H*W,)
    rgba, t, shape_id = _trace_and_shade(K, c2w[view], col + 0.5, row + 0.5)
    rgba = rgba.reshape(N, H, W, 4)
    edge = _edge_pixels(shape_id.reshape(N, H, W), t.reshape(N, H, W)).reshape(-1)  # (N*H*W,)
    # Sub-pixel offsets (k + 0.5) / s, k = 0..s-1, for every edge pixel.
    s = supersample
    offsets = (torch.arange(s, dtype=torch.float32) + 0.5) / s  # (s,)
    sub_row = row[edge, None, None] + offsets[None, :, None]  # (E, s, 1)
    sub_col = col[edge, None, None] + offsets[None, None, :]  # (E, 1, s)
    sub_row, sub_col = torch.broadcast_tensors(sub_row, sub_col)  # (E, s, s)
    sub_view = view[edge, None, None].expand_as(sub_row)
    sub_rgba, _, _ = _trace_and_shade(K, c2w[sub_view.reshape(-1)], sub_col.reshape(-1), sub_row.reshape(-1))
    rgba.view(-1, 4)[edge] = sub_rgba.reshape(-1, s * s, 4).mean(dim=1)  # premultiplied mean per pixel
    alpha = rgba[..., 3:]
    rgba[..., :3] = torch.where(alpha > 0, rgba[..., :3] / alpha.clamp(min=DIVISION_EPS), 0.0)  # un-premultiply
    return rgba.clamp(0.0, 1.0)


def _cameras_on_cap(n: int, elevation_min_deg: float, elevation_max_deg: float, azimuth_offset_deg: float):
    """n camera centres spread evenly over a band of the sphere of radius 4 (golden-angle spiral).

    Heights are uniform in sin(elevation) (equal area per camera); azimuths advance by the golden angle.
    Returns (n, 3) float64.
    """
    k = torch.arange(n, dtype=torch.float64)
    z_lo, z_hi = math.sin(math.radians(elevation_min_deg)), math.sin(math.radians(elevation_max_deg))
    z = z_lo + (k + 0.5) / n * (z_hi - z_lo)  # (n,) height on the unit sphere
    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    azimuth = k * golden_angle + math.radians(azimuth_offset_deg)
    ring = torch.sqrt(1.0 - z**2)
    return CAMERA_RADIUS * torch.stack([ring * torch.cos(azimuth), ring * torch.sin(azimuth), z], dim=-1)


def _cameras_on_ring(n: int, elevation_deg: float, azimuth_offset_deg: float):
    """n camera centres evenly spaced on a horizontal circle at the given elevation. Returns (n, 3) float64."""
    azimuth = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n) + math.radians(azimuth_offset_deg)
    elevation = math.radians(elevation_deg)
    return CAMERA_RADIUS * torch.stack(
        [math.cos(elevation) * torch.cos(azimuth), math.cos(elevation) * torch.sin(azimuth),
         torch.full_like(azimuth, math.sin(elevation))],
        dim=-1,
    )


def camera_poses(n_train: int = 100, n_val: int = 8, n_test: int = 8) -> dict:
    """Deterministic camera-to-world poses (N, 4, 4) per split, all looking at the origin from radius 4.

    train: a golden-angle spiral over elevations -5..80 degrees (mostly the upper hemisphere, like lego);
    val: the same kind of spiral, shifted in azimuth; test: a ring at 30 degrees elevation (like lego's test
    path) between the train cameras.
    """
    centres = {
        "train": _cameras_on_cap(n_train, -5.0, 80.0, 0.0),
        "val": _cameras_on_cap(n_val, 5.0, 70.0, 17.0),
        "test": _cameras_on_ring(n_test, 30.0, 11.0),
    }
    up = torch.tensor([0.0, 0.0, 1.0])
    return {split: look_at(eyes.float(), torch.zeros(3), up) for split, eyes in centres.items()}


def _stamp(resolution: int, n_train: int, n_val: int, n_test: int) -> dict:
    return dict(version=SCENE_VERSION, resolution=resolution, n_train=n_train, n_val=n_val, n_test=n_test)


def write_builtin_scene(
    root, n_train: int = 100, n_val: int = 8, n_test: int = 8, resolution: int = DEFAULT_RESOLUTION
) -> Path:
    """Render the scene and write it in the Blender layout under `root`; returns root.

    Writes `{train,val,test}/r_<i>.png` (resolution x resolution RGBA), `transforms_<split>.json`
    (camera_angle_x, frames with file_path and transform_matrix) and, last, the version stamp
    `builtin_scene_version.json`. Deterministic: the same arguments give the same bytes.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / STAMP_FILE).unlink(missing_ok=True)  # half-written data must not look complete
    focal = 0.5 * resolution / math.tan(0.5 * CAMERA_ANGLE_X)
    for split, poses in camera_poses(n_train, n_val, n_test).items():
        images = render_views(poses, resolution, resolution, focal)  # (N, H, W, 4)
        write_blender_split(root, split, images, poses, {"camera_angle_x": CAMERA_ANGLE_X})
    stamp = _stamp(resolution, n_train, n_val, n_test)
    atomic_write_bytes(root / STAMP_FILE, json.dumps(stamp).encode())
    return root


def ensure_builtin_scene(root=None) -> Path:
    """Return `root` (default: data/builtin under the repo root), (re)generating it with the default settings
    when its version stamp is missing, unreadable or from another SCENE_VERSION."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    try:
        stamp = json.loads((root / STAMP_FILE).read_text())
        if stamp.get("version") == SCENE_VERSION:
            return root
    except (OSError, ValueError, AttributeError):
        pass
    return write_builtin_scene(root)
