"""Run many independent tasks: here, N at a time; on a Ray cluster; or as a SLURM job array through submitit.

Shared by the two programs that fan work out: `course.grade_all` (one task per student) and
`benchmarks.compare` (one task per method x scene x seed cell). We do not write a scheduler: the engines are
existing ones, and this module only gives them one calling convention.

    outcomes = run_tasks(grade_one, tasks, engine="local", jobs=2, on_done=save_row)

- `fn(task)` runs one task and returns a JSON-able result. It must be a module-level function (Ray and
  submitit send it to another process by reference, so the worker must be able to import its module) and it
  should do its heavy work in a subprocess of its own (a training script, a sandboxed grader), so that a task
  that crashes, hangs or eats memory takes only itself down.
- `on_done(outcome)` is called in this process as each task finishes, in the order they finish, never
  concurrently: the place to write a result file, so that a run killed half-way keeps what finished (both
  callers resume by skipping tasks whose file exists).
- An exception raised by `fn` does not stop the others: its outcome carries `error` (one line) instead of
  `result`.

Engines:
- `local`: a thread pool of `jobs` threads in this process (each thread waits on its task's subprocess, so
  threads are enough; nothing is pickled).
- `ray`: `ray.init(address=...)` on an existing cluster (`ray start --head` on one node, `ray start
  --address=<head>` on the others), one remote call per task with `cpus_per_task` CPUs. The project folder must
  be at the same path on every node (a shared file system, as on most clusters); the workers get it on their
  PYTHONPATH.
- `slurm`: a submitit `AutoExecutor` array (`slurm_options` go to `update_parameters`, e.g.
  `{"slurm_partition": "gpu", "timeout_min": 60, "gpus_per_node": 1}`). A task killed for time or preempted
  receives SIGTERM, which the scripts turn into a checkpoint, and is requeued by submitit (the task is a
  `Checkpointable`); rerunning the same task resumes from that checkpoint. `submitit_cluster="local"` runs the
  same array as local processes (how the tests exercise it), `"debug"` in this process.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from common.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("local", "ray", "slurm")
POLL_S = 0.5  # how often the slurm engine asks submitit which jobs finished


@dataclass
class Outcome:
    index: int  # position of the task in the list given to run_tasks
    task: Any
    result: Any = None  # what fn returned (None where it raised)
    error: str | None = None  # one line: the exception's type and message, where fn raised

    @property
    def ok(self) -> bool:
        return self.error is None


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: " + " ".join(str(error).split())


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence, *, engine: str = "local", jobs: int = 1,
              on_done: Callable[[Outcome], None] | None = None, ray_address: str | None = None,
              cpus_per_task: float = 1, slurm_options: dict | None = None, log_dir=None,
              submitit_cluster: str | None = None) -> list[Outcome]:
    """Run `fn` on every task with the chosen engine; return the outcomes in the order of `tasks`."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {jobs})")
    tasks = list(tasks)
    outcomes: list[Outcome | None] = [None] * len(tasks)
    lock = threading.Lock()

    def finished(outcome: Outcome) -> None:
        with lock:  # on_done is never called concurrently, whatever the engine
            outcomes[outcome.index] = outcome
            if on_done is not None:
                on_done(outcome)

    if not tasks:
        return []
    if engine == "local":
        _run_local(fn, tasks, jobs, finished)
    elif engine == "ray":
        _run_ray(fn, tasks, finished, ray_address, cpus_per_task, jobs)
    else:
        _run_slurm(fn, tasks, finished, slurm_options or {}, log_dir, submitit_cluster, cpus_per_task)
    return outcomes  # type: ignore[return-value]


def _call(fn, index: int, task) -> Outcome:
    try:
        return Outcome(index, task, result=fn(task))
    except Exception as error:  # one task's failure is its own outcome, never the end of the others
        return Outcome(index, task, error=_one_line(error))


def _run_local(fn, tasks, jobs, finished) -> None:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(_call, fn, i, task) for i, task in enumerate(tasks)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished(future.result())


def _import_root(fn) -> str:
    """The folder from which `fn`'s module imports: the workers (Ray's, submitit's) import `fn` by name."""
    module = sys.modules[fn.__module__]
    root = Path(module.__file__).resolve().parent
    for _ in range(fn.__module__.count(".")):
        root = root.parent
    return str(root)


def _worker_path(fn) -> str:
    """PYTHONPATH for the workers: the project, the folder of fn's module, and what this process already had.
    On a cluster these folders must exist at the same paths on every node (a shared file system)."""
    paths = [str(REPO_ROOT), _import_root(fn)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(paths))


def _run_ray(fn, tasks, finished, address, cpus_per_task, jobs) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("the ray engine needs Ray: pip install -r requirements-cluster.txt") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or "auto", runtime_env={"env_vars": {"PYTHONPATH": _worker_path(fn)}}, log_to_driver=False,
                     logging_level="ERROR")
        except ConnectionError as error:
            raise UserError(f"no Ray cluster at {address or 'auto'} ({' '.join(str(error).split())[:120]}): "
                            f"start one with `ray start --head` or pass its address") from None
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(_call)
    # At most `jobs` in flight from here: Ray would queue the rest anyway, but keeping the queue here means a
    # Ctrl-C of this driver leaves few tasks behind on the cluster.
    waiting = list(enumerate(tasks))
    running: dict = {}  # object ref -> index of its task
    while waiting or running:
        while waiting and len(running) < jobs:
            i, task = waiting.pop(0)
            running[remote.remote(fn, i, task)] = i
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            i = running.pop(ref)
            try:
                finished(ray.get(ref))
            except Exception as error:  # the worker died (killed for memory, node lost): that task's outcome
                finished(Outcome(i, tasks[i], error=_one_line(error)))


class _Requeueable:
    """A submitit task that is requeued, unchanged, when SLURM sends it SIGTERM for time or preemption: the
    task itself (a script run with --resume) continues from the checkpoint the script wrote on SIGTERM."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, index, task):
        return _call(self.fn, index, task)

    def checkpoint(self, index, task):
        import submitit

        return submitit.helpers.DelayedSubmission(self, index, task)


def _run_slurm(fn, tasks, finished, slurm_options, log_dir, cluster, cpus_per_task) -> None:
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm engine needs submitit: pip install -r requirements-cluster.txt") from None
    folder = Path(log_dir or "submitit_logs") / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    parameters = {"cpus_per_task": max(1, int(cpus_per_task))}
    parameters.update(slurm_options)
    executor.update_parameters(**parameters)
    job_fn = _Requeueable(fn)
    saved_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _worker_path(fn)  # sbatch (and the local executor) pass the environment on
    try:
        with executor.batch():  # one SLURM array for the whole list
            jobs = [executor.submit(job_fn, i, task) for i, task in enumerate(tasks)]
    finally:
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path
    pending = dict(enumerate(jobs))
    while pending:
        for i in [i for i, job in pending.items() if job.done()]:
            job = pending.pop(i)
            try:
                finished(job.result())
            except Exception as error:  # the job itself failed (killed, out of memory, not requeued)
                finished(Outcome(i, tasks[i], error=_one_line(error)))
        if pending:
            time.sleep(POLL_S)


