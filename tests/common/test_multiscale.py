"""common/data/multiscale.py: the multiscale Blender layout, built and loaded, and per-scale evaluation."""
import json
import math

import numpy as np
import pytest
import torch

from common.data import builtin_scene
from common.data.load import load_scene
from common.data.multiscale import build_multiscale, evaluate_levels, levels_of, load_multiscale, sample_pixels
from common.errors import UserError


@pytest.fixture(scope="module")
def builtin_multiscale(tmp_path_factory):
    """The built-in scene's val and test splits at 4 scales (the 100 training images are left out for speed)."""
    source = builtin_scene.ensure_builtin_scene(builtin_scene.DEFAULT_ROOT)
    root = tmp_path_factory.mktemp("ms") / "builtin_multiscale"
    build_multiscale(source, root, splits=("val", "test"), progress=False)
    return source, root


def test_builtin_multiscale_sizes_intrinsics_and_loss_multipliers(builtin_multiscale):
    source, root = builtin_multiscale
    metadata = json.loads((root / "metadata.json").read_text())
    test = metadata["test"]
    n_images = len(json.loads((source / "transforms_test.json").read_text())["frames"])
    assert len(test["file_path"]) == 4 * n_images
    assert test["file_path"][:5] == ["images_test/000_d0.png", "images_test/000_d1.png", "images_test/000_d2.png",
                                     "images_test/000_d3.png", "images_test/001_d0.png"]
    assert test["label"][:4] == [0, 1, 2, 3] and test["lossmult"][:4] == [1.0, 4.0, 16.0, 64.0]
    assert test["width"][:4] == [100, 50, 25, 12] and test["height"][:4] == [100, 50, 25, 12]
    focal0 = 50 / math.tan(0.5 * builtin_scene.CAMERA_ANGLE_X)
    np.testing.assert_allclose(test["focal"][:4], [focal0, focal0 / 2, focal0 / 4, focal0 / 8])
    # pix2cam of level 3: 12 px cover the first 96 of 100 source pixels; the principal point stays at 50 / 8.
    np.testing.assert_allclose(test["pix2cam"][3], [[8 / focal0, 0, -6.25 * 8 / focal0],
                                                    [0, -8 / focal0, 6.25 * 8 / focal0], [0, 0, -1]], rtol=1e-6)
    assert test["near"][0] == 2.0 and test["far"][0] == 6.0

    scene = load_multiscale(root, splits=("val", "test"))
    levels = levels_of(scene, "test")
    assert [lv.label for lv in levels] == [0, 1, 2, 3] and [lv.lossmult for lv in levels] == [1, 4, 16, 64]
    assert [lv.split.images.shape[1] for lv in levels] == [100, 50, 25, 12]
    torch.testing.assert_close(levels[2].split.cameras.K[0], torch.tensor(
        [[focal0 / 4, 0, 12.5], [0, focal0 / 4, 12.5], [0, 0, 1]], dtype=torch.float32))
    # Level 1 is the 2x2 area average of the source (premultiplied RGBA, 8-bit rounding).
    full = load_scene("builtin", splits=("test",)).splits["test"].images[0]
    half = full.reshape(50, 2, 50, 2, 4)
    alpha = half[..., 3].mean(dim=(1, 3))
    torch.testing.assert_close(levels[1].split.images[0, ..., 3], alpha, atol=1 / 255, rtol=0)


def test_building_twice_reuses_the_cache(builtin_multiscale):
    source, root = builtin_multiscale
    stamp = (root / "metadata.json").stat().st_mtime_ns
    build_multiscale(source, root, splits=("val", "test"), progress=False)
    assert (root / "metadata.json").stat().st_mtime_ns == stamp


def test_public_layout_without_pix2cam_loads(builtin_multiscale, tmp_path):
    # The converters write pix2cam, but a metadata.json with focal only (principal point at the centre) is valid.
    _, root = builtin_multiscale
    metadata = json.loads((root / "metadata.json").read_text())
    for split in metadata.values():
        split.pop("pix2cam")
    (root / "metadata_nopix.json").write_text(json.dumps(metadata))
    target = tmp_path / "copy"
    target.mkdir()
    (target / "metadata.json").write_text(json.dumps(metadata))
    (target / "images_test").symlink_to(root / "images_test")
    (target / "images_val").symlink_to(root / "images_val")
    scene = load_scene(str(target), splits=("val", "test"))  # load_scene dispatches on metadata.json
    level = levels_of(scene, "test")[1]
    assert float(level.split.cameras.K[0, 0, 2]) == 25.0


def test_metadata_with_missing_fields_is_a_one_line_error(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"train": {"file_path": ["a.png"]}, "val": {}, "test": {}}))
    with pytest.raises(UserError, match="missing field.*cam2world"):
        load_multiscale(tmp_path)


def test_sample_pixels_draws_levels_by_pixel_count(builtin_multiscale):
    _, root = builtin_multiscale
    levels = levels_of(load_multiscale(root, splits=("val", "test")), "test")
    batch = sample_pixels(levels, 20_000, torch.Generator().manual_seed(0))
    shares = torch.stack([(batch["lossmult"] == m).float().mean() for m in (1.0, 4.0, 16.0, 64.0)])
    pixels = torch.tensor([100**2, 50**2, 25**2, 12**2], dtype=torch.float32)
    torch.testing.assert_close(shares, pixels / pixels.sum(), atol=0.015, rtol=0)
    # Each ray's target is the pixel its (K, u, v) points at: check on level 3 through its width.
    assert batch["target"].shape == (20_000, 4) and float(batch["u"].max()) < 100


def test_evaluate_levels_scores_every_scale(builtin_multiscale, tmp_path):
    _, root = builtin_multiscale
    levels = levels_of(load_multiscale(root, splits=("val", "test")), "test")
    truth = {(lv.split.cameras.height, float(lv.split.cameras.c2w[i, 0, 3])): lv.split.images[i]
             for lv in levels for i in range(len(lv.split.images))}

    def perfect_at_full_res_only(K, c2w, H, W):  # the true image at level 0, grey elsewhere
        image = truth[(H, float(c2w[0, 3]))]
        rgb = image[..., :3] * image[..., 3:] + (1 - image[..., 3:]) if H == 100 else torch.full((H, W, 3), 0.5)
        return {"rgb": rgb, "depth": torch.full((H, W), 4.0), "opacity": torch.ones(H, W)}

    metrics = evaluate_levels(perfect_at_full_res_only, levels, tmp_path, n_views=2, progress=False)
    per_scale = metrics["per_scale"]
    assert [s["label"] for s in per_scale] == [0, 1, 2, 3] and all(s["n_views"] == 2 for s in per_scale)
    assert per_scale[0]["psnr"] == math.inf and per_scale[0]["ssim"] == pytest.approx(1.0)
    assert all(s["psnr"] < 15 for s in per_scale[1:])
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "rgb_000_d3.png").is_file()
