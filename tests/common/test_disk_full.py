"""A full disk or a read-only file while a run writes its outputs (issue #20): one line naming the file and the
fix, exit status 2, the checkpoints kept, never a traceback.

The error is injected where the file is opened: `builtins.open` and `io.open` (what csv, json via pathlib,
matplotlib and Pillow use) raise OSError(ENOSPC) or OSError(EROFS) for a file of the chosen name, as the kernel
does when the disk is full or the file system read-only. ffmpeg writes videos from its own process, so for the
mp4 the injection is at common.video's mp4 writer.
"""
import builtins
import errno
import importlib
import io
import os

import numpy as np
import pytest
import torch

from common.errors import UserError
from tests.conftest import exit_status

CHEAP = ["--quick", "--device", "cpu", "--backend", "torch", "--downscale", "2", "--n_test_views", "1",
         "--video_frames", "0", "--batch_rays", "128", "--no-dead_model_check"]


def fail_writes(monkeypatch, file_name: str, code: int = errno.ENOSPC, modes: str = "wax+"):
    """From now on, opening a file named `file_name` (or its hidden temporary '.<file_name>...') in one of
    `modes` (default: any writing mode) raises OSError(code), as a full disk (ENOSPC) or a read-only file system
    (EROFS) does. Returns the list of paths refused."""
    refused = []
    real_open = builtins.open

    def open_or_fail(file, mode="r", *args, **kwargs):
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, bytes, os.PathLike)) else ""
        if any(flag in mode for flag in modes) and (name == file_name or name.startswith(f".{file_name}")):
            refused.append(os.fspath(file))
            raise OSError(code, os.strerror(code), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_or_fail)
    monkeypatch.setattr(io, "open", open_or_fail)
    return refused


@pytest.fixture(scope="module")
def nerf():
    return importlib.import_module("01_nerf")


@pytest.fixture(scope="module")
def trained(nerf, tmp_path_factory):
    """A 2-step 01 run on the built-in scene at 16 x 16 pixels, its folder (ckpt_000002.pt inside)."""
    from common.data.builtin_scene import write_builtin_scene

    scene = tmp_path_factory.mktemp("scene") / "builtin_small"
    write_builtin_scene(scene, n_train=8, n_val=1, n_test=1, resolution=32)
    outdir = tmp_path_factory.mktemp("run")
    nerf.main(CHEAP + ["--iters", "2", "--scene", str(scene), "--outdir", str(outdir)])
    return outdir


def _run(script, argv, capsys):
    status = exit_status(script.main, argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("file_name, modes, extra, code, fix", [
    # log.csv: rewritten when a run resumes, a row appended during training (the last step writes one)
    ("log.csv", "w", ["--resume", "--iters", "3"], errno.ENOSPC, "free some space, or pass another --outdir"),
    ("log.csv", "a", ["--resume", "--iters", "3"], errno.ENOSPC, "free some space, or pass another --outdir"),
    ("psnr.png", "wax+", ["--resume", "--iters", "3"], errno.ENOSPC, "free some space, or pass another --outdir"),
    ("config.json", "wax+", ["--resume", "--iters", "3"], errno.EROFS, "make it writable, or pass another --outdir"),
    ("rgb_000.png", "wax+", ["--render_only"], errno.ENOSPC, "free some space, or pass another --outdir"),
    ("depth_000.png", "wax+", ["--render_only"], errno.EROFS, "make it writable, or pass another --outdir"),
    ("metrics.json", "wax+", ["--render_only"], errno.ENOSPC, "free some space, or pass another --outdir"),
])
def test_a_full_disk_or_read_only_file_is_one_line_naming_it_and_keeps_the_checkpoint(
        nerf, trained, file_name, modes, extra, code, fix, monkeypatch, capsys):
    checkpoint = trained / "ckpt_000002.pt"
    saved = checkpoint.read_bytes()
    refused = fail_writes(monkeypatch, file_name, code, modes)
    status, err = _run(nerf, ["--device", "cpu", "--backend", "torch", "--outdir", str(trained)] + extra, capsys)
    assert refused, f"{file_name} was never written: the test does not test anything"
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    reason = "no space left on the device" if code == errno.ENOSPC else "read-only file system"
    assert last.startswith("error: cannot write ") and file_name in last and f"({reason}): {fix}" in last, last
    assert "checkpoints already written are kept" in last
    assert "Traceback" not in err
    assert checkpoint.read_bytes() == saved


def test_a_full_disk_while_writing_a_video_is_one_line_and_not_a_gif(nerf, trained, monkeypatch, capsys):
    """The mp4 writer's fallback to a gif (for a missing ffmpeg) must not hide a full disk."""
    import common.video

    def full_disk(path, frames, fps):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(common.video, "_write_mp4", full_disk)
    status, err = _run(nerf, ["--device", "cpu", "--backend", "torch", "--outdir", str(trained), "--render_only",
                              "--video_frames", "2", "--no-dead_model_check"], capsys)
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "video_rgb.mp4 (no space left on the device)" in last, last
    assert not list(trained.glob("video_*.gif")) and "Traceback" not in err


def test_a_full_disk_while_writing_a_mesh_names_the_mesh(tmp_path, monkeypatch):
    from common.mesh import write_ply

    refused = fail_writes(monkeypatch, "mesh.ply")
    with pytest.raises(UserError) as info:
        write_ply(tmp_path / "mesh.ply", np.zeros((3, 3)), torch.tensor([[0, 1, 2]]))
    assert refused and str(tmp_path / "mesh.ply") in str(info.value)
    assert "(no space left on the device): free some space" in str(info.value)


def test_other_os_errors_are_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    """Only the place's errors (space, permissions, read-only) become the one line; others stay errors."""
    from common.video import save_image

    fail_writes(monkeypatch, "x.png", errno.ENAMETOOLONG)
    with pytest.raises(OSError) as info:
        save_image(tmp_path / "x.png", np.zeros((2, 2, 3)))
    assert not isinstance(info.value, UserError) and info.value.errno == errno.ENAMETOOLONG
