"""How fast a trained model renders whole images, as a function of the render chunk (rays per forward pass).

Evaluation must not take longer than training: scoring 200 test views is 200 whole images, and each pass of
`common.rays.render_image` pushes `chunk` rays (times their samples) through the networks at once. Too large
a chunk spills the activations out of the CPU's caches (or a GPU's memory); too small a one pays Python and
kernel-launch overhead per pass. This harness renders the same test views of the built-in scene with each
chunk size and reports seconds per view, for the scripts' own presets.

    python benchmarks/bench_render.py                               # 01 and 04, cpu presets, on the CPU
    python benchmarks/bench_render.py --scripts 01_nerf --chunks 512 1024 4096 --views 3

The networks are freshly initialised (rendering cost does not depend on what the weights learned for 01; for 04
it does, through the occupancy grid, so 04 is measured with a grid marked fully occupied: the worst case).
Writes benchmarks/results/render-<device>-<time>.json with the machine, versions and command.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import (RESULTS_DIR, command_line, describe_machine, device_slug, git_revision,  # noqa: E402
                                iso_now, software_versions, timestamp)
from common.cli import parse_config  # noqa: E402
from common.data.load import load_scene  # noqa: E402
from common.evaluation import render_view  # noqa: E402


def image_renderer(script, cfg, scene, device):
    """The script's own whole-image renderer (make_image_renderer), with untrained networks."""
    backend = "torch"
    if script.__name__ == "01_nerf":
        coarse, fine = script.NeRFField(cfg).to(device), script.NeRFField(cfg).to(device)
        return script.make_image_renderer(coarse, fine, scene, cfg, backend, 1.0, device)
    from kernels.ray_marching import OccupancyGrid

    aabb = scene.aabb.to(device)
    field = script.HashField(cfg, aabb).to(device)
    grid = OccupancyGrid(aabb, resolution=cfg.grid_resolution).to(device)  # every cell occupied: the worst case
    return script.make_image_renderer(field, grid, cfg, backend, 1.0, device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=["01_nerf", "04_hashnerf"])
    parser.add_argument("--preset", default="cpu", help="the scripts' preset whose networks are timed")
    parser.add_argument("--chunks", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--views", type=int, default=3, help="test views rendered per chunk size (the median is kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/render-<device>-<time>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    scene = load_scene("builtin", splits=("train", "test"))
    cams = scene.splits["test"].cameras
    machine = describe_machine(device)
    rows = []
    print(f"device: {machine['cpu_model'] if device.type == 'cpu' else machine['gpu_name']}, "
          f"{torch.get_num_threads()} torch threads; built-in scene {cams.width}x{cams.height}; preset {args.preset}")
    print(f"{'script':<12} {'chunk':>6} {'s/view':>8} {'views/s':>8}")
    for name in args.scripts:
        script = importlib.import_module(name)
        reference = None  # the image of the first chunk size: every chunk size must render the same image
        for chunk in args.chunks:
            cfg = parse_config(script.Config, ["--preset", args.preset, "--chunk", str(chunk), "--device", args.device],
                               presets=script.PRESETS)
            torch.manual_seed(0)  # the same untrained weights for every chunk size
            render_fn = image_renderer(script, cfg, scene, device)
            image = render_view(render_fn, cams.K[0], cams.c2w[0], cams.height, cams.width)["rgb"]  # also a warm-up
            reference = image if reference is None else reference
            difference = float((image - reference).abs().max())
            times = []
            for view in range(args.views):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                render_view(render_fn, cams.K[view], cams.c2w[view], cams.height, cams.width)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            rows.append(dict(script=name, chunk=chunk, seconds_per_view=round(seconds, 4), times=times,
                             max_abs_diff_vs_first_chunk=difference))
            print(f"{name:<12} {chunk:>6} {seconds:>8.3f} {1 / seconds:>8.2f}   (image differs by {difference:.1e})")
    result = dict(harness="bench_render", date=iso_now(), machine=machine, software=software_versions(),
                  git=git_revision(), **command_line(), preset=args.preset,
                  image=f"{cams.width}x{cams.height}", rows=rows)
    out = Path(args.out) if args.out else RESULTS_DIR / f"render-{device_slug(machine)}-{timestamp()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}")
    return result


if __name__ == "__main__":
    main()
