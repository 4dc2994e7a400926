"""kernels/sampling: inverse-CDF (hierarchical) sampling, NeRF Sec. 5.2. The twin against the CUDA source
(emulated on the CPU, and on a GPU when there is one), and the properties a sampler of a pdf must have.

Tolerances: the inverse CDF is steep where the pdf is small (dt/du = bin width / bin mass), so a few-ulp
difference in the cdf (float32 sums in the kernel, float64-accumulated cumsum in PyTorch) moves a sample by
(cdf error) x (bin width / bin mass). We therefore compare
  * positions, on weights bounded away from 0: rtol 1e-5, atol 2e-5 (t is in [2, 6]; cdf error ~1e-7, bin mass >= 1e-2);
  * on weights with empty bins, the cdf of the samples (their u, recovered through the twin's cdf in float64),
    where both faces are well-conditioned: atol 2 B 2^-24 (the kernel's running sum over B bins rounds once per
    bin in float32), plus positions at atol 1e-3;
  * bin membership, sortedness and the histogram exactly.
"""
import pytest
import torch

from kernels.sampling import PDF_PADDING, draw_u, invert_cdf, sample_pdf, sample_pdf_torch

POSITION_TOL = dict(rtol=1e-5, atol=2e-5)


def cdf_tolerance(n_bins):
    return dict(rtol=0.0, atol=2 * n_bins * 2.0 ** -24)

GPU_TOL = dict(rtol=1e-5, atol=1e-4)


def random_bins(n_rays, n_bins, *, near=2.0, far=6.0, seed=0, min_weight=0.0, zero_fraction=0.0):
    """Sorted bin edges in [near, far] with uneven widths, and non-negative weights (some exactly 0)."""
    generator = torch.Generator().manual_seed(seed)
    widths = 0.1 + torch.rand(n_rays, n_bins, generator=generator)  # (R, B)
    edges = torch.cat([torch.zeros(n_rays, 1), torch.cumsum(widths, dim=1)], dim=1)  # (R, B+1)
    bins = near + (far - near) * edges / edges[:, -1:]  # (R, B+1) sorted, first near, last far
    weights = min_weight + torch.rand(n_rays, n_bins, generator=generator)  # (R, B)
    weights[torch.rand(n_rays, n_bins, generator=generator) < zero_fraction] = 0.0
    return bins.contiguous(), weights.contiguous()


def twin_cdf_at(bins, weights, samples):
    """The twin's piecewise-linear CDF evaluated at the samples (inverse of the sampler), in float64."""
    bins, weights, samples = bins.double(), weights.double(), samples.double()
    running = torch.cumsum(weights + PDF_PADDING, dim=-1)
    cdf = torch.cat([torch.zeros_like(running[:, :1]), running / running[:, -1:]], dim=-1)  # (R, B+1)
    index = (torch.searchsorted(bins, samples.contiguous(), right=True) - 1).clamp(0, weights.shape[1] - 1)
    left, right = bins.gather(1, index), bins.gather(1, index + 1)
    fraction = ((samples - left) / (right - left)).clamp(0, 1)
    return cdf.gather(1, index) + fraction * (cdf.gather(1, index + 1) - cdf.gather(1, index))


def assert_inside_and_sorted(samples, bins):
    assert torch.isfinite(samples).all()
    assert (samples >= bins[:, :1]).all() and (samples <= bins[:, -1:]).all()
    assert (samples[:, 1:] >= samples[:, :-1]).all()


@pytest.mark.parametrize("stratified", [False, True])
def test_sample_pdf_emulated_matches_twin_on_positive_weights(stratified):
    bins, weights = random_bins(64, 31, min_weight=0.05)
    expected = sample_pdf(bins, weights, 48, stratified=stratified, generator=torch.Generator().manual_seed(7))
    actual = sample_pdf(bins, weights, 48, stratified=stratified, generator=torch.Generator().manual_seed(7),
                        backend="emulated")
    torch.testing.assert_close(actual, expected, **POSITION_TOL)
    assert_inside_and_sorted(actual, bins)


@pytest.mark.parametrize("stratified", [False, True])
def test_sample_pdf_emulated_matches_twin_with_empty_bins(stratified):
    bins, weights = random_bins(64, 63, zero_fraction=0.5, seed=1)
    generator_seed = 11
    u = draw_u(64, 96, stratified=stratified, generator=torch.Generator().manual_seed(generator_seed))
    expected = sample_pdf_torch(bins, weights, u)
    actual = sample_pdf(bins, weights, 96, stratified=stratified,
                        generator=torch.Generator().manual_seed(generator_seed), backend="emulated")
    torch.testing.assert_close(twin_cdf_at(bins, weights, actual), u.double(), **cdf_tolerance(63))
    torch.testing.assert_close(twin_cdf_at(bins, weights, expected), u.double(), **cdf_tolerance(63))
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=1e-3)
    assert_inside_and_sorted(actual, bins)


EDGE_CASES = {
    "all_weights_zero": lambda: (torch.linspace(2, 6, 9).expand(3, 9).contiguous(), torch.zeros(3, 8)),
    "single_ray": lambda: random_bins(1, 16, seed=2),
    "single_bin": lambda: (torch.tensor([[2.0, 6.0], [0.0, 1.0]]), torch.tensor([[0.3], [0.0]])),
    "huge_weights": lambda: (random_bins(4, 8, seed=3)[0], 1e20 * random_bins(4, 8, seed=3)[1]),
    "zero_width_bins": lambda: (torch.tensor([[2.0, 3.0, 3.0, 3.0, 5.0]]), torch.tensor([[1.0, 0.0, 2.0, 1.0]])),
    "no_rays": lambda: (torch.zeros(0, 9), torch.zeros(0, 8)),
}


@pytest.mark.parametrize("n_samples", [0, 1, 33])
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_sample_pdf_emulated_matches_twin_on_edge_inputs(case, n_samples):
    bins, weights = EDGE_CASES[case]()
    for stratified in (False, True):
        expected = sample_pdf(bins, weights, n_samples, stratified=stratified,
                              generator=torch.Generator().manual_seed(3))
        actual = sample_pdf(bins, weights, n_samples, stratified=stratified,
                            generator=torch.Generator().manual_seed(3), backend="emulated")
        assert actual.shape == expected.shape == (bins.shape[0], n_samples)
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual, expected, **POSITION_TOL)
        assert_inside_and_sorted(actual, bins)


def test_sample_pdf_with_all_mass_in_one_bin_puts_every_sample_in_it():
    n_bins = 32
    bins = torch.linspace(2.0, 6.0, n_bins + 1).expand(n_bins, n_bins + 1).contiguous()  # (R, B+1)
    weights = torch.eye(n_bins)  # ray r has all of its mass in bin r
    for backend in ("torch", "emulated"):
        samples = sample_pdf(bins, weights, 64, backend=backend)  # (R, n)
        inside = (samples >= bins[:, :-1].diagonal()[:, None]) & (samples <= bins[:, 1:].diagonal()[:, None])
        assert inside.all(), backend
        # Deterministic u = (k + 0.5) / n, up to the padding's sliver of mass: evenly spread through the bin.
        left = bins[:, :-1].diagonal()[:, None]
        width = 4.0 / n_bins
        expected = left + width * (torch.arange(64) + 0.5) / 64
        torch.testing.assert_close(samples, expected, rtol=0.0, atol=width * n_bins * PDF_PADDING * 2)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_sample_pdf_histogram_follows_the_pdf(backend):
    # With stratified u, each of the n strata holds one sample, so bin j receives n * pdf_j samples up to +-2
    # (a bin's mass covers that many strata, give or take the two it shares with its neighbours).
    n_samples = 4096
    bins, weights = random_bins(6, 12, zero_fraction=0.3, seed=4)
    samples = sample_pdf(bins, weights, n_samples, stratified=True, generator=torch.Generator().manual_seed(0),
                         backend=backend)  # (R, n)
    pdf = (weights + PDF_PADDING) / (weights + PDF_PADDING).sum(dim=1, keepdim=True)  # (R, B)
    bin_of_sample = (torch.searchsorted(bins, samples, right=True) - 1).clamp(0, 11)  # (R, n)
    counts = torch.stack([torch.bincount(row, minlength=12) for row in bin_of_sample]).float()  # (R, B)
    assert ((counts - n_samples * pdf).abs() <= 2.0).all()
    # Inside a bin the CDF is linear: samples are uniform there (mean at the bin centre within a few strata).
    ray, heaviest = 0, int(pdf[0].argmax())
    in_bin = samples[ray][bin_of_sample[ray] == heaviest]
    centre = 0.5 * (bins[ray, heaviest] + bins[ray, heaviest + 1])
    width = bins[ray, heaviest + 1] - bins[ray, heaviest]
    assert abs(in_bin.mean() - centre) < 0.05 * width


def test_sample_pdf_is_reproducible():
    bins, weights = random_bins(8, 16, seed=5)
    for backend in ("torch", "emulated"):
        assert torch.equal(sample_pdf(bins, weights, 20, backend=backend),
                           sample_pdf(bins, weights, 20, backend=backend))
        first = sample_pdf(bins, weights, 20, stratified=True, generator=torch.Generator().manual_seed(1),
                           backend=backend)
        again = sample_pdf(bins, weights, 20, stratified=True, generator=torch.Generator().manual_seed(1),
                           backend=backend)
        other = sample_pdf(bins, weights, 20, stratified=True, generator=torch.Generator().manual_seed(2),
                           backend=backend)
        assert torch.equal(first, again) and not torch.equal(first, other)


def test_draw_u_is_sorted_in_unit_interval_and_centred_when_deterministic():
    u = draw_u(3, 4)
    torch.testing.assert_close(u, torch.tensor([0.125, 0.375, 0.625, 0.875]).expand(3, 4))
    u = draw_u(50, 128, stratified=True, generator=torch.Generator().manual_seed(0))
    assert (u >= 0).all() and (u <= 1).all() and (u[:, 1:] >= u[:, :-1]).all()
    strata = torch.floor(u * 128).clamp(max=127)
    assert torch.equal(strata, torch.arange(128.0).expand(50, 128))  # one draw per stratum


def test_sample_pdf_gives_no_gradient():
    bins, weights = random_bins(2, 4)
    weights.requires_grad_(True)
    for backend in ("torch", "emulated"):
        assert not sample_pdf(bins, weights, 5, backend=backend).requires_grad


def test_sample_pdf_twin_works_in_float64_like_float32():
    bins, weights = random_bins(5, 10, min_weight=0.05, seed=6)
    u = draw_u(5, 17, stratified=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample_pdf_torch(bins.double(), weights.double(), u.double()).float(),
                               sample_pdf_torch(bins, weights, u), **POSITION_TOL)


def test_sample_pdf_rejects_bad_inputs_with_clear_messages():
    bins, weights = random_bins(2, 4)
    with pytest.raises(ValueError, match=r"bins \(R, B\+1\)"):
        sample_pdf(bins[:, :4], weights, 3)
    with pytest.raises(ValueError, match="at least one bin"):
        sample_pdf(torch.zeros(2, 1), torch.zeros(2, 0), 3)
    with pytest.raises(ValueError, match="bins must be torch.float32"):
        sample_pdf(bins.double(), weights.double(), 3, backend="emulated")
    from kernels.backend import BackendError
    with pytest.raises(BackendError, match="unknown backend"):
        sample_pdf(bins, weights, 3, backend="numba")


@pytest.mark.gpu
@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("case", ["random", *EDGE_CASES])
def test_sample_pdf_cuda_matches_twin(case, stratified):
    bins, weights = random_bins(256, 63, min_weight=0.05) if case == "random" else EDGE_CASES[case]()
    bins, weights = bins.cuda(), weights.cuda()
    expected = sample_pdf(bins, weights, 65, stratified=stratified, generator=torch.Generator().manual_seed(9))
    actual = sample_pdf(bins, weights, 65, stratified=stratified, generator=torch.Generator().manual_seed(9),
                        backend="cuda")
    assert actual.is_cuda and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, **GPU_TOL)
    assert_inside_and_sorted(actual, bins)


# ----------------------------------------------------------------------------------------------------------
# Exact boundaries: u = 1 (a stratified draw that rounds up), with guard values after every array
# ----------------------------------------------------------------------------------------------------------
def with_nan_guard(values, n_guard=16):
    """A view of `values` followed in memory by NaNs: a kernel that reads past the array returns NaN."""
    buffer = torch.full((values.numel() + n_guard,), float("nan"), dtype=values.dtype)
    buffer[:values.numel()] = values.flatten()
    return buffer[:values.numel()].view(values.shape)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_u_equal_to_one_lands_on_the_far_edge_without_reading_past_the_ray(backend):
    """cdf_B is exactly 1, so u = 1 satisfies u >= cdf_{j+1} for the last bin too: the walk (kernel) and the
    searchsorted (twin) must stop at the last bin, not go one further into the next ray's bins, or past the end."""
    bins, weights = random_bins(5, 7, zero_fraction=0.3, seed=8)
    u = torch.tensor([0.0, 0.25, 0.5, 1.0]).expand(5, 4).contiguous()  # (R, n) the last u of every ray is 1
    bins, weights, u = with_nan_guard(bins), with_nan_guard(weights), with_nan_guard(u)
    samples = invert_cdf(bins, weights, u, backend)  # (R, n)
    assert torch.isfinite(samples).all(), "read past the last ray's arrays"
    assert torch.equal(samples[:, -1], bins[:, -1])  # u = 1: exactly the far edge
    assert torch.equal(samples[:, 0], bins[:, 0])  # u = 0: exactly the near edge
    assert_inside_and_sorted(samples, bins)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_stratified_draw_that_rounds_to_one_gives_the_far_edge(backend, monkeypatch):
    """torch.rand's largest value, 1 - 2^-24, in the last of n >= 2 strata gives u = (n - 1 + U) / n = 1.0 in float32;
    sample_pdf must turn it into the far edge, on every backend."""
    largest = 1.0 - 2.0 ** -24
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *shape, **kwargs: torch.full_like(real_rand(*shape, **kwargs), largest))
    bins, weights = random_bins(6, 9, seed=9)
    u = draw_u(6, 64, stratified=True, generator=torch.Generator().manual_seed(0))
    assert (u[:, -1] == 1.0).all()  # the boundary is reachable, not hypothetical
    samples = sample_pdf(bins, weights, 64, stratified=True, generator=torch.Generator().manual_seed(0),
                         backend=backend)
    assert torch.equal(samples[:, -1], bins[:, -1])
    assert_inside_and_sorted(samples, bins)
