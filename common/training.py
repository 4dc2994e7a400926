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

from common.checkpoints import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from common.errors import UserError

LOG_COLUMNS = ("step", "loss", "psnr", "lr", "elapsed_s")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and all GPUs) for a repeatable run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _json_default(obj):
    """Make Paths, dataclasses, tensors and numpy values JSON-serialisable."""
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path, obj) -> Path:
    """Write obj as indented JSON (Paths, dataclasses, tensors and numpy values allowed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
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

    def note(self, step: int, **values) -> None:
        """Record occasional values (e.g. val_psnr=...) at `step`: printed above the bar and added to the CSV
        (to the row of the same step if there is one, else as a row of their own)."""
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
        with open(self.csv_path, "a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.columns, restval="").writerow(_formatted(row))

    def _rewrite(self) -> None:
        tmp = self.csv_path.with_name(".log.csv.tmp")
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(_formatted(row) for row in self.rows)
        os.replace(tmp, self.csv_path)  # a crash while rewriting keeps the previous file


class NonFiniteError(UserError):
    """Training produced a NaN or an infinity; the message names the step and the likely causes."""


class TrainingRun:
    """The bookkeeping of a training loop, so that the loop on the page shows only the method.

        with TrainingRun(cfg, "01_nerf", scene, device, backend, save_state=..., load_state=..., validate=...) as run:
            for step in run.steps():          # resumes, then yields the steps still to do
                ...sample rays, render, loss...
                optimizer.zero_grad(); loss.backward()
                run.check_finite(step, loss, parameters)   # a NaN/Inf stops the run here, before the update
                optimizer.step()
                run.log(step, loss=loss.item(), psnr=..., lr=lr)

    What it takes care of, in order:
      * one line saying what runs where (preset, device, backend, scene, image size, outdir);
      * the run folder (created, and <outdir>/config.json written);
      * `--resume`: the newest checkpoint of the folder is loaded through `load_state(state)` and the steps
        continue after its step; the log keeps the rows up to it;
      * after each step: a CSV row every `cfg.log_every` steps, a held-out check every `cfg.eval_every` steps
        (`validate()` returns a PSNR; its time is not training time), a checkpoint every `cfg.ckpt_every`
        steps and at the end;
      * stopping: after `cfg.iters` steps, or once `cfg.time_budget_s` seconds of training are spent (then a
        checkpoint), or on Ctrl-C / SIGTERM (the step in progress finishes, a checkpoint is written, exit 130).

    save_state() -> dict: what to checkpoint besides the step (network, optimizer and RNG states);
    load_state(state: dict): puts a checkpoint back; validate() -> float: PSNR of a held-out view (optional).
    """

    def __init__(self, cfg, script: str, scene, device, backend: str, save_state, load_state, validate=None):
        self.cfg, self.script, self.scene_name = cfg, script, scene.name
        train_cams = scene.splits["train"].cameras
        self.summary = (f"{script}: preset {cfg.preset}, device {device}, backend {backend}, scene {scene.name} "
                        f"({len(train_cams)} training images of {train_cams.width}x{train_cams.height}), "
                        f"outdir {cfg.outdir}")
        self.save_state, self.load_state, self.validate = save_state, load_state, validate
        self.outdir = Path(cfg.outdir)
        self.step = 0  # the last completed step
        self.log_ = None
        self._interrupt = GracefulInterrupt()
        self._stopping = False

    # -- context: the interrupt handlers are installed for the whole run and removed on every exit path --
    def __enter__(self):
        self.outdir.mkdir(parents=True, exist_ok=True)
        self._interrupt.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._interrupt.__exit__(exc_type, exc, tb)
        if self.log_ is not None:
            self.log_.close(plot=exc_type is None or exc_type is KeyboardInterrupt)
        if exc_type is KeyboardInterrupt:  # a second Ctrl-C: stop at once, keep the last regular checkpoint
            self._exit_interrupted()
        return False

    def elapsed(self) -> float:
        """Seconds of training so far (the resumed run's included, evaluation excluded)."""
        return self.log_.elapsed() if self.log_ is not None else 0.0

    def steps(self):
        """Resume if asked, then yield the steps start+1 .. cfg.iters, stopping early as described above."""
        cfg = self.cfg
        print(self.summary)
        start = 0
        resume_from = latest_checkpoint(self.outdir) if cfg.resume else None
        if resume_from is not None:
            state = load_checkpoint(resume_from, map_location="cpu")
            self.load_state(state)
            start = int(state["step"])
            print(f"resuming from {resume_from} at step {start}")
        elif cfg.resume:
            print(f"--resume: no checkpoint in {self.outdir}, starting from step 0")
        save_config(self.outdir, cfg)
        self.step = start
        self.log_ = TrainLog(self.outdir, total_steps=cfg.iters, start_step=start,
                             desc=f"{self.script} {self.scene_name}")
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

    def check_finite(self, step: int, loss: torch.Tensor, parameters=(), check_grads: bool = True) -> None:
        """Stop at the step where the loss or a gradient stops being finite, before the optimizer spreads it into
        every weight (after which a NeRF renders only background and its loss can even look normal).

        One synchronisation per step: the loss and all gradient norms are reduced to one flag. Pass
        check_grads=False under fp16 loss scaling, where an infinite gradient is expected now and then (the
        scaler skips that step). Raises NonFiniteError (one line, exit status 2); the checkpoints already written
        hold finite weights and stay as they are.
        """
        values = [loss.detach().float().reshape(1)]
        if check_grads:
            grads = [p.grad.detach() for p in parameters if p.grad is not None]
            if grads:
                values.append(torch.stack([g.float().norm() for g in grads]))
        if bool(torch.isfinite(torch.cat(values)).all()):
            return
        what = "loss" if not torch.isfinite(values[0]).all() else "gradient"
        raise NonFiniteError(
            f"the {what} became NaN or infinite at step {step}; stopped before the update (last checkpoint: "
            f"{latest_checkpoint(self.outdir)}). Likely causes: a learning rate too high for this model (try a "
            f"smaller --lr), or bad training data")

    def checkpoint(self, step: int) -> Path:
        return save_checkpoint(checkpoint_path(self.outdir, step),
                               dict(step=step, script=self.script, scene=self.scene_name,
                                    config=dataclasses.asdict(self.cfg), **self.save_state()))

    def _out_of_time(self) -> bool:
        return self.cfg.time_budget_s > 0 and self.elapsed() >= self.cfg.time_budget_s

    def _exit_interrupted(self) -> None:
        print(f"\ninterrupted at step {self.step}; last checkpoint: {latest_checkpoint(self.outdir)}; continue "
              f"with: python {self.script}.py --resume --outdir {self.outdir}")
        raise SystemExit(130)


def decayed_learning_rate(lr: float, lr_final: float, step: int, iters: int, elapsed_s: float = 0.0,
                          time_budget_s: float = 0.0) -> float:
    """Exponential decay from lr (step 0) to lr_final (the last step): lr * (lr_final / lr)^progress (NeRF Sec. 5.3,
    Instant-NGP Sec. 4). progress = step / iters, or the fraction of a time budget spent if that is further along,
    so that a run cut short by --time_budget_s still ends on the small learning rate."""
    progress = step / max(iters, 1)
    if time_budget_s > 0:
        progress = max(progress, elapsed_s / time_budget_s)
    return lr * (lr_final / lr) ** min(progress, 1.0)


class GracefulInterrupt:
    """Ctrl-C during training asks the loop to stop after the current step, so that the checkpoint written
    then holds a consistent state (a step is never half-applied) and nothing completed is lost.

        with GracefulInterrupt() as interrupt:
            for step in ...:
                ...one full step...
                if interrupt.requested: save a checkpoint, then stop

    A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread (where Python cannot install
    signal handlers) it does nothing and Ctrl-C behaves as usual.
    """

    def __init__(self, message: str = "Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)"):
        self.message = message
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\n" + self.message, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
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
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path)
    return png_path
