import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from common.metrics import mse_to_psnr, psnr, ssim


def _skimage_ssim(a, b):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=-1)


def test_psnr_closed_form():
    gt = torch.full((8, 8, 3), 0.5)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-5)  # mse = 0.01 -> 20 dB
    assert psnr(np.zeros((4, 4)), np.full((4, 4), 0.5)) == pytest.approx(-10 * math.log10(0.25))
    assert psnr(gt, gt) == math.inf
    assert mse_to_psnr(1e-3) == pytest.approx(30.0)
    torch.testing.assert_close(mse_to_psnr(torch.tensor([0.1, 0.01])), torch.tensor([10.0, 20.0]))


def test_ssim_matches_skimage_on_noisy_images():
    rng = np.random.default_rng(0)
    for shape, noise in (((64, 48, 3), 0.1), ((32, 32, 3), 0.3), ((20, 25, 4), 0.05)):
        gt = rng.random(shape)
        pred = np.clip(gt + noise * rng.standard_normal(shape), 0, 1)
        assert ssim(pred, gt) == pytest.approx(_skimage_ssim(pred, gt), abs=1e-4)
        assert ssim(torch.from_numpy(pred).float(), torch.from_numpy(gt).float()) == pytest.approx(
            _skimage_ssim(pred, gt), abs=1e-4
        )


def test_ssim_matches_skimage_on_a_smooth_image_and_a_blurred_copy():
    y, x = np.mgrid[0:60, 0:70] / 60.0
    gt = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(4 * y) * 0.5 + 0.5, x * y], axis=-1)
    pred = (gt + np.roll(gt, 1, axis=0) + np.roll(gt, 1, axis=1)) / 3
    assert ssim(pred, gt) == pytest.approx(_skimage_ssim(pred, gt), abs=1e-4)


def test_ssim_of_identical_images_is_one_and_shapes_are_checked():
    image = np.random.default_rng(2).random((16, 16, 3))
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        ssim(image, image[:, :15])
    with pytest.raises(ValueError):
        ssim(image[:8, :8], image[:8, :8])
