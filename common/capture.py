"""Your own capture: a folder of photos or a video -> a posed scene every script reads.

    python -m common.capture INPUT --out FOLDER [--frames 120] [--max_size 800] [--radius 1.7] ...

INPUT is a folder of photographs (.jpg, .jpeg, .png, sorted by name) or a video file (.mp4, .mov, .avi, .mkv,
.webm, .m4v). Stages, each with its progress bar:
  1. frames: a video is cut into --frames equal stretches and the sharpest frame of each stretch is kept (the
     variance of the image's Laplacian measures sharpness: motion blur removes the fine detail it responds to,
     so this drops the blurry frames). Photos are all kept.
  2. images: every image is reduced by the smallest integer factor that brings its long side to --max_size or
     less (area averaging, `common.data.scene.downscale_area`) and written to FOLDER/images/ as PNG. Structure from
     motion runs on these copies, so the intrinsics it finds are those of the images the scripts train on. (A
     video's frames are reduced as they are kept, under the bar "keep".)
  3. features: SIFT keypoints of every image (COLMAP via pycolmap, on the CPU), one camera shared by all images
     (one phone, one zoom) with the --camera_model lens (OPENCV: k1, k2, p1, p2, the model common/rays.py undoes).
  4. matching: every pair of images (exhaustive) for photos up to --exhaustive_max of them; for a video, or more
     photos, each image with its --overlap successors (sequential: neighbouring frames overlap).
  5. mapping: COLMAP's incremental mapper (Schoenberger and Frahm, CVPR 2016) registers one image after another
     and refines everything by bundle adjustment; the largest model is kept.
  6. writing: the poses are normalised (`common.data.scene.normalise_poses`: the cameras' focus at the origin,
     their mean up vector along +z, the cameras at mean distance --radius from it) and written as
     FOLDER/transforms.json (the Instant-NGP layout of `common.data.ngp_transforms`, with the camera model and its
     distortion; scale 1 and offset 0.5 so that its positions are read as written), beside FOLDER/images/,
     FOLDER/colmap/ (the database and the sparse model, in COLMAP's own frame) and FOLDER/reconstruction.png
     (the cameras as frustums and the sparse points).
Everything is written into a temporary folder beside FOLDER and renamed to FOLDER at the end: a failed run, or
one stopped by Ctrl-C, leaves no half-written scene (a killed process leaves its hidden .FOLDER.partial-<pid>). Errors (no images, an unreadable image, mixed sizes, a video
without frames, too few images registered) are one line naming the file and the fix, exit status 2.

Then: `python 03_mipnerf360.py --scene FOLDER` (any script reads it; README, "Your own capture").
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from common.cli import parse_config, run_main
from common.data.colmap import CAMERA_RADIUS, c2w_from_colmap, intrinsics, read_model
from common.data.scene import downscale_area, normalise_poses, read_image
from common.errors import UserError, warn

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
MIN_REGISTERED = 3  # fewer posed images make no scene (one is held out for testing)
FIX_REGISTRATION = ("what usually fixes it: more overlap between neighbouring shots (every part of the scene in "
                    "3 or more images, steps of 10-20 degrees around an object), less motion blur (steady hands, "
                    "more light), and texture (plain walls, glass and shiny surfaces give no features)")


@dataclass
class Config:
    """Photos or a video -> a posed scene (transforms.json + images/) with COLMAP's structure from motion."""

    input: str = field(default=None, metadata={"help": "a folder of photos or a video file (also the first positional argument)"})
    out: str = field(default=None, metadata={"help": "the scene folder to write (must not exist yet, or --overwrite)"})
    frames: int = field(default=120, metadata={"help": "video only: frames to keep (the sharpest of each of this many equal stretches)", "min": 2, "max": 10_000})
    max_size: int = field(default=800, metadata={"help": "the long side of the images written and posed is at most this (pixels; reduced by an integer factor)", "min": 32, "max": 20_000})
    radius: float = field(default=CAMERA_RADIUS, metadata={"help": "mean distance of the cameras from their focus after normalisation (scene units)", "above": 0, "max": 1000})
    camera_model: Literal["OPENCV", "SIMPLE_RADIAL", "RADIAL", "PINHOLE", "SIMPLE_PINHOLE"] = field(default="OPENCV", metadata={"help": "COLMAP's lens model, one camera shared by all images (OPENCV: k1, k2, p1, p2)"})
    matcher: Literal["auto", "exhaustive", "sequential"] = field(default="auto", metadata={"help": "image pairs to match: auto = exhaustive for up to --exhaustive_max photos, else sequential (always sequential for a video)"})
    exhaustive_max: int = field(default=100, metadata={"help": "auto matcher: exhaustive up to this many photos", "min": 2, "max": 100_000})
    overlap: int = field(default=10, metadata={"help": "sequential matcher: each image is matched with this many successors", "min": 1, "max": 1000})
    max_features: int = field(default=8192, metadata={"help": "SIFT keypoints per image at most", "min": 64, "max": 1_000_000})
    min_registered_fraction: float = field(default=0.5, metadata={"help": "refuse (exit 2) when the mapper poses fewer than this fraction of the images", "min": 0, "max": 1})
    threads: int = field(default=-1, metadata={"help": "CPU threads for COLMAP (-1: all)", "min": -1, "max": 1024})
    seed: int = field(default=0, metadata={"help": "COLMAP's random seed (RANSAC, the mapper's choices)", "min": 0, "max": 2**31 - 1})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out folder (only once the new scene is complete)"})
    picture: bool = field(default=True, metadata={"help": "write reconstruction.png (cameras and sparse points)"})
    verbose: bool = field(default=False, metadata={"help": "show COLMAP's own log"})

    def check(self) -> None:
        if self.input is None or self.out is None:
            raise UserError("usage: python -m common.capture INPUT --out FOLDER (INPUT: a folder of photos or a video)")


# --- stage 1: frames -------------------------------------------------------------------------------------------

def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (the 5-point stencil): large where fine detail is in focus,
    small for a blurred frame. image: (H, W, C) float in [0, 1]."""
    grey = image[..., :3].mean(-1)
    laplacian = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1])
    return float(laplacian.var())


def reduction_factor(width: int, height: int, max_size: int) -> int:
    """The smallest integer factor f with max(width, height) / f <= max_size."""
    return max(1, math.ceil(max(width, height) / max_size))


def _progress(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:>9}", unit="img", file=sys.stderr, dynamic_ncols=True)


def _video_reader(path: Path):
    import imageio.v2 as imageio

    try:
        return imageio.get_reader(path, format="ffmpeg")
    except Exception as err:  # imageio/ffmpeg raise OSError, RuntimeError, ... for a file that is not a video
        raise UserError(f"cannot open video {path} ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                        f"the file is damaged or not a video ffmpeg reads") from err


def _video_frames(reader, path: Path):
    try:
        for frame in reader:
            yield frame
    except Exception as err:  # a truncated stream: stop at the last frame decoded
        warn(f"{path}: the video stops decoding after some frames ({type(err).__name__}); using the frames before")


def video_frames(path: Path, count: int, max_size: int) -> list[tuple[str, np.ndarray]]:
    """The sharpest frame of each of `count` equal stretches of the video, reduced for --max_size: a list of
    (name, (H, W, 3) float32). Two passes over the file: sharpness of every frame, then the chosen frames."""
    reader = _video_reader(path)
    scores = []
    bar = _progress(None, "frames")
    for frame in _video_frames(reader, path):
        small = frame[::4, ::4].astype(np.float32) / 255.0  # sharpness on a quarter image: enough to rank frames
        scores.append(sharpness(small))
        bar.update()
    bar.close()
    reader.close()
    if not scores:
        raise UserError(f"{path} holds no video frame ffmpeg can decode: check the file plays, or extract its frames "
                        f"into a folder and pass the folder")
    stretches = np.array_split(np.arange(len(scores)), min(count, len(scores)))
    chosen = {int(s[np.argmax([scores[i] for i in s])]) for s in stretches if len(s)}
    frames = []
    reader = _video_reader(path)
    bar = _progress(len(chosen), "keep")
    for index, frame in enumerate(_video_frames(reader, path)):
        if index in chosen:
            image = frame[..., :3].astype(np.float32) / 255.0
            factor = reduction_factor(image.shape[1], image.shape[0], max_size)
            frames.append((f"frame_{index:06d}", downscale_area(image, factor)))
            bar.update()
    bar.close()
    reader.close()
    return frames


def photo_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{folder} holds no photographs ({', '.join(PHOTO_SUFFIXES)}): pass a folder of photos or a "
                        f"video file")
    return files


def photo_frames(files: list[Path], max_size: int) -> list[tuple[str, np.ndarray]]:
    """Every photo, read and reduced for --max_size; one size for all, else a one-line UserError naming two."""
    frames, first = [], None
    with _progress(len(files), "images") as bar:
        for path in files:
            image = read_image(path)[..., :3]  # UserError naming the file when it cannot be decoded
            size = (image.shape[1], image.shape[0])
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise UserError(f"images of mixed sizes: {path} is {size[0]}x{size[1]} but {first[0]} is "
                                f"{first[1][0]}x{first[1][1]} (portrait and landscape mixed?): one camera, one size; "
                                f"resize or rotate them to one size, or leave the odd ones out")
            frames.append((path.name, downscale_area(image, reduction_factor(*size, max_size))))
            bar.update()
    return frames


# --- stages 3-5: structure from motion ------------------------------------------------------------------------

def run_sfm(image_dir: Path, work: Path, names: list[str], cfg: Config, sequential: bool):
    """SIFT features, matching and incremental mapping with pycolmap; returns the largest pycolmap.Reconstruction
    (or None when nothing was registered), its sparse model written to work/sparse/0."""
    try:
        import pycolmap
    except ImportError as err:
        raise UserError("pycolmap is not installed: pip install -r requirements-capture.txt") from err
    if not cfg.verbose:
        pycolmap.logging.minloglevel = 2  # errors only: COLMAP logs every step otherwise
    pycolmap.set_random_seed(cfg.seed)
    database = work / "database.db"
    device = pycolmap.Device.cpu
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = cfg.threads
    extraction.max_image_size = cfg.max_size
    extraction.sift.max_num_features = cfg.max_features
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    bar = _progress(len(names), "features")
    for i, name in enumerate(names):  # one call per image for the progress bar; all share camera 1
        if i:
            reader.existing_camera_id = 1
        pycolmap.extract_features(database, image_dir, image_names=[name], camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=extraction, device=device)
        bar.update()
    bar.close()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.threads
    pairs = len(names) * (len(names) - 1) // 2 if not sequential else sum(
        min(cfg.overlap, len(names) - 1 - i) for i in range(len(names)))
    bar = _progress(pairs, "matching")
    bar.unit = "pair"
    if sequential:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.overlap
        pairing.quadratic_overlap = False
        pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing, device=device)
    else:
        pycolmap.match_exhaustive(database, matching_options=matching, device=device)
    bar.update(pairs)  # pycolmap reports no progress inside one matching call: the bar fills when it returns
    bar.close()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.threads
    options.random_seed = cfg.seed
    options.min_model_size = MIN_REGISTERED
    bar = _progress(len(names), "mapping")
    sparse = work / "sparse"
    sparse.mkdir(parents=True, exist_ok=True)
    models = pycolmap.incremental_mapping(database, image_dir, sparse, options=options,
                                          initial_image_pair_callback=lambda: bar.update(min(2, bar.total - bar.n)),
                                          next_image_callback=lambda: bar.update() if bar.n < bar.total else None)
    bar.close()
    if not models:
        return None
    best = max(models.values(), key=lambda r: r.num_reg_images())
    chosen = sparse / "chosen"
    chosen.mkdir()
    best.write_binary(str(chosen))
    for folder in list(sparse.iterdir()):  # keep only the chosen model, as sparse/0
        if folder != chosen:
            shutil.rmtree(folder)
    chosen.rename(sparse / "0")
    return best


# --- stage 6: the scene ----------------------------------------------------------------------------------------

def aabb_scale(c2w: torch.Tensor, points: np.ndarray) -> int:
    """The smallest power of two (Instant-NGP's aabb_scale) whose centred cube holds every camera and the 1st
    to 99th percentile of the sparse points."""
    extent = float(c2w[:, :3, 3].abs().max())
    if len(points) >= 10:
        extent = max(extent, float(np.abs(np.percentile(points, [1, 99], axis=0)).max()))
    return 2 ** max(0, math.ceil(math.log2(2 * extent)))


def write_scene(tmp: Path, model_dir: Path, radius: float, originals: dict) -> dict:
    """transforms.json from the sparse model (module docstring); returns a summary for the picture and the log."""
    model = read_model(model_dir)
    images = sorted(model.images.values(), key=lambda im: im.name)
    camera = model.cameras[images[0].camera_id]
    K, distortion = intrinsics(camera, f"{model_dir / 'cameras.bin'}: camera {images[0].camera_id}")
    c2w = torch.tensor(np.stack([c2w_from_colmap(im) for im in images]))
    xyz = model.points_xyz()
    normalised, similarity = normalise_poses(c2w, radius, torch.from_numpy(xyz))
    points = xyz @ similarity[:3, :3].numpy().T + similarity[:3, 3].numpy()
    colours = np.array([p[1] for p in model.points.values()], dtype=np.uint8).reshape(-1, 3)
    meta = {
        "camera_model": camera.model if camera.model == "OPENCV" else f"OPENCV (from COLMAP's {camera.model})",
        "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": camera.width, "h": camera.height,
        "k1": distortion[0], "k2": distortion[1], "p1": distortion[2], "p2": distortion[3],
        # positions are read as written: x * scale + offset - 0.5 = x (common/data/ngp_transforms.py)
        "scale": 1.0, "offset": [0.5, 0.5, 0.5], "aabb_scale": aabb_scale(normalised, points),
        "capture": {"radius": radius, "registered": len(images), "images": len(originals),
                    "similarity_from_colmap": similarity.tolist(),
                    "made_by": "python -m common.capture (COLMAP incremental mapping via pycolmap)"},
        "frames": [{"file_path": f"images/{im.name}", "original": originals.get(im.name, im.name),
                    "transform_matrix": pose.double().tolist()} for im, pose in zip(images, normalised)],
    }
    meta = json.loads(json.dumps(meta, default=float))  # numpy scalars -> floats
    (tmp / "transforms.json").write_text(json.dumps(meta, indent=1))
    return dict(c2w=normalised, K=torch.tensor(K, dtype=torch.float32), width=camera.width, height=camera.height,
                points=points, colours=colours, registered={im.name for im in images})


def draw_reconstruction(path: Path, c2w: torch.Tensor, K: torch.Tensor, width: int, height: int,
                        points: np.ndarray, colours: np.ndarray, title: str, max_points: int = 5000) -> None:
    """A picture of the cameras (frustums: each apex at a camera centre, its base the image rectangle at a
    depth of 0.15 radius) and the sparse points in their own colours, seen from above and from the side."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) stays as it is

    c2w = c2w.double().numpy()
    radius = float(np.linalg.norm(c2w[:, :3, 3], axis=-1).mean()) or 1.0
    depth = 0.15 * radius
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    # image corners in the OpenGL camera frame (y up, looking along -z) at the given depth
    corners = np.array([[(u - cx) / fx * depth, -(v - cy) / fy * depth, -depth]
                        for u, v in ((0, 0), (width, 0), (width, height), (0, height))])
    rng = np.random.default_rng(0)
    keep = rng.choice(len(points), min(len(points), max_points), replace=False) if len(points) else []
    inside = np.abs(points[keep]).max(-1) < 3 * radius if len(points) else []
    shown, shown_colours = points[keep][inside], colours[keep][inside] / 255.0
    figure = Figure(figsize=(11, 5.2))
    for index, (elevation, azimuth, label) in enumerate(((90, -90, "from above (+z up)"), (15, -60, "from the side"))):
        axes = figure.add_subplot(1, 2, index + 1, projection="3d")
        if len(shown):
            axes.scatter(*shown.T, c=shown_colours, s=1.5, depthshade=False)
        for pose in c2w:
            world = corners @ pose[:3, :3].T + pose[:3, 3]
            apex = pose[:3, 3]
            for a, b in ((0, 1), (1, 2), (2, 3), (3, 0)):
                axes.plot(*np.stack([world[a], world[b]]).T, color="crimson", linewidth=0.7)
            for corner in world:
                axes.plot(*np.stack([apex, corner]).T, color="crimson", linewidth=0.5)
        limit = 1.2 * radius
        axes.set(xlim=(-limit, limit), ylim=(-limit, limit), zlim=(-limit, limit), xlabel="x", ylabel="y",
                 zlabel="z", title=label)
        axes.set_box_aspect((1, 1, 1))
        axes.view_init(elev=elevation, azim=azimuth)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# --- comparing poses -------------------------------------------------------------------------------------------

def align_similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R, t) minimising sum_i |target_i - (s R source_i + t)|^2 (Umeyama, PAMI 1991): with the
    centred point sets X, Y and the SVD U D V^T of their cross-covariance Y^T X / n, R = U S V^T (S flips the
    last axis if needed so that det R = +1), s = trace(D S) / (the variance of X), t = mean(Y) - s R mean(X).
    source, target: (N, 3) with N >= 3 points not on a line."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    X, Y = source - mean_s, target - mean_t
    U, D, Vt = np.linalg.svd(Y.T @ X / len(X))
    S = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(U) * np.linalg.det(Vt))) or 1.0])
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / (X ** 2).sum(-1).mean())
    return s, R, mean_t - s * R @ mean_s


def pose_errors(found: torch.Tensor, reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per camera, the rotation error (degrees) and the position error (reference units) of `found` (N, 4, 4)
    camera-to-world after the similarity that best maps its camera centres onto those of `reference` (N, 4, 4)."""
    found, reference = found.double().numpy(), reference.double().numpy()
    s, R, t = align_similarity(found[:, :3, 3], reference[:, :3, 3])
    positions = s * found[:, :3, 3] @ R.T + t
    rotations = R @ found[:, :3, :3]  # (N, 3, 3)
    relative = np.einsum("nji,njk->nik", reference[:, :3, :3], rotations)  # R_ref^T R_found
    cosine = np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    return np.degrees(np.arccos(cosine)), np.linalg.norm(positions - reference[:, :3, 3], axis=-1)


# --- the command -----------------------------------------------------------------------------------------------

def capture(cfg: Config) -> Path:
    """Run every stage (module docstring); returns the scene folder."""
    source, out = Path(cfg.input), Path(cfg.out)
    if not source.exists():
        raise UserError(f"{source} not found: pass a folder of photos or a video file")
    if out.exists() and not cfg.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists: choose another --out, or pass --overwrite to replace it once the "
                        f"new scene is complete")
    started = time.time()
    is_video = source.is_file()
    if is_video and source.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"{source} is neither a folder of photos nor a video ({', '.join(VIDEO_SUFFIXES)})")
    frames = (video_frames(source, cfg.frames, cfg.max_size) if is_video
              else photo_frames(photo_files(source), cfg.max_size))
    if len(frames) < MIN_REGISTERED:
        raise UserError(f"{source} gives {len(frames)} image(s): structure from motion needs at least "
                        f"{MIN_REGISTERED}, and a scene dozens of overlapping ones")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "colmap").mkdir()
        import imageio.v3 as iio

        names, originals = [], {}
        for index, (label, image) in enumerate(frames):  # label: the photo's file name, or the video frame's
            name = f"{index:04d}_{Path(label).stem}.png"
            iio.imwrite(tmp / "images" / name, (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
            names.append(name)
            originals[name] = label
        del frames
        sequential = cfg.matcher == "sequential" or (cfg.matcher == "auto" and (is_video or len(names) > cfg.exhaustive_max))
        model = run_sfm(tmp / "images", tmp / "colmap", names, cfg, sequential)
        registered = 0 if model is None else model.num_reg_images()
        needed = max(MIN_REGISTERED, math.ceil(cfg.min_registered_fraction * len(names)))
        if registered < needed:
            raise UserError(f"COLMAP posed only {registered} of the {len(names)} images of {source} (at least "
                            f"{needed} needed: --min_registered_fraction {cfg.min_registered_fraction:g}); "
                            f"{FIX_REGISTRATION}")
        summary = write_scene(tmp, tmp / "colmap" / "sparse" / "0", cfg.radius, originals)
        dropped = [name for name in names if name not in summary["registered"]]
        if dropped:
            for name in dropped:  # a scene holds only posed images
                (tmp / "images" / name).unlink()
            warn(f"COLMAP posed {registered} of {len(names)} images; left out: {', '.join(originals[n] for n in dropped[:8])}"
                 f"{' ...' if len(dropped) > 8 else ''}")
        if cfg.picture:
            draw_reconstruction(tmp / "reconstruction.png", summary["c2w"], summary["K"], summary["width"],
                                summary["height"], summary["points"], summary["colours"],
                                f"{source.parent.name + '/' if source.name == 'images' else ''}{source.name}: "
                                f"{registered} of {len(names)} images posed, "
                                f"{len(summary['points'])} sparse points (normalised: cameras at mean radius "
                                f"{cfg.radius:g} around the origin)")
        if out.exists():  # --overwrite (or an empty folder): replaced only now that the new scene is complete
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"posed {registered} of {len(names)} images in {time.time() - started:.0f} s; wrote {out}/transforms.json, "
          f"{out}/images/ ({summary['width']}x{summary['height']}){', reconstruction.png' if cfg.picture else ''}. "
          f"Train: python 03_mipnerf360.py --scene {out}", file=sys.stderr)
    return out


def main(argv=None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--input", argv[0], *argv[1:]]
    cfg = parse_config(Config, argv)
    return capture(cfg)


if __name__ == "__main__":
    run_main(main)
