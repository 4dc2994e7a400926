"""Every lesson's --quick preset on its built-in scene, one after the other: wall time of the whole command
(training, test views, video), training time, steps and the held-out PSNR/SSIM. The README's "What to expect"
rows for the quick presets come from here.

    python benchmarks/quick_presets.py                        # all five, each in a fresh runs/bench_quick/<script>
    python benchmarks/quick_presets.py --scripts 01_nerf 04_hashnerf --extra "--backend emulated"
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine as machine_info

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["01_nerf", "02_mipnerf", "03_mipnerf360", "04_hashnerf", "05_instant_neus"]


def run_quick(script: str, outdir: Path, extra: list[str]) -> dict:
    """Run `python <script>.py --quick --outdir outdir <extra>` from the repo root; read what it wrote."""
    if outdir.exists():
        shutil.rmtree(outdir)
    command = [sys.executable, f"{script}.py", "--quick", "--outdir", str(outdir), *extra]
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    shown = " ".join(["python", f"{script}.py", "--quick", "--outdir", str(outdir), *map(shlex.quote, extra)])
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-3:]
        return dict(command=shown, returncode=finished.returncode, wall_s_total=round(wall, 1), error=tail)
    metrics = json.loads((REPO / outdir / "test" / "metrics.json").read_text())
    with open(REPO / outdir / "log.csv") as handle:
        last = list(csv.DictReader(handle))[-1]
    row = dict(command=shown, returncode=0, wall_s_total=round(wall, 1), train_elapsed_s=float(last["elapsed_s"]),
               steps=int(last["step"]), test_mean_psnr=round(metrics["mean_psnr"], 3),
               test_mean_ssim=round(metrics["mean_ssim"], 4), test_views=len(metrics["views"]))
    for found in [metrics, *(json.loads(p.read_text()) for p in sorted((REPO / outdir).glob("*.json")))]:
        # 05 scores its mesh too (Chamfer distance to the exact surface)
        for key in ("chamfer", "chamfer_over_diagonal"):
            if isinstance(found, dict) and key in found:
                row[key] = round(float(found[key]), 5)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=SCRIPTS, choices=SCRIPTS)
    parser.add_argument("--extra", default="", help="more flags for every script, e.g. \"--backend emulated\"")
    parser.add_argument("--workdir", default="runs/bench_quick")
    parser.add_argument("--machine_note", default="", help="e.g. 'idle' or 'shared with other jobs'")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/quick-presets-...)")
    args = parser.parse_args(argv)
    rows = []
    for script in args.scripts:
        row = run_quick(script, Path(args.workdir) / script, shlex.split(args.extra))
        rows.append(row)
        shown = {k: v for k, v in row.items() if k != "command"}
        print(f"{script}: {shown}", flush=True)
    machine = machine_info.describe_machine("cpu")
    summary = dict(benchmark="quick presets on the built-in scenes", created=machine_info.iso_now(), machine=machine,
                   machine_note=args.machine_note, versions=machine_info.software_versions(),
                   git=machine_info.git_revision(), command=machine_info.command_line(), runs=rows)
    out = Path(args.out) if args.out else machine_info.RESULTS_DIR / (
        f"quick-presets-{machine_info.device_slug(machine)}-{machine_info.timestamp()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {out}")
    failed = [row for row in rows if row["returncode"] != 0]
    if failed:
        raise SystemExit(f"error: {len(failed)} of the quick runs failed: {failed[0]['command']}: {failed[0]['error']}")
    return summary


if __name__ == "__main__":
    main()
