"""Held-out evaluation (metrics and pictures) and path videos, with render functions whose answer is known."""
import json
import math
import os
import signal
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from common.data.scene import Cameras, Scene, Split
from common.evaluation import evaluate_split, render_path_videos, view_indices
from common.training import GracefulInterrupt, TrainLog


def _tiny_split(n_views=3, size=16):
    """RGBA images: the left half opaque red, the right half transparent."""
    images = torch.zeros(n_views, size, size, 4)
    images[:, :, : size // 2] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    c2w = torch.eye(4).repeat(n_views, 1, 1)
    c2w[:, 2, 3] = 4.0
    K = torch.tensor([[10.0, 0, size / 2], [0, 10.0, size / 2], [0, 0, 1]]).repeat(n_views, 1, 1)
    return Split("test", images, Cameras(c2w, K, size, size), [f"test/r_{i}.png" for i in range(n_views)])


def _half_red_renderer(red_level):
    """Renders the left half of the image red (at `red_level`) and the right half white."""

    def render_fn(rays_o, rays_d):
        n = rays_o.shape[0]
        left = rays_d[:, 0] < 0  # the cameras of _tiny_split are not rotated: x < 0 is the left half
        rgb = torch.ones(n, 3)
        rgb[left] = torch.tensor([red_level, 0.0, 0.0])
        return dict(rgb=rgb, depth=torch.full((n,), 4.0), opacity=left.float())

    render_fn.chunk = 5  # chunks that do not divide the image: the chunking must not matter
    return render_fn


def test_evaluate_split_scores_against_ground_truth_on_white_and_writes_pictures(tmp_path):
    split = _tiny_split()
    perfect = evaluate_split(_half_red_renderer(1.0), split, tmp_path, background=1.0, progress=False)
    assert perfect["mean_psnr"] > 60 and perfect["mean_ssim"] > 0.999
    # Red at 0.9 on half of the pixels, one channel of three: MSE = 0.01 / 6.
    off = evaluate_split(_half_red_renderer(0.9), split, None, background=1.0, progress=False)
    assert off["mean_psnr"] == pytest.approx(-10 * math.log10(0.01 / 6), abs=1e-3)
    # On black, the transparent half of the ground truth becomes black while the render stays white.
    on_black = evaluate_split(_half_red_renderer(1.0), split, None, background=0.0, progress=False)
    assert on_black["mean_psnr"] == pytest.approx(-10 * math.log10(0.5), abs=1e-3)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [view["file"] for view in saved["views"]] == split.files
    for index in range(3):
        for kind in ("rgb", "gt", "depth"):
            assert (tmp_path / f"{kind}_{index:03d}.png").is_file()
    gt = iio.imread(tmp_path / "gt_000.png")
    assert gt.shape[:2] == (16, 16) and tuple(gt[0, 0, :3]) == (255, 0, 0) and tuple(gt[0, 15, :3]) == (255, 255, 255)


def test_view_indices_spread_a_subset_over_the_split():
    assert view_indices(200, None) == list(range(200))
    assert view_indices(200, 4) == [0, 66, 133, 199]
    assert view_indices(3, 10) == [0, 1, 2]


def test_render_path_videos_writes_colour_and_depth(tmp_path):
    split = _tiny_split(size=16)
    scene = Scene("tiny", tmp_path, {"train": split, "test": split}, near=2.0, far=6.0,
                  aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), white_background=True)
    videos = render_path_videos(_half_red_renderer(1.0), scene, tmp_path, n_frames=4)
    assert [Path(v).stem for v in videos] == ["video_rgb", "video_depth"]
    frames = iio.imread(videos[0])
    assert frames.shape[0] == 4 and frames.shape[-1] == 3
    assert frames[0, 8, 2, 0] > 200 and frames[0, 8, 2, 1] < 60  # red on the left (codec tolerance)


def test_paused_time_does_not_count_as_training_time(tmp_path):
    import time

    log = TrainLog(tmp_path, total_steps=10, progress=False)
    with log.paused():
        time.sleep(0.3)
    assert log.elapsed() < 0.2
    log.close()


def test_graceful_interrupt_sets_a_flag_once_then_raises():
    with GracefulInterrupt(message="test") as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            np.zeros(1)  # give the interpreter a bytecode boundary to run the handler at
    assert signal.getsignal(signal.SIGINT) is not interrupt._handle  # the previous handler is back


# --- a model that learned nothing -------------------------------------------------------------------------------
def test_the_best_constant_image_is_the_mean_colour_and_an_all_white_image_scores_below_it():
    from common.metrics import constant_image_psnr, psnr

    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(16, 16, 3, generator=generator) ** 3  # (H, W, 3) mostly dark
    best = constant_image_psnr(gt)
    assert best == pytest.approx(psnr(gt.mean(dim=(0, 1)).expand_as(gt), gt))
    for colour in (torch.ones(3), torch.zeros(3), torch.full((3,), 0.3), gt.mean(dim=(0, 1)) + 0.01):
        assert psnr(colour.expand_as(gt), gt) < best


@pytest.mark.parametrize("score, stops", [(10.0, True), (9.0, True), (math.nan, True), (10.01, False),
                                          (math.inf, False)])
def test_check_model_learned_stops_a_run_no_better_than_a_constant_image(score, stops, capsys):
    from common.evaluation import DEAD_MODEL_EXIT_STATUS, check_model_learned

    metrics = {"mean_psnr": score, "constant_psnr": 10.0}
    if not stops:
        check_model_learned(metrics)
        assert capsys.readouterr().err == ""
        return
    with pytest.raises(SystemExit) as exit_info:
        check_model_learned(metrics)
    assert exit_info.value.code == DEAD_MODEL_EXIT_STATUS == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: the held-out PSNR ")
    assert ("non-finite" in err) == math.isnan(score) and "--no-dead_model_check keeps going" in err
    check_model_learned(metrics, keep_going=True)  # asked to keep going: the warning, no exit
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("kept going (--no-dead_model_check)")


def test_evaluate_split_records_the_constant_image_bar(tmp_path):
    from common.metrics import constant_image_psnr

    from common.data.scene import composite_on_background

    split = _tiny_split()
    split.images[1, :4] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # views of different content: one bar each
    metrics = evaluate_split(_half_red_renderer(1.0), split, None, background=1.0, progress=False)
    gts = [composite_on_background(image, 1.0) for image in split.images]
    assert metrics["constant_psnr"] == pytest.approx(float(np.mean([constant_image_psnr(gt) for gt in gts])))
    assert [v["constant_psnr"] for v in metrics["views"]] == pytest.approx([constant_image_psnr(gt) for gt in gts])
