"""Training plumbing shared by the scripts: seeding, the CSV log with its progress bar, plots, JSON files.

Every run folder gets `config.json` (the Config dataclass), `log.csv` (step, loss, psnr, lr, elapsed_s) and
`psnr.png` (the PSNR curve), as CleanRL writes its config and metrics next to its outputs.
"""
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common.checkpoints import (checkpoint_path, latest_checkpoint, load_latest_valid_checkpoint, resume_config,
                                save_checkpoint)
from common.cli import default_outdir
from common.errors import Terminated, UserError, warn, writing
from common.memory import error_reason, free_memory, out_of_memory_errors, smallest
from common.paths import load_camera_path
from common.run_folder import RunFolder, prepare_run_folder

LOG_COLUMNS = ("step", "loss", "psnr", "lr", "elapsed_s")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and all GPUs) for a repeatable run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _json_ready(obj):
    """obj with Paths, dataclasses, tensors and numpy values made JSON types, and every float that is not finite
    (NaN, +-Infinity) made None. json.dumps would write those as the bare words NaN and Infinity, which are
    not JSON: Python reads them back but jq, JavaScript and most JSON parsers refuse the whole file."""
    if isinstance(obj, dict):
        return {str(k) if isinstance(k, Path) else k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _json_ready(dataclasses.asdict(obj))
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return _json_ready(obj.tolist())
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path, obj) -> Path:
    """Write obj as indented JSON (Paths, dataclasses, tensors and numpy values allowed); returns the path.

    The file is always valid JSON: non-finite floats (a NaN loss, an infinite PSNR) are written as null. It is
    written to a temporary file and renamed, so a crash mid-write leaves the previous file, never half of one.
    A full disk or a read-only place is one line naming the file (common.errors.writing).
    """
    path = Path(path)
    text = json.dumps(_json_ready(obj), indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def save_config(outdir, cfg) -> Path:
    """Write the Config dataclass `cfg` to <outdir>/config.json; returns the path."""
    return write_json(Path(outdir) / "config.json", dataclasses.asdict(cfg))


class TrainLog:
    """CSV log of the training curve plus a tqdm progress bar showing the latest loss and PSNR.

    log = TrainLog(outdir, total_steps=cfg.iters, start_step=0, desc="01_nerf builtin")
    log.step(step, loss=..., psnr=..., lr=..., write=step % 100 == 0)  # every step: moves the bar; a CSV row
                                                                       # (step, loss, psnr, lr, elapsed_s and any
                                                                       # extra keyword values) when write is True
    log.note(step, val_psnr=27.1)   # prints "step 500: val_psnr=27.1" above the bar, adds the values to the CSV
    log.close()                     # closes the bar and plots psnr.png next to log.csv (or use `with TrainLog(...)`)
    Resuming (start_step = the checkpoint's step) keeps the rows up to start_step, drops those an interrupted
    run wrote after its last checkpoint, and continues elapsed_s. The CSV is flushed at every row.
    """

    def __init__(self, outdir, total_steps: int, start_step: int = 0, desc: str | None = None, progress: bool = True):
        from tqdm.auto import tqdm

        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.outdir / "log.csv"
        self.rows: list[dict] = []
        self.columns = list(LOG_COLUMNS)
        if start_step > 0 and self.csv_path.exists():
            with open(self.csv_path, newline="") as file:
                reader = csv.DictReader(file)
                self.columns += [c for c in reader.fieldnames or [] if c not in self.columns]
                self.rows = [row for row in reader if int(float(row["step"])) <= start_step]
        self._elapsed_offset = max((float(r["elapsed_s"]) for r in self.rows if r.get("elapsed_s")), default=0.0)
        self._rewrite()
        self._start = time.perf_counter()
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not progress, dynamic_ncols=True)

    def elapsed(self) -> float:
        """Seconds of training so far (including the time of the run this one resumed)."""
        return self._elapsed_offset + time.perf_counter() - self._start

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside this block (held-out evaluation, say) does not count as training time, so that
        elapsed_s measures training alone and 'PSNR after 10 minutes' means 10 minutes of training."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._elapsed_offset -= time.perf_counter() - start

    def step(self, step: int, loss: float, psnr: float | None = None, lr: float | None = None, write: bool = True,
             **extra) -> None:
        """Advance the bar to `step` with the latest loss and PSNR; if `write`, add a CSV row.

        psnr defaults to -10 log10(loss) (right for an MSE loss on [0, 1] images); extra keyword values (e.g.
        samples_per_ray=...) become extra columns.
        """
        loss = float(loss)
        if psnr is None:
            psnr = -10.0 * math.log10(loss) if loss > 0 else math.inf
        self._bar.set_postfix(loss=f"{loss:.4g}", psnr=f"{float(psnr):.2f}", refresh=False)
        self._bar.update(step - self._bar.n)
        if write:
            row = dict(step=step, loss=loss, psnr=float(psnr), lr=lr, elapsed_s=round(self.elapsed(), 3), **extra)
            self._add(row)

    def note(self, step: int, echo: bool = True, **values) -> None:
        """Record occasional values (e.g. val_psnr=...) at `step`: printed above the bar (unless echo is False)
        and added to the CSV (to the row of the same step if there is one, else as a row of their own)."""
        if echo:
            self.write(f"step {step}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
        if self.rows and int(float(self.rows[-1]["step"])) == step:
            self.rows[-1].update(values)
            self._columns_for(values)
            self._rewrite()
        else:
            self._add(dict(step=step, elapsed_s=round(self.elapsed(), 3), **values))

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        self._bar.write(message)

    def plot(self, png=None) -> Path:
        """Plot the PSNR curve of this log to `png` (default <outdir>/psnr.png)."""
        return plot_psnr_curve(self.csv_path, png if png is not None else self.outdir / "psnr.png")

    def close(self, plot: bool = True) -> None:
        """Close the bar and, if any row was written, plot <outdir>/psnr.png."""
        self._bar.close()
        if plot and any(row.get("psnr") not in (None, "") for row in self.rows):
            self.plot()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _columns_for(self, row: dict) -> bool:
        new = [key for key in row if key not in self.columns]
        self.columns += new
        return bool(new)

    def _add(self, row: dict) -> None:
        self.rows.append(row)
        if self._columns_for(row):
            self._rewrite()  # a new column: the header changes, write the whole file again
            return
        with writing(self.csv_path), open(self.csv_path, "a", newline="") as file:  # a full disk: one line
            csv.DictWriter(file, fieldnames=self.columns, restval="").writerow(_formatted(row))

    def _rewrite(self) -> None:
        tmp = self.csv_path.with_name(".log.csv.tmp")
        with writing(self.csv_path):
            with open(tmp, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.columns, restval="")
                writer.writeheader()
                writer.writerows(_formatted(row) for row in self.rows)
            os.replace(tmp, self.csv_path)  # a crash while rewriting keeps the previous file


class TrainingRun:
    """The bookkeeping of a training loop, so that the loop on the page shows only the method.

        with TrainingRun(cfg, "01_nerf", scene, device, backend, save_state=..., load_state=..., validate=...) as run:
            def training_step(step):
                ...sample cfg.batch_rays rays, render, loss...
                optimizer.zero_grad(); loss.backward()
                check_finite(step, loss, parameters)       # a NaN/Inf stops the run here, before the update
                optimizer.step()
                run.log(step, loss=loss.item(), psnr=..., lr=lr)

            for step in run.steps():          # resumes, then yields the steps still to do
                run.train_step(training_step, step, optimizer)  # retried with half the rays on GPU out of memory

    What it takes care of, in order (`prepare_run` has already checked the folder and the config):
      * one line saying what runs where (preset, device, backend, scene, image size, outdir);
      * the run folder: created and locked for this run alone (common/run_folder.py), config.json written;
      * `--resume`: the newest readable checkpoint of the folder is loaded through `load_state(state)` and the
        steps continue after its step; the log keeps the rows up to it;
      * after each step: a CSV row every `cfg.log_every` steps, a held-out check every `cfg.eval_every` steps
        (`validate()` returns a PSNR; its time is not training time), a checkpoint every `cfg.ckpt_every`
        steps and at the end;
      * a GPU out-of-memory error during a step (`train_step`): the rays per step are halved, in the Config
        itself (so the step, config.json and the checkpoints all see the new value) and the step runs again;
      * stopping: after `cfg.iters` steps, or once `cfg.time_budget_s` seconds of training are spent (then a
        checkpoint), or on Ctrl-C / SIGTERM (the step in progress finishes, a checkpoint is written, exit status
        130 / 143).

      * --viewer: a live 3D viewer (common/viewer.py) of the model, fed between steps by `log`; with
        --render_only, it serves the loaded model until Ctrl-C and the run stops there (exit 0).

    save_state() -> dict: what to checkpoint besides the step (network, optimizer and RNG states);
    load_state(state: dict): puts a checkpoint back; validate() -> float: PSNR of a held-out view (optional);
    render: what the viewer draws with, either the script's ray renderer (rays_o, rays_d) -> dict with its
    `.chunk` (01, 03, 04, 05) or a view renderer (K, c2w, H, W) -> dict of images (02: its cones need K),
    told apart by `.chunk`.
    """

    def __init__(self, cfg, script: str, scene, device, backend: str, save_state, load_state, validate=None,
                 render=None):
        self.cfg, self.script, self.scene_name = cfg, script, scene.name
        train_cams = scene.splits["train"].cameras
        self.summary = (f"{script}: preset {cfg.preset}, device {device}, backend {backend}, scene {scene.name} "
                        f"({len(train_cams)} training images of {train_cams.width}x{train_cams.height}), "
                        f"outdir {cfg.outdir}")
        self.save_state, self.load_state, self.validate = save_state, load_state, validate
        self.scene, self.render = scene, render
        self.viewer = None  # common.viewer.Viewer with --viewer
        self.outdir = Path(cfg.outdir)
        self._folder = RunFolder(self.outdir)
        self.step = 0  # the last completed step
        self.log_ = None
        self._interrupt = GracefulInterrupt()
        self._stopping = False
        self._unwritten_checkpoint: Path | None = None  # a checkpoint a second signal cut short
        self.out_of_memory: list[dict] = []  # each halving of the batch: step, setting, before, after

    # -- context: the interrupt handlers are installed for the whole run and removed on every exit path --
    def __enter__(self):
        self._folder.__enter__()  # create + lock: a second run on this folder stops here with one line
        self._interrupt.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.viewer is not None:
            self.viewer.close()
            print(f"viewer closed; to look at this run again: python -m common.viewer {self.outdir}")
        self._interrupt.__exit__(exc_type, exc, tb)
        self._folder.__exit__(exc_type, exc, tb)
        if self.log_ is not None:
            self.log_.close(plot=exc_type is None or issubclass(exc_type, KeyboardInterrupt))
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):  # a second Ctrl-C or SIGTERM: stop
            self._exit_interrupted()                                          # at once, keep the last checkpoint
        return False

    def elapsed(self) -> float:
        """Seconds of training so far (the resumed run's included, evaluation excluded)."""
        return self.log_.elapsed() if self.log_ is not None else 0.0

    def steps(self):
        """Resume if asked, then yield the steps start+1 .. cfg.iters, stopping early as described above."""
        cfg = self.cfg
        print(self.summary)
        if cfg.render_only:  # a trained model, no training: load it and yield no step
            path, state = load_latest_valid_checkpoint(self.outdir)
            self.load_state(state)
            self.step = int(state["step"])
            print(f"--render_only: the model of {path} (step {self.step})")
            if cfg.viewer:
                self._start_viewer()
                print("viewer: serving this model until Ctrl-C", flush=True)
                self.viewer.serve(stop=lambda: self._interrupt.requested)
                raise SystemExit(0)  # the viewer was what was asked for: no test renders, no videos
            return
        start = 0
        found = load_latest_valid_checkpoint(self.outdir) if cfg.resume else None
        if found is not None:
            resume_from, state = found
            self.load_state(state)
            start = int(state["step"])
            print(f"resuming from {resume_from} at step {start}")
            self.out_of_memory = list(state.get("out_of_memory") or [])
            if self.out_of_memory:
                print("this run lowered its batch after GPU out-of-memory errors (" + _halvings(self.out_of_memory)
                      + "); it goes on with the lowered values")
        elif cfg.resume:
            print(f"--resume: no checkpoint in {self.outdir}, starting from step 0")
        save_config(self.outdir, cfg)
        self.step = start
        self.log_ = TrainLog(self.outdir, total_steps=cfg.iters, start_step=start,
                             desc=f"{self.script} {self.scene_name}")
        if cfg.viewer:
            self._start_viewer()
        for step in range(start + 1, cfg.iters + 1):
            yield step  # the caller runs one training step, ending with run.log(step, ...)
            self.step = step
            if cfg.eval_every and self.validate is not None and (step % cfg.eval_every == 0 or self._stopping):
                with self.log_.paused():  # evaluation time is not training time
                    self.log_.note(step, val_psnr=round(float(self.validate()), 3))
            if step % cfg.ckpt_every == 0 or self._stopping:
                self.checkpoint(step)
            if self._interrupt.requested:
                self.log_.close()
                self._exit_interrupted()
            if self._out_of_time():
                self.log_.write(f"time budget of {cfg.time_budget_s:g} s reached at step {step}")
                break

    def log(self, step: int, loss: float, psnr: float | None = None, lr: float | None = None, extra=None) -> None:
        """Record the step: the progress bar always, a CSV row every cfg.log_every steps and on the last step.
        extra: a function returning more columns (e.g. samples per ray), called only for rows that are written."""
        self._stopping = step == self.cfg.iters or self._out_of_time() or self._interrupt.requested
        write = step % self.cfg.log_every == 0 or self._stopping
        self.log_.step(step, loss=loss, psnr=psnr, lr=lr, write=write, **(extra() if write and extra else {}))
        if self.viewer is not None:
            with self.log_.paused():  # frames for the browser are not training time
                self.viewer.poll(step, psnr if psnr is not None else (-10.0 * math.log10(loss) if loss > 0 else math.inf))

    def train_step(self, training_step, step: int, optimizer=None, batch: dict | None = None) -> None:
        """training_step(step), run again with half the rays per step after each GPU out-of-memory error.

        training_step(step): one step of the loop (sample cfg.batch_rays rays, render, loss, update, run.log).
        optimizer: its gradients are dropped after a failed step (with the rest of what the step held, see
            common.memory.free_memory).
        batch: for a script whose ray count adapts from step to step (04, Instant-NGP App. E.3), the dict whose
            "rays" entry is the count of the next step; it is halved too.
        What is halved, in the Config itself (the step reads it from there; config.json and the checkpoints
        record it, so --resume goes on with it): `batch_rays`, and `samples_per_batch` where the Config has one
        above 0 (04's fixed sample budget, which sizes its step). One warning line says so, log.csv gets the new
        values at that step. Once the rays of the failed step are down to common.memory.SMALLEST_RAYS (or the
        configured count, if smaller), a further error stops the run with a one-line UserError naming the
        settings to lower; the checkpoints already written are kept.
        An error inside optimizer.step() may leave part of the parameters updated; the step is then run again
        from there (the cost of not copying every weight before every step).
        """
        while True:
            try:
                training_step(step)
                return
            except out_of_memory_errors() as err:
                reason = error_reason(err)
            free_memory(optimizer)  # after the except block: the failed step's tensors are unreachable now
            self._halve_batch(step, reason, batch)

    def _halve_batch(self, step: int, reason: str, batch: dict | None) -> None:
        cfg = self.cfg
        rays = int(batch["rays"]) if batch is not None else int(cfg.batch_rays)
        first = self.out_of_memory[0]["before"] if self.out_of_memory else {}
        floor = smallest(first.get("rays", rays))
        budget = int(getattr(cfg, "samples_per_batch", 0) or 0)
        if rays <= floor:
            newest = latest_checkpoint(self.outdir)
            raise UserError(
                f"GPU out of memory at step {step} even with {rays} rays per step, the fewest this run halves down "
                f"to ({reason}): what is left is the model's own memory; in a new run lower --batch_rays below "
                f"{rays}" + (f" and --samples_per_batch below {budget}" if budget else "") + " or the model's size "
                f"(see --help), or use a GPU with more memory. The checkpoints in {self.outdir} are kept"
                + (f" (newest: {newest.name})" if newest else ""))
        before = dict(rays=rays, batch_rays=int(cfg.batch_rays))
        cfg.batch_rays = max(smallest(first.get("batch_rays", cfg.batch_rays)), int(cfg.batch_rays) // 2)
        after = dict(rays=max(floor, rays // 2), batch_rays=cfg.batch_rays)
        if budget:  # 04's sample budget sizes its step: halve it with the rays
            before["samples_per_batch"] = budget
            cfg.samples_per_batch = after["samples_per_batch"] = max(SMALLEST_SAMPLES, budget // 2)
        if batch is not None:
            batch["rays"] = after["rays"]
        self.out_of_memory.append(dict(step=step, before=before, after=after))
        settings = " ".join(f"--{key} {value}" for key, value in after.items() if key != "rays")
        warn(f"GPU out of memory at step {step} with {rays} rays per step ({reason}): freed what the step held, "
             f"running it again with {after['rays']} rays; {settings} from now on (in config.json, log.csv and the "
             f"checkpoints, so --resume keeps it)")
        save_config(self.outdir, cfg)
        if self.log_ is not None:
            self.log_.note(step, echo=False, **{key: value for key, value in after.items() if key != "rays"})

    def checkpoint(self, step: int) -> Path:
        path = checkpoint_path(self.outdir, step)
        try:
            return save_checkpoint(path, dict(step=step, script=self.script, scene=self.scene_name,
                                              config=dataclasses.asdict(self.cfg), out_of_memory=self.out_of_memory,
                                              **self.save_state()))
        except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM while writing: save_checkpoint wrote nothing
            self._unwritten_checkpoint = path
            raise

    def _start_viewer(self) -> None:
        from common.viewer import start_viewer, view_renderer_from_rays

        if self.render is None:
            raise UserError(f"--viewer: {self.script}.py gives its training loop no renderer to show")
        render_view = view_renderer_from_rays(self.render) if hasattr(self.render, "chunk") else self.render
        self.viewer = start_viewer(self.cfg, self.scene, render_view, title=f"{self.script} · {self.scene_name}")

    def _out_of_time(self) -> bool:
        return self.cfg.time_budget_s > 0 and self.elapsed() >= self.cfg.time_budget_s

    def _exit_interrupted(self) -> None:
        signal_name = self._interrupt.signal_name or "Ctrl-C"
        if self._unwritten_checkpoint is not None:
            previous = latest_checkpoint(self.outdir)
            where = (f"while writing {self._unwritten_checkpoint.name}, which was not written; " +
                     (f"the previous checkpoint {previous} survives" if previous else "there is no earlier checkpoint"))
        else:
            where = f"at step {self.step}; last checkpoint: {latest_checkpoint(self.outdir)}"
        print(f"\ninterrupted ({signal_name}) {where}; continue with: python {self.script}.py --resume --outdir "
              f"{self.outdir}")
        raise SystemExit(self._interrupt.exit_status or 130)


# 04's --samples_per_batch is not halved below this: its ray count never goes below 128 rays (RAY_GRANULARITY)
# of at least one sample each.
SMALLEST_SAMPLES = 128


def _halvings(events: list[dict]) -> str:
    """'--batch_rays 4096 -> 1024 at steps 3, 3' from TrainingRun.out_of_memory."""
    first, last = events[0]["before"], events[-1]["after"]
    changes = ", ".join(f"--{key} {first[key]} -> {last[key]}" for key in last if key != "rays" and key in first)
    return f"{changes} at step{'s' if len(events) > 1 else ''} " + ", ".join(str(e["step"]) for e in events)


# What --render_only takes from today's command line; every other setting comes from the checkpoint's config.
RENDER_SETTINGS = ("outdir", "datadir", "device", "backend", "chunk", "n_test_views", "video_frames",
                   "render_only", "camera_path", "dead_model_check", "viewer", "viewer_port")


def prepare_run(cfg, script: str, required_keys=(), output_settings=()):
    """Everything that must be settled before a script builds its model or loads data, in one call from main():

      * --outdir: its default (runs/<script>/<scene>) filled in, and checked (a file, a read-only place: one
        line, before any data loads);
      * --camera_path: read now, so that a bad pose file fails before training, not after;
      * --render_only: the Config comes from the latest checkpoint's saved config (the model must be rebuilt as
        it was trained, whatever today's defaults or preset), keeping only RENDER_SETTINGS from the command line;
      * --resume: the Config is reconciled with the newest readable checkpoint's (common.checkpoints.
        resume_config: settings not typed again come from the checkpoint, contradicting ones are refused, as is
        a checkpoint of another script).
    script: e.g. "01_nerf"; required_keys: what the script's checkpoints hold (e.g. ("coarse", "fine")), to
    recognise a folder of another script; output_settings: the script's own settings that, like RENDER_SETTINGS,
    only say what to write (e.g. 04's export_mesh). Returns the Config to run with.
    """
    outdir = cfg.outdir or default_outdir(script, cfg.scene)
    prepare_run_folder(outdir, create=False)
    cfg = dataclasses.replace(cfg, outdir=str(outdir))
    if cfg.camera_path:
        load_camera_path(cfg.camera_path)
    if cfg.viewer:  # a busy port or a missing viser: one line now, not after the data has loaded
        from common.viewer import check_port_free, viser_available

        viser_available()
        check_port_free(cfg.viewer_port)
    if cfg.render_only:
        found = load_latest_valid_checkpoint(outdir)
        if found is None:
            raise UserError(f"--render_only: no checkpoint (ckpt_*.pt) in {outdir}: train first, or pass the "
                            f"--outdir of a finished run")
        path, state = found
        saved_script = state.get("script", script)
        if saved_script != script:
            raise UserError(f"--render_only: {path} was written by {saved_script}.py, not {script}.py: run "
                            f"python {saved_script}.py --render_only --outdir {outdir}")
        known = {f.name for f in dataclasses.fields(cfg) if f.init and f.name != "cli_options"}
        saved = {key: value for key, value in state["config"].items() if key in known}
        saved.update({key: getattr(cfg, key) for key in (*RENDER_SETTINGS, *output_settings)})
        return dataclasses.replace(cfg, **saved)
    if cfg.resume:
        found = load_latest_valid_checkpoint(outdir)
        if found is not None:
            path, state = found
            cfg = resume_config(state, cfg, script, checkpoint_file=path, required_keys=required_keys)
    return cfg


def decayed_learning_rate(lr: float, lr_final: float, step: int, iters: int, elapsed_s: float = 0.0,
                          time_budget_s: float = 0.0) -> float:
    """Exponential decay from lr (step 0) to lr_final (the last step): lr * (lr_final / lr)^progress (NeRF
    Sec. 5.3; 04 uses it too, where Instant-NGP steps the rate down instead). progress = step / iters, or the
    fraction of a time budget spent if that is further along, so that a run cut short by --time_budget_s still
    ends on the small learning rate."""
    progress = step / max(iters, 1)
    if time_budget_s > 0:
        progress = max(progress, elapsed_s / time_budget_s)
    return lr * (lr_final / lr) ** min(progress, 1.0)


class GracefulInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM during training asks the loop to stop after the current step, so that the
    checkpoint written then holds a consistent state (a step is never half-applied) and nothing completed is
    lost. SIGTERM is what a cluster scheduler (Slurm, Kubernetes) or `kill` sends some seconds before killing
    a job: without a handler Python dies on the spot and the steps since the last regular checkpoint are lost.

        with GracefulInterrupt() as interrupt:
            for step in ...:
                ...one full step...
                if interrupt.requested: save a checkpoint, then stop (exit status interrupt.exit_status)

    `signal_name` says what arrived ("Ctrl-C" or "SIGTERM") and `exit_status` is the conventional status to
    exit with (130 = 128 + SIGINT, 143 = 128 + SIGTERM). A second signal raises KeyboardInterrupt (for SIGTERM
    its subclass common.errors.Terminated) at once. Outside the main thread (where Python cannot install
    signal handlers) it does nothing and signals behave as usual.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, message: str = "finishing this step and saving a checkpoint (send it again to stop at once)"):
        self.message = message
        self.requested = False
        self.signal_name: str | None = None
        self.exit_status: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested = True
        self.signal_name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        self.exit_status = 128 + signum
        print(f"\n{self.signal_name}: {self.message}", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _formatted(row: dict) -> dict:
    """CSV cells: floats with 6 significant digits, None as an empty cell."""
    return {k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


def plot_psnr_curve(csv_path, png_path, title: str | None = None) -> Path:
    """Plot PSNR against step from a log.csv (training "psnr", and "val_psnr" points when the log has them)
    into a PNG with matplotlib's Agg renderer (no window); returns png_path.

    Uses matplotlib's object-oriented Figure, which needs no pyplot and changes no global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))

    def series(column):
        points = [(int(float(r["step"])), float(r[column])) for r in rows if r.get(column) not in (None, "", "inf")]
        return [p[0] for p in points], [p[1] for p in points]

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(*series("psnr"), linewidth=1.0, label="train")
    if rows and "val_psnr" in rows[0]:
        axes.plot(*series("val_psnr"), "o", markersize=4, label="val")
        axes.legend()
    axes.set_xlabel("step")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title(title or Path(csv_path).parent.name)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    png_path = Path(png_path)
    with writing(png_path):  # a full disk or a read-only place: one line naming the file
        png_path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(png_path)
    return png_path


# ------------------------------------------------------------------------------------------------
# A run that diverges stops at the step it happens, instead of training on NaN and exiting 0
# ------------------------------------------------------------------------------------------------
class NonFiniteError(UserError):
    """The loss or a gradient became NaN or infinite: training stops (run_main exits 2) at the step it happens,
    before the optimizer applies it, so the weights and the checkpoints on disk stay finite."""


def check_finite(step: int, loss: torch.Tensor, parameters=None, lr: float | None = None, scaler=None) -> None:
    """Raise NonFiniteError, one line naming the step and the likely causes, if `loss` or the gradient of any
    of `parameters` holds a NaN or an Inf. Call it after backward() and before optimizer.step().

    The failure it prevents: with too high a learning rate (04_hashnerf --lr 1e6) the loss turns NaN within a
    few steps; the NaN gradient then makes every weight NaN, after which a NeRF renders only the background,
    the loss even looks plausible again, and the run ends with exit status 0, a dead model and white renders.
    Bad data (a NaN pixel or pose) does the same from step 1.

    loss: the scalar loss of the step (the unscaled one when a GradScaler is used).
    parameters: iterable of tensors whose .grad to check (None: the loss only). With an enabled `scaler`
        (fp16 mixed precision) the gradients are not checked: inf gradients are then a normal event the scaler
        handles by skipping the step and lowering its scale; only a non-finite loss is an error.
    lr: the learning rate of the step, named in the message when given.
    Cost: one norm per gradient tensor, stacked, and one device-to-host sync for the whole check (not one per
    tensor). A norm that overflows to Inf (gradients ~1e19 in float32) is reported too: that step would
    diverge anyway.
    """
    checked = [loss.detach().float().reshape(())]
    if parameters is not None and not (scaler is not None and scaler.is_enabled()):
        grads = [p.grad.detach() for p in parameters if p.grad is not None]
        checked += [torch.linalg.vector_norm(g.float()) for g in grads]
    values = torch.stack([value.to(checked[0].device) for value in checked])  # (1 + number of gradients,)
    if bool(torch.isfinite(values).all()):  # the one sync
        return
    what = f"the loss is {float(values[0])}" if not math.isfinite(float(values[0])) else "a gradient is not finite"
    lr_text = f" (--lr {lr:g} at this step)" if lr is not None else ""
    raise NonFiniteError(
        f"training diverged at step {step}: {what}. Likely causes: a learning rate too high{lr_text}, try a "
        f"smaller --lr; or NaN/Inf values in the data (images, poses). The step was not applied; the checkpoints "
        f"already in the run folder are kept"
    )
