/* forward.h: one row's forward (argsort, then PAV and the expansion of its blocks), whole or,
   for the split-row driver of softrank/_cpu.pyx, in steps that threads run on chunks of the
   row.

   A long row in a batch of fewer rows than threads is solved one row at a time with every
   step but PAV split across the threads: the radix passes (each thread counts and scatters its
   chunk of the words, at offsets that keep the sort stable), the decoding of the sorted words
   and the expansion of the blocks. PAV itself stays serial. The results equal the one-thread
   solve bit for bit. */
#ifndef SOFTRANK_FORWARD_H
#define SOFTRANK_FORWARD_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "argsort.h"
#include "pav.h"
#include "span.h"
#include "workspace.h"

/* Where the blocks go when the caller asks for none (forward_values; empty blocks): over PAV's
   per-block doubles that the expansion that writes the blocks does not read (the rank and
   sort modes; the projections' callers always give blocks). */
static inline softrank_span<int32_t> softrank_scratch_blocks(const softrank_workspace &work,
                                                             Py_ssize_t n, int mode) {
    return softrank_span<int32_t>(
        (int32_t *)softrank_dead_after_pav(mode, work.state, work.value).ptr, n);
}

/* Whether a float32 row's sorted values are kept as float32 (softrank_f32_values in pav.h):
   the rank and sort modes, radix sorted. They are kept in the caller's output, which
   nothing else uses before the expansion (softrank_solve_sorted_f32 says how the expansion
   then writes it), so the workspace's values are never written. */
static inline bool softrank_f32_values_for(int mode, int full_keys) {
    return !full_keys && mode < SOFTRANK_PROJECT_L2;
}

/* The sort modes' outputs are in sorted order: a call that wants no partition never reads
   perm, which is then not written (an empty perm to the decoding). */
static inline bool softrank_perm_unread(int mode, bool no_partition) {
    return no_partition && (mode == SOFTRANK_SORT_L2 || mode == SOFTRANK_SORT_KL);
}

/* The project modes' target sums: the reals after the sorted values. */
static inline softrank_span<double> softrank_target_sums(const softrank_workspace &work,
                                                         Py_ssize_t n, int mode) {
    return mode >= SOFTRANK_PROJECT_L2 ? work.reals.sub(n, n) : work.reals.sub(0, 0);
}

/* The forward of one row of n >= 1 (x, out, perm, blocks: n each, or blocks empty: no blocks
   wanted, all modes but rank/kl; target: n, sorted decreasingly, for the project modes, else
   empty); words: one thread's workspace for rows of n (softrank_forward_words(n,
   sizeof(T) == 8, mode)). */
template <typename T>
static inline void softrank_forward_row(int mode, softrank_span<T> x, softrank_span<T> out,
                                        softrank_span<int32_t> perm,
                                        softrank_span<int32_t> blocks, double eps, double sign,
                                        softrank_span<T> target, uint64_t *words) {
    const Py_ssize_t n = x.len;
    const softrank_workspace work = softrank_forward_workspace(words, n, sizeof(T) == 8, mode);
    const bool no_partition = blocks.len == 0;
    if (no_partition) blocks = softrank_scratch_blocks(work, n, mode);
    softrank_span<double> s = work.reals.sub(0, n);
    if constexpr (sizeof(T) == 4) {
        if (softrank_f32_values_for(mode, 0)
            && softrank_sort_kernel_for<float>(n) == SOFTRANK_SORT_RADIX) {
            const softrank_span<float> s32((float *)out.ptr, n);
            if (softrank_radix_argsort<float, float>(
                    x, sign, work.keys.sub(0, n), work.keys.sub(n, n),
                    softrank_workspace_full(work, n), softrank_workspace_hist(work),
                    softrank_perm_unread(mode, no_partition) ? softrank_span<int32_t>() : perm,
                    s32)) {
                softrank_nan_row_forward(out, perm, blocks);
                return;
            }
            softrank_solve_sorted_f32<T>(mode, s32, s, eps, sign, perm, out, blocks,
                                         work.ints.sub(0, n), work.state, work.value,
                                         work.keys.sub(0, 2 * n));
            return;
        }
    }
    if (softrank_argsort_row<T>(x, sign, work.keys.sub(0, n), work.keys.sub(n, n),
                                softrank_workspace_full(work, n), softrank_workspace_hist(work),
                                perm, s)) {
        softrank_nan_row_forward(out, perm, blocks);
        return;
    }
    softrank_solve_sorted_row(mode, s, eps, sign, perm, out, blocks, work.ints.sub(0, n),
                              work.state, work.value, work.keys.sub(0, 2 * n), target,
                              softrank_target_sums(work, n, mode));
}

/* ------------------------------------------------------------------------- split rows */

/* The split radix sort keeps one set of histograms per thread (SOFTRANK_HIST_WORDS words each,
   after the row's workspace). */
enum {
    SOFTRANK_SPLIT_DIGITS = SOFTRANK_RADIX_DIGITS,
    SOFTRANK_SPLIT_COUNTS = SOFTRANK_RADIX_DIGITS * SOFTRANK_RADIX_BUCKETS,
};

/* Start of thread t's chunk of n positions (t = n_threads gives n). */
static inline Py_ssize_t softrank_chunk_start(Py_ssize_t t, Py_ssize_t n, int n_threads) {
    return t * n / n_threads;
}

/* The words of one split row's step: the row's workspace and the threads' histograms. */
struct softrank_split {
    softrank_workspace work;
    softrank_span<uint64_t> ka, kb, full;
    softrank_span<uint32_t> hists;  /* SOFTRANK_SPLIT_COUNTS per thread */
    softrank_span<double> s;
    int mode;
    softrank_span<float> s32;  /* the values as float32 in out (softrank_f32_values_for), else
                                  empty */
    bool perm_unread;          /* softrank_perm_unread: the decoding does not write perm */
    Py_ssize_t n;
    int n_threads;
};

/* Words of a split row's workspace (full_keys: float64 rows). */
static inline Py_ssize_t softrank_split_words(Py_ssize_t n, int n_threads, int full_keys,
                                              int mode) {
    return softrank_forward_words(n, full_keys, mode) + n_threads * SOFTRANK_HIST_WORDS;
}

template <typename T>
static inline void softrank_split_init(softrank_split *split, uint64_t *words,
                                       softrank_span<T> out, int n_threads, int mode) {
    const Py_ssize_t n = out.len;
    const int full_keys = sizeof(T) == 8;
    split->work = softrank_forward_workspace(words, n, full_keys, mode);
    split->ka = split->work.keys.sub(0, n);
    split->kb = split->work.keys.sub(n, n);
    split->full = softrank_workspace_full(split->work, n);
    split->hists = softrank_span<uint32_t>(
        (uint32_t *)(words + softrank_forward_words(n, full_keys, mode)),
                                           2 * (Py_ssize_t)n_threads * SOFTRANK_HIST_WORDS);
    split->s = split->work.reals.sub(0, n);
    split->s32 = softrank_f32_values_for(mode, full_keys)
                 ? softrank_span<float>((float *)out.ptr, n) : softrank_span<float>();
    split->perm_unread = false;
    split->mode = mode;
    split->n = n;
    split->n_threads = n_threads;
    memset(split->hists.ptr, 0, split->hists.len * sizeof(uint32_t));
}

/* The blocks of a call that wants no partition (and perm, for the sort modes, unread). */
static inline softrank_span<int32_t> softrank_split_scratch_blocks(softrank_split *split) {
    split->perm_unread = softrank_perm_unread(split->mode, true);
    return softrank_scratch_blocks(split->work, split->n, split->mode);
}

static inline softrank_span<uint32_t> softrank_split_hist(const softrank_split *split, int t,
                                                         int d) {
    return split->hists.sub(t * (Py_ssize_t)SOFTRANK_SPLIT_COUNTS + SOFTRANK_RADIX_BUCKETS * d,
                            SOFTRANK_RADIX_BUCKETS);
}

/* Step 1, thread t: the words of its chunk, every digit counted. True if the chunk holds a NaN
   or an infinity. */
template <typename T>
static inline bool softrank_split_keys(const softrank_split *split, softrank_span<T> x,
                                       double sign, int t) {
    return softrank_build_keys<T>(
        x, sign, split->ka, split->full,
        split->hists.sub(t * (Py_ssize_t)SOFTRANK_SPLIT_COUNTS, SOFTRANK_SPLIT_COUNTS),
        softrank_chunk_start(t, split->n, split->n_threads),
        softrank_chunk_start(t + 1, split->n, split->n_threads));
}

/* Whether every word has the same digit d (the pass is then skipped; the counts of a digit do
   not depend on the words' order). */
static inline bool softrank_split_digit_is_constant(const softrank_split *split, int d) {
    const int shift = 32 + SOFTRANK_RADIX_BITS * d;
    uint32_t total = 0;
    for (int t = 0; t < split->n_threads; ++t)
        total += softrank_split_hist(split, t, d)[(split->ka[0] >> shift) & SOFTRANK_RADIX_MASK];
    return total == (uint32_t)split->n;
}

/* Step 2, thread t (from the second pass done on): count digit d of its chunk of src again
   (the chunks hold other words than when step 1 counted them). */
static inline void softrank_split_recount(const softrank_split *split,
                                          softrank_span<uint64_t> src, int d, int t) {
    softrank_count_digit(src, softrank_chunk_start(t, split->n, split->n_threads),
                         softrank_chunk_start(t + 1, split->n, split->n_threads),
                         32 + SOFTRANK_RADIX_BITS * d, softrank_split_hist(split, t, d));
}

/* Step 3 (one thread): the offsets of digit d, bucket by bucket, thread 0's words before
   thread 1's (stable). */
static inline void softrank_split_offsets(const softrank_split *split, int d) {
    uint32_t total = 0;
    for (Py_ssize_t b = 0; b < SOFTRANK_RADIX_BUCKETS; ++b)
        for (int t = 0; t < split->n_threads; ++t) {
            softrank_span<uint32_t> hist = softrank_split_hist(split, t, d);
            const uint32_t c = hist[b];
            hist[b] = total;
            total += c;
        }
}

/* Step 4, thread t: scatter its chunk of src into dst by digit d. */
static inline void softrank_split_scatter(const softrank_split *split,
                                          softrank_span<uint64_t> src,
                                          softrank_span<uint64_t> dst, int d, int t) {
    const Py_ssize_t lo = softrank_chunk_start(t, split->n, split->n_threads);
    const Py_ssize_t hi = softrank_chunk_start(t + 1, split->n, split->n_threads);
    softrank_scatter_pass(src.sub(lo, hi - lo), dst, hi - lo, 32 + SOFTRANK_RADIX_BITS * d,
                          SOFTRANK_RADIX_MASK, softrank_split_hist(split, t, d));
}

/* Step 5, thread t: perm and s of its chunk of the sorted words (float32), or perm alone
   (float64; returns whether a run of equal high halves needs sorting). */
static inline bool softrank_split_decode(const softrank_split *split, softrank_span<float> x,
                                         double sign, softrank_span<uint64_t> sorted,
                                         softrank_span<int32_t> perm, int t) {
    (void)x; (void)sign;
    const Py_ssize_t lo = softrank_chunk_start(t, split->n, split->n_threads);
    const Py_ssize_t hi = softrank_chunk_start(t + 1, split->n, split->n_threads);
    if (split->perm_unread) perm = softrank_span<int32_t>();
    if (split->s32.len) softrank_decode_words32(sorted, perm, split->s32, lo, hi);
    else softrank_decode_words32(sorted, perm, split->s, lo, hi);
    return false;
}

static inline bool softrank_split_decode(const softrank_split *split, softrank_span<double> x,
                                         double sign, softrank_span<uint64_t> sorted,
                                         softrank_span<int32_t> perm, int t) {
    (void)x; (void)sign;
    return softrank_perm_of_words(sorted, perm,
                                  softrank_chunk_start(t, split->n, split->n_threads),
                                  softrank_chunk_start(t + 1, split->n, split->n_threads));
}

/* Step 6 (float64, if step 5 found shared high halves), thread t: sort the runs of equal high
   halves that start in its chunk (a run may end in the next chunk: after all of step 5). */
static inline void softrank_split_sort_runs(const softrank_split *split,
                                            softrank_span<uint64_t> sorted,
                                            softrank_span<int32_t> perm, int t) {
    softrank_sort_equal_high_runs(sorted, split->full, perm,
                                  softrank_chunk_start(t, split->n, split->n_threads),
                                  softrank_chunk_start(t + 1, split->n, split->n_threads));
}

/* Step 7 (float64), thread t: s of its chunk, gathered through perm (after all of step 6). */
static inline void softrank_split_gather(const softrank_split *split, softrank_span<double> x,
                                         double sign, softrank_span<int32_t> perm, int t) {
    softrank_gather_sorted<double>(x, sign, perm, split->s,
                                   softrank_chunk_start(t, split->n, split->n_threads),
                                   softrank_chunk_start(t + 1, split->n, split->n_threads));
}

/* Step 8 (one thread): PAV of the sorted row; returns the top block, or -1 if the row needed
   scaling, was a hard sort or is a project mode's, and was solved whole (serially) instead. */
template <typename T>
static inline Py_ssize_t softrank_split_pav(const softrank_split *split, int mode, double eps,
                                            double sign, softrank_span<int32_t> perm,
                                            softrank_span<T> out, softrank_span<int32_t> blocks,
                                            softrank_span<T> target) {
    const Py_ssize_t n = split->n;
    if (split->s32.len) {
        const softrank_f32_values s(split->s32);
        if (softrank_row_kind(mode, s, eps) != SOFTRANK_SOLVE_PLAIN) {
            softrank_solve_sorted_f32<T>(mode, split->s32, split->s, eps, sign, perm, out, blocks,
                                         split->work.ints.sub(0, n), split->work.state,
                                         split->work.value, split->work.keys.sub(0, 2 * n));
            return -1;
        }
        return softrank_pav(mode, s, eps, split->work.ints.sub(0, n), split->work.state,
                            split->work.value, split->work.keys.sub(0, 2 * n));
    }
    if (mode >= SOFTRANK_PROJECT_L2 || softrank_row_kind(mode, split->s, eps) != SOFTRANK_SOLVE_PLAIN) {
        /* rare (scaled rows, hard sorts of tiny strengths, the project modes, whose PAV and
           expansion are one serial loop): the serial solver */
        softrank_solve_sorted_row(mode, split->s, eps, sign, perm, out, blocks,
                                  split->work.ints.sub(0, n), split->work.state,
                                  split->work.value, split->work.keys.sub(0, 2 * n), target,
                                  softrank_target_sums(split->work, n, mode));
        return -1;
    }
    return softrank_pav(mode, split->s, eps, split->work.ints.sub(0, n), split->work.state,
                        split->work.value, split->work.keys.sub(0, 2 * n));
}

/* The first block (of 0..top) starting at or after position; top + 1 if none. */
static inline Py_ssize_t softrank_first_block_from(softrank_span<int32_t> start, Py_ssize_t top,
                                                   Py_ssize_t position) {
    Py_ssize_t lo = 0, hi = top + 1;
    while (lo < hi) {
        const Py_ssize_t mid = (lo + hi) / 2;
        if (start[mid] < position) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Whether step 9 stages the outputs (the rank modes of float32 values): step 10 then runs. */
static inline bool softrank_split_staged(const softrank_split *split) {
    return split->s32.len && softrank_is_rank(split->mode);
}

/* Step 9, thread t: expand the blocks that start in its chunk. */
template <typename T>
static inline void softrank_split_expand(const softrank_split *split, int mode, double eps,
                                         double sign, softrank_span<int32_t> perm,
                                         softrank_span<T> out, softrank_span<int32_t> blocks,
                                         Py_ssize_t top, int t) {
    const Py_ssize_t n = split->n;
    softrank_span<int32_t> start = split->work.ints.sub(0, n);
    const Py_ssize_t b_lo = softrank_first_block_from(start, top,
                                                      softrank_chunk_start(t, n, split->n_threads));
    const Py_ssize_t b_hi = softrank_first_block_from(
        start, top, softrank_chunk_start(t + 1, n, split->n_threads));
    if (split->s32.len)  /* staged rank outputs are scattered in step 10 */
        softrank_expand<float>(mode, softrank_f32_values(split->s32), eps, sign, perm,
                               softrank_f32_destination(mode, split->s32, split->work.state,
                                                        split->work.value),
                               blocks, start, split->work.state,
                               split->work.keys.sub(0, 2 * n), top, b_lo, b_hi);
    else
        softrank_expand<T>(mode, split->s, eps, sign, perm, out, blocks, start,
                           split->work.state, split->work.keys.sub(0, 2 * n), top, b_lo, b_hi);
}

/* Step 10 (if softrank_split_staged, after all of step 9), thread t: scatter the staged
   outputs of its chunk of sorted positions. */
template <typename T>
static inline void softrank_split_scatter_ranks(const softrank_split *split,
                                                softrank_span<int32_t> perm,
                                                softrank_span<T> out, int t) {
    softrank_scatter_ranks<T>(softrank_f32_destination(split->mode, split->s32,
                                                       split->work.state, split->work.value),
                              perm, out,
                              softrank_chunk_start(t, split->n, split->n_threads),
                              softrank_chunk_start(t + 1, split->n, split->n_threads));
}

#endif  /* SOFTRANK_FORWARD_H */
