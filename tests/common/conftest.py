"""Fixtures of the common/ tests: the built-in scene generated once per session, small Blender-layout scenes."""
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def builtin_scene_generation(tmp_path_factory):
    """(root, seconds): the built-in scene with its default settings, written once per session into a temporary
    folder, and the CPU time the generation took (CPU, not wall-clock, time: the CPU may be shared)."""
    from common.data.builtin_scene import write_builtin_scene

    root = tmp_path_factory.mktemp("builtin")
    start = time.process_time()
    write_builtin_scene(root)
    return root, time.process_time() - start


@pytest.fixture
def builtin_scene_dir(builtin_scene_generation):
    return builtin_scene_generation[0]


def write_blender_scene(root: Path, n_frames: int = 2, size: int = 8, splits=("train", "val", "test"),
                        channels: int = 4):
    """A tiny scene in the Blender layout with random images and cameras looking at the origin from radius 4.

    Returns root. Images are size x size with `channels` channels (4 = RGBA).
    """
    import imageio.v3 as iio

    from common.paths import look_at

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (root / split).mkdir(exist_ok=True)
        frames = []
        for i in range(n_frames):
            image = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
            iio.imwrite(root / split / f"r_{i}.png", image)
            angle = 2 * math.pi * i / n_frames
            eye = torch.tensor([4 * math.cos(angle), 4 * math.sin(angle), 1.0])
            c2w = look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
            frames.append({"file_path": f"./{split}/r_{i}", "rotation": 0.0, "transform_matrix": c2w.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


@pytest.fixture
def make_blender_scene():
    """The `write_blender_scene` function, for tests that need a variant (RGB images, other splits)."""
    return write_blender_scene


@pytest.fixture
def blender_scene(tmp_path):
    """A 2-frame-per-split 8x8 RGBA scene in the Blender layout, in a fresh temporary folder."""
    return write_blender_scene(tmp_path / "scene")
