// tests/emulation/emu.h -- run softrank's CUDA kernels on the CPU (docs/CUDA.md, "Verification").
//
// One std::thread per CUDA thread of a block; the blocks of a grid run one after another on the
// same threads.  __syncthreads() is a std::barrier over the block, so a missing barrier shows up as
// a data race under ThreadSanitizer (see emu_build.py, tsan=True).  Dynamic shared
// memory is one buffer, poisoned with 0xFF bytes (NaN floats, -1 ints) before every block, because
// on a GPU it starts as garbage.  Only what softrank/cuda/prelude.cuh allows is provided:
// threadIdx/blockIdx/blockDim/gridDim (x only), __syncthreads, atomicOr(int*), dynamic shared
// memory.  Anything else fails to compile here, on purpose.
#pragma once
#define SOFTRANK_EMULATION 1
#include <barrier>
#include <cstddef>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace emu {
inline thread_local dim3 tl_thread_idx;
inline thread_local dim3 tl_block_idx;
inline dim3 g_block_dim;
inline dim3 g_grid_dim;
inline std::barrier<>* g_bar = nullptr;
inline unsigned char* g_smem = nullptr;
inline unsigned char* dynamic_smem() { return g_smem; }

// kernel<<<grid, block, smem>>>(args...), synchronous.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned grid, unsigned block, std::size_t smem, Args... args) {
  std::vector<unsigned char> buffer(smem + 64);
  unsigned char* aligned = buffer.data();
  while (reinterpret_cast<std::size_t>(aligned) % 16) ++aligned;
  g_smem = aligned;
  g_block_dim = dim3{block, 1, 1};
  g_grid_dim = dim3{grid, 1, 1};
  std::barrier<> bar(block);
  g_bar = &bar;
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([&, t]() {
      tl_thread_idx = dim3{t, 1, 1};
      for (unsigned b = 0; b < grid; ++b) {
        if (t == 0) std::memset(aligned, 0xFF, smem);
        bar.arrive_and_wait();
        tl_block_idx = dim3{b, 1, 1};
        kernel(args...);
        bar.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  g_bar = nullptr;
  g_smem = nullptr;
}
}  // namespace emu

#define threadIdx (::emu::tl_thread_idx)
#define blockIdx (::emu::tl_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)

inline void __syncthreads() { ::emu::g_bar->arrive_and_wait(); }
inline int atomicOr(int* address, int val) {
  return __atomic_fetch_or(address, val, __ATOMIC_RELAXED);
}
