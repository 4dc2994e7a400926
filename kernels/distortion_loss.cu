// distortion_loss.cu: the distortion loss of mip-NeRF 360 (Barron et al. 2022, Eq. 15), forward and backward,
// in linear time per ray.
//
// The PyTorch twin is distortion_loss_torch() in kernels/distortion_loss.py (and the readable definition is
// distortion_loss() in 03_mipnerf360.py); all compute the same numbers in the same order of ideas.
//
// For one ray with interval ends s_0 <= ... <= s_S (normalised distance), weights w_0 .. w_{S-1}, midpoints
// m_i = (s_i + s_{i+1}) / 2 and widths d_i = s_{i+1} - s_i:
//     L = sum_{i,j} w_i w_j |m_i - m_j| + (1/3) sum_i w_i^2 d_i                       (Eq. 15)
// The double sum is O(S^2) as written. With the midpoints sorted and the prefix sums
//     W_i = sum_{j<i} w_j,   M_i = sum_{j<i} w_j m_j,
// every pair is counted twice with m_i >= m_j for the later one, so
//     sum_{i,j} w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_i - M_i)                      (one pass)
// and its derivative with respect to w_k is 2 sum_j w_j |m_k - m_j|
//     = 2 [ (m_k W_k - M_k) + ((M_tot - M_k - w_k m_k) - m_k (W_tot - W_k - w_k)) ]   (second pass)
// plus (2/3) w_k d_k from the intra-interval term. The interval ends are constants (no gradient), as in 03.
//
// One thread per ray. Memory layout (row-major, one row per ray): s (R, S + 1), w (R, S), loss (R,),
// grad_loss (R,), grad_w (R, S).

// Forward. Arguments: s (R, S + 1) sorted, w (R, S), n_rays = R, n_intervals = S; output loss (R,).
extern "C" __global__ void distortion_loss_forward(
    const float* __restrict__ s, const float* __restrict__ w, int n_rays, int n_intervals,
    float* __restrict__ loss)
{
    const int ray = blockIdx.x * blockDim.x + threadIdx.x;
    if (ray >= n_rays) return;
    const float* ray_s = s + (long long)ray * (n_intervals + 1);
    const float* ray_w = w + (long long)ray * n_intervals;
    float prefix_w = 0.0f;   // W_i
    float prefix_wm = 0.0f;  // M_i
    float inter = 0.0f, intra = 0.0f;
    for (int i = 0; i < n_intervals; ++i) {
        const float m = 0.5f * (ray_s[i] + ray_s[i + 1]);
        const float d = ray_s[i + 1] - ray_s[i];
        inter += ray_w[i] * (m * prefix_w - prefix_wm);
        intra += ray_w[i] * ray_w[i] * d;
        prefix_w += ray_w[i];
        prefix_wm += ray_w[i] * m;
    }
    loss[ray] = 2.0f * inter + intra / 3.0f;
}

// Backward. Arguments: s (R, S + 1), w (R, S), grad_loss (R,) = dOut/dloss, n_rays, n_intervals;
// output grad_w (R, S) = grad_loss * dloss/dw.
extern "C" __global__ void distortion_loss_backward(
    const float* __restrict__ s, const float* __restrict__ w, const float* __restrict__ grad_loss,
    int n_rays, int n_intervals, float* __restrict__ grad_w)
{
    const int ray = blockIdx.x * blockDim.x + threadIdx.x;
    if (ray >= n_rays) return;
    const float* ray_s = s + (long long)ray * (n_intervals + 1);
    const float* ray_w = w + (long long)ray * n_intervals;
    float* ray_grad = grad_w + (long long)ray * n_intervals;
    // Pass 1: the totals W_tot = sum_j w_j and M_tot = sum_j w_j m_j.
    float total_w = 0.0f, total_wm = 0.0f;
    for (int j = 0; j < n_intervals; ++j) {
        total_w += ray_w[j];
        total_wm += ray_w[j] * 0.5f * (ray_s[j] + ray_s[j + 1]);
    }
    // Pass 2: the prefix sums W_k, M_k, and the derivative of each w_k.
    const float g = grad_loss[ray];
    float prefix_w = 0.0f, prefix_wm = 0.0f;
    for (int k = 0; k < n_intervals; ++k) {
        const float m = 0.5f * (ray_s[k] + ray_s[k + 1]);
        const float d = ray_s[k + 1] - ray_s[k];
        const float after_w = total_w - prefix_w - ray_w[k];     // sum_{j>k} w_j
        const float after_wm = total_wm - prefix_wm - ray_w[k] * m;  // sum_{j>k} w_j m_j
        const float spread = (m * prefix_w - prefix_wm) + (after_wm - m * after_w);  // sum_j w_j |m_k - m_j|
        ray_grad[k] = g * (2.0f * spread + (2.0f / 3.0f) * ray_w[k] * d);
        prefix_w += ray_w[k];
        prefix_wm += ray_w[k] * m;
    }
}
