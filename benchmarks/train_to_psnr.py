"""Held-out PSNR against wall-clock training time: run a numbered script for a time budget and record its curve.

The training script runs as a subprocess, exactly as a user would run it:

    python <script> --scene S --time_budget_s T --eval_every K --outdir D [--downscale --device --backend --preset]
                    [anything after -- on this command line]

It writes ``D/log.csv`` (columns include ``step``, ``elapsed_s``, training time with evaluation excluded, and
``val_psnr``, filled on the rows where a held-out check ran) and at the end ``D/test/metrics.json`` (``mean_psnr``,
``mean_ssim``). This harness copies the curve out as CSV (``elapsed_s, step, val_psnr``), plots PSNR against
minutes, and writes a JSON summary: final test PSNR/SSIM, PSNR at checkpoints (1, 2, 5, 10 min by default: the last
val_psnr at or before that training time, null when training did not get that far), minutes to reach target
PSNRs, iterations per second, and the machine, versions and commands.

    python benchmarks/train_to_psnr.py 04_hashnerf.py --scene lego --time_budget_s 600 --eval_every 250
    python benchmarks/train_to_psnr.py 01_nerf.py --time_budget_s 300 --eval_every 100 --device cpu -- --video_frames 0
    python benchmarks/train_to_psnr.py 04_hashnerf.py --run_dir runs/old --summarize_only   # re-read a finished run

Results: benchmarks/results/train-<script>-<scene>-<device-slug>-<date>.{json,csv,png} (or --out PREFIX).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable (the package import needs nothing)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import machine as machine_info

REPO_ROOT = machine_info.REPO_ROOT
CURVE_COLUMNS = ("elapsed_s", "step", "val_psnr")


# ----------------------------------------------------------------------------------------------------------
# Running the script
# ----------------------------------------------------------------------------------------------------------
def resolve_script(script: str) -> Path:
    """A path as given (from the current folder), else a script of the repo root ('04_hashnerf.py')."""
    for candidate in (Path(script), REPO_ROOT / script):
        if candidate.is_file():
            return candidate.resolve()
    raise SystemExit(f"error: training script {script!r} not found here nor in the repo root "
                     f"(expected 01_nerf.py, 04_hashnerf.py or a path to a script)")


def training_arguments(args, run_dir: str) -> list[str]:
    """The script's command-line arguments (the interface in this module's docstring)."""
    arguments = ["--scene", args.scene, "--time_budget_s", f"{args.time_budget_s:g}", "--eval_every",
                 str(args.eval_every), "--outdir", run_dir]
    for flag in ("downscale", "device", "backend", "preset"):
        value = getattr(args, flag)
        if value is not None:
            arguments += [f"--{flag}", str(value)]
    return arguments + args.extra


def run_training(command: list[str], log_path: Path, timeout_s: float) -> tuple[int, float, bool]:
    """Run ``command`` from the repo root, echoing its output and saving it to ``log_path``.

    Returns (exit status, wall seconds, timed out). Past ``timeout_s`` the script's process group is stopped
    (SIGTERM, then SIGKILL after 15 s): its own budget should have ended it long before.
    """
    environment = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)

        def tee() -> None:  # raw chunks, not lines: tqdm redraws its bar with \r
            while chunk := process.stdout.read1(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                log.write(chunk)

        reader = threading.Thread(target=tee, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            print(f"\ntrain_to_psnr: the script ran past --timeout_s {timeout_s:g} s: stopping it", file=sys.stderr)
            stop_process_group(process)
        except KeyboardInterrupt:
            stop_process_group(process)
            raise
        reader.join(timeout=30)
    return process.returncode, time.perf_counter() - started, timed_out


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group this harness started (the script and any worker it spawned), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------------------------------------
# Reading the run
# ----------------------------------------------------------------------------------------------------------
def as_float(text) -> float | None:
    """A CSV cell as a finite float, or None for '', 'nan', 'inf' and anything unparsable."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_curve(log_csv: Path) -> tuple[list[dict], dict]:
    """The held-out PSNR curve of a log.csv and the training progress.

    Returns (curve, progress): curve is a list of {elapsed_s, step, val_psnr} sorted by time; progress has
    final_step and train_elapsed_s (the largest step and elapsed_s in the log). A val_psnr row without its own
    elapsed_s takes that of the same step, else that of the last earlier step (evaluation time is excluded
    from elapsed_s, so the two are the same training time).
    """
    with open(log_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"step", "elapsed_s", "val_psnr"} <= set(rows[0]):
        missing = sorted({"step", "elapsed_s", "val_psnr"} - set(rows[0]))
        raise ValueError(f"{log_csv} has no column {', '.join(missing)} (columns: {', '.join(rows[0])})")
    timed_steps: dict[int, float] = {}
    for row in rows:
        step, elapsed = as_float(row.get("step")), as_float(row.get("elapsed_s"))
        if step is not None and elapsed is not None:
            timed_steps[int(step)] = max(elapsed, timed_steps.get(int(step), elapsed))
    curve = []
    for row in rows:
        step, psnr = as_float(row.get("step")), as_float(row.get("val_psnr"))
        if step is None or psnr is None:
            continue
        elapsed = as_float(row.get("elapsed_s"))
        if elapsed is None:
            earlier = [s for s in timed_steps if s <= step]
            elapsed = timed_steps[max(earlier)] if earlier else 0.0
        curve.append({"elapsed_s": elapsed, "step": int(step), "val_psnr": psnr})
    curve.sort(key=lambda point: (point["elapsed_s"], point["step"]))
    progress = {"final_step": max(timed_steps) if timed_steps else None,
                "train_elapsed_s": max(timed_steps.values()) if timed_steps else None}
    return curve, progress


def reached(train_elapsed_s: float | None, seconds: float) -> bool:
    """Did training run until ``seconds``? 1% slack (at least 1 s): a budget of T ends a step short of T."""
    return train_elapsed_s is not None and train_elapsed_s >= seconds - max(1.0, 0.01 * seconds)


def psnr_at(curve: list[dict], seconds: float) -> float | None:
    """The last held-out PSNR measured at or before ``seconds`` of training, or None."""
    before = [point["val_psnr"] for point in curve if point["elapsed_s"] <= seconds]
    return before[-1] if before else None


def minutes_to(curve: list[dict], target_db: float) -> float | None:
    """Training minutes until the held-out PSNR first reached ``target_db``, or None if it never did."""
    for point in curve:
        if point["val_psnr"] >= target_db:
            return point["elapsed_s"] / 60.0
    return None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize_run(run_dir: Path, checkpoints_min: list[float], targets_db: list[float]) -> tuple[dict, list[dict]]:
    """What the JSON reports about one finished (or stopped) run folder, and its held-out PSNR curve."""
    summary: dict = {"log_csv_found": (run_dir / "log.csv").is_file()}
    curve, progress = read_curve(run_dir / "log.csv") if summary["log_csv_found"] else ([], {})
    train_elapsed_s, final_step = progress.get("train_elapsed_s"), progress.get("final_step")
    summary.update(
        final_step=final_step,
        train_elapsed_s=train_elapsed_s,
        iters_per_s=(final_step / train_elapsed_s if final_step and train_elapsed_s else None),
        n_val_points=len(curve),
        final_val_psnr=curve[-1]["val_psnr"] if curve else None,
        best_val_psnr=max((point["val_psnr"] for point in curve), default=None),
        psnr_at_min={f"{minutes:g}": (psnr_at(curve, minutes * 60) if reached(train_elapsed_s, minutes * 60) else None)
                     for minutes in checkpoints_min},
        minutes_to_psnr={f"{target:g}": minutes_to(curve, target) for target in targets_db},
    )
    metrics = read_json(run_dir / "test" / "metrics.json")
    summary["test"] = None if metrics is None else {
        "mean_psnr": metrics.get("mean_psnr"), "mean_ssim": metrics.get("mean_ssim"),
        "n_views": len(metrics["views"]) if isinstance(metrics.get("views"), list) else metrics.get("n_views"),
        **{key: metrics[key] for key in ("backend", "device", "iters") if key in metrics}}
    summary["script_config"] = read_json(run_dir / "config.json")
    return summary, curve


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------
def write_curve_csv(path: Path, curve: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        for point in curve:
            writer.writerow({"elapsed_s": f"{point['elapsed_s']:.3f}", "step": point["step"],
                             "val_psnr": f"{point['val_psnr']:.4f}"})


def plot_curve(path: Path, curve: list[dict], summary: dict, title: str, checkpoints_min: list[float]) -> None:
    """PSNR against training minutes, the final test PSNR as a dashed line, the checkpoints as faint verticals."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for minutes in checkpoints_min:
        ax.axvline(minutes, color="0.88", linewidth=0.8, zorder=0)
    if curve:
        ax.plot([p["elapsed_s"] / 60 for p in curve], [p["val_psnr"] for p in curve], marker="o", markersize=3,
                label="held-out PSNR (val)")
    else:
        ax.text(0.5, 0.5, "no val_psnr in log.csv", transform=ax.transAxes, ha="center", va="center")
    test = summary.get("test") or {}
    if test.get("mean_psnr") is not None:
        ax.axhline(test["mean_psnr"], color="tab:red", linestyle="--", linewidth=1,
                   label=f"final test PSNR {test['mean_psnr']:.2f} dB")
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if curve or test.get("mean_psnr") is not None:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def output_prefix(args, script: Path, machine: dict) -> Path:
    if args.out:
        out = Path(args.out)
        return out.with_suffix("") if out.suffix in (".json", ".csv", ".png") else out
    name = f"train-{script.stem}-{machine_info.slug(Path(args.scene).name)}-{machine_info.device_slug(machine)}"
    return machine_info.RESULTS_DIR / f"{name}-{machine_info.timestamp()}"


def number_list(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    # Everything after the first "--" goes to the training script untouched.
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="training script: 01_nerf.py, 04_hashnerf.py (repo root) or a path")
    parser.add_argument("--scene", default="builtin", help="scene passed to the script (default builtin)")
    parser.add_argument("--time_budget_s", type=float, default=600.0,
                        help="training wall-clock budget passed to the script (default 600)")
    parser.add_argument("--eval_every", type=int, default=250,
                        help="iterations between held-out PSNR checks (default 250)")
    parser.add_argument("--downscale", type=int, default=None, help="passed to the script when given")
    parser.add_argument("--device", default=None, help="passed to the script when given (cpu | cuda | auto)")
    parser.add_argument("--backend", default=None,
                        help="passed to the script when given (torch | cuda | emulated | auto)")
    parser.add_argument("--preset", default=None, help="passed to the script when given (paper | cpu | quick | auto)")
    parser.add_argument("--checkpoints_min", type=number_list, default=[1, 2, 5, 10],
                        help="training minutes at which to report PSNR (default 1,2,5,10)")
    parser.add_argument("--targets_db", type=number_list, default=[20, 25, 30],
                        help="PSNRs whose time to reach is reported (default 20,25,30)")
    parser.add_argument("--run_dir", default=None,
                        help="the script's --outdir (default runs/benchmarks/<name of the results>)")
    parser.add_argument("--timeout_s", type=float, default=None,
                        help="hard limit for the whole subprocess, evaluation included "
                             "(default budget + max(600, 2 x budget))")
    parser.add_argument("--summarize_only", action="store_true",
                        help="do not train: summarise the run already in --run_dir")
    parser.add_argument("--out", default=None, help="prefix of the .json/.csv/.png results "
                        "(default benchmarks/results/train-<script>-<scene>-<device-slug>-<date>)")
    args = parser.parse_args(argv)
    args.extra = extra
    if args.summarize_only and not args.run_dir:
        parser.error("--summarize_only needs --run_dir (the folder of the run to read)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    script = resolve_script(args.script)
    device = args.device if args.device in ("cpu", "cuda") else ("cuda" if torch.cuda.is_available() else "cpu")
    machine = machine_info.describe_machine(device)
    prefix = output_prefix(args, script, machine)
    # The script runs from the repo root, so the default run folder is relative to it (runs/ is git-ignored);
    # a --run_dir given here is taken from the current folder and handed over as an absolute path.
    if args.run_dir:
        run_dir_text, run_dir = args.run_dir, Path(args.run_dir).resolve()
        script_arguments = training_arguments(args, str(run_dir))
    else:
        run_dir_text = str(Path("runs") / "benchmarks" / prefix.name)
        run_dir = REPO_ROOT / run_dir_text
        script_arguments = training_arguments(args, run_dir_text)
    # Recorded with the paths as the user gave them (no absolute path of this machine in a result file).
    training_command = "python " + shlex.join([args.script, *training_arguments(args, run_dir_text)])

    run = {"returncode": None, "wall_s": None, "timed_out": False}
    if not args.summarize_only:
        run_dir.mkdir(parents=True, exist_ok=True)
        timeout_s = args.timeout_s or args.time_budget_s + max(600.0, 2 * args.time_budget_s)
        print(f"train_to_psnr: {training_command}", flush=True)
        returncode, wall_s, timed_out = run_training([sys.executable, str(script), *script_arguments],
                                                     run_dir / "train_to_psnr.log", timeout_s)
        run = {"returncode": returncode, "wall_s": round(wall_s, 2), "timed_out": timed_out}

    summary, curve = summarize_run(run_dir, args.checkpoints_min, args.targets_db)
    if isinstance(summary.get("script_config"), dict) and "outdir" in summary["script_config"]:
        summary["script_config"]["outdir"] = run_dir_text  # as given, not the absolute path the script was handed
    result = {
        "benchmark": "train_to_psnr",
        "created": machine_info.iso_now(),
        **machine_info.command_line(["benchmarks/train_to_psnr.py", *argv]),
        "training_command": training_command,
        "script": script.name,
        "scene": args.scene,
        "time_budget_s": args.time_budget_s,
        "eval_every": args.eval_every,
        "backend": args.backend or "auto",
        "run_dir": run_dir_text,
        **run,
        **summary,
        "machine": machine,
        "versions": machine_info.software_versions(),
        "git": machine_info.git_revision(),
        "files": {kind: prefix.with_suffix(f".{kind}").name for kind in ("json", "csv", "png")},
    }

    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_curve_csv(prefix.with_suffix(".csv"), curve)
    title = f"{script.stem} on {args.scene} - {machine['gpu_name'] or machine['cpu_model']}"
    plot_curve(prefix.with_suffix(".png"), curve, summary, title, args.checkpoints_min)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    print_summary(result, prefix)
    if run["timed_out"] or (run["returncode"] not in (None, 0)) or not summary["log_csv_found"]:
        return 1
    return 0


def print_summary(result: dict, prefix: Path) -> None:
    def db(value):
        return "-" if value is None else f"{value:.2f}"

    test = result.get("test") or {}
    rate = result.get("iters_per_s")
    print(f"\n{result['script']} on {result['scene']}: {result['final_step']} steps in "
          f"{db(result['train_elapsed_s'])} s of training ({'-' if rate is None else f'{rate:.1f}'} it/s)")
    print(f"  test PSNR {db(test.get('mean_psnr'))} dB, SSIM "
          f"{'-' if test.get('mean_ssim') is None else format(test['mean_ssim'], '.4f')}")
    print("  PSNR at   " + "  ".join(f"{m} min: {db(v)}" for m, v in result["psnr_at_min"].items()))
    print("  minutes to " + "  ".join(f"{t} dB: {db(v)}" for t, v in result["minutes_to_psnr"].items()))
    if result.get("returncode") not in (None, 0):
        print(f"  the script exited with status {result['returncode']} (its output: "
              f"{result['run_dir']}/train_to_psnr.log)")
    print(f"saved {prefix.with_suffix('.json')}, .csv, .png")


if __name__ == "__main__":
    sys.exit(main())
