"""The run folder: a bad --outdir is one line before anything runs, and two runs never share a folder."""
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from common.run_folder import LOCK_NAME, RunFolder, prepare_run_folder

REPO_ROOT = Path(__file__).resolve().parents[2]

# A second process that takes the lock on argv[1], says so, and holds it until its stdin closes or it is killed.
HOLDER = (
    "import sys; sys.path.insert(0, sys.argv[2])\n"
    "from common.run_folder import RunFolder\n"
    "with RunFolder(sys.argv[1], command=['01_nerf.py', '--quick']):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.readline()\n"
)


@pytest.fixture
def holder(tmp_path):
    """start(outdir) -> a running process that holds the lock on outdir."""
    processes = []

    def start(outdir):
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(outdir), str(REPO_ROOT)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in processes:  # only the processes this fixture started
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_second_run_on_the_same_folder_refuses_naming_the_first_process(tmp_path, holder):
    first = holder(tmp_path / "run")
    with pytest.raises(UserError) as error:
        with RunFolder(tmp_path / "run"):
            pass
    message = str(error.value)
    assert f"is in use by process {first.pid} " in message and "01_nerf.py --quick" in message
    assert "--outdir" in message and "\n" not in message
    first.stdin.close()  # the first run ends normally: its lock file goes, the folder is free
    assert first.wait(timeout=30) == 0
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunFolder(tmp_path / "run"):
        pass


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path, holder):
    first = holder(tmp_path / "run")
    os.kill(first.pid, signal.SIGKILL)  # no clean-up at all: the lock file stays, the kernel drops the flock
    first.wait(timeout=30)
    assert (tmp_path / "run" / LOCK_NAME).exists()
    with RunFolder(tmp_path / "run") as run_dir:
        assert f'"pid": {os.getpid()}' in (run_dir / LOCK_NAME).read_text()


def test_the_lock_is_released_on_an_exception_and_on_ctrl_c(tmp_path):
    (tmp_path / "run").mkdir()
    for error in (RuntimeError("bug"), KeyboardInterrupt(), SystemExit(2)):
        with pytest.raises(type(error)):
            with RunFolder(tmp_path / "run"):
                raise error
        assert not (tmp_path / "run" / LOCK_NAME).exists()
        with RunFolder(tmp_path / "run"):  # free again
            pass


def test_two_runs_in_two_threads_of_one_process_conflict_too(tmp_path):
    import threading

    refusals = []

    def second_run():
        try:
            with RunFolder(tmp_path / "run"):
                pass
        except UserError as err:
            refusals.append(str(err))

    with RunFolder(tmp_path / "run"):
        thread = threading.Thread(target=second_run)
        thread.start()
        thread.join()
    assert len(refusals) == 1 and f"in use by process {os.getpid()} " in refusals[0]


def _locked_by_someone(lock_path) -> bool:
    """Whether a fresh open of the lock file can take the flock (a new open file description conflicts with
    every other one, in this process too)."""
    import fcntl

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_nested_in_one_thread_the_folder_stays_locked_until_the_outermost_exits(tmp_path):
    # A script's main() holds the folder for the whole run; TrainingRun takes it again for training. Leaving
    # TrainingRun must not free the folder while the test renders, videos and mesh are still to be written.
    with RunFolder(tmp_path / "run"):
        with RunFolder(tmp_path / "run"):
            assert _locked_by_someone(tmp_path / "run" / LOCK_NAME)
        assert (tmp_path / "run" / LOCK_NAME).exists() and _locked_by_someone(tmp_path / "run" / LOCK_NAME)
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunFolder(tmp_path / "run"):  # free again
        pass


def test_a_folder_the_run_created_and_left_empty_is_removed(tmp_path):
    with pytest.raises(UserError):
        with RunFolder(tmp_path / "new" / "run"):
            raise UserError("the data is missing")  # a failed start
    assert not (tmp_path / "new" / "run").exists()
    with RunFolder(tmp_path / "kept") as run_dir:
        (run_dir / "log.csv").write_text("step\n")
    assert (tmp_path / "kept" / "log.csv").exists() and not (tmp_path / "kept" / LOCK_NAME).exists()
    (tmp_path / "mine").mkdir()
    with RunFolder(tmp_path / "mine"):
        pass
    assert (tmp_path / "mine").is_dir()  # the user's own empty folder stays


# --- prepare_run_folder ---------------------------------------------------------------------------------------------
def test_an_outdir_that_is_a_file_or_under_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"notes\.txt is a file, not a folder: pass another --outdir"):
        prepare_run_folder(tmp_path / "notes.txt")
    for create in (True, False):
        with pytest.raises(UserError, match=r"cannot be created: .*notes\.txt is a file, not a folder"):
            prepare_run_folder(tmp_path / "notes.txt" / "run", create=create)


def test_create_false_checks_without_making_anything(tmp_path):
    assert prepare_run_folder(tmp_path / "a" / "b", create=False) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    assert prepare_run_folder(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe leaves nothing


def test_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(UserError) as error:
        prepare_run_folder(tmp_path / "run")
    assert str(error.value) == f"--outdir {tmp_path / 'run'} cannot be created (read-only file system): pass another --outdir"


def test_an_existing_folder_that_refuses_writes_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def refusing_open(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).parent == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(UserError, match=r"is not writable \(read-only file system\): pass another --outdir"):
        prepare_run_folder(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permissions")
def test_permission_denied_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        with pytest.raises(UserError, match="permission denied"):
            prepare_run_folder(locked / "run")
        with pytest.raises(UserError, match="not writable"):
            prepare_run_folder(locked / "run", create=False)
    finally:
        locked.chmod(0o755)
