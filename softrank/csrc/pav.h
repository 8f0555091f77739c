/* pav.h: pool adjacent violators on one sorted row, in the four modes, and the expansion of
   its blocks into outputs.

   What is solved (Blondel et al. 2020, arXiv:2002.08871; notation of docs/CONTRACT.md): with
   z = sign * x sorted decreasingly into s and rho = (n, n-1, ..., 1), the *decreasing* isotonic
   problem

       l2:  v = argmin_{v_1 >= ... >= v_n}  1/2 ||v - y||^2,                  block value mean_B(y)
       kl:  v = argmin_{v_1 >= ... >= v_n}  sum_i exp(y_i - v_i) + exp(w_i) v_i,
                                                      block value logsumexp(y_B) - logsumexp(w_B)

   with y = s/eps - rho (rank/l2), (y, w) = (s/eps, log rho) (rank/kl), y = rho/eps - s
   (sort/l2) and (y, w) = (rho/eps, s) (sort/kl). Adjacent blocks are pooled while
   value(previous) <= value(current).

   Deviations from the textbook algorithm, and why:
   * Block values are kept in units of x (the rank problems are multiplied by eps), and the rho
     sums of a block have closed forms, so no y/w arrays exist and x/eps never overflows.
   * A block's state is kept relative to its first (largest) element s_a (below), so a large
     common offset (values like 1e29, or 1e8 + noise) costs no precision and nothing overflows;
     pooling a kl block costs one exp, no log-add-exp.
   * rank/kl pools in the linear domain, with weights computed a stretch of the row at a time
     by the vector exp (softrank_pav_rank_kl below).
   * Every block keeps its start, and the expansion writes the start of each element's block
     (blocks), so the backward never re-detects blocks by comparing floats.
   * l2 rows whose largest magnitude exceeds HUGE (2**1000) are solved scaled by 2**-64 (exact),
     where the differences s_j - s_a would overflow.
   * Tiny strengths (any finite eps > 0 gives finite outputs; softrank_row_kind):
     - sort rows with n/eps > 2**1000, where rho/eps nears overflow (inf <= inf then pooled
       everything into inf/-inf outputs): if the row's range is below 1/(2 eps), no two
       elements can pool (proof at softrank_row_kind), and the output is the hard sort, written
       directly, exactly as PAV would (all singletons); otherwise sort/l2 is solved scaled by
       2**64 (exact: sort(x, eps) = k sort(x/k, k eps)) and sort/kl, which is not
       homogeneous, with its block values multiplied by eps (SOFTRANK_SORT_KL_EPS_UNITS:
       (n - a) - eps (s_a + log S) + eps log-geometric, all finite).
     - rank/l2 rows with values above HUGE and eps < 2**-958 are solved unscaled: eps/2**64
       would underflow (to 0 for subnormal eps: NaN ranks), and a block of such a strength
       spans at most about eps n**2, so no difference overflows.
     - rank outputs need no change: values stay in units of x (eps * rho never overflows) and
       a tied block's output is (0 - 0)/eps + mean(rho) exactly.
     The backward's side (rank gradients ~ 1/eps) is in backward.h.
   * Accumulation is in float64 for float32 and float64 rows alike.
   Callers check the row for NaN and infinities first (softrank_argsort_row). */
#ifndef SOFTRANK_PAV_H
#define SOFTRANK_PAV_H

#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <type_traits>

#include "project.h"
#include "span.h"
#include "vector_exp.h"

/* The sorted values of a float32 row in a rank or sort mode, kept as float32 and read as
   float64: every value of such a row is a float32, so each reads back as the double the solver
   would have stored (bit for bit), and they fit in the caller's output (forward.h). rank/kl's
   vector exp reads them widened (softrank_doubles_at); the projections keep float64 values. */
struct softrank_f32_values {
    const float *ptr;
    Py_ssize_t len;
    softrank_f32_values(softrank_span<float> s) : ptr(s.ptr), len(s.len) {}
    inline double operator[](Py_ssize_t i) const {
        SOFTRANK_CHECK(0 <= i && i < len, i, len);
        return (double)ptr[i];
    }
};

/* Whether S is the float64 values (softrank_span<double>), which every mode can read. */
template <typename S>
static constexpr bool softrank_double_values = std::is_same<S, softrank_span<double> >::value;

/* Where a rank output of sorted position j goes: out[perm[j]], or, for float32 values, out[j]
   of a buffer in sorted order that softrank_scatter_ranks then scatters. Float32 values live in
   the caller's output until the expansion (forward.h), which therefore cannot scatter into it
   while it reads them. */
template <typename S>
static inline Py_ssize_t softrank_rank_slot(softrank_span<int32_t> perm, Py_ssize_t j) {
    if constexpr (softrank_double_values<S>) return perm[j];
    else return j;
}

/* The modes (softrank/_contract.py's MODES; odd modes are kl). */
enum { SOFTRANK_RANK_L2 = 0, SOFTRANK_RANK_KL = 1, SOFTRANK_SORT_L2 = 2, SOFTRANK_SORT_KL = 3 };
/* sort/kl with its block values in units of eps (tiny strengths, softrank_row_kind): internal. */
enum { SOFTRANK_SORT_KL_EPS_UNITS = 4 };

static const double SOFTRANK_HUGE = 1.0715086071862673e301;   /* 2**1000 */
static const double SOFTRANK_HUGE_SCALE = 18446744073709551616.0;  /* 2**64 */

/* log(sum_{k<c} exp(-k/eps)) = log(1 - exp(-c/eps)) - log(1 - exp(-1/eps)): the part of a
   sort/kl block's value that depends only on its size c. It is memoised per thread for the
   last eps the thread asked about, because every row of a call (and usually every call of a
   training run) has the same eps. Entry c < SOFTRANK_GEOMETRIC_MEMO is filled on first use
   (NaN: not yet; a new eps costs 64 stores, not 64 logs) by the expression used for larger
   blocks, so the bits do not depend on the memo; entry 0 holds log(1 - exp(-1/eps)). */
#define SOFTRANK_GEOMETRIC_MEMO 64
static thread_local double softrank_geometric_eps = -1.0;
static thread_local double softrank_geometric_memo[SOFTRANK_GEOMETRIC_MEMO];

static inline double *softrank_geometric_memo_for(double eps) {
    double *memo = softrank_geometric_memo;
    if (eps != softrank_geometric_eps) {
        for (int c = 1; c < SOFTRANK_GEOMETRIC_MEMO; ++c) memo[c] = NAN;
        memo[0] = log(-expm1(-1.0 / eps));
        softrank_geometric_eps = eps;
    }
    return memo;
}

/* Kept out of line: only pooled blocks need it, and inlined it would grow the PAV loop that
   every element runs through. */
static __attribute__((noinline)) double softrank_log_geometric_ratio(Py_ssize_t c, double eps,
                                                                    double *memo) {
    double v;
    if (c < SOFTRANK_GEOMETRIC_MEMO) {
        v = memo[c];
        if (v == v) return v;
    }
    v = log(-expm1(-c / eps)) - memo[0];
    if (c < SOFTRANK_GEOMETRIC_MEMO) memo[c] = v;
    return v;
}

/* Block state, relative to the block's first element s_a:
     l2:      d = sum_B (s_j - s_a)
     rank/kl: S = sum_B exp((s_j - s_a)/eps), in [1, c] (softrank_pav_rank_kl keeps its sums
              against a common reference instead; the expansion sums S anew)
     sort/kl: S = sum_B exp(s_j - s_a), in [1, c]
   A single element has state 0 (l2) or 1 (kl). */
template <int MODE>
static inline double softrank_initial_state() {
    return (MODE == SOFTRANK_RANK_KL || MODE == SOFTRANK_SORT_KL
            || MODE == SOFTRANK_SORT_KL_EPS_UNITS) ? 1.0 : 0.0;
}

/* The value of block [a, a + c) of state `state`, whose first element is s_a. */
template <int MODE>
static inline double softrank_block_value(double s_a, double state, Py_ssize_t a, Py_ssize_t c,
                                          Py_ssize_t n, double eps, double *memo) {
    const double mean_rho = (n - a) - (0.5 * (c - 1));
    if constexpr (MODE == SOFTRANK_RANK_L2) {  /* eps * mean_B(s/eps - rho) */
        return (s_a + (state / c)) - (eps * mean_rho);
    } else if constexpr (MODE == SOFTRANK_RANK_KL) {  /* eps * (logsumexp(s_B/eps) - log sum rho) */
        return s_a + (eps * log(state / (c * mean_rho)));
    } else if constexpr (MODE == SOFTRANK_SORT_L2) {  /* mean_B(rho/eps - s) */
        return (mean_rho / eps) - (s_a + (state / c));
    } else if constexpr (MODE == SOFTRANK_SORT_KL_EPS_UNITS) {  /* eps times sort/kl's value */
        if (c == 1) return ((double)(n - a)) - (eps * s_a);
        return (((double)(n - a)) + (eps * softrank_log_geometric_ratio(c, eps, memo)))
               - (eps * (s_a + log(state)));
    } else {  /* logsumexp(rho_B/eps) - logsumexp(s_B) */
        if (c == 1) return (((double)(n - a)) / eps) - s_a;
        return (((((double)(n - a)) / eps) - s_a) + softrank_log_geometric_ratio(c, eps, memo))
               - log(state);
    }
}

/* State of two adjacent blocks pooled; shift = s_b - s_a <= 0 (right head minus left head). */
template <int MODE>
static inline double softrank_merged_state(double left, double right, double shift,
                                           Py_ssize_t right_count, double eps) {
    if constexpr (MODE == SOFTRANK_RANK_L2 || MODE == SOFTRANK_SORT_L2) {
        return (left + right) + (right_count * shift);
    } else if constexpr (MODE == SOFTRANK_RANK_KL) {
        return left + (right * exp(shift / eps));
    } else {
        return left + (right * exp(shift));
    }
}

/* rank/kl pools blocks by comparing value = s_ref + eps * log(W / R), W = sum_B w_j with
   w_j = exp((s_j - s_ref)/eps), in the linear domain: W_prev * R_top <= W_top * R_prev. The
   weights w are computed a stretch ("epoch") of the row at a time with the vector exp, against
   the stretch's first value s_ref, so the pooling loop does no exp and its comparisons wait on
   a multiply, not on an exp. A stretch ends where w would fall below exp(-EPOCH_SPAN): no weight
   underflows. The weights carry their arguments' rounding back in (softrank_exp_of_steps), so
   they are as precise as the exp however far from s_ref, and the expansion turns them into
   outputs directly (w_j * R / W), except for blocks pooled across stretches, whose weights are
   in two units. */
static const double SOFTRANK_EPOCH_SPAN = 64.0;

/* The first position after first whose (s_j - s_first)/eps is below -EPOCH_SPAN, or n (binary
   search: s is sorted decreasingly, so that test is monotone in j). */
template <typename S>
static inline Py_ssize_t softrank_epoch_end(S s, Py_ssize_t first, double eps) {
    Py_ssize_t lo = first + 1, hi = s.len;
    const double head = s[first];
    if ((s[hi - 1] - head) / eps >= -SOFTRANK_EPOCH_SPAN) return hi;
    while (lo < hi) {
        const Py_ssize_t mid = (lo + hi) / 2;
        if ((s[mid] - head) / eps >= -SOFTRANK_EPOCH_SPAN) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* s[lo, lo + count) as doubles for the vector exp: the float64 values themselves, or float32
   values widened into w[lo, lo + count), where the exp then runs in place. */
template <typename S>
static inline const double *softrank_doubles_at(S s, softrank_span<double> w, Py_ssize_t lo,
                                                Py_ssize_t count) {
    if constexpr (softrank_double_values<S>) {
        (void)w;
        return s.sub(lo, count).ptr;
    } else {
        for (Py_ssize_t j = lo; j < lo + count; ++j) w[j] = s[j];
        return w.sub(lo, count).ptr;
    }
}

/* w[lo, lo + count) = exp((s_j - ref)/eps) (softrank_exp_of_steps; without its rounding
   correction if 1/eps overflows). */
template <typename S>
static inline void softrank_weights_of(S s, double ref, double eps, softrank_span<double> w,
                                       Py_ssize_t lo, Py_ssize_t count) {
    const double *src = softrank_doubles_at(s, w, lo, count);
    if (isfinite(1.0 / eps)) softrank_exp_of_steps(src, ref, eps, w.sub(lo, count).ptr, count);
    else softrank_scaled_exp(src, ref, eps, 1.0, w.sub(lo, count).ptr, count);
}

/* The sum of n - k over the c positions k of a block starting at a (exact below 2**53). */
static inline double softrank_rho_sum(Py_ssize_t a, Py_ssize_t c, Py_ssize_t n) {
    return (double)((int64_t)c * (int64_t)(n - a) - ((int64_t)c * (int64_t)(c - 1)) / 2);
}

/* rank/kl's scratch in spare (2n words): the weights w (n doubles), then the blocks' epochs
   (n int32). Its block starts take the rest of spare (softrank_rank_kl_starts). */
static inline softrank_span<double> softrank_rank_kl_weights(softrank_span<uint64_t> spare,
                                                             Py_ssize_t n) {
    return softrank_span<double>((double *)spare.sub(0, n).ptr, n);
}

static inline softrank_span<int32_t> softrank_rank_kl_epochs(softrank_span<uint64_t> spare,
                                                             Py_ssize_t n) {
    return softrank_span<int32_t>((int32_t *)spare.sub(n, n).ptr, 2 * n).sub(0, n);
}

static inline softrank_span<int32_t> softrank_rank_kl_starts(softrank_span<uint64_t> spare,
                                                             Py_ssize_t n) {
    return softrank_span<int32_t>((int32_t *)spare.sub(n, n).ptr, 2 * n).sub(n, n);
}

/* PAV of rank/kl; returns the index of the top block. Per block: start, W (weight_sum, in
   units of its epoch's exp(s_ref/eps)) and its epoch's first position; R, the sum of n - k
   over the block, is softrank_rho_sum of its start and size. spare: 2n words, left holding
   the weights w and the blocks' epochs for the expansion. */
template <typename S>
static inline Py_ssize_t softrank_pav_rank_kl(S s, double eps, softrank_span<int32_t> start,
                                              softrank_span<double> weight_sum,
                                              softrank_span<uint64_t> spare) {
    const Py_ssize_t n = s.len;
    softrank_span<double> w = softrank_rank_kl_weights(spare, n);
    softrank_span<int32_t> epoch = softrank_rank_kl_epochs(spare, n);
    Py_ssize_t j = 0, top = -1;
    /* The top block lives in registers: the pooling loop waits on a multiply, not on stores
       and reloads of the block it has just pooled. So does R of the block below it (below_r),
       which a pop recomputes from the block starts. */
    double top_w = 0.0, top_r = 0.0, below_r = 0.0;
    int32_t top_start = 0, top_epoch = 0;
    while (j < n) {
        const Py_ssize_t first = j;
        const Py_ssize_t end = softrank_epoch_end(s, first, eps);
        w[first] = 1.0;
        softrank_weights_of(s, s[first], eps, w, first + 1, end - first - 1);
        Py_ssize_t floor = top + 1;  /* blocks floor.. are this epoch's; those below, older ones' */
        for (j = first; j < end; ++j) {
            const double new_w = w[j];
            const double new_r = (double)(n - j);
            /* The new element is tested against the top block while both are in registers (a
               spill and reload of the top would sit on the mispredicted branch's path). */
            if (top >= floor && top >= 0 && (top_w * new_r) <= (new_w * top_r)) {
                top_w = top_w + new_w;
                top_r = top_r + new_r;
            } else {
                if (top >= 0) {
                    start[top] = top_start;
                    weight_sum[top] = top_w;
                    epoch[top] = top_epoch;
                }
                top += 1;
                top_start = (int32_t)j;
                top_epoch = (int32_t)first;
                top_w = new_w;
                below_r = top_r;
                top_r = new_r;
                if (top > floor) continue;  /* the block below is this epoch's: tested above */
            }
            while (true) {
                if (top > floor) {
                    if (!((weight_sum[top - 1] * top_r) <= (top_w * below_r))) break;
                    top_w = weight_sum[top - 1] + top_w;
                } else if (top > 0) {
                    /* The block below is an older epoch's: in this epoch's units (>= 1; inf,
                       far apart, never pools). Pooled, it joins this epoch: its weight is then
                       bounded by the top's, so it stays finite. */
                    const double shift = exp((s[epoch[top - 1]] - s[first]) / eps);
                    if (!(((weight_sum[top - 1] * shift) * top_r) <= (top_w * below_r))) break;
                    top_w = (weight_sum[top - 1] * shift) + top_w;
                    floor -= 1;
                } else {
                    break;
                }
                top_r = below_r + top_r;
                top_start = start[top - 1];
                top -= 1;
                if (top > 0)
                    below_r = softrank_rho_sum(start[top - 1], top_start - start[top - 1], n);
            }
        }
        j = end;
    }
    start[top] = top_start;
    weight_sum[top] = top_w;
    epoch[top] = top_epoch;
    return top;
}

/* Pool adjacent violators on the sorted row s: a stack of blocks, each (start, state, value).
   Returns the index of the top block. spare: 2n words of scratch (rank/kl). */
template <int MODE, typename S>
static inline Py_ssize_t softrank_pav_blocks(S s, double eps,
                                             softrank_span<int32_t> start,
                                             softrank_span<double> state,
                                             softrank_span<double> value,
                                             softrank_span<uint64_t> spare) {
    if constexpr (MODE == SOFTRANK_RANK_KL) {
        (void)value;
        return softrank_pav_rank_kl(s, eps, start, state, spare);
    } else {
        const Py_ssize_t n = s.len;
        double *memo = (MODE == SOFTRANK_SORT_KL || MODE == SOFTRANK_SORT_KL_EPS_UNITS)
                       ? softrank_geometric_memo_for(eps) : NULL;
        const double initial = softrank_initial_state<MODE>();
        Py_ssize_t top = -1;
        /* The top block lives in registers, spilled to the stack when a new element does not
           pool into it: the test against it waits on no reload. */
        Py_ssize_t top_start = 0;
        double top_state = 0.0, top_value = 0.0;
        for (Py_ssize_t j = 0; j < n; ++j) {
            const double new_value = softrank_block_value<MODE>(s[j], initial, j, 1, n, eps, memo);
            if (top < 0 || !(top_value <= new_value)) {
                if (top >= 0) {
                    start[top] = (int32_t)top_start;
                    state[top] = top_state;
                    value[top] = top_value;
                }
                top += 1;
                top_start = j;
                top_state = initial;
                top_value = new_value;
                continue;
            }
            Py_ssize_t a = top_start;
            top_state = softrank_merged_state<MODE>(top_state, initial, s[j] - s[a], 1, eps);
            top_value = softrank_block_value<MODE>(s[a], top_state, a, (j + 1) - a, n, eps, memo);
            while (top > 0 && value[top - 1] <= top_value) {
                a = start[top - 1];
                const Py_ssize_t right = top_start;
                top_state = softrank_merged_state<MODE>(state[top - 1], top_state,
                                                        s[right] - s[a], (j + 1) - right, eps);
                top -= 1;
                top_start = a;
                top_value = softrank_block_value<MODE>(s[a], top_state, a, (j + 1) - a, n, eps,
                                                       memo);
            }
        }
        if (top >= 0) {
            start[top] = (int32_t)top_start;
            state[top] = top_state;
            value[top] = top_value;
        }
        return top;
    }
}

/* The sum of w in 8 interleaved partial sums, added pairwise at the end: a fixed order (the
   same bits on every CPU), and rounding errors that grow with len / 8. */
static inline double softrank_sum_of(softrank_span<double> w) {
    double lane[8];
    for (int j = 0; j < 8; ++j) lane[j] = 0.0;
    for (Py_ssize_t j = 0; j < w.len; ++j) lane[j & 7] += w[j];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* Expand blocks b_lo..b_hi-1 of the PAV solution (top: the index of the last block) into
   outputs, by the closed forms of docs/CONTRACT.md, and write each element's block start.
   spare: what softrank_pav_blocks left there (rank/kl: its weights, then the blocks' epochs).
   rank/kl reads no block state: its expansion may write over them (forward.h). */
template <int MODE, typename T, typename S>
static inline void softrank_expand_blocks(S s, double eps, double sign,
                                          softrank_span<int32_t> perm, softrank_span<T> out,
                                          softrank_span<int32_t> blocks,
                                          softrank_span<int32_t> start,
                                          softrank_span<double> state,
                                          softrank_span<uint64_t> spare, Py_ssize_t top,
                                          Py_ssize_t b_lo, Py_ssize_t b_hi) {
    const Py_ssize_t n = s.len;
    double *memo = (MODE == SOFTRANK_SORT_KL || MODE == SOFTRANK_SORT_KL_EPS_UNITS)
                   ? softrank_geometric_memo_for(eps) : NULL;
    for (Py_ssize_t b = b_lo; b < b_hi; ++b) {
        const Py_ssize_t a = start[b];
        const Py_ssize_t e = b < top ? start[b + 1] : n;
        const Py_ssize_t c = e - a;
        double st = MODE == SOFTRANK_RANK_KL ? 0.0 : state[b];
        const double s_a = s[a];
        const double mean_rho = (n - a) - (0.5 * (c - 1));
        blocks[a] = (int32_t)a;
        if (c == 1) {
            /* A singleton's state is exactly 0 (l2) or 1 (kl): the closed forms below reduce to
               these, bit for bit, without their divisions (sort rows of random data are mostly
               singletons). */
            if constexpr (MODE == SOFTRANK_RANK_L2 || MODE == SOFTRANK_RANK_KL)
                out[softrank_rank_slot<S>(perm, a)] = (T)mean_rho;
            else
                out[a] = (T)((sign * s_a) + 0.0);
            continue;
        }
        if constexpr (MODE == SOFTRANK_RANK_L2) {
            for (Py_ssize_t j = a; j < e; ++j) {
                out[softrank_rank_slot<S>(perm, j)] =
                    (T)((((s[j] - s_a) - (st / c)) / eps) + mean_rho);
                blocks[j] = (int32_t)a;
            }
        } else if constexpr (MODE == SOFTRANK_RANK_KL) {
            const softrank_span<double> w = softrank_rank_kl_weights(spare, n);
            if (softrank_rank_kl_epochs(spare, n)[b] <= a) {
                /* The block lies in one epoch: PAV's weights, precise against the epoch's first
                   value, give the softmax without an exp. */
                const double scale = (c * mean_rho) / softrank_sum_of(w.sub(a, c));
                for (Py_ssize_t j = a; j < e; ++j) {
                    out[softrank_rank_slot<S>(perm, j)] = (T)(w[j] * scale);
                    blocks[j] = (int32_t)a;
                }
            } else {
                /* A block pooled across epochs (its weights are in two units): weights against
                   its head (exp(0) = 1 for it), summed anew over its own weights' places. */
                st = 1.0 + softrank_exp_sum(softrank_doubles_at(s, w, a + 1, c - 1), s_a, eps,
                                            w.sub(a + 1, c - 1).ptr, c - 1);
                const double scale = (c * mean_rho) / st;
                out[softrank_rank_slot<S>(perm, a)] = (T)scale;
                for (Py_ssize_t j = a + 1; j < e; ++j) {
                    out[softrank_rank_slot<S>(perm, j)] = (T)(w[j] * scale);
                    blocks[j] = (int32_t)a;
                }
            }
        } else if constexpr (MODE == SOFTRANK_SORT_L2) {
            for (Py_ssize_t j = a; j < e; ++j) {
                /* + 0.0 turns -0.0 into +0.0 (hard sorts print as torch.sort's do) */
                out[j] = (T)((sign * ((s_a + (st / c)) + (((a - j) + (0.5 * (c - 1))) / eps)))
                             + 0.0);
                blocks[j] = (int32_t)a;
            }
        } else if constexpr (MODE == SOFTRANK_SORT_KL_EPS_UNITS) {
            /* (j - a)/eps alone may overflow where the output does not */
            st = ((s_a + log(st)) - softrank_log_geometric_ratio(c, eps, memo)) * eps;
            for (Py_ssize_t j = a; j < e; ++j) {
                out[j] = (T)((sign * ((st - ((double)(j - a))) / eps)) + 0.0);
                blocks[j] = (int32_t)a;
            }
        } else {
            st = (s_a + log(st)) - softrank_log_geometric_ratio(c, eps, memo);
            for (Py_ssize_t j = a; j < e; ++j) {
                out[j] = (T)((sign * (st - (((double)(j - a)) / eps))) + 0.0);
                blocks[j] = (int32_t)a;
            }
        }
    }
}

/* PAV and the expansion of blocks b_lo..b_hi-1, each dispatched to the mode's (the split-row
   driver runs them apart: PAV on one thread, the expansion on all). */
template <typename S>
static inline Py_ssize_t softrank_pav(int mode, S s, double eps,
                                      softrank_span<int32_t> start, softrank_span<double> state,
                                      softrank_span<double> value, softrank_span<uint64_t> spare) {
    switch (mode) {
    case SOFTRANK_RANK_L2: return softrank_pav_blocks<SOFTRANK_RANK_L2>(s, eps, start, state, value, spare);
    case SOFTRANK_RANK_KL: return softrank_pav_blocks<SOFTRANK_RANK_KL>(s, eps, start, state, value, spare);
    case SOFTRANK_SORT_L2: return softrank_pav_blocks<SOFTRANK_SORT_L2>(s, eps, start, state, value, spare);
    default: return softrank_pav_blocks<SOFTRANK_SORT_KL>(s, eps, start, state, value, spare);
    }
}

template <typename T, typename S>
static inline void softrank_expand(int mode, S s, double eps, double sign,
                                   softrank_span<int32_t> perm, softrank_span<T> out,
                                   softrank_span<int32_t> blocks, softrank_span<int32_t> start,
                                   softrank_span<double> state,
                                   softrank_span<uint64_t> spare, Py_ssize_t top,
                                   Py_ssize_t b_lo, Py_ssize_t b_hi) {
#define SOFTRANK_EXPAND(M) softrank_expand_blocks<M, T, S>(s, eps, sign, perm, out, blocks, start, \
                                                        state, spare, top, b_lo, b_hi)
    switch (mode) {
    case SOFTRANK_RANK_L2: SOFTRANK_EXPAND(SOFTRANK_RANK_L2); break;
    case SOFTRANK_RANK_KL: SOFTRANK_EXPAND(SOFTRANK_RANK_KL); break;
    case SOFTRANK_SORT_L2: SOFTRANK_EXPAND(SOFTRANK_SORT_L2); break;
    default: SOFTRANK_EXPAND(SOFTRANK_SORT_KL); break;
    }
#undef SOFTRANK_EXPAND
}

/* PAV and expansion of one row, specialised for the mode (the whole-row forward dispatches once
   per row to this, so each mode's loops are compiled together). */
template <int MODE, typename T, typename S>
static inline __attribute__((always_inline)) void softrank_pav_row(
        S s, double eps, double sign, softrank_span<int32_t> perm,
        softrank_span<T> out, softrank_span<int32_t> blocks, softrank_span<int32_t> start,
        softrank_span<double> state, softrank_span<double> value, softrank_span<uint64_t> spare) {
    const Py_ssize_t top = softrank_pav_blocks<MODE>(s, eps, start, state, value, spare);
    softrank_expand_blocks<MODE, T, S>(s, eps, sign, perm, out, blocks, start, state, spare, top,
                                       0, top + 1);
}

/* How a finite row sorted into s is solved (softrank_row_kind). */
enum {
    SOFTRANK_SOLVE_PLAIN = 0,
    SOFTRANK_SOLVE_SCALED = 1,
    SOFTRANK_SOLVE_HARD_SORT = 2,
    SOFTRANK_SOLVE_SORT_KL_EPS_UNITS = 3,
};

/* Below this strength eps / 2**64 is subnormal (2**-958): rank/l2 rows are not scaled. */
static const double SOFTRANK_TINY_RANK_EPS = 4.1045368012983762e-289;

/* PLAIN, or SCALED: an l2 row with values near the float64 limit, where the differences
   s_j - s_a overflow, or a sort/l2 row whose rho/eps would (solved scaled by a power of two),
   or HARD_SORT: a sort row whose strength is so small that rho/eps nears overflow and no two
   elements can pool (its output is the hard sort, exactly). Normal strengths
   (n / eps <= 2**1000, and eps >= 2**-958 for rank/l2) are classified as they always were. */
template <typename S>
static inline int softrank_row_kind(int mode, S s, double eps) {
    const Py_ssize_t n = s.len;
    if ((mode == SOFTRANK_SORT_L2 || mode == SOFTRANK_SORT_KL)
        && !(((double)n) / eps <= SOFTRANK_HUGE)) {
        /* Adjacent blocks pool only if the mean of the first exceeds the mean of the second by
           at least (c1 + c2) / (2 eps) >= 1/eps (the singleton values rho_j/eps - s_j of both
           sort problems decrease strictly while s_j - s_{j+1} < 1/eps), and no two means
           differ by more than s_0 - s_{n-1}; halved, so that the range cannot overflow, and
           against 1/4 instead of 1/2, far above the rounding of the test. */
        if (((0.5 * s[0]) - (0.5 * s[n - 1])) * eps < 0.25) return SOFTRANK_SOLVE_HARD_SORT;
        /* Otherwise 1/eps <= 4 max|s|: scaled by 2**-64, n/eps stays below 2**1000; sort/kl
           (not homogeneous) is solved with its values in units of eps. */
        return mode == SOFTRANK_SORT_L2 ? SOFTRANK_SOLVE_SCALED : SOFTRANK_SOLVE_SORT_KL_EPS_UNITS;
    }
    const double low = -s[n - 1], high = s[0];
    if ((mode == SOFTRANK_RANK_L2 || mode == SOFTRANK_SORT_L2)
        && (high > low ? high : low) > SOFTRANK_HUGE) {
        /* A rank/l2 block spans at most about eps * n**2 in s (y = s/eps - rho rises by at most
           1 a step, so a pooled drop is at most 2c): for tiny eps nothing overflows unscaled,
           and eps / 2**64 would lose its bits or vanish. */
        if (mode == SOFTRANK_RANK_L2 && eps < SOFTRANK_TINY_RANK_EPS) return SOFTRANK_SOLVE_PLAIN;
        return SOFTRANK_SOLVE_SCALED;
    }
    return SOFTRANK_SOLVE_PLAIN;
}

/* The project modes (project.h), solved like rank/l2 and rank/kl: scaled where rank/l2 is. */
template <typename T>
static inline void softrank_project_row(int mode, softrank_span<double> s, double eps,
                                        softrank_span<T> target, softrank_span<int32_t> perm,
                                        softrank_span<T> out, softrank_span<int32_t> blocks,
                                        softrank_span<int32_t> start,
                                        softrank_span<double> state,
                                        softrank_span<double> value,
                                        softrank_span<double> t_sum) {
    if (mode == SOFTRANK_PROJECT_KL) {
        softrank_project_sorted_row<SOFTRANK_PROJECT_KL, T>(s, target, eps, perm, out, blocks,
                                                            start, state, value, t_sum);
        return;
    }
    if (softrank_row_kind(SOFTRANK_RANK_L2, s, eps) == SOFTRANK_SOLVE_SCALED) {
        for (Py_ssize_t j = 0; j < s.len; ++j) s[j] = s[j] * (1.0 / SOFTRANK_HUGE_SCALE);
        eps = eps / SOFTRANK_HUGE_SCALE;
    }
    softrank_project_sorted_row<SOFTRANK_PROJECT_L2, T>(s, target, eps, perm, out, blocks, start,
                                                        state, value, t_sum);
}

/* The outputs and blocks of a finite row sorted into s (perm: its order), n >= 1. start,
   state, value: n each; spare: 2n words (the sort's, done with); the project modes: target
   (n, sorted decreasingly) and t_sum (n, scratch). */
template <typename T, typename S>
static inline void softrank_solve_sorted_row(int mode, S s, double eps,
                                             double sign, softrank_span<int32_t> perm,
                                             softrank_span<T> out, softrank_span<int32_t> blocks,
                                             softrank_span<int32_t> start,
                                             softrank_span<double> state,
                                             softrank_span<double> value,
                                             softrank_span<uint64_t> spare,
                                             softrank_span<T> target,
                                             softrank_span<double> t_sum) {
    const Py_ssize_t n = s.len;
    if constexpr (softrank_double_values<S>) {
        if (mode >= SOFTRANK_PROJECT_L2) {
            softrank_project_row<T>(mode, s, eps, target, perm, out, blocks, start, state, value,
                                    t_sum);
            return;
        }
    }
    const int kind = softrank_row_kind(mode, s, eps);
    if (kind == SOFTRANK_SOLVE_HARD_SORT) {
        /* Every block a singleton: the expansion's singleton output, bit for bit. */
        for (Py_ssize_t j = 0; j < n; ++j) {
            out[j] = (T)((sign * s[j]) + 0.0);
            blocks[j] = (int32_t)j;
        }
        return;
    }
    if (kind == SOFTRANK_SOLVE_SORT_KL_EPS_UNITS) {
        softrank_pav_row<SOFTRANK_SORT_KL_EPS_UNITS, T>(s, eps, sign, perm, out, blocks, start,
                                                        state, value, spare);
        return;
    }
    if (kind == SOFTRANK_SOLVE_SCALED) {
        /* float32 values never get here: softrank_solve_sorted_f32 widens them first */
        if constexpr (!softrank_double_values<S>) return;
        else {
        /* Solve the problem scaled by a power of two (exact): rank(x, eps) = rank(x/k, eps/k)
           and sort(x, eps) = k * sort(x/k, eps*k) for the l2 projection. */
        for (Py_ssize_t j = 0; j < n; ++j) s[j] = s[j] * (1.0 / SOFTRANK_HUGE_SCALE);
        if (mode == SOFTRANK_RANK_L2) {
            softrank_pav_row<SOFTRANK_RANK_L2, T>(s, eps / SOFTRANK_HUGE_SCALE, sign, perm, out,
                                                  blocks, start, state, value, spare);
        } else {
            softrank_pav_row<SOFTRANK_SORT_L2, T>(s, eps * SOFTRANK_HUGE_SCALE, sign, perm, out,
                                                  blocks, start, state, value, spare);
            for (Py_ssize_t j = 0; j < n; ++j) out[j] = (T)(out[j] * SOFTRANK_HUGE_SCALE);
        }
        return;
        }
    }
    switch (mode) {
    case SOFTRANK_RANK_L2:
        softrank_pav_row<SOFTRANK_RANK_L2, T>(s, eps, sign, perm, out, blocks, start, state, value,
                                              spare);
        break;
    case SOFTRANK_RANK_KL:
        softrank_pav_row<SOFTRANK_RANK_KL, T>(s, eps, sign, perm, out, blocks, start, state,
                                              value, spare);
        break;
    case SOFTRANK_SORT_L2:
        softrank_pav_row<SOFTRANK_SORT_L2, T>(s, eps, sign, perm, out, blocks, start, state, value,
                                              spare);
        break;
    default:
        softrank_pav_row<SOFTRANK_SORT_KL, T>(s, eps, sign, perm, out, blocks, start, state, value,
                                              spare);
        break;
    }
}

/* PAV's n per-block doubles that the expansion does not read: rank/kl's block sums (its
   expansion sums its weights anew), the other modes' block values. The blocks of a call that
   wants none take their first half (forward.h), staged rank outputs the second. */
static inline softrank_span<double> softrank_dead_after_pav(int mode, softrank_span<double> state,
                                                            softrank_span<double> value) {
    return mode == SOFTRANK_RANK_KL ? state : value;
}

static inline bool softrank_is_rank(int mode) {
    return mode == SOFTRANK_RANK_L2 || mode == SOFTRANK_RANK_KL;
}

/* Where the expansion of a float32 row's values s32 (kept in the caller's out, forward.h)
   writes: the sort modes over s32 itself, each block after reading its first value; the rank
   modes, whose outputs go to scattered places, to staged outputs in sorted order
   (softrank_rank_slot) in the second half of PAV's dead doubles, which softrank_scatter_ranks
   then scatters. */
static inline softrank_span<float> softrank_f32_destination(int mode, softrank_span<float> s32,
                                                            softrank_span<double> state,
                                                            softrank_span<double> value) {
    if (!softrank_is_rank(mode)) return s32;
    const softrank_span<double> dead = softrank_dead_after_pav(mode, state, value);
    return softrank_span<float>((float *)dead.ptr, 2 * dead.len).sub(dead.len, dead.len);
}

/* out[perm[j]] = staged[j] for j in [lo, hi). */
template <typename T>
static inline void softrank_scatter_ranks(softrank_span<float> staged,
                                          softrank_span<int32_t> perm, softrank_span<T> out,
                                          Py_ssize_t lo, Py_ssize_t hi) {
    for (Py_ssize_t j = lo; j < hi; ++j) out[perm[j]] = staged[j];
}

/* softrank_solve_sorted_row of a float32 row whose values s32 are kept as float32 (rank and
   sort modes) in the caller's out (forward.h), expanded to softrank_f32_destination. A sort/l2
   row solved scaled (tiny strengths; scaling a float32 could lose bits) first copies its values
   to float64 in wide (n). */
template <typename T>
static inline void softrank_solve_sorted_f32(int mode, softrank_span<float> s32,
                                             softrank_span<double> wide, double eps,
                                             double sign, softrank_span<int32_t> perm,
                                             softrank_span<T> out,
                                             softrank_span<int32_t> blocks,
                                             softrank_span<int32_t> start,
                                             softrank_span<double> state,
                                             softrank_span<double> value,
                                             softrank_span<uint64_t> spare) {
    const softrank_f32_values s(s32);
    if (softrank_row_kind(mode, s, eps) == SOFTRANK_SOLVE_SCALED) {
        for (Py_ssize_t j = 0; j < s32.len; ++j) wide[j] = s32[j];
        softrank_solve_sorted_row<T>(mode, wide, eps, sign, perm, out, blocks, start, state,
                                     value, spare, softrank_span<T>(), softrank_span<double>());
        return;
    }
    const softrank_span<float> destination = softrank_f32_destination(mode, s32, state, value);
    softrank_solve_sorted_row<float>(mode, s, eps, sign, perm, destination, blocks, start, state,
                                     value, spare, softrank_span<float>(), softrank_span<double>());
    if (softrank_is_rank(mode)) softrank_scatter_ranks<T>(destination, perm, out, 0, s32.len);
}

/* The forward of a row holding a NaN or an infinity: NaN outputs, blocks[0] = -1. */
template <typename T>
static inline void softrank_nan_row_forward(softrank_span<T> out, softrank_span<int32_t> perm,
                                            softrank_span<int32_t> blocks) {
    for (Py_ssize_t j = 0; j < out.len; ++j) {
        out[j] = NAN;
        perm[j] = (int32_t)j;
        blocks[j] = 0;
    }
    blocks[0] = -1;
}

#endif  /* SOFTRANK_PAV_H */
