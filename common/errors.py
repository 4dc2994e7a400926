"""Errors the user can fix, reported as one line instead of a traceback.

A `UserError` message names the file or option at fault and says how to fix it, e.g.
"data/nerf_synthetic/lego/train/r_7.png is missing: re-extract the scene ...". Scripts wrap their `main()` in
`common.cli.run_main`, which prints `error: <message>` to stderr and exits with status 2. Everything else (a
bug) propagates with its full traceback.
"""


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
