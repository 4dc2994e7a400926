"""The data layer's primitives: what every scene format builds and what every script consumes.

    Cameras, Split, Scene          the loaded scene: cameras (c2w, K, size, distortion) and images per split
    composite_on_background,       the background a split's RGBA images are composited on, and the colours a
    background_color               script draws for it
    check_scene_finite,            checks every loader runs on the Scene it builds (non-finite cameras refused,
    warn_rgb_background            the background of RGB images stated)
    read_image, downscale_area     image files to float arrays, and area-averaged reduction
    atomic_write_bytes             write a file so that no reader ever sees half of it

This module imports none of the format modules (common/data/blender.py, llff.py, ...): they import it.
Cameras follow OpenGL/Blender: x right, y up, the camera looks along -z (see common/rays.py).

Images keep their alpha channel (C = 4) so each script chooses the background it trains on with
`composite_on_background` (NeRF's protocol: white; a random colour per ray is a common regulariser).
Images without alpha (RGB, C = 3) are taken to show the object over the scene's background,
`Scene.background`: white (1.0) for Blender-layout scenes, NeRF's protocol. Training composites its
renders on that colour and scoring compares them with the images as they are, so both assume the same
background; `warn_rgb_background` says so in one warning line, because RGB images on another background
(black, say, from dropping the alpha channel of a render) then train and score several dB worse.

Every number that places a camera (the pose, the intrinsics and the near/far bounds) must be finite: JSON
readers accept NaN and Infinity, and one NaN pose used to pass the checks and make training 20-40x slower
before it died silently. `check_scene_finite` refuses them naming the file and the frame.
"""
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, warn
from common.numerics import DIVISION_EPS

SPLITS = ("train", "val", "test")


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


def read_image(path: Path) -> np.ndarray:
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file + os.replace, so a reader (or a concurrent writer) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
