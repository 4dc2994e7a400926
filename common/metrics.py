"""Image quality metrics of the NeRF papers: PSNR and SSIM (LPIPS needs a network: common/lpips.py).

Images are float in [0, 1] (data range 1), (H, W, 3) tensors or numpy arrays; results are Python floats.
"""
import math

import numpy as np
import torch

# SSIM constants of Wang et al. 2004 (Eq. 7-8 of "Image quality assessment: from error visibility to structural
# similarity"): C1 = (K1 L)^2, C2 = (K2 L)^2 with K1 = 0.01, K2 = 0.03 and data range L = 1; an 11x11 Gaussian
# window of standard deviation 1.5, as in the evaluation code of NeRF / mip-NeRF.
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def _as_tensor(image) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    return image.detach().to("cpu", torch.float64)


def mse_to_psnr(mse):
    """PSNR in dB of a mean squared error for images in [0, 1]: -10 log10(mse). Float or tensor in, same out
    (use it on the training loss; inf for mse = 0)."""
    if isinstance(mse, torch.Tensor):
        return -10.0 * torch.log10(mse)
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def psnr(pred, gt) -> float:
    """Peak signal-to-noise ratio in dB, -10 log10(mean((pred - gt)^2)), for images in [0, 1] of any equal
    shape (e.g. (H, W, 3)); inf for identical images."""
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"psnr needs images of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    return mse_to_psnr(float(((pred - gt) ** 2).mean()))


def constant_image_psnr(gt) -> float:
    """PSNR of the best constant image for `gt` (H, W, C): every pixel its mean colour, which minimises the squared
    error among constant images (the mean of each channel). A model that scores no better than this has learned
    nothing about the scene (common.evaluation.check_model_learned); a model that only learned the background
    scores below it (an all-white image is its mean colour shifted to 1)."""
    gt = _as_tensor(gt)
    mean_colour = gt.reshape(-1, gt.shape[-1]).mean(dim=0)  # (C,)
    return psnr(mean_colour.expand_as(gt), gt)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()  # (size,), sums to 1


def ssim(pred, gt, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004, Eq. 13), mean over pixels and channels.

    pred, gt: (H, W, C) in [0, data_range], H and W at least 11. Local means, variances and covariance use an
    11x11 Gaussian window (sigma 1.5), separable, over the "valid" region only (no padding), with population
    (1/N) statistics: the same numbers as NeRF's evaluation and as skimage's structural_similarity with
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1.
    """
    x, y = _as_tensor(pred), _as_tensor(gt)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"ssim needs two (H, W, C) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(x.shape)}")
    window = _gaussian_window()

    def local_mean(image):  # (C, 1, H, W) -> (C, 1, H - 10, W - 10): Gaussian-weighted mean, valid region
        image = torch.nn.functional.conv2d(image, window.view(1, 1, -1, 1))
        return torch.nn.functional.conv2d(image, window.view(1, 1, 1, -1))

    x = x.permute(2, 0, 1).unsqueeze(1)  # (C, 1, H, W): channels as a batch, filtered independently
    y = y.permute(2, 0, 1).unsqueeze(1)
    mu_x, mu_y = local_mean(x), local_mean(y)
    # sigma^2 = E[x^2] - E[x]^2 can come out slightly negative from rounding: clamp at 0.
    var_x = (local_mean(x * x) - mu_x**2).clamp(min=0.0)
    var_y = (local_mean(y * y) - mu_y**2).clamp(min=0.0)
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


# ----------------------------------------------------------------------------------------------------------
# Geometry: Chamfer distance between a reconstructed surface and a reference point set (DTU's final averaging)
# ----------------------------------------------------------------------------------------------------------
def sample_mesh_surface(vertices, faces, n_points: int, seed: int = 0) -> np.ndarray:
    """Points drawn uniformly by area on a triangle mesh, at random. (The DTU evaluation also turns the mesh into
    points first, but deterministically: it subdivides the triangles and thins the points to 0.2 mm spacing.)

    vertices: (V, 3) float; faces: (F, 3) int; n_points: how many points. A triangle is picked with probability
    proportional to its area, then a point uniformly inside it (barycentric (1 - sqrt(r1), sqrt(r1) (1 - r2),
    sqrt(r1) r2), Osada et al. 2002). Returns (n_points, 3) float64; (0, 3) for a mesh without area.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0 or n_points <= 0:
        return np.zeros((0, 3))
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]  # (F, 3) each
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1)  # (F,)
    if areas.sum() <= 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(faces), size=n_points, p=areas / areas.sum())  # (P,)
    r1, r2 = np.sqrt(rng.random((n_points, 1))), rng.random((n_points, 1))
    return (1 - r1) * a[picked] + r1 * (1 - r2) * b[picked] + r1 * r2 * c[picked]  # (P, 3)


def chamfer_distance(points, reference, max_dist: float = math.inf) -> dict:
    """Chamfer distance: the mean of accuracy and completeness, the *last step* of the DTU protocol (Jensen et
    al. 2014; the evaluation of NeuS and DTUeval-python). The protocol's other steps are not here: the 0.2 mm
    resampling of the mesh, the observation mask and the plane filter on the points; and with max_dist left at
    inf (as 05 calls it) no truncation either. A figure from this function is not comparable to a paper's DTU
    figure.

        accuracy     = mean over the reconstruction's points p of min_q |p - q|   (is what we built there?)
        completeness = mean over the reference points q of min_p |q - p|          (is all of it there?)
        chamfer      = (accuracy + completeness) / 2

    Distances of `max_dist` or more are left out of each mean (DTU: 20 mm), as the official evaluation and
    DTUeval-python do (`mean(d[d < max_dist])`), so that a few stray points cannot dominate. Both means have a
    sampling floor: two finite samplings of the same surface score above 0.
    points: (P, 3) reconstruction samples (e.g. `sample_mesh_surface` of a mesh); reference: (Q, 3); arrays or
    tensors, in the same units. Nearest neighbours come from a k-d tree (scipy), exact.
    Returns {'accuracy', 'completeness', 'chamfer'} as floats in those units (inf when either set is empty).
    """
    from scipy.spatial import cKDTree

    def as_array(x):
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return x.astype(np.float64).reshape(-1, 3)

    points, reference = as_array(points), as_array(reference)
    if len(points) == 0 or len(reference) == 0:
        return dict(accuracy=math.inf, completeness=math.inf, chamfer=math.inf)
    to_reference = cKDTree(reference).query(points)[0]  # (P,) each reconstruction point to its nearest reference
    to_points = cKDTree(points).query(reference)[0]  # (Q,)
    accuracy = float(to_reference[to_reference < max_dist].mean()) if (to_reference < max_dist).any() else math.inf
    completeness = float(to_points[to_points < max_dist].mean()) if (to_points < max_dist).any() else math.inf
    return dict(accuracy=accuracy, completeness=completeness, chamfer=0.5 * (accuracy + completeness))
