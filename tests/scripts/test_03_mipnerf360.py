"""03_mipnerf360.py end to end: it learns the built-in unbounded scene and puts the sky far away; a NaN stops it."""
import importlib
import json

import pytest
import torch

NO_VIDEO = ["--video_frames", "0"]


@pytest.fixture(scope="module")
def mipnerf360_script():
    return importlib.import_module("03_mipnerf360")


@pytest.mark.slow
def test_mipnerf360_quick_preset_reaches_22db_on_the_unbounded_scene_and_puts_the_sky_far(mipnerf360_script,
                                                                                         tmp_path):
    from common.data import builtin_unbounded
    from common.cli import parse_config
    from common.data.load import load_scene
    from common.evaluation import render_view

    m = mipnerf360_script
    argv = ["--quick", "--outdir", str(tmp_path), "--device", "cpu", *NO_VIDEO]
    metrics = m.main(argv)
    # The bar: a constant colour scores ~12 dB and a blur of the sky and objects ~17 dB here.
    assert metrics["mean_psnr"] >= 22.0, metrics
    saved = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert abs(saved["mean_psnr"] - metrics["mean_psnr"]) < 1e-9
    for name in ("config.json", "log.csv", "test/rgb_000.png", "test/depth_000.png"):
        assert (tmp_path / name).is_file(), name

    # Depth: the sky (at radius 10 in the scene's units, the objects within 0.52 of the origin, cameras at 1.6)
    # must be rendered far behind the objects, as a bounded NeRF cannot.
    cfg = parse_config(m.Config, argv, presets=m.PRESETS)
    scene = load_scene("builtin_unbounded", splits=("test",))
    cams = scene.splits["test"].cameras
    state = torch.load(sorted(tmp_path.glob("ckpt_*.pt"))[-1], weights_only=False)
    prop = m.MipMLP(cfg.prop_depth, cfg.prop_width, cfg, with_rgb=False)
    nerf = m.MipMLP(cfg.nerf_depth, cfg.nerf_width, cfg, with_rgb=True)
    prop.load_state_dict(state["prop_mlp"])
    nerf.load_state_dict(state["nerf_mlp"])
    render_fn = m.make_image_renderer(prop, nerf, m.pixel_radii(cams.K[0]), cfg, torch.device("cpu"))
    depth = render_view(render_fn, cams.K[0], cams.c2w[0], cams.height, cams.width)["depth"]
    world_c2w = cams.c2w[:1].clone()
    world_c2w[:, :3, 3] /= builtin_unbounded.WORLD_SCALE
    focal = float(cams.K[0, 0, 0])
    _, true_depth = builtin_unbounded.render_unbounded_views(world_c2w, cams.height, cams.width, focal)
    true_depth = true_depth[0] * builtin_unbounded.WORLD_SCALE
    sky, objects = true_depth > 5.0, true_depth < 2.0
    assert sky.sum() > 100 and objects.sum() > 100
    assert float(depth[sky].median()) > 4.0, float(depth[sky].median())
    assert float(depth[objects].median()) < 2.5, float(depth[objects].median())


def test_mipnerf360_nan_loss_stops_the_run_naming_the_step(mipnerf360_script, tmp_path, capsys, monkeypatch):
    from common.cli import run_main

    m = mipnerf360_script
    real = m.charbonnier
    calls = []

    def nan_on_third_call(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(m, "charbonnier", nan_on_third_call)
    argv = ["--quick", "--iters", "10", "--ckpt_every", "1", "--downscale", "4", "--outdir", str(tmp_path),
            "--device", "cpu", "--n_test_views", "1", *NO_VIDEO]
    with pytest.raises(SystemExit) as exit_info:
        run_main(m.main, argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error:") and "diverged at step 3: the loss is nan" in message
    assert (tmp_path / "ckpt_000002.pt").exists() and not (tmp_path / "ckpt_000003.pt").exists()
    assert not (tmp_path / "test" / "metrics.json").exists()


LEGO = "../shared/data/nerf_synthetic"


def _lego_present():
    from pathlib import Path

    return (Path(__file__).resolve().parents[2] / LEGO / "lego" / "transforms_train.json").is_file()


@pytest.mark.slow
def test_mipnerf360_trains_the_object_centred_builtin_scene_with_the_blender_recipe(mipnerf360_script, tmp_path,
                                                                                      capsys):
    """The built-in object scene (cameras at radius 4, objects within 1.3, white background): under the 360
    recipe and its Charbonnier loss it used to render white only (9.3 dB, exit 0). --recipe auto gives it the
    Blender recipe; 150 steps at 50x50 must clear a white image by far."""
    argv = ["--quick", "--scene", "builtin", "--downscale", "2", "--iters", "150", "--n_test_views", "2",
            "--outdir", str(tmp_path), "--device", "cpu", *NO_VIDEO]
    metrics = mipnerf360_script.main(argv)
    assert "recipe blender: near 2, far 6" in capsys.readouterr().out
    # The bar: an all-white image scores ~9-10 dB here, each view's mean colour 11.3 dB; 150 steps reach 18.9.
    assert metrics["mean_psnr"] >= 16.0, metrics
    assert metrics["mean_psnr"] > metrics["constant_psnr"] + 4.0, metrics


@pytest.mark.slow
def test_the_360_recipe_on_a_white_background_scene_is_stopped_as_dead_not_silent(mipnerf360_script, tmp_path,
                                                                                   capsys):
    """What the Blender recipe avoids, forced: the 360 recipe with its Charbonnier loss on the built-in object
    scene renders the white background only. The run must not end with exit 0: check_model_learned stops it with
    exit status 3 and one warning line."""
    from common.cli import run_main
    from common.evaluation import DEAD_MODEL_EXIT_STATUS

    argv = ["--quick", "--scene", "builtin", "--downscale", "4", "--recipe", "360", "--iters", "60",
            "--n_test_views", "2", "--outdir", str(tmp_path), "--device", "cpu", *NO_VIDEO]
    with pytest.raises(SystemExit) as exit_info:
        run_main(mipnerf360_script.main, argv)
    assert exit_info.value.code == DEAD_MODEL_EXIT_STATUS
    err = capsys.readouterr().err
    assert "no better than a constant image" in err, err
    saved = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert saved["mean_psnr"] < 11.0, saved  # the white image's score: nothing learned


@pytest.mark.slow
@pytest.mark.skipif(not _lego_present(), reason=f"lego not found in {LEGO}")
def test_mipnerf360_trains_lego(mipnerf360_script, tmp_path):
    """The issue's failure on the real scene: `--quick --scene lego` rendered white only (9.7 dB). At 50x50 and
    150 steps the Blender recipe must clear the white image's score by far (20.0 dB measured; a constant 10.7)."""
    from pathlib import Path

    datadir = str(Path(__file__).resolve().parents[2] / LEGO)
    argv = ["--quick", "--scene", "lego", "--datadir", datadir, "--downscale", "8", "--iters", "150",
            "--n_test_views", "2", "--outdir", str(tmp_path), "--device", "cpu", *NO_VIDEO]
    metrics = mipnerf360_script.main(argv)
    assert metrics["mean_psnr"] >= 16.0, metrics
    assert metrics["mean_psnr"] > metrics["constant_psnr"] + 4.0, metrics
