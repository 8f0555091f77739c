/* backward.h: the gradient of one row from the forward's partition (docs/CONTRACT.md,
   "Backward").

   g is the cotangent of the output (in the input's positions for soft_rank, in sorted order
   for soft_sort), perm and blocks the forward's, aux the forward's output (rank/kl) or input
   (sort/kl). With g'_j = g[perm[j]] and B the block of sorted position j:
     rank/l2: grad[perm[j]] = sign/eps * (g'_j - mean_B(g'))
     rank/kl: grad[perm[j]] = sign/eps * r_j * (g'_j - sum_B(g' r) / R_B),  r_j = out[perm[j]]
     sort/l2: grad[perm[j]] = mean_B(g)
     sort/kl: grad[perm[j]] = softmax(s_B)_j * sum_B(g)
     project/l2, project/kl: as rank/l2 and rank/kl, with R_B = sum_B(r) (docs/CONTRACT.md)

   Deviations from the textbook formulas, and why:
   * Blocks are read from the forward's block starts, never re-detected by comparing floats.
   * rank/kl's softmax is the forward output itself (already max-shifted: out = softmax * R_B),
     so it needs no exp; sort/kl's softmax is shifted by the block maximum s_a.
   * A singleton block's gradient is written exactly (rank/kl: 0, its rank is the constant
     n - a; sort: the cotangent itself), not through the general formula's rounding.
   * Sums are accumulated in float64 in four interleaved partial sums.
   * Rank gradients are kept finite for every eps > 0 (issue 16, item 6). The true Jacobian
     entries of a pooled block (ties) are ~1/eps, beyond the dtype's range for tiny strengths:
     where the plain product is not in [-M, M] (M: the dtype's largest value) it is recomputed
     with the scale applied last (no inf * 0 = NaN), and saturated at +-M. Where sign/eps
     itself exceeds M (eps below 1/DBL_MAX, about 5.6e-309, for float64 rows; below 1/FLT_MAX,
     about 2.9e-39, for float32) the scale is floored to sign * M. So singleton blocks and
     elements with g'_j = mean_B get exact zeros, the rest the true gradient's sign. A plain
     product within [-M, M] is returned unchanged, bit for bit.
   perm must be the forward's (indices 0..n-1): the entry points check the arrays' layouts,
   not their contents, and debug builds check every index read through it. */
#ifndef SOFTRANK_BACKWARD_H
#define SOFTRANK_BACKWARD_H

#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "pav.h"
#include "span.h"

/* Words of one thread's backward workspace for rows of n (sort/kl: softmax weights). */
static inline Py_ssize_t softrank_backward_words(int mode, Py_ssize_t n) {
    return mode == SOFTRANK_SORT_KL ? (n + 7) / 8 * 8 + 8 : 0;
}

/* The sum of g[perm[j]] over [a, e) in four interleaved partial sums, so that the additions of
   a long block do not wait on each other. */
template <typename T>
static inline double softrank_sum_at(softrank_span<T> g, softrank_span<int32_t> perm,
                                     Py_ssize_t a, Py_ssize_t e) {
    double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
    Py_ssize_t j = a;
    while (j + 4 <= e) {
        t0 += g[perm[j]];
        t1 += g[perm[j + 1]];
        t2 += g[perm[j + 2]];
        t3 += g[perm[j + 3]];
        j += 4;
    }
    while (j < e) {
        t0 += g[perm[j]];
        j += 1;
    }
    return (t0 + t1) + (t2 + t3);
}

/* The sum of g[perm[j]] * aux[perm[j]] (products in double) over [a, e), as softrank_sum_at. */
template <typename T>
static inline double softrank_dot_at(softrank_span<T> g, softrank_span<T> aux,
                                     softrank_span<int32_t> perm, Py_ssize_t a, Py_ssize_t e) {
    double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
    Py_ssize_t j = a;
    while (j + 4 <= e) {
        t0 += ((double)g[perm[j]]) * aux[perm[j]];
        t1 += ((double)g[perm[j + 1]]) * aux[perm[j + 1]];
        t2 += ((double)g[perm[j + 2]]) * aux[perm[j + 2]];
        t3 += ((double)g[perm[j + 3]]) * aux[perm[j + 3]];
        j += 4;
    }
    while (j < e) {
        t0 += ((double)g[perm[j]]) * aux[perm[j]];
        j += 1;
    }
    return (t0 + t1) + (t2 + t3);
}

/* The dtype's largest finite value. */
template <typename T>
static inline double softrank_largest() { return sizeof(T) == 4 ? (double)FLT_MAX : DBL_MAX; }

/* A rank gradient: plain (the formula's product) if within the dtype's range, else
   scale * unscaled (the scale applied last: no inf * 0) saturated at +-M (header). */
template <typename T>
static inline T softrank_rank_gradient(double plain, double scale, double unscaled) {
    const double m = softrank_largest<T>();
    if (fabs(plain) <= m) return (T)plain;
    const double v = scale * unscaled;
    return (T)(v > m ? m : (v < -m ? -m : v));
}

/* Gradient of the blocks in sorted positions [lo, hi) (lo and hi are block starts or n),
   specialised for the mode (the mode tests below are resolved at compile time).
   weights: scratch of n (sort/kl). */
template <int MODE, typename T>
static inline void softrank_backward_blocks_of(softrank_span<T> g, softrank_span<int32_t> perm,
                                               softrank_span<int32_t> blocks,
                                               softrank_span<T> aux, double eps, double sign,
                                               softrank_span<T> grad,
                                               softrank_span<double> weights, Py_ssize_t lo,
                                               Py_ssize_t hi) {
    const int mode = MODE;
    const Py_ssize_t n = g.len;
    const double scale = sign / eps;
    /* Tiny strengths: the scale floored to the dtype's range (header). */
    const double floor_scale = fabs(scale) <= softrank_largest<T>() ? scale
                                                                    : sign * softrank_largest<T>();
    Py_ssize_t a = lo;
    while (a < hi) {
        Py_ssize_t e = a + 1;
        while (e < hi && blocks[e] == a) e += 1;
        const Py_ssize_t c = e - a;
        double total = 0.0;
        if (c == 1 && mode == SOFTRANK_SORT_L2) {  /* the mean of one cotangent, no division */
            grad[perm[a]] = (T)(total + g[a]);
        } else if (mode == SOFTRANK_RANK_L2 || mode == SOFTRANK_PROJECT_L2) {
            const double mean = softrank_sum_at(g, perm, a, e) / c;
            for (Py_ssize_t j = a; j < e; ++j) {
                const double d = g[perm[j]] - mean;
                grad[perm[j]] = softrank_rank_gradient<T>(scale * d, floor_scale, d);
            }
        } else if ((mode == SOFTRANK_RANK_KL || mode == SOFTRANK_PROJECT_KL) && c == 1) {
            grad[perm[a]] = 0.0;  /* a singleton's output is its constant target (n - a) */
        } else if (mode == SOFTRANK_RANK_KL || mode == SOFTRANK_PROJECT_KL) {
            /* softmax(s_B) = out / sum_B(target): the forward output is already max-shifted.
               rank/kl's target sum has a closed form; project/kl's is the outputs' sum. */
            const double target_sum = mode == SOFTRANK_RANK_KL
                                      ? c * ((n - a) - (0.5 * (c - 1)))
                                      : softrank_sum_at(aux, perm, a, e);
            const double mean = softrank_dot_at(g, aux, perm, a, e) / target_sum;
            for (Py_ssize_t j = a; j < e; ++j) {
                const double r = aux[perm[j]];
                const double d = g[perm[j]] - mean;
                grad[perm[j]] = softrank_rank_gradient<T>((scale * r) * d, floor_scale, r * d);
            }
        } else if (mode == SOFTRANK_SORT_L2) {
            for (Py_ssize_t j = a; j < e; ++j) total += g[j];
            const double mean = total / c;
            for (Py_ssize_t j = a; j < e; ++j) grad[perm[j]] = (T)mean;
        } else if (c == 1) {  /* a singleton block: softmax weight exactly 1 */
            grad[perm[a]] = g[a];
        } else {
            /* softmax of s over the block, shifted by its maximum s_a (s is sorted decreasingly) */
            const double ref = sign * aux[perm[a]];
            double norm = 0.0;
            for (Py_ssize_t j = a; j < e; ++j) {
                weights[j] = exp((sign * aux[perm[j]]) - ref);
                norm += weights[j];
                total += g[j];
            }
            for (Py_ssize_t j = a; j < e; ++j) grad[perm[j]] = (T)((weights[j] / norm) * total);
        }
        a = e;
    }
}

/* softrank_backward_blocks_of for a mode known at run time. */
template <typename T>
static inline void softrank_backward_blocks(int mode, softrank_span<T> g,
                                            softrank_span<int32_t> perm,
                                            softrank_span<int32_t> blocks, softrank_span<T> aux,
                                            double eps, double sign, softrank_span<T> grad,
                                            softrank_span<double> weights, Py_ssize_t lo,
                                            Py_ssize_t hi) {
#define SOFTRANK_BACKWARD(M) softrank_backward_blocks_of<M, T>(g, perm, blocks, aux, eps, sign, \
                                                               grad, weights, lo, hi)
    switch (mode) {
    case SOFTRANK_RANK_L2: SOFTRANK_BACKWARD(SOFTRANK_RANK_L2); break;
    case SOFTRANK_RANK_KL: SOFTRANK_BACKWARD(SOFTRANK_RANK_KL); break;
    case SOFTRANK_SORT_L2: SOFTRANK_BACKWARD(SOFTRANK_SORT_L2); break;
    case SOFTRANK_SORT_KL: SOFTRANK_BACKWARD(SOFTRANK_SORT_KL); break;
    case SOFTRANK_PROJECT_L2: SOFTRANK_BACKWARD(SOFTRANK_PROJECT_L2); break;
    default: SOFTRANK_BACKWARD(SOFTRANK_PROJECT_KL); break;
    }
#undef SOFTRANK_BACKWARD
}

/* The gradient of one row. A row whose forward met a NaN or an infinity (blocks[0] < 0) gets a
   NaN gradient. */
template <typename T>
static inline void softrank_backward_row(int mode, softrank_span<T> g,
                                         softrank_span<int32_t> perm,
                                         softrank_span<int32_t> blocks, softrank_span<T> aux,
                                         double eps, double sign, softrank_span<T> grad,
                                         softrank_span<double> weights) {
    if (blocks[0] < 0) {
        for (Py_ssize_t j = 0; j < g.len; ++j) grad[j] = NAN;
        return;
    }
    softrank_backward_blocks(mode, g, perm, blocks, aux, eps, sign, grad, weights, 0, g.len);
}

/* Start of the block holding sorted position `position` (n for position n), or -1 if blocks
   does not hold a start in [0, position] there (not a forward's blocks: the split-row driver
   then leaves the row to the serial loop, which only compares block starts). */
static inline Py_ssize_t softrank_block_start_at(softrank_span<int32_t> blocks,
                                                 Py_ssize_t position) {
    if (position >= blocks.len) return blocks.len;
    const Py_ssize_t a = blocks[position];
    return 0 <= a && a <= position ? a : -1;
}

#endif  /* SOFTRANK_BACKWARD_H */
