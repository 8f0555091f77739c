// softrank/cuda/kernels.cu -- batched soft rank / soft sort / projection onto the permutahedron
// of a target on the GPU (forward and VJP).
//
// Problem (docs/CONTRACT.md, Blondel et al. 2020, arXiv:2002.08871): for each row, z = sign * x,
// s = z sorted decreasing (ties by index), then the DECREASING isotonic regression of the
// operand of (op, regularization) by pool-adjacent-violators; outputs, `perm` (int32) and
// `blocks` (int32 block start per sorted position).  A row with NaN/inf gets out = NaN,
// perm = identity and blocks = (-1, 0, 0, ...), exactly as the CPU back end.
// OP = OP_RANK, OP_SORT or OP_PROJECT (rank with the caller's target row t, sorted
// decreasingly, in place of rho; `target` with a row stride of 0 (one shared row) or n).
// Strengths: `eps_d` for every row, or `eps_rows[row]` when eps_rows is not null.
//
// Parallel PAV (docs/CUDA.md): a group of G threads (G a power of two) owns one row.
// Thread t runs sequential PAV on the contiguous chunk [t*c, (t+1)*c) of sorted positions, then
// log2(G) levels of junction merges (decomposition property: PAV of the pieces' blocks gives the
// global solution and the same partition).  Blocks are kept as links (link[start] = end,
// link[end] = start) with one accumulator at the block start and a head flag per position.
// The block start of each position is a group-wide max-scan of head positions.  A junction pools
// at most `merge_cap` blocks one by one; the junction's threads then find the merged block by the
// bridge search (sr_bridge), so that a merge level's critical path is O(log n), not O(n).
//
// Kernel families (dispatch in tuning.py, launch sequences in _backend.py, both in this folder):
//   smem   softrank_forward / softrank_backward: R = blockDim/G rows per block, every row in
//          shared memory; the forward sorts the row in shared memory (bitonic network or merge
//          sort on (key, index), `sort_alg`).  Small n: small G, many rows per block ("several rows per warp");
//          large n: G = blockDim ("one block per row").
//   tiled  rows too long for shared memory, or few long rows: `perm` comes from a global stable
//          sort (_backend.presort, or torch.sort in _torch_bridge.py), each row is cut into
//          tiles of `tile` sorted positions, one block per tile, PAV workspace (accumulators,
//          links) in global memory, head flags in the `blocks` output itself:
//            forward:  softrank_tile_pav (chunk PAV + merges inside the tile),
//                      softrank_merge_level (one block per junction, one launch per level),
//                      softrank_tile_max, softrank_tile_expand;
//            backward: softrank_bwd_tile_agg (segment sums open at each tile's end),
//                      softrank_bwd_tile_tot (block totals), softrank_bwd_tile_out.
// Deviations from the sequential algorithm: accumulators are double for float32 data too; the
// rho operand's block sums are closed forms (see pav.cuh).  Only __syncthreads and atomicOr are
// used for cooperation, and blocks never wait for each other inside a kernel, so
// tests/emulation/emu.h runs these kernels on the CPU.
#ifndef SOFTRANK_KERNELS_CU
#define SOFTRANK_KERNELS_CU
#include "prelude.cuh"
#include "pav.cuh"

namespace softrank {

SR_HD long long sr_align16(long long b) { return (b + 15) & ~15LL; }

// The smem forward's sort (tuning.py "smem_sort"): bitonic network or merge sort.
enum { SR_SORT_BITONIC = 0, SR_SORT_MERGE = 1 };

// The strength of a row: eps_rows[row] when the call has one strength per row, else eps.
SR_DEV double sr_row_eps(const double* eps_rows, double eps, long long row) {
  return eps_rows ? eps_rows[row] : eps;
}

// Shared-memory layout (bytes).  softrank/cuda/tuning.py mirrors these formulas; the emulated
// test checks that both agree.
// Flags of the junction merges: one int per merge level ("a junction of this level needs the
// bridge search"), so that no flag is written while another thread may still read it.
#define SR_LEVEL_FLAGS 32
// header: A scan_u[bt], A scan_w[bt], int scan_f[bt], int flags[R], int levels[SR_LEVEL_FLAGS]
// (the forward's bridge search uses scan_u/scan_w as one PAV state per thread: 2 * asize bytes
// hold the project modes' pair state too)
SR_HD long long sr_header_bytes(int asize, int bt, int R) {
  return sr_align16((long long)bt * (2 * asize + 4) + 4LL * R + 4LL * SR_LEVEL_FLAGS);
}
// Scratch of the bridge search when there is no header to borrow (softrank_tile_pav,
// softrank_merge_level): State st[bt], int in[bt], int levels[SR_LEVEL_FLAGS]
SR_HD long long sr_bridge_scratch_bytes(int ssize, int bt) {
  return sr_align16((long long)ssize * bt) + sr_align16(4LL * bt + 4LL * SR_LEVEL_FLAGS);
}
// Per-position shared arrays of the smem forward are padded by one slot every 32 positions, so
// that threads walking contiguous chunks of c = 4..8 positions hit distinct banks.
SR_HD int sr_pad(int i) { return i + (i >> 5); }
SR_HD long long sr_padded(int n) { return (long long)sr_pad(n) + 1; }

// forward group: State acc[n], T key[P], int idx[P], int link[n], int head[n] (padded);
// ssize = sizeof(Pav::State): 8, or 16 for the project modes
SR_HD long long sr_forward_group_bytes(int tsize, int ssize, int n, int P) {
  return sr_align16(ssize * sr_padded(n)) + sr_align16(tsize * sr_padded(P)) +
         sr_align16(4 * sr_padded(P)) + 2 * sr_align16(4 * sr_padded(n));
}
// tiled forward, softrank_tile_pav: State acc[tile], int link[tile], int head[tile], then the
// bridge scratch of its bt threads
SR_HD long long sr_tile_pav_smem_bytes(int ssize, int tile, int bt) {
  return sr_align16((long long)ssize * tile) + 2 * sr_align16(4LL * tile) +
         sr_bridge_scratch_bytes(ssize, bt);
}
// backward group: A tot_u[n], A tot_w[n], int blocks[n], int perm[n], T g[n], T aux[n]
SR_HD long long sr_backward_group_bytes(int tsize, int asize, int n) {
  return 2 * sr_align16((long long)asize * n) + 2 * sr_align16(4LL * n) +
         2 * sr_align16((long long)tsize * n);
}

// Exclusive max-scan of one int per thread within each group of G threads (Hillis-Steele);
// the first thread of a group gets -1.  Every thread of the block must call it.
SR_DEV int sr_group_exclusive_max(int* scr, int v, int tid, int lt, int G) {
  scr[tid] = v;
  __syncthreads();
  for (int off = 1; off < G; off <<= 1) {
    const int o = lt >= off ? scr[tid - off] : -1;
    __syncthreads();
    if (o > scr[tid]) scr[tid] = o;
    __syncthreads();
  }
  const int r = lt > 0 ? scr[tid - 1] : -1;
  __syncthreads();
  return r;
}

// Exclusive segmented sum of (u, w) per thread within each group; f = "this thread's chunk
// contains a segment head".  On return (u, w) are the running sums of the segment open at the
// start of this thread's chunk and f says whether an earlier thread of the group saw a head.
// Every thread of the block must call it.
template <typename A>
SR_DEV void sr_group_exclusive_segsum(A* su, A* sw, int* sf, A& u, A& w, int& f, int tid,
                                      int lt, int G) {
  su[tid] = u;
  sw[tid] = w;
  sf[tid] = f;
  __syncthreads();
  for (int off = 1; off < G; off <<= 1) {
    A ou = A(0), ow = A(0);
    int of = 0;
    if (lt >= off) {
      ou = su[tid - off];
      ow = sw[tid - off];
      of = sf[tid - off];
    }
    __syncthreads();
    if (lt >= off) {
      if (!sf[tid]) {
        su[tid] = ou + su[tid];
        sw[tid] = ow + sw[tid];
      }
      sf[tid] |= of;
    }
    __syncthreads();
  }
  u = lt > 0 ? su[tid - 1] : A(0);
  w = lt > 0 ? sw[tid - 1] : A(0);
  f = lt > 0 ? sf[tid - 1] : 0;
  __syncthreads();
}

// Block-wide reductions (blockDim a power of two); every thread gets the result.
SR_DEV int sr_block_max(int* scr, int v) {
  const int tid = threadIdx.x;
  scr[tid] = v;
  __syncthreads();
  for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
    if (tid < s && scr[tid + s] > scr[tid]) scr[tid] = scr[tid + s];
    __syncthreads();
  }
  const int r = scr[0];
  __syncthreads();
  return r;
}

template <typename A>
SR_DEV void sr_block_sum2(A* su, A* sw, A& u, A& w) {
  const int tid = threadIdx.x;
  su[tid] = u;
  sw[tid] = w;
  __syncthreads();
  for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
    if (tid < s) {
      su[tid] += su[tid + s];
      sw[tid] += sw[tid + s];
    }
    __syncthreads();
  }
  u = su[0];
  w = sw[0];
  __syncthreads();
}

// (key, index) order of the sort: key decreasing, ties by index increasing; padding (index >= n)
// goes last.
template <typename T>
SR_DEV bool sr_before(T ka, int ia, T kb, int ib, int n) {
  return ia < n && (ib >= n || ka > kb || (ka == kb && ia < ib));
}

// Stable merge sort of a group's n (key, idx) pairs, the smem forward's alternative to the
// bitonic network (tuning.py "smem_sort"): O(n log n) comparisons and log2(G) barriers instead of
// O(n log^2 n) and log2(P)(log2(P)+1)/2.  Same order as sr_before (all pairs distinct, so the
// result is the stable sort).  Thread lt sorts its chunk [lo, hi) (c = ceil(n / G) positions),
// then log2(G) levels merge pairs of runs; each thread writes the output positions of its own
// chunk, finding where they start in the two runs by a merge-path binary search.  (key2, idx2)
// is a second buffer of n pairs; the chunk sort starts in the buffer that makes the last level
// end in (key, idx).  Every thread of the block must call it.
template <typename T, class KeyArr, class IdxArr>
SR_DEV void sr_group_merge_sort(KeyArr key, IdxArr idx, KeyArr key2, IdxArr idx2, int n, int c,
                                int lo, int hi, int lt, int log2G, bool work) {
  const bool odd = log2G & 1;
  if (work) {
    KeyArr dk = odd ? key2 : key;
    IdxArr di = odd ? idx2 : idx;
    for (int j = lo; j < hi; ++j) {  // insertion sort of the chunk into the start buffer
      const T kj = key[j];
      const int ij = idx[j];
      int q = j;
      while (q > lo && sr_before(kj, ij, dk[q - 1], di[q - 1], n)) {
        dk[q] = dk[q - 1];
        di[q] = di[q - 1];
        --q;
      }
      dk[q] = kj;
      di[q] = ij;
    }
  }
  __syncthreads();
  for (int level = 0; level < log2G; ++level) {
    const bool from2 = odd != ((level & 1) != 0);  // level 0 reads the start buffer
    KeyArr sk = from2 ? key2 : key;
    IdxArr si = from2 ? idx2 : idx;
    KeyArr dk = from2 ? key : key2;
    IdxArr di = from2 ? idx : idx2;
    if (work && lo < hi) {
      const int half = 1 << level;
      const int pb = lt & ~(2 * half - 1);
      const int a0 = sr_min(pb * c, n);
      const int b0 = sr_min((pb + half) * c, n);
      const int b1 = sr_min((pb + 2 * half) * c, n);
      const int la = b0 - a0;
      const int lb = b1 - b0;
      const int d = lo - a0;  // outputs of the merged pair before this chunk
      int l = sr_max(0, d - lb);
      int h = sr_min(d, la);
      while (l < h) {  // number of run-A elements among the first d outputs
        const int m = (l + h) >> 1;
        if (sr_before(sk[a0 + m], si[a0 + m], sk[b0 + d - 1 - m], si[b0 + d - 1 - m], n))
          l = m + 1;
        else
          h = m;
      }
      int i = l;
      int j = d - l;
      for (int q = lo; q < hi; ++q) {
        const bool take_a = i < la && (j >= lb || !sr_before(sk[b0 + j], si[b0 + j],
                                                             sk[a0 + i], si[a0 + i], n));
        const int from = take_a ? a0 + i++ : b0 + j++;
        dk[q] = sk[from];
        di[q] = si[from];
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// PAV building blocks on a row's arrays (positions are row-relative)

// A row array in padded layout: a[j] = p[sr_pad(j)].
template <typename V>
struct SrPadded {
  V* p;
  SR_DEV V& operator[](int j) const { return p[sr_pad(j)]; }
};

// A row array held from position `base` on (e.g. one tile in shared memory): a[j] = p[j - base].
template <typename V>
struct SrShifted {
  V* p;
  int base;
  SR_DEV V& operator[](int j) const { return p[j - base]; }
};

// The PAV helpers below take the per-position arrays as raw pointers (whole row) or SrShifted.

// Whether block [a, b) and its right neighbour [b, eb] violate the order (PAV pools them).
template <class F, typename A, class SV, class AccArr>
SR_DEV bool sr_violates(SV sv, AccArr acc, int a, int b, int eb, int n, A eps) {
  return F::val(acc[a], a, b - a, n, eps, sv) <= F::val(acc[b], b, eb - b + 1, n, eps, sv);
}

// Pool block [b, eb] into its left neighbour [a, b): state at a, links at both ends.
template <class F, typename A, class SV, class AccArr, class IntArr>
SR_DEV void sr_pool(SV sv, AccArr acc, IntArr link, IntArr head, int a, int b, int eb, A eps) {
  acc[a] = F::join(acc[a], acc[b], a, b, eb - b + 1, eps, sv);
  link[a] = eb;
  link[eb] = a;
  head[b] = 0;
}

// Sequential PAV of the sorted positions [lo, hi); init_of(j) gives the state of the singleton
// block {j} (read before acc[j] is written, so init_of may read acc[j]); sv(j) = s_j (pav.cuh:
// the rank and project states are relative to their block's first element).
template <class F, typename A, class S, class SV, class AccArr, class IntArr>
SR_DEV void sr_chunk_pav(S init_of, SV sv, AccArr acc, IntArr link, IntArr head, int lo, int hi,
                         int n, A eps) {
  for (int j = lo; j < hi; ++j) {
    acc[j] = init_of(j);
    link[j] = j;
    head[j] = 1;
    int a = j;
    while (a > lo) {
      const int pa = link[a - 1];
      const int e = link[a];
      if (!sr_violates<F>(sv, acc, pa, a, e, n, eps)) break;
      sr_pool<F>(sv, acc, link, head, pa, a, e, eps);
      a = pa;
    }
  }
}

// Merge two adjacent solved ranges [lo, mid) and [mid, hi) (junction at mid) by pooling the
// block that holds the junction with its neighbours one by one, at most `cap` times.  Returns
// true if it stopped at the cap with a pool still due; [js, je] is the junction's block then
// (the bridge search finishes the merge, sr_bridge).
template <class F, typename A, class SV, class AccArr, class IntArr>
SR_DEV bool sr_merge_junction(SV sv, AccArr acc, IntArr link, IntArr head, int lo, int mid, int hi,
                              int n, A eps, int cap, int& js, int& je) {
  int cur = mid;  // start of the block that holds the junction
  int pops = 0;
  // Pools block [b, eb] into its left neighbour [a, b) if they violate the order: 1 if pooled,
  // 0 if not, -1 if the cap of one-by-one pools is reached first (the search takes over).
  auto pool = [&](int a, int b, int eb) -> int {
    if (!sr_violates<F>(sv, acc, a, b, eb, n, eps)) return 0;
    if (pops == cap) return -1;
    ++pops;
    SR_EMU_STEP();
    sr_pool<F>(sv, acc, link, head, a, b, eb, eps);
    return 1;
  };
  for (;;) {
    bool changed = false;
    while (cur > lo) {  // absorb the left neighbour
      const int pa = link[cur - 1];
      const int e = link[cur];
      const int pooled = pool(pa, cur, e);
      if (pooled < 0) {
        js = cur;
        je = e;
        return true;
      }
      if (!pooled) break;
      cur = pa;
      changed = true;
    }
    int e = link[cur];
    while (e + 1 < hi) {  // absorb the right neighbour
      const int nb = e + 1;
      const int ne = link[nb];
      const int pooled = pool(cur, nb, ne);
      if (pooled < 0) {
        js = cur;
        je = e;
        return true;
      }
      if (!pooled) break;
      e = ne;
      changed = true;
    }
    if (!changed) break;
  }
  js = cur;
  je = link[cur];
  return false;
}

// ---- bridge search (docs/CUDA.md, "The bridge search")
//
// A junction that hit the cap has a left range [jlo, js) of solved blocks with strictly
// decreasing values, the junction block J = [js, je] and a right range (je, jhi).  The merge ends
// with one block: left blocks from some start a* to js - 1, J, and right blocks up to some end e*.
// For a candidate start a, "the next right block is absorbed" holds for the right blocks up to
// e(a) and fails after (binary search, sr_bridge_end); "the block left of a stays apart" fails for
// a > a* and holds for a <= a* (a search over the left range that the junction's threads share,
// sr_bridge).  Both need the pooled state of any run of blocks next to J in O(1): the threads of
// the junction compute *anchored sums*, the pool of the left blocks from a block to js - 1 and of
// the right blocks from je + 1 to a block, by a scan that adds states and never subtracts them.
// While the search runs, head[p] holds the block start of p (head[p] == p: p starts a block),
// a block's own state stays at its start and its anchored sum is stored at its end: a singleton
// block's own state is recomputed by init_of (it is its singleton state), and restored after.

// Scratch of the bridge search: one state and one int per thread, and the level flags.
template <typename S>
struct SrBridgeScratch {
  S* st;
  int* in;
  int* levels;
};

// own state of the block starting at a (while anchored sums are stored at block ends)
template <class F, class AccArr, class IntArr, class Init>
SR_DEV typename F::State sr_bridge_own(AccArr acc, IntArr link, Init init_of, int a) {
  return link[a] > a ? acc[a] : init_of(a);
}

// The merged block that starts at a (a left block start, or js for J alone): its last position
// e(a), and its state in `st`.
template <class F, typename A, class AccArr, class IntArr, class Init, class SV>
SR_DEV int sr_bridge_end(AccArr acc, IntArr link, IntArr head, Init init_of, SV sv, int a, int js,
                         int je, int jhi, int n, A eps, typename F::State& st) {
  typedef typename F::State S;
  S base = acc[js];
  // the left blocks' anchored sum (positions [a, js)) and J
  if (a < js) base = F::join(acc[link[a]], base, a, js, je - js + 1, eps, sv);
  // positions q >= je stand for the candidate end "end of q's block" (je for q = je); the
  // predicate "the block after it is absorbed" holds below the answer and fails from it on
  int lo = je - 1, hi = jhi - 1;  // lo: holds (virtually); hi: fails (no block after it)
  #pragma unroll 1
  while (hi - lo > 1) {
    SR_EMU_STEP();
    const int q = (lo + hi) >> 1;
    const int b = q <= je ? je : head[q];
    const int e = q <= je ? je : link[b];
    bool absorbed = false;
    if (e + 1 < jhi) {
      const S cand = e > je ? F::join(base, acc[e], a, je + 1, e - je, eps, sv) : base;
      const int nb = e + 1;
      const int ne = link[nb];
      const S next = sr_bridge_own<F>(acc, link, init_of, nb);
      absorbed = F::val(cand, a, e - a + 1, n, eps, sv) <= F::val(next, nb, ne - nb + 1, n, eps, sv);
    }
    if (absorbed)
      lo = e;
    else
      hi = b;
  }
  const int e = hi <= je ? je : link[head[hi]];
  st = e > je ? F::join(base, acc[e], a, je + 1, e - je, eps, sv) : base;
  return e;
}

// Exclusive scan of the states of runs of blocks over the segment of `seg` threads (aligned)
// that holds thread tid, s = tid's index in it: the pool of the later threads' runs (suffix) or
// of the earlier ones' (prefix), in position order; has = 0 if there is none.  Thread k's run
// covers the positions [N(k), N(k + 1)), N(k) = sc.in[tid - s + k] for k < seg and N(seg) =
// nend: the runs tile a range, so every pool knows its operands' first positions and lengths
// (pav.cuh: relative states).  sc.in holds N (written by the caller before a barrier) and is
// not written here.  Every thread must call it.
template <class F, typename A, typename S, class SV>
SR_DEV void sr_segment_scan(SrBridgeScratch<S> sc, S& v, int& has, int tid, int s, int seg,
                            bool suffix, int nend, A eps, SV sv) {
  const int o = tid - s;
  const auto N = [&](int k) { return k >= seg ? nend : sc.in[o + k]; };
  sc.st[tid] = v;
  __syncthreads();
  #pragma unroll 1
  for (int off = 1; off < seg; off <<= 1) {
    // my partial covers runs [u0, u1), the other one [w0, w1) (after mine for the suffix)
    const int u0 = suffix ? s : sr_max(s - off + 1, 0);
    const int u1 = suffix ? sr_min(s + off, seg) : s + 1;
    const int w0 = suffix ? sr_min(s + off, seg) : sr_max(s - 2 * off + 1, 0);
    const int w1 = suffix ? sr_min(s + 2 * off, seg) : u0;
    const int nu0 = N(u0), nu1 = N(u1), nw0 = N(w0), nw1 = N(w1);
    const bool oh = nw0 < nw1;
    S ov = S();
    if (oh) ov = sc.st[suffix ? tid + off : tid - off];
    __syncthreads();
    if (oh) {
      if (nu0 < nu1)
        sc.st[tid] = suffix ? F::join(sc.st[tid], ov, nu0, nw0, nw1 - nw0, eps, sv)
                            : F::join(ov, sc.st[tid], nw0, nu0, nu1 - nu0, eps, sv);
      else
        sc.st[tid] = ov;
    }
    __syncthreads();
  }
  const int src = suffix ? tid + 1 : tid - 1;
  has = suffix ? N(s + 1) < nend : s > 0 && N(0) < N(s);
  if (has) v = sc.st[src];
  __syncthreads();
}

// The bridge search of one merge level, for every junction of the block whose sequential merge
// hit the cap.  Each junction [jlo, jhi) is shared by an aligned segment of `seg` threads, each
// with its chunk [clo, chi) of it (empty for threads without work); the segment's first thread
// (lead) ran the sequential merge: `unfinished`, [js, je] as sr_merge_junction left them.
// Thread tid is thread lt of a group of G threads whose chunks tile one row (or tile), for the
// block-start scan.  wmax bounds jlo's distance to the junction (the same for every junction of
// the block), which fixes the number of search rounds for the whole block.  Every thread of the
// block must call it.
template <class F, typename A, class AccArr, class IntArr, class Init, class SV>
SR_DEV void sr_bridge(AccArr acc, IntArr link, IntArr head, Init init_of, SV sv,
                      SrBridgeScratch<typename F::State> sc, int tid, int lt, int G, int seg,
                      int clo, int chi, bool unfinished, int js, int je, int jlo, int jhi,
                      int wmax, int n, A eps) {
  typedef typename F::State S;
  // 1. block start of every position, into head[] (a max-scan of head positions)
  int m = -1;
  #pragma unroll 1
  for (int p = clo; p < chi; ++p)
    if (head[p]) m = p;
  {
    int cur = sr_group_exclusive_max(sc.in, m, tid, lt, G);
    #pragma unroll 1
    for (int p = clo; p < chi; ++p) {
      if (head[p]) cur = p;
      head[p] = cur;
    }
  }
  // 2. the junction block, from the segment's lead (js = -1: nothing to search)
  const int s = lt & (seg - 1);
  const int o = tid - s;
  if (s == 0) {
    sc.in[o] = unfinished ? js : -1;
    sc.in[o + 1] = je;
  }
  __syncthreads();
  js = sc.in[o];
  je = sc.in[o + 1];
  __syncthreads();
  const bool act = js >= 0;
  // 3. pools of the left blocks (start < js) and right blocks (start > je) starting in my chunk
  S lsum = S(), rsum = S();
  int lh = 0, rh = 0, lfirst = 0, rfirst = 0;
  if (act)
    #pragma unroll 1
    for (int p = clo; p < chi; ++p) {
      if (head[p] != p || p == js) continue;
      const S st = sr_bridge_own<F>(acc, link, init_of, p);
      if (p < js) {
        lsum = lh ? F::join(lsum, st, lfirst, p, link[p] - p + 1, eps, sv) : st;
        if (!lh) lfirst = p;
        lh = 1;
      } else {
        rsum = rh ? F::join(rsum, st, rfirst, p, link[p] - p + 1, eps, sv) : st;
        if (!rh) rfirst = p;
        rh = 1;
      }
    }
  // 4. ... of the later chunks of the segment (left) and of the earlier ones (right).  The
  //    scans' runs: my chunk's left blocks start at the first block start at or after clo
  //    (js if none), its right blocks at the first one after je at or after clo (jhi if none)
  int nl = js, nr = jhi;
  if (act && clo < chi) {
    const int b = head[clo] == clo ? clo : link[head[clo]] + 1;  // first block start >= clo
    nl = sr_min(b, js);
    nr = clo <= je + 1 ? je + 1 : b;
  }
  sc.in[tid] = nl;
  __syncthreads();
  sr_segment_scan<F>(sc, lsum, lh, tid, s, seg, true, js, eps, sv);
  sc.in[tid] = nr;
  __syncthreads();
  sr_segment_scan<F>(sc, rsum, rh, tid, s, seg, false, jhi, eps, sv);
  // 5. anchored sums at block ends (a block end is never a block start, except a singleton's,
  //    whose own state init_of recomputes)
  if (act) {
    S run = lsum;
    int h = lh;
    #pragma unroll 1
    for (int p = chi - 1; p >= clo; --p) {
      if (head[p] != p || p >= js) continue;
      const S st = sr_bridge_own<F>(acc, link, init_of, p);
      run = h ? F::join(st, run, p, link[p] + 1, js - 1 - link[p], eps, sv) : st;
      h = 1;
      acc[link[p]] = run;
    }
    run = rsum;
    h = rh;
    #pragma unroll 1
    for (int p = clo; p < chi; ++p) {
      if (head[p] != p || p <= js) continue;
      const S st = sr_bridge_own<F>(acc, link, init_of, p);
      run = h ? F::join(run, st, je + 1, p, link[p] - p + 1, eps, sv) : st;
      h = 1;
      acc[link[p]] = run;
    }
  }
  __syncthreads();
  // 6. the merged block's start: positions p in [jlo, js] stand for the candidate "start of p's
  //    block" (js for p = js); "stays apart" holds up to the answer's block and fails after.
  //    Each round, the segment's threads probe `seg` evenly spaced positions between the last
  //    known true position lo and the first known false one hi; the probes' boundary gives the
  //    next (lo, hi).  Unknown positions shrink from w to at most ceil(w / seg) - 1 per round.
  int lo = jlo, hi = js + 1;
  int lseg = 0;
  while ((1 << lseg) < seg) ++lseg;
  int* bc = (int*)sc.st + 2 * o;  // 4 ints (2 per round parity) in the segment's own slots
  int round = 0;
  // After the rounds, one more pass in which the lead pools the merged block (7.): one call site
  // of the inner search keeps the kernel's registers within its launch bounds.
  for (int wb = wmax;; wb = ((wb + seg - 1) >> lseg) - 1, ++round) {
    const bool last = wb <= 0;
    int* b = bc + 2 * (round & 1);
    if (!last && s == 0) {
      b[0] = lo;
      b[1] = hi;
    }
    const int w = act ? hi - lo - 1 : 0;
    int res = 0, ca = 0, ce = 0;
    if (last ? s == 0 && act : w > 0) {
      // a probe at lo + 1 + floor(s * w / seg) (without a 64-bit product: seg = 2^lseg), or
      // the answer
      const int p = last ? lo : lo + 1 + s * (w >> lseg) + ((s * (w & (seg - 1))) >> lseg);
      ca = p >= js ? js : head[p];
      if (!last && ca <= jlo) {
        res = 1;  // nothing left of it in this range
      } else {
        S st;
        const int e =
            sr_bridge_end<F, A>(acc, link, head, init_of, sv, ca, js, je, jhi, n, eps, st);
        if (last) {  // 7. the lead pools the merged block
          acc[ca] = st;
          link[ca] = e;
          link[e] = ca;
          sc.in[o] = ca;
          sc.in[o + 1] = e;
        } else {
          SR_EMU_STEP();
          const int pa = head[ca - 1];
          const S left = sr_bridge_own<F>(acc, link, init_of, pa);
          res = F::val(left, pa, ca - pa, n, eps, sv) > F::val(st, ca, e - ca + 1, n, eps, sv)
                    ? 1
                    : 2;
        }
      }
      ce = ca == js ? js : link[ca];
    }
    if (last) break;
    sc.in[tid] = res;
    __syncthreads();
    if (res == 1 && (s == seg - 1 || sc.in[tid + 1] != 1)) b[0] = ce;
    if (res == 2 && (s == 0 || sc.in[tid - 1] != 2)) b[1] = ca;
    __syncthreads();
    lo = b[0];
    hi = b[1];
  }
  __syncthreads();
  // 8. head flags back; singleton states outside the merged block back
  const int as = act ? sc.in[o] : 0;
  const int es = act ? sc.in[o + 1] : -1;
  #pragma unroll 1
  for (int p = clo; p < chi; ++p) {
    const bool h = head[p] == p && !(p > as && p <= es);
    if (h && act && p != as && link[p] == p) acc[p] = init_of(p);
    head[p] = h;
  }
}

// log2(G) levels of junction merges over the chunks [base + t*c, ...) of one group, bounded by
// `end`; a junction pools at most `cap` blocks one by one, then the bridge search finishes it.
// init_of(j): the singleton state of position j.  Every thread of the block must call it; its
// first barrier separates the callers' chunk PAVs from the merges.
template <class F, typename A, class AccArr, class IntArr, class Init, class SV>
SR_DEV void sr_group_merges(AccArr acc, IntArr link, IntArr head, Init init_of, SV sv,
                            SrBridgeScratch<typename F::State> sc, int base, int end, int c,
                            int tid, int lt, int G, bool work, int n, A eps, int cap) {
  if (tid < SR_LEVEL_FLAGS) sc.levels[tid] = 0;
  __syncthreads();  // after the chunk PAVs
  int level = 0;
  for (int half = 1; half < G; half <<= 1, ++level) {
    const int seg = 2 * half;
    const int jlo = sr_min(base + (lt & ~(seg - 1)) * c, end);
    const int mid = sr_min(jlo + half * c, end);
    const int jhi = sr_min(jlo + seg * c, end);
    bool unfinished = false;
    int js = -1, je = -1;
    if (work && (lt & (seg - 1)) == 0 && mid > jlo && mid < jhi) {
      unfinished =
          sr_merge_junction<F, A>(sv, acc, link, head, jlo, mid, jhi, n, eps, cap, js, je);
      if (unfinished) atomicOr(&sc.levels[level], 1);
    }
    __syncthreads();
    if (sc.levels[level]) {  // the same for every thread of the block
      const int clo = work ? sr_min(base + lt * c, end) : 0;
      const int chi = work ? sr_min(clo + c, end) : 0;
      sr_bridge<F, A>(acc, link, head, init_of, sv, sc, tid, lt, G, seg, clo, chi, unfinished, js,
                      je, jlo, jhi, half * c, n, eps);
      __syncthreads();
    }
    SR_EMU_LEVEL();
  }
}

// Backward: contribution of sorted position j (block start a) to the block sums (u, w).
// rank/l2, project/l2: g'_j; rank/kl: g'_j r_j; project/kl: (g'_j r_j, r_j); sort/l2: g_j;
// sort/kl: (g_j, exp(s_j - s_a)).
template <typename T, typename A, int OP, int REG>
SR_DEV void sr_contrib(const T* gr, const int* pr, const T* ar, int j, int a, int sign, A& u,
                       A& w) {
  if (OP != OP_SORT) {
    const int p = pr[j];
    u = REG == REG_L2 ? A(gr[p]) : A(gr[p]) * A(ar[p]);
    w = (OP == OP_PROJECT && REG == REG_KL) ? A(ar[p]) : A(0);
  } else {
    u = A(gr[j]);
    w = REG == REG_L2 ? A(0) : sr_exp(A(T(sign) * ar[pr[j]]) - A(T(sign) * ar[pr[a]]));
  }
}

// Backward: gradient at sorted position j from its block's totals (su, sw); sw = count except
// for sort/kl, where it is sum_B exp(s - s_a), and project/kl, where it is T_B = sum_B r.
// Rank gradients (~1/eps) stay finite for every eps > 0, as on the CPU (softrank/csrc/backward.h,
// softrank_rank_gradient): a plain product outside the dtype's range [-M, M] is recomputed with
// the scale sign/eps applied last (floored to sign * M where it exceeds M itself: no inf * 0)
// and saturated at +-M.  A plain product within range is returned unchanged.
template <typename T, typename A>
SR_DEV A sr_rank_gradient(A plain, A scale, A unscaled, int sign) {
  const A m = sizeof(T) == 4 ? A(3.4028234663852886e38) : A(1.7976931348623157e308);
  if (plain <= m && plain >= -m) return plain;
  const A v = (scale <= m && scale >= -m ? scale : A(sign) * m) * unscaled;
  return v > m ? m : (v < -m ? -m : v);
}

template <typename T, typename A, int OP, int REG>
SR_DEV A sr_grad_value(const T* gr, const int* pr, const int* br, const T* ar, int j, int a, A su,
                       A sw, int n, A eps, int sign) {
  const int p = pr[j];
  if (OP != OP_SORT && REG == REG_L2) {
    const A scale = A(sign) / eps;
    const A d = A(gr[p]) - su / sw;
    return sr_rank_gradient<T, A>(scale * d, scale, d, sign);
  }
  if (OP != OP_SORT) {
    // a singleton's output is its constant target: exactly 0 (g - g r / r may round)
    if (a == j && (j + 1 == n || br[j + 1] == j + 1)) return A(0);
    // rank/kl: R_B in closed form from the count; project/kl: sw is T_B already
    const A rb = OP == OP_RANK ? sw * (A(n - a) - (sw - A(1)) * A(0.5)) : sw;
    const A scale = A(sign) / eps;
    const A r = A(ar[p]);
    const A d = A(gr[p]) - su / rb;
    return sr_rank_gradient<T, A>(scale * r * d, scale, r * d, sign);
  }
  if (OP == OP_SORT && REG == REG_L2) return su / sw;
  return sr_exp(A(T(sign) * ar[p]) - A(T(sign) * ar[pr[a]])) / sw * su;
}

// Backward: first pass over a chunk, sums of the segment open at its end (+ "saw a head").
template <typename T, typename A, int OP, int REG>
SR_DEV void sr_chunk_tail(const T* gr, const int* pr, const int* br, const T* ar, int lo, int hi,
                          int sign, A& ru, A& rw, int& f) {
  ru = A(0);
  rw = A(0);
  f = 0;
  for (int j = lo; j < hi; ++j) {
    const int a = br[j];
    if (a == j) {
      ru = A(0);
      rw = A(0);
      f = 1;
    }
    A u, w;
    sr_contrib<T, A, OP, REG>(gr, pr, ar, j, a, sign, u, w);
    ru += u;
    rw += w;
  }
}

// Backward: second pass over a chunk starting with the carried sums; totals at block ends.
template <typename T, typename A, int OP, int REG>
SR_DEV void sr_chunk_totals(const T* gr, const int* pr, const int* br, const T* ar, int lo, int hi,
                            int n, int sign, A ru, A rw, A* tot_u, A* tot_w) {
  for (int j = lo; j < hi; ++j) {
    const int a = br[j];
    if (a == j) {
      ru = A(0);
      rw = A(0);
    }
    A u, w;
    sr_contrib<T, A, OP, REG>(gr, pr, ar, j, a, sign, u, w);
    ru += u;
    rw += w;
    if (j + 1 == n || br[j + 1] == j + 1) {  // last position of its block
      tot_u[a] = ru;
      tot_w[a] = (OP != OP_RANK && REG == REG_KL) ? rw : A(j - a + 1);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// smem family

// At most 512 threads per block (tuning.FORWARD_MAX_THREADS): the bridge search inlined into
// the merge levels (and the project modes' two-double PAV state) does not fit the 64-register
// cap of 1024 threads without spills, and the explicit minimum of one block per SM lets ptxas
// use the registers that 512 allow (with the bound alone it still chose 64 and spilled).
template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(512, 1)
softrank_forward(const T* SR_RESTRICT x, const T* SR_RESTRICT target, T* SR_RESTRICT out,
                 int* SR_RESTRICT perm, int* SR_RESTRICT blocks, int n_rows, int n, int P,
                 int log2G, double eps_d, const double* SR_RESTRICT eps_rows, int target_stride,
                 int sign, int sort_alg, int merge_cap) {
  typedef Pav<OP, REG, A> F;
  typedef typename F::State S;
  const int bt = blockDim.x;
  const int R = bt >> log2G;
  const long long row0 = (long long)blockIdx.x * R;
  if (row0 >= n_rows) return;  // uniform over the block (CuPy raises a zero grid to 1)
  const int G = 1 << log2G;
  const int tid = threadIdx.x;
  const int grp = tid >> log2G;
  const int lt = tid & (G - 1);
  const long long row = row0 + grp;
  const bool active = row < n_rows;
  const int nr = (int)sr_min<long long>(R, n_rows - row0);
  const A eps = A(active ? sr_row_eps(eps_rows, eps_d, row) : eps_d);

  SR_DYN_SMEM(smem);
  A* scan_u = (A*)smem;
  A* scan_w = scan_u + bt;
  int* scan_f = (int*)(scan_w + bt);
  int* flags = scan_f + bt;
  // the bridge search's scratch: scan_u and scan_w hold one State per thread (8 or 16 bytes)
  const SrBridgeScratch<S> sc = {(S*)scan_u, scan_f, flags + R};
  unsigned char* groups = smem + sr_header_bytes(sizeof(A), bt, R);
  const long long gbytes = sr_forward_group_bytes(sizeof(T), sizeof(S), n, P);
  const long long o_key = sr_align16(sizeof(S) * sr_padded(n));
  const long long o_idx = o_key + sr_align16(sizeof(T) * sr_padded(P));
  const long long o_link = o_idx + sr_align16(4 * sr_padded(P));
  const long long o_head = o_link + sr_align16(4 * sr_padded(n));
  unsigned char* gb = groups + grp * gbytes;
  const SrPadded<S> acc = {(S*)gb};
  const SrPadded<T> key = {(T*)(gb + o_key)};
  const SrPadded<int> idx = {(int*)(gb + o_idx)};
  const SrPadded<int> link = {(int*)(gb + o_link)};
  const SrPadded<int> head = {(int*)(gb + o_head)};

  // ---- load (coalesced over the block's rows) and NaN/inf detection
  if (tid < R) flags[tid] = 0;
  __syncthreads();
  {
    const int total = nr * n;
    const T* xb = x + row0 * (long long)n;
    for (int i = tid; i < total; i += bt) {
      const int r = i / n;
      const int k = i - r * n;
      unsigned char* gr = groups + r * gbytes;
      const T v = T(sign) * xb[i];
      ((T*)(gr + o_key))[sr_pad(k)] = v;
      ((int*)(gr + o_idx))[sr_pad(k)] = k;
      if (!sr_isfinite(v)) atomicOr(&flags[r], 1);
    }
    if (active)
      for (int k = n + lt; k < P; k += G) {
        key[k] = T(0);
        idx[k] = k;
      }
  }
  __syncthreads();
  const bool work = active && flags[grp] == 0;

  const int c = (n + G - 1) >> log2G;
  const int lo = sr_min(lt * c, n);
  const int hi = sr_min(lo + c, n);
  if (sort_alg == SR_SORT_MERGE) {
    // ---- merge sort of (key, idx), with the accumulator and link arrays (dead until the PAV)
    // as the second buffer: sizeof(S) >= sizeof(T) bytes and 4 bytes per position
    const SrPadded<T> key2 = {(T*)gb};
    const SrPadded<int> idx2 = {(int*)(gb + o_link)};
    sr_group_merge_sort<T>(key, idx, key2, idx2, n, c, lo, hi, lt, log2G, work);
  } else {
  // ---- bitonic sort of (key, idx) over P = next_pow2(n) slots
  for (int k = 2; k <= P; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      if (work) {
        for (int q = lt; q < (P >> 1); q += G) {  // pair q: i has bit j clear, l = i | j
          const int i = ((q & ~(j - 1)) << 1) | (q & (j - 1));
          const int l = i | j;
          const T ki = key[i], kl = key[l];
          const int ii = idx[i], il = idx[l];
          const bool up = (i & k) == 0;
          const bool swap = up ? sr_before(kl, il, ki, ii, n) : sr_before(ki, ii, kl, il, n);
          if (swap) {
            key[i] = kl;
            key[l] = ki;
            idx[i] = il;
            idx[l] = ii;
          }
        }
      }
      __syncthreads();
    }
  }
  }

  // ---- chunk PAV, then junction merges
  // the project modes' target, sorted decreasingly: t_j is at sorted position j
  const T* tr = F::HAS_TARGET && active ? target + row * (long long)target_stride : target;
  // the row's solve (pav.cuh, sr_row_kind): from its extremes, now at positions 0 and n - 1
  const SrSolve sv = sr_solve_of<OP, REG>(work ? double(key[0]) : 0.0,
                                          work ? double(key[n - 1]) : 0.0, n, double(eps));
  const A seps = A(sv.eps);
  const auto sval = [&](int j) { return A(key[j]) * A(sv.in_scale); };
  const auto init_of = [&](int j) {
    return F::init(sval(j), F::HAS_TARGET ? A(tr[j]) : A(0), seps);
  };
  const bool pav = work && !sv.hard;
  if (pav) {
    sr_chunk_pav<F, A>(init_of, sval, acc, link, head, lo, hi, n, seps);
  } else if (work) {  // the hard sort: every element its own block
    for (int j = lo; j < hi; ++j) {
      acc[j] = init_of(j);
      link[j] = j;
      head[j] = 1;
    }
  }
  sr_group_merges<F, A>(acc, link, head, init_of, sval, sc, 0, n, c, tid, lt, G, pav, n, seps,
                        merge_cap);

  // ---- expansion: block start of every position (max-scan of heads), outputs
  int m = -1;
  if (work)
    for (int j = lo; j < hi; ++j)
      if (head[j]) m = j;
  const int carry = sr_group_exclusive_max(scan_f, m, tid, lt, G);
  // the first element of the block open at my chunk's start (rank and project: relative states),
  // read before its owner overwrites it with its output
  A sa = F::RELATIVE && work && carry >= 0 ? sval(carry) : A(0);
  if (F::RELATIVE) __syncthreads();
  if (work) {
    int cur = carry;
    for (int j = lo; j < hi; ++j) {
      const A sj = sval(j);
      if (head[j]) {
        cur = j;
        sa = sj;
      }
      const int a = cur;
      const int cnt = link[a] - a + 1;
      key[j] = T(F::output(sj, acc[a], j, a, cnt, n, seps, sign, sa) *
                 A(sv.out_scale));  // only we read key[j] (and key[carry] before the barrier)
      head[j] = a;
    }
  }
  __syncthreads();
  // soft_rank and project: un-permute in shared memory (into the dead accumulator array,
  // unpadded) for a coalesced store
  if (OP != OP_SORT) {
    if (work) {
      T* buf = (T*)gb;
      for (int j = lo; j < hi; ++j) buf[idx[j]] = key[j];
    }
    __syncthreads();
  }
  {
    const int total = nr * n;
    const long long base = row0 * (long long)n;
    for (int i = tid; i < total; i += bt) {
      const int r = i / n;
      const int k = i - r * n;
      unsigned char* gr = groups + r * gbytes;
      if (flags[r]) {
        out[base + i] = sr_nan<T>();
        perm[base + i] = k;
        blocks[base + i] = k == 0 ? -1 : 0;  // as the CPU back end
      } else {
        out[base + i] = OP != OP_SORT ? ((T*)gr)[k] : ((T*)(gr + o_key))[sr_pad(k)];
        perm[base + i] = ((int*)(gr + o_idx))[sr_pad(k)];
        blocks[base + i] = ((int*)(gr + o_head))[sr_pad(k)];
      }
    }
  }
}

// At most 512 threads per block (tuning.BACKWARD_MAX_THREADS): with 1024 the 64-register cap
// makes some instantiations spill.
template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(512)
softrank_backward(const T* SR_RESTRICT g, const int* SR_RESTRICT perm,
                  const int* SR_RESTRICT blocks, const T* SR_RESTRICT aux, T* SR_RESTRICT grad,
                  int n_rows, int n, int log2G, double eps_d,
                  const double* SR_RESTRICT eps_rows, int sign) {
  const int bt = blockDim.x;
  const int R = bt >> log2G;
  const long long row0 = (long long)blockIdx.x * R;
  if (row0 >= n_rows) return;
  const int G = 1 << log2G;
  const int tid = threadIdx.x;
  const int grp = tid >> log2G;
  const int lt = tid & (G - 1);
  const bool active = row0 + grp < n_rows;
  const int nr = (int)sr_min<long long>(R, n_rows - row0);
  const A eps = A(active ? sr_row_eps(eps_rows, eps_d, row0 + grp) : eps_d);

  SR_DYN_SMEM(smem);
  A* scan_u = (A*)smem;
  A* scan_w = scan_u + bt;
  int* scan_f = (int*)(scan_w + bt);
  unsigned char* groups = smem + sr_header_bytes(sizeof(A), bt, R);
  const long long gbytes = sr_backward_group_bytes(sizeof(T), sizeof(A), n);
  const long long o_w = sr_align16((long long)sizeof(A) * n);
  const long long o_b = 2 * o_w;
  const long long o_p = o_b + sr_align16(4LL * n);
  const long long o_g = o_p + sr_align16(4LL * n);
  const long long o_a = o_g + sr_align16((long long)sizeof(T) * n);
  unsigned char* gb = groups + grp * gbytes;
  A* tot_u = (A*)gb;
  A* tot_w = (A*)(gb + o_w);
  const int* br = (const int*)(gb + o_b);
  const int* pr = (const int*)(gb + o_p);
  T* gs = (T*)(gb + o_g);  // g, then the gradient (un-permuted in place)
  const T* as = (const T*)(gb + o_a);

  // ---- stage blocks, perm, g (and aux for KL) of the block's rows, coalesced
  const long long base = row0 * (long long)n;
  const int total = nr * n;
  for (int i = tid; i < total; i += bt) {
    const int r = i / n;
    const int k = i - r * n;
    unsigned char* gr = groups + r * gbytes;
    ((int*)(gr + o_b))[k] = blocks[base + i];
    ((int*)(gr + o_p))[k] = perm[base + i];
    ((T*)(gr + o_g))[k] = g[base + i];
    if (REG == REG_KL) ((T*)(gr + o_a))[k] = aux[base + i];
  }
  __syncthreads();
  const bool work = active && br[0] >= 0;  // blocks[0] = -1 marks a NaN row

  const int c = (n + G - 1) >> log2G;
  const int lo = sr_min(lt * c, n);
  const int hi = sr_min(lo + c, n);
  A ru = A(0), rw = A(0);
  int f = 0;
  if (work) sr_chunk_tail<T, A, OP, REG>(gs, pr, br, as, lo, hi, sign, ru, rw, f);
  sr_group_exclusive_segsum<A>(scan_u, scan_w, scan_f, ru, rw, f, tid, lt, G);
  if (work) sr_chunk_totals<T, A, OP, REG>(gs, pr, br, as, lo, hi, n, sign, ru, rw, tot_u, tot_w);
  __syncthreads();
  if (work) {
    // position pr[j] is read (rank) and written by this thread only; sort reads no g here
    for (int j = lo; j < hi; ++j) {
      const int a = br[j];
      const T v = T(sr_grad_value<T, A, OP, REG>(gs, pr, br, as, j, a, tot_u[a], tot_w[a], n, eps,
                                                 sign));
      gs[pr[j]] = v;
    }
  }
  __syncthreads();
  for (int i = tid; i < total; i += bt) {
    const int r = i / n;
    const int k = i - r * n;
    unsigned char* gr = groups + r * gbytes;
    grad[base + i] = ((int*)(gr + o_b))[0] < 0 ? sr_nan<T>() : ((T*)(gr + o_g))[k];
  }
}

// ---------------------------------------------------------------------------------------------
// tiled family: grid = rows * tiles blocks, block b handles tile b % tiles of row b / tiles,
// i.e. sorted positions [t * tile, min(n, (t + 1) * tile)); blockDim = G, chunks of c positions.

#define SR_TILE_PROLOGUE                                                        \
  const long long b_ = blockIdx.x;                                              \
  const long long row = b_ / tiles;                                             \
  const int t = (int)(b_ - row * tiles);                                        \
  if (row >= n_rows) return;                                                    \
  const int G = 1 << log2G;                                                     \
  const int lt = threadIdx.x;                                                   \
  const long long off = row * (long long)n;                                     \
  const int t0 = t * tile;                                                      \
  const int t1 = sr_min(n, t0 + tile);                                          \
  const int c = (t1 - t0 + G - 1) >> log2G;                                     \
  const int lo = sr_min(t0 + lt * c, t1);                                       \
  const int hi = sr_min(lo + c, t1);                                            \
  (void)lo;                                                                     \
  (void)hi

// The solve of a tiled row (pav.cuh, sr_row_kind), from its extremes at sorted positions 0 and
// n - 1 (a row with a NaN or an infinity gets some solve; its outputs are NaN regardless).
template <typename T, int OP, int REG>
SR_DEV SrSolve sr_tiled_solve(const T* xr, const int* pr, int n, int sign, double eps) {
  return sr_solve_of<OP, REG>(double(T(sign) * xr[pr[0]]), double(T(sign) * xr[pr[n - 1]]), n,
                              eps);
}

// The tile's accumulators, links and head flags live in shared memory (16 bytes per position,
// sr_tile_pav_smem_bytes) during the chunk PAV and the in-tile merges; then they are written to
// the global workspace (links hold absolute row positions) with coalesced stores.
template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(512, 1)
softrank_tile_pav(const T* SR_RESTRICT x, const T* SR_RESTRICT target, const int* SR_RESTRICT perm,
                  int* SR_RESTRICT blocks, typename Pav<OP, REG, A>::State* SR_RESTRICT ws_acc,
                  int* SR_RESTRICT ws_link, int* SR_RESTRICT ws_flags, int n_rows, int n,
                  int tile, int tiles, int log2G, double eps_d,
                  const double* SR_RESTRICT eps_rows, int target_stride, int sign,
                  int merge_cap) {
  typedef Pav<OP, REG, A> F;
  typedef typename F::State S;
  SR_TILE_PROLOGUE;
  const A eps = A(sr_row_eps(eps_rows, eps_d, row));
  SR_DYN_SMEM(smem);
  S* acc_s = (S*)smem;
  int* link_s = (int*)(smem + sr_align16((long long)sizeof(S) * tile));
  int* head_s = (int*)((unsigned char*)link_s + sr_align16(4LL * tile));
  unsigned char* scratch = (unsigned char*)head_s + sr_align16(4LL * tile);
  S* sst = (S*)scratch;
  int* sin = (int*)(scratch + sr_align16((long long)sizeof(S) * G));
  const SrBridgeScratch<S> sc = {sst, sin, sin + G};
  const int len = t1 - t0;
  const T* xr = x + off;
  const int* pr = perm + off;
  const SrSolve sv = sr_tiled_solve<T, OP, REG>(xr, pr, n, sign, double(eps));
  const A seps = A(sv.eps);
  const T* tr = F::HAS_TARGET ? target + row * (long long)target_stride + t0 : target;
  // coalesced perm (and target), gathered x; NaN/inf flags the row
  for (int k = lt; k < len; k += G) {
    const T v = T(sign) * xr[pr[t0 + k]];
    if (!sr_isfinite(v)) atomicOr(&ws_flags[row], 1);
    acc_s[k] = F::init(A(v) * A(sv.in_scale), F::HAS_TARGET ? A(tr[k]) : A(0), seps);
    if (sv.hard) {  // the hard sort: every element its own block, no PAV
      link_s[k] = t0 + k;
      head_s[k] = 1;
    }
  }
  __syncthreads();
  const SrShifted<S> acc = {acc_s, t0};
  const SrShifted<int> link = {link_s, t0};
  const SrShifted<int> head = {head_s, t0};
  if (!sv.hard) {  // uniform over the block
    const auto sval = [&](int j) { return A(T(sign) * xr[pr[j]]) * A(sv.in_scale); };
    sr_chunk_pav<F, A>([&](int j) { return acc[j]; }, sval, acc, link, head, lo, hi, n, seps);
    const T* tabs = F::HAS_TARGET ? target + row * (long long)target_stride : target;
    const auto init_of = [&](int j) {  // the singleton state of row position j, as loaded above
      return F::init(sval(j), F::HAS_TARGET ? A(tabs[j]) : A(0), seps);
    };
    sr_group_merges<F, A>(acc, link, head, init_of, sval, sc, t0, t1, c, lt, lt, G, true, n, seps,
                          merge_cap);
  }
  S* acc_g = ws_acc + off + t0;
  int* link_g = ws_link + off + t0;
  int* head_g = blocks + off + t0;
  for (int k = lt; k < len; k += G) {
    acc_g[k] = acc_s[k];
    link_g[k] = link_s[k];
    head_g[k] = head_s[k];
  }
}

// One block per junction of the level that joins ranges of `span` positions: [lo, lo + span)
// and [lo + span, lo + 2 span).  Its first thread merges the junction block by block, at most
// merge_cap times; if that does not finish it, the block's threads run the bridge search over
// the junction's range (chunks of ceil(2 span / blockDim) positions per thread).
template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(256, 1)
softrank_merge_level(const T* SR_RESTRICT x, const T* SR_RESTRICT target,
                     const int* SR_RESTRICT perm, typename Pav<OP, REG, A>::State* SR_RESTRICT ws_acc,
                     int* SR_RESTRICT ws_link, int* SR_RESTRICT blocks,
                     const int* SR_RESTRICT ws_flags, int n_rows, int n, int span,
                     int junctions_per_row, double eps_d, const double* SR_RESTRICT eps_rows,
                     int target_stride, int sign, int merge_cap) {
  typedef Pav<OP, REG, A> F;
  typedef typename F::State S;
  const long long row = blockIdx.x / junctions_per_row;
  const long long jn = blockIdx.x - row * junctions_per_row;
  if (row >= n_rows || ws_flags[row]) return;  // uniform over the block
  const long long lo = jn * 2 * (long long)span;
  const long long mid = lo + span;
  const long long hi = sr_min<long long>(lo + 2 * (long long)span, n);
  if (mid >= hi) return;
  const int bt = blockDim.x;
  const int lt = threadIdx.x;
  const long long off = row * (long long)n;
  const SrSolve sv = sr_tiled_solve<T, OP, REG>(x + off, perm + off, n, sign,
                                                sr_row_eps(eps_rows, eps_d, row));
  if (sv.hard) return;  // no merges: every element its own block (uniform over the block)
  const A eps = A(sv.eps);
  SR_DYN_SMEM(smem);
  const SrBridgeScratch<S> sc = {
      (S*)smem, (int*)(smem + sr_align16((long long)sizeof(S) * bt)),
      (int*)(smem + sr_align16((long long)sizeof(S) * bt)) + bt};
  S* acc = ws_acc + off;
  int* link = ws_link + off;
  int* head = blocks + off;
  bool unfinished = false;
  int js = -1, je = -1;
  const T* xr = x + off;
  const int* pr = perm + off;
  const auto sval = [&](int j) { return A(T(sign) * xr[pr[j]]) * A(sv.in_scale); };
  if (lt == 0) {
    unfinished = sr_merge_junction<F, A>(sval, acc, link, head, (int)lo, (int)mid, (int)hi, n,
                                         eps, merge_cap, js, je);
    sc.levels[0] = unfinished;
  }
  __syncthreads();
  if (!sc.levels[0]) return;  // uniform over the block
  const T* tr = F::HAS_TARGET ? target + row * (long long)target_stride : target;
  const auto init_of = [&](int j) {  // as softrank_tile_pav's singleton states
    return F::init(sval(j), F::HAS_TARGET ? A(tr[j]) : A(0), eps);
  };
  const int cc = (int)((hi - lo + bt - 1) / bt);
  const int clo = (int)sr_min<long long>(lo + (long long)lt * cc, hi);
  const int chi = (int)sr_min<long long>(clo + cc, hi);
  sr_bridge<F, A>(acc, link, head, init_of, sval, sc, lt, lt, bt, bt, clo, chi, unfinished, js,
                  je, (int)lo, (int)hi, span, n, eps);
}

// Last head position of every tile (-1 if none), after all merges.
SR_GLOBAL void SR_LAUNCH_BOUNDS(1024)
softrank_tile_max(const int* SR_RESTRICT blocks, int* SR_RESTRICT ws_tmax, int n_rows, int n,
                  int tile, int tiles, int log2G) {
  SR_TILE_PROLOGUE;
  SR_DYN_SMEM(smem);
  int m = -1;
  for (int k = t0 + lt; k < t1; k += G)
    if (blocks[off + k]) m = k;
  m = sr_block_max((int*)smem, m);
  if (lt == 0) ws_tmax[b_] = m;
}

template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(1024)
softrank_tile_expand(const T* SR_RESTRICT x, T* SR_RESTRICT out, int* SR_RESTRICT perm,
                     int* SR_RESTRICT blocks,
                     const typename Pav<OP, REG, A>::State* SR_RESTRICT ws_acc,
                     const int* SR_RESTRICT ws_link, const int* SR_RESTRICT ws_flags,
                     const int* SR_RESTRICT ws_tmax, int n_rows, int n, int tile, int tiles,
                     int log2G, double eps_d, const double* SR_RESTRICT eps_rows, int sign) {
  typedef Pav<OP, REG, A> F;
  typedef typename F::State S;
  SR_TILE_PROLOGUE;
  if (ws_flags[row]) {  // uniform over the block
    for (int k = t0 + lt; k < t1; k += G) {
      out[off + k] = sr_nan<T>();
      perm[off + k] = k;
      blocks[off + k] = k == 0 ? -1 : 0;  // as the CPU back end
    }
    return;
  }
  SR_DYN_SMEM(smem);
  int* scr = (int*)smem;
  const SrSolve sv = sr_tiled_solve<T, OP, REG>(x + off, perm + off, n, sign,
                                                sr_row_eps(eps_rows, eps_d, row));
  const A eps = A(sv.eps);
  int v = -1;  // last head before this tile
  for (int i = lt; i < t; i += G) v = sr_max(v, ws_tmax[row * tiles + i]);
  const int tile_carry = sr_block_max(scr, v);
  int* head = blocks + off;
  const S* acc = ws_acc + off;
  const int* link = ws_link + off;
  const int* pr = perm + off;
  int m = -1;
  for (int j = lo; j < hi; ++j)
    if (head[j]) m = j;
  int cur = sr_max(tile_carry, sr_group_exclusive_max(scr, m, lt, lt, G));
  // the first element of the open block (rank and project: relative states)
  A sa = F::RELATIVE && lo < hi && cur >= 0 ? A(T(sign) * x[off + pr[cur]]) * A(sv.in_scale) : A(0);
  for (int j = lo; j < hi; ++j) {
    const A sj = A(T(sign) * x[off + pr[j]]) * A(sv.in_scale);
    if (head[j]) {
      cur = j;
      sa = sj;
    }
    const int a = cur;
    const int cnt = link[a] - a + 1;
    out[off + (OP != OP_SORT ? pr[j] : j)] =
        T(F::output(sj, acc[a], j, a, cnt, n, eps, sign, sa) * A(sv.out_scale));
    head[j] = a;
  }
}

// Backward, tiled: (sum u, sum w, has head) of the segment open at the end of every tile.
template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(1024)
softrank_bwd_tile_agg(const T* SR_RESTRICT g, const int* SR_RESTRICT perm,
                      const int* SR_RESTRICT blocks, const T* SR_RESTRICT aux,
                      A* SR_RESTRICT ws_agg, int* SR_RESTRICT ws_aggf, int n_rows, int n,
                      int tile, int tiles, int log2G, int sign) {
  SR_TILE_PROLOGUE;
  if (blocks[off] < 0) return;  // NaN row, uniform over the block
  SR_DYN_SMEM(smem);
  A* su = (A*)smem;
  A* sw = su + G;
  int* sf = (int*)(sw + G);
  A ru, rw;
  int f;
  sr_chunk_tail<T, A, OP, REG>(g + off, perm + off, blocks + off, aux + off, lo, hi, sign, ru, rw,
                               f);
  A eu = ru, ew = rw;
  int ef = f;
  sr_group_exclusive_segsum<A>(su, sw, sf, eu, ew, ef, lt, lt, G);
  if (lt == G - 1) {  // inclusive value of the last thread = the tile's open segment
    ws_agg[2 * b_] = f ? ru : eu + ru;
    ws_agg[2 * b_ + 1] = f ? rw : ew + rw;
    ws_aggf[b_] = f | ef;
  }
}

// Backward, tiled: totals of every block at its start position (ws_tot: rows x 2n).
template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(1024)
softrank_bwd_tile_tot(const T* SR_RESTRICT g, const int* SR_RESTRICT perm,
                      const int* SR_RESTRICT blocks, const T* SR_RESTRICT aux,
                      const A* SR_RESTRICT ws_agg, const int* SR_RESTRICT ws_aggf,
                      A* SR_RESTRICT ws_tot, int n_rows, int n, int tile, int tiles, int log2G,
                      int sign) {
  SR_TILE_PROLOGUE;
  if (blocks[off] < 0) return;
  SR_DYN_SMEM(smem);
  A* su = (A*)smem;
  A* sw = su + G;
  int* sf = (int*)(sw + G);
  const long long tb = row * tiles;
  // carry into this tile: open segment of the last earlier tile with a head, plus every
  // head-less tile after it
  int v = -1;
  for (int i = lt; i < t; i += G)
    if (ws_aggf[tb + i]) v = sr_max(v, i);
  const int last = sr_block_max(sf, v);
  A cu = A(0), cw = A(0);
  for (int i = sr_max(last, 0) + lt; i < t; i += G) {
    cu += ws_agg[2 * (tb + i)];
    cw += ws_agg[2 * (tb + i) + 1];
  }
  sr_block_sum2<A>(su, sw, cu, cw);
  const T* gr = g + off;
  const int* pr = perm + off;
  const int* br = blocks + off;
  const T* ar = aux + off;
  A ru, rw;
  int f;
  sr_chunk_tail<T, A, OP, REG>(gr, pr, br, ar, lo, hi, sign, ru, rw, f);
  sr_group_exclusive_segsum<A>(su, sw, sf, ru, rw, f, lt, lt, G);
  if (!f) {
    ru += cu;
    rw += cw;
  }
  A* tot_u = ws_tot + 2 * off;
  sr_chunk_totals<T, A, OP, REG>(gr, pr, br, ar, lo, hi, n, sign, ru, rw, tot_u, tot_u + n);
}

// Backward, tiled: gradients from the block totals.
template <typename T, typename A, int OP, int REG>
SR_GLOBAL void SR_LAUNCH_BOUNDS(1024)
softrank_bwd_tile_out(const T* SR_RESTRICT g, const int* SR_RESTRICT perm,
                      const int* SR_RESTRICT blocks, const T* SR_RESTRICT aux,
                      const A* SR_RESTRICT ws_tot, T* SR_RESTRICT grad, int n_rows, int n,
                      int tile, int tiles, int log2G, double eps_d,
                      const double* SR_RESTRICT eps_rows, int sign) {
  SR_TILE_PROLOGUE;
  T* out = grad + off;
  if (blocks[off] < 0) {
    for (int k = t0 + lt; k < t1; k += G) out[k] = sr_nan<T>();
    return;
  }
  const A eps = A(sr_row_eps(eps_rows, eps_d, row));
  const T* gr = g + off;
  const int* pr = perm + off;
  const int* br = blocks + off;
  const T* ar = aux + off;
  const A* tot_u = ws_tot + 2 * off;
  const A* tot_w = tot_u + n;
  for (int j = t0 + lt; j < t1; j += G) {  // strided: coalesced reads of perm and blocks
    const int a = br[j];
    out[pr[j]] = T(sr_grad_value<T, A, OP, REG>(gr, pr, br, ar, j, a, tot_u[a], tot_w[a], n, eps,
                                                 sign));
  }
}

#undef SR_TILE_PROLOGUE

}  // namespace softrank
#endif  // SOFTRANK_KERNELS_CU
