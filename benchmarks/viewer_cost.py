"""What the live viewer (common/viewer.py) costs: training speed of `01_nerf.py --quick` without --viewer, with
--viewer and no browser, and with a browser connected (headless Chromium, the camera left still, so the view is
rendered again every REFRESH_S seconds as the model learns); and the frame time of a trained quick model at
several resolutions. The README's "See it in 3D" figures come from here.

    python benchmarks/viewer_cost.py                               # 150 steps per run, 3 rounds, frames of 01
    python benchmarks/viewer_cost.py --steps 300 --rounds 5 --frame_run runs/notebooks/01_nerf
    python benchmarks/viewer_cost.py --screenshot_only benchmarks/results/viewer-01_nerf.png   # the README picture

The viewer's own time in the loop (Viewer.poll: status text, and frames when a browser is connected) is also
timed directly, per step, which a shared machine's noise does not blur. Runs alternate (off, open, browser, off, open, ...) so that a change of load on a shared machine hits every
condition alike; seconds per step are the wall time between the first and the last step of a run divided by the
steps between them (the viewer's frames included), and each condition reports the median over rounds. The load
average before and after each run is stored beside it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import machine as machine_info
from common import training
from common.viewer import REFRESH_S, frame_intrinsics, view_renderer_from_rays

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed_training(steps: int, outdir: Path, viewer: str) -> dict:
    """One `01_nerf.py --quick --iters steps` run in this process; viewer: off | open | browser. Returns the
    seconds per step and the viewer's frame count."""
    nerf = importlib.import_module("01_nerf")
    argv = ["--quick", "--iters", str(steps), "--outdir", str(outdir), "--video_frames", "0", "--n_test_views", "1",
            "--ckpt_every", str(steps), "--device", "cpu", "--no-dead_model_check"]
    port = free_port()
    if viewer != "off":
        argv += ["--viewer", "--viewer_port", str(port)]
    stamps, runs, polls = [], [], []
    real_log, real_enter = training.TrainingRun.log, training.TrainingRun.__enter__
    from common import viewer as viewer_module

    real_poll = viewer_module.Viewer.poll

    def poll(self, *args, **kwargs):  # the viewer's whole share of the loop: its time per step
        start = time.perf_counter()
        try:
            return real_poll(self, *args, **kwargs)
        finally:
            polls.append(time.perf_counter() - start)

    def log(self, step, *args, **kwargs):
        stamps.append(time.perf_counter())
        return real_log(self, step, *args, **kwargs)

    def enter(self):
        runs.append(self)
        return real_enter(self)

    browser = None
    if viewer == "browser":
        from tests.browser import Browser

        browser = Browser()

        def connect():  # once the viewer answers, open its page
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            browser.open(f"http://127.0.0.1:{port}")

        threading.Thread(target=connect, daemon=True).start()
    training.TrainingRun.log, training.TrainingRun.__enter__ = log, enter
    viewer_module.Viewer.poll = poll
    load_before = os.getloadavg()
    try:
        nerf.main(argv)
    finally:
        training.TrainingRun.log, training.TrainingRun.__enter__ = real_log, real_enter
        viewer_module.Viewer.poll = real_poll
        if browser is not None:
            browser.close()
    viewer_obj = runs[0].viewer if runs else None
    frames = viewer_obj.frames_rendered if viewer_obj is not None else 0
    # skip the first 10 steps (allocations, the browser still loading the page)
    s_per_step = (stamps[-1] - stamps[10]) / (len(stamps) - 11)
    return dict(viewer=viewer, s_per_step=round(s_per_step, 4), frames=frames,
                viewer_s_per_step=round(sum(polls) / max(len(polls), 1), 6), load_before=load_before,
                load_after=os.getloadavg())


def load_run(run_dir: Path):
    """(the scene, a view renderer) of a trained 01_nerf run folder, rebuilt from its latest checkpoint."""
    from common.checkpoints import load_latest_valid_checkpoint
    from common.data.load import load_scene

    nerf = importlib.import_module("01_nerf")
    _, state = load_latest_valid_checkpoint(run_dir)
    cfg = nerf.Config(**state["config"])
    coarse, fine = nerf.NeRFField(cfg), nerf.NeRFField(cfg)
    coarse.load_state_dict(state["coarse"])
    fine.load_state_dict(state["fine"])
    scene = load_scene(cfg.scene, cfg.datadir, downscale=cfg.downscale)
    return scene, view_renderer_from_rays(
        nerf.make_image_renderer(coarse, fine, scene, cfg, "torch", scene.background, torch.device("cpu")))


def screenshot(run_dir: Path, png: Path, resolution: int = 128) -> None:
    """The viewer on a trained run, in headless Chromium (tests/browser.py), seen from behind training camera 0
    at `resolution` pixels: the page as a student sees it, saved to png."""
    from PIL import Image

    from common.viewer import Viewer
    from tests.browser import Browser

    scene, render_view = load_run(run_dir)
    viewer = Viewer(render_view, scene, host="127.0.0.1", port=free_port(), title="01_nerf · builtin",
                    resolution=resolution)
    try:
        with Browser(width=1000, height=640) as browser:
            page = browser.open(f"http://127.0.0.1:{viewer.port}")
            deadline = time.monotonic() + 120
            while viewer.frames_rendered < 1 and time.monotonic() < deadline:
                viewer.poll()
                time.sleep(0.05)
            time.sleep(2.0)  # the frame travels and is drawn
            page.evaluate("document.querySelectorAll('.mantine-Notification-root button').forEach(b => b.click())")
            time.sleep(0.5)
            Image.fromarray(page.screenshot()).save(png)
    finally:
        viewer.close()
    print(f"-> {png} (frame {1000 * viewer.last_frame_s:.0f} ms at {resolution} px)")


def frame_times(run_dir: Path, resolutions, repeats: int = 3) -> list[dict]:
    """Median seconds to render one frame of the run's model (a 4:3 view from training camera 0), per long side."""
    scene, render_view = load_run(run_dir)
    c2w = scene.splits["train"].cameras.c2w[0]
    rows = []
    for long_side in resolutions:
        K, H, W = frame_intrinsics(0.69, 4 / 3, long_side)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                render_view(K, c2w, H, W)
            times.append(time.perf_counter() - start)
        rows.append(dict(width=W, height=H, median_s=round(statistics.median(times), 4),
                         load=os.getloadavg()))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frame_run", default="runs/notebooks/01_nerf",
                        help="a trained 01_nerf run folder for the frame times (notebook 01 makes this one)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--machine_note", default="")
    parser.add_argument("--out", default=None)
    parser.add_argument("--screenshot_only", default=None, help="save the viewer's page on --frame_run to this PNG")
    args = parser.parse_args(argv)
    if args.screenshot_only:
        return screenshot(REPO / args.frame_run, Path(args.screenshot_only))

    work = Path(tempfile.mkdtemp(prefix="viewer-cost-"))
    runs = []
    try:
        for round_ in range(args.rounds):
            for viewer in ("off", "open", "browser"):
                row = timed_training(args.steps, work / f"{viewer}-{round_}", viewer)
                print(row, flush=True)
                runs.append(dict(round=round_, **row))
                shutil.rmtree(work / f"{viewer}-{round_}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for viewer in ("off", "open", "browser"):
        values = [r["s_per_step"] for r in runs if r["viewer"] == viewer]
        summary[viewer] = dict(median_s_per_step=round(statistics.median(values), 4), all=values,
                               viewer_s_per_step=[r["viewer_s_per_step"] for r in runs if r["viewer"] == viewer])
    base = summary["off"]["median_s_per_step"]
    for viewer in ("open", "browser"):
        summary[viewer]["vs_off_percent"] = round(100 * (summary[viewer]["median_s_per_step"] / base - 1), 1)
    frames = frame_times(REPO / args.frame_run, args.resolutions) if (REPO / args.frame_run).is_dir() else []
    machine = machine_info.describe_machine("cpu")
    result = dict(benchmark="viewer cost: 01_nerf --quick training speed without/with --viewer, frame times",
                  created=machine_info.iso_now(), machine=machine, machine_note=args.machine_note,
                  versions=machine_info.software_versions(), git=machine_info.git_revision(),
                  command=machine_info.command_line(), steps=args.steps, refresh_s=REFRESH_S,
                  training=summary, runs=runs, frame_run=args.frame_run, frame_times=frames)
    out = Path(args.out) if args.out else machine_info.RESULTS_DIR / (
        f"viewer-cost-{machine_info.device_slug(machine)}-{machine_info.timestamp()}.json")
    training.write_json(out, result)
    print(f"training s/step (median): " + ", ".join(f"{k} {v['median_s_per_step']}" for k, v in summary.items()))
    print("frames: " + ", ".join(f"{f['width']}x{f['height']} {1000 * f['median_s']:.0f} ms" for f in frames))
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
