// tests/emulation/emu.h -- run softrank's CUDA kernels on the CPU (docs/CUDA.md, "Verification").
//
// One std::thread per CUDA thread of a block; the blocks of a grid run one after another on the
// same threads.  __syncthreads() is a std::barrier over the block, so a missing barrier shows up as
// a data race under ThreadSanitizer (see emu_build.py, tsan=True).  Dynamic shared
// memory is one buffer, poisoned with 0xFF bytes (NaN floats, -1 ints) before every block, because
// on a GPU it starts as garbage.  Only what softrank/cuda/prelude.cuh allows is provided:
// threadIdx/blockIdx/blockDim/gridDim (x only), __syncthreads, atomicOr(int*), dynamic shared
// memory.  Anything else fails to compile here, on purpose.
//
// Critical path of the junction merges: every thread counts the dependent steps it takes
// (SR_EMU_STEP in the kernels: one pool, or one probe of the bridge search), and every
// __syncthreads() sets all counters of the block to their maximum, because a barrier makes every
// thread wait for the slowest.  SR_EMU_LEVEL() (after each merge level) and the end of a block
// record the steps since the previous mark; emu_max_level_chain() in driver.cpp returns the
// largest such count since emu_reset_chain().
#pragma once
#define SOFTRANK_EMULATION 1
#include <atomic>
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

inline thread_local long tl_chain = 0;        // this thread's dependent steps in this block
inline thread_local long tl_level_start = 0;  // tl_chain at the last level mark
inline std::atomic<long> g_pending{0};        // max of the counters arriving at a barrier
inline long g_synced = 0;                     // ... published by the barrier's completion step
inline std::atomic<long> g_level_max{0};      // longest level seen since emu_reset_chain()

inline void atomic_max(std::atomic<long>& a, long v) {
  long cur = a.load();
  while (v > cur && !a.compare_exchange_weak(cur, v)) {
  }
}
struct SyncChain {
  void operator()() noexcept { g_synced = g_pending.load(); }
};
inline std::barrier<SyncChain>* g_bar = nullptr;
inline void count_step() { ++tl_chain; }
inline void end_level() {
  atomic_max(g_level_max, tl_chain - tl_level_start);
  tl_level_start = tl_chain;
}
inline void sync_block() {
  atomic_max(g_pending, tl_chain);
  g_bar->arrive_and_wait();
  tl_chain = g_synced;
}
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
  std::barrier<SyncChain> bar(block);
  g_bar = &bar;
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([&, t]() {
      tl_thread_idx = dim3{t, 1, 1};
      for (unsigned b = 0; b < grid; ++b) {
        if (t == 0) {
          std::memset(aligned, 0xFF, smem);
          g_pending = 0;
        }
        tl_chain = tl_level_start = 0;
        bar.arrive_and_wait();
        tl_block_idx = dim3{b, 1, 1};
        kernel(args...);
        sync_block();
        end_level();  // the steps since the last level mark (a merge_level block: its junction)
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

inline void __syncthreads() { ::emu::sync_block(); }
inline int atomicOr(int* address, int val) {
  return __atomic_fetch_or(address, val, __ATOMIC_RELAXED);
}
