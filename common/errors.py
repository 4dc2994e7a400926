"""Errors the user can fix, reported as one line instead of a traceback.

A `UserError` message names the file or option at fault and says how to fix it, e.g.
"data/nerf_synthetic/lego/train/r_7.png is missing: re-extract the scene ...". Scripts wrap their `main()` in
`common.cli.run_main`, which prints `error: <message>` to stderr and exits with status 2. Everything else (a
bug) propagates with its full traceback.
"""
import contextlib
import errno


class UserError(Exception):
    """A problem with the user's data, files or options; the message is one line naming the file and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (what a cluster scheduler or `kill` sends before killing a job). A KeyboardInterrupt, so
    that every `except KeyboardInterrupt` that cleans up after Ctrl-C (saving a checkpoint, closing the log,
    releasing the run folder) does the same for SIGTERM. Raised by the handlers of common.cli.run_main and
    common.training.GracefulInterrupt."""


def warn(message: str) -> None:
    """Print `warning: <message>` as one line on stderr: something the user should know that does not stop
    the run (a fallback taken, an assumption made about their data)."""
    import sys

    print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


# Errors of the place being written to, not of the program: a full disk, a quota, a read-only file or file
# system, a permission, a failing device. Each is fixed by the user (space, permissions, another --outdir).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                         errno.EFBIG})


def disk_error_reason(err: OSError) -> str:
    """Why a write failed, in words: 'no space left on the device', 'read-only file system', ..."""
    return {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.EIO: "input/output error",
            errno.EFBIG: "file too large"}.get(err.errno, err.strerror or str(err))


def disk_error_fix(err: OSError) -> str:
    """What to do about it: free space for a full disk or quota, else make the place writable."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space, or pass another --outdir"
    return "make it writable, or pass another --outdir"


@contextlib.contextmanager
def writing(path):
    """Turn a full disk or a read-only place while writing `path` into one line naming the file and the fix:

        with writing(outdir / "log.csv"):
            ...open, write, rename...

    An OSError whose errno is in DISK_ERRNOS becomes a UserError (run_main: `error: ...`, exit status 2), which
    says that the checkpoints are kept: --resume continues the training, --render_only renders again. (The
    checkpoints' own writes, common.checkpoints.save_checkpoint, say the same with the checkpoint that
    survives.) Any other error propagates unchanged. The failure it prevents: a disk that fills up during a
    long run ended in a traceback from inside csv, matplotlib or imageio."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        raise UserError(f"cannot write {path} ({disk_error_reason(err)}): {disk_error_fix(err)}; the checkpoints "
                        f"already written are kept (--resume continues the training, --render_only renders "
                        f"again)") from err
