/* workspace.h: the scratch memory of a call, and how one thread's share is laid out.

   A forward thread needs, for a row of n elements (in 64-bit words):
     keys   2n (float32) or 3n (float64) + SOFTRANK_HIST_WORDS: two radix buffers, full float64
            keys (float64 rows only: a float32 key fits in its sort word), radix histograms
            (PAV reuses the first 2n words once the row is sorted)
     ints   (n + 1) / 2: PAV's block starts (int32; rank/kl keeps them in keys)
     reals  n: the sorted values; rank/kl also n for its block sums, the project modes n for
            their blocks' target sums
   The radix buffers are done with once the row is sorted: PAV keeps its block states and
   values there (rank/kl: its weights, epochs and block starts; pav.h). Pages never
   written are never resident (docs/PERFORMANCE.md, "Peak memory", has the bytes per element),
   which is what the rest of this layout is about:
   - a call that wants no partition writes the rank and sort modes' block starts over PAV's
     per-block doubles that the expansion does not read (softrank_scratch_blocks in forward.h),
     so it needs only the int32 permutation besides;
   - a float32 row in a rank or sort mode keeps its sorted values as float32 in the caller's
     output (forward.h), so the values' n words are never written; the rank modes stage their
     outputs in the second half of the same dead doubles (softrank_f32_destination in pav.h);
   - the sort modes' calls that want no partition never write the permutation.
   Each thread's share is padded to whole cache lines plus one line, so that threads do not
   share a line. (The backward's share: softrank_backward_words in backward.h.) */
#ifndef SOFTRANK_WORKSPACE_H
#define SOFTRANK_WORKSPACE_H

#include <Python.h>
#include <stdint.h>
#include <vector>

#include "pav.h"
#include "span.h"

/* Words of the radix histograms (4 x 256 uint32 counts). */
enum { SOFTRANK_HIST_WORDS = 4 * 256 / 2 };

struct softrank_workspace {
    softrank_span<uint64_t> keys;
    softrank_span<int32_t> ints;
    softrank_span<double> reals;
    softrank_span<double> state, value;  /* PAV's block states and values (n each) */
};

/* rank/kl (softrank/_contract.py's mode 1): its PAV keeps its weights, epochs and block starts
   in the radix buffers (softrank_rank_kl_weights in pav.h) and its block sums in reals. */
static inline int softrank_states_in_keys(int mode) { return mode != 1; }

/* Words of reals per element: the sorted values, and rank/kl's block sums or the project
   modes' (4, 5) target sums. */
static inline Py_ssize_t softrank_reals_per_element(int mode) {
    return mode == 1 || mode >= 4 ? 2 : 1;
}

/* Words of the block starts (int32) outside keys: none for rank/kl. */
static inline Py_ssize_t softrank_int_words(Py_ssize_t n, int mode) {
    return softrank_states_in_keys(mode) ? (n + 1) / 2 : 0;
}

/* Key arrays of a row of n: 2 (the radix buffers) for float32, 3 (and the full keys) for
   float64 (full_keys). */
static inline Py_ssize_t softrank_key_arrays(int full_keys) { return full_keys ? 3 : 2; }

/* Words of one thread's forward workspace for rows of n in mode. */
static inline Py_ssize_t softrank_forward_words(Py_ssize_t n, int full_keys, int mode) {
    const Py_ssize_t words = (softrank_key_arrays(full_keys) * n + SOFTRANK_HIST_WORDS)
                             + softrank_int_words(n, mode) + softrank_reals_per_element(mode) * n;
    return (words + 7) / 8 * 8 + 8;
}

/* keys: the radix buffers at 0 and n, the full keys (float64) at 2n, the histograms last. */
static inline softrank_workspace softrank_forward_workspace(uint64_t *words, Py_ssize_t n,
                                                           int full_keys, int mode) {
    softrank_workspace work;
    const Py_ssize_t key_words = softrank_key_arrays(full_keys) * n + SOFTRANK_HIST_WORDS;
    const Py_ssize_t int_words = softrank_int_words(n, mode);
    work.keys = softrank_span<uint64_t>(words, key_words);
    work.reals = softrank_span<double>((double *)(words + key_words + int_words),
                                       softrank_reals_per_element(mode) * n);
    if (softrank_states_in_keys(mode)) {
        work.ints = softrank_span<int32_t>((int32_t *)(words + key_words), n);
        work.state = softrank_span<double>((double *)work.keys.sub(0, n).ptr, n);
        work.value = softrank_span<double>((double *)work.keys.sub(n, n).ptr, n);
    } else {
        work.ints = softrank_rank_kl_starts(work.keys.sub(0, 2 * n), n);
        work.state = work.reals.sub(n, n);
        work.value = softrank_span<double>();
    }
    return work;
}

/* The radix histograms at the end of keys, and the full keys (empty for float32). */
static inline softrank_span<uint32_t> softrank_workspace_hist(const softrank_workspace &work) {
    return softrank_span<uint32_t>(
        (uint32_t *)work.keys.sub(work.keys.len - SOFTRANK_HIST_WORDS, SOFTRANK_HIST_WORDS).ptr,
        2 * SOFTRANK_HIST_WORDS);
}

static inline softrank_span<uint64_t> softrank_workspace_full(const softrank_workspace &work,
                                                              Py_ssize_t n) {
    return work.keys.len - SOFTRANK_HIST_WORDS >= 3 * n ? work.keys.sub(2 * n, n)
                                                       : work.keys.sub(0, 0);
}

/* The memory of a call. Up to SOFTRANK_CACHED_WORDS (8 MiB) it is a buffer kept per calling
   thread and reused, so short calls allocate nothing; larger ones are allocated for the call
   (uninitialised: a solve overwrites everything it reads) and freed after it. acquire raises
   std::bad_alloc (MemoryError in Python) when the memory is not there. */
enum { SOFTRANK_CACHED_WORDS = 1 << 20 };
static thread_local std::vector<uint64_t> softrank_cached_words;
struct softrank_workspace_buffer {
    uint64_t *owned;
    softrank_workspace_buffer() : owned(0) {}
    ~softrank_workspace_buffer() { delete[] owned; }
    uint64_t *acquire(size_t words) {
        if (words <= SOFTRANK_CACHED_WORDS) {
            if (softrank_cached_words.size() < words) softrank_cached_words.resize(words);
            return softrank_cached_words.data();
        }
        owned = new uint64_t[words];
        return owned;
    }
};

#endif  /* SOFTRANK_WORKSPACE_H */
