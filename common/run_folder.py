"""The run folder (--outdir): checked before any data loads, and owned by one run at a time.

    with RunFolder(outdir) as run_dir:       # one-line UserError if the folder cannot be used or is in use
        scene = load_scene(...)              # a failed start (bad data) leaves no empty folder behind
        ... train, writing config.json, log.csv, checkpoints into run_dir ...

Failures it prevents:
  * an --outdir that is a file, lies under a file, or sits on a read-only or foreign file system used to end
    in a traceback, after the data had loaded; `prepare_run_folder` says so in one line before anything runs;
  * two runs started on the same --outdir both used to exit 0 with one log.csv mixing their rows and
    checkpoints from whichever wrote last; the second run now refuses, naming the first's process.

The lock is `fcntl.flock` on <outdir>/.lock, which also holds the owner's pid, host, start time and command
line (for the message the second run prints). The kernel releases an flock when its process ends, however it
ends (kill -9, a crash, a power cut on a local disk), so a lock file left behind never blocks a later run;
`RunFolder` also releases it (and removes the file) on every exit path it sees: normal end, exception,
Ctrl-C, SIGTERM through common.cli.run_main. flock is advisory and works between processes on one machine;
on NFS it depends on the server (Linux clients emulate it with POSIX locks).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from common.errors import UserError, warn

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against sharing a folder there
    fcntl = None

LOCK_NAME = ".lock"


def _first_existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def prepare_run_folder(outdir, create: bool = True) -> Path:
    """Make sure `outdir` is (or can become) a folder this process can write to; returns it as a Path.

    create: make the folder (and its parents). With create=False nothing is made: the checks are done on the
        nearest existing ancestor (it must be a writable folder), so a run can refuse a bad --outdir before
        loading data without leaving an empty folder behind if loading then fails.
    Raises a one-line UserError naming the path and the fix for: a path that is a file or lies under a file,
    permission denied, a read-only file system, a full disk, and any other OSError.
    """
    outdir = Path(outdir)
    hint = "pass another --outdir"
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--outdir {outdir} is a file, not a folder: {hint}")
    existing = outdir if outdir.is_dir() else _first_existing_ancestor(outdir)
    if not existing.is_dir():
        raise UserError(f"--outdir {outdir} cannot be created: {existing} is a file, not a folder; {hint}")
    if create:
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--outdir {outdir} cannot be created ({_reason(err)}): {hint}") from err
        _probe_write(outdir, hint)
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--outdir {outdir} cannot be created: {existing} is not writable ({_why_unwritable(existing)}); "
                        f"{hint}")
    return outdir


def _reason(err: OSError) -> str:
    if err.errno == errno.EROFS:
        return "read-only file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a part of the path is a file"
    return err.strerror or str(err)


def _why_unwritable(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):
        pass
    return "permission denied"


def _probe_write(outdir: Path, hint: str) -> None:
    """Create and remove a small file: a folder can exist yet refuse writes (read-only mount, permissions)."""
    probe = outdir / f".write-test-{os.getpid()}"
    try:
        with open(probe, "w") as file:
            file.write("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--outdir {outdir} is not writable ({_reason(err)}): {hint}") from err


# Folders held by this process: (real path, thread id) -> how many RunFolder contexts hold it. flock refuses a
# second open of the lock file even within one process, so the nesting of a script's main() (which holds the
# folder from the start of the run to its last file: test renders, videos, mesh) and TrainingRun (which takes it
# for training, also when a notebook calls train() directly) is counted here. Per thread: two runs in threads
# of one process (common.dispatch) on one folder still refuse each other.
_HELD: dict[tuple, int] = {}


class RunFolder:
    """Context manager: prepare `outdir` and hold an exclusive lock on it for the life of the run.

    Entering checks the folder (prepare_run_folder), creates it if needed, and takes a non-blocking flock on
    <outdir>/.lock; if another process holds it, a one-line UserError names that process (pid, host, command,
    start time) and how to go on. Leaving, on every path (return, exception, KeyboardInterrupt, SystemExit),
    removes the lock file and releases the lock, and removes the folder if this RunFolder created it and
    nothing but the lock was written into it (a start that failed, say on missing data, leaves nothing).
    `with RunFolder(outdir) as path:` gives the folder as a Path. Nested in the same thread on the same folder
    (a script's main() holds it for the whole run; TrainingRun takes it again for training), the inner one
    neither locks nor releases: the folder stays locked until the outermost exits.
    """

    def __init__(self, outdir, command: list[str] | None = None):
        self.path = Path(outdir)
        self.lock_path = self.path / LOCK_NAME
        self.command = command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]
        self._fd: int | None = None
        self._created = False
        self._nested_key: tuple | None = None

    def _key(self) -> tuple:
        return os.path.realpath(self.path), threading.get_ident()

    def __enter__(self) -> Path:
        key = self._key()
        if key in _HELD:  # this thread holds the folder already (main() for the whole run, TrainingRun inside it)
            _HELD[key] += 1
            self._nested_key = key
            return self.path
        self._created = not self.path.exists()
        prepare_run_folder(self.path)
        try:
            self._acquire()
        except BaseException:
            self._remove_if_unused()
            raise
        _HELD[self._key()] = 1
        return self.path

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def _acquire(self) -> None:
        if fcntl is None:
            warn(f"no file locking on this platform: nothing stops a second run from writing into {self.path}")
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(
                    f"--outdir {self.path} is in use by {_describe_owner(self.lock_path)}: wait for that run to "
                    f"end (or stop it), or pass another --outdir"
                ) from None
            except OSError as err:
                os.close(fd)
                raise UserError(f"cannot lock --outdir {self.path} ({_reason(err)}): pass another --outdir") from err
            # The previous owner may have removed the file between our open and our flock: then we hold a lock
            # on a deleted file that a third run would not see. Only a lock on the file now at the path counts.
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)
        owner = dict(pid=os.getpid(), host=socket.gethostname(), command=" ".join(self.command),
                     started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(owner) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent); then drop the folder if this run created it
        and wrote nothing else into it. A nested RunFolder of a folder this thread already held only gives its
        hold back: the outermost one releases."""
        if self._nested_key is not None:
            _HELD[self._nested_key] -= 1
            self._nested_key = None
            return
        if self._fd is not None:
            _HELD.pop(self._key(), None)
            try:
                self.lock_path.unlink(missing_ok=True)  # while still holding the lock: see _acquire
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            try:
                self.path.rmdir()
            except OSError:
                pass


def _describe_owner(lock_path: Path) -> str:
    """'process 1234 on host (python 01_nerf.py --quick, started 2026-...)' from the lock file, as far as it can
    be read (the owner writes it just after taking the lock, so it may still be empty)."""
    try:
        owner = json.loads(lock_path.read_text())
        return (f"process {owner['pid']} on {owner['host']} ({owner['command']}, started {owner['started']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
