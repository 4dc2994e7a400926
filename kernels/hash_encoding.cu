// hash_encoding.cu: the multiresolution hash encoding of Instant-NGP (Müller et al. 2022, Sec. 3, Eq. 2-4,
// with tiny-cuda-nn's level offsets), forward and first-order backward. The PyTorch twin is hash_encode_torch in hash_encoding.py.
//
// Glossary: N points, L levels, F features per level, T rows in each level's table (a power of two).
// Layouts (row-major, contiguous):
//   positions       (N, 3)     float32 in [0, 1]^3
//   table           (L, T, F)  float32  row `index` of level l starts at element (l*T + index)*F
//   scales          (L,)       float32  scale_l = N_min * b^l - 1   (Eq. 2-3 with tiny-cuda-nn's `- 1`)
//   resolutions     (L,)       int32    res_l = ceil(scale_l) + 1   (vertices per axis of level l)
//   encoded         (N, L*F)   float32  [point][level][feature]
//   position_grads  (L, N, 3)  float32  one partial dL/dx per (level, point); Python sums over L
//
// Threads: one per (point, level), level-major: i = level * N + point. The 32 threads of a warp then share a
// level and read the same table (tiny-cuda-nn launches one grid row per level for the same reason).
// The backward adds into the table with atomicAdd (several points touch one row), so the order of the sums
// and hence the last bits of grad_table vary from run to run; the position gradient is written, not added.

#define MAX_FEATURES 8  // F per level; the paper uses F = 2, the wrapper checks F <= MAX_FEATURES

// Products are rounded before they are added (no fused multiply-add), exactly as the PyTorch twin computes
// them, so that floor(pos) agrees bit for bit even when pos lands on a vertex. nvcc would otherwise fuse
// `x * scale + 0.5f` into one fma; the emulation is built with g++ -ffp-contract=off, which never fuses.
__device__ inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

// Eq. 4 of Instant-NGP: h(x) = (XOR_i x_i * pi_i) mod T with pi_1 = 1, pi_2 = 2654435761, pi_3 = 805459861.
// The products wrap around modulo 2^32 (unsigned arithmetic); T is a power of two, so `mod T` is `& (T - 1)`.
__device__ inline unsigned int spatial_hash(unsigned int x, unsigned int y, unsigned int z) {
    return (x * 1u) ^ (y * 2654435761u) ^ (z * 805459861u);
}

// Row of the table that stores vertex (x, y, z) of a level with `res` vertices per axis.
// Coarse levels whose res^3 vertices fit in the table are indexed densely (one row per vertex, no
// collisions); finer levels hash (Sec. 3: "the mapping is 1:1 at coarse levels"). The +0.5 offset
// (tiny-cuda-nn's) lets a corner reach coordinate res on the far faces (x = 1) of some levels; its dense index then
// wraps onto another vertex, as in tiny-cuda-nn ("did not hurt quality"); the final mask keeps it in range.
__device__ inline unsigned int grid_index(unsigned int x, unsigned int y, unsigned int z, unsigned int res,
                                          unsigned int table_size) {
    const bool dense = (long long)res * res * res <= (long long)table_size;
    const unsigned int index = dense ? x + y * res + z * res * res  // x fastest, then y, then z
                                     : spatial_hash(x, y, z);
    return index & (table_size - 1u);
}

// As in tiny-cuda-nn, the position on level l is x * scale_l + 0.5; the +0.5 staggers the levels so that their
// vertices do not line up at x = 0. Splits it into the lower vertex (floor) and the fraction inside the cell.
__device__ inline void pos_fract(float x, float scale, unsigned int* pos_grid, float* frac) {
    const float pos = mul_rn(x, scale) + 0.5f;
    const float grid = floorf(pos);
    *pos_grid = (unsigned int)(int)grid;
    *frac = pos - grid;
}

// Trilinear interpolation weight of one dimension: frac towards the upper vertex, 1 - frac towards the lower.
__device__ inline float linear_weight(float frac, unsigned int upper) {
    return upper ? frac : 1.0f - frac;
}

// d(linear_weight)/d(frac): +1 towards the upper vertex, -1 towards the lower one.
__device__ inline float linear_weight_derivative(unsigned int upper) {
    return upper ? 1.0f : -1.0f;
}

// Eq. 2-3 + trilinear interpolation: y_l(x) = sum over the 8 corners c of w_c(x) * theta_l[h(c)].
// positions (N, 3), table (L, T, F), scales (L,), resolutions (L,) -> encoded (N, L*F).
// (No comments inside the parameter list: the emulation reads the signature up to its first parenthesis.)
extern "C" __global__ void hash_encode_forward(
    const float* __restrict__ positions, const float* __restrict__ table,
    const float* __restrict__ scales, const int* __restrict__ resolutions,
    float* __restrict__ encoded,
    int n_points, int n_levels, int n_features, unsigned int table_size) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_points * n_levels) return;
    const int level = (int)(i / n_points);                      // level-major thread index
    const int point = (int)(i - (long long)level * n_points);

    const float scale = scales[level];
    const unsigned int res = (unsigned int)resolutions[level];
    unsigned int pos_grid[3];
    float frac[3];
    for (int dim = 0; dim < 3; ++dim) {
        pos_fract(positions[point * 3 + dim], scale, &pos_grid[dim], &frac[dim]);
    }

    float result[MAX_FEATURES];
    for (int f = 0; f < n_features; ++f) result[f] = 0.0f;

    const float* level_table = table + (long long)level * table_size * n_features;  // theta_l: (T, F)
    for (unsigned int corner = 0; corner < 8; ++corner) {
        // Corner bits: bit 0 -> +1 in x, bit 1 -> +1 in y, bit 2 -> +1 in z.
        const unsigned int ux = corner & 1u, uy = (corner >> 1) & 1u, uz = (corner >> 2) & 1u;
        const float weight = linear_weight(frac[0], ux) * linear_weight(frac[1], uy) * linear_weight(frac[2], uz);
        const unsigned int row = grid_index(pos_grid[0] + ux, pos_grid[1] + uy, pos_grid[2] + uz, res, table_size);
        for (int f = 0; f < n_features; ++f) {
            result[f] += weight * level_table[(long long)row * n_features + f];
        }
    }

    // [point][level][feature]: the L*F features of one point are contiguous, the order an MLP reads them.
    float* out = encoded + (long long)point * n_levels * n_features + (long long)level * n_features;
    for (int f = 0; f < n_features; ++f) out[f] = result[f];
}

// Backward of hash_encode_forward (first order only).
//   dL/dtheta_l[h(c)] += w_c(x) * dL/dy_l           (atomicAdd: many points share a row)
//   dL/dx_d = sum_c sum_f dL/dy_{l,f} * theta_l[h(c), f] * dw_c/dfrac_d * scale_l   (dfrac_d/dx_d = scale_l)
// where dw_c/dfrac_d = (+1 or -1) * product of the other two dimensions' weights.
// positions (N, 3), table (L, T, F), scales (L,), resolutions (L,), grad_encoded (N, L*F)
// -> grad_table (L, T, F) accumulated (untouched when !need_table_grad),
//    position_grads (L, N, 3) written (untouched when !need_position_grad).
extern "C" __global__ void hash_encode_backward(
    const float* __restrict__ positions, const float* __restrict__ table,
    const float* __restrict__ scales, const int* __restrict__ resolutions,
    const float* __restrict__ grad_encoded,
    float* __restrict__ grad_table, float* __restrict__ position_grads,
    int n_points, int n_levels, int n_features, unsigned int table_size,
    int need_table_grad, int need_position_grad) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_points * n_levels) return;
    const int level = (int)(i / n_points);
    const int point = (int)(i - (long long)level * n_points);

    const float scale = scales[level];
    const unsigned int res = (unsigned int)resolutions[level];
    unsigned int pos_grid[3];
    float frac[3];
    for (int dim = 0; dim < 3; ++dim) {
        pos_fract(positions[point * 3 + dim], scale, &pos_grid[dim], &frac[dim]);
    }

    const float* grad_out = grad_encoded + (long long)point * n_levels * n_features + (long long)level * n_features;
    const long long level_offset = (long long)level * table_size * n_features;
    float grad_frac[3] = {0.0f, 0.0f, 0.0f};

    for (unsigned int corner = 0; corner < 8; ++corner) {
        const unsigned int upper[3] = {corner & 1u, (corner >> 1) & 1u, (corner >> 2) & 1u};
        float w[3];
        for (int dim = 0; dim < 3; ++dim) w[dim] = linear_weight(frac[dim], upper[dim]);
        const unsigned int row = grid_index(pos_grid[0] + upper[0], pos_grid[1] + upper[1], pos_grid[2] + upper[2],
                                            res, table_size);
        const long long row_offset = level_offset + (long long)row * n_features;

        if (need_table_grad) {
            const float weight = w[0] * w[1] * w[2];
            for (int f = 0; f < n_features; ++f) atomicAdd(&grad_table[row_offset + f], weight * grad_out[f]);
        }
        if (need_position_grad) {
            // <dL/dy_l, theta_l[h(c)]>: how much the loss cares about this corner's features.
            float corner_dot = 0.0f;
            for (int f = 0; f < n_features; ++f) corner_dot += grad_out[f] * table[row_offset + f];
            grad_frac[0] += corner_dot * linear_weight_derivative(upper[0]) * w[1] * w[2];
            grad_frac[1] += corner_dot * w[0] * linear_weight_derivative(upper[1]) * w[2];
            grad_frac[2] += corner_dot * w[0] * w[1] * linear_weight_derivative(upper[2]);
        }
    }

    if (need_position_grad) {
        // (L, N, 3): level l's partial of point p at ((l * N) + p) * 3; summing over L in Python keeps it
        // deterministic (no atomics on the positions).
        float* out = position_grads + ((long long)level * n_points + point) * 3;
        for (int dim = 0; dim < 3; ++dim) out[dim] = grad_frac[dim] * scale;
    }
}
