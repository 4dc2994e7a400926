"""Forward-facing captures in the LLFF layout (Mildenhall et al., SIGGRAPH 2019), as NeRF and mip-NeRF read them.

Layout of a scene folder:
    poses_bounds.npy      (N, 17) float: per image a 3x5 matrix [R | t | hwf] flattened row by row, then the
                          near and far depth bounds of the scene seen from that camera
    images_<f>/*.png      the N photographs reduced by f (images_4, images_8, ...), sorted by file name
    images/*.jpg          the originals (used, reduced here by area averaging, when images_<f>/ is absent)
The rotation columns of poses_bounds.npy are stored in the order [down, right, backwards]; column 4 holds
(H, W, focal) of the original photographs. Loading follows NeRF's `load_llff_data` (and mip-NeRF's `LLFF`):
  1. reorder the axes to [right, up, backwards] (OpenGL, like the Blender scenes);
  2. rescale translations and bounds by 1 / (0.75 * min(bounds)), so the nearest content is at depth 1.33;
  3. recentre: express every pose in the frame of the average pose (`common.paths.average_pose`);
  4. hold out every 8th image (0, 8, 16, ...) as the test split (also used as "val");
  5. render in normalised device coordinates (NDC, NeRF Appendix C): `ndc_rays` maps the frustum in front of the
     plane z = -1 to the cube [-1, 1]^3, so that a ray's t in [0, 1] spans depths from 1 to infinity.
Glossary: N images, R rays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.data.scene import Cameras, Scene, Split, check_matrix, downscale_area, read_image
from common.errors import UserError
from common.paths import average_pose, spiral_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BOUND_FACTOR = 0.75  # NeRF's bd_factor: the nearest bound ends up at 1 / 0.75 = 1.33, in front of the NDC plane
NDC_NEAR = 1.0  # the plane z = -NDC_NEAR (after recentring) that NDC maps to z' = -1 (mip-NeRF convert_to_ndc)
LLFF_HOLD = 8  # every 8th image is held out


@dataclass
class ForwardFacingScene(Scene):
    """A `Scene` of forward-facing photographs, rendered in NDC. Rays are generated in the (recentred) world
    frame and mapped by `ndc_rays`; near = 0 and far = 1 are the t range of the NDC rays, aabb is the NDC cube.
    bounds: (N, 2) the rescaled near/far depth bounds of every image (all splits); ndc_near: see `ndc_rays`."""

    bounds: torch.Tensor = None
    ndc_near: float = NDC_NEAR


def read_poses_bounds(root) -> tuple[np.ndarray, np.ndarray]:
    """poses (N, 3, 5) and bounds (N, 2) of <root>/poses_bounds.npy, as stored (LLFF axis order, original hwf).
    UserError naming the file when it is missing or not an (N, 17) array."""
    path = Path(root) / "poses_bounds.npy"
    if not path.is_file():
        raise UserError(f"{path} not found: an LLFF scene needs poses_bounds.npy (made by LLFF's imgs2poses.py "
                        f"from a COLMAP reconstruction); pass --scene with a folder that holds it")
    try:
        array = np.load(path)
    except Exception as err:  # a truncated or foreign file: ValueError, OSError, pickle errors
        raise UserError(f"cannot read {path} ({err}): re-download or regenerate it") from err
    if array.ndim != 2 or array.shape[1] != 17 or array.shape[0] < 1:
        raise UserError(f"{path} holds an array of shape {array.shape}, not (N, 17): regenerate it with imgs2poses.py")
    poses, bounds = array[:, :15].reshape(-1, 3, 5).astype(np.float64), array[:, 15:17].astype(np.float64)
    for i in range(len(poses)):  # before the rescaling and recentring, which would spread one bad row to all
        check_matrix(poses[i, :, :4], f"{path}: row {i} (counting from 0; rows go with the images in file-name "
                                      f"order)")
        if not (np.isfinite(bounds[i]).all() and 0 < bounds[i, 0] < bounds[i, 1]):
            raise UserError(f"{path}: row {i} has depth bounds {bounds[i].tolist()}; they must be finite with "
                            f"0 < near < far: regenerate it with imgs2poses.py")
    return poses, bounds


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def reduced_image_folder(root: Path, factor: int) -> tuple[Path, int]:
    """(folder, further reduction) for the photographs of `root` reduced by `factor`: images_<factor>/ as is;
    else the coarsest images_<g>/ whose g divides factor, reduced by factor / g (fern ships images_4/ and images_8/:
    32 reads images_8/ reduced by 4); else images/ reduced by factor. The folder may not exist (callers say so)."""
    if (root / f"images_{factor}").is_dir():
        return root / f"images_{factor}", 1
    finer = [g for g in range(factor - 1, 1, -1) if factor % g == 0 and (root / f"images_{g}").is_dir()]
    return (root / f"images_{finer[0]}", factor // finer[0]) if finer else (root / "images", factor)


def _read_images(root: Path, factor: int) -> tuple[list[Path], np.ndarray]:
    """The photographs reduced by `factor`: from images_<factor>/ if present, else from the nearest finer folder
    images_<g>/ whose g divides factor (or images/, g = 1), reduced here by factor / g (area averaging)."""
    folder, reduce_by = reduced_image_folder(root, factor)
    if not folder.is_dir():
        present = sorted(p.name for p in root.glob("images_*") if p.is_dir())
        raise UserError(f"{root} has neither images_{factor}/ nor images/ (nor an images_<g>/ with g dividing "
                        f"{factor}) to reduce; it holds {', '.join(present) or 'no images folder'}: choose "
                        f"--llff_factor and --downscale whose product has a folder")
    files = _image_files(folder)
    if not files:
        raise UserError(f"{folder} holds no .png or .jpg image")
    images = [downscale_area(read_image(path)[..., :3], reduce_by) for path in files]
    if len({image.shape for image in images}) > 1:
        raise UserError(f"images of mixed sizes in {folder}: LLFF captures need one size")
    if min(images[0].shape[:2]) < 1:
        raise UserError(f"--llff_factor x --downscale = {factor} is larger than the images of {folder}")
    return files, np.stack(images)


def recentre_poses(c2w: np.ndarray) -> np.ndarray:
    """Express (N, 4, 4) camera-to-world poses in the frame of their average pose (NeRF's `recenter_poses`)."""
    average = average_pose(torch.from_numpy(c2w).float()).double().numpy()  # (4, 4)
    return np.linalg.inv(average) @ c2w  # (N, 4, 4)


def load_llff(root, factor: int = 4, hold: int = LLFF_HOLD, splits=("train", "val", "test"), downscale: int = 1,
              max_images: dict | int | None = None) -> ForwardFacingScene:
    """Read an LLFF scene folder (see the module docstring) into a ForwardFacingScene with train/val/test splits.

    factor: which images_<factor>/ to read (mip-NeRF: 4 for LLFF); the focal length is scaled by the ratio of
        the loaded width to the width recorded in poses_bounds.npy (= 1 / factor for LLFF's own reductions).
    downscale: a further integer reduction d, as for the other formats: the images of images_<factor * d>/ when
        that folder exists, else those of the nearest finer folder reduced here by area averaging (see
        `_read_images`); the focal length follows the loaded width as above.
    hold: every `hold`-th image (0, hold, 2 hold, ...) is a test image; "val" is the test images too.
    max_images: keep only the first n images of a split ({"train": n, ...} or one int).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"scene folder {root} not found: pass --scene with an LLFF folder (poses_bounds.npy, images_4/)")
    if factor < 1 or downscale < 1:
        raise UserError(f"--llff_factor and --downscale must be positive integers, got {factor} and {downscale}")
    poses, bounds = read_poses_bounds(root)
    files, images = _read_images(root, factor * downscale)
    if len(files) != len(poses):
        raise UserError(f"{root}: {len(files)} images in {files[0].parent.name}/ but {len(poses)} poses in "
                        f"poses_bounds.npy; the two must match one to one (sorted by file name)")
    H, W = images.shape[1:3]
    focal = poses[0, 2, 4] * W / poses[0, 1, 4]  # hwf holds the original (H, W, focal)

    # 1. [down, right, backwards] -> [right, up, backwards]: new x = old y, new y = -old x.
    rotation_translation = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], axis=2)  # (N,3,4)
    c2w = np.tile(np.eye(4), (len(poses), 1, 1))
    c2w[:, :3, :4] = rotation_translation
    # 2. scale so that the nearest bound is at 1 / 0.75.
    scale = 1.0 / (bounds.min() * BOUND_FACTOR)
    c2w[:, :3, 3] *= scale
    bounds = bounds * scale
    # 3. recentre on the average pose.
    c2w = recentre_poses(c2w)

    K = torch.tensor([[focal, 0.0, 0.5 * W], [0.0, focal, 0.5 * H], [0.0, 0.0, 1.0]], dtype=torch.float32)
    test_ids = np.arange(len(poses))[::hold]
    train_ids = np.array([i for i in range(len(poses)) if i not in set(test_ids)])
    loaded = {}
    for split in splits:
        ids = train_ids if split == "train" else test_ids
        limit = max_images.get(split) if isinstance(max_images, dict) else max_images
        ids = ids[:limit] if limit is not None else ids
        cams = Cameras(c2w=torch.from_numpy(c2w[ids]).float(), K=K.expand(len(ids), 3, 3).clone(), height=H, width=W)
        loaded[split] = Split(split, torch.from_numpy(images[ids]), cams,
                              [files[i].relative_to(root).as_posix() for i in ids])
    return ForwardFacingScene(name=root.name, root=root, splits=loaded, near=0.0, far=1.0,
                              aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), white_background=False,
                              camera_files={split: root / "poses_bounds.npy" for split in loaded},
                              bounds=torch.from_numpy(bounds).float(), ndc_near=NDC_NEAR)


def ndc_rays(rays_o: torch.Tensor, rays_d: torch.Tensor, K: torch.Tensor, near: float = NDC_NEAR):
    """Map world rays to NDC rays (NeRF Appendix C, Eq. 25-26; mip-NeRF `convert_to_ndc`).

    First every origin is moved along its ray to the plane z = -near, then with a = 2 f_x / W, b = 2 f_y / H
    (written f_x / c_x and f_y / c_y: the principal point is the image centre):
        o' = (-a o_x / o_z, -b o_y / o_z, 1 + 2 near / o_z)
        d' = (-a (d_x / d_z - o_x / o_z), -b (d_y / d_z - o_y / o_z), -2 near / o_z)
    so o' lies on the plane z' = -1 and o' + 1 * d' at z' = +1 (depth infinity).
    rays_o, rays_d: (R, 3) world rays (any length of d); K: (3, 3) or (R, 3, 3). Returns (R, 3), (R, 3).
    """
    a = K[..., 0, 0] / K[..., 0, 2]  # 2 f / W
    b = K[..., 1, 1] / K[..., 1, 2]  # 2 f / H
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]  # (R,) to the plane z = -near
    rays_o = rays_o + t[..., None] * rays_d  # (R, 3)
    ox_oz, oy_oz = rays_o[..., 0] / rays_o[..., 2], rays_o[..., 1] / rays_o[..., 2]  # (R,)
    origins = torch.stack([-a * ox_oz, -b * oy_oz, 1.0 + 2.0 * near / rays_o[..., 2]], dim=-1)  # (R, 3)
    directions = torch.stack([-a * (rays_d[..., 0] / rays_d[..., 2] - ox_oz),
                              -b * (rays_d[..., 1] / rays_d[..., 2] - oy_oz),
                              -2.0 * near / rays_o[..., 2]], dim=-1)  # (R, 3)
    return origins, directions


def ndc_to_world(points: torch.Tensor, K: torch.Tensor, near: float = NDC_NEAR) -> torch.Tensor:
    """Invert the NDC map for points: (x', y', z') -> (x, y, z) with z = 2 near / (z' - 1), x = -x' z / a,
    y = -y' z / b (a, b as in `ndc_rays`). points: (..., 3); K: (3, 3). z' = 1 (infinity) gives -inf."""
    a, b = K[0, 0] / K[0, 2], K[1, 1] / K[1, 2]
    z = 2.0 * near / (points[..., 2] - 1.0)  # (...,)
    return torch.stack([-points[..., 0] * z / a, -points[..., 1] * z / b, z], dim=-1)


def spiral_focus_depth(bounds: torch.Tensor, dt: float = 0.75) -> float:
    """The depth the spiral path looks at (NeRF/mip-NeRF `_generate_spiral_poses`): a harmonic blend of
    0.9 * min(bounds) and 5 * max(bounds), 1 / ((1 - dt) / close + dt / far)."""
    close, far = 0.9 * float(bounds.min()), 5.0 * float(bounds.max())
    return 1.0 / ((1.0 - dt) / close + dt / far)


def spiral_poses(scene: ForwardFacingScene, n_frames: int = 120) -> torch.Tensor:
    """The video path of a forward-facing scene: 2 turns of a spiral around the average training camera, radii
    the 90th percentile of the camera offsets, z at half the rate (mip-NeRF's values). Returns (n, 4, 4)."""
    c2w = scene.splits["train"].cameras.c2w
    return spiral_path(c2w, spiral_focus_depth(scene.bounds), n_frames=n_frames, n_rotations=2.0,
                       radius_percentile=90.0, zrate=0.5)
