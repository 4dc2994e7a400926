"""The dispatcher: `load_scene` picks the format of a scene (a built-in name, a Blender scene name or a folder)
and calls that format's reader in common/data/. It imports the formats; no format imports it.
"""
import sys
from pathlib import Path

import torch

from common.data import builtin_scene, builtin_unbounded
from common.data.blender import BLENDER_SCENES, find_blender_scene, load_blender
from common.data.colmap import find_model, load_colmap
from common.data.dtu import load_dtu
from common.data.llff import ForwardFacingScene, load_llff
from common.data.multiscale import load_multiscale
from common.data.ngp_transforms import load_ngp_transforms
from common.data.scene import SPLITS, Scene, camera_layout
from common.errors import UserError, warn


def load_scene(
    scene: str = "builtin",
    datadir: str | None = None,
    downscale: int = 1,
    splits=SPLITS,
    max_images: dict | int | None = None,
    gt_protocol: str = "premultiplied",
    llff_factor: int = 4,
    layouts: tuple | None = None,
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
    Also: a folder holding metadata.json is read as a multiscale Blender scene (`common.data.multiscale`), one
    holding poses_bounds.npy as an LLFF capture (`common.data.llff`, images_<llff_factor * downscale>/, or a
    finer folder reduced), one holding a COLMAP model (cameras.bin or .txt in sparse/0/, sparse/ or itself) by `common.data.colmap.load_colmap`, one
    holding cameras_sphere.npz by `common.data.dtu.load_dtu`.
    A folder holding several of these (a public DTU copy with cameras_sphere.npz, poses_bounds.npy and sparse/)
    is read in the first format, in FORMAT_FILES order, whose layout the script suits, and one warning line says
    which and how to choose another: pass that format's file (or the COLMAP model folder) as `scene`.
    layouts: the layouts (LAYOUTS: "object", "forward-facing", "unbounded") the caller suits; None reads the
        SCENE_LAYOUTS constant of the script run as __main__ (each numbered script declares one), and no
        preference when there is none. A scene of another layout is loaded with one warning line naming the
        scripts that suit it. The loaded scene's layout is `Scene.layout`.
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
        return _checked(loaded, layouts)
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
        return _checked(loaded, layouts)
    if scene in BLENDER_SCENES:
        root = find_blender_scene(scene, datadir, splits[0])
        loaded = load_blender(root, downscale, splits, max_images, gt_protocol)
        loaded.name = scene
        return _checked(loaded, layouts)
    root = Path(scene)
    if root.is_file() or (root.is_dir() and root.name in ("0", "sparse") and find_model(root) == root):
        fmt = FORMAT_FILES.get(root.name, "colmap" if root.is_dir() else None)
        if fmt is None:
            raise UserError(f"{root} is a file no scene format starts from: pass --scene with a scene folder, or one "
                            f"of its files that picks the format ({', '.join(FORMAT_FILES)})")
        folder = root if root.is_dir() else root.parent
        return _checked(_read(fmt, folder, downscale, splits, max_images, gt_protocol, llff_factor), layouts)
    present = formats_in(root) if root.is_dir() else []
    if len(present) > 1:
        preferred = _preferred_layouts(layouts)
        # the script's first suited layout that is present, then its next one ...; with no preference, the first
        fmt = next((f for layout in (preferred or ()) for f, _ in present if FORMAT_LAYOUTS[f] == layout),
                   present[0][0])
        marker = dict(present)[fmt]
        others = [f"{f} ({m})" for f, m in present if f != fmt]
        warn(f"{root} holds several scene layouts: read as {fmt} ({marker}){_for_script()}; it also holds "
             f"{', '.join(others)}: to read another, pass its file as --scene, e.g. --scene "
             f"{root / dict(present)[next(f for f, _ in present if f != fmt)]}")
        return _checked(_read(fmt, root, downscale, splits, max_images, gt_protocol, llff_factor), layouts)
    if present:
        return _checked(_read(present[0][0], root, downscale, splits, max_images, gt_protocol, llff_factor), layouts)
    if root.is_dir() and any(root.glob("images*")):  # photos without poses: LLFF's reader names what is missing
        return load_llff(root, factor=llff_factor, splits=splits, downscale=downscale, max_images=max_images)
    if not root.is_dir() and ("/" in scene or "\\" in scene or scene.startswith(".")):
        raise UserError(f"scene folder {root} not found: pass --scene with a folder holding transforms_train.json")
    if not root.is_dir():
        raise UserError(
            f"unknown scene {scene!r}: pass --scene builtin, one of the Blender scenes ({', '.join(BLENDER_SCENES)}) "
            f"or the path of a folder holding transforms_train.json"
        )
    return _checked(load_blender(root, downscale, splits, max_images, gt_protocol), layouts)


# The file that marks each format in a folder, in the order a folder holding several is read when the script
# states no preference (the order of the dispatcher before layouts were chosen).
FORMAT_FILES = {"transforms.json": "ngp_transforms", "metadata.json": "multiscale", "transforms_train.json": "blender",
                "poses_bounds.npy": "llff", "cameras.bin": "colmap", "cameras.txt": "colmap",
                "cameras_sphere.npz": "dtu"}
# What each format's reader makes of a capture (ngp_transforms and colmap: "unbounded" unless their cameras
# all face one way, decided once loaded).
FORMAT_LAYOUTS = {"ngp_transforms": "unbounded", "multiscale": "object", "colmap": "unbounded", "llff": "forward-facing",
                  "dtu": "object", "blender": "object"}
LAYOUTS = {
    "object": "an object scene (the object alone on a known background: Blender, DTU, the built-in scene)",
    "forward-facing": "a forward-facing capture (every camera looks the same way, LLFF; rendered in NDC)",
    "unbounded": "an unbounded capture (cameras around a scene with background at every distance: your own "
                 "photos, mip-NeRF 360's scenes)",
}
SUITED_SCRIPTS = {"object": "01_nerf.py, 02_mipnerf.py, 03_mipnerf360.py, 04_hashnerf.py or 05_instant_neus.py",
                  "forward-facing": "02_mipnerf.py", "unbounded": "03_mipnerf360.py or 04_hashnerf.py"}


def formats_in(root: Path) -> list[tuple[str, str]]:
    """(format, the file or folder that marks it) of every layout present in the folder `root`, in FORMAT_FILES
    order. transforms.json beside transforms_train.json is the Blender layout's, not a capture's."""
    present = []
    for name, fmt in FORMAT_FILES.items():
        if fmt == "colmap" or fmt in dict(present):
            continue
        if (root / name).is_file() and not (fmt == "ngp_transforms" and (root / "transforms_train.json").is_file()):
            present.append((fmt, name))
    model = find_model(root)
    if model is not None:
        present.append(("colmap", model.relative_to(root).as_posix() if model != root else "cameras.bin"))
        order = list(dict.fromkeys(FORMAT_FILES.values()))
        present.sort(key=lambda item: order.index(item[0]))
    return present


def _read(fmt, root, downscale, splits, max_images, gt_protocol, llff_factor) -> Scene:
    if fmt == "ngp_transforms":
        return load_ngp_transforms(root, downscale, splits, max_images)
    if fmt == "multiscale":
        return load_multiscale(root, splits)
    if fmt == "colmap":
        return load_colmap(root, downscale, splits, max_images)
    if fmt == "llff":
        return load_llff(root, factor=llff_factor, splits=splits, downscale=downscale, max_images=max_images)
    if fmt == "dtu":
        return load_dtu(root, downscale, splits, max_images)
    return load_blender(root, downscale, splits, max_images, gt_protocol)


def scene_layout(scene: Scene) -> str:
    """"object", "forward-facing" or "unbounded" (LAYOUTS) of a loaded scene: from its format, and for photo
    captures (transforms.json, COLMAP) from the cameras (`common.data.scene.camera_layout`)."""
    if isinstance(scene, ForwardFacingScene):
        return "forward-facing"
    if scene.name == "builtin_unbounded":
        return "unbounded"
    camera_file = next(iter(scene.camera_files.values()), None)
    if camera_file is not None and (Path(camera_file).name == "transforms.json"
                                    or Path(camera_file).suffix in (".bin", ".txt")):
        c2w = torch.cat([split.cameras.c2w for split in scene.splits.values()])
        return "forward-facing" if camera_layout(c2w) == "forward-facing" else "unbounded"
    return "object"


def _main_script():
    main = sys.modules.get("__main__")
    return main, Path(getattr(main, "__file__", "") or "").name


def _preferred_layouts(layouts):
    """The layouts the running script suits: `layouts` if given, else the SCENE_LAYOUTS constant of the script
    run as __main__ (each numbered script declares one), else None (no preference: a test, a notebook)."""
    if layouts is not None:
        return tuple(layouts)
    main, _ = _main_script()
    preferred = getattr(main, "SCENE_LAYOUTS", None)
    return tuple(preferred) if preferred else None


def _for_script() -> str:
    _, name = _main_script()
    return f" for {name}" if name.endswith(".py") else ""


def _checked(scene: Scene, layouts) -> Scene:
    """Record the scene's layout (Scene.layout) and say in one warning line when the script does not suit it."""
    scene.layout = scene_layout(scene)
    preferred = _preferred_layouts(layouts)
    if preferred is not None and scene.layout not in preferred:
        _, name = _main_script()
        suited = f"{SUITED_SCRIPTS[scene.layout]} suit it"
        if scene.layout == "forward-facing" and not isinstance(scene, ForwardFacingScene):
            suited = ("02_mipnerf.py renders forward-facing captures in NDC only in the LLFF layout "
                      "(poses_bounds.npy); this one is read in world space, as 03_mipnerf360.py and 04_hashnerf.py "
                      "read a capture")
        warn(f"{scene.root} is {LAYOUTS[scene.layout]}, but {name or 'this script'} is made for "
             f"{' and '.join(preferred)} scenes, not {scene.layout} ones; {suited} (README, 'Your own capture')")
    return scene
