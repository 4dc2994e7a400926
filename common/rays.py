"""Camera rays: pinhole model in the OpenGL/Blender convention, random training batches, chunked rendering.

Conventions (the same as the Blender scenes of NeRF):
- Camera frame: x right, y up, the camera looks along -z. `c2w` (4, 4) maps camera to world coordinates.
- Pixel (i, j) is column i (0..W-1, left to right) and row j (0..H-1, top to bottom); its centre is at
  (u, v) = (i + 0.5, j + 0.5) in pixel units, with (0, 0) the top-left corner of the image.
- Intrinsics K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]. A pixel's direction in the camera frame is
  ((u - cx) / fx, -(v - cy) / fy, -1): image rows grow downwards but y points up, hence the minus sign.
- `rays_d` is *not* normalised: its camera-frame z component is -1, so the ray parameter t in
  x = rays_o + t * rays_d is the depth along the optical axis (what NeRF's near=2 / far=6 bounds refer to).
Glossary: R rays, H x W image, C channels.
"""
from typing import Callable

import torch


def distort(x: torch.Tensor, y: torch.Tensor, distortion: torch.Tensor):
    """Brown-Conrady lens model (OpenCV's k1, k2 radial and p1, p2 tangential terms) on normalised image
    coordinates of OpenCV (x = X/Z right, y = Y/Z down): with r^2 = x^2 + y^2,
        x_d = x (1 + k1 r^2 + k2 r^4) + 2 p1 x y + p2 (r^2 + 2 x^2)
        y_d = y (1 + k1 r^2 + k2 r^4) + p1 (r^2 + 2 y^2) + 2 p2 x y
    x, y: (R,); distortion: (4,) or (R, 4) = (k1, k2, p1, p2). Returns x_d, y_d (R,)."""
    k1, k2, p1, p2 = distortion.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def undistort(x_d: torch.Tensor, y_d: torch.Tensor, distortion: torch.Tensor, iterations: int = 10):
    """Invert `distort` by Newton's method on (x, y), starting from the distorted point (the model has no
    closed-form inverse). Each step solves the 2x2 system J [dx, dy] = residual with the model's analytic
    Jacobian. For the mild distortion of real lenses it converges to float precision in a few steps.
    x_d, y_d: (R,); distortion: (4,) or (R, 4). Returns x, y (R,)."""
    k1, k2, p1, p2 = distortion.unbind(-1)
    x, y = x_d.clone(), y_d.clone()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * k2)
        d_radial = k1 + 2 * k2 * r2  # d radial / d (r^2)
        fx, fy = distort(x, y, distortion)
        fx, fy = fx - x_d, fy - y_d  # residuals
        # Jacobian of (x_d, y_d) with respect to (x, y).
        j_xx = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
        j_xy = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        j_yx = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        j_yy = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
        det = j_xx * j_yy - j_xy * j_yx
        x = x - (j_yy * fx - j_xy * fy) / det
        y = y - (j_xx * fy - j_yx * fx) / det
    return x, y


def rays_through_pixels(K: torch.Tensor, c2w: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                        distortion: torch.Tensor | None = None):
    """Rays through arbitrary image points (u, v) (pixel units, origin at the top-left corner of the image;
    pixel (i, j) has its centre at (i + 0.5, j + 0.5)).

    K: (3, 3) or (R, 3, 3); c2w: (4, 4) or (R, 4, 4); u, v: (R,) float; distortion: None (pinhole) or (4,) or
    (R, 4) = (k1, k2, p1, p2): the pixel coordinates are undistorted first (`undistort`), so each ray goes where
    the lens actually sent the light that reached (u, v) (the images themselves are never resampled).
    Returns rays_o (R, 3), rays_d (R, 3) in world coordinates.
    """
    ### BEGIN SOLUTION
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    if distortion is not None:
        x, y = undistort((u - cx) / fx, (v - cy) / fy, distortion.to(u.dtype))
        u, v = cx + fx * x, cy + fy * y
    dirs_cam = torch.stack([(u - cx) / fx, -(v - cy) / fy, -torch.ones_like(u)], dim=-1)  # (R, 3)
    rotation = c2w[..., :3, :3]  # (3, 3) or (R, 3, 3)
    rays_d = (rotation @ dirs_cam.unsqueeze(-1)).squeeze(-1)  # (R, 3): d_world = R_c2w d_cam
    rays_o = c2w[..., :3, 3].expand_as(rays_d)  # (R, 3): every ray starts at the camera centre
    return rays_o, rays_d
    ### END SOLUTION


def get_rays(K: torch.Tensor, c2w: torch.Tensor, H: int, W: int, distortion: torch.Tensor | None = None):
    """One ray through the centre of every pixel of an H x W image.

    K: (3, 3) float32 intrinsics; c2w: (4, 4) float32 camera-to-world; distortion: None or (4,) (k1, k2, p1, p2).
    Returns rays_o (H*W, 3), rays_d (H*W, 3) in row-major pixel order, so `x.reshape(H, W, 3)` is an image;
    rays_d has camera-frame z = -1 (t is depth along the optical axis), see the module docstring.
    """
    ### BEGIN SOLUTION
    rows, cols = torch.meshgrid(
        torch.arange(H, dtype=c2w.dtype, device=c2w.device),
        torch.arange(W, dtype=c2w.dtype, device=c2w.device),
        indexing="ij",
    )  # (H, W) each
    u = cols.reshape(-1) + 0.5  # (H*W,) pixel centres
    v = rows.reshape(-1) + 0.5
    rays_o, rays_d = rays_through_pixels(K.to(c2w.dtype), c2w, u, v, distortion)
    return rays_o.contiguous(), rays_d
    ### END SOLUTION


def sample_ray_batch(split, n_rays: int, generator: torch.Generator, pixel_box: tuple | None = None):
    """A random training batch: each ray picks an image and a pixel uniformly and independently.

    split: a `common.data.scene.Split` (images (N, H, W, C), cameras on the same device);
    generator: torch.Generator (any device; indices are drawn on its device, then moved to the images' device);
    pixel_box: (row_lo, row_hi, col_lo, col_hi), half-open, to draw only pixels inside it (01_nerf.py's
        precrop uses it); None = the whole image.
    Returns rays_o (R, 3), rays_d (R, 3), target (R, C) with R = n_rays.
    """
    n_images, H, W, _ = split.images.shape
    row_lo, row_hi, col_lo, col_hi = pixel_box if pixel_box is not None else (0, H, 0, W)
    if not (0 <= row_lo < row_hi <= H and 0 <= col_lo < col_hi <= W):
        raise ValueError(f"pixel_box {pixel_box} is empty or outside the {H}x{W} images")
    draw = dict(generator=generator, device=generator.device)
    image_idx = torch.randint(0, n_images, (n_rays,), **draw).to(split.images.device)  # (R,)
    rows = torch.randint(row_lo, row_hi, (n_rays,), **draw).to(split.images.device)  # (R,)
    cols = torch.randint(col_lo, col_hi, (n_rays,), **draw).to(split.images.device)  # (R,)
    cameras = split.cameras
    u = cols.to(cameras.c2w.dtype) + 0.5  # (R,) pixel centres
    v = rows.to(cameras.c2w.dtype) + 0.5
    distortion = None if cameras.distortion is None else cameras.distortion[image_idx]
    rays_o, rays_d = rays_through_pixels(cameras.K[image_idx], cameras.c2w[image_idx], u, v, distortion)
    target = split.images[image_idx, rows, cols]  # (R, C)
    return rays_o, rays_d, target


def render_image(
    render_fn: Callable[[torch.Tensor, torch.Tensor], dict],
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    chunk: int = 8192,
) -> dict:
    """Render many rays in chunks of `chunk` under torch.inference_mode() (no autograd
    bookkeeping at all, cheaper than no_grad) and concatenate the outputs.

    render_fn(rays_o_chunk (r, 3), rays_d_chunk (r, 3)) -> dict of tensors whose first axis is r;
    rays_o, rays_d: (R, 3). Returns the same dict with first axis R (reshape to (H, W, ...) for an image).
    """
    outputs: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, rays_o.shape[0], chunk):
            chunk_out = render_fn(rays_o[start : start + chunk], rays_d[start : start + chunk])
            for key, value in chunk_out.items():
                outputs.setdefault(key, []).append(value)
    return {key: torch.cat(values, dim=0) for key, values in outputs.items()}
