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
