"""The data layer's primitives: what every scene format builds and what every script consumes.

    Cameras, Split, Scene          the loaded scene: cameras (c2w, K, size, distortion) and images per split
    composite_on_background,       the background a split's RGBA images are composited on, and the colours a
    background_color               script draws for it
    normalise_poses,               structure-from-motion poses moved into a renderer's frame (focus at the origin,
    camera_layout                  up +z, a stated radius), and whether cameras surround the scene or face forward
    check_scene,                   checks every Scene gets when it is built, whatever format built it (a camera
                                   no renderer can use refused naming the file and the frame), and the
    warn_rgb_background            warning every loader gives for RGB images (their background stated)
    check_matrix                   the same test of one matrix, for a format to run on its raw input before
                                   its own arithmetic (DTU decomposes projections, LLFF recentres poses)
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
before it died silently; a NaN in a *test* pose trained for its whole budget and then reported PSNR nan with
exit status 0. A pose must also be invertible and the intrinsics must make an image (a positive focal length,
at least one pixel). `check_scene` refuses each of these naming the file and the frame; `Scene` runs it when it
is built (`__post_init__`), so a new format is checked by constructing its Scene, on every split.
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
    # split -> the file its cameras were read from (transforms_test.json, cameras_sphere.npz, ...), for the
    # messages of check_scene; a format that does not give one is named by its folder.
    camera_files: dict = field(default_factory=dict, repr=False)
    # "object", "forward-facing" or "unbounded", set by the dispatcher (common/data/load.py, LAYOUTS)
    layout: str = field(default="", repr=False)

    def __post_init__(self):
        check_scene(self)  # every format's Scene, every split: by construction

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


# A camera-to-world rotation block whose smallest singular value is below this fraction of its largest is
# singular: its rays would all lie in a plane (or on a line), and inverting it (recentring, world-to-camera) fails.
SINGULAR_POSE_RATIO = 1e-6


def check_matrix(matrix, what: str) -> None:
    """One-line UserError if a camera matrix read from a file holds a NaN or an Inf, or if its leading 3x3 block
    (the rotation of a pose, K R of a projection) is singular: its smallest singular value below
    SINGULAR_POSE_RATIO times its largest. `what` names the file and the entry, e.g.
    "data/scan24/cameras_sphere.npz: world_mat_3 (image/003.png)". For a format to run on its raw input before
    its own arithmetic turns the defect into a LinAlgError or NaN everywhere."""
    matrix = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    if not bool(torch.isfinite(matrix).all()):
        raise UserError(f"{what} holds NaN or Infinity: fix or re-download the file")
    singular_values = torch.linalg.svdvals(matrix[:3, :3])
    if not float(singular_values[-1]) > SINGULAR_POSE_RATIO * float(singular_values[0]):
        raise UserError(f"{what} is singular (it has no inverse, so it places no camera): fix or re-download "
                        f"the file")


def _camera_problems(cams: Cameras) -> list:
    """For each camera of `cams`, what makes it unusable, or None (all cameras at once: one SVD batch)."""
    finite = torch.isfinite(cams.c2w).flatten(1).all(1) & torch.isfinite(cams.K).flatten(1).all(1)  # (N,)
    eye = torch.eye(3, dtype=torch.float64)
    rotations = torch.where(finite[:, None, None], cams.c2w[:, :3, :3].double(), eye)  # (N, 3, 3)
    singular_values = torch.linalg.svdvals(rotations)  # (N, 3), descending
    singular = ~(singular_values[:, -1] > SINGULAR_POSE_RATIO * singular_values[:, 0])  # (N,)
    problems = []
    for i in range(len(cams.c2w)):
        fx, fy = float(cams.K[i, 0, 0]), float(cams.K[i, 1, 1])
        if not bool(finite[i]):
            problems.append("has a non-finite camera (NaN or Inf in its pose or intrinsics)")
        elif bool(singular[i]):
            problems.append("has a singular pose (its rotation block has no inverse, so its rays span no image)")
        elif not (fx > 0 and fy > 0):
            problems.append(f"has intrinsics that make no image (focal lengths fx = {fx:g}, fy = {fy:g} pixels; "
                            f"both must be > 0)")
        else:
            problems.append(None)
    return problems


def check_scene(scene: Scene) -> None:
    """Refuse, with a one-line UserError naming the file (Scene.camera_files, else the folder) and the frame, a
    scene that no renderer can use:
      * near/far bounds that are not finite, negative, or not near < far;
      * a split (or a level of a multiscale scene: `scene.levels`) with no frame, with a number of cameras that
        is not its number of images, or whose images (at least 1x1 pixel) are not the cameras' size;
      * a camera with a NaN or an Inf in its pose or intrinsics, a singular pose (rotation block), or focal
        lengths that are not positive.
    Scene runs it when built; call it again after changing a Scene in code."""
    for bound, value in (("near", scene.near), ("far", scene.far)):
        if not math.isfinite(value):
            raise UserError(f"the {bound} bound of scene {scene.root} is {value}: it must be a finite depth; fix "
                            f"the scene's bounds")
    if not 0 <= scene.near < scene.far:
        raise UserError(f"scene {scene.root} has near = {scene.near:g}, far = {scene.far:g}: the bounds need "
                        f"0 <= near < far; fix the scene's bounds")
    levels = [level.split for split_levels in (getattr(scene, "levels", None) or {}).values()
              for level in split_levels]
    for split in [*scene.splits.values(), *levels]:
        where = scene.camera_files.get(split.name) or f"split {split.name!r} of {scene.root}"
        cams, images = split.cameras, split.images
        if len(images) == 0:
            raise UserError(f"{where}: the {split.name} split has no frame; add frames")
        if not (len(cams.c2w) == len(cams.K) == len(images)):
            raise UserError(f"{where}: {len(images)} images but {len(cams.c2w)} poses and {len(cams.K)} intrinsics "
                            f"in the {split.name} split; they must match one to one")
        if not (cams.height >= 1 and cams.width >= 1) or tuple(images.shape[1:3]) != (cams.height, cams.width):
            raise UserError(f"{where}: the {split.name} cameras make {cams.width}x{cams.height} images but the images "
                            f"are {images.shape[2]}x{images.shape[1]} pixels (a --downscale larger than the images?); "
                            f"fix the scene or lower --downscale")
        for i, problem in enumerate(_camera_problems(cams)):
            if problem is not None:
                name = split.files[i] if i < len(split.files) else f"frame {i}"
                raise UserError(f"{where}: frame {i} ({name}) of the {split.name} split {problem}; fix or "
                                f"re-download the scene")


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


# Below this smallest eigenvalue of (1/N) sum_i (I - d_i d_i^T) the cameras' optical axes are too close to
# parallel (a forward-facing capture) to meet near one point: the value is the mean squared sine of the angle
# between the axes and the eigenvector, and 0.02 is about 8 degrees of spread.
PARALLEL_AXES = 0.02


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rotation (3, 3) float64 that turns unit vector a onto unit vector b by the shortest arc (Rodrigues'
    formula R = I + [v]x + [v]x^2 / (1 + c) with v = a x b, c = a . b; a half turn about a perpendicular axis
    when a = -b)."""
    a, b = a.double() / a.norm(), b.double() / b.norm()
    v, c = torch.linalg.cross(a, b), float(a @ b)
    if c < -1 + 1e-9:  # opposite: turn half way round any axis perpendicular to a
        axis = torch.linalg.cross(a, torch.eye(3, dtype=torch.float64)[int(a.abs().argmin())])
        axis = axis / axis.norm()
        return 2 * torch.outer(axis, axis) - torch.eye(3, dtype=torch.float64)
    vx = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + vx + vx @ vx / (1 + c)


def axes_spread(c2w: torch.Tensor) -> float:
    """How far the cameras' optical axes are from parallel: the smallest eigenvalue of (1/N) sum_i (I - d_i d_i^T)
    over the unit viewing directions d_i (0 when all are parallel; see PARALLEL_AXES). c2w: (N, 4, 4) OpenGL."""
    forward = -c2w[:, :3, 2].double()
    forward = forward / forward.norm(dim=-1, keepdim=True)
    projectors = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]
    return float(torch.linalg.eigvalsh(projectors.mean(0))[0])


def camera_layout(c2w: torch.Tensor) -> str:
    """"forward-facing" when the cameras all look about the same way (axes_spread below PARALLEL_AXES: LLFF's
    captures), else "surrounding" (cameras around the scene, e.g. a walk around an object)."""
    return "forward-facing" if axes_spread(c2w) < PARALLEL_AXES else "surrounding"


def normalise_poses(c2w: torch.Tensor, radius: float, points: torch.Tensor | None = None):
    """Put a reconstruction (any scale, origin and orientation: what structure from motion returns) in a frame a
    renderer can use: the cameras' focus at the origin, their mean up vector along +z, and the cameras at a mean
    distance `radius` from the focus.

    c2w: (N, 4, 4) OpenGL camera-to-world; points: optional (P, 3) scene points (the sparse cloud), used only for
    forward-facing captures (below). Returns (c2w' (N, 4, 4) float32, T (4, 4) float64) with T = [s R | t] the
    similarity x' = s R x + t that maps old world points to new ones (apply it to the points too).

    The focus is the point closest to every optical axis in the least-squares sense: with o_i the centres and
    d_i the unit viewing directions, minimise sum_i |(I - d_i d_i^T)(p - o_i)|^2, i.e. solve
    (sum_i P_i) p = sum_i P_i o_i with P_i = I - d_i d_i^T. For an orbit around an object it is the object's
    centre. When the axes are nearly parallel (forward-facing, smallest eigenvalue of the mean P_i below
    PARALLEL_AXES) or the point lies behind most cameras, no such point exists: the focus is then the mean
    centre moved along the mean viewing direction by the median depth of `points` in front of the cameras (or
    by the cameras' spread when no points are given)."""
    c2w = c2w.double()
    centres, forward = c2w[:, :3, 3], -c2w[:, :3, 2]  # (N, 3) each; OpenGL cameras look along -z
    forward = forward / forward.norm(dim=-1, keepdim=True)
    projectors = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]  # (N, 3, 3)
    system = projectors.mean(0)
    focus = None
    if camera_layout(c2w) == "surrounding":
        focus = torch.linalg.solve(system, (projectors @ centres[:, :, None]).mean(0))[:, 0]
        if float((((focus - centres) * forward).sum(-1) > 0).double().mean()) < 0.5:
            focus = None  # behind most cameras (they look outwards): not a focus
    if focus is None:
        mean_forward = forward.mean(0) / forward.mean(0).norm()
        depth = float(centres.std(0).norm()) if len(centres) > 1 else 1.0
        if points is not None and len(points):
            depths = (points.double()[:, None, :] - centres[None]) @ mean_forward  # (P, N) depth along the axis
            in_front = depths[depths > 0]
            if len(in_front):
                depth = float(in_front.median())
        focus = centres.mean(0) + depth * mean_forward
    up = c2w[:, :3, 1].mean(0)  # OpenGL: camera y is up
    rotation = rotation_between(up, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    distance = float((centres - focus).norm(dim=-1).mean())
    scale = radius / distance if distance > 0 else 1.0
    similarity = torch.eye(4, dtype=torch.float64)
    similarity[:3, :3] = scale * rotation
    similarity[:3, 3] = -scale * rotation @ focus
    out = c2w.clone()
    out[:, :3, :3] = rotation @ c2w[:, :3, :3]
    out[:, :3, 3] = (similarity[:3, :3] @ centres.T).T + similarity[:3, 3]
    return out.float(), similarity
