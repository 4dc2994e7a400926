"""NeRF (01) against mip-NeRF (02) on multiscale Blender, in a comparison that separates what each change does.

mip-NeRF's claim (Barron et al. 2021, Table 1): trained on every scale, a model that reasons about the pixel
footprint renders well at every scale, where NeRF does not. The paper trains *both* NeRF and mip-NeRF on all four
scales with the area loss multipliers. 01_nerf.py cannot train on several image sizes, so this benchmark runs
three arms, each for the same number of steps of the same preset:
  * 01 single: 01_nerf.py on the full-size level only;
  * 02 single: 02_mipnerf.py on the same full-size images (no --multiscale): against 01 single, the only change is
    cones + IPE instead of rays + PE; both are tested at sizes they never saw;
  * 02 multi: 02_mipnerf.py --multiscale on all four scales (1, 1/2, 1/4, 1/8) with the area-ratio loss
    multipliers, the paper's training data; against 02 single, the only change is the training data.
(What the paper's table also has, NeRF trained on all scales, is missing here: 01 single against 02 multi mixes
the two changes and is not a fair comparison of the methods.) Every arm is scored on the same views of the
multiscale test set at each scale (01 through its own renderer with each level's intrinsics:
`nerf01_view_renderer`). Results: a JSON (per-scale PSNR/SSIM, steps, command, machine) and a bar chart in
benchmarks/results/. Fixed steps, not a fixed time, so that load on a shared machine does not favour an arm.

    python benchmarks/multiscale_01_vs_02.py --scene lego --datadir ../shared/data/nerf_synthetic/lego \\
        --downscale 4 --iters 800 --n_views 10
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import machine as machine_info
from common.checkpoints import latest_checkpoint, load_checkpoint
from common.evaluation import render_view
from common.data.multiscale import evaluate_levels, levels_of, load_multiscale


def nerf01_view_renderer(outdir, device: str = "cpu", backend: str = "torch"):
    """render_view_fn(K, c2w, H, W) for the 01_nerf model of the latest checkpoint in `outdir`: 01 renders
    whatever camera it is given (one ray through each pixel centre), so it can be scored at any scale."""
    nerf = importlib.import_module("01_nerf")
    state = load_checkpoint(latest_checkpoint(outdir), map_location=device)
    known = {f.name for f in nerf.Config.__dataclass_fields__.values() if f.init}
    cfg = nerf.Config(**{k: v for k, v in state["config"].items() if k in known})
    coarse, fine = nerf.NeRFField(cfg).to(device), nerf.NeRFField(cfg).to(device)
    coarse.load_state_dict(state["coarse"])
    fine.load_state_dict(state["fine"])

    class _Scene:  # what make_image_renderer reads from a scene
        near, far = 2.0, 6.0

    render_fn = nerf.make_image_renderer(coarse, fine, _Scene, cfg, backend, 1.0, torch.device(device))
    return lambda K, c2w, H, W: render_view(render_fn, K, c2w, H, W)


def mipnerf02_view_renderer(outdir, device: str = "cpu", backend: str = "torch"):
    """render_view_fn(K, c2w, H, W) for the 02_mipnerf model of the latest checkpoint in `outdir`."""
    mip = importlib.import_module("02_mipnerf")
    state = load_checkpoint(latest_checkpoint(outdir), map_location=device)
    known = {f.name for f in mip.Config.__dataclass_fields__.values() if f.init}
    cfg = mip.Config(**{k: v for k, v in state["config"].items() if k in known})
    mlp = mip.MipMLP(cfg).to(device)
    mlp.load_state_dict(state["mlp"])

    class _Scene:
        near, far, white_background = 2.0, 6.0, True

    return mip.make_view_renderer(mlp, _Scene, cfg, backend, "cone", torch.device(device))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="lego")
    parser.add_argument("--datadir", default=None)
    parser.add_argument("--downscale", type=int, default=4, help="level 0 = the source reduced by this (400 px -> 100)")
    parser.add_argument("--iters", type=int, default=800, help="training steps of each arm")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--n_views", type=int, default=20, help="test views per scale (the same for both)")
    parser.add_argument("--workdir", default="runs/bench_multiscale")
    parser.add_argument("--machine_note", default="", help="e.g. 'shared with other jobs' (recorded in the JSON)")
    parser.add_argument("--out", default=None, help="results prefix (default benchmarks/results/multiscale-01-vs-02-...)")
    parser.add_argument("--picture_only", action="store_true",
                        help="train nothing: draw <out>-views.png from the test renders already in --workdir")
    parser.add_argument("--picture_views", type=int, nargs="+", default=[0, 105],
                        help="test views drawn in <out>-views.png")
    args = parser.parse_args(argv)
    if args.picture_only:
        if not args.out:
            parser.error("--picture_only needs --out (the prefix of the results it belongs to)")
        print(views_picture(Path(args.workdir), Path(f"{args.out}-views.png"), args.picture_views))
        return {}
    nerf, mip = importlib.import_module("01_nerf"), importlib.import_module("02_mipnerf")
    work = Path(args.workdir)
    common = ["--scene", args.scene, "--downscale", str(args.downscale), "--preset", args.preset, "--iters",
              str(args.iters), "--video_frames", "0", "--n_test_views", "1", "--device", "cpu",
              "--backend", "torch"] + (["--datadir", args.datadir] if args.datadir else [])
    runs = {}
    for name, module, extra in (("02_mipnerf", mip, ["--multiscale", "--multiscale_dir", str(work / "multiscale")]),
                                ("02_mipnerf_single", mip, []), ("01_nerf", nerf, [])):
        outdir = work / name
        start = time.perf_counter()
        module.main(common + extra + ["--outdir", str(outdir)])
        steps = load_checkpoint(latest_checkpoint(outdir))["step"]
        runs[name] = dict(outdir=str(outdir), steps=int(steps), wall_s=round(time.perf_counter() - start, 1))

    test_levels = levels_of(load_multiscale(work / "multiscale", splits=("test",)), "test")
    results = {}
    for name, make in (("01_nerf", nerf01_view_renderer), ("02_mipnerf_single", mipnerf02_view_renderer),
                       ("02_mipnerf", mipnerf02_view_renderer)):
        metrics = evaluate_levels(make(work / name), test_levels, work / name / "multiscale_test", n_views=args.n_views,
                                  near=2.0, far=6.0)
        results[name] = dict(mean_psnr=metrics["mean_psnr"], mean_ssim=metrics["mean_ssim"],
                             per_scale=metrics["per_scale"], **runs[name])
        print(name, " ".join(f"1/{2 ** s['label']}: {s['psnr']:.2f} dB" for s in metrics["per_scale"]))

    machine = machine_info.describe_machine("cpu")
    summary = dict(benchmark="multiscale_01_vs_02", scene=args.scene, downscale=args.downscale,
                   level_sizes=[s["width"] for s in results["02_mipnerf"]["per_scale"]], iters_each=args.iters,
                   preset=args.preset, n_views_per_scale=args.n_views, results=results, machine=machine,
                   machine_note=args.machine_note,
                   software=machine_info.software_versions(), git=machine_info.git_revision(),
                   command=machine_info.command_line(), date=machine_info.iso_now())
    prefix = Path(args.out) if args.out else machine_info.RESULTS_DIR / (
        f"multiscale-01-vs-02-{args.scene}-{machine_info.device_slug(machine)}-{machine_info.timestamp()}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, Path(f"{prefix}.png"), f"{args.scene}, {args.iters} steps each, {machine['cpu_model']}" + (f" ({args.machine_note})" if args.machine_note else ""))
    views_picture(work, Path(f"{prefix}-views.png"), args.picture_views)
    print(f"results: {prefix}.json, {prefix}.png, {prefix}-views.png")
    return summary


def plot(results: dict, path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    labels = {"01_nerf": "01 NeRF, full size only", "02_mipnerf_single": "02 mip-NeRF, full size only",
              "02_mipnerf": "02 mip-NeRF, all 4 scales"}
    for offset, (name, result) in zip((-0.27, 0.0, 0.27), results.items()):
        scales = result["per_scale"]
        axes.bar([i + offset for i in range(len(scales))], [s["psnr"] for s in scales], width=0.27,
                 label=labels.get(name, name))
    axes.set_xticks(range(4), ["1", "1/2", "1/4", "1/8"])
    axes.set_xlabel("test scale")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title(title, fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def views_picture(work: Path, path: Path, views: list[int]) -> Path:
    """Truth and the three arms side by side at every scale for a few test views, each image enlarged to the size of the
    largest with nearest-neighbour pixels (so the small scales show their pixels, and 01's aliasing)."""
    import imageio.v3 as iio
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [(view, label, work / name / "multiscale_test" / f"{prefix}_{view:03d}")
            for view in views for label, name, prefix in (("truth", "02_mipnerf", "gt"), ("01 NeRF\nfull size", "01_nerf", "rgb"),
                                                          ("02 mip-NeRF\nfull size", "02_mipnerf_single", "rgb"),
                                                          ("02 mip-NeRF\n4 scales", "02_mipnerf", "rgb"))]
    figure = Figure(figsize=(8, 2.0 * len(rows)), dpi=100)
    FigureCanvasAgg(figure)
    for r, (view, label, stem) in enumerate(rows):
        for scale in range(4):
            axes = figure.add_subplot(len(rows), 4, r * 4 + scale + 1)
            image_path = Path(f"{stem}_d{scale}.png")
            if not image_path.is_file():
                raise SystemExit(f"error: {image_path} is missing: run the benchmark first (or pass views it scored "
                                 f"with --picture_views)")
            axes.imshow(iio.imread(image_path), interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(["1", "1/2", "1/4", "1/8"][scale])
            if scale == 0:
                axes.set_ylabel(f"{label}\nview {view}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


if __name__ == "__main__":
    main()
