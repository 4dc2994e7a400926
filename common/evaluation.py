"""Held-out evaluation and path videos, the same for every method.

A script hands over a ``render_fn(rays_o (R,3), rays_d (R,3)) -> {'rgb': (R,3), 'depth': (R,), 'opacity': (R,)}``
that renders without randomness; ``render_fn.chunk`` (optional) says how many rays it takes at once.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.data.scene import Scene, Split, composite_on_background
from common.errors import warn
from common.lpips import load_lpips
from common.memory import render_retrying
from common.metrics import constant_image_psnr, psnr, ssim
from common.paths import default_video_path, load_camera_path
from common.rays import get_rays, render_image
from common.training import write_json
from common.video import colorize_depth, save_image, write_video


def render_view(render_fn, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
                distortion: torch.Tensor | None = None, what: str = "a view") -> dict[str, torch.Tensor]:
    """Render one camera (with lens distortion (k1, k2, p1, p2) when given): returns 'rgb' (H,W,3), 'depth' (H,W),
    'opacity' (H,W) on the CPU. A GPU out-of-memory error halves render_fn.chunk and renders the view again
    (common.memory.render_retrying; `what` names the view in its messages)."""
    rays_o, rays_d = get_rays(K, c2w, height, width, distortion)
    out = render_retrying(render_fn, lambda chunk: render_image(render_fn, rays_o, rays_d, chunk), what)
    return {key: value.reshape(height, width, *value.shape[1:]).cpu() for key, value in out.items()}


def view_indices(n_total: int, n_views: int | None) -> list[int]:
    """All views, or n_views of them spread evenly over the split (so a short evaluation still sees all sides)."""
    if not n_views or n_views >= n_total:
        return list(range(n_total))
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n_views).round()})


def peak_memory() -> dict:
    """{'peak_rss_mib': the most resident memory this process has held so far (training and evaluation, from
    getrusage), 'peak_gpu_mib': the most GPU memory PyTorch's allocator has handed out
    (torch.cuda.max_memory_allocated), None without CUDA}, in MiB."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_rss = peak_kib / 2**20 if sys.platform == "darwin" else peak_kib / 2**10
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return dict(peak_rss_mib=round(peak_rss, 1), peak_gpu_mib=None if peak_gpu is None else round(peak_gpu, 1))


def mean_lpips(views: list[dict]) -> float | None:
    """The mean LPIPS of the views that have one (None where none has: no weights, or images under 31 px)."""
    scored = [v["lpips"] for v in views if v.get("lpips") is not None]
    return float(np.mean(scored)) if scored else None


def evaluate_split(render_fn, split: Split, outdir: Path | None, n_views: int | None = None,
                   background: float = 1.0, near: float | None = None, far: float | None = None,
                   progress: bool = True, lpips_fn=None, **facts) -> dict:
    """Render views of a held-out split and score them with PSNR, SSIM and (given `lpips_fn`, from
    common.lpips.load_lpips) LPIPS against the ground truth.

    Ground truth with an alpha channel is composited over `background` (white for the Blender protocol).
    With `outdir`, writes per view `rgb_XXX.png`, `depth_XXX.png` and `gt_XXX.png`, and `metrics.json`.
    Returns {'split', 'mean_psnr', 'mean_ssim', 'mean_lpips', 'constant_psnr', 'eval_s', 'peak_rss_mib',
    'peak_gpu_mib', 'views': [{'file', 'psnr', 'ssim', 'lpips', 'constant_psnr'}, ...]} plus the keyword
    `facts` (scene, backend, ...), which are recorded in metrics.json too. constant_psnr is what the best
    constant image (each view's mean colour) scores: the bar of `check_model_learned`. lpips is None without
    `lpips_fn`. eval_s: seconds spent rendering, scoring and writing the views.
    """
    start = time.perf_counter()
    cams = split.cameras
    if outdir is not None:
        Path(outdir).mkdir(parents=True, exist_ok=True)
    views = []
    indices = view_indices(len(split.images), n_views)
    for index in tqdm(indices, desc=f"rendering {split.name}", leave=False, disable=not progress):
        distortion = None if cams.distortion is None else cams.distortion[index]
        out = render_view(render_fn, cams.K[index], cams.c2w[index], cams.height, cams.width, distortion,
                          what=f"{split.name} view {index}")
        gt = split.images[index]
        gt = composite_on_background(gt, background) if gt.shape[-1] == 4 else gt
        pred = out["rgb"].clamp(0.0, 1.0)
        views.append(dict(file=split.files[index], psnr=psnr(pred, gt), ssim=ssim(pred, gt),
                          lpips=None if lpips_fn is None else lpips_fn(pred, gt),
                          constant_psnr=constant_image_psnr(gt)))
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
                   mean_lpips=mean_lpips(views),
                   constant_psnr=float(np.mean([v["constant_psnr"] for v in views])),
                   eval_s=round(time.perf_counter() - start, 3), **peak_memory(),
                   views=views, **facts)
    if hasattr(render_fn, "chunk_at_start"):  # halved after a GPU out-of-memory error (common/memory.py)
        metrics["chunk_after_out_of_memory"] = dict(before=render_fn.chunk_at_start, after=render_fn.chunk)
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
        out = render_view(render_fn, cams.K[0], c2w, cams.height, cams.width, what=f"a frame of {name}")
        rgb_frames.append((out["rgb"].clamp(0, 1).numpy() * 255).astype(np.uint8))
        depth_frames.append(colorize_depth(out["depth"], scene.near, scene.far, opacity=out["opacity"]))
    depth_frames = [(np.asarray(d) * 255).astype(np.uint8) for d in depth_frames]
    return [write_video(Path(outdir) / f"{name}_rgb.mp4", np.stack(rgb_frames), fps=fps),
            write_video(Path(outdir) / f"{name}_depth.mp4", np.stack(depth_frames), fps=fps)]


# Exit status of a run that finished but learned nothing (check_model_learned); 2 is a refused input, 130/143 a
# signal.
DEAD_MODEL_EXIT_STATUS = 3


def check_model_learned(metrics: dict, keep_going: bool = False, skipped: str = "videos and meshes",
                        kept: str | None = "the test renders and metrics.json are written") -> None:
    """Stop a run whose held-out PSNR is no better than a constant image's, in one warning line.

    metrics: from evaluate_split or common.multiscale.evaluate_levels ('mean_psnr', 'constant_psnr').
    keep_going: warn and return (--no-dead_model_check); otherwise exit with status DEAD_MODEL_EXIT_STATUS.
    skipped, kept: what the line says the stop leaves out, and what is already written (None: nothing).
    The failure it prevents: a run that diverged without a NaN (02 with --lr 1e6: the weights blow up, the
    densities saturate and every view renders the white background, 9.1 dB on the built-in scene), a run
    that learned only the background (03's 'white background only' failure), a model scored on views with a
    non-finite camera (PSNR nan): each used to end with exit status 0, pictures and a mesh, as if it had
    worked. The bar is the mean over the views of the best constant image's PSNR (each view's mean colour,
    common.metrics.constant_image_psnr); an all-background image scores below it.
    """
    score, bar = float(metrics["mean_psnr"]), float(metrics["constant_psnr"])
    if score > bar:  # False for NaN
        return
    what = (f"the held-out PSNR is {score} (a test view rendered non-finite values)" if math.isnan(score)
            else f"the held-out PSNR {score:.2f} dB is no better than a constant image's ({bar:.2f} dB, each view's "
                 f"mean colour)")
    cause = ("the model learned nothing (likely causes: too high a learning rate, try a smaller --lr; too few "
             "steps; bad data, poses or images)")
    if keep_going:
        warn(f"{what}: {cause}; kept going (--no-dead_model_check)")
        return
    warn(f"{what}: {cause}. Stopped with exit status {DEAD_MODEL_EXIT_STATUS}, before the {skipped}"
         + (f"; {kept}" if kept else "") + "; --no-dead_model_check keeps going")
    raise SystemExit(DEAD_MODEL_EXIT_STATUS)


def final_evaluation(render_fn, scene: Scene, outdir: Path, n_test_views: int, video_frames: int,
                     background: float, camera_path: str | None = None, dead_model_check: bool = True,
                     lpips_weights: str | None = None, **facts) -> dict:
    """What every script does after training: score the test views (pictures and metrics.json in <outdir>/test;
    LPIPS with the weights `common.lpips.load_lpips(lpips_weights)` finds, null without), print the result,
    stop if the model learned nothing (`check_model_learned`, unless dead_model_check is False: then a warning only), and fly the default video path (`default_video_path`). `facts` (iters,
    backend, ...) are added to the metrics."""
    metrics = evaluate_split(render_fn, scene.splits["test"], Path(outdir) / "test", n_views=n_test_views or None,
                             background=background, near=scene.near, far=scene.far,
                             lpips_fn=load_lpips(lpips_weights), scene=scene.name, **facts)
    lpips_text = "" if metrics["mean_lpips"] is None else f", LPIPS {metrics['mean_lpips']:.4f}"
    print(f"test: PSNR {metrics['mean_psnr']:.2f} dB, SSIM {metrics['mean_ssim']:.4f}{lpips_text} "
          f"over {len(metrics['views'])} views -> {Path(outdir) / 'test'}")
    check_model_learned(metrics, keep_going=not dead_model_check)
    videos = []
    if video_frames > 0:
        videos += render_path_videos(render_fn, scene, Path(outdir), video_frames)
    if camera_path:
        videos += render_path_videos(render_fn, scene, Path(outdir), 0, poses=load_camera_path(camera_path),
                                     name=f"video_{Path(camera_path).stem}")
    if videos:
        print("videos: " + ", ".join(str(v) for v in videos))
    return metrics
