"""Pictures of finished runs, for results files and notes: frames of a run's videos, and held-out views of two
runs beside the truth.

    # frames of every video a run wrote (rows: videos, columns: frames evenly spread along each)
    python benchmarks/run_pictures.py frames runs/benchmarks/fox-03_mipnerf360 --n 6 --out frames.png
    # test views: truth, then colour and depth of each run, with each view's PSNR from the run's test/metrics.json
    python benchmarks/run_pictures.py compare runs/benchmarks/fox-01_nerf runs/benchmarks/fox-03_mipnerf360 \\
        --labels "01 NeRF" "03 mip-NeRF 360" --out views.png

Both read only what the scripts wrote (video_*.mp4; test/gt_*.png, rgb_*.png, depth_*.png, metrics.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _figure(rows: int, cols: int, cell: float = 1.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(cols * cell, rows * cell), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _show(axes, image: np.ndarray, title: str = "", ylabel: str = "") -> None:
    axes.imshow(image, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=7)
    if ylabel:
        axes.set_ylabel(ylabel, fontsize=7)


def video_frames(run: Path, out: Path, n: int) -> Path:
    """One row per video of `run` (video_*.mp4, or the .gif written where imageio-ffmpeg is missing; sorted by
    name), n frames evenly spread along each."""
    import imageio.v3 as iio

    videos = sorted([*run.glob("video_*.mp4"), *run.glob("video_*.gif")])
    if not videos:
        raise SystemExit(f"error: no video_*.mp4 in {run}: train with --video_frames > 0 (or --render_only) first")
    figure = _figure(len(videos), n)
    for r, video in enumerate(videos):
        frames = iio.imread(video)[..., :3]  # (T, H, W, 3); mp4 through imageio-ffmpeg
        picks = np.linspace(0, len(frames) - 1, n).round().astype(int)
        for c, index in enumerate(picks):
            _show(figure.add_subplot(len(videos), n, r * n + c + 1), frames[index],
                  title=f"frame {index}" if r == 0 else "", ylabel=video.stem if c == 0 else "")
    figure.tight_layout()
    figure.savefig(out)
    return out


def compare_views(runs: list[Path], labels: list[str], out: Path, views: list[int] | None) -> Path:
    """Rows: held-out views; columns: truth, then colour and depth of each run (titled with that view's PSNR)."""
    import imageio.v3 as iio

    metrics = []
    for run in runs:
        path = run / "test" / "metrics.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing: the run has not finished its test evaluation")
        metrics.append(json.loads(path.read_text()))
    # evaluate_split writes rgb_<split index>.png for the views it scored, in the order of metrics["views"].
    names = [sorted(p.name for p in (run / "test").glob("rgb_*.png")) for run in runs]
    if any(n != names[0] or len(n) != len(m["views"]) for n, m in zip(names, metrics)):
        raise SystemExit("error: the runs did not score the same test views (compare runs of the same scene and "
                         "--n_test_views)")
    views = list(range(len(names[0]))) if views is None else views
    cols = 1 + 2 * len(runs)
    figure = _figure(len(views), cols)
    for r, view in enumerate(views):
        image = names[0][view][len("rgb_"):]
        _show(figure.add_subplot(len(views), cols, r * cols + 1), iio.imread(runs[0] / "test" / f"gt_{image}"),
              title="truth" if r == 0 else "", ylabel=Path(metrics[0]["views"][view]["file"]).stem)
        for k, (run, label, m) in enumerate(zip(runs, labels, metrics)):
            psnr = m["views"][view]["psnr"]
            _show(figure.add_subplot(len(views), cols, r * cols + 2 + 2 * k),
                  iio.imread(run / "test" / f"rgb_{image}"), title=f"{label}\n{psnr:.2f} dB")
            _show(figure.add_subplot(len(views), cols, r * cols + 3 + 2 * k),
                  iio.imread(run / "test" / f"depth_{image}"), title=f"{label}, depth" if r == 0 else "")
    figure.tight_layout()
    figure.savefig(out)
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    frames = sub.add_parser("frames", help="frames of a run's videos")
    frames.add_argument("run", type=Path)
    frames.add_argument("--n", type=int, default=6, help="frames per video")
    frames.add_argument("--out", type=Path, required=True)
    compare = sub.add_parser("compare", help="held-out views of runs beside the truth")
    compare.add_argument("runs", type=Path, nargs="+")
    compare.add_argument("--labels", nargs="+", default=None, help="one per run (default: the folder names)")
    compare.add_argument("--views", type=int, nargs="+", default=None, help="indices of test views (default all)")
    compare.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.what == "frames":
        path = video_frames(args.run, args.out, args.n)
    else:
        labels = args.labels or [run.name for run in args.runs]
        if len(labels) != len(args.runs):
            parser.error(f"--labels needs one label per run ({len(args.runs)})")
        path = compare_views(args.runs, labels, args.out, args.views)
    print(path)
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
