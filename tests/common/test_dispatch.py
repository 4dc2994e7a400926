"""common.dispatch: the same tasks give the same outcomes on every engine; a failing task is its own outcome."""
import os
import time

import pytest

from common.dispatch import Outcome, run_tasks
from common.errors import UserError


def square_or_fail(task):
    """A module-level task (Ray and submitit import it by name): squares, sleeps a little, fails on 3."""
    time.sleep(task.get("sleep", 0))
    if task["x"] == 3:
        raise ValueError("three is refused\nsecond line")
    return {"square": task["x"] ** 2, "pid": os.getpid()}


TASKS = [{"x": x} for x in range(5)]


def check_outcomes(outcomes, seen):
    assert [o.index for o in outcomes] == list(range(5))
    assert [o.result["square"] for o in outcomes if o.ok] == [0, 1, 4, 16]
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1 and failed[0].task == {"x": 3}
    assert failed[0].error == "ValueError: three is refused second line"  # one line
    assert sorted(o.index for o in seen) == list(range(5))  # on_done saw every task once


def test_local_engine_runs_every_task_and_reports_failures_per_task():
    seen = []
    outcomes = run_tasks(square_or_fail, TASKS, engine="local", jobs=2, on_done=seen.append)
    check_outcomes(outcomes, seen)


def test_local_engine_runs_jobs_at_a_time():
    tasks = [{"x": x, "sleep": 0.4} for x in (0, 1, 2, 4)]
    start = time.perf_counter()
    run_tasks(square_or_fail, tasks, engine="local", jobs=4)
    parallel = time.perf_counter() - start
    start = time.perf_counter()
    run_tasks(square_or_fail, tasks, engine="local", jobs=1)
    serial = time.perf_counter() - start
    assert serial > 1.5 and parallel < serial / 2


def test_on_done_is_called_in_finishing_order():
    order = []
    tasks = [{"x": 0, "sleep": 0.6}, {"x": 1, "sleep": 0.0}]
    run_tasks(square_or_fail, tasks, engine="local", jobs=2, on_done=lambda o: order.append(o.index))
    assert order == [1, 0]


def test_unknown_engine_and_bad_jobs_are_user_errors():
    with pytest.raises(UserError, match="unknown engine"):
        run_tasks(square_or_fail, TASKS, engine="kubernetes")
    with pytest.raises(UserError, match="--jobs"):
        run_tasks(square_or_fail, TASKS, jobs=0)


def test_submitit_local_executor_runs_the_array(tmp_path):
    pytest.importorskip("submitit", reason="submitit not installed (requirements-cluster.txt)")
    seen = []
    outcomes = run_tasks(square_or_fail, TASKS, engine="slurm", submitit_cluster="local", log_dir=tmp_path,
                         on_done=seen.append)
    check_outcomes(outcomes, seen)
    assert len({o.result["pid"] for o in outcomes if o.ok} | {os.getpid()}) > 1  # ran in other processes


def test_ray_cluster_runs_the_tasks_in_its_workers(local_ray_cluster):
    seen = []
    outcomes = run_tasks(square_or_fail, TASKS, engine="ray", ray_address=local_ray_cluster, jobs=2,
                         on_done=seen.append)
    check_outcomes(outcomes, seen)
    assert os.getpid() not in {o.result["pid"] for o in outcomes if o.ok}
