"""How well `python -m common.capture` recovers the poses of a capture whose poses are known.

    python benchmarks/capture_poses.py --scene ../shared/data/fox [--max_size 480] [--threads 2]

Runs the capture command on the scene's images (<scene>/images, the frames its transforms.json lists), then
compares the recovered cameras with the given ones (Instant-NGP's fox: poses from COLMAP at full resolution
with its OPENCV lens): the similarity that best maps the recovered camera centres onto the given ones
(`common.capture.align_similarity`, Umeyama), then per camera the rotation error (degrees) and the position error,
in the given poses' units and as a fraction of the given cameras' mean distance from their centroid. Prints a
summary and writes benchmarks/results/capture-poses-<scene>-<device>-<time>.json with the command, the machine,
the load average before and after, the versions and the per-frame errors, and beside it (.png) the capture's
reconstruction picture.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import (RESULTS_DIR, command_line, describe_machine, device_slug, git_revision,  # noqa: E402
                                iso_now, software_versions, timestamp)
from common.capture import Config, capture, pose_errors  # noqa: E402
from common.data.ngp_transforms import read_transforms  # noqa: E402


def capture_and_compare(scene: Path, out: Path, max_size: int = 480, threads: int = 2, camera_model: str = "OPENCV",
                        overwrite: bool = False) -> dict:
    """Run the capture command on <scene>/images into `out` and compare its poses with <scene>/transforms.json.

    Returns a dict: given (the given transforms.json), given_poses ({image name: (4, 4) c2w}), meta (the
    captured transforms.json), frames (its frames that the given file also lists), rotation_deg and position
    (per compared frame, numpy, after the similarity alignment of `pose_errors`), spread (the given cameras' mean
    distance from their centroid, to express position errors as a fraction), seconds (the capture's wall-clock).
    """
    given = read_transforms(scene / "transforms.json")
    given_poses = {Path(f["file_path"]).name: torch.tensor(f["transform_matrix"], dtype=torch.float64)
                   for f in given["frames"] if (scene / f["file_path"]).is_file()}
    started = time.time()
    capture(Config(input=str(scene / "images"), out=str(out), max_size=max_size, threads=threads,
                   camera_model=camera_model, overwrite=overwrite))
    seconds = time.time() - started
    meta = json.loads((out / "transforms.json").read_text())
    frames = [f for f in meta["frames"] if f["original"] in given_poses]
    found = torch.tensor([f["transform_matrix"] for f in frames], dtype=torch.float64)
    reference = torch.stack([given_poses[f["original"]] for f in frames])
    rotation_deg, position = pose_errors(found, reference)
    centres = reference[:, :3, 3].numpy()
    spread = float(np.linalg.norm(centres - centres.mean(0), axis=-1).mean())
    return {"given": given, "given_poses": given_poses, "meta": meta, "frames": frames, "rotation_deg": rotation_deg,
            "position": position, "spread": spread, "seconds": seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="../shared/data/fox", help="a folder with transforms.json and images/")
    parser.add_argument("--max_size", type=int, default=480, help="long side of the images posed (capture's --max_size)")
    parser.add_argument("--threads", type=int, default=2, help="COLMAP's CPU threads")
    parser.add_argument("--camera_model", default="OPENCV")
    parser.add_argument("--out", default=None, help="keep the captured scene here (default: a temporary folder)")
    parser.add_argument("--machine_note", default="", help="e.g. '2 cores shared with other jobs'")
    args = parser.parse_args(argv)
    scene = Path(args.scene)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        out = Path(args.out) if args.out else Path(work) / "capture"
        compared = capture_and_compare(scene, out, max_size=args.max_size, threads=args.threads,
                                       camera_model=args.camera_model, overwrite=bool(args.out))
        picture = (out / "reconstruction.png").read_bytes()
    load_after = os.getloadavg()
    seconds, given, meta, frames = compared["seconds"], compared["given"], compared["meta"], compared["frames"]
    rotation_deg, position, spread = compared["rotation_deg"], compared["position"], compared["spread"]
    given_poses = compared["given_poses"]
    result = {
        "what": "poses recovered by python -m common.capture against the given transforms.json, after a similarity "
                "alignment of the camera centres",
        "scene": str(scene), "images": len(given_poses), "registered": meta["capture"]["registered"],
        "compared": len(frames), "seconds_capture": round(seconds, 1),
        "rotation_error_deg": {"median": float(np.median(rotation_deg)), "max": float(rotation_deg.max())},
        "position_error": {"median": float(np.median(position)), "max": float(position.max()),
                           "units": "the given transforms.json's",
                           "median_fraction_of_camera_spread": float(np.median(position) / spread),
                           "camera_spread": spread},
        "focal_found_px": [meta["fl_x"], meta["fl_y"], f"at {meta['w']}x{meta['h']}"],
        "focal_given_px_scaled": [given["fl_x"] * meta["w"] / given["w"], given["fl_y"] * meta["h"] / given["h"]],
        "per_frame": [{"image": f["original"], "rotation_deg": float(r), "position": float(p)}
                      for f, r, p in zip(frames, rotation_deg, position)],
        "load_average_before": load_before, "load_average_after": load_after, "machine_note": args.machine_note,
        "machine": describe_machine("cpu"), "software": software_versions(), "git": git_revision(),
        "command": command_line(argv), "finished": iso_now(),
    }
    try:
        import pycolmap

        result["software"]["pycolmap"] = pycolmap.__version__
    except ImportError:
        pass
    name = f"capture-poses-{scene.name}-{device_slug(result['machine'])}-{timestamp()}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / name).write_text(json.dumps(result, indent=1))
    (RESULTS_DIR / name.replace(".json", ".png")).write_bytes(picture)  # the capture's reconstruction picture
    print(f"{scene.name}: {result['registered']} of {result['images']} images registered in {seconds:.0f} s; "
          f"rotation error median {result['rotation_error_deg']['median']:.3f} deg (max "
          f"{result['rotation_error_deg']['max']:.3f}); position error median {result['position_error']['median']:.4f} "
          f"(max {result['position_error']['max']:.4f}) = {100 * result['position_error']['median_fraction_of_camera_spread']:.2f}% "
          f"of the cameras' mean distance from their centroid; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; wrote benchmarks/results/{name}")
    return result


if __name__ == "__main__":
    main()
