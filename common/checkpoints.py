"""Checkpoints that survive a crash: a save either fully replaces the previous file or leaves it untouched.

Files are `ckpt_<step>.pt` in the run folder (see `checkpoint_path`); `latest_checkpoint` finds the newest one
for `--resume`, `load_latest_valid_checkpoint` reads the newest one that can be read (falling back past a
damaged one), and `resume_config` checks that the run being resumed is the one the checkpoint came from.
"""
import dataclasses
import errno
import os
import re
import secrets
from pathlib import Path

import torch

from common.errors import UserError, disk_error_reason, warn

_STEP_IN_NAME = re.compile(r"(\d+)$")


def checkpoint_path(outdir, step: int) -> Path:
    """<outdir>/ckpt_<step, 6 digits>.pt"""
    return Path(outdir) / f"ckpt_{step:06d}.pt"


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` atomically; returns path.

    torch.save goes to a temporary file in the same folder (same file system, so the rename is atomic), which
    is flushed and fsync'ed before os.replace swaps it in: after a crash at any point the path holds either
    the previous checkpoint or the new one, never half of one, and the temporary file is removed.
    The file gets the permissions of every other output (0666 less the umask, e.g. group-readable), not the
    owner-only 0600 of tempfile.mkstemp, so that a group sharing the run folder can resume or evaluate it.

    A write that fails (a full disk, a quota, an I/O error) raises a one-line UserError saying that nothing
    was replaced and naming the checkpoint that survives; a Ctrl-C or SIGTERM during the write is raised as
    that KeyboardInterrupt (or common.errors.Terminated). torch.save reports both as a RuntimeError of its zip
    writer ("unexpected pos ..."), whose context holds the real cause: that used to reach the user as a
    traceback from inside torch.save.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    except OSError as err:
        raise _write_failed(path, err) from err
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp_name, path)
    except BaseException as err:  # also on KeyboardInterrupt: never leave a temporary file behind
        Path(tmp_name).unlink(missing_ok=True)
        cause = _first_in_chain(err, (KeyboardInterrupt, OSError))
        if isinstance(cause, KeyboardInterrupt) and cause is not err:
            raise cause.with_traceback(None) from None
        if isinstance(cause, OSError):
            raise _write_failed(path, cause) from err
        raise
    try:  # make the rename itself durable (POSIX; not possible on every platform/file system)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _first_in_chain(err: BaseException, types: tuple):
    """The first exception of one of `types` in err, its context, the context's context, ... (None if none)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _write_failed(path: Path, err: OSError) -> UserError:
    """The one line for a checkpoint that could not be written: why, and which checkpoint survives."""
    reason = disk_error_reason(err)  # the same words as every other output's (common.errors.writing)
    previous = latest_checkpoint(path.parent)
    survivor = (f"the previous checkpoint {previous} survives" if previous is not None
                else "there is no earlier checkpoint")
    fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    return UserError(f"cannot write checkpoint {path} ({reason}): nothing was replaced, {survivor}; {fix} and "
                     f"continue with --resume")


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; a one-line UserError if it is missing or unreadable.

    Checkpoints are pickles written by this project (weights_only=False so that they may hold optimizer and
    RNG states of any type): never load one from an untrusted source.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: check the path or run without --resume")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or foreign files raise pickle/zip/runtime errors of many kinds
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"cannot read checkpoint {path} ({reason}): delete it, or run without --resume / with another --outdir"
        ) from err


def list_checkpoints(outdir) -> list[Path]:
    """The `*.pt` files of outdir, newest first: by the step the file name ends with (files without one count
    as step -1), ties by modification time. Temporary files of an interrupted save (hidden, ".tmp") are
    ignored. [] if outdir is not a folder."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return []
    candidates = [p for p in outdir.glob("*.pt") if p.is_file() and not p.name.startswith(".")]

    def order(p: Path):
        match = _STEP_IN_NAME.search(p.stem)
        return (int(match.group(1)) if match else -1, p.stat().st_mtime)

    return sorted(candidates, key=order, reverse=True)


def latest_checkpoint(outdir) -> Path | None:
    """The checkpoint of the highest step among the `*.pt` files of outdir (see `list_checkpoints`), or None
    if there is none."""
    checkpoints = list_checkpoints(outdir)
    return checkpoints[0] if checkpoints else None


def load_latest_valid_checkpoint(outdir, map_location="cpu") -> tuple[Path, dict] | None:
    """(path, state) of the newest checkpoint of outdir that can be read, or None if outdir has none.

    The failure it prevents: a newest checkpoint that is damaged (a disk error, a copy cut short, a file
    written by something else) used to stop --resume with no way on but deleting files by hand. Older
    checkpoints are tried in turn, newest first, and a one-line warning on stderr names the file skipped and
    the one used. A readable file that is not a checkpoint of this project (not a dict with a "step") counts
    as damaged. If none can be read, a UserError names the newest and why it failed.
    """
    checkpoints = list_checkpoints(outdir)
    skipped = []
    for path in checkpoints:
        try:
            state = load_checkpoint(path, map_location=map_location)
        except UserError as err:
            skipped.append((path, _reason_of(err)))
            continue
        if not isinstance(state, dict) or "step" not in state:
            skipped.append((path, "not a checkpoint of these scripts"))
            continue
        if skipped:
            warn(f"checkpoint {skipped[0][0]} cannot be read ({skipped[0][1]})"
                 + (f" nor can {len(skipped) - 1} more after it" if len(skipped) > 1 else "")
                 + f": resuming from {path} (step {state['step']}) instead")
        return path, state
    if skipped:
        raise UserError(f"no checkpoint in {outdir} can be read (the newest, {skipped[0][0]}: {skipped[0][1]}): "
                        f"delete them, or run without --resume / with another --outdir")
    return None


def _reason_of(err: UserError) -> str:
    cause = err.__cause__
    if cause is None:
        return str(err)
    return (str(cause).splitlines()[0] if str(cause) else type(cause).__name__)[:200]


# ------------------------------------------------------------------------------------------------
# --resume against the configuration the checkpoint was trained with
# ------------------------------------------------------------------------------------------------
# Settings that may change when a run is resumed: how long it runs, how often it logs, evaluates and
# checkpoints, what it renders at the end (views, videos, a camera path), where and on what it computes.
# None of them changes the model or the training of the steps already done. Every other setting (scene, datadir, downscale, the architecture,
# the sampler, the learning-rate schedule, batch size, seed, presets) is part of the run: a resumed run keeps
# the checkpoint's values, so that its config.json, its log and its result describe one consistent run.
RESUMABLE_FIELDS = frozenset({
    "iters", "time_budget_s", "log_every", "eval_every", "ckpt_every", "n_test_views", "video_frames",
    "chunk", "device", "backend", "resume", "outdir", "cli_options", "render_only", "camera_path",
    "export_mesh", "mesh_resolution", "mesh_threshold",  # what 04 writes at the end
    "dead_model_check",  # whether a model that learned nothing stops the run at the end or only warns
    "viewer", "viewer_port",  # a live viewer of the run (common/viewer.py)
})


def resume_config(checkpoint: dict, cfg, script: str, checkpoint_file=None, resumable=RESUMABLE_FIELDS,
                  required_keys=()):
    """The configuration to resume with: `cfg` with every setting the checkpoint fixes taken from it.

    checkpoint: the loaded checkpoint dict; its "config" (vars(cfg) of the run that wrote it) and "script"
        (e.g. "01_nerf") are compared with the new run.
    cfg: the new run's Config dataclass. Its `cli_options` (set by common.cli.parse_config) tells which
        options the user typed; None (a Config built in code) counts every field as chosen.
    script: the name of the script resuming, e.g. "01_nerf".
    checkpoint_file: the checkpoint's path, for the messages.
    resumable: the fields that may differ (default RESUMABLE_FIELDS, see there).
    required_keys: entries the script needs in the checkpoint (e.g. ("coarse", "fine")); checked for
        checkpoints from before "script" was recorded.

    The failures it prevents: resuming with a changed architecture flag ended in a size-mismatch traceback of
    load_state_dict; 01_nerf.py --resume on a folder of 04_hashnerf ended in KeyError: 'coarse'; a checkpoint
    of the built-in scene resumed with --scene lego silently went on training on lego.
    Rules, field by field (fields the checkpoint does not record are left as they are):
      * in `resumable`: the new value is used;
      * equal to the checkpoint's value: nothing to do;
      * not typed on the command line: the checkpoint's value is used (one line on stdout lists them, e.g.
        "resuming with the checkpoint's settings: net_width=64, n_coarse=32"), so `--resume --outdir X`
        alone continues the run that X holds, whatever its preset was;
      * typed and different: a one-line UserError names each contradicting flag with both values.
    A checkpoint written by another script is refused with a UserError naming both scripts.
    Returns a new Config (dataclasses.replace), or cfg itself when nothing is taken.
    """
    where = f"checkpoint {checkpoint_file}" if checkpoint_file is not None else "the checkpoint"
    saved_script = checkpoint.get("script")
    if saved_script is not None and Path(str(saved_script)).stem != Path(script).stem:
        raise UserError(f"{where} was written by {saved_script}.py, not {Path(script).stem}.py: resume it with "
                        f"{saved_script}.py, or pass another --outdir")
    missing = [key for key in required_keys if key not in checkpoint]
    if missing:
        raise UserError(f"{where} has no {', '.join(map(repr, missing))}: it was not written by "
                        f"{Path(script).stem}.py; pass another --outdir")
    saved = checkpoint.get("config") or {}
    typed_options = getattr(cfg, "cli_options", None)
    typed = None if typed_options is None else set(typed_options)
    taken, conflicts = {}, []
    for f in dataclasses.fields(cfg):
        if f.name in resumable or f.name not in saved:
            continue
        old, new = saved[f.name], getattr(cfg, f.name)
        if _same_value(old, new):
            continue
        if typed is None or f.name in typed:
            conflicts.append(f"--{f.name} {_shown(new)} (the checkpoint has {_shown(old)})")
        else:
            taken[f.name] = tuple(old) if isinstance(new, tuple) and isinstance(old, list) else old
    if conflicts:
        raise UserError(f"--resume: {where} was trained with other settings: {'; '.join(conflicts)}. Drop those "
                        f"options to continue that run, or pass another --outdir for a new one")
    if not taken:
        return cfg
    print("resuming with the checkpoint's settings: " + ", ".join(f"{k}={_shown(v)}" for k, v in taken.items()))
    return dataclasses.replace(cfg, **taken)


def _same_value(a, b) -> bool:
    """Equality across the forms a value takes after a round trip: tuple/list, Path/str, 1/1.0."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, Path) or isinstance(b, Path):
        return str(a) == str(b)
    return a == b


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)
