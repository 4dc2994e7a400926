// compositing.cu: volume rendering of packed samples, forward and backward (NeRF, Mildenhall et al. 2020, Eq. 3).
//
// The PyTorch twin of these kernels is composite_torch() in kernels/compositing.py; both faces implement the
// same quadrature, the same early-termination rule and the same alpha formula (expm1, see below).
//
// Packed layout (nerfacc style): the samples of ray r are the contiguous range
//     [ray_starts[r], ray_starts[r] + ray_counts[r])
// of the flat arrays sigmas (N,), rgbs (N, 3), t_starts (N,), t_ends (N,), weights (N,).
// One thread per ray walks its samples front to back, so no two threads ever write the same address
// and no atomics are needed.
//
// Quadrature of Eq. 3, for the samples i = 0, 1, ... of one ray:
//     delta_i = t_end_i - t_start_i                     (interval length)
//     s_i     = sigma_i * delta_i                        (optical depth of the interval)
//     alpha_i = 1 - exp(-s_i)                            (opacity of the interval)
//     T_i     = exp(-sum_{j<i} s_j)                      (transmittance up to the interval)
//     w_i     = T_i * alpha_i                            (weight, Eq. 5)
//     opacity = sum_i w_i,  color = sum_i w_i c_i,  depth = sum_i w_i (t_start_i + t_end_i) / 2.
//
// alpha_i is computed as -expm1(-s_i): the same number as 1 - exp(-s_i), without the cancellation that makes
// 1 - expf(-1e-6) lose most of its digits in float32 (thin intervals of thin fog).
//
// Early termination (optional, early_stop_eps > 0): as soon as T_i < early_stop_eps the ray stops; that sample
// and every later one get weight 0. T is non-increasing, so "stop at the first T_i < eps" and "mask every
// sample with T_i < eps" are the same rule; the twin applies the mask.

// The transmittance test shared by both kernels, so that the forward and the backward stop at the same sample.
__device__ inline bool ray_has_stopped(float trans, float early_stop_eps) {
    return early_stop_eps > 0.0f && trans < early_stop_eps;
}

// One thread per ray. Arguments (the signature carries no comments: the emulation launcher copies it verbatim):
//   inputs   sigmas (N,), rgbs (N, 3) row-major, t_starts (N,), t_ends (N,), ray_starts (R,), ray_counts (R,),
//            n_rays = R, early_stop_eps (0 = off);
//   outputs  weights (N,), opacity (R,), color (R, 3), depth (R,).
// weights must be zero-initialised by the caller: samples that belong to no ray, or lie after an early stop,
// are never written.
extern "C" __global__ void composite_forward(
    const float* __restrict__ sigmas, const float* __restrict__ rgbs,
    const float* __restrict__ t_starts, const float* __restrict__ t_ends,
    const int* __restrict__ ray_starts, const int* __restrict__ ray_counts,
    int n_rays, float early_stop_eps,
    float* __restrict__ weights, float* __restrict__ opacity, float* __restrict__ color, float* __restrict__ depth)
{
    const int ray = blockIdx.x * blockDim.x + threadIdx.x;  // this thread's ray
    if (ray >= n_rays) return;
    const int first = ray_starts[ray];              // packed index of the ray's first sample
    const int last = first + ray_counts[ray];       // one past its last sample

    float optical_depth = 0.0f;  // sum_{j<i} s_j, accumulated front to back
    float ray_opacity = 0.0f, ray_depth = 0.0f;
    float ray_color[3] = {0.0f, 0.0f, 0.0f};
    for (int i = first; i < last; ++i) {
        const float trans = expf(-optical_depth);                // T_i
        if (ray_has_stopped(trans, early_stop_eps)) break;       // later weights stay 0
        const float delta = t_ends[i] - t_starts[i];             // delta_i
        const float s = sigmas[i] * delta;                       // s_i = sigma_i delta_i
        const float alpha = -expm1f(-s);                         // alpha_i = 1 - exp(-s_i)
        const float weight = trans * alpha;                      // w_i = T_i alpha_i
        weights[i] = weight;
        ray_opacity += weight;
        ray_depth += weight * 0.5f * (t_starts[i] + t_ends[i]);  // w_i * t_mid_i
        for (int c = 0; c < 3; ++c) ray_color[c] += weight * rgbs[3 * i + c];  // rgbs row i starts at 3*i
        optical_depth += s;
    }
    opacity[ray] = ray_opacity;
    depth[ray] = ray_depth;
    for (int c = 0; c < 3; ++c) color[3 * ray + c] = ray_color[c];
}

// Backward, closed form. Every output is linear in the weights, so with the upstream gradients gathered into
//     v_i = dL/dw_i + dL/dcolor . c_i + dL/ddepth * t_mid_i + dL/dopacity
// we have dL/ds_k = sum_i v_i dw_i/ds_k. Writing w_i = T_i alpha_i = T_i - T_{i+1} (since T_{i+1} = T_i e^{-s_i})
// and using dT_i/ds_k = -T_i for k < i (0 otherwise):
//     i <  k : dw_i/ds_k = 0
//     i == k : dw_k/ds_k = T_k e^{-s_k}        = T_{k+1}
//     i >  k : dw_i/ds_k = -T_i + T_{i+1}      = -w_i
// so  dL/ds_k     = v_k T_{k+1} - sum_{i>k} v_i w_i,
//     dL/dsigma_k = delta_k dL/ds_k,
//     dL/dc_k     = w_k dL/dcolor.
// With early termination the dropped samples have w = 0 for every nearby sigma (the mask is piecewise
// constant), so they get zero gradient and add nothing to the sums.
//
// Two passes per ray, both O(samples):
//   1. back to front: the suffix sum sum_{i>k} v_i w_i (using the forward's weights) is stored in
//      grad_sigmas[k] as scratch. Built from the back, a small tail is summed directly; the alternative
//      "total minus prefix" would get it as the difference of two large numbers and lose its digits.
//   2. front to back: recompute T_k exactly as the forward did and finish dL/dsigma_k, dL/dc_k.
// grad_sigmas and grad_rgbs must be zero-initialised by the caller.
//
// Arguments: the forward's inputs and its weights (N,); the upstream gradients grad_weights (N,), grad_opacity (R,),
// grad_color (R, 3), grad_depth (R,); outputs grad_sigmas (N,), grad_rgbs (N, 3).
extern "C" __global__ void composite_backward(
    const float* __restrict__ sigmas, const float* __restrict__ rgbs,
    const float* __restrict__ t_starts, const float* __restrict__ t_ends,
    const int* __restrict__ ray_starts, const int* __restrict__ ray_counts,
    const float* __restrict__ weights,
    const float* __restrict__ grad_weights, const float* __restrict__ grad_opacity,
    const float* __restrict__ grad_color, const float* __restrict__ grad_depth,
    int n_rays, float early_stop_eps,
    float* __restrict__ grad_sigmas, float* __restrict__ grad_rgbs)
{
    const int ray = blockIdx.x * blockDim.x + threadIdx.x;
    if (ray >= n_rays) return;
    const int first = ray_starts[ray];
    const int last = first + ray_counts[ray];
    const float g_opacity = grad_opacity[ray];
    const float g_depth = grad_depth[ray];
    const float g_color[3] = {grad_color[3 * ray], grad_color[3 * ray + 1], grad_color[3 * ray + 2]};

    // Pass 1, back to front: grad_sigmas[k] <- sum_{i>k} v_i w_i.
    float suffix = 0.0f;
    for (int i = last - 1; i >= first; --i) {
        grad_sigmas[i] = suffix;
        const float t_mid = 0.5f * (t_starts[i] + t_ends[i]);
        float v = grad_weights[i] + g_opacity + g_depth * t_mid;   // v_i
        for (int c = 0; c < 3; ++c) v += g_color[c] * rgbs[3 * i + c];
        suffix += v * weights[i];
    }

    // Pass 2, front to back: dL/dsigma_k = delta_k (v_k T_{k+1} - suffix_k), dL/dc_k = w_k dL/dcolor.
    float optical_depth = 0.0f;
    for (int k = first; k < last; ++k) {
        const float trans = expf(-optical_depth);  // T_k, bit-for-bit the forward's value
        if (ray_has_stopped(trans, early_stop_eps)) {
            for (int j = k; j < last; ++j) grad_sigmas[j] = 0.0f;  // overwrite the scratch: no gradient here
            break;
        }
        const float delta = t_ends[k] - t_starts[k];
        const float s = sigmas[k] * delta;
        const float trans_next = trans * expf(-s);  // T_{k+1} = T_k e^{-s_k}
        const float t_mid = 0.5f * (t_starts[k] + t_ends[k]);
        float v = grad_weights[k] + g_opacity + g_depth * t_mid;
        for (int c = 0; c < 3; ++c) v += g_color[c] * rgbs[3 * k + c];
        grad_sigmas[k] = delta * (v * trans_next - grad_sigmas[k]);
        for (int c = 0; c < 3; ++c) grad_rgbs[3 * k + c] = weights[k] * g_color[c];
        optical_depth += s;
    }
}
