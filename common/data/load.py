"""The dispatcher: `load_scene` picks the format of a scene (a built-in name, a Blender scene name or a folder)
and calls that format's reader in common/data/. It imports the formats; no format imports it.
"""
from pathlib import Path

import torch

from common.data import builtin_scene, builtin_unbounded
from common.data.blender import BLENDER_SCENES, find_blender_scene, load_blender
from common.data.colmap import find_model, load_colmap
from common.data.dtu import load_dtu
from common.data.llff import load_llff
from common.data.multiscale import load_multiscale
from common.data.ngp_transforms import load_ngp_transforms
from common.data.scene import SPLITS, Scene
from common.errors import UserError


def load_scene(
    scene: str = "builtin",
    datadir: str | None = None,
    downscale: int = 1,
    splits=SPLITS,
    max_images: dict | int | None = None,
    gt_protocol: str = "premultiplied",
    llff_factor: int = 4,
) -> Scene:
    """Load a scene by name or path.

    scene: "builtin" (the procedural scene, generated into `datadir` or <repo>/data/builtin when missing or
        out of date), "builtin_unbounded" (the same objects inside a distant sky, `common.data.builtin_unbounded`),
        a Blender scene name ("lego", "chair", ...; read from `datadir` or
        <repo>/data/nerf_synthetic/<scene>), or the path of any folder in the Blender layout.
    datadir: the scene folder itself (for a Blender scene name, the nerf_synthetic folder holding <scene>/ also
        works). A folder holding one transforms.json (Instant-NGP / nerfstudio) is read by
        `common.data.ngp_transforms.load_ngp_transforms`.
    downscale, splits, max_images, gt_protocol: see `load_blender`.
    Also: a folder holding metadata.json is read as a multiscale Blender scene (`common.data.multiscale`), and a
    folder holding poses_bounds.npy or images*/ (and no transforms_train.json) as an LLFF capture
    (`common.data.llff`, reading images_<llff_factor>/). A folder holding a COLMAP model (cameras.bin or .txt in
    sparse/0/, sparse/ or itself) and no poses_bounds.npy is read by `common.data.colmap.load_colmap`.
    """
    if scene == "builtin":
        root = Path(datadir) if datadir is not None else builtin_scene.DEFAULT_ROOT
        try:
            root = builtin_scene.ensure_builtin_scene(root)
        except OSError as err:
            raise UserError(
                f"cannot write the built-in scene into {root} ({err.strerror or err}): pass --datadir with a "
                f"writable folder"
            ) from err
        loaded = load_blender(root, downscale, splits, max_images, gt_protocol)
        loaded.name = "builtin"
        return loaded
    if scene == "builtin_unbounded":
        root = Path(datadir) if datadir is not None else builtin_unbounded.DEFAULT_ROOT
        try:
            root = builtin_unbounded.ensure_unbounded_scene(root)
        except OSError as err:
            raise UserError(f"cannot write the built-in unbounded scene into {root} ({err.strerror or err}): pass "
                            f"--datadir with a writable folder") from err
        loaded = load_blender(root, downscale, splits, max_images, gt_protocol)
        loaded.name, loaded.near, loaded.far, loaded.white_background = (
            "builtin_unbounded", builtin_unbounded.NEAR, builtin_unbounded.FAR, False)
        loaded.aabb = torch.tensor([[-1.0] * 3, [1.0] * 3]) * builtin_unbounded.SKY_RADIUS * builtin_unbounded.WORLD_SCALE
        return loaded
    if scene in BLENDER_SCENES:
        root = find_blender_scene(scene, datadir, splits[0])
        loaded = load_blender(root, downscale, splits, max_images, gt_protocol)
        loaded.name = scene
        return loaded
    root = Path(scene)
    if (root / "transforms.json").is_file() and not (root / "transforms_train.json").is_file():
        return load_ngp_transforms(root, downscale, splits, max_images)
    if (root / "metadata.json").is_file():  # a multiscale Blender scene (common/data/multiscale.py)
        return load_multiscale(root, splits)
    if (root.is_dir() and not (root / "poses_bounds.npy").exists() and not (root / "transforms_train.json").exists()
            and find_model(root) is not None):  # a COLMAP project (common/data/colmap.py)
        return load_colmap(root, downscale, splits, max_images)
    if root.is_dir() and not (root / "transforms_train.json").exists() and (
            (root / "poses_bounds.npy").exists() or any(root.glob("images*"))):  # LLFF (common/data/llff.py)
        return load_llff(root, factor=llff_factor, splits=splits)
    if not root.is_dir() and ("/" in scene or "\\" in scene or scene.startswith(".")):
        raise UserError(f"scene folder {root} not found: pass --scene with a folder holding transforms_train.json")
    if not root.is_dir():
        raise UserError(
            f"unknown scene {scene!r}: pass --scene builtin, one of the Blender scenes ({', '.join(BLENDER_SCENES)}) "
            f"or the path of a folder holding transforms_train.json"
        )
    if (root / "cameras_sphere.npz").exists():  # the NeuS / DTU layout (common/data/dtu.py)
        return load_dtu(root, downscale, splits, max_images)
    return load_blender(root, downscale, splits, max_images, gt_protocol)
