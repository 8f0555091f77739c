// softrank/cuda/prelude.cuh -- portability layer between NVRTC/nvcc and the host emulator.
//
// The kernels in this folder are compiled in two ways:
//   * on a GPU machine by NVRTC (cupy.RawModule, see _backend.py), or by nvcc in the compile test
//     (tests/test_cuda_compile.py);
//   * on the CPU by g++ for the kernel-logic tests, after tests/emulation/emu.h, which defines
//     SOFTRANK_EMULATION and provides threadIdx/blockIdx/blockDim, __syncthreads, atomicOr and
//     dynamic shared memory (CUDA threads as host threads, barriers as std::barrier).
// Only the subset of CUDA that the emulator implements may be used in the kernels: __syncthreads,
// atomicOr on int, dynamic shared memory through SR_DYN_SMEM, threadIdx/blockIdx/blockDim (x),
// and the math helpers below.  No warp collectives (v1).  No standard headers under NVRTC.
// SR_EMU_STEP() marks one dependent step of a junction merge (a pool or a bridge-search probe)
// and SR_EMU_LEVEL() the end of a merge level: the emulator measures the critical path of each
// level with them (tests/emulation/emu.h); they compile to nothing on the GPU.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define SR_HD __host__ __device__ __forceinline__
#define SR_DEV __device__ __forceinline__
#define SR_GLOBAL __global__
#define SR_LAUNCH_BOUNDS(...) __launch_bounds__(__VA_ARGS__)
#define SR_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define SR_RESTRICT __restrict__

SR_DEV float sr_exp(float v) { return expf(v); }
SR_DEV double sr_exp(double v) { return exp(v); }
SR_DEV float sr_log(float v) { return logf(v); }
SR_DEV double sr_log(double v) { return log(v); }
SR_DEV float sr_log1p(float v) { return log1pf(v); }
SR_DEV double sr_log1p(double v) { return log1p(v); }
SR_DEV float sr_expm1(float v) { return expm1f(v); }
SR_DEV double sr_expm1(double v) { return expm1(v); }
template <typename T> SR_DEV T sr_nan();
template <> SR_DEV float sr_nan<float>() { return __int_as_float(0x7fc00000); }
template <> SR_DEV double sr_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }
#define SR_EMU_STEP() ((void)0)
#define SR_EMU_LEVEL() ((void)0)

#else  // host emulation; tests/emulation/emu.h has been included before this file
#ifndef SOFTRANK_EMULATION
#error "prelude.cuh outside NVRTC/nvcc needs tests/emulation/emu.h first"
#endif
#include <cmath>
#include <cstring>
#define SR_HD inline
#define SR_DEV inline
#define SR_GLOBAL
#define SR_LAUNCH_BOUNDS(...)
#define SR_DYN_SMEM(name) unsigned char* name = ::emu::dynamic_smem()
#define SR_RESTRICT __restrict__

inline float sr_exp(float v) { return std::exp(v); }
inline double sr_exp(double v) { return std::exp(v); }
inline float sr_log(float v) { return std::log(v); }
inline double sr_log(double v) { return std::log(v); }
inline float sr_log1p(float v) { return std::log1p(v); }
inline double sr_log1p(double v) { return std::log1p(v); }
inline float sr_expm1(float v) { return std::expm1(v); }
inline double sr_expm1(double v) { return std::expm1(v); }
template <typename T> inline T sr_nan() { return std::nan(""); }
template <> inline float sr_nan<float>() { return std::nanf(""); }
#define SR_EMU_STEP() ::emu::count_step()
#define SR_EMU_LEVEL() ::emu::end_level()
#endif

// x - x is 0 for finite x and NaN for +-inf/NaN (valid without fast-math, which we never pass).
template <typename T> SR_HD bool sr_isfinite(T v) { return (v - v) == T(0); }
template <typename T> SR_HD T sr_max(T a, T b) { return a > b ? a : b; }
template <typename T> SR_HD T sr_min(T a, T b) { return a < b ? a : b; }

// log(exp(a) + exp(b)) without overflow; no subtraction of large sums.
template <typename A> SR_HD A sr_log_add_exp(A a, A b) {
  const A hi = a > b ? a : b;
  const A lo = a > b ? b : a;
  return hi + sr_log1p(sr_exp(lo - hi));
}
