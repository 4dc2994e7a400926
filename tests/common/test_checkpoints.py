import os

import pytest
import torch

from common.checkpoints import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from common.errors import UserError


def test_save_and_load_round_trip(tmp_path):
    state = {"step": 7, "model": {"w": torch.arange(6.0).reshape(2, 3)}, "name": "run"}
    path = save_checkpoint(tmp_path / "run" / "ckpt_000007.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["name"] == "run"
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert os.listdir(tmp_path / "run") == ["ckpt_000007.pt"]


def test_a_crash_during_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    real_save = torch.save

    def crashing_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")  # some bytes reach the temporary file, then the process "dies"
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))


def test_unreadable_or_missing_checkpoints_are_one_line_user_errors(tmp_path):
    bad = tmp_path / "ckpt_000010.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert message.startswith(f"cannot read checkpoint {bad}") and "\n" not in message and "--resume" in message
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_latest_checkpoint_picks_the_highest_step_and_ignores_temporary_files(tmp_path):
    assert latest_checkpoint(tmp_path / "no_such_run") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 100, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / ".ckpt_000200.pt.abc.tmp").write_bytes(b"")
    (tmp_path / ".hidden_999999.pt").write_bytes(b"")
    assert checkpoint_path(tmp_path, 100).name == "ckpt_000100.pt"
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_000100.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 100


# --- permissions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_checkpoints_get_the_permissions_of_other_outputs(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "ckpt_000001.pt", {"step": 1})
        other = tmp_path / "log.csv"
        other.write_text("step\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode == other.stat().st_mode & 0o777


# --- falling back past a damaged newest checkpoint ----------------------------------------------------------
from common.checkpoints import list_checkpoints, load_latest_valid_checkpoint, resume_config  # noqa: E402


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_readable_one_with_a_warning(tmp_path, capsys):
    save_checkpoint(checkpoint_path(tmp_path, 5), {"step": 5, "w": torch.ones(2)})
    save_checkpoint(checkpoint_path(tmp_path, 10), {"step": 10, "w": torch.full((2,), 2.0)})
    good_bytes = checkpoint_path(tmp_path, 10).read_bytes()
    checkpoint_path(tmp_path, 15).write_bytes(good_bytes[: len(good_bytes) // 2])  # cut short
    checkpoint_path(tmp_path, 20).write_bytes(b"not a checkpoint")
    path, state = load_latest_valid_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 10) and state["step"] == 10 and torch.equal(state["w"], torch.full((2,), 2.0))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: checkpoint ")
    assert str(checkpoint_path(tmp_path, 20)) in err and str(checkpoint_path(tmp_path, 10)) in err
    assert "1 more" in err
    assert checkpoint_path(tmp_path, 20).exists()  # nothing is deleted


def test_latest_valid_checkpoint_is_quiet_when_the_newest_is_fine_and_none_when_there_is_none(tmp_path, capsys):
    assert load_latest_valid_checkpoint(tmp_path / "absent") is None
    assert load_latest_valid_checkpoint(tmp_path) is None
    save_checkpoint(checkpoint_path(tmp_path, 3), {"step": 3})
    assert load_latest_valid_checkpoint(tmp_path)[1]["step"] == 3
    assert capsys.readouterr().err == ""


def test_no_readable_checkpoint_is_a_one_line_user_error(tmp_path):
    torch.save({"weights": 1}, tmp_path / "ckpt_000002.pt")  # readable but not a checkpoint of these scripts
    checkpoint_path(tmp_path, 4).write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="no checkpoint in .* can be read") as error:
        load_latest_valid_checkpoint(tmp_path)
    assert "ckpt_000004.pt" in str(error.value) and "\n" not in str(error.value)


def test_list_checkpoints_is_newest_first(tmp_path):
    for step in (2, 10, 7):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000010.pt", "ckpt_000007.pt", "ckpt_000002.pt"]


# --- --resume against another configuration --------------------------------------------------------------------
from dataclasses import dataclass, field  # noqa: E402

from common.cli import RunConfig, parse_config  # noqa: E402


@dataclass
class NetConfig(RunConfig):
    iters: int = field(default=100, metadata={"help": "steps"})
    net_width: int = field(default=256, metadata={"help": "units per layer", "min": 1})
    levels: tuple[int, ...] = field(default=(16, 32), metadata={"help": "resolutions"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate", "above": 0})


PRESETS = {"quick": {"net_width": 64, "lr": 5e-3}}


def _checkpoint_of(argv, script="01_nerf"):
    cfg = parse_config(NetConfig, argv, PRESETS)
    return {"step": 10, "script": script, "config": vars(cfg), "coarse": {}, "fine": {}}


def test_resume_takes_settings_not_typed_again_from_the_checkpoint_and_says_so(capsys):
    checkpoint = _checkpoint_of(["--quick", "--levels", "4", "8", "--scene", "scenes/my_scene"])
    cfg = parse_config(NetConfig, ["--resume", "--iters", "500", "--ckpt_every", "7"], PRESETS)
    resumed = resume_config(checkpoint, cfg, "01_nerf", "run/ckpt_000010.pt")
    assert (resumed.net_width, resumed.lr, resumed.levels, resumed.quick) == (64, 5e-3, (4, 8), True)
    assert resumed.scene == "scenes/my_scene"
    assert (resumed.iters, resumed.ckpt_every, resumed.resume) == (500, 7, True)  # may change on resume
    assert resumed.cli_options == cfg.cli_options
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("resuming with the checkpoint's settings: ")
    assert "net_width=64" in out and "levels=4 8" in out and "scene=scenes/my_scene" in out
    assert "iters" not in out


def test_resume_with_the_same_settings_changes_nothing_and_prints_nothing(capsys):
    argv = ["--quick", "--levels", "4", "8"]
    cfg = parse_config(NetConfig, argv + ["--resume"], PRESETS)
    assert resume_config(_checkpoint_of(argv), cfg, "01_nerf") is cfg
    assert capsys.readouterr().out == ""


def test_resume_refuses_typed_settings_that_contradict_the_checkpoint():
    checkpoint = _checkpoint_of([])  # built-in scene, width 256
    cfg = parse_config(NetConfig, ["--resume", "--scene", "lego", "--net_width", "128"], PRESETS)
    with pytest.raises(UserError) as error:
        resume_config(checkpoint, cfg, "01_nerf", "run/ckpt_000010.pt")
    message = str(error.value)
    assert "--scene lego (the checkpoint has builtin)" in message
    assert "--net_width 128 (the checkpoint has 256)" in message
    assert "run/ckpt_000010.pt" in message and "\n" not in message


def test_resume_refuses_a_checkpoint_of_another_script():
    cfg = parse_config(NetConfig, ["--resume"], PRESETS)
    with pytest.raises(UserError, match=r"written by 04_hashnerf\.py, not 01_nerf\.py"):
        resume_config(_checkpoint_of([], script="04_hashnerf"), cfg, "01_nerf.py")
    older = {"step": 3, "config": {}, "field": {}, "grid": {}}  # from before "script" was recorded
    with pytest.raises(UserError, match="has no 'coarse', 'fine'"):
        resume_config(older, cfg, "01_nerf", required_keys=("coarse", "fine"))


def test_resume_of_a_config_built_in_code_counts_every_field_as_chosen():
    cfg = NetConfig(net_width=32, resume=True)
    with pytest.raises(UserError, match="--net_width 32"):
        resume_config(_checkpoint_of([]), cfg, "01_nerf")


def test_resume_may_change_what_is_rendered_at_the_end():
    checkpoint = _checkpoint_of([])
    cfg = parse_config(NetConfig, ["--resume", "--video_frames", "3", "--n_test_views", "2", "--camera_path",
                                   "path.json"], PRESETS)
    assert resume_config(checkpoint, cfg, "01_nerf") is cfg


# --- a write that fails: torch.save's zip writer hides the cause in the context of a RuntimeError ---------------
class _FailingFile:
    """A checkpoint file that raises `error` once `after` bytes were written (a disk filling up, a Ctrl-C)."""

    def __init__(self, file, error, after=1000):
        self.file, self.error, self.after, self.written = file, error, after, 0

    def write(self, data):
        self.written += len(data)
        if self.written > self.after:
            raise self.error
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)


@pytest.mark.parametrize("error, expected", [(KeyboardInterrupt(), KeyboardInterrupt),
                                             (OSError(28, "No space left on device"), UserError)])
def test_a_write_that_fails_inside_torch_save_is_reported_as_its_cause(tmp_path, monkeypatch, error, expected):
    import common.checkpoints

    save_checkpoint(tmp_path / "ckpt_000001.pt", {"step": 1, "w": torch.ones(3)})
    real_fdopen = common.checkpoints.os.fdopen
    monkeypatch.setattr(common.checkpoints.os, "fdopen", lambda fd, mode: _FailingFile(real_fdopen(fd, mode), error))
    with pytest.raises(expected) as raised:
        save_checkpoint(tmp_path / "ckpt_000002.pt", {"step": 2, "w": torch.zeros(100_000)})
    if expected is UserError:
        assert str(raised.value) == (
            f"cannot write checkpoint {tmp_path / 'ckpt_000002.pt'} (no space left on the device): nothing was "
            f"replaced, the previous checkpoint {tmp_path / 'ckpt_000001.pt'} survives; free some space and continue "
            f"with --resume")
    assert os.listdir(tmp_path) == ["ckpt_000001.pt"]  # no temporary file, the previous checkpoint intact
    assert load_checkpoint(tmp_path / "ckpt_000001.pt")["step"] == 1


def test_a_checkpoint_folder_that_cannot_be_written_says_there_is_no_earlier_checkpoint(tmp_path):
    (tmp_path / "run").write_text("a file where the folder should be")
    with pytest.raises(UserError, match=r"cannot write checkpoint .*: nothing was replaced, there is no earlier "
                                        r"checkpoint; fix that and continue with --resume"):
        save_checkpoint(tmp_path / "run" / "ckpt_000001.pt", {"step": 1})
