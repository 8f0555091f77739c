/* workspace.h: the scratch memory of a call, and how one thread's share is laid out.

   A forward thread needs, for a row of n elements (in 64-bit words):
     keys   3n + SOFTRANK_HIST_WORDS: two radix buffers, full float64 keys, radix histograms
            (PAV reuses the first 2n words once the row is sorted)
     ints   (n + 1) / 2: PAV's block starts (int32)
     reals  3n: the sorted values, PAV's block states and block values
   padded to whole cache lines plus one line, so that threads do not share a line. (The
   backward's share: softrank_backward_words in backward.h.) */
#ifndef SOFTRANK_WORKSPACE_H
#define SOFTRANK_WORKSPACE_H

#include <Python.h>
#include <stdint.h>
#include <vector>

#include "span.h"

/* Words of the radix histograms (4 x 256 uint32 counts). */
enum { SOFTRANK_HIST_WORDS = 4 * 256 / 2 };

struct softrank_workspace {
    softrank_span<uint64_t> keys;
    softrank_span<int32_t> ints;
    softrank_span<double> reals;
};

/* Words of one thread's forward workspace for rows of n. */
static inline Py_ssize_t softrank_forward_words(Py_ssize_t n) {
    const Py_ssize_t words = (3 * n + SOFTRANK_HIST_WORDS) + (n + 1) / 2 + 3 * n;
    return (words + 7) / 8 * 8 + 8;
}

static inline softrank_workspace softrank_forward_workspace(uint64_t *words, Py_ssize_t n) {
    softrank_workspace work;
    const Py_ssize_t key_words = 3 * n + SOFTRANK_HIST_WORDS;
    const Py_ssize_t int_words = (n + 1) / 2;
    work.keys = softrank_span<uint64_t>(words, key_words);
    work.ints = softrank_span<int32_t>((int32_t *)(words + key_words), n);
    work.reals = softrank_span<double>((double *)(words + key_words + int_words), 3 * n);
    return work;
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
