"""Scenes in the Blender (nerf_synthetic) layout; the built-in scenes are written in it too.

Layout of a scene folder (NeRF's Blender scenes, and `common.data.builtin_scene`):
    transforms_{train,val,test}.json  {"camera_angle_x": fov, "frames": [{"file_path": "./train/r_0",
                                       "transform_matrix": 4x4 camera-to-world}, ...]}
    {train,val,test}/r_<i>.png        RGBA images (straight alpha; the background has alpha 0)
The focal length in pixels is 0.5 * W / tan(0.5 * camera_angle_x) and the principal point is the image centre.
Cameras follow OpenGL/Blender: x right, y up, the camera looks along -z (see common/rays.py).

RGB images (no alpha) are taken to be on a white background, NeRF's protocol (`Scene.background`; the loader
says so in one warning line, `common.data.scene.warn_rgb_background`). Non-finite numbers in a
transforms_<split>.json (JSON readers accept NaN and Infinity) are refused naming the file and the frame.
"""
import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from common.data.scene import (SPLITS, Cameras, Scene, Split, atomic_write_bytes,
                               downscale_area, read_image, warn_rgb_background)
from common.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
BLENDER_SCENES = ("chair", "drums", "ficus", "hotdog", "lego", "materials", "mic", "ship")
# All Blender scenes (and the built-in scene) fit in [-1.5, 1.5]^3 and are seen from radius ~4, so every ray
# segment that matters lies between depth 2 and 6 (NeRF's near/far for these scenes).
BLENDER_NEAR, BLENDER_FAR = 2.0, 6.0
BLENDER_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))


def find_blender_scene(scene: str, datadir: str | None = None, split: str = "train") -> Path:
    """The folder of the Blender scene named `scene` ("lego", ...): `datadir` (the scene folder, or the
    nerf_synthetic folder holding <scene>/) or <repo>/data/nerf_synthetic/<scene>. UserError saying where to
    download it when transforms_<split>.json is not there."""
    root = Path(datadir) if datadir is not None else REPO_ROOT / "data" / "nerf_synthetic" / scene
    if not (root / "transforms_train.json").exists() and (root / scene / "transforms_train.json").exists():
        root = root / scene  # --datadir pointed at the nerf_synthetic folder that holds the scene
    if not (root / f"transforms_{split}.json").exists():
        raise UserError(_missing_data_message(scene, root / f"transforms_{split}.json"))
    return root


def _missing_data_message(scene: str, transforms: Path) -> str:
    return (
        f"{transforms} not found: download nerf_synthetic.zip from the NeRF authors' folder "
        f"https://drive.google.com/drive/folders/128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1 (README, 'Getting the data') "
        f"and unzip it so that data/nerf_synthetic/{scene}/transforms_train.json exists, or pass --datadir"
    )


def load_blender(root, downscale: int = 1, splits=SPLITS, max_images: dict | int | None = None,
                 gt_protocol: str = "premultiplied") -> Scene:
    """Read a scene folder in the Blender layout (see the module docstring).

    downscale: integer factor d; each image is reduced by averaging d x d blocks (area averaging, on
        alpha-premultiplied colour so that downscaling and compositing commute), cropping the last H % d rows
        and W % d columns; K is divided by d (pixel (i, j) of the small image covers [d i, d (i + 1)) of the
        large one, so fx, fy, cx, cy all scale by 1 / d).
    splits: which transforms_<split>.json to read.
    max_images: keep only the first n frames of a split: {"train": n, ...} per split, or one int for all.
    gt_protocol: how RGBA images are averaged by downscale (see `downscale_area`): "premultiplied" (ours) or
        "straight" (the common loaders' way). It changes training images and ground truth alike.
    Errors (missing folder, file or image, malformed JSON, unreadable image, mixed sizes) raise a one-line
    UserError naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"scene folder {root} not found: pass --datadir with a folder holding transforms_train.json")
    if downscale < 1:
        raise UserError(f"--downscale must be a positive integer, got {downscale}")
    loaded = {}
    for split in splits:
        limit = max_images.get(split) if isinstance(max_images, dict) else max_images
        loaded[split] = _load_split(root, split, downscale, limit, gt_protocol)
    scene = Scene(
        name=root.name,
        root=root,
        splits=loaded,
        near=BLENDER_NEAR,
        far=BLENDER_FAR,
        aabb=torch.tensor(BLENDER_AABB, dtype=torch.float32),
        white_background=True,
        camera_files={split: root / f"transforms_{split}.json" for split in loaded},
    )  # checked when built (common.data.scene.check_scene)
    warn_rgb_background(scene)
    return scene


def read_split_transforms(path: Path) -> tuple[float, list]:
    """camera_angle_x and the frames of a transforms_<split>.json, checked; UserError on any defect."""
    if not path.exists():
        raise UserError(f"{path} not found: the scene folder lacks this split; re-extract the scene")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): fix or re-download it"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} ({err}): check its permissions or re-download it") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise UserError(f"{path} is malformed: it needs a non-empty list 'frames'; fix or re-download it")
    angle = meta.get("camera_angle_x")
    if not _is_number(angle) or not 0.0 < angle < math.pi:  # also refuses NaN and Infinity, which JSON readers accept
        raise UserError(f"{path} is malformed: 'camera_angle_x' is {angle!r}, it must be an angle in radians in "
                        f"(0, pi); fix or re-download it")
    for i, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise UserError(f"{path} is malformed: frame {i} has no 'file_path' string; fix or re-download it")
        matrix = np.asarray(frame.get("transform_matrix"), dtype=object)
        if matrix.shape != (4, 4) or not all(_is_number(x) for x in matrix.flat):
            raise UserError(
                f"{path} is malformed: frame {i} needs a 4x4 numeric 'transform_matrix'; fix or re-download it"
            )
        if not all(math.isfinite(x) for x in matrix.flat):
            raise UserError(
                f"{path}: frame {i} ({frame['file_path']}) has a non-finite 'transform_matrix' (NaN or Infinity); "
                f"fix or re-download it"
            )
    return float(angle), meta["frames"]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def frame_image_path(root: Path, file_path: str) -> Path:
    """The image of a frame's file_path: Blender frames omit the ".png"."""
    path = root / file_path
    return path if path.suffix else path.with_name(path.name + ".png")


def _load_split(root: Path, split: str, downscale: int, limit: int | None,
                        gt_protocol: str = "premultiplied") -> Split:
    transforms = root / f"transforms_{split}.json"
    camera_angle_x, frames = read_split_transforms(transforms)
    if limit is not None:
        frames = frames[:limit]
    paths = [frame_image_path(root, frame["file_path"]) for frame in frames]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"{transforms} names {len(missing)} frame(s) whose images are missing (first: {missing[0]}): "
            f"re-extract the scene or remove those frames from the file"
        )
    images = []
    full_size = None
    for path in paths:
        image = read_image(path)
        if full_size is None:
            full_size, first = image.shape[:2], path
            if min(full_size) < downscale:
                raise UserError(
                    f"--downscale {downscale} is larger than the {full_size[1]}x{full_size[0]} image {path}"
                )
        elif image.shape[:2] != full_size:
            raise UserError(
                f"images of mixed sizes in {transforms}: {first} is {full_size[1]}x{full_size[0]} but {path} is "
                f"{image.shape[1]}x{image.shape[0]}; resize them to one size"
            )
        images.append(downscale_area(image, downscale, gt_protocol))
    if len({image.shape[-1] for image in images}) > 1:  # some RGB, some RGBA: give all an alpha channel
        images = [im if im.shape[-1] == 4 else np.concatenate([im, np.ones_like(im[..., :1])], -1) for im in images]
    H_full, W_full = full_size
    # Blender intrinsics of the full image (principal point at the centre), then scaled by 1 / downscale.
    focal = 0.5 * W_full / math.tan(0.5 * camera_angle_x)
    K = torch.tensor([[focal, 0.0, 0.5 * W_full], [0.0, focal, 0.5 * H_full], [0.0, 0.0, 1.0]]) / downscale
    K[2, 2] = 1.0
    c2w = torch.tensor([frame["transform_matrix"] for frame in frames], dtype=torch.float32)  # (N, 4, 4)
    H, W = images[0].shape[:2]
    return Split(
        name=split,
        images=torch.from_numpy(np.stack(images)),
        cameras=Cameras(c2w=c2w, K=K.expand(len(frames), 3, 3).clone(), height=H, width=W),
        files=[p.relative_to(root).as_posix() for p in paths],
    )


def write_blender_split(root: Path, split: str, images: torch.Tensor, poses: torch.Tensor, header: dict) -> None:
    """Write one split in the Blender layout: `<split>/r_<i>.png` from images (N, H, W, 3 or 4) in [0, 1] and
    `transforms_<split>.json` = header + frames (file_path, transform_matrix from poses (N, 4, 4)), each file
    atomically."""
    from PIL import Image

    pixels = (images * 255.0).round().to(torch.uint8).numpy()
    (root / split).mkdir(exist_ok=True)
    frames = []
    for i, (image, pose) in enumerate(zip(pixels, poses)):
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        atomic_write_bytes(root / split / f"r_{i}.png", png.getvalue())
        frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": pose.tolist()})
    transforms = {**header, "frames": frames}
    atomic_write_bytes(root / f"transforms_{split}.json", json.dumps(transforms, indent=2).encode())
