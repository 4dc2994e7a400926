"""The family side by side: methods x scenes x seeds, each for the same training time (or steps), scored on the same
held-out views; one table (Markdown, CSV, JSON) and one plot of held-out PSNR against training time per scene.

    python -m benchmarks.compare --methods 01 04 --scenes builtin --time_budget_s 120 --jobs 2
    python -m benchmarks.compare --quick                                  # all five, built-in scene, seconds each
    python -m benchmarks.compare --engine ray --ray_address HEAD:6379 --jobs 8 ...
    python -m benchmarks.compare --engine slurm --slurm_partition gpu --slurm_gpus 1 ...

Every cell is an ordinary run of the lesson script, in a subprocess, in its own run folder
`<outdir>/<scene>/<method>/seed<seed>`:

    python <method>.py --scene S --seed K --outdir <cell> --time_budget_s T --resume --n_test_views N
                       --eval_every E --video_frames 0 [--downscale D] [--preset P | --quick] [--iters I] [extra]

so a cell's numbers are the script's own `test/metrics.json` (PSNR, SSIM, LPIPS, evaluation time, peak memory) and
`log.csv` (steps, training time, the `val_psnr` curve). `--n_test_views` is the same for every method, and every
script picks the same evenly spread views of a split (common.evaluation.view_indices), so on one scene all methods
are scored on the same views; the table checks that the files agree.

Resuming: a cell whose run finished (exit status 0, or 3 for a model that learned nothing, whose metrics are
written anyway) is kept (`cell.json` in its folder says so); any other cell runs again with `--resume`, which
continues from its last checkpoint. Ctrl-C or `kill` of this command is passed on to the running cells once: each
finishes its step, writes a checkpoint and stops; the same command then continues them. The table and the plot
are rebuilt from the run folders at the end of every invocation (`--table_only` rebuilds them without running).

Engines (common/dispatch.py, not a scheduler of ours): `local` runs `--jobs` cells at a time on this machine;
`ray` sends each cell to a Ray cluster; `slurm` submits one SLURM job array through submitit (a cell killed for
time gets SIGTERM, the script checkpoints, submitit requeues it and the cell resumes). On a cluster the project
and `--outdir` must be on a file system every node sees.
"""
from __future__ import annotations

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import parse_config, run_main
from common.dispatch import run_tasks
from common.errors import UserError, warn
from common.training import write_json

REPO = Path(__file__).resolve().parents[1]
METHODS = ("01_nerf", "02_mipnerf", "03_mipnerf360", "04_hashnerf", "05_instant_neus")
# Exit statuses of a script: 0 done; 3 finished but learned nothing (metrics.json written: a row, marked);
# 130/143 (or -2/-15 when the signal killed it before Python could answer) interrupted, to be resumed.
DONE_STATUSES = (0, 3)
# A mesh is not part of the table: 05 meshes at 512^3 by default, minutes on a CPU; 128^3 after every cell.
METHOD_ARGS = {"05_instant_neus": ["--mesh_resolution", "128"]}
COLUMNS = ("method", "scene", "seed", "status", "psnr", "ssim", "lpips", "constant_psnr", "steps", "train_s",
           "eval_s", "eval_s_per_view", "n_test_views", "peak_rss_mib", "peak_gpu_mib", "wall_s")


@dataclass
class CompareConfig:
    """One table of the NeRF family: every method on the same scenes for the same time, scored on the same views."""

    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": "scripts to compare: 01 ... 05 or their names (01_nerf, ...)"})
    scenes: list[str] = field(default_factory=lambda: ["builtin"], metadata={"help": "scenes, as each script's --scene takes them (builtin, lego, a folder); own = each method's own built-in scene (builtin_unbounded for 03, builtin for the rest)"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "random seeds: one cell per method x scene x seed", "min": 0, "max": 2**32 - 1})
    time_budget_s: float = field(default=300.0, metadata={"help": "seconds of training per cell (evaluation excluded); each script also stops at its --iters, whichever comes first; 0 = steps only (--iters)", "min": 0})
    iters: Optional[int] = field(default=None, metadata={"help": "training steps per cell (default: each script's preset)", "min": 1})
    downscale: int = field(default=1, metadata={"help": "image reduction factor for every cell (03 on a poses_bounds.npy capture gets 4x it, the same images as the others: method_downscale)", "min": 1})
    preset: str = field(default="auto", metadata={"help": "each script's --preset (auto: cpu on a CPU, paper on a GPU)"})
    script_quick: bool = field(default=False, metadata={"help": "pass --quick to every script (their small presets)"})
    n_test_views: int = field(default=8, metadata={"help": "held-out views scored per cell, the same for every method (evenly spread; 0 = all)", "min": 0})
    eval_every: int = field(default=100, metadata={"help": "steps between the val_psnr points of the plot", "min": 1})
    extra: str = field(default="", metadata={"help": "more flags for every script, e.g. \"--backend emulated\""})
    outdir: str = field(default="runs/compare", metadata={"help": "run folders, table and plot go here"})
    engine: Literal["local", "ray", "slurm"] = field(default="local", metadata={"help": "where cells run: local (--jobs at a time), ray (a Ray cluster), slurm (a submitit job array)"})
    jobs: int = field(default=1, metadata={"help": "cells at a time (local and ray)", "min": 1})
    cpus_per_cell: int = field(default=1, metadata={"help": "CPUs Ray or SLURM reserves for each cell", "min": 1})
    ray_address: Optional[str] = field(default=None, metadata={"help": "the Ray cluster's address (default: auto, the cluster of this node)"})
    slurm_partition: Optional[str] = field(default=None, metadata={"help": "SLURM partition"})
    slurm_timeout_min: int = field(default=60, metadata={"help": "SLURM time limit per job (a cell killed for time is requeued and resumes)", "min": 1})
    slurm_gpus: int = field(default=0, metadata={"help": "GPUs per SLURM job", "min": 0})
    submitit_cluster: Optional[str] = field(default=None, metadata={"help": "submitit's cluster: none = SLURM; local (local processes, for tests) or debug"})
    readme_from: Optional[str] = field(default=None, metadata={"help": "run nothing: regenerate README.md's block between the compare-table markers from benchmarks/results/compare-<name>.json"})
    table_only: bool = field(default=False, metadata={"help": "run nothing: rebuild the table and the plot from the run folders"})
    save_results: Optional[str] = field(default=None, metadata={"help": "also copy the table and plot to benchmarks/results/compare-<name>.* with the command and machine"})
    quick: bool = field(default=False, metadata={"help": "all five methods, each on its own built-in scene at half size (50x50; 03's unbounded scene 32x32), each script's --quick preset, a fixed step count each (150 to 200: QUICK_ITERS), 2 test views, cells sharing the cores (--jobs); a smoke test that each method learns, which CI runs and checks that each beats a constant image"})


# --quick: the smoke test CI runs (tests/benchmarks/test_compare.py). A step count per method rather than seconds,
# so that a loaded 2-core CI machine gets the same table as a quiet one; with these counts every method beats the
# constant image on its own built-in scene at half size by 2.5 dB or more (benchmarks/results/compare-quick-cpu.*).
# Half-size images and 2 test views keep evaluation to a few seconds per cell.
PRESETS = {"quick": dict(scenes=["own"], time_budget_s=0.0, n_test_views=2, eval_every=40, downscale=2,
                         script_quick=True)}
QUICK_ITERS = {"01_nerf": 200, "02_mipnerf": 200, "03_mipnerf360": 200, "04_hashnerf": 200, "05_instant_neus": 150}
# `--scenes own`: the scene each script trains on by default (03 is the unbounded method: its built-in scene is the
# objects inside a distant sky; the others' is the object over a white background).
OWN_SCENES = {"03_mipnerf360": "builtin_unbounded"}
# The images_<f>/ folder that load_scene reads of a poses_bounds.npy capture before --downscale (its llff_factor).
LLFF_BASE_FACTOR = 4
# --quick only, after METHOD_ARGS: 05's mesh is not scored in the table; 64^3 instead of 128^3 saves seconds.
QUICK_METHOD_ARGS = {"05_instant_neus": ["--mesh_resolution", "64"]}


def method_scene(scene: str, method: str) -> str:
    """The --scene a method's cell gets: `own` resolves to the method's own built-in scene."""
    return OWN_SCENES.get(method, "builtin") if scene == "own" else scene


def method_downscale(method: str, scene: str, downscale: int) -> int:
    """The --downscale a method's cell gets, so that every method of a scene trains and is scored on the same images.
    A capture with poses_bounds.npy is the one case where the scripts read the factor differently: 01, 02, 04 and 05
    (`common.data.load.load_scene`) read images_4/ reduced further by N, where 03 reads N as multinerf does, as
    images_N/ of the full-size photographs (its --help says so). Its cell gets 4 N: fern with --downscale 8 is then
    126x94 for all three (4032 / 32), where 03 alone would otherwise train on 504x378."""
    if method == "03_mipnerf360" and (Path(scene) / "poses_bounds.npy").is_file():
        return LLFF_BASE_FACTOR * downscale
    return downscale


def method_name(text: str) -> str:
    """'01', '1', '01_nerf', '01_nerf.py' -> '01_nerf'."""
    stem = Path(text).stem
    for name in METHODS:
        if stem == name or stem.zfill(2) == name[:2]:
            return name
    raise UserError(f"--methods {text}: unknown method; choose from {', '.join(METHODS)} (or 01 ... 05)")


def cell_dir(outdir, scene: str, method: str, seed: int) -> Path:
    return Path(outdir) / Path(scene).name / method / f"seed{seed}"


def plan_cells(cfg: CompareConfig) -> list[dict]:
    """One task per method x scene x seed: the script's command line and the cell's folder (absolute: a Ray or
    SLURM worker may start elsewhere)."""
    tasks = []
    for scenes in cfg.scenes:
        for method in cfg.methods:
            scene = method_scene(scenes, method)
            # A folder given relative to this shell's directory, for scripts that run in the repository root.
            scene_arg = str(Path(scene).resolve()) if Path(scene).is_dir() else scene
            for seed in cfg.seeds:
                folder = cell_dir(Path(cfg.outdir).resolve(), scene, method, seed)
                args = ["--scene", scene_arg, "--seed", str(seed), "--outdir", str(folder),
                        "--time_budget_s", str(cfg.time_budget_s), "--resume", "--n_test_views", str(cfg.n_test_views),
                        "--eval_every", str(cfg.eval_every), "--video_frames", "0"]
                downscale = method_downscale(method, scene, cfg.downscale)
                if downscale > 1:
                    args += ["--downscale", str(downscale)]
                args += ["--quick"] if cfg.script_quick else ["--preset", cfg.preset]
                if cfg.iters is not None:
                    args += ["--iters", str(cfg.iters)]
                elif cfg.quick:
                    args += ["--iters", str(QUICK_ITERS[method])]
                args += METHOD_ARGS.get(method, []) + (QUICK_METHOD_ARGS.get(method, []) if cfg.quick else [])
                args += shlex.split(cfg.extra)
                tasks.append(dict(method=method, scene=Path(scene).name, seed=seed, folder=str(folder),
                                  command=[f"{method}.py", *args], threads=cell_threads(cfg)))
    return tasks


def cell_threads(cfg: CompareConfig) -> int:
    """PyTorch's CPU threads for each cell: this machine's cores shared among the --jobs cells that run at once
    (local), or the CPUs the cluster reserves for it. Unlimited, each of two cells on two cores would start two
    threads and the four would wait on each other: measured, 04's quick cell ran 6 to 10 times slower beside
    another. An OMP_NUM_THREADS set by the user wins."""
    if cfg.engine != "local":
        return cfg.cpus_per_cell
    return max(1, (os.cpu_count() or 1) // cfg.jobs)


def cell_finished(folder) -> bool:
    """Whether a cell's run ended for good (kept on a rerun): cell.json says exit status 0 or 3."""
    try:
        return json.loads((Path(folder) / "cell.json").read_text()).get("returncode") in DONE_STATUSES
    except (OSError, ValueError):
        return False


# Subprocesses of the cells running in this process (engine local), to pass a signal on to them.
_RUNNING: set = set()
_RUNNING_LOCK = threading.Lock()


def run_cell(task: dict) -> dict:
    """Run one cell's script to its end (module level: Ray and submitit import it by name). The script runs in its
    own session, so that a Ctrl-C meant for this command reaches it once, through `forward_signal`, and not twice
    (a second signal would stop it without its checkpoint). Writes <folder>/cell.json; returns its content."""
    if forward_signal.received is not None:  # this command is stopping (engine local): start no new cell
        return dict(method=task["method"], scene=task["scene"], seed=task["seed"], returncode=None, wall_s=0.0,
                    not_started=True)
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, *task["command"]]
    start = time.perf_counter()
    with open(folder / "compare.log", "a") as log:
        log.write(f"\n$ {shlex.join(command)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not os.environ.get("OMP_NUM_THREADS") and task.get("threads"):
            env["OMP_NUM_THREADS"] = str(task["threads"])
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            returncode = process.wait()
        except BaseException:  # this worker is being stopped (Ray, submitit): let the script checkpoint first
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
    record = dict(method=task["method"], scene=task["scene"], seed=task["seed"], returncode=returncode,
                  wall_s=round(time.perf_counter() - start, 2), command=shlex.join(["python", *task["command"]]))
    previous = _read_json(folder / "cell.json") or {}
    record["wall_s_all_attempts"] = round(previous.get("wall_s_all_attempts", 0.0) + record["wall_s"], 2)
    write_json(folder / "cell.json", record)
    return record


def forward_signal(signum, frame) -> None:
    """Ctrl-C / SIGTERM of this command: pass it on to every running cell (each checkpoints and stops); no new
    cell starts. On Ray and SLURM the cells run elsewhere: this command stops dispatching (KeyboardInterrupt), and
    the cells already running go on (submitit's jobs: until `scancel`); the next run of the command resumes."""
    if forward_signal.engine != "local":
        raise KeyboardInterrupt
    with _RUNNING_LOCK:
        processes = list(_RUNNING)
    for process in processes:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass
    forward_signal.received = signum


forward_signal.received = None
forward_signal.engine = "local"


# ------------------------------------------------------------------------------------------------
# The table, from run folders
# ------------------------------------------------------------------------------------------------
def _read_json(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_log(folder) -> list[dict]:
    try:
        with open(Path(folder) / "log.csv", newline="") as file:
            return list(csv.DictReader(file))
    except OSError:
        return []


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cell_row(folder, method: str, scene: str, seed: int) -> dict:
    """The table row of one run folder: status (done, dead model, interrupted, failed, not run), PSNR, SSIM, LPIPS
    (test/metrics.json), steps and training time (log.csv's last row), evaluation time, peak memory."""
    folder = Path(folder)
    cell, metrics, log = _read_json(folder / "cell.json"), _read_json(folder / "test" / "metrics.json"), read_log(folder)
    row = {column: None for column in COLUMNS}
    row.update(method=method, scene=scene, seed=seed)
    if cell is None:
        row["status"] = "interrupted" if log else "not run"
    else:
        code = cell.get("returncode")
        row["status"] = {0: "done", 3: "dead model"}.get(code, "interrupted" if code in (130, 143, -2, -15) else f"failed ({code})")
        row["wall_s"] = cell.get("wall_s_all_attempts", cell.get("wall_s"))
    if metrics is not None and row["status"] in ("done", "dead model"):
        views = metrics.get("views", [])
        row.update(psnr=_number(metrics.get("mean_psnr")), ssim=_number(metrics.get("mean_ssim")),
                   lpips=_number(metrics.get("mean_lpips")), constant_psnr=_number(metrics.get("constant_psnr")),
                   eval_s=_number(metrics.get("eval_s")), n_test_views=len(views),
                   peak_rss_mib=_number(metrics.get("peak_rss_mib")), peak_gpu_mib=_number(metrics.get("peak_gpu_mib")),
                   steps=metrics.get("iters"))
        row["views"] = [v.get("file") for v in views]
        if row["eval_s"] is not None and views:
            row["eval_s_per_view"] = round(row["eval_s"] / len(views), 3)
    elapsed = [r for r in log if _number(r.get("elapsed_s")) is not None]
    if elapsed:
        row["train_s"] = _number(elapsed[-1]["elapsed_s"])
        if row["steps"] is None:
            row["steps"] = int(float(elapsed[-1]["step"]))
    return row


def build_table(outdir, methods, scenes, seeds) -> list[dict]:
    """One row per method x scene x seed, from the run folders under `outdir` (whatever state they are in)."""
    rows = [cell_row(cell_dir(outdir, method_scene(scene, method), method, seed), method,
                     Path(method_scene(scene, method)).name, seed)
            for scene in scenes for method in methods for seed in seeds]
    for scene in {r["scene"] for r in rows}:  # the same held-out views for every method of a scene
        view_sets = {tuple(r["views"]) for r in rows if r["scene"] == scene and r.get("views")}
        if len(view_sets) > 1:
            warn(f"scene {scene}: the methods were scored on different test views (the scenes or --downscale "
                 f"differ between cells?); compare their rows with care")
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return (sum(values) / len(values)) if values else None


def _shown(value, digits: int, spread=None) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text + (f" ± {spread:.{digits}f}" if spread else "")


def summary_rows(rows: list[dict]) -> list[dict]:
    """Rows of the Markdown table: one per method x scene, the mean over its finished seeds (± standard deviation
    where there are several)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["scene"], row["method"]), []).append(row)
    summary = []
    for (scene, method), group in groups.items():
        finished = [r for r in group if r["status"] in ("done", "dead model")]
        entry = dict(scene=scene, method=method, seeds=f"{len(finished)}/{len(group)}",
                     status=", ".join(sorted({r["status"] for r in group})))
        for key in ("psnr", "ssim", "lpips", "constant_psnr", "steps", "train_s", "eval_s", "eval_s_per_view",
                    "n_test_views", "peak_rss_mib", "peak_gpu_mib"):
            values = [r[key] for r in finished if r[key] is not None]
            entry[key] = _mean(values)
            entry[key + "_std"] = (sum((v - entry[key]) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
        summary.append(entry)
    return summary


def markdown_table(rows: list[dict]) -> str:
    header = ("| scene | method | seeds | held-out PSNR (dB) | SSIM | LPIPS | constant image (dB) | steps | training (s) "
              "| evaluation (s, per view) | test views | peak RAM (MiB) | peak GPU (MiB) | status |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for s in summary_rows(rows):
        lines.append("| " + " | ".join([
            s["scene"], s["method"], s["seeds"], _shown(s["psnr"], 2, s["psnr_std"]), _shown(s["ssim"], 3, s["ssim_std"]),
            _shown(s["lpips"], 3, s["lpips_std"]), _shown(s["constant_psnr"], 2), _shown(s["steps"], 0),
            _shown(s["train_s"], 0), "-" if s["eval_s"] is None else f"{s['eval_s']:.1f} ({s['eval_s_per_view']:.2f})",
            _shown(s["n_test_views"], 0), _shown(s["peak_rss_mib"], 0), _shown(s["peak_gpu_mib"], 0), s["status"]]) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], stem) -> dict[str, Path]:
    """<stem>.md (mean per method x scene), <stem>.csv and <stem>.json (one row per cell)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = dict(md=stem.with_suffix(".md"), csv=stem.with_suffix(".csv"), json=stem.with_suffix(".json"))
    paths["md"].write_text(markdown_table(rows))
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_json(paths["json"], [{k: r.get(k) for k in COLUMNS} for r in rows])
    return paths


def psnr_curves(outdir, rows: list[dict]) -> dict:
    """{scene: {(method, seed): [(training seconds, val PSNR), ...]}} from each cell's log.csv."""
    curves: dict = {}
    for row in rows:
        points = [(_number(r.get("elapsed_s")), _number(r.get("val_psnr")))
                  for r in read_log(cell_dir(outdir, row["scene"], row["method"], row["seed"]))]
        points = [(t, p) for t, p in points if t is not None and p is not None]
        if points:
            curves.setdefault(row["scene"], {})[(row["method"], row["seed"])] = points
    return curves


def plot_psnr_vs_time(outdir, rows: list[dict], path) -> Path | None:
    """One panel per scene: held-out PSNR (one validation view, log.csv's val_psnr) against seconds of training,
    a line per method and seed, the final test-view PSNR as a marker at the end of training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = psnr_curves(outdir, rows)
    scenes = sorted({r["scene"] for r in rows})
    if not scenes:
        return None
    fig, axes = plt.subplots(1, len(scenes), figsize=(5.5 * len(scenes), 4), squeeze=False)
    colours = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, scene in zip(axes[0], scenes):
        for row in [r for r in rows if r["scene"] == scene]:
            colour = colours.get(row["method"])
            label = row["method"] if row["seed"] == min(r["seed"] for r in rows) else None
            points = curves.get(scene, {}).get((row["method"], row["seed"]), [])
            if points:
                ax.plot(*zip(*points), color=colour, label=label, lw=1.5)
                label = None
            if row["psnr"] is not None and row["train_s"] is not None:
                ax.plot([row["train_s"]], [row["psnr"]], "o", color=colour, label=label)
        ax.set_title(f"{scene}: held-out PSNR against training time")
        ax.set_xlabel("training time (s, evaluation excluded)")
        ax.set_ylabel("PSNR (dB): lines one val view, dots the test views")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------------
README_BEGIN = "<!-- compare-table: generated by `python -m benchmarks.compare --readme_from {name}`; edit the results, not this -->"
README_END = "<!-- end of compare-table -->"


def readme_block(name: str) -> str:
    """README's "What to expect" block of benchmarks/results/compare-<name>.json: what was run, where, under which
    load, and the table."""
    from benchmarks import machine

    path = machine.RESULTS_DIR / f"compare-{name}.json"
    saved = _read_json(path)
    if saved is None:
        raise UserError(f"{path.relative_to(REPO)}: not found or not JSON; run the comparison with --save_results {name}")
    m, settings = saved["machine"], saved["settings"]
    load = saved.get("load_average_at_start"), saved.get("load_average_at_end")
    cores = m.get("cpu_cores_available") or m.get("cpu_cores_logical")
    # cell_threads' rule, from what was saved: the cores shared among the cells at once, or the CPUs reserved
    threads = (max(1, (m.get("cpu_cores_logical") or cores) // settings["jobs"]) if settings["engine"] == "local"
               else settings["cpus_per_cell"])
    # Shared with other jobs: more runnable processes than cores before the cells started, or at the end more than
    # the cells' own threads (cores) and one more.
    loaded = (load[0] is not None and load[0][0] > cores) or (load[1] is not None and load[1][0] > cores + 1)
    # the views the cells scored (a split may hold fewer than --n_test_views: fern has 3)
    scored = {r.get("n_test_views") for r in saved["rows"] if r.get("n_test_views")}
    count = scored.pop() if len(scored) == 1 else None
    if not settings["n_test_views"] or (count and count < settings["n_test_views"]):
        views = f"all {count} test views" if count else "all test views"
    else:
        views = f"{settings['n_test_views']} test views spread evenly over the test split"
    if settings["time_budget_s"] > 0:
        budget = f"{settings['time_budget_s']:.0f} s of training per method"
    elif settings.get("iters"):
        budget = f"{settings['iters']} training steps per method"
    else:
        budget = "a fixed step count per method (QUICK_ITERS)" if settings.get("quick") else "each preset's steps"
    at_once = ("one after the other" if settings["jobs"] == 1 else f"{settings['jobs']} at a time") \
        if settings["engine"] == "local" else f"on {settings['engine']}"
    lines = [README_BEGIN.format(name=name), "",
             f"`{saved['command']}` ({budget}, {at_once}, {views}, the same for every method; "
             f"`benchmarks/results/compare-{name}.*`). Machine: {m.get('cpu_model', '?')}, {cores} cores, "
             f"{m.get('gpu_name') or 'no GPU'}"
             + (f", OMP_NUM_THREADS={m['omp_num_threads']} for every run" if m.get("omp_num_threads")
                else f", {threads} PyTorch thread{'s' if threads > 1 else ''} per run (cell_threads)") + "; "
             f"load average (1 min) {load[0][0]:.1f} at the start and {load[1][0]:.1f} at the end"
             + (": measured under load (other jobs shared the cores), so the steps each method made in its time are "
                "fewer than on an idle machine, by an amount that differed between cells." if loaded else "."), ""]
    lines += markdown_table(saved["rows"]).splitlines()
    lines += ["", f"![held-out PSNR against training time](benchmarks/results/compare-{name}.png)", "", README_END]
    return "\n".join(lines)


def update_readme(name: str, readme=REPO / "README.md") -> Path:
    text = Path(readme).read_text()
    begin = text.find("<!-- compare-table:")
    end = text.find(README_END)
    if begin < 0 or end < begin:
        raise UserError(f"{readme}: no compare-table markers; add the two lines '<!-- compare-table: ... -->' and "
                        f"'{README_END}' where the block goes")
    Path(readme).write_text(text[:begin] + readme_block(name) + text[end + len(README_END):])
    return Path(readme)


def main(argv=None) -> int:
    cfg = parse_config(CompareConfig, argv, presets=PRESETS)
    if cfg.readme_from:
        print(f"updated {update_readme(cfg.readme_from)}")
        return 0
    cfg.methods = list(dict.fromkeys(method_name(m) for m in cfg.methods))
    load_at_start = list(os.getloadavg())
    outdir = Path(cfg.outdir)
    tasks = plan_cells(cfg)
    todo = [t for t in tasks if not cell_finished(t["folder"])]
    interrupted = None
    if not cfg.table_only:
        print(f"compare: {len(tasks)} cells ({len(cfg.methods)} methods x {len(cfg.scenes)} scenes x "
              f"{len(cfg.seeds)} seeds), {len(tasks) - len(todo)} already finished, {len(todo)} to run on "
              f"{cfg.engine}" + (f" ({cfg.jobs} at a time)" if cfg.engine != "slurm" else "") + f" -> {outdir}")

        def report(outcome):
            name = f"{outcome.task['method']} on {outcome.task['scene']} seed {outcome.task['seed']}"
            if outcome.error:
                print(f"  {name}: error {outcome.error}")
            elif outcome.result.get("not_started"):
                print(f"  {name}: not started (interrupted)")
            else:
                status = outcome.result["returncode"]
                print(f"  {name}: exit status {status} after {outcome.result['wall_s']:.0f} s"
                      + ("" if status in DONE_STATUSES else f" (see {Path(outcome.task['folder']) / 'compare.log'})"))

        slurm_options = {"timeout_min": cfg.slurm_timeout_min}
        if cfg.slurm_partition:
            slurm_options["slurm_partition"] = cfg.slurm_partition
        if cfg.slurm_gpus:
            slurm_options["gpus_per_node"] = cfg.slurm_gpus
        forward_signal.received, forward_signal.engine = None, cfg.engine
        previous = {s: signal.signal(s, forward_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            run_tasks(run_cell, todo, engine=cfg.engine, jobs=cfg.jobs, on_done=report, ray_address=cfg.ray_address,
                      cpus_per_task=cfg.cpus_per_cell, slurm_options=slurm_options, log_dir=outdir / "submitit",
                      submitit_cluster=cfg.submitit_cluster)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        interrupted = forward_signal.received
    rows = build_table(outdir, cfg.methods, cfg.scenes, cfg.seeds)
    paths = write_table(rows, outdir / "table")
    plot = plot_psnr_vs_time(outdir, rows, outdir / "psnr_vs_time.png")
    print(markdown_table(rows))
    print("table: " + ", ".join(str(p) for p in paths.values()) + (f"; plot: {plot}" if plot else ""))
    if cfg.save_results:
        save_results(cfg, rows, plot, argv, load_at_start)
    if interrupted is not None:
        print(f"interrupted: the running cells wrote a checkpoint; run the same command again to continue them "
              f"(finished cells are kept)", file=sys.stderr)
        return 128 + int(interrupted)
    unfinished = [r for r in rows if r["status"] not in ("done", "dead model")]
    return 1 if unfinished else 0


def save_results(cfg: CompareConfig, rows, plot, argv, load_at_start) -> None:
    """benchmarks/results/compare-<name>.{md,csv,json,png}: the table, the plot, and in the JSON the command, the
    machine, the load averages (1, 5, 15 minutes) at the start and the end, the settings and the rows."""
    import shutil

    import torch

    from benchmarks import machine

    stem = machine.RESULTS_DIR / f"compare-{machine.slug(cfg.save_results)}"
    write_table(rows, stem)
    if plot is not None:
        shutil.copyfile(plot, stem.with_suffix(".png"))
    write_json(stem.with_suffix(".json"), dict(
        command="python -m benchmarks.compare " + shlex.join(sys.argv[1:] if argv is None else argv),
        machine=machine.describe_machine("cuda" if torch.cuda.is_available() else "cpu"), load_average_at_start=load_at_start,
        load_average_at_end=list(os.getloadavg()),
        settings={k: v for k, v in asdict(cfg).items() if k not in ("outdir", "save_results")},
        rows=[{k: r.get(k) for k in COLUMNS} for r in rows]))
    print(f"saved: {stem}.{{md,csv,json,png}}")


if __name__ == "__main__":
    sys.exit(run_main(main))
