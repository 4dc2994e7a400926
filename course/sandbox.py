"""A throwaway, locked-down process for a student's code: bubblewrap (Debian's `bubblewrap` package) when present.

What the sandboxed worker sees (course/worker.py runs in it):
  /code   read-only: the public release's code (scripts, common/, kernels/, every part blank) with the student's own
          part files on top. Not the solution, not the course kit, not the tests, not another student's folder.
  /judge  read-only: the worker and this grading's request (the calls and their input arrays).
  /out    the only writable folder besides a private /tmp (tmpfs): the worker's answers, read back by the grader
          as numpy arrays (allow_pickle=False).
  the Python runtime and /usr, /lib, /bin read-only; a private /proc and /dev; no network (own network
  namespace, loopback only), own PID, IPC and UTS namespaces; the process tree dies with the grader
  (--die-with-parent, and the PID namespace ends when its first process does).
It runs as an unprivileged user id of its own (no capabilities), under resource limits: address space (memory),
processes (a fork bomb stops at MAX_PROCESSES), file size, open files, no core dumps; the grader kills it after
the time each part is allowed.

Without bubblewrap the grader refuses to grade unless the instructor passes --unsafe_no_sandbox: the worker is then
still a separate process under the same limits (the grade is still decided in the grader's process, out of the
student code's reach), but it runs as the grader's user, can read any file that user can (the solution, other
students), reach the network, and processes it leaves behind are not confined (README, "For instructors").
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

MAX_PROCESSES = 64  # RLIMIT_NPROC of the sandbox's own user id: threads count too
MAX_FILE_BYTES = 256 * 2**20  # RLIMIT_FSIZE: no single file larger than this
MAX_OPEN_FILES = 256
SANDBOX_UID_BASE = 200000  # each sandbox gets a user id of its own above this (no /etc/passwd entry needed)
_uid_lock = threading.Lock()
_uid_counter = [0]

NO_SANDBOX_MESSAGE = ("bubblewrap (bwrap) is not usable here, so student code cannot be sandboxed: install it "
                      "(Debian: apt-get install bubblewrap) and grade as root (the sandbox gets a user id of its own), or pass "
                      "--unsafe_no_sandbox to grade without it (README, 'For instructors', says what that leaves open)")


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 4096  # RLIMIT_AS of every process in the sandbox (torch alone maps ~1.5 GB of address space)
    processes: int = MAX_PROCESSES


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


_probe_result: dict[str, bool] = {}


def sandbox_available() -> bool:
    """Whether bwrap exists and can make the namespaces we ask for, and setpriv can drop to another user id
    (checked once per process by running `true` in the same sandbox the worker gets). Where it can, this
    interpreter must also start in that sandbox and import numpy, or every student would score 0 for a reason of
    the grader's own (a worker dying before it answers reads as the student's fault): that stops in one line."""
    if "ok" not in _probe_result:
        ok = bwrap_path() is not None and shutil.which("setpriv") is not None and os.geteuid() == 0
        if ok:
            try:
                command = bwrap_command(Path("/"), Path("/"), Path("/tmp"), ["/bin/true"], uid=SANDBOX_UID_BASE)
                ok = subprocess.run(command, capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        if ok:
            python_check = bwrap_command(Path("/"), Path("/"), Path("/tmp"), [sys.executable, "-c", "import numpy"],
                                         uid=SANDBOX_UID_BASE)
            try:
                finished = subprocess.run(python_check, capture_output=True, timeout=60)
                problem = (finished.stderr.decode(errors="replace").strip().splitlines() or
                           [f"exit status {finished.returncode}"])[-1] if finished.returncode else None
            except (OSError, subprocess.SubprocessError) as error:
                problem = str(error)
            if problem:
                _probe_result["python_problem"] = problem
        _probe_result["ok"] = ok
    if "python_problem" in _probe_result:
        raise UserError(f"this Python ({sys.executable}) cannot start inside the grader's sandbox "
                        f"({_probe_result['python_problem']}): grade with an interpreter whose files are all "
                        f"world-readable (a virtual environment in a folder other users may enter)")
    return _probe_result["ok"]


def python_roots() -> list[Path]:
    """The folders the worker's interpreter needs: the base installation, the virtual environment, and the real
    location of every site-packages entry (a venv may link to packages elsewhere)."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix)}
    for entry in sys.path:
        if entry and "site-packages" in entry and Path(entry).is_dir():
            roots.add(Path(entry).resolve())
    roots = sorted(roots, key=lambda p: len(p.parts))
    kept = []
    for root in roots:  # drop those inside another one
        if not any(root != other and other in root.parents for other in kept):
            kept.append(root)
    return [root for root in kept if str(root) not in ("/", "/usr")]


def next_uid() -> int:
    with _uid_lock:
        _uid_counter[0] += 1
        return SANDBOX_UID_BASE + (os.getpid() % 1000) * 1000 + _uid_counter[0] % 1000


def bwrap_command(code_dir: Path, judge_dir: Path, out_dir: Path, argv: list[str], *, uid: int) -> list[str]:
    command = [bwrap_path() or "bwrap", "--ro-bind", "/usr", "/usr", "--ro-bind", "/bin", "/bin",
               "--ro-bind", "/lib", "/lib", "--ro-bind-try", "/lib64", "/lib64",
               "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
               # The private /tmp comes before the interpreter's folders: bwrap mounts in order, so a virtual
               # environment that lives under /tmp (a CI checkout there) is bound on top of it, not hidden by it.
               "--perms", "1777", "--tmpfs", "/tmp"]
    made = set()
    for root in python_roots():
        for parent in reversed(root.parents):  # world-readable parents: the worker is not root
            if str(parent) != "/" and parent not in made and not str(parent).startswith("/usr"):
                command += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        command += ["--ro-bind", str(root), str(root)]
    command += ["--ro-bind", str(code_dir), "/code", "--ro-bind", str(judge_dir), "/judge",
                "--bind", str(out_dir), "/out", "--proc", "/proc", "--dev", "/dev",
                "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "PYTHONPATH", "/code",
                "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONNOUSERSITE", "1",
                "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "MKL_NUM_THREADS", "1", "--setenv", "MPLBACKEND", "Agg",
                "--setenv", "NERF_KERNEL_CACHE", "/tmp/kernels", "--chdir", "/code",
                "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--", *argv]
    return command


def limit_command(limits: Limits, argv: list[str]) -> list[str]:
    """prlimit (util-linux) sets the limits on the process it starts; they are inherited by everything below."""
    memory = limits.memory_mb * 2**20
    return ["prlimit", f"--as={memory}", f"--nproc={limits.processes}", f"--fsize={MAX_FILE_BYTES}",
            f"--nofile={MAX_OPEN_FILES}", "--core=0", "--", *argv]


class Worker:
    """One sandboxed (or, unsafe, merely separate) worker process; `kill()` ends it and everything it started."""

    def __init__(self, code_dir: Path, judge_dir: Path, out_dir: Path, first_call: int, *, sandboxed: bool,
                 limits: Limits, log_path: Path):
        self.log = open(log_path, "ab")
        if sandboxed:
            uid = next_uid()
            os.chown(out_dir, uid, uid)
            os.chmod(out_dir, 0o700)
            argv = [sys.executable, "/judge/worker.py", "/judge", "/out", str(first_call)]
            command = limit_command(limits, bwrap_command(code_dir, judge_dir, out_dir, argv, uid=uid))
            env, cwd = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, "/"
        else:
            argv = [sys.executable, str(judge_dir / "worker.py"), str(judge_dir), str(out_dir), str(first_call)]
            command = limit_command(limits, argv)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(out_dir), "PYTHONPATH": str(code_dir),
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "NERF_KERNEL_CACHE": str(out_dir / "kernels")}
            cwd = str(code_dir)
        if shutil.which("prlimit") is None:
            raise UserError("prlimit (util-linux) is missing: the grader needs it to limit student code")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=self.log, start_new_session=True)

    def poll(self):
        return self.process.poll()

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
