"""Captures in the Instant-NGP / nerfstudio layout: one `transforms.json` with intrinsics, lens distortion and
a camera-to-world matrix per frame (e.g. Instant-NGP's fox, made by its colmap2nerf.py).

    <scene>/transforms.json   {"fl_x", "fl_y", "cx", "cy", "w", "h",        pinhole intrinsics in pixels
                               "k1", "k2", "p1", "p2",                     OpenCV radial/tangential distortion
                               "camera_angle_x", "camera_angle_y",         used when fl_x / fl_y are absent
                               "aabb_scale", "scale", "offset",            Instant-NGP's scene box (optional)
                               "frames": [{"file_path": "images/0001.jpg", "transform_matrix": 4x4 c2w}, ...]}
    <scene>/images/...        the photographs

Conventions: transform_matrix is camera-to-world in the OpenGL convention (x right, y up, looks along -z), as in
`common.data.scene`. Intrinsics may also be given per frame (nerfstudio); a frame's own value wins. Distortion is
undone on the pixel coordinates of the rays (`common.rays.undistort`), never by resampling the images.
Fisheye models (`is_fisheye`, `camera_model: OPENCV_FISHEYE`, k3/k4) are not supported and are refused.

Scene frame: Instant-NGP maps a position x to its unit cube [0, 1]^3 by x * scale + offset (scale 0.33 and
offset (0.5, 0.5, 0.5) by default) and models the box of side aabb_scale around the cube's centre. We apply
the same scale and offset and then move the cube's centre to the origin, x' = x * scale + offset - 0.5: the
object of interest lies in [-0.5, 0.5]^3 and the modelled scene in [-aabb_scale / 2, aabb_scale / 2]^3, which
becomes `Scene.aabb`. (Instant-NGP also cycles the axes, x y z -> y z x, before adding its offset; we keep
the file's axes, so a custom offset (o0, o1, o2) is applied as (o2, o0, o1) to the file's x y z.)
Near and far for methods that sample a bounded range: from NEAR to the farthest corner of that box as seen
from the farthest camera.

Split: the frames sorted by file name; every 8th (0, 8, 16, ...) is held out for "test" (the LLFF / mip-NeRF
360 protocol), and "val" is the same held-out set. Frames whose image is absent are skipped with one warning
that counts them (Instant-NGP does the same; its fox lists 67 frames, 50 of which exist).
"""
import json
import math
from pathlib import Path

import numpy as np
import torch

from common.data.scene import Cameras, Scene, Split, downscale_area, read_image
from common.errors import UserError, warn

TRANSFORMS = "transforms.json"
HOLDOUT_EVERY = 8
NEAR = 0.05  # in the normalised frame (the object of interest fills [-0.5, 0.5]^3)
DEFAULT_SCALE, DEFAULT_OFFSET = 0.33, (0.5, 0.5, 0.5)  # Instant-NGP's defaults


def _number(meta: dict, frame: dict, key: str, path: Path, default=None):
    value = frame.get(key, meta.get(key, default))
    if value is not None and not isinstance(value, (int, float)):
        raise UserError(f"{path} is malformed: {key!r} must be a number; fix the file")
    return value


def _intrinsics(meta: dict, frame: dict, width: int, height: int, path: Path):
    """K (3, 3) and distortion (4,) of one frame, in pixels of the full-size image."""
    fx = _number(meta, frame, "fl_x", path)
    if fx is None:
        angle = _number(meta, frame, "camera_angle_x", path)
        if angle is None:
            raise UserError(f"{path} gives neither 'fl_x' nor 'camera_angle_x': add the focal length in pixels")
        fx = 0.5 * width / math.tan(0.5 * angle)
    fy = _number(meta, frame, "fl_y", path)
    if fy is None:
        angle_y = _number(meta, frame, "camera_angle_y", path)
        fy = fx if angle_y is None else 0.5 * height / math.tan(0.5 * angle_y)
    cx = _number(meta, frame, "cx", path, width / 2)
    cy = _number(meta, frame, "cy", path, height / 2)
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)
    distortion = torch.tensor([float(_number(meta, frame, k, path, 0.0)) for k in ("k1", "k2", "p1", "p2")])
    return K, distortion


def read_transforms(path: Path) -> dict:
    """The parsed transforms.json, checked enough for `load_ngp_transforms`; UserError naming the file otherwise."""
    if not path.is_file():
        raise UserError(f"{path} not found: pass --scene with a folder holding transforms.json")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): fix or re-export it") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise UserError(f"{path} is malformed: it needs a non-empty list 'frames'; fix or re-export it")
    if meta.get("is_fisheye") or meta.get("camera_model") == "OPENCV_FISHEYE" or meta.get("k3") or meta.get("k4"):
        raise UserError(f"{path} describes a fisheye camera (k3/k4): only the pinhole model with k1, k2, p1, p2 "
                        f"is supported; undistort the images (e.g. with COLMAP) and re-export")
    for i, frame in enumerate(meta["frames"]):
        matrix = np.asarray(frame.get("transform_matrix") if isinstance(frame, dict) else None, dtype=object)
        if (not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str) or matrix.shape != (4, 4)
                or not all(isinstance(x, (int, float)) for x in matrix.flat)):
            raise UserError(f"{path} is malformed: frame {i} needs a 'file_path' string and a 4x4 numeric "
                            f"'transform_matrix'; fix or re-export it")
        if not all(math.isfinite(x) for x in matrix.flat):  # JSON readers accept NaN and Infinity
            raise UserError(f"{path}: frame {i} ({frame['file_path']}) has a non-finite 'transform_matrix' (NaN "
                            f"or Infinity); fix or re-export it")
    return meta


def normalisation(meta: dict) -> tuple[float, torch.Tensor]:
    """(s, b) with x' = s x + b: Instant-NGP's scale and offset, moved so that its unit cube is centred on the
    origin (see the module docstring)."""
    scale = float(meta.get("scale", DEFAULT_SCALE))
    o0, o1, o2 = (float(v) for v in meta.get("offset", DEFAULT_OFFSET))
    return scale, torch.tensor([o2, o0, o1]) - 0.5


def load_ngp_transforms(root, downscale: int = 1, splits=("train", "val", "test"),
                        max_images: dict | int | None = None) -> Scene:
    """Read a capture in the transforms.json layout (module docstring). downscale: area-average the images by
    this factor (K divided by it; distortion coefficients act on normalised coordinates and do not change)."""
    root = Path(root)
    path = root / TRANSFORMS
    meta = read_transforms(path)
    if downscale < 1:
        raise UserError(f"--downscale must be a positive integer, got {downscale}")
    frames = sorted(meta["frames"], key=lambda f: f["file_path"])
    present = [f for f in frames if (root / f["file_path"]).is_file()]
    if not present:
        raise UserError(f"{path} lists {len(frames)} frames but none of their images exists (first: "
                        f"{root / frames[0]['file_path']}): copy the images next to transforms.json")
    if len(present) < len(frames):
        warn(f"{path}: skipping {len(frames) - len(present)} of {len(frames)} frames whose image file is absent")
    scale, offset = normalisation(meta)
    held_out = [f for i, f in enumerate(present) if i % HOLDOUT_EVERY == 0]
    members = {"train": [f for i, f in enumerate(present) if i % HOLDOUT_EVERY != 0], "val": held_out,
               "test": held_out}
    loaded = {}
    for split in splits:
        limit = max_images.get(split) if isinstance(max_images, dict) else max_images
        chosen = members[split][:limit] if limit is not None else members[split]
        if not chosen:
            raise UserError(f"{path}: the {split} split is empty ({len(present)} frames with images); add frames")
        loaded[split] = _load_split(root, path, meta, split, chosen, downscale, scale, offset)
    aabb_scale = float(meta.get("aabb_scale", 1.0))
    aabb = torch.tensor([[-aabb_scale / 2] * 3, [aabb_scale / 2] * 3])
    centres = torch.cat([s.cameras.c2w[:, :3, 3] for s in loaded.values()])
    far = float(centres.norm(dim=-1).max()) + math.sqrt(3) * aabb_scale / 2
    return Scene(name=root.name, root=root, splits=loaded, near=NEAR, far=far, aabb=aabb, white_background=False,
                 camera_files={split: path for split in loaded})


def _load_split(root, path, meta, split, frames, downscale, scale, offset) -> Split:
    images, Ks, distortions, poses = [], [], [], []
    for frame in frames:
        image_path = root / frame["file_path"]
        image = read_image(image_path)
        H_full, W_full = image.shape[:2]
        w, h = _number(meta, frame, "w", path), _number(meta, frame, "h", path)
        if (w is not None and int(w) != W_full) or (h is not None and int(h) != H_full):
            raise UserError(f"{image_path} is {W_full}x{H_full} but {path} says {int(w)}x{int(h)}: re-export the "
                            f"transforms for these images")
        if min(H_full, W_full) < downscale:
            raise UserError(f"--downscale {downscale} is larger than the {W_full}x{H_full} image {image_path}")
        small = downscale_area(image[..., :3], downscale)
        if images and small.shape != images[0].shape:
            raise UserError(f"images of mixed sizes in {path} ({image_path} is {W_full}x{H_full}): resize them to one size")
        images.append(small)
        K, distortion = _intrinsics(meta, frame, W_full, H_full, path)
        K[:2] /= downscale  # fx, fy, cx, cy scale with the image (pixel i of the small image covers d i .. d (i + 1))
        Ks.append(K)
        distortions.append(distortion)
        c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float32)
        c2w[:3, 3] = c2w[:3, 3] * scale + offset  # the rotation is unchanged by a uniform scaling
        poses.append(c2w)
    H, W = images[0].shape[:2]
    distortion = torch.stack(distortions)
    cameras = Cameras(c2w=torch.stack(poses), K=torch.stack(Ks), height=H, width=W,
                      distortion=distortion if bool(distortion.abs().sum() > 0) else None)
    return Split(name=split, images=torch.from_numpy(np.stack(images)), cameras=cameras,
                 files=[f["file_path"] for f in frames])
