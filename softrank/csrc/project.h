/* project.h: PAV of the projection onto the permutahedron of a target row t (project/l2 and
   project/kl of docs/CONTRACT.md), and the expansion of its blocks into outputs.

   These are rank/l2 and rank/kl (pav.h) with rho = (n, ..., 1) replaced by t, sorted
   decreasingly (t_0 >= ... >= t_{n-1}; > 0 for kl), paired with the sorted row s:

       l2:  y = s/eps - t,               block value (in units of x)  mean_B(s) - eps mean_B(t)
       kl:  (y, w) = (s/eps, log t),     block value                  L_B - eps log T_B
            L_B = eps logsumexp(s_B / eps),  T_B = sum_B t

   and adjacent blocks are pooled while value(previous) <= value(current).

   Deviations from the textbook algorithm, and why:
   * t has no closed-form sums, so each block keeps T_B, summed as blocks pool (no prefix sums:
     their differences would cancel for long rows).
   * Block states are relative to the block's first element s_a, as in pav.h: l2 keeps
     d = sum_B (s_j - s_a), kl keeps S = sum_B exp((s_j - s_a)/eps) in [1, c]; a large common
     offset costs no precision and nothing overflows.
   * Singleton blocks output t_j exactly (the closed forms reduce to it up to rounding).
   * l2 rows with values above 2**1000 are solved scaled by 2**-64 (exact, as rank/l2's:
     the projection depends on x / eps only); the caller (pav.h's softrank_row_kind) decides.
   * This is the plain stack PAV, without rank/kl's vectorised weights: the project modes
     are a separate code path, so soft_rank and soft_sort keep theirs. */
#ifndef SOFTRANK_PROJECT_H
#define SOFTRANK_PROJECT_H

#include <Python.h>
#include <math.h>
#include <stdint.h>

#include "span.h"

enum { SOFTRANK_PROJECT_L2 = 4, SOFTRANK_PROJECT_KL = 5 };

template <int MODE>
static inline double softrank_project_value(double s_a, double state, double t_sum,
                                            Py_ssize_t c, double eps) {
    if constexpr (MODE == SOFTRANK_PROJECT_L2) return (s_a + (state / c)) - (eps * (t_sum / c));
    else return s_a + (eps * log(state / t_sum));
}

/* The outputs and blocks of a finite row sorted into s (perm: its order), n >= 1, for the
   target t (n, sorted decreasingly). start: n; state, value, t_sum: n each (scratch). */
template <int MODE, typename T>
static inline void softrank_project_sorted_row(softrank_span<double> s, softrank_span<T> t,
                                               double eps, softrank_span<int32_t> perm,
                                               softrank_span<T> out,
                                               softrank_span<int32_t> blocks,
                                               softrank_span<int32_t> start,
                                               softrank_span<double> state,
                                               softrank_span<double> value,
                                               softrank_span<double> t_sum) {
    const Py_ssize_t n = s.len;
    const bool kl = MODE == SOFTRANK_PROJECT_KL;
    Py_ssize_t top = -1;
    for (Py_ssize_t j = 0; j < n; ++j) {
        top += 1;
        start[top] = (int32_t)j;
        state[top] = kl ? 1.0 : 0.0;
        t_sum[top] = t[j];
        value[top] = softrank_project_value<MODE>(s[j], state[top], t_sum[top], 1, eps);
        while (top > 0 && value[top - 1] <= value[top]) {
            const Py_ssize_t a = start[top - 1], b = start[top];
            const double shift = s[b] - s[a];  /* <= 0 */
            if constexpr (kl)
                state[top - 1] = state[top - 1] + (state[top] * exp(shift / eps));
            else
                state[top - 1] = (state[top - 1] + state[top]) + (((j + 1) - b) * shift);
            t_sum[top - 1] = t_sum[top - 1] + t_sum[top];
            top -= 1;
            value[top] = softrank_project_value<MODE>(s[a], state[top], t_sum[top], (j + 1) - a,
                                                      eps);
        }
    }
    /* The expansion; value[] is dead from here and holds kl's weights. */
    for (Py_ssize_t b = 0; b <= top; ++b) {
        const Py_ssize_t a = start[b];
        const Py_ssize_t e = b < top ? start[b + 1] : n;
        const Py_ssize_t c = e - a;
        const double s_a = s[a];
        if (c == 1) {
            out[perm[a]] = t[a];
            blocks[a] = (int32_t)a;
            continue;
        }
        if constexpr (kl) {
            /* the softmax of s_B / eps, its weights against the head (summed anew: the
               pooled state carries the rounding of every merge) */
            double sum = 0.0;
            for (Py_ssize_t j = a; j < e; ++j) {
                value[j] = exp((s[j] - s_a) / eps);
                sum += value[j];
            }
            const double scale = t_sum[b] / sum;
            for (Py_ssize_t j = a; j < e; ++j) {
                out[perm[j]] = (T)(value[j] * scale);
                blocks[j] = (int32_t)a;
            }
        } else {
            const double mean_t = t_sum[b] / c;
            for (Py_ssize_t j = a; j < e; ++j) {
                out[perm[j]] = (T)((((s[j] - s_a) - (state[b] / c)) / eps) + mean_t);
                blocks[j] = (int32_t)a;
            }
        }
    }
}

#endif  /* SOFTRANK_PROJECT_H */
