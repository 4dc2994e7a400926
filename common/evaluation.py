"""Held-out evaluation and path videos, the same for every method.

A script hands over a ``render_fn(rays_o (R,3), rays_d (R,3)) -> {'rgb': (R,3), 'depth': (R,), 'opacity': (R,)}``
that renders without randomness; ``render_fn.chunk`` (optional) says how many rays it takes at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.data.scene import Scene, Split, composite_on_background
from common.metrics import psnr, ssim
from common.paths import default_video_path, load_camera_path
from common.rays import get_rays, render_image
from common.training import write_json
from common.video import colorize_depth, save_image, write_video


def render_view(render_fn, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
                distortion: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Render one camera (with lens distortion (k1, k2, p1, p2) when given): returns 'rgb' (H,W,3), 'depth' (H,W),
    'opacity' (H,W) on the CPU."""
    rays_o, rays_d = get_rays(K, c2w, height, width, distortion)
    out = render_image(render_fn, rays_o, rays_d, getattr(render_fn, "chunk", 4096))
    return {key: value.reshape(height, width, *value.shape[1:]).cpu() for key, value in out.items()}


def view_indices(n_total: int, n_views: int | None) -> list[int]:
    """All views, or n_views of them spread evenly over the split (so a short evaluation still sees all sides)."""
    if not n_views or n_views >= n_total:
        return list(range(n_total))
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n_views).round()})


def evaluate_split(render_fn, split: Split, outdir: Path | None, n_views: int | None = None,
                   background: float = 1.0, near: float | None = None, far: float | None = None,
                   progress: bool = True, **facts) -> dict:
    """Render views of a held-out split and score them with PSNR and SSIM against the ground truth.

    Ground truth with an alpha channel is composited over `background` (white for the Blender protocol).
    With `outdir`, writes per view `rgb_XXX.png`, `depth_XXX.png` and `gt_XXX.png`, and `metrics.json`.
    Returns {'split', 'mean_psnr', 'mean_ssim', 'views': [{'file', 'psnr', 'ssim'}, ...]} plus the keyword
    `facts` (scene, backend, ...), which are recorded in metrics.json too.
    """
    cams = split.cameras
    if outdir is not None:
        Path(outdir).mkdir(parents=True, exist_ok=True)
    views = []
    indices = view_indices(len(split.images), n_views)
    for index in tqdm(indices, desc=f"rendering {split.name}", leave=False, disable=not progress):
        distortion = None if cams.distortion is None else cams.distortion[index]
        out = render_view(render_fn, cams.K[index], cams.c2w[index], cams.height, cams.width, distortion)
        gt = split.images[index]
        gt = composite_on_background(gt, background) if gt.shape[-1] == 4 else gt
        pred = out["rgb"].clamp(0.0, 1.0)
        views.append(dict(file=split.files[index], psnr=psnr(pred, gt), ssim=ssim(pred, gt)))
        if outdir is not None:
            save_image(Path(outdir) / f"rgb_{index:03d}.png", pred)
            save_image(Path(outdir) / f"gt_{index:03d}.png", gt)
            lo = near if near is not None else float(out["depth"].min())
            hi = far if far is not None else float(out["depth"].max())
            save_image(Path(outdir) / f"depth_{index:03d}.png",
                       colorize_depth(out["depth"], lo, hi, opacity=out["opacity"]))
    metrics = dict(split=split.name,
                   mean_psnr=float(np.mean([v["psnr"] for v in views])),
                   mean_ssim=float(np.mean([v["ssim"] for v in views])),
                   views=views, **facts)
    if outdir is not None:
        write_json(Path(outdir) / "metrics.json", metrics)
    return metrics


def render_path_videos(render_fn, scene: Scene, outdir: Path, n_frames: int, fps: int = 24,
                       poses: torch.Tensor | None = None, name: str = "video") -> list[Path]:
    """Fly a camera path and write two videos, colour and colourised depth: `poses` (N, 4, 4) if given, else
    `default_video_path` (around the object of a Blender scene, or along the arc of a capture). The intrinsics are the
    first training camera's. Returns the paths written (<name>_rgb.mp4 / <name>_depth.mp4, or gif where no mp4
    writer is available)."""
    cams = scene.splits["train"].cameras
    if poses is None:
        poses = default_video_path(cams.c2w, n_frames)
    rgb_frames, depth_frames = [], []
    for c2w in tqdm(poses, desc=f"rendering {name}", leave=False):
        out = render_view(render_fn, cams.K[0], c2w, cams.height, cams.width)
        rgb_frames.append((out["rgb"].clamp(0, 1).numpy() * 255).astype(np.uint8))
        depth_frames.append(colorize_depth(out["depth"], scene.near, scene.far, opacity=out["opacity"]))
    depth_frames = [(np.asarray(d) * 255).astype(np.uint8) for d in depth_frames]
    return [write_video(Path(outdir) / f"{name}_rgb.mp4", np.stack(rgb_frames), fps=fps),
            write_video(Path(outdir) / f"{name}_depth.mp4", np.stack(depth_frames), fps=fps)]


def final_evaluation(render_fn, scene: Scene, outdir: Path, n_test_views: int, video_frames: int,
                     background: float, camera_path: str | None = None, **facts) -> dict:
    """What every script does after training: score the test views (pictures and metrics.json in <outdir>/test),
    print the result, and fly the default video path (`default_video_path`). `facts` (iters, backend, ...) are added to the metrics."""
    metrics = evaluate_split(render_fn, scene.splits["test"], Path(outdir) / "test", n_views=n_test_views or None,
                             background=background, near=scene.near, far=scene.far, scene=scene.name, **facts)
    print(f"test: PSNR {metrics['mean_psnr']:.2f} dB, SSIM {metrics['mean_ssim']:.4f} "
          f"over {len(metrics['views'])} views -> {Path(outdir) / 'test'}")
    videos = []
    if video_frames > 0:
        videos += render_path_videos(render_fn, scene, Path(outdir), video_frames)
    if camera_path:
        videos += render_path_videos(render_fn, scene, Path(outdir), 0, poses=load_camera_path(camera_path),
                                     name=f"video_{Path(camera_path).stem}")
    if videos:
        print("videos: " + ", ".join(str(v) for v in videos))
    return metrics
