"""The probe suite: every numbered script, run as a careless user would, against one table of bad inputs.

Each probe builds its bad input (a damaged file, a bad option, a busy run folder, a folder of another script) and
states what must happen: the exit status and the one line on stderr that says what is wrong (`error: ...`, or
`warning: ...` for a run that finished but learned nothing). Never a traceback, never a silent exit 0. A new
script joins by being added to SCRIPTS; a new check joins by adding a row to PROBES, for every script at once.

Most probes run in-process through run_main, exactly what `if __name__ == "__main__"` runs; a traceback would
surface here as an exception. PROCESS_PROBES run a few of them as real processes, one per script, where only a
real process shows it: the exit status the shell sees and a stderr without a traceback.
"""
import importlib
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from common.checkpoints import save_checkpoint
from common.cli import run_main

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["01_nerf", "02_mipnerf", "03_mipnerf360", "04_hashnerf", "05_instant_neus"]
# What each script's checkpoints hold (a checkpoint of the script before it in the list is "another script's").
OTHER_SCRIPT = {"01_nerf": "04_hashnerf", "02_mipnerf": "01_nerf", "03_mipnerf360": "02_mipnerf",
                "04_hashnerf": "03_mipnerf360", "05_instant_neus": "04_hashnerf"}
# Cheap runs on a tiny scene: 16 x 16 pixels, 128 rays a step, one test view, no video.
FAST = ["--quick", "--device", "cpu", "--backend", "torch", "--batch_rays", "128", "--downscale", "2",
        "--n_test_views", "1", "--video_frames", "0"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict:
    """One tiny valid scene in every layout the loaders read, made from the built-in scene (10 views of 32 x 32
    pixels: 8 train, 1 val, 1 test): {"blender", "ngp" (one transforms.json), "dtu" (cameras_sphere.npz),
    "llff" (poses_bounds.npy + images/), "multiscale" (metadata.json)}."""
    from common.data.builtin_scene import write_builtin_scene

    base = tmp_path_factory.mktemp("probe_scenes")
    blender = base / "blender"
    write_builtin_scene(blender, n_train=8, n_val=1, n_test=1, resolution=32)
    images, K, c2w = _all_frames(blender)
    return {"blender": blender, "ngp": _write_ngp(base / "ngp", images, K, c2w),
            "dtu": _write_dtu(base / "dtu", images, K, c2w), "llff": _write_llff(base / "llff", images, K, c2w),
            "multiscale": _write_multiscale(blender, base / "multiscale")}


@pytest.fixture(scope="module")
def tiny_scene(scenes) -> Path:
    """The Blender-layout one: what most probes train on."""
    return scenes["blender"]


def _all_frames(blender: Path):
    """Images (N, H, W, 4), K (N, 3, 3) and c2w (N, 4, 4) of every split of a Blender-layout scene."""
    from common.data.blender import load_blender

    scene = load_blender(blender)
    splits = [scene.splits[name] for name in ("train", "val", "test")]
    return (torch.cat([s.images for s in splits]), torch.cat([s.cameras.K for s in splits]),
            torch.cat([s.cameras.c2w for s in splits]))


def _write_ngp(root: Path, images, K, c2w) -> Path:
    from common.video import save_image

    frames = []
    for i in range(len(images)):
        save_image(root / "images" / f"{i:04d}.png", images[i])
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": c2w[i].tolist()})
    H, W = images.shape[1:3]
    meta = {"fl_x": float(K[0, 0, 0]), "fl_y": float(K[0, 1, 1]), "cx": W / 2, "cy": H / 2, "w": W, "h": H,
            "scale": 1.0, "offset": [0.5, 0.5, 0.5], "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def _write_dtu(root: Path, images, K, c2w) -> Path:
    import numpy as np

    from common.data.dtu import write_neus_layout

    return write_neus_layout(root, images, K, c2w, np.diag([1.5, 1.5, 1.5, 1.0]))


def _write_llff(root: Path, images, K, c2w) -> Path:
    """poses_bounds.npy rows: the 3x5 [down, right, backwards | t | (H, W, focal)] and the bounds 2, 6."""
    import numpy as np

    from common.video import save_image

    rows = []
    for i in range(len(images)):
        save_image(root / "images" / f"{i:03d}.png", images[i, ..., :3] * images[i, ..., 3:] + 1 - images[i, ..., 3:])
        R, t = c2w[i, :3, :3].double(), c2w[i, :3, 3].double()
        hwf = torch.tensor([images.shape[1], images.shape[2], float(K[i, 0, 0])], dtype=torch.float64)
        pose = torch.stack([-R[:, 1], R[:, 0], R[:, 2], t, hwf], dim=1)  # (3, 5)
        rows.append(np.concatenate([pose.numpy().reshape(-1), [2.0, 6.0]]))
    np.save(root / "poses_bounds.npy", np.stack(rows))
    return root


def _write_multiscale(blender: Path, root: Path) -> Path:
    from common.data.multiscale import build_multiscale

    return build_multiscale(blender, root, progress=False)


def _copy(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


# ------------------------------------------------------------------------------------------------------------
# The probes: make(work folder, script, scenes) -> argv (its files written), then what must happen
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    name: str
    make: Callable[[Path, str, dict], list]  # (work folder, script, the valid scenes) -> argv
    status: int
    line: str  # a regular expression the last line of stderr must match (from its start)


def _damaged(layout, edit):
    """A copy of the valid scene of `layout`, passed through edit(folder)."""
    def make(work, script, scenes):
        copy = _copy(scenes[layout], work / "scene")
        edit(copy)
        return FAST + ["--iters", "2", "--scene", str(copy), "--outdir", str(work / "run")]
    return make


def _damaged_scene(edit):
    return _damaged("blender", edit)


def _set(path: list, value):
    """edit(meta): meta[path[0]][path[1]]... = value"""
    def apply(meta):
        for key in path[:-1]:
            meta = meta[key]
        meta[path[-1]] = value
    return apply


def _edit_npz(name, key, edit):
    def apply(root):
        import numpy as np

        with np.load(root / name) as data:
            entries = {k: data[k] for k in data.files}
        entries[key] = edit(entries[key])
        np.savez(root / name, **entries)
    return apply


def _edit_npy(name, edit):
    def apply(root):
        import numpy as np

        array = np.load(root / name)
        edit(array)
        np.save(root / name, array)
    return apply


SINGULAR = [[0.0, 0.0, 0.0, 1.0]] * 3 + [[0.0, 0.0, 0.0, 1.0]]  # a pose whose rotation block is all zeros


def _edit_json(name, edit):
    def apply(root):
        path = root / name
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))  # json writes NaN as the bare word NaN, which Python's json reads back
    return apply


def _nan_pose(meta):
    meta["frames"][0]["transform_matrix"][1][2] = math.nan


def _truncate(name):
    def apply(root):
        path = root / name
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return apply


def _first_image(root, split="train") -> Path:
    return sorted((root / split).glob("*.png"))[0]


def _options(*argv):
    def make(work, script, scenes):
        return [*argv, "--outdir", str(work / "run")]
    return make


def _resume_another_scripts_folder(work, script, scenes):
    other = OTHER_SCRIPT[script]
    save_checkpoint(work / "run" / "ckpt_000001.pt", dict(step=1, script=other, scene="tiny", config={}))
    return FAST + ["--resume", "--scene", str(scenes["blender"]), "--outdir", str(work / "run")]


def _render_only_of_an_empty_folder(work, script, scenes):
    (work / "run").mkdir()
    return ["--render_only", "--device", "cpu", "--outdir", str(work / "run")]


def _outdir_is_a_file(work, script, scenes):
    (work / "notes.txt").write_text("mine")
    return FAST + ["--scene", str(scenes["blender"]), "--outdir", str(work / "notes.txt")]


def _damaged_camera_path(work, script, scenes):
    (work / "path.json").write_text('{"frames": [{"transform_matrix": [[1, 0, 0]]}]}')
    return FAST + ["--scene", str(scenes["blender"]), "--camera_path", str(work / "path.json"), "--outdir",
                   str(work / "run")]


def _huge_learning_rate(work, script, scenes):
    lr = ["--lr", "1e10"] + ([] if script == "05_instant_neus" else ["--lr_final", "1e10"])
    return FAST + ["--iters", "5", *lr, "--scene", str(scenes["blender"]), "--outdir", str(work / "run")]


def _busy_run_folder(work, script, scenes):  # the folder is held by busy_holder
    return FAST + ["--iters", "2", "--scene", str(scenes["blender"]), "--outdir", str(work / "busy")]


PROBES = [
    # --- damaged files of the Blender layout (every script reads it) ---
    Probe("nan pose in the training split", _damaged_scene(_edit_json("transforms_train.json", _nan_pose)), 2,
          r"error: .*transforms_train\.json: frame 0 \(.*\) has a non-finite 'transform_matrix'"),
    Probe("nan pose in the test split", _damaged_scene(_edit_json("transforms_test.json", _nan_pose)), 2,
          r"error: .*transforms_test\.json: frame 0 \(.*\) has a non-finite 'transform_matrix'"),
    Probe("truncated transforms json", _damaged_scene(_truncate("transforms_train.json")), 2,
          r"error: .*transforms_train\.json"),
    Probe("missing image", _damaged_scene(lambda root: _first_image(root).unlink()), 2, r"error: .*r_0\.png"),
    Probe("truncated png", _damaged_scene(lambda root: _truncate(str(_first_image(root).relative_to(root)))(root)),
          2, r"error: .*r_0\.png"),
    Probe("singular pose", _damaged_scene(_edit_json("transforms_val.json", _set(["frames", 0, "transform_matrix"],
                                                                                  SINGULAR))), 2,
          r"error: .*transforms_val\.json: frame 0 \(.*\) of the val split has a singular pose"),
    # --- damaged files of the other layouts (every script reads them through the data layer) ---
    Probe("nan pose in a transforms.json capture's test split",  # issue #20: trained, then PSNR nan, exit 0
          _damaged("ngp", _edit_json("transforms.json", _set(["frames", 8, "transform_matrix", 0, 1], math.nan))), 2,
          r"error: .*transforms\.json: frame 8 \(images/0008\.png\) has a non-finite 'transform_matrix'"),
    Probe("singular pose in a transforms.json capture",
          _damaged("ngp", _edit_json("transforms.json", _set(["frames", 3, "transform_matrix"], SINGULAR))), 2,
          r"error: .*transforms\.json: frame \d+ \(images/0003\.png\) of the train split has a singular pose"),
    Probe("zero focal length in a transforms.json capture",
          _damaged("ngp", _edit_json("transforms.json", _set(["fl_x"], 0.0))), 2,
          r"error: .*transforms\.json: frame 0 \(.*\) of the train split has intrinsics that make no image"),
    Probe("truncated transforms.json of a capture", _damaged("ngp", _truncate("transforms.json")), 2,
          r"error: .*transforms\.json is not valid JSON"),
    Probe("singular world_mat of a DTU scene",  # issue #20: LinAlgError: Singular matrix
          _damaged("dtu", _edit_npz("cameras_sphere.npz", "world_mat_3", lambda m: m * 0)), 2,
          r"error: .*cameras_sphere\.npz: world_mat_3 \(for image/003\.png\) is singular"),
    Probe("nan in a world_mat of a DTU scene",  # issue #20: ValueError: cannot convert float NaN to integer
          _damaged("dtu", _edit_npz("cameras_sphere.npz", "world_mat_5", lambda m: m * math.nan)), 2,
          r"error: .*cameras_sphere\.npz: world_mat_5 \(for image/005\.png\) holds NaN or Infinity"),
    Probe("truncated cameras_sphere.npz", _damaged("dtu", _truncate("cameras_sphere.npz")), 2,
          r"error: cannot read .*cameras_sphere\.npz"),
    Probe("nan in poses_bounds.npy",
          _damaged("llff", _edit_npy("poses_bounds.npy", lambda a: a.__setitem__((4, 3), math.nan))), 2,
          r"error: .*poses_bounds\.npy"),
    Probe("singular pose in poses_bounds.npy",
          _damaged("llff", _edit_npy("poses_bounds.npy", lambda a: a.__setitem__((4, slice(0, 15)), 0.0))), 2,
          r"error: .*poses_bounds\.npy: row 4 .* is singular"),
    Probe("zero depth bound in poses_bounds.npy",
          _damaged("llff", _edit_npy("poses_bounds.npy", lambda a: a.__setitem__((2, 15), 0.0))), 2,
          r"error: .*poses_bounds\.npy: row 2 has depth bounds \[0\.0, 6\.0\]; they must be finite with "
          r"0 < near < far"),
    Probe("nan pose in a multiscale test split",
          _damaged("multiscale", _edit_json("metadata.json", _set(["test", "cam2world", 2, 0, 1], math.nan))), 2,
          r"error: .*metadata\.json: frame 0 \(images_test/000_d2\.png\) of the test split has a non-finite camera"),
    # --- options, paths, folders ---
    Probe("negative learning rate", _options("--lr", "-1"), 2, r"error: --lr -1 is out of range: it must be > 0$"),
    Probe("zero rays per batch", _options("--batch_rays", "0"), 2, r"error: --batch_rays 0 is out of range"),
    Probe("zero chunk", _options("--chunk", "0"), 2, r"error: --chunk 0 is out of range"),
    Probe("a step count that is no integer", _options("--iters", "1.5"), 2, r"error: argument --iters"),
    Probe("an outdir that is a file", _outdir_is_a_file, 2, r"error: --outdir .*notes\.txt is a file"),
    Probe("a damaged camera path", _damaged_camera_path, 2, r"error: .*path\.json is not a list of 4x4"),
    Probe("a busy run folder", _busy_run_folder, 2, r"error: --outdir .*busy is in use by process \d+ "),
    Probe("resume against another script's folder", _resume_another_scripts_folder, 2,
          r"error: --resume|error: checkpoint .* was written by \d\d_\w+\.py, not "),
    Probe("render_only of an empty folder", _render_only_of_an_empty_folder, 2, r"error: --render_only: no checkpoint"),
    # --- training that goes wrong ---
    Probe("huge learning rate", _huge_learning_rate, 2, r"error: training diverged at step \d+: "),
]


@pytest.fixture(scope="module")
def busy_holder(tmp_path_factory):
    """A process that holds the lock of <folder>/busy for the whole module (the first run of a user)."""
    folder = tmp_path_factory.mktemp("held")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); from common.run_folder import RunFolder\n"
         "with RunFolder(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.readline()",
         str(folder / "busy"), str(REPO_ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield folder
    holder.stdin.close()
    holder.wait(timeout=30)


def _last_line(err: str) -> str:
    """The last line of stderr (progress bars end their lines with carriage returns)."""
    lines = [line.strip() for line in re.split(r"[\r\n]", err) if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def _check(err: str, status: int, probe: Probe) -> None:
    assert "Traceback" not in err, err
    assert status == probe.status, (status, err[-2000:])
    line = _last_line(err)
    assert re.match(probe.line, line), line
    assert sum(1 for x in re.split(r"[\r\n]", err) if x.startswith(("error:", "warning: the held-out"))) == 1, err


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_each_script_meets_each_probe_with_one_line_and_its_exit_status(script, probe, scenes, busy_holder,
                                                                       tmp_path, capsys):
    work = busy_holder if probe.make is _busy_run_folder else tmp_path
    argv = probe.make(work, script, scenes)
    module = importlib.import_module(script)
    try:
        run_main(module.main, argv)
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    _check(capsys.readouterr().err, status, probe)


# ------------------------------------------------------------------------------------------------------------
# A model that learned nothing: one warning line, exit status 3, nothing written after the test renders
# ------------------------------------------------------------------------------------------------------------
def test_mipnerf_with_lr_1e6_no_longer_ends_silently_with_exit_0(tiny_scene, tmp_path, capsys):
    # Issue #20: 02 --quick --lr 1e6 used to exit 0 at 9.1 dB: its weights blow up without a NaN, every density
    # saturates, and every view renders the white background, below what a constant image scores.
    argv = FAST + ["--iters", "20", "--lr", "1e6", "--video_frames", "2", "--scene", str(tiny_scene),
                   "--outdir", str(tmp_path)]
    module = importlib.import_module("02_mipnerf")
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and "Traceback" not in err
    line = _last_line(err)
    assert line.startswith("warning: the held-out PSNR ") and "no better than a constant image's" in line, line
    assert "--no-dead_model_check" in line
    assert (tmp_path / "test" / "metrics.json").exists() and not list(tmp_path.glob("video*"))

    # Asked to keep going: the same warning (saying so), exit 0, videos written.
    metrics = module.main(argv + ["--no-dead_model_check"])
    assert metrics["mean_psnr"] <= metrics["constant_psnr"]
    assert "kept going (--no-dead_model_check)" in _last_line(capsys.readouterr().err)
    assert list(tmp_path.glob("video*"))


def test_instant_neus_export_mesh_of_a_dead_model_is_refused_before_meshing(tiny_scene, tmp_path, capsys):
    # --export_mesh meshes a run's latest checkpoint without training or scoring it: a dead model used to give a
    # huge shapeless mesh without a word. Here the checkpoint's SDF is made positive everywhere (its output bias
    # +10): nothing is left to see, every view renders the background, below a constant image.
    module = importlib.import_module("05_instant_neus")
    module.main(FAST + ["--iters", "2", "--mesh_resolution", "16", "--scene", str(tiny_scene),
                        "--outdir", str(tmp_path)])
    checkpoint = tmp_path / "ckpt_000002.pt"
    state = torch.load(checkpoint, weights_only=False)
    state["field"]["sdf_mlp.2.bias"][0] = 10.0
    save_checkpoint(checkpoint, state)
    (tmp_path / "mesh.ply").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, ["--export_mesh", "--mesh_resolution", "16", "--device", "cpu", "--outdir",
                               str(tmp_path)])
    assert exit_info.value.code == 3
    assert _last_line(capsys.readouterr().err).startswith("warning: the held-out PSNR ")
    assert not (tmp_path / "mesh.ply").exists()


# ------------------------------------------------------------------------------------------------------------
# The run folder stays locked until the last file is written, not only while training
# ------------------------------------------------------------------------------------------------------------
class _SeenAfterTraining(Exception):
    pass


def _held_by_another_open(lock_path: Path) -> bool:
    import fcntl

    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_run_folder_stays_locked_while_the_test_views_are_rendered(script, tiny_scene, tmp_path, monkeypatch):
    # A second run started while the first renders its test views, videos and mesh used to write into the same
    # folder without a word: the lock was released when training ended.
    module = importlib.import_module(script)
    seen = {}

    def after_training(*args, **kwargs):
        seen["locked"] = _held_by_another_open(tmp_path / ".lock")
        raise _SeenAfterTraining

    monkeypatch.setattr(module, "evaluate" if script == "02_mipnerf" else "final_evaluation", after_training)
    with pytest.raises(_SeenAfterTraining):
        module.main(FAST + ["--iters", "1", "--scene", str(tiny_scene), "--outdir", str(tmp_path)])
    assert seen == {"locked": True}
    assert not (tmp_path / ".lock").exists()  # released on the way out


# ------------------------------------------------------------------------------------------------------------
# Checkpoint writes that fail: one line, and the previous checkpoint survives
# ------------------------------------------------------------------------------------------------------------
def test_a_full_disk_while_checkpointing_is_one_line_naming_the_checkpoint_that_survives(tiny_scene, tmp_path,
                                                                                          monkeypatch, capsys):
    import errno

    import common.checkpoints

    module = importlib.import_module("01_nerf")
    real_fsync, calls = os.fsync, []

    def disk_full_at_the_second_checkpoint(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the checkpoint files, not their folder
            calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(common.checkpoints.os, "fsync", disk_full_at_the_second_checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, FAST + ["--iters", "4", "--ckpt_every", "2", "--scene", str(tiny_scene),
                                      "--outdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert _last_line(err) == (f"error: cannot write checkpoint {tmp_path / 'ckpt_000004.pt'} (no space left on the "
                               f"device): nothing was replaced, the previous checkpoint {tmp_path / 'ckpt_000002.pt'} "
                               f"survives; free some space and continue with --resume")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt" or p.name.endswith(".tmp")) == [
        "ckpt_000002.pt"]
    assert torch.load(tmp_path / "ckpt_000002.pt", weights_only=False)["step"] == 2


def test_a_second_ctrl_c_while_writing_a_checkpoint_is_one_line_naming_the_checkpoint_that_survives(
        tiny_scene, tmp_path, monkeypatch, capsys):
    import common.checkpoints

    module = importlib.import_module("04_hashnerf")
    real_sample, real_fdopen, batches = module.sample_ray_batch, common.checkpoints.os.fdopen, []

    def ctrl_c_at_step_3(*args, **kwargs):
        batches.append(1)
        if len(batches) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: finish the step, then checkpoint it
        return real_sample(*args, **kwargs)

    class CtrlCWhileWriting:
        """The checkpoint file, which receives a second Ctrl-C once torch.save has written a little of it."""

        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1000 and len(batches) == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

    monkeypatch.setattr(module, "sample_ray_batch", ctrl_c_at_step_3)
    monkeypatch.setattr(common.checkpoints.os, "fdopen", lambda fd, mode: CtrlCWhileWriting(real_fdopen(fd, mode)))
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, FAST + ["--iters", "10", "--ckpt_every", "2", "--scene", str(tiny_scene),
                                      "--outdir", str(tmp_path)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 130 and "Traceback" not in captured.err
    assert _last_line(captured.out) == (
        f"interrupted (Ctrl-C) while writing ckpt_000003.pt, which was not written; the previous checkpoint "
        f"{tmp_path / 'ckpt_000002.pt'} survives; continue with: python 04_hashnerf.py --resume --outdir {tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir() if ".pt" in p.name) == ["ckpt_000002.pt"]


# ------------------------------------------------------------------------------------------------------------
# Real processes: one probe per script, as the shell sees it
# ------------------------------------------------------------------------------------------------------------
PROCESS_PROBES = [("01_nerf", "a busy run folder"),
                  ("02_mipnerf", "nan pose in a transforms.json capture's test split"),
                  ("03_mipnerf360", "resume against another script's folder"),
                  ("04_hashnerf", "truncated png"), ("05_instant_neus", "singular world_mat of a DTU scene")]


@pytest.mark.parametrize("script, probe_name", PROCESS_PROBES)
def test_a_real_process_exits_with_the_status_and_one_line_no_traceback(script, probe_name, scenes, busy_holder,
                                                                        tmp_path):
    probe = next(p for p in PROBES if p.name == probe_name)
    work = busy_holder if probe.make is _busy_run_folder else tmp_path
    argv = probe.make(work, script, scenes)
    result = subprocess.run([sys.executable, f"{script}.py", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    _check(result.stderr, result.returncode, probe)


def test_every_script_is_probed_in_a_real_process():
    assert sorted(script for script, _ in PROCESS_PROBES) == SCRIPTS
