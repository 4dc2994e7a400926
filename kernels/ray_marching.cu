// ray_marching.cu: occupancy-grid ray marching of Instant-NGP (Müller et al. 2022, Sec. 5.4 and Appendix E),
// and the two kernels that maintain the grid. The PyTorch twins are in ray_marching.py.
//
// Glossary: R rays, N packed samples, G = grid_res cells per axis, M chosen cells of an update.
//
// The grid: G^3 cells splitting the scene box aabb = [lo, hi] (a (2, 3) float32 array [min, max]).
// Cell (x, y, z) has index x + y*G + z*G^2 (x fastest); its occupancy is bit (index & 7) of byte (index >> 3)
// of the bitfield, a (G^3 / 8,) uint8 array (Instant-NGP keeps the same one bit per cell).
//
// The samples of a ray lie on a lattice of fixed steps dt: t_k = t0 + (k + u) * dt, with u in [0, 1) the ray's
// jitter. Sample k is the interval [t_k, t_{k+1}]; it exists while t_{k+1} <= t_end and is kept when the cell
// containing its midpoint is occupied. (Instant-NGP also grows the step with the distance for large scenes,
// Appendix E.1; the synthetic scenes of 04_hashnerf.py use fixed steps, and so does this marcher.) The lattice
// is a function of k alone, so the kernel may jump over empty space and still land on exactly the points the
// twin enumerates one by one.

// NVRTC (CuPy) compiles without the C headers that define INFINITY; nvcc and g++ (through <cmath>) have it.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Products are rounded before they are added (no fused multiply-add), as the PyTorch twin computes them, so that
// the samples agree bit for bit. nvcc would otherwise fuse `t0 + (k + u) * dt` into one fma; the emulation is
// built with g++ -ffp-contract=off (kernels/backend.py), which never fuses.
__device__ inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

// t_k, lattice point k of a ray that enters at t0 with jitter u.
__device__ inline float lattice_t(long long k, float t0, float u, float dt) {
    return t0 + mul_rn((float)k + u, dt);
}

// Slab test: [t_min, t_max] of the ray inside the box. A zero direction component gives +-inf (or NaN when
// the origin sits on that slab's face); fminf/fmaxf skip NaN, and the twin uses torch.fmin/fmax to match.
__device__ inline void ray_aabb_intersect(const float* o, const float* d, const float* aabb,
                                          float* t_min, float* t_max) {
    float t_near = -INFINITY, t_far = INFINITY;
    for (int dim = 0; dim < 3; ++dim) {
        const float inv_d = 1.0f / d[dim];
        const float t_lo = (aabb[dim] - o[dim]) * inv_d;      // aabb[0..2] = min corner
        const float t_hi = (aabb[3 + dim] - o[dim]) * inv_d;  // aabb[3..5] = max corner
        t_near = fmaxf(t_near, fminf(t_lo, t_hi));
        t_far = fminf(t_far, fmaxf(t_lo, t_hi));
    }
    *t_min = t_near;
    *t_max = t_far;
}

// Cell of point o + t d: floor((p - lo) / (hi - lo) * G) per axis, clamped to [0, G-1] (a midpoint on the far
// face, or one float rounding outside the box, belongs to the last cell).
__device__ inline void cell_of(const float* o, const float* d, float t, const float* aabb, int grid_res,
                               int* cell) {
    for (int dim = 0; dim < 3; ++dim) {
        const float p = o[dim] + mul_rn(t, d[dim]);
        const float q = (p - aabb[dim]) / (aabb[3 + dim] - aabb[dim]) * (float)grid_res;
        cell[dim] = min(max((int)floorf(q), 0), grid_res - 1);
    }
}

__device__ inline bool cell_occupied(const unsigned char* bitfield, const int* cell, int grid_res) {
    const unsigned int index = (unsigned int)cell[0] + (unsigned int)cell[1] * grid_res
                             + (unsigned int)cell[2] * grid_res * grid_res;  // x + y*G + z*G^2
    return (bitfield[index >> 3] >> (index & 7u)) & 1u;  // byte index/8, bit index%8
}

// Where the ray leaves `cell`: the first of the three faces it crosses in its direction of travel. Each face
// is moved CELL_EXIT_MARGIN of a cell inwards, so that a point the float cell lookup above would put in the
// next cell is never jumped over (the error of q is ~1e-5 cells; the margin is 100 times larger).
#define CELL_EXIT_MARGIN 1e-3f
__device__ inline float cell_exit_t(const float* o, const float* d, const int* cell, const float* aabb,
                                    int grid_res) {
    float t_exit = INFINITY;
    for (int dim = 0; dim < 3; ++dim) {
        if (d[dim] == 0.0f) continue;  // never leaves the cell along this axis
        const float face = d[dim] > 0.0f ? (float)(cell[dim] + 1) - CELL_EXIT_MARGIN
                                         : (float)cell[dim] + CELL_EXIT_MARGIN;  // in cells
        const float cell_size = (aabb[3 + dim] - aabb[dim]) / (float)grid_res;
        const float face_position = aabb[dim] + mul_rn(face, cell_size);
        t_exit = fminf(t_exit, (face_position - o[dim]) / d[dim]);
    }
    return t_exit;
}

// One ray's march; counts its samples and, when `write`, stores them from t_starts[first] on.
// Returns the number of samples (at most max_samples).
__device__ inline int march_ray(const float* o, const float* d, float u, const float* aabb,
                                const unsigned char* bitfield, int grid_res, float near, float far,
                                float dt, int max_samples, bool write, int first,
                                float* t_starts, float* t_ends) {
    float t_min, t_max;
    ray_aabb_intersect(o, d, aabb, &t_min, &t_max);
    const float t0 = fmaxf(t_min, near);     // enter the box, not before near
    const float t_end = fminf(t_max, far);   // leave it, not after far
    if (!(t0 < t_end)) return 0;             // misses the box (or NaN)

    int count = 0;
    long long k = 0;
    while (count < max_samples) {
        const float t_start = lattice_t(k, t0, u, dt);
        const float t_stop = lattice_t(k + 1, t0, u, dt);
        if (!(t_stop <= t_end)) break;  // the interval would leave [t0, t_end]
        const float t_mid = (t_start + t_stop) * 0.5f;
        int cell[3];
        cell_of(o, d, t_mid, aabb, grid_res, cell);
        if (cell_occupied(bitfield, cell, grid_res)) {
            if (write) {
                t_starts[first + count] = t_start;
                t_ends[first + count] = t_stop;
            }
            ++count;
            ++k;
            continue;
        }
        // Empty cell: every midpoint before t_exit is in this cell too (a cell is convex). Sample j's midpoint
        // is before t_{j+1}, and t_{j+1} <= t_exit  <=>  j <= (t_exit - t0) / dt - u - 1 =: x. Jump to floor(x):
        // the points skipped, j <= floor(x) - 1, end a whole step before t_exit; floor(x) itself is checked.
        const float t_exit = cell_exit_t(o, d, cell, aabb, grid_res);
        if (!(t_exit < t_end)) break;  // the rest of the ray stays in this empty cell
        const float steps_to_exit = (t_exit - t0) / dt;
        const float x = steps_to_exit - u - 1.0f;
        k = (long long)floorf(fmaxf(x, (float)(k + 1)));  // at least one step forward (fmaxf also drops a NaN)
    }
    return count;
}

// Pass 1: ray_counts[r] = number of samples of ray r. One thread per ray.
// rays_o, rays_d (R, 3), offsets u (R,), aabb (2, 3) float32; bitfield (G^3/8,) uint8 -> ray_counts (R,) int32.
extern "C" __global__ void march_rays_count(
    const float* __restrict__ rays_o, const float* __restrict__ rays_d, const float* __restrict__ offsets,
    const float* __restrict__ aabb, const unsigned char* __restrict__ bitfield, int grid_res,
    float near, float far, float dt, int max_samples, int n_rays, int* __restrict__ ray_counts) {
    const int ray = blockIdx.x * blockDim.x + threadIdx.x;
    if (ray >= n_rays) return;
    ray_counts[ray] = march_ray(rays_o + ray * 3, rays_d + ray * 3, offsets[ray], aabb, bitfield, grid_res,
                                near, far, dt, max_samples, false, 0, nullptr, nullptr);
}

// Pass 2: the same march, writing ray r's samples to t_starts/t_ends[ray_starts[r] ...] (ray_starts = exclusive
// cumsum of ray_counts, computed in torch between the passes). t_starts, t_ends: (N,) float32.
extern "C" __global__ void march_rays_write(
    const float* __restrict__ rays_o, const float* __restrict__ rays_d, const float* __restrict__ offsets,
    const float* __restrict__ aabb, const unsigned char* __restrict__ bitfield, int grid_res,
    float near, float far, float dt, int max_samples, int n_rays, const int* __restrict__ ray_starts,
    float* __restrict__ t_starts, float* __restrict__ t_ends) {
    const int ray = blockIdx.x * blockDim.x + threadIdx.x;
    if (ray >= n_rays) return;
    march_ray(rays_o + ray * 3, rays_d + ray * 3, offsets[ray], aabb, bitfield, grid_res, near, far, dt,
              max_samples, true, ray_starts[ray], t_starts, t_ends);
}

// Grid update (Appendix E.2): density[c] = max(density[c] * decay, new_density) for each chosen cell, one thread
// per chosen cell. The cells are distinct (the caller deduplicates), so no two threads write the same cell.
// density (G^3,) float32; cell_indices (M,) int64; new_density (M,) float32.
extern "C" __global__ void occupancy_update(
    float* __restrict__ density, const long long* __restrict__ cell_indices,
    const float* __restrict__ new_density, float decay, int n_cells) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_cells) return;
    const long long cell = cell_indices[i];
    density[cell] = fmaxf(density[cell] * decay, new_density[i]);  // fmaxf: a NaN density is ignored
}

// Pack the occupancy into bits: bit b of byte k is density[8k + b] > threshold. One thread per byte, so no two
// threads share a byte and no atomics are needed. density (G^3,) float32 -> bitfield (G^3/8,) uint8.
extern "C" __global__ void pack_bitfield(
    const float* __restrict__ density, float threshold, int n_bytes, unsigned char* __restrict__ bitfield) {
    const int byte = blockIdx.x * blockDim.x + threadIdx.x;
    if (byte >= n_bytes) return;
    unsigned int bits = 0u;
    for (int b = 0; b < 8; ++b) {
        bits |= (density[byte * 8 + b] > threshold ? 1u : 0u) << b;
    }
    bitfield[byte] = (unsigned char)bits;
}
