"""360-degree captures in the LLFF layout (`poses_bounds.npy` + `images_N/`), normalised as mip-NeRF 360 does.

    <scene>/poses_bounds.npy   float (N, 17): per image a 3x5 matrix [R | t | hwf] flattened row by row (the
                               rotation's columns in LLFF's axis order [down, right, backwards], hwf = (height,
                               width, focal) of the full-size images), then the near and far depth bounds
    <scene>/images/            full-size photographs;  images_4/, images_8/: the same reduced by 4 and 8

Images are sorted by file name and matched to the rows in order. The poses are turned into OpenGL
camera-to-world matrices (x right, y up, backwards) and then normalised by mip-NeRF 360's PCA transform
(multinerf `transform_poses_pca`): the mean camera position moves to the origin, the principal axes of the
camera positions become x, y, z (largest spread first, so for cameras around an object z is the orbit's axis),
the frame is flipped if the cameras' mean up vector points to -z, and everything is scaled so that the largest
|camera coordinate| is 1 (cameras inside [-1, 1]^3). Forward-facing captures are instead recentred and mapped
to NDC (mip-NeRF, 02); that reader is a different one.

Split: every 8th image (0, 8, ...) is "test" (the LLFF / mip-NeRF 360 protocol); "val" is the same set.
"""
from pathlib import Path

import numpy as np
import torch

from common.data.llff import reduced_image_folder
from common.data.scene import Cameras, Scene, Split, check_matrix, downscale_area, read_image
from common.errors import UserError

HOLDOUT_EVERY = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_poses_bounds(path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """poses_bounds.npy -> c2w (N, 4, 4) float64 in the OpenGL convention, hwf (N, 3), bounds (N, 2)."""
    path = Path(path)
    try:
        data = np.load(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}): it must be the N x 17 array written by LLFF's imgs2poses") from err
    if data.ndim != 2 or data.shape[1] != 17 or not np.isfinite(data).all():
        raise UserError(f"{path} must hold a finite N x 17 array (3x5 pose + 2 bounds per image), got shape "
                        f"{data.shape}: regenerate it with LLFF's imgs2poses.py")
    for i, row in enumerate(data):  # before the PCA normalisation, which would spread one singular pose to all
        check_matrix(row[:15].reshape(3, 5)[:, :4],
                     f"{path}: row {i} (counting from 0; rows go with the images in file-name order)")
        if not 0 < row[15] < row[16]:
            raise UserError(f"{path}: row {i} has depth bounds {row[15:17].tolist()}; they must be finite with "
                            f"0 < near < far: regenerate it with LLFF's imgs2poses.py")
    poses = torch.from_numpy(data[:, :15].reshape(-1, 3, 5)).double()  # (N, 3, 5)
    # Columns [down, right, backwards] -> [right, up, backwards]: x = right, y = -down.
    rotation = torch.stack([poses[:, :, 1], -poses[:, :, 0], poses[:, :, 2]], dim=-1)  # (N, 3, 3)
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(poses), 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = rotation, poses[:, :, 3]
    return c2w, poses[:, :, 4], torch.from_numpy(data[:, 15:17]).double()


def transform_poses_pca(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mip-NeRF 360's normalisation of a 360 capture (module docstring). c2w: (N, 4, 4).
    Returns the normalised poses (N, 4, 4) and the transform T (4, 4) with c2w' = T c2w (then the rotation
    part of c2w' is re-normalised: T includes the scale)."""
    c2w = c2w.double()
    t = c2w[:, :3, 3]
    t_mean = t.mean(dim=0)
    centred = t - t_mean
    eigval, eigvec = torch.linalg.eigh(centred.T @ centred)  # ascending
    rot = eigvec.flip(-1).T  # rows: principal axes, largest variance first
    if torch.linalg.det(rot) < 0:
        rot = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)) @ rot
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, :3], transform[:3, 3] = rot, -rot @ t_mean
    poses = transform @ c2w
    if poses[:, 2, 1].mean() < 0:  # the mean camera up (y axis) has a negative z: turn the world upside up
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
        poses, transform = flip @ poses, flip @ transform
    scale = 1.0 / poses[:, :3, 3].abs().max()
    poses[:, :3, 3] *= scale
    transform = torch.diag(torch.tensor([scale, scale, scale, 1.0], dtype=torch.float64)) @ transform
    return poses, transform


def _image_folder(root: Path, downscale: int) -> tuple[Path, int]:
    """images_<downscale>/, else the coarsest images_<g>/ with g dividing downscale, else images/, with the
    reduction still to apply (`common.data.llff.reduced_image_folder`); a one-line UserError when none exists."""
    folder, reduce_by = reduced_image_folder(root, downscale)
    if folder.is_dir():
        return folder, reduce_by
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("images"))
    raise UserError(f"{root} has no images_{downscale}/, no images_<g>/ with g dividing {downscale} and no images/ "
                    f"(it has: {', '.join(present) or 'no image folder'}): give a --downscale of one of its folders, "
                    f"or copy the photographs next to poses_bounds.npy")


def load_llff360(root, downscale: int = 4, splits=("train", "val", "test"),
                 max_images: dict | int | None = None) -> Scene:
    """Read a 360 capture (module docstring). downscale: use images_<downscale>/ (as mip-NeRF 360's factor 4)
    or reduce images/ by area averaging; the focal length follows the images' actual width."""
    root = Path(root)
    c2w, hwf, bounds = read_poses_bounds(root / "poses_bounds.npy")
    folder, extra = _image_folder(root, downscale)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) != len(c2w):
        raise UserError(f"{folder} holds {len(files)} images but {root / 'poses_bounds.npy'} has {len(c2w)} "
                        f"poses: they must match one to one (sorted by file name)")
    poses, transform = transform_poses_pca(c2w)
    scale = float(transform[:3, :3].norm(dim=0)[0])
    indices = {"test": list(range(0, len(files), HOLDOUT_EVERY))}
    indices["val"] = indices["test"]
    indices["train"] = [i for i in range(len(files)) if i % HOLDOUT_EVERY != 0]
    loaded = {}
    for split in splits:
        limit = max_images.get(split) if isinstance(max_images, dict) else max_images
        chosen = indices[split][:limit] if limit is not None else indices[split]
        images = [downscale_area(read_image(files[i])[..., :3], extra) for i in chosen]
        if len({im.shape for im in images}) > 1:
            raise UserError(f"images of mixed sizes in {folder}: resize them to one size")
        H, W = images[0].shape[:2]
        K = []
        for i in chosen:
            focal = float(hwf[i, 2]) * W / float(hwf[i, 1])  # the file's focal is for the full-size width
            K.append(torch.tensor([[focal, 0.0, W / 2], [0.0, focal, H / 2], [0.0, 0.0, 1.0]]))
        rotation = poses[chosen, :3, :3]
        c2w_split = poses[chosen].clone()
        c2w_split[:, :3, :3] = rotation / rotation.norm(dim=1, keepdim=True)  # unit columns again
        loaded[split] = Split(name=split, images=torch.from_numpy(np.stack(images)),
                              cameras=Cameras(c2w=c2w_split.float(), K=torch.stack(K), height=H, width=W),
                              files=[files[i].relative_to(root).as_posix() for i in chosen])
    near, far = float(bounds.min()) * scale, float(bounds.max()) * scale
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3]) * (1.0 + far)  # every point within `far` of a camera
    return Scene(name=root.name, root=root, splits=loaded, near=near, far=far, aabb=aabb, white_background=False,
                 camera_files={split: root / "poses_bounds.npy" for split in loaded})
