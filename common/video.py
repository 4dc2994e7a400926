"""Writing images and videos, and colouring depth maps for display.

Frames may be float in [0, 1] (tensors or numpy arrays, clipped) or uint8; (H, W), (H, W, 3) or (H, W, 4).
"""
import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch

from common.errors import DISK_ERRNOS, writing
from common.numerics import DIVISION_EPS


def to_uint8(image) -> np.ndarray:
    """Float in [0, 1] (clipped) or uint8, tensor or array, any shape -> uint8 numpy array of the same shape."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # round to nearest


def save_image(path, img) -> Path:
    """Write an image (PNG or any format imageio knows from the suffix), creating parent folders.

    img: (H, W), (H, W, 3) or (H, W, 4), float in [0, 1] or uint8. Returns the path. A full disk or a read-only
    place is one line naming the file (common.errors.writing).
    """
    import imageio.v3 as iio

    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, to_uint8(img))
    return path


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even width and height: repeat the last row / column when odd. (T, H, W, 3)."""
    T, H, W, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import imageio.v2 as imageio  # the ffmpeg writer comes with the imageio-ffmpeg package

    # macro_block_size=1: we pad to even sizes ourselves instead of letting imageio resize the frames.
    with imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            pixelformat="yuv420p") as writer:
        for frame in _pad_to_even(frames):
            writer.append_data(frame)


def _write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def write_video(path, frames, fps: int = 30) -> Path:
    """Write frames as an mp4 (H.264 through imageio-ffmpeg), or as a .gif next to it if that fails.

    frames: (T, H, W, 3) float in [0, 1] or uint8 (tensor, array or list of frames). The gif fallback (missing
    imageio-ffmpeg or ffmpeg error) emits one warning that says why; a full disk or a read-only place is not
    worked around but reported in one line naming the file (common.errors.writing). Returns the path written.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(frames, (list, tuple)):
        frames = np.stack([to_uint8(frame) for frame in frames])
    frames = to_uint8(frames)
    if frames.ndim == 3:  # grey frames
        frames = np.repeat(frames[..., None], 3, axis=-1)
    frames = frames[..., :3]
    if path.suffix.lower() != ".gif":
        try:
            with writing(path):
                _write_mp4(path, frames, fps)
            return path
        except Exception as err:  # ImportError without imageio-ffmpeg, RuntimeError/OSError from ffmpeg
            if isinstance(err.__cause__, OSError) and err.__cause__.errno in DISK_ERRNOS:
                with contextlib.suppress(OSError):  # a read-only place: nothing to remove either
                    path.unlink(missing_ok=True)
                raise  # a full disk: a gif would not fit either
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            message = f"could not write {path} with imageio-ffmpeg ({reason}); writing a .gif instead"
            warnings.warn(message, stacklevel=2)
            path.unlink(missing_ok=True)
            path = path.with_suffix(".gif")
    with writing(path):
        _write_gif(path, frames, fps)
    return path


# Pixels whose ray mostly passes through to the background get this flat colour in depth images (white: not a
# colour of the turbo map, so "nothing here" never reads as "very near").
DEPTH_BACKGROUND = (1.0, 1.0, 1.0)


def colorize_depth(depth, near: float, far: float, opacity=None, cmap: str = "turbo", min_opacity: float = 0.5,
                   background=DEPTH_BACKGROUND):
    """Colour a depth map with a matplotlib colormap: (depth - near) / (far - near), clipped to [0, 1].

    depth: (H, W) tensor or array. A renderer's depth is sum_i w_i t_i, which is ~0 where the ray hits nothing
    (all w_i ~ 0), the same value as "very near". So pass `opacity` (H, W), the rendered sum_i w_i: the map then
    shows the expected depth of what the ray hits, depth / opacity, and pixels with opacity < min_opacity get the
    flat `background` colour. Without opacity, depth is coloured as given (non-finite values get the colour of
    `far`). Returns (H, W, 3) float32 in [0, 1], a tensor on depth's device for a tensor input, else an array.
    """
    import matplotlib  # colormaps need no plotting backend

    is_tensor = isinstance(depth, torch.Tensor)
    values = depth.detach().cpu().numpy() if is_tensor else np.asarray(depth)
    values = values.astype(np.float64)
    hit = np.ones(values.shape, dtype=bool)
    if opacity is not None:
        acc = opacity.detach().cpu().numpy() if isinstance(opacity, torch.Tensor) else np.asarray(opacity)
        acc = acc.astype(np.float64).reshape(values.shape)
        hit = acc >= min_opacity
        values = values / np.maximum(acc, DIVISION_EPS)  # expected depth given that the ray stops
    values = np.nan_to_num(values, nan=far, posinf=far, neginf=near)
    normalised = np.clip((values - near) / max(far - near, DIVISION_EPS), 0.0, 1.0)
    colours = matplotlib.colormaps[cmap](normalised)[..., :3].astype(np.float32)  # drop the colormap's alpha
    colours[~hit] = np.asarray(background, dtype=np.float32)
    return torch.from_numpy(colours).to(depth.device) if is_tensor else colours
