import warnings

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import matplotlib
import numpy as np
import pytest
import torch

from common import video
from common.video import colorize_depth, save_image, to_uint8, write_video


def _frames(T=6, H=21, W=30):
    t = torch.linspace(0, 1, T)[:, None, None, None]
    y = torch.linspace(0, 1, H)[None, :, None, None]
    x = torch.linspace(0, 1, W)[None, None, :, None]
    return torch.cat([(x + t) % 1.0 + 0 * y, y.expand(T, H, W, 1), (0.5 * t).expand(T, H, W, 1)], dim=-1)


def test_write_video_writes_a_readable_mp4_with_every_frame(tmp_path):
    path = write_video(tmp_path / "clips" / "orbit.mp4", _frames(), fps=10)
    assert path == tmp_path / "clips" / "orbit.mp4" and path.stat().st_size > 0
    reader = imageio_v2.get_reader(path)
    try:
        assert reader.count_frames() == 6
        first = reader.get_data(0)
    finally:
        reader.close()
    assert first.shape == (22, 30, 3)  # odd height padded to even for H.264
    assert np.abs(first[:21].astype(float) - to_uint8(_frames()[0]).astype(float)).mean() < 8  # lossy codec


def test_write_video_falls_back_to_gif_with_one_warning(tmp_path, monkeypatch):
    def broken_mp4(path, frames, fps):
        raise RuntimeError("no ffmpeg here")

    monkeypatch.setattr(video, "_write_mp4", broken_mp4)
    frames = to_uint8(_frames())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_video(tmp_path / "orbit.mp4", frames, fps=10)
    assert [str(w.message) for w in caught if "gif" in str(w.message)] == [
        f"could not write {tmp_path / 'orbit.mp4'} with imageio-ffmpeg (no ffmpeg here); writing a .gif instead"
    ]
    assert len(caught) == 1
    assert path == tmp_path / "orbit.gif" and not (tmp_path / "orbit.mp4").exists()
    gif = iio.imread(path)
    assert gif.shape[0] == 6 and gif.shape[1:3] == (21, 30)


def test_save_image_round_trips_uint8_and_rounds_floats(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save_image(tmp_path / "a" / "img.png", image)
    assert np.array_equal(iio.imread(path), image)
    floats = torch.tensor([[[0.0, 0.5, 1.2], [-1.0, 1 / 255, 0.999]]])
    save_image(tmp_path / "f.png", floats)
    assert iio.imread(tmp_path / "f.png").tolist() == [[[0, 128, 255], [0, 1, 255]]]


def test_colorize_depth_maps_near_to_far_through_the_colormap():
    depth = torch.tensor([[2.0, 4.0], [6.0, 9.0], [1.0, float("inf")]])
    colours = colorize_depth(depth, near=2.0, far=6.0)
    assert isinstance(colours, torch.Tensor) and colours.shape == (3, 2, 3) and colours.dtype == torch.float32
    turbo = matplotlib.colormaps["turbo"]
    torch.testing.assert_close(colours[0, 0], torch.tensor(turbo(0.0)[:3], dtype=torch.float32))
    torch.testing.assert_close(colours[0, 1], torch.tensor(turbo(0.5)[:3], dtype=torch.float32))
    for far_pixel in (colours[1, 0], colours[1, 1], colours[2, 1]):
        torch.testing.assert_close(far_pixel, torch.tensor(turbo(1.0)[:3], dtype=torch.float32))
    torch.testing.assert_close(colours[2, 0], colours[0, 0])
    grey = colorize_depth(np.array([[2.0, 6.0]]), 2.0, 6.0, cmap="gray")
    assert isinstance(grey, np.ndarray)
    np.testing.assert_allclose(grey, [[[0, 0, 0], [1, 1, 1]]], atol=1e-6)


@pytest.mark.parametrize("value, expected", [(0.0, 0), (1.0, 255), (0.5, 128), (2.0, 255)])
def test_to_uint8_rounds_and_clips(value, expected):
    assert to_uint8(np.array([value]))[0] == expected


def test_colorize_depth_with_opacity_shows_expected_depth_and_a_flat_background():
    """A renderer's depth sum_i w_i t_i is ~0 on rays that hit nothing: those must not be drawn as "nearest".
    With opacity, the hit pixels show depth / opacity and the empty ones the flat background colour."""
    from common.video import DEPTH_BACKGROUND

    depth = np.array([[0.0, 2.4, 4.0]])  # an empty ray, a ray 60% opaque at t = 4, an opaque ray at t = 4
    opacity = np.array([[0.0, 0.6, 1.0]])
    colours = colorize_depth(depth, near=2.0, far=6.0, opacity=opacity)
    np.testing.assert_allclose(colours[0, 0], DEPTH_BACKGROUND)
    np.testing.assert_allclose(colours[0, 1], colours[0, 2], atol=1e-6)  # both at expected depth 4
    np.testing.assert_allclose(colours[0, 2], colorize_depth(np.array([[4.0]]), 2.0, 6.0)[0, 0], atol=1e-6)
    assert not np.allclose(colours[0, 2], DEPTH_BACKGROUND)
