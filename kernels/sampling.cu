// sampling.cu: inverse-transform sampling of a piecewise-constant pdf along each ray
// (hierarchical sampling, NeRF, Mildenhall et al. 2020, Sec. 5.2 and Eq. 5).
//
// The PyTorch twin is sample_pdf_torch() in kernels/sampling.py; both use the same padding, the same
// normalisation (cdf = running sum / total, so the last cdf value is exactly 1), the same bin choice
// (searchsorted with right=True) and the same clamps.
//
// For one ray with bin edges b_0 <= ... <= b_B and weights w_0 .. w_{B-1}:
//     pdf_j = (w_j + padding) / sum_k (w_k + padding)                (Eq. 5, padded so no bin has zero mass)
//     cdf_0 = 0,  cdf_{j+1} = cdf_j + pdf_j                           (piecewise-linear CDF over the bins)
// and a sample for the number u in [0, 1] is the inverse CDF: the bin j with cdf_j <= u < cdf_{j+1}
// (clamped to the last bin), then linear interpolation inside it:
//     t = b_j + (u - cdf_j) / (cdf_{j+1} - cdf_j) * (b_{j+1} - b_j).
//
// One thread per ray. The u of a ray must be sorted (precondition; kernels/sampling.py builds them sorted, see draw_u),
// so instead of a binary search per sample the thread walks the bins and the u together, each pointer only
// moving forward: O(B + n_samples) per ray. Bins with zero mass cannot trap the walk: padding > 0 makes every
// cdf step positive, and a zero step (float32 rounding) is guarded below.
//
// Memory layout (row-major, one row per ray): bins (R, B + 1), weights (R, B), u (R, n), samples (R, n).

// Arguments: bins (R, B + 1) sorted edges, weights (R, B) >= 0, u (R, n) sorted per ray in [0, 1], n_rays = R,
// n_bins = B, n_samples = n, padding (added to every weight before normalising); output samples (R, n).
extern "C" __global__ void sample_pdf(
    const float* __restrict__ bins, const float* __restrict__ weights, const float* __restrict__ u,
    int n_rays, int n_bins, int n_samples, float padding,
    float* __restrict__ samples)
{
    const int ray = blockIdx.x * blockDim.x + threadIdx.x;
    if (ray >= n_rays) return;
    // Row offsets in 64 bits: R * (B + 1) can outgrow a 32-bit int for big batches.
    const float* ray_bins = bins + (long long)ray * (n_bins + 1);
    const float* ray_weights = weights + (long long)ray * n_bins;
    const float* ray_u = u + (long long)ray * n_samples;
    float* ray_samples = samples + (long long)ray * n_samples;

    // Pass 1: the normaliser sum_k (w_k + padding).
    float total = 0.0f;
    for (int j = 0; j < n_bins; ++j) total += ray_weights[j] + padding;

    // Pass 2: walk bins and sorted u together. Invariant: cdf_left = cdf_j, cdf_right = cdf_{j+1}.
    int j = 0;
    float running = ray_weights[0] + padding;   // sum_{k<=j} (w_k + padding)
    float cdf_left = 0.0f;
    float cdf_right = running / total;
    for (int k = 0; k < n_samples; ++k) {
        const float u_k = ray_u[k];
        // Advance to the bin with cdf_j <= u_k < cdf_{j+1} (searchsorted right=True), never past the last bin.
        while (u_k >= cdf_right && j < n_bins - 1) {
            ++j;
            cdf_left = cdf_right;
            running += ray_weights[j] + padding;
            cdf_right = running / total;
        }
        // Fraction of the way through the bin's probability mass; a zero-width cdf step gives 0, and the clamp
        // keeps u_k >= cdf_B (possible only when u_k rounds to 1) at the far edge.
        const float step = cdf_right - cdf_left;
        float fraction = step > 0.0f ? (u_k - cdf_left) / step : 0.0f;
        fraction = fminf(fmaxf(fraction, 0.0f), 1.0f);
        const float left = ray_bins[j], right = ray_bins[j + 1];
        // The fminf keeps the sample inside its bin when left + (right - left) rounds one ulp past right.
        ray_samples[k] = fminf(left + fraction * (right - left), right);
    }
}
