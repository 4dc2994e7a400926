// cuda_emulation.h: just enough of CUDA for g++ to compile our kernels/*.cu files unchanged, as C++, on the CPU.
//
// Why: CI and most laptops have no GPU, yet we want every line of every CUDA kernel executed by the tests and
// steppable by a student. Our kernels are written one thread per item (ray, point, level, cell) with no
// __syncthreads and no shared memory, so "a GPU thread" can be emulated by one call of the kernel function with
// the built-in indices set. kernels/backend.py compiles `#include "cuda_emulation.h"` + `#include "<name>.cu"`
// + a generated launcher per kernel into a shared library and calls the launcher through ctypes:
//
//     #pragma omp parallel for            // blocks run in parallel on the CPU cores
//     for (block = 0; block < grid; ++block)
//       for (thread = 0; thread < block_dim; ++thread) { blockIdx.x = block; threadIdx.x = thread; kernel(args...); }
//
// The built-in indices are thread_local, so each OpenMP thread sees its own. atomicAdd/atomicOr/atomicMax
// become OpenMP atomics, which is exactly the guarantee the CUDA versions give (the order of additions is not fixed).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
    unsigned int x = 0, y = 0, z = 0;
};

// One copy per CPU thread: the launcher sets them before each call of a kernel function.
static thread_local dim3 threadIdx;
static thread_local dim3 blockIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;

// CUDA's integer/float min and max overloads live in the global namespace; bring the C++ ones there.
using std::max;
using std::min;

inline float atomicAdd(float* address, float value) {
    float old;
#pragma omp atomic capture
    {
        old = *address;
        *address += value;
    }
    return old;
}

inline unsigned int atomicOr(unsigned int* address, unsigned int value) {
    unsigned int old;
#pragma omp atomic capture
    {
        old = *address;
        *address |= value;
    }
    return old;
}

inline unsigned int atomicMax(unsigned int* address, unsigned int value) {
    // OpenMP has no atomic max before 5.1 in GCC 12: a compare-and-swap loop gives the same guarantee.
    unsigned int old = __atomic_load_n(address, __ATOMIC_RELAXED);
    while (old < value && !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}

// Fast-math intrinsics map to the ordinary functions (the GPU versions trade a few ulp for speed).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return std::min(std::max(x, 0.0f), 1.0f); }
template <typename T>
inline T __ldg(const T* pointer) { return *pointer; }
