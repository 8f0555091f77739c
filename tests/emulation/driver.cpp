// tests/emulation/driver.cpp -- extern "C" launchers of the emulated kernels, called via ctypes
// from tests/emulation/emu_harness.py.  Compiles softrank/cuda/kernels.cu unchanged.
// Each emu_<kernel>(f64, op, reg, grid, block, smem, <kernel arguments...>) picks the template
// instantiation and runs kernel<<<grid, block, smem>>>(<kernel arguments...>) on host threads.
#include "emu.h"
#include "kernels.cu"

using namespace softrank;

// SR_DISPATCH(body): runs `body` with T (float/double), OP and REG bound to compile-time values
// (OP: 0 rank, 1 sort, 2 project; pav.cuh), and S = the PAV state type of (OP, REG).
#define SR_DISPATCH(...)                                                   \
  do {                                                                     \
    if (f64) {                                                             \
      typedef double T;                                                    \
      SR_DISPATCH_OPREG(__VA_ARGS__);                                      \
    } else {                                                               \
      typedef float T;                                                     \
      SR_DISPATCH_OPREG(__VA_ARGS__);                                      \
    }                                                                      \
  } while (0)
#define SR_DISPATCH_OPREG(...)                                             \
  do {                                                                     \
    if (op == 0 && reg == 0) { SR_BIND(0, 0, __VA_ARGS__); }               \
    else if (op == 0) { SR_BIND(0, 1, __VA_ARGS__); }                      \
    else if (op == 1 && reg == 0) { SR_BIND(1, 0, __VA_ARGS__); }          \
    else if (op == 1) { SR_BIND(1, 1, __VA_ARGS__); }                      \
    else if (reg == 0) { SR_BIND(2, 0, __VA_ARGS__); }                     \
    else { SR_BIND(2, 1, __VA_ARGS__); }                                   \
  } while (0)
#define SR_BIND(op_, reg_, ...)                                            \
  constexpr int OP = op_, REG = reg_;                                      \
  typedef typename Pav<OP, REG, double>::State S;                          \
  (void)sizeof(S);                                                         \
  __VA_ARGS__

#define SR_HEAD int f64, int op, int reg, int grid, int block, long long smem

extern "C" {
void emu_forward(SR_HEAD, void* x, void* target, void* out, int* perm, int* blocks, int n_rows,
                 int n, int P, int log2G, double eps, double* eps_rows, int target_stride,
                 int sign, int sort_alg, int merge_cap) {
  SR_DISPATCH(emu::launch(softrank_forward<T, double, OP, REG>, grid, block, smem, (const T*)x,
                          (const T*)target, (T*)out, perm, blocks, n_rows, n, P, log2G, eps,
                          (const double*)eps_rows, target_stride, sign, sort_alg, merge_cap));
}

void emu_backward(SR_HEAD, void* g, int* perm, int* blocks, void* aux, void* grad, int n_rows,
                  int n, int log2G, double eps, double* eps_rows, int sign) {
  SR_DISPATCH(emu::launch(softrank_backward<T, double, OP, REG>, grid, block, smem, (const T*)g,
                          (const int*)perm, (const int*)blocks, (const T*)aux, (T*)grad, n_rows,
                          n, log2G, eps, (const double*)eps_rows, sign));
}

void emu_tile_pav(SR_HEAD, void* x, void* target, int* perm, int* blocks, double* ws_acc,
                  int* ws_link, int* ws_flags, int n_rows, int n, int tile, int tiles, int log2G,
                  double eps, double* eps_rows, int target_stride, int sign, int merge_cap) {
  SR_DISPATCH(emu::launch(softrank_tile_pav<T, double, OP, REG>, grid, block, smem, (const T*)x,
                          (const T*)target, (const int*)perm, blocks, (S*)ws_acc, ws_link,
                          ws_flags, n_rows, n, tile, tiles, log2G, eps, (const double*)eps_rows,
                          target_stride, sign, merge_cap));
}

void emu_merge_level(SR_HEAD, void* x, void* target, int* perm, double* ws_acc, int* ws_link,
                     int* blocks, int* ws_flags, int n_rows, int n, int span, int per_row,
                     double eps, double* eps_rows, int target_stride, int sign, int merge_cap) {
  SR_DISPATCH(emu::launch(softrank_merge_level<T, double, OP, REG>, grid, block, smem,
                          (const T*)x, (const T*)target, (const int*)perm, (S*)ws_acc, ws_link,
                          blocks, (const int*)ws_flags, n_rows, n, span, per_row, eps,
                          (const double*)eps_rows, target_stride, sign, merge_cap));
}

void emu_tile_max(SR_HEAD, int* blocks, int* ws_tmax, int n_rows, int n, int tile, int tiles,
                  int log2G) {
  (void)f64;
  (void)op;
  (void)reg;
  emu::launch(softrank_tile_max, grid, block, smem, (const int*)blocks, ws_tmax, n_rows, n, tile,
              tiles, log2G);
}

void emu_tile_expand(SR_HEAD, void* x, void* out, int* perm, int* blocks, double* ws_acc,
                     int* ws_link, int* ws_flags, int* ws_tmax, int n_rows, int n, int tile,
                     int tiles, int log2G, double eps, double* eps_rows, int sign) {
  SR_DISPATCH(emu::launch(softrank_tile_expand<T, double, OP, REG>, grid, block, smem,
                          (const T*)x, (T*)out, perm, blocks, (const S*)ws_acc,
                          (const int*)ws_link, (const int*)ws_flags, (const int*)ws_tmax, n_rows,
                          n, tile, tiles, log2G, eps, (const double*)eps_rows, sign));
}

void emu_bwd_tile_agg(SR_HEAD, void* g, int* perm, int* blocks, void* aux, double* ws_agg,
                      int* ws_aggf, int n_rows, int n, int tile, int tiles, int log2G, int sign) {
  SR_DISPATCH(emu::launch(softrank_bwd_tile_agg<T, double, OP, REG>, grid, block, smem,
                          (const T*)g, (const int*)perm, (const int*)blocks, (const T*)aux,
                          ws_agg, ws_aggf, n_rows, n, tile, tiles, log2G, sign));
}

void emu_bwd_tile_tot(SR_HEAD, void* g, int* perm, int* blocks, void* aux, double* ws_agg,
                      int* ws_aggf, double* ws_tot, int n_rows, int n, int tile, int tiles,
                      int log2G, int sign) {
  SR_DISPATCH(emu::launch(softrank_bwd_tile_tot<T, double, OP, REG>, grid, block, smem,
                          (const T*)g, (const int*)perm, (const int*)blocks, (const T*)aux,
                          (const double*)ws_agg, (const int*)ws_aggf, ws_tot, n_rows, n, tile,
                          tiles, log2G, sign));
}

void emu_bwd_tile_out(SR_HEAD, void* g, int* perm, int* blocks, void* aux, double* ws_tot,
                      void* grad, int n_rows, int n, int tile, int tiles, int log2G, double eps,
                      double* eps_rows, int sign) {
  SR_DISPATCH(emu::launch(softrank_bwd_tile_out<T, double, OP, REG>, grid, block, smem,
                          (const T*)g, (const int*)perm, (const int*)blocks, (const T*)aux,
                          (const double*)ws_tot, (T*)grad, n_rows, n, tile, tiles, log2G, eps,
                          (const double*)eps_rows, sign));
}

// ssize: the PAV state size (8, or 16 for the project modes)
long long emu_forward_smem(int tsize, int ssize, int n, int P, int bt, int R) {
  return sr_header_bytes(8, bt, R) + R * sr_forward_group_bytes(tsize, ssize, n, P);
}
long long emu_backward_smem(int tsize, int n, int bt, int R) {
  return sr_header_bytes(8, bt, R) + R * sr_backward_group_bytes(tsize, 8, n);
}
long long emu_header_bytes(int bt, int R) { return sr_header_bytes(8, bt, R); }
long long emu_tile_pav_smem(int ssize, int tile, int bt) {
  return sr_tile_pav_smem_bytes(ssize, tile, bt);
}
long long emu_bridge_scratch(int ssize, int bt) { return sr_bridge_scratch_bytes(ssize, bt); }
// the critical path of the junction merges (emu.h): reset, and the longest level since
void emu_reset_chain() { emu::g_level_max = 0; }
long emu_max_level_chain() { return emu::g_level_max.load(); }
// sizeof(Pav<op, reg, double>::State), for the test that tuning.py's state sizes agree
int emu_state_size(int op, int reg) {
  int f64 = 0;
  int size = 0;
  SR_DISPATCH(size = (int)sizeof(S));
  return size;
}
}
