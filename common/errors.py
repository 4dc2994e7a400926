"""Errors the user can fix, reported as one line instead of a traceback.

A `UserError` message names the file or option at fault and says how to fix it, e.g.
"data/nerf_synthetic/lego/train/r_7.png is missing: re-extract the scene ...". Scripts wrap their `main()` in
`common.cli.run_main`, which prints `error: <message>` to stderr and exits with status 2. Everything else (a
bug) propagates with its full traceback.
"""


class UserError(Exception):
    """A problem with the user's data, files or options; the message is one line naming the file and the fix."""
