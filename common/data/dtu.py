"""Scenes in the NeuS / DTU layout (IDR's `cameras_sphere.npz`), read into the same `Scene` as Blender scenes.

Layout of a scene folder (NeuS's public DTU data, and the Instant-NeuS competition data):
    cameras_sphere.npz   world_mat_<i> (4, 4): the projection K [R | t] of view i, world -> pixels (OpenCV);
                         scale_mat_<i> (4, 4): maps the unit sphere that holds the object to world coordinates
                         (the same matrix for every view); optional camera_mat_<i>, *_inv_<i> (not needed here)
    image/<i>.png        RGB photographs, named with 6 digits (000000.png, NeuS) or 3 (000.png, Jittor); both work
    mask/<i>.png         object masks (white = object; 3-channel or grey), 3 or 6 digits, matched by the number
View i of the images pairs with world_mat_<i> by the number in its file name.
Variants found in public copies are read too: images/ for image/, masks/ for mask/, JPEG (.jpg, .jpeg) as well
as PNG, any number of digits, either case of suffix. Other files beside them (the copy's poses_bounds.npy, a
sparse/ model, README, .DS_Store, files not named by a number) are ignored. A folder with both image/ and images/
holding numbered images, or two files with one number (000.png and 000.jpg), is refused in one line: which one is
meant is not ours to guess.

What the loader does, once, here:
  * P = (world_mat @ scale_mat)[:3] projects the *unit-sphere frame* to pixels; decomposing it (RQ) gives K and
    the camera pose in that frame (`decompose_projection`). Training happens in this frame, where the object lies
    inside the unit sphere; `NeuSScene.scale_mat` maps results (meshes) back to world units (DTU: millimetres).
  * OpenCV camera axes (x right, y down, looks along +z) become the project's OpenGL axes (x right, y up, looks
    along -z; common/rays.py) by negating the camera's y and z axes: c2w[:3, 1:3] *= -1.
  * OpenCV puts pixel (i, j)'s centre at (i, j); common/rays.py puts it at (i + 0.5, j + 0.5), so the principal
    point moves by +0.5 pixel. (NeuS casts rays through the integer coordinates, i.e. the same pixel centres.)
  * The mask becomes the image's alpha channel (images are RGBA, like Blender scenes), so a script composites the
    ground truth on its training background exactly as it does for Blender data.
Views are split into train and held-out views: every `holdout_every`-th view (0, 8, 16, ... by default, LLFF's
protocol) is a test view (and the val view), the others train. NeuS itself trains on all views.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.data.scene import SPLITS, Cameras, Scene, Split, check_matrix, downscale_area, read_image
from common.errors import UserError

CAMERAS_FILE = "cameras_sphere.npz"
_NUMBERED_IMAGE = re.compile(r"^(\d+)\.(png|jpe?g)$", re.IGNORECASE)
IMAGE_FOLDERS = ("image", "images")  # NeuS / IDR name it image/; other public copies images/
MASK_FOLDERS = ("mask", "masks")
MASK_THRESHOLD = 0.5  # NeuS thresholds its masks at 0.5 (Jittor-Instant-NeuS at 0.1)


@dataclass
class NeuSScene(Scene):
    """A `Scene` in the unit-sphere frame of its `cameras_sphere.npz`; scale_mat (4, 4) float64 maps that frame
    to world coordinates (a mesh vertex v goes to scale_mat[:3, :3] v + scale_mat[:3, 3])."""

    scale_mat: np.ndarray = None


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K and the OpenCV camera-to-world pose of a 3x4 projection P = s K [R | t] (what NeuS's load_K_Rt_from_P
    gets from cv2.decomposeProjectionMatrix).

    RQ decomposition of the left 3x3 block M = K R (upper-triangular K times a rotation R), signs chosen so that
    K has a positive diagonal and R is a proper rotation; K is normalised to K[2, 2] = 1. The camera centre C is
    the null vector of P: C = -M^-1 p_4. Returns K (3, 3) and c2w (4, 4) (columns: the camera's x, y, z axes in
    the world, then C; OpenCV axes), float64.
    """
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    M = P[:, :3]
    if abs(np.linalg.det(M)) < 1e-12 * np.abs(M).max() ** 3:
        raise ValueError("the projection matrix is singular (its left 3x3 block has no inverse)")
    if np.linalg.det(M) < 0:  # P is defined up to scale: choose the sign that makes R a rotation, not a reflection
        P, M = -P, -M
    # RQ from QR: with J the order-reversing permutation, QR of (J M)^T = Q U gives M = (J U^T J)(J Q^T), where
    # J U^T J is upper triangular and J Q^T orthonormal.
    J = np.eye(3)[::-1]
    Q, R_upper = np.linalg.qr((J @ M).T)
    K = J @ R_upper.T @ J  # upper triangular
    R = J @ Q.T  # orthonormal
    signs = np.diag(np.sign(np.diag(K)))  # make diag(K) > 0: K S, S R with S = S^-1
    K, R = K @ signs, signs @ R
    C = -np.linalg.solve(M, P[:, 3])  # (3,) camera centre: P [C; 1] = 0
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R.T, C
    return K / K[2, 2], c2w


def _numbered_images(folder: Path) -> dict[int, Path]:
    """{number: path} of the numbered PNG or JPEG files in a folder (other files are ignored); two files with one
    number are a one-line UserError."""
    found = {}
    for path in sorted(folder.iterdir()):
        match = _NUMBERED_IMAGE.match(path.name)
        if match is None or not path.is_file():
            continue
        number = int(match.group(1))
        if number in found:
            raise UserError(f"{folder} holds two files for view {number}: {found[number].name} and {path.name}; "
                            f"remove one of them")
        found[number] = path
    return found


def _find_numbered(root: Path, folders: tuple[str, ...], what: str) -> tuple[Path | None, dict[int, Path]]:
    """(folder, {number: path}) of the one folder among root/<folders> that holds numbered images; (None, {})
    when none does; a one-line UserError when several do."""
    holding = [(root / name, _numbered_images(root / name)) for name in folders if (root / name).is_dir()]
    holding = [(folder, files) for folder, files in holding if files]
    if len(holding) > 1:
        raise UserError(f"{root} holds {what} in both {holding[0][0].name}/ and {holding[1][0].name}/: keep one "
                        f"of the two folders (or move the other out of the scene folder)")
    return holding[0] if holding else (None, {})


def _what_is_there(root: Path, folders: tuple[str, ...]) -> str:
    """For the 'not found' line: what the folders that exist hold instead (or that none exists)."""
    present = [root / name for name in folders if (root / name).is_dir()]
    if not present:
        return f"neither {' nor '.join(name + '/' for name in folders)} exists"
    others = sorted(p.name for folder in present for p in folder.iterdir())
    sample = f" (e.g. {', '.join(others[:3])})" if others else ""
    return f"{', '.join(p.name + '/' for p in present)} holds {len(others)} other file(s){sample}"


def _read_cameras(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found: a NeuS/DTU scene folder needs cameras_sphere.npz beside image/ (or "
                        f"images/) and mask/ (or masks/)")
    try:
        with np.load(path) as data:
            return {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
    except Exception as err:  # zip/pickle/value errors of many kinds for a damaged file
        raise UserError(f"cannot read {path} ({type(err).__name__}: {err}): re-download the scene") from err


def load_dtu(root, downscale: int = 1, splits=SPLITS, max_images: dict | int | None = None,
             holdout_every: int = 8) -> NeuSScene:
    """Read a scene folder in the NeuS / DTU layout (see the module docstring) into a `NeuSScene`.

    downscale: integer factor d (area averaging, as for Blender scenes; K is divided by d). DTU images are
        1600 x 1200: d = 2 gives NeuS-pl's 800 x 600, d = 8 a CPU-sized 200 x 150.
    max_images: keep only the first n views of a split ({"train": n, ...} or one int).
    Errors (no cameras file, no images, a view without a mask or without a camera entry, images or masks of
    different sizes) raise a one-line UserError naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"scene folder {root} not found: pass --scene with a folder holding {CAMERAS_FILE}")
    if downscale < 1:
        raise UserError(f"--downscale must be a positive integer, got {downscale}")
    cameras = _read_cameras(root / CAMERAS_FILE)
    image_dir, images = _find_numbered(root, IMAGE_FOLDERS, "images")
    if not images:
        raise UserError(f"no images in {root}: expected image/ or images/ with numbered PNG or JPEG files "
                        f"(000.png, 000000.jpg, ...), but {_what_is_there(root, IMAGE_FOLDERS)}")
    mask_dir, masks = _find_numbered(root, MASK_FOLDERS, "masks")
    unmasked = [images[i].name for i in images if i not in masks]
    if unmasked:
        where = mask_dir if mask_dir is not None else f"{root} ({_what_is_there(root, MASK_FOLDERS)})"
        raise UserError(f"{len(unmasked)} view(s) of {image_dir} have no mask in {where} (first: "
                        f"{unmasked[0]}); add {mask_dir.name if mask_dir else 'mask'}/<number>.png for them (all white for views without one)")
    uncalibrated = [images[i].name for i in images if f"world_mat_{i}" not in cameras]
    if uncalibrated:
        raise UserError(f"{root / CAMERAS_FILE} has no world_mat entry for {len(uncalibrated)} image(s) (first: "
                        f"{image_dir.name}/{uncalibrated[0]}); remove those images or regenerate the cameras file")
    numbers = sorted(images)
    scale_mat = cameras.get(f"scale_mat_{numbers[0]}", np.eye(4))

    rgba, Ks, c2ws, full_size = [], [], [], None
    for i in numbers:
        image, mask = read_image(images[i]), read_image(masks[i])
        for path, array in ((images[i], image), (masks[i], mask)):
            if full_size is None:
                full_size, first = array.shape[:2], path
                if min(full_size) < downscale:
                    raise UserError(f"--downscale {downscale} is larger than the image {path}")
            elif array.shape[:2] != full_size:
                raise UserError(f"images of different sizes in {root}: {first} is {full_size[1]}x{full_size[0]} but "
                                f"{path} is {array.shape[1]}x{array.shape[0]}; resize them to one size")
        alpha = (mask[..., :1] > MASK_THRESHOLD).astype(np.float32)  # (H, W, 1) first channel of the mask
        rgba.append(downscale_area(np.concatenate([image[..., :3], alpha], axis=-1), downscale))
        own_scale = f"scale_mat_{i}" if f"scale_mat_{i}" in cameras else f"scale_mat_{numbers[0]}"
        for key in (f"world_mat_{i}", own_scale):  # before the decomposition: a LinAlgError or NaN otherwise
            check_matrix(cameras.get(key, scale_mat),
                         f"{root / CAMERAS_FILE}: {key} (for {images[i].relative_to(root).as_posix()})")
        P = cameras[f"world_mat_{i}"] @ cameras.get(f"scale_mat_{i}", scale_mat)
        K, c2w = decompose_projection(P)
        c2w[:3, 1:3] *= -1  # OpenCV camera axes (y down, z forward) -> OpenGL (y up, z backward)
        K[:2, 2] += 0.5  # pixel centres at (i + 0.5, j + 0.5), common/rays.py
        K[:2] /= downscale  # pixel (i, j) of the small image covers [d i, d (i + 1)) of the full one
        Ks.append(K)
        c2ws.append(c2w)
    images_t = torch.from_numpy(np.stack(rgba))  # (N, H, W, 4)
    K_t = torch.tensor(np.stack(Ks), dtype=torch.float32)  # (N, 3, 3)
    c2w_t = torch.tensor(np.stack(c2ws), dtype=torch.float32)  # (N, 4, 4)
    H, W = images_t.shape[1:3]
    files = [images[i].relative_to(root).as_posix() for i in numbers]
    held_out = [k for k in range(len(numbers)) if holdout_every > 0 and k % holdout_every == 0]
    by_split = {"train": [k for k in range(len(numbers)) if k not in held_out] or held_out,
                "val": held_out or [0], "test": held_out or [0]}
    loaded = {}
    for split in splits:
        keep = by_split[split]
        limit = max_images.get(split) if isinstance(max_images, dict) else max_images
        keep = keep[:limit] if limit is not None else keep
        loaded[split] = Split(split, images_t[keep], Cameras(c2w_t[keep], K_t[keep], H, W), [files[k] for k in keep])
    # Rays meet the unit sphere between |c| - 1 and |c| + 1 for a camera at distance |c| from its centre.
    distances = c2w_t[:, :3, 3].norm(dim=-1)
    return NeuSScene(name=root.name, root=root, splits=loaded, near=max(float(distances.min()) - 1.0, 0.05),
                     far=float(distances.max()) + 1.0,
                     aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), white_background=False,
                     camera_files={split: root / CAMERAS_FILE for split in loaded}, scale_mat=scale_mat)


def write_neus_layout(root, images: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, scale_mat: np.ndarray,
                      digits: int = 3) -> Path:
    """Write views in the NeuS / DTU layout (the inverse of `load_dtu` at downscale 1), e.g. to export the
    built-in scene: image/<i>.png (RGB), mask/<i>.png (alpha > 0.5 as white), cameras_sphere.npz.

    images: (N, H, W, 4) RGBA in [0, 1]; K: (N, 3, 3) and c2w: (N, 4, 4) in the project's conventions (OpenGL
    axes, pixel centres at +0.5) and in world coordinates; scale_mat: (4, 4) unit-sphere frame -> world.
    world_mat_i = K_cv [R | t] (OpenCV axes, pixel centres at integers), padded to 4x4. Returns root.
    """
    from common.video import save_image

    root = Path(root)
    for i in range(images.shape[0]):
        name = f"{i:0{digits}d}.png"
        save_image(root / "image" / name, images[i, ..., :3])
        save_image(root / "mask" / name, (images[i, ..., 3:] > MASK_THRESHOLD).float().expand(-1, -1, 3))
    entries = {}
    for i in range(images.shape[0]):
        k_cv = K[i].double().numpy().copy()
        k_cv[:2, 2] -= 0.5
        c2w_cv = c2w[i].double().numpy().copy()
        c2w_cv[:3, 1:3] *= -1  # OpenGL -> OpenCV camera axes
        w2c = np.linalg.inv(c2w_cv)
        world_mat = np.eye(4)
        world_mat[:3, :4] = k_cv @ w2c[:3, :4]
        entries[f"world_mat_{i}"] = world_mat
        entries[f"scale_mat_{i}"] = np.asarray(scale_mat, dtype=np.float64)
    np.savez(root / CAMERAS_FILE, **entries)
    return root
