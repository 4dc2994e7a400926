"""Scenes in the Blender (nerf_synthetic) layout, and the built-in scene written in the same layout.

Layout of a scene folder (NeRF's Blender scenes, and `common.builtin_scene`):
    transforms_{train,val,test}.json  {"camera_angle_x": fov, "frames": [{"file_path": "./train/r_0",
                                       "transform_matrix": 4x4 camera-to-world}, ...]}
    {train,val,test}/r_<i>.png        RGBA images (straight alpha; the background has alpha 0)
The focal length in pixels is 0.5 * W / tan(0.5 * camera_angle_x) and the principal point is the image centre.
Cameras follow OpenGL/Blender: x right, y up, the camera looks along -z (see common/rays.py).

Images keep their alpha channel (C = 4) so each script chooses the background it trains on with
`composite_on_background` (NeRF's protocol: white; a random colour per ray is a common regulariser).
Images without alpha (RGB, C = 3) are taken to show the object over the scene's background,
`Scene.background`: white (1.0) for Blender-layout scenes, NeRF's protocol. Training composites its
renders on that colour and scoring compares them with the images as they are, so both assume the same
background; the loader says so in one warning line, because RGB images on another background (black, say,
from dropping the alpha channel of a render) then train and score several dB worse.

Every number that places a camera (transform_matrix, camera_angle_x, the intrinsics and the near/far bounds)
must be finite: JSON readers accept NaN and Infinity, and one NaN pose used to pass the checks and make
training 20-40x slower before it died silently. The loader refuses them naming the file and the frame.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, warn
from common.numerics import DIVISION_EPS

REPO_ROOT = Path(__file__).resolve().parents[1]
BLENDER_SCENES = ("chair", "drums", "ficus", "hotdog", "lego", "materials", "mic", "ship")
SPLITS = ("train", "val", "test")
# All Blender scenes (and the built-in scene) fit in [-1.5, 1.5]^3 and are seen from radius ~4, so every ray
# segment that matters lies between depth 2 and 6 (NeRF's near/far for these scenes).
BLENDER_NEAR, BLENDER_FAR = 2.0, 6.0
BLENDER_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))


@dataclass
class Cameras:
    """Pinhole cameras of one split. c2w: (N, 4, 4) float32 camera-to-world (OpenGL: x right, y up, looks
    along -z); K: (N, 3, 3) float32 intrinsics in pixels; every image is height x width; distortion: None, or
    (N, 4) float32 OpenCV coefficients (k1, k2, p1, p2) that rays undo (see common/rays.py)."""

    c2w: torch.Tensor
    K: torch.Tensor
    height: int
    width: int
    distortion: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device) -> "Cameras":
        distortion = None if self.distortion is None else self.distortion.to(device)
        return Cameras(self.c2w.to(device), self.K.to(device), self.height, self.width, distortion)


@dataclass
class Split:
    """Images of one split. images: (N, H, W, C) float32 in [0, 1], C = 4 (RGBA) for RGBA sources else 3;
    files: the image paths relative to the scene root, in the same order."""

    name: str
    images: torch.Tensor
    cameras: Cameras
    files: list = field(default_factory=list)

    def to(self, device) -> "Split":
        return Split(self.name, self.images.to(device), self.cameras.to(device), self.files)

    @property
    def has_alpha(self) -> bool:
        """True for RGBA images; False for RGB ones, which are taken to be on Scene.background."""
        return self.images.shape[-1] == 4


@dataclass
class Scene:
    """A loaded scene: splits by name ("train", "val", "test"), the depth range [near, far] of the rays,
    aabb (2, 3) float32 (min corner, max corner) bounding the object, and whether the benchmark protocol
    composites on white."""

    name: str
    root: Path
    splits: dict
    near: float
    far: float
    aabb: torch.Tensor
    white_background: bool

    @property
    def background(self) -> float:
        """The grey level behind the object, the same for training and scoring: RGB images are taken to show
        it, RGBA images are composited on it for scoring (1.0 = white, the Blender protocol; 0.0 = black)."""
        return 1.0 if self.white_background else 0.0


def composite_on_background(rgba: torch.Tensor, background) -> torch.Tensor:
    """Alpha-composite straight-alpha colours over a background: rgb * alpha + background * (1 - alpha).

    rgba: (..., 4); background: (..., 3) tensor (broadcastable) or a float grey level. Returns (..., 3).
    Inputs with 3 channels are returned unchanged (nothing to composite).
    """
    if rgba.shape[-1] == 3:
        return rgba
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return rgb * alpha + background * (1.0 - alpha)


def background_color(kind: str, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Background colours of the given shape, which ends in 3 (e.g. (n_rays, 3)): "white" (ones), "black"
    (zeros) or "random" (uniform in [0, 1] per entry, drawn from `generator` on its device, moved to `device`)."""
    shape = tuple(shape)
    if not shape or shape[-1] != 3:
        raise ValueError(f"background_color needs a shape ending in 3 (RGB), got {shape}")
    if kind == "white":
        return torch.ones(shape, device=device)
    if kind == "black":
        return torch.zeros(shape, device=device)
    if kind == "random":
        gen_device = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=gen_device).to(device)
    raise ValueError(f"background kind must be 'white', 'black' or 'random', got {kind!r}")


def _missing_data_message(scene: str, transforms: Path) -> str:
    return (
        f"{transforms} not found: download nerf_synthetic.zip from the NeRF authors' folder "
        f"https://drive.google.com/drive/folders/128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1 (README, 'Getting the data') "
        f"and unzip it so that data/nerf_synthetic/{scene}/transforms_train.json exists, or pass --datadir"
    )


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
        out of date), "builtin_unbounded" (the same objects inside a distant sky, `common.builtin_unbounded`),
        a Blender scene name ("lego", "chair", ...; read from `datadir` or
        <repo>/data/nerf_synthetic/<scene>), or the path of any folder in the Blender layout.
    datadir: the scene folder itself (for a Blender scene name, the nerf_synthetic folder holding <scene>/ also
        works). A folder holding one transforms.json (Instant-NGP / nerfstudio) is read by
        `common.ngp_transforms.load_ngp_transforms`.
    downscale, splits, max_images, gt_protocol: see `load_blender`.
    Also: a folder holding metadata.json is read as a multiscale Blender scene (`common.multiscale`), and a
    folder holding poses_bounds.npy or images*/ (and no transforms_train.json) as an LLFF capture
    (`common.llff`, reading images_<llff_factor>/).
    """
    if scene == "builtin":
        from common import builtin_scene

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
        from common import builtin_unbounded

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
        root = Path(datadir) if datadir is not None else REPO_ROOT / "data" / "nerf_synthetic" / scene
        if not (root / "transforms_train.json").exists() and (root / scene / "transforms_train.json").exists():
            root = root / scene  # --datadir pointed at the nerf_synthetic folder that holds the scene
        if not (root / f"transforms_{splits[0]}.json").exists():
            raise UserError(_missing_data_message(scene, root / f"transforms_{splits[0]}.json"))
        loaded = load_blender(root, downscale, splits, max_images, gt_protocol)
        loaded.name = scene
        return loaded
    root = Path(scene)
    if (root / "transforms.json").is_file() and not (root / "transforms_train.json").is_file():
        from common.ngp_transforms import load_ngp_transforms  # Instant-NGP / nerfstudio capture

        return load_ngp_transforms(root, downscale, splits, max_images)
    if (root / "metadata.json").is_file():  # a multiscale Blender scene (common/multiscale.py)
        from common.multiscale import load_multiscale

        return load_multiscale(root, splits)
    if root.is_dir() and not (root / "transforms_train.json").exists() and (
            (root / "poses_bounds.npy").exists() or any(root.glob("images*"))):  # LLFF (common/llff.py)
        from common.llff import load_llff

        return load_llff(root, factor=llff_factor, splits=splits)
    if not root.is_dir() and ("/" in scene or "\\" in scene or scene.startswith(".")):
        raise UserError(f"scene folder {root} not found: pass --scene with a folder holding transforms_train.json")
    if not root.is_dir():
        raise UserError(
            f"unknown scene {scene!r}: pass --scene builtin, one of the Blender scenes ({', '.join(BLENDER_SCENES)}) "
            f"or the path of a folder holding transforms_train.json"
        )
    if (root / "cameras_sphere.npz").exists():  # the NeuS / DTU layout (common/dtu.py)
        from common.dtu import load_dtu

        return load_dtu(root, downscale, splits, max_images)
    return load_blender(root, downscale, splits, max_images, gt_protocol)


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
        loaded[split] = _load_blender_split(root, split, downscale, limit, gt_protocol)
    scene = Scene(
        name=root.name,
        root=root,
        splits=loaded,
        near=BLENDER_NEAR,
        far=BLENDER_FAR,
        aabb=torch.tensor(BLENDER_AABB, dtype=torch.float32),
        white_background=True,
    )
    check_scene_finite(scene)
    warn_rgb_background(scene)
    return scene


def check_scene_finite(scene: Scene) -> None:
    """UserError naming the split file and the frame if a camera (c2w, K) or the near/far bounds of `scene`
    hold a NaN or an Inf. For loaders of any layout: call it on the Scene they build."""
    for bound, value in (("near", scene.near), ("far", scene.far)):
        if not math.isfinite(value):
            raise UserError(f"the {bound} bound of scene {scene.root} is {value}: it must be a finite depth; fix "
                            f"the scene's bounds")
    for split in scene.splits.values():
        cams = split.cameras
        bad = ~(torch.isfinite(cams.c2w).flatten(1).all(1) & torch.isfinite(cams.K).flatten(1).all(1))  # (N,)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            name = split.files[i] if i < len(split.files) else f"frame {i}"
            raise UserError(f"split {split.name!r} of {scene.root}: frame {i} ({name}) has a non-finite camera "
                            f"(NaN or Inf in its pose or intrinsics); fix or re-download the scene")


def warn_rgb_background(scene: Scene) -> None:
    """One warning line if some splits of `scene` have RGB images (no alpha): it states the background they are
    taken to have (Scene.background) and, when their border pixels are far from it, what they look like.

    The failure it makes visible: RGB images on a black background (an RGBA render with its alpha dropped)
    trained and scored against a white one lose 4-5 dB without a word."""
    rgb = [name for name, split in scene.splits.items() if not split.has_alpha]
    if not rgb:
        return
    border = torch.cat([torch.cat([split.images[:, 0], split.images[:, -1], split.images[:, :, 0],
                                   split.images[:, :, -1]], dim=1).reshape(-1, 3)
                        for name, split in scene.splits.items() if name in rgb])  # (border pixels, 3)
    border_mean = float(border.mean())
    bg = scene.background
    colour = {1.0: "white", 0.0: "black"}.get(bg, f"grey {bg:g}")
    hint = (f"; their border pixels average {border_mean:.2f}, not {bg:g}: if the background is not {colour}, "
            f"give the images an alpha channel" if abs(border_mean - bg) > 0.1 else
            f"; if it is another colour, give the images an alpha channel")
    warn(f"{scene.root}: the {', '.join(rgb)} images have no alpha channel; they are taken to be on a "
         f"{colour} background (the Blender protocol), for training and for scoring{hint}")


def _read_transforms(path: Path) -> tuple[float, list]:
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


def _image_path(root: Path, file_path: str) -> Path:
    path = root / file_path
    return path if path.suffix else path.with_name(path.name + ".png")  # Blender frames omit ".png"


def _read_image(path: Path) -> np.ndarray:
    """Image as float32 (H, W, C) in [0, 1], C = 3 or 4; UserError if the file cannot be decoded."""
    import imageio.v3 as iio

    # Pillow reads the usual formats; letting imageio guess would try every plugin on a damaged file.
    plugin = "pillow" if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp") else None
    try:
        image = iio.imread(path, plugin=plugin)
    except Exception as err:  # imageio raises many types (OSError, ValueError, PIL errors) for a bad file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"cannot read image {path} ({reason}): the file is damaged or not an image; re-extract the scene"
        ) from err
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)  # grey -> RGB
    elif image.shape[-1] == 2:
        image = np.concatenate([np.repeat(image[..., :1], 3, axis=-1), image[..., 1:]], axis=-1)  # grey+alpha
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.iinfo(image.dtype).max
    image = image.astype(np.float32)
    if not np.isfinite(image).all():  # float formats (EXR, TIFF) can hold NaN; integer ones cannot
        raise UserError(f"image {path} holds NaN or infinite values: re-export it")
    return image


def downscale_area(image: np.ndarray, factor: int, protocol: str = "premultiplied") -> np.ndarray:
    """Reduce (H, W, C) by `factor` with area averaging over factor x factor blocks (remainder cropped).

    For RGBA, `protocol` says how colour is averaged:
      * "premultiplied" (ours): colour weighted by alpha, then divided back: a block half covered by a red object
        becomes red with alpha 0.5. Composited over any background this equals compositing the full-size
        image first and averaging after, the physically right small image.
      * "straight": every channel averaged as stored, as common loaders do (e.g. a plain area resize of the
        RGBA array): the colour of transparent pixels (black in Blender renders) leaks into edges, which come
        out darker after compositing; scores differ from "premultiplied" by a few tenths of a dB at 100x100.
    Returns (H // f, W // f, C).
    """
    if protocol not in ("premultiplied", "straight"):
        raise UserError(f"--gt_protocol must be premultiplied or straight, got {protocol!r}")
    if factor == 1:
        return image
    H, W, C = image.shape
    h, w = H // factor, W // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, C)
    if C != 4 or protocol == "straight":
        return blocks.mean(axis=(1, 3)).astype(np.float32)
    alpha = blocks[..., 3:].mean(axis=(1, 3))  # (h, w, 1)
    premultiplied = (blocks[..., :3] * blocks[..., 3:]).mean(axis=(1, 3))  # (h, w, 3)
    rgb = np.where(alpha > 0, premultiplied / np.maximum(alpha, DIVISION_EPS), blocks[..., :3].mean(axis=(1, 3)))
    return np.concatenate([rgb, alpha], axis=-1).astype(np.float32)


def _load_blender_split(root: Path, split: str, downscale: int, limit: int | None,
                        gt_protocol: str = "premultiplied") -> Split:
    transforms = root / f"transforms_{split}.json"
    camera_angle_x, frames = _read_transforms(transforms)
    if limit is not None:
        frames = frames[:limit]
    paths = [_image_path(root, frame["file_path"]) for frame in frames]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"{transforms} names {len(missing)} frame(s) whose images are missing (first: {missing[0]}): "
            f"re-extract the scene or remove those frames from the file"
        )
    images = []
    full_size = None
    for path in paths:
        image = _read_image(path)
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
