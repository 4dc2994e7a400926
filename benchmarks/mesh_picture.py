"""A picture of a run's mesh seen from one of its training cameras, and a JSON of the run's facts beside it.

    python benchmarks/mesh_picture.py runs/05_instant_neus/dtu_scan24 --name neus-dtu_scan24-cpu --view 0 \
        --command "python 05_instant_neus.py ..." --wall_s 1234

Reads <run>/mesh.ply (world units), <run>/config.json, <run>/test/metrics.json and <run>/log.csv; loads the scene's
cameras (the run's --scene and --downscale); draws the mesh with the painter's algorithm (triangles sorted far to
near, filled with their vertex colours times a Lambert term for a light at the camera) through the chosen camera,
at `--scale` times the run's image size; writes benchmarks/results/<name>.png and <name>.json (settings, training
time, metrics, machine and command).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import RESULTS_DIR, describe_machine, git_revision, software_versions  # noqa: E402
from common.data.load import load_scene  # noqa: E402
from common.mesh import read_ply  # noqa: E402


def render_mesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, K: np.ndarray, c2w: np.ndarray,
                height: int, width: int, path: Path, title: str = "") -> Path:
    """Draw a triangle mesh through a pinhole camera (project's conventions: OpenGL axes, pixel centres at +0.5).

    vertices (V, 3) in the camera's frame of reference; faces (F, 3); colors (V, 3) uint8 or None (grey).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    cam = (vertices - c2w[:3, 3]) @ c2w[:3, :3]  # (V, 3) camera frame
    depth = -cam[:, 2]  # the camera looks along -z
    uv = np.stack([K[0, 2] + K[0, 0] * cam[:, 0] / depth, K[1, 2] - K[1, 1] * cam[:, 1] / depth], -1)  # (V, 2)
    tri = cam[faces]  # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    to_camera = -tri.mean(axis=1)
    to_camera /= np.linalg.norm(to_camera, axis=-1, keepdims=True)
    lambert = np.abs((normals * to_camera).sum(-1))  # light at the camera; both sides lit
    base = colors[faces].mean(axis=1) / 255.0 if colors is not None else np.full((len(faces), 3), 0.8)
    shade = np.clip(base * (0.25 + 0.75 * lambert[:, None]), 0, 1)
    keep = (depth[faces] > 0).all(axis=1)
    order = np.argsort(-depth[faces].mean(axis=1)[keep])  # far to near
    polygons, shade = uv[faces][keep][order], shade[keep][order]

    header = 0.4 if title else 0.0  # inches of title above the picture
    figure = Figure(figsize=(width / 100, height / 100 + header), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0, 0, 1, height / (height + 100 * header)))
    ax.add_collection(PolyCollection(polygons, facecolors=shade, edgecolors="none", antialiased=False))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_facecolor("white")
    ax.set_axis_off()
    if title:
        figure.text(0.5, 1 - 0.5 * header / (height / 100 + header), title, ha="center", va="center", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder (holds mesh.ply, config.json, test/metrics.json)")
    parser.add_argument("--name", required=True, help="file stem under benchmarks/results/")
    parser.add_argument("--view", type=int, default=0, help="training camera to look through")
    parser.add_argument("--scale", type=int, default=4, help="picture size = the run's image size times this")
    parser.add_argument("--command", default="", help="the training command, for the record")
    parser.add_argument("--wall_s", type=float, default=None, help="wall time of the whole training command")
    parser.add_argument("--note", default="", help="a sentence on the conditions (e.g. a shared machine)")
    args = parser.parse_args(argv)

    config = json.loads((args.run / "config.json").read_text())
    metrics = json.loads((args.run / "test" / "metrics.json").read_text())
    with open(args.run / "log.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    scene = load_scene(config["scene"], config.get("datadir"), downscale=config["downscale"], splits=("train",))
    cams = scene.splits["train"].cameras
    vertices, faces, colors = read_ply(args.run / "mesh.ply")
    scale_mat = getattr(scene, "scale_mat", None)
    if scale_mat is not None:  # world units -> the scene frame the cameras live in
        vertices = (vertices.astype(np.float64) - scale_mat[:3, 3]) @ np.linalg.inv(scale_mat[:3, :3]).T
    K = cams.K[args.view].double().numpy().copy()
    K[:2] *= args.scale
    title = (f"{scene.name}: mesh of {len(faces)} triangles\n{rows[-1]['step']} steps, "
             f"{float(rows[-1]['elapsed_s']):.0f} s of training; test PSNR {metrics['mean_psnr']:.2f} dB")
    png = render_mesh(vertices, faces, colors, K, cams.c2w[args.view].double().numpy(), cams.height * args.scale,
                      cams.width * args.scale, RESULTS_DIR / f"{args.name}.png", title)
    facts = dict(command=args.command, wall_s=args.wall_s, note=args.note,
                 training_steps=int(rows[-1]["step"]), training_s=float(rows[-1]["elapsed_s"]),
                 settings={k: v for k, v in config.items() if k not in ("outdir", "cli_options")},
                 metrics={k: v for k, v in metrics.items() if k not in ("views", "mesh")},
                 picture=png.name, view=args.view, machine=describe_machine("cpu"), software=software_versions(),
                 git=git_revision())
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    print(f"wrote {png} and {args.name}.json")


if __name__ == "__main__":
    main()
