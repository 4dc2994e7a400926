"""Checkpoints that survive a crash: a save either fully replaces the previous file or leaves it untouched.

Files are `ckpt_<step>.pt` in the run folder (see `checkpoint_path`); `latest_checkpoint` finds the newest one
for `--resume`.
"""
import os
import re
import tempfile
from pathlib import Path

import torch

from common.errors import UserError

_STEP_IN_NAME = re.compile(r"(\d+)$")


def checkpoint_path(outdir, step: int) -> Path:
    """<outdir>/ckpt_<step, 6 digits>.pt"""
    return Path(outdir) / f"ckpt_{step:06d}.pt"


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` atomically; returns path.

    torch.save goes to a temporary file in the same folder (same file system, so the rename is atomic), which
    is flushed and fsync'ed before os.replace swaps it in: after a crash at any point the path holds either
    the previous checkpoint or the new one, never half of one, and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp_name, path)
    except BaseException:  # also on KeyboardInterrupt: never leave a temporary file behind
        Path(tmp_name).unlink(missing_ok=True)
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


def latest_checkpoint(outdir) -> Path | None:
    """The checkpoint of the highest step among the `*.pt` files of outdir (step = the number the file name
    ends with; files without one count as step -1, ties go to the newest), or None if there is none.
    Temporary files of an interrupted save (hidden, ".tmp") are ignored."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return None
    candidates = [p for p in outdir.glob("*.pt") if p.is_file() and not p.name.startswith(".")]
    if not candidates:
        return None

    def order(p: Path):
        match = _STEP_IN_NAME.search(p.stem)
        return (int(match.group(1)) if match else -1, p.stat().st_mtime)

    return max(candidates, key=order)
