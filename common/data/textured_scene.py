"""A small textured scene for structure from motion: photographs of it that COLMAP can pose, from known cameras.

The built-in scenes (common/data/builtin_scene.py) are shaded without texture, on which SIFT finds too few
keypoints to pose a camera. Here a cube [-0.5, 0.5]^3 whose faces carry value noise (random grids of five sizes,
bilinearly interpolated and summed: blobs at every scale, distinctive at each) stands on a ground plane z = -0.5
of the same noise, under a grey sky; images are ray cast exactly (pinhole, no distortion, no anti-aliasing).
`tests/common/test_capture.py` and notebooks/capture.ipynb pose these images with `python -m common.capture` and
compare the result with the known cameras. World frame: z up; cameras in OpenGL's convention (common/rays.py).
"""
from pathlib import Path

import numpy as np
import torch

from common.paths import look_at

W, H, FOCAL = 320, 240, 260.0


def _noise_grids(seed=0):
    """Random grids of three octaves per surface (4 box faces + top, the ground): value noise for SIFT to find."""
    rng = np.random.default_rng(seed)
    return [[rng.uniform(0, 1, (n + 1, n + 1, 3)) for n in (3, 7, 15, 31, 63)] for _ in range(6)]


def _value_noise(grids, u, v):
    """Bilinearly interpolated random grids (u, v in [0, 1]), five octaves summed with weights 0.3 to 0.1:
    blobs at several scales, sharp enough at the finest for SIFT, distinctive at every scale."""
    colour = np.zeros(u.shape + (3,))
    for grid, weight in zip(grids, (0.3, 0.25, 0.2, 0.15, 0.1)):
        n = grid.shape[0] - 1
        x, y = np.clip(u, 0, 1) * n, np.clip(v, 0, 1) * n
        i, j = np.minimum(x.astype(int), n - 1), np.minimum(y.astype(int), n - 1)
        fx, fy = (x - i)[..., None], (y - j)[..., None]
        colour += weight * ((1 - fx) * (1 - fy) * grid[i, j] + fx * (1 - fy) * grid[i + 1, j]
                            + (1 - fx) * fy * grid[i, j + 1] + fx * fy * grid[i + 1, j + 1])
    return (colour - 0.5) * 2.2 + 0.5  # stretch the contrast


def render_textured(c2w: torch.Tensor, seed=0) -> np.ndarray:
    """A cube [-0.5, 0.5]^3 with value-noise faces standing on a ground plane z = -0.5 (|x|, |y| < 3) of value
    noise, over a grey sky, by exact ray casting (pinhole, FOCAL, W x H). c2w: (4, 4) OpenGL."""
    grids = _noise_grids(seed)
    rows, cols = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    dirs = np.stack([(cols - W / 2) / FOCAL, -(rows - H / 2) / FOCAL, -np.ones_like(cols)], -1).reshape(-1, 3)
    pose = c2w.double().numpy()
    d = dirs @ pose[:3, :3].T  # (R, 3)
    o = np.broadcast_to(pose[:3, 3], d.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (-0.5 - o) / d, (0.5 - o) / d  # slab method
        t_near = np.minimum(t0, t1).max(-1)
        t_far = np.maximum(t0, t1).min(-1)
        t_box = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
        t_ground = np.where(d[:, 2] < 0, (-0.5 - o[:, 2]) / d[:, 2], np.inf)
    hit_ground = o + t_ground[:, None] * d
    t_ground = np.where((np.abs(hit_ground[:, :2]) < 3).all(-1), t_ground, np.inf)
    image = np.full((len(d), 3), 0.55) + 0.2 * d[:, 2:3] / np.linalg.norm(d, axis=-1, keepdims=True)  # sky
    on_box = t_box < t_ground
    p = o[on_box] + t_box[on_box, None] * d[on_box] + 0.5  # in [0, 1]^3
    face = np.where(np.abs(p[:, 2] - 1) < 1e-6, 4, np.where(np.abs(p[:, 0] - 0.5) > np.abs(p[:, 1] - 0.5),
                                                         np.where(p[:, 0] > 0.5, 0, 1), np.where(p[:, 1] > 0.5, 2, 3)))
    colour = np.zeros((len(p), 3))
    for f in range(5):
        mine = face == f
        u, v = ((p[mine, 1], p[mine, 2]) if f in (0, 1) else (p[mine, 0], p[mine, 2]) if f in (2, 3)
                else (p[mine, 0], p[mine, 1]))
        colour[mine] = _value_noise(grids[f], u, v)
    image[on_box] = colour
    on_ground = np.isfinite(t_ground) & ~on_box
    q = (hit_ground[on_ground][:, :2] + 3) / 6
    image[on_ground] = _value_noise(grids[5], q[:, 0], q[:, 1]) * 0.85
    return np.clip(image.reshape(H, W, 3), 0, 1)


def known_cameras(n=12, step_deg=15.0):
    """n cameras step_deg apart in azimuth on a wavy arc (heights 0.7 to 1.9) at 2.6 from the cube's axis, looking
    at its centre (a user's walk around it). Returns (n, 4, 4) OpenGL camera-to-world."""
    angles = torch.arange(n) * np.radians(step_deg)
    heights = 1.3 + 0.6 * torch.sin(3 * angles)  # not one circle: an orbit at one height leaves the focal length
    # free (a critical motion for self-calibration), and the mapper then trades it against the cameras' tilt
    eyes = torch.stack([2.6 * torch.cos(angles), 2.6 * torch.sin(angles), heights], -1)
    return look_at(eyes, torch.zeros(n, 3), torch.tensor([0.0, 0.0, 1.0]).expand(n, 3))


def write_photos(folder, c2w: torch.Tensor) -> list[Path]:
    """Render one PNG per camera (shot_00.png, ...) into `folder` (made if needed); returns the paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pose in enumerate(c2w):
        paths.append(folder / f"shot_{i:02d}.png")
        Image.fromarray((render_textured(pose) * 255 + 0.5).astype(np.uint8)).save(paths[-1])
    return paths
