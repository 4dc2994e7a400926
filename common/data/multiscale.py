"""Multiscale Blender scenes (mip-NeRF, Barron et al. 2021, Sec. 5): every image at 4 resolutions.

mip-NeRF's multiscale benchmark shows each training and test image at full, 1/2, 1/4 and 1/8 resolution, so a
model must render well at every pixel footprint. `build_multiscale` makes it from any scene in the Blender layout
(the built-in scene included) and writes it in the layout of the public converter `convert_blender_data.py`,
so that data converted elsewhere loads with `load_multiscale` too:

    <root>/metadata.json                 {"train": {...}, "val": {...}, "test": {...}}
    <root>/images_<split>/000_d0.png     image 0 at level 0 (full), 000_d1.png at 1/2, ... 000_d3.png at 1/8

Each split of metadata.json holds parallel lists with one entry per (image, level), image-major:
file_path (relative), cam2world (4x4, OpenGL c2w), width, height, focal (f0 / 2^j), label (the level j),
near, far (2 and 6), lossmult (4^j, the pixel-area ratio: a pixel of level j covers 4^j full-resolution
pixels, so it weighs as much in the loss), pix2cam (the inverse intrinsics with y and z flipped into the OpenGL
camera frame: [[1/fx, 0, -cx/fx], [0, -1/fy, cy/fy], [0, 0, -1]]).

Where we differ from the public converter, on purpose:
- by default, levels are area averages of *premultiplied* RGBA (`common.data.scene.downscale_area`), so that
  compositing on white after downscaling equals downscaling the composited image; the converter averages
  straight RGBA (protocol="straight", --gt_protocol straight), which darkens silhouette pixels slightly;
- 8-bit values are rounded (the converter truncates img * 255);
- when a size is not divisible by 2^j the remainder is cropped and pix2cam keeps the true principal point
  (cx0 / 2^j); the converter writes W / 2 (identical whenever the size divides, as for 800 x 800 images).
Glossary: R rays, N images, L levels.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.data.blender import BLENDER_AABB, frame_image_path, read_split_transforms
from common.data.scene import SPLITS, Cameras, Scene, Split, downscale_area, read_image
from common.errors import UserError
from common.metrics import constant_image_psnr, psnr, ssim
from common.training import write_json
from common.video import colorize_depth, save_image

N_LEVELS = 4
METADATA_FIELDS = ("file_path", "cam2world", "width", "height", "focal", "label", "near", "far", "lossmult")


@dataclass
class Level:
    """The images of one split at one resolution: label j (0 = full, 3 = 1/8), the loss multiplier of its
    pixels, and the images with their cameras as a `common.data.scene.Split` (one size per level)."""

    label: int
    lossmult: float
    split: Split


@dataclass
class MultiscaleScene(Scene):
    """A `Scene` whose splits come at several resolutions: levels[split] is a list of `Level`s, label order.
    splits[split] is the full-resolution level (label 0), so code written for one scale still runs."""

    levels: dict = None


def levels_of(scene: Scene, split: str) -> list[Level]:
    """The levels of a split: those of a MultiscaleScene, or the split itself as one level (label 0, lossmult 1)."""
    if isinstance(scene, MultiscaleScene):
        return scene.levels[split]
    return [Level(label=0, lossmult=1.0, split=scene.splits[split])]


# ------------------------------------------------------------------------------------------------------------
# Building the multiscale version of a Blender scene
# ------------------------------------------------------------------------------------------------------------
def _pix2cam(K: np.ndarray) -> list:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    return [[1.0 / fx, 0.0, -cx / fx], [0.0, -1.0 / fy, cy / fy], [0.0, 0.0, -1.0]]


def build_multiscale(source, root, n_levels: int = N_LEVELS, downscale: int = 1, splits=SPLITS,
                     near: float = 2.0, far: float = 6.0, protocol: str = "premultiplied", progress: bool = True) -> Path:
    """Write the multiscale version of the Blender-layout scene `source` into `root` (layout: module docstring).

    downscale: reduce the source images by this factor first (area averaging), so that level 0 is the source at
    1 / downscale (a CPU-sized benchmark: lego 400 px -> 100, 50, 25, 12 px).
    protocol: how RGBA is averaged, "premultiplied" (ours) or "straight" (the public converter's), see
    `common.data.scene.downscale_area`.

    Written once: if root/metadata.json exists and records the same source and number of levels (in
    root/multiscale_source.json), nothing is done. The stamp is written last, so an interrupted build is redone.
    Returns root.
    """
    source, root = Path(source), Path(root)
    stamp = {"source": str(source.resolve()), "n_levels": n_levels, "downscale": downscale, "protocol": protocol,
             "splits": list(splits)}
    stamp_path = root / "multiscale_source.json"
    if (root / "metadata.json").is_file() and stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return root
        except json.JSONDecodeError:
            pass
    metadata = {}
    for split in splits:
        camera_angle_x, frames = read_split_transforms(source / f"transforms_{split}.json")
        entries = {name: [] for name in (*METADATA_FIELDS, "pix2cam")}
        for i, frame in enumerate(tqdm(frames, desc=f"multiscale {split}", leave=False, disable=not progress)):
            path = frame_image_path(source, frame["file_path"])
            if not path.is_file():
                raise UserError(f"{source / f'transforms_{split}.json'} names {path}, which is missing: re-extract the scene")
            full = downscale_area(read_image(path), downscale, protocol)
            H0, W0 = full.shape[:2]
            focal0 = 0.5 * W0 / math.tan(0.5 * camera_angle_x)
            for j in range(n_levels):
                image = downscale_area(full, 2 ** j, protocol)  # (H0 // 2^j, W0 // 2^j, C)
                name = f"images_{split}/{i:03d}_d{j}.png"
                save_image(root / name, image)
                K = np.array([[focal0, 0, 0.5 * W0], [0, focal0, 0.5 * H0], [0, 0, 2 ** j]]) / 2 ** j
                entries["file_path"].append(name)
                entries["cam2world"].append(frame["transform_matrix"])
                entries["width"].append(int(image.shape[1]))
                entries["height"].append(int(image.shape[0]))
                entries["focal"].append(focal0 / 2 ** j)
                entries["label"].append(j)
                entries["near"].append(near)
                entries["far"].append(far)
                entries["lossmult"].append(4.0 ** j)
                entries["pix2cam"].append(_pix2cam(K))
        metadata[split] = entries
    write_json(root / "metadata.json", metadata)
    write_json(stamp_path, stamp)
    return root


# ------------------------------------------------------------------------------------------------------------
# Loading (ours or the public converter's)
# ------------------------------------------------------------------------------------------------------------
def _intrinsics(entry: dict) -> torch.Tensor:
    """K (3, 3) from pix2cam when present, else from focal with the principal point at the image centre."""
    if entry.get("pix2cam") is not None:
        p = np.asarray(entry["pix2cam"], dtype=np.float64)
        fx, fy = 1.0 / p[0, 0], -1.0 / p[1, 1]
        cx, cy = -p[0, 2] * fx, p[1, 2] * fy
    else:
        fx = fy = float(entry["focal"])
        cx, cy = 0.5 * entry["width"], 0.5 * entry["height"]
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def load_multiscale(root, splits=SPLITS) -> MultiscaleScene:
    """Read a multiscale scene (metadata.json + images_<split>/) into a MultiscaleScene.

    A split's entries are grouped by label; within a label every image must have one size. near/far come from
    the metadata (they must agree over the scene). Missing fields, a missing split, unreadable images: one-line
    UserError naming the file and the fix.
    """
    root = Path(root)
    path = root / "metadata.json"
    if not path.is_file():
        raise UserError(f"{path} not found: build the multiscale scene with --multiscale, or convert it with "
                        f"convert_blender_data.py")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): rebuild it") from err
    levels, nears, fars = {}, set(), set()
    for split in splits:
        meta = metadata.get(split) if isinstance(metadata, dict) else None
        if not isinstance(meta, dict):
            raise UserError(f"{path} has no '{split}' split: rebuild it (it needs train, val and test)")
        missing = [name for name in METADATA_FIELDS if not isinstance(meta.get(name), list)]
        if missing:
            raise UserError(f"{path} is missing field(s) {', '.join(missing)} in '{split}': each split needs the "
                            f"lists {', '.join(METADATA_FIELDS)}; rebuild it")
        n = len(meta["file_path"])
        if n == 0 or any(len(meta[name]) != n for name in METADATA_FIELDS):
            raise UserError(f"{path}: the lists of '{split}' are empty or of different lengths; rebuild it")
        by_label: dict[int, list[int]] = {}
        for k in range(n):
            by_label.setdefault(int(meta["label"][k]), []).append(k)
        levels[split] = []
        for label in sorted(by_label):
            ids = by_label[label]
            entries = [{name: meta[name][k] for name in (*METADATA_FIELDS, "pix2cam") if name in meta} for k in ids]
            sizes = {(e["height"], e["width"]) for e in entries}
            if len(sizes) > 1:
                raise UserError(f"{path}: images of label {label} in '{split}' have several sizes {sorted(sizes)}")
            images = []
            for e in entries:
                image_path = root / e["file_path"]
                if not image_path.is_file():
                    raise UserError(f"{path} names {image_path}, which is missing: rebuild the multiscale scene")
                image = read_image(image_path)
                if image.shape[:2] != (e["height"], e["width"]):
                    raise UserError(f"{image_path} is {image.shape[1]}x{image.shape[0]}, but {path} says "
                                    f"{e['width']}x{e['height']}: rebuild the multiscale scene")
                images.append(image)
            nears.update(float(e["near"]) for e in entries)
            fars.update(float(e["far"]) for e in entries)
            H, W = sizes.pop()
            cameras = Cameras(c2w=torch.tensor([e["cam2world"] for e in entries], dtype=torch.float32)[:, :4, :4],
                              K=torch.stack([_intrinsics(e) for e in entries]), height=H, width=W)
            lossmults = {float(e["lossmult"]) for e in entries}
            if len(lossmults) > 1:
                raise UserError(f"{path}: label {label} of '{split}' has several lossmult values {sorted(lossmults)}")
            levels[split].append(Level(label, lossmults.pop(),
                                       Split(split, torch.from_numpy(np.stack(images)), cameras,
                                             [e["file_path"] for e in entries])))
    if len(nears) != 1 or len(fars) != 1:
        raise UserError(f"{path}: near/far differ between images ({sorted(nears)}, {sorted(fars)}); one pair is expected")
    return MultiscaleScene(name=root.name, root=root, splits={s: levels[s][0].split for s in splits},
                           near=nears.pop(), far=fars.pop(), aabb=torch.tensor(BLENDER_AABB, dtype=torch.float32),
                           white_background=True, camera_files={s: path for s in splits}, levels=levels)


# ------------------------------------------------------------------------------------------------------------
# Training batches over all levels, and evaluation per level
# ------------------------------------------------------------------------------------------------------------
def sample_pixels(levels: list[Level], n_rays: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random batch of pixels drawn uniformly from all pixels of all levels (mip-NeRF's 'all_images' batching).

    Returns per ray: K (R, 3, 3), c2w (R, 4, 4), u, v (R,) pixel-centre coordinates, lossmult (R,), target (R, C).
    Draws come from `generator` on its device, so a CPU generator gives the same batch on every device.
    """
    draw = dict(generator=generator, device=generator.device)
    pixels = torch.tensor([float(lv.split.images[0, ..., 0].numel() * len(lv.split.images)) for lv in levels])
    level_ids = torch.multinomial(pixels / pixels.sum(), n_rays, replacement=True, generator=generator) \
        if len(levels) > 1 else torch.zeros(n_rays, dtype=torch.long)
    uniform = torch.rand(n_rays, 3, dtype=torch.float64, **draw).cpu()  # (R, 3): image, row, column
    out = {key: [] for key in ("K", "c2w", "u", "v", "lossmult", "target")}
    order = []
    for index, level in enumerate(levels):
        rows = (level_ids == index).nonzero().squeeze(-1)
        if rows.numel() == 0:
            continue
        split = level.split
        n_images, H, W = split.images.shape[:3]
        image_ids = (uniform[rows, 0] * n_images).long().clamp(max=n_images - 1)
        row_ids = (uniform[rows, 1] * H).long().clamp(max=H - 1)
        col_ids = (uniform[rows, 2] * W).long().clamp(max=W - 1)
        out["K"].append(split.cameras.K[image_ids])
        out["c2w"].append(split.cameras.c2w[image_ids])
        out["u"].append(col_ids.float() + 0.5)
        out["v"].append(row_ids.float() + 0.5)
        out["lossmult"].append(torch.full((rows.numel(),), level.lossmult))
        out["target"].append(split.images[image_ids, row_ids, col_ids])
        order.append(rows)
    inverse = torch.argsort(torch.cat(order))  # back to the order of the draws
    return {key: torch.cat(values)[inverse] for key, values in out.items()}


def evaluate_levels(render_view_fn, levels: list[Level], outdir: Path | None, n_views: int | None = None,
                    background: float = 1.0, near: float | None = None, far: float | None = None,
                    progress: bool = True, lpips_fn=None, **facts) -> dict:
    """Render and score the views of every level: PSNR, SSIM and LPIPS per view, per level and their mean.

    render_view_fn(K (3, 3), c2w (4, 4), H, W) -> {'rgb': (H, W, 3), 'depth': (H, W), ...} on the CPU.
    n_views: views per level (spread evenly; None = all). With `outdir`: rgb/gt/depth PNGs per view
    (`rgb_<view>_d<label>.png`) and metrics.json. Returns {'mean_psnr', 'mean_ssim' (the mean over levels of
    each level's mean, as mip-NeRF's tables average the four scales), 'constant_psnr' (the same mean of what
    each view's mean colour scores: the bar of common.evaluation.check_model_learned), 'per_scale': [{'label',
    'width', 'height', 'psnr', 'ssim', 'lpips', 'constant_psnr', 'n_views'}], 'views': [...], 'mean_lpips',
    'eval_s', 'peak_rss_mib', 'peak_gpu_mib' (as in common.evaluation.evaluate_split), **facts}. LPIPS (given
    `lpips_fn`) is None for images under 31 px (AlexNet's smallest input); 'mean_lpips' is the mean over the levels
    that have one.
    """
    import time

    from common.evaluation import mean_lpips, peak_memory, view_indices

    start = time.perf_counter()

    if outdir is not None:
        Path(outdir).mkdir(parents=True, exist_ok=True)
    per_scale, views = [], []
    for level in levels:
        split = level.split
        cams, scored = split.cameras, []
        for index in tqdm(view_indices(len(split.images), n_views), desc=f"rendering {split.name} d{level.label}",
                          leave=False, disable=not progress):
            out = render_view_fn(cams.K[index], cams.c2w[index], cams.height, cams.width)
            gt = split.images[index]
            gt = gt[..., :3] * gt[..., 3:] + background * (1.0 - gt[..., 3:]) if gt.shape[-1] == 4 else gt
            pred = out["rgb"].clamp(0.0, 1.0)
            scored.append(dict(file=split.files[index], label=level.label, psnr=psnr(pred, gt),
                               ssim=ssim(pred, gt) if min(pred.shape[:2]) >= 11 else float("nan"),
                               lpips=None if lpips_fn is None else lpips_fn(pred, gt),
                               constant_psnr=constant_image_psnr(gt)))
            if outdir is not None:
                tag = f"{index:03d}_d{level.label}" if len(levels) > 1 else f"{index:03d}"
                save_image(Path(outdir) / f"rgb_{tag}.png", pred)
                save_image(Path(outdir) / f"gt_{tag}.png", gt)
                lo = near if near is not None else float(out["depth"].min())
                hi = far if far is not None else float(out["depth"].max())
                save_image(Path(outdir) / f"depth_{tag}.png", colorize_depth(out["depth"], lo, hi))
        per_scale.append(dict(label=level.label, width=cams.width, height=cams.height, n_views=len(scored),
                              psnr=float(np.mean([v["psnr"] for v in scored])),
                              ssim=float(np.mean([v["ssim"] for v in scored])), lpips=mean_lpips(scored),
                              constant_psnr=float(np.mean([v["constant_psnr"] for v in scored]))))
        views += scored
    metrics = dict(split=levels[0].split.name,
                   mean_psnr=float(np.mean([s["psnr"] for s in per_scale])),
                   mean_ssim=float(np.mean([s["ssim"] for s in per_scale])),
                   mean_lpips=mean_lpips(per_scale),
                   constant_psnr=float(np.mean([s["constant_psnr"] for s in per_scale])),
                   eval_s=round(time.perf_counter() - start, 3), **peak_memory(),
                   per_scale=per_scale, views=views, **facts)
    renderer = getattr(render_view_fn, "wrapped", render_view_fn)  # common.memory.views_surviving_out_of_memory
    if hasattr(renderer, "chunk_at_start"):  # halved after a GPU out-of-memory error
        metrics["chunk_after_out_of_memory"] = dict(before=renderer.chunk_at_start, after=renderer.chunk)
    if outdir is not None:
        write_json(Path(outdir) / "metrics.json", metrics)
    return metrics
