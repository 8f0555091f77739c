/* argsort.h: the stable argsort of one row, decreasing, ties by index
   (softrank_argsort_row); the radix passes are also exported for the split-row driver of
   softrank/_cpu.pyx.

   perm <- the indices of sign * x in decreasing order, ties in index order, and s <- the
   sorted values (as doubles). A row holding a NaN or an infinity is reported instead (its
   perm and s are then not filled).

   Deviations from a textbook comparison argsort, and why:
   * Rows are sorted by order-preserving unsigned integer keys, not by comparing floats:
     descending values map to ascending keys (softrank_descending_key*), -0.0 is keyed as +0.0.
   * A sort word is a key's high 32 bits above the element's index, so a radix pass moves one
     64-bit word (half the passes of a 64-bit radix sort for float64 rows) and the words are
     unique, which makes every kernel's order the stable one. float64 rows then sort each run
     of equal high halves by the full key (std::sort; such runs are short unless many values
     agree in their top 32 bits).
   * The kernel depends on the row length and the CPU (softrank_sort_kernel_for): short rows
     are ranked by counting, then (with AVX2 or AVX-512) sorted by a sorting network in
     registers, longer ones radix sorted (8-bit digits). All give the same permutation; each
     special kernel is kept for a measured win over the general path (docs/PERFORMANCE.md,
     "Native sort kernels"). */
#ifndef SOFTRANK_ARGSORT_H
#define SOFTRANK_ARGSORT_H

#include <Python.h>
#include <algorithm>
#include <stdint.h>
#include <string.h>

#include "span.h"
#include "sort_kernels.h"
#include "workspace.h"

/* ------------------------------------------------------------------------------------ keys */

/* Order-preserving maps float -> unsigned integer, inverted so that ascending keys are
   descending values: a negative value keeps its bits, a positive one has all but its sign bit
   flipped. Branch-free: the sign of random data is a coin flip. The map is its own inverse. */
static inline uint32_t softrank_flip32(uint32_t u) {
    return u ^ (((u >> 31) - 1u) & 0x7FFFFFFFu);
}

static inline uint64_t softrank_descending_key32(float z) {
    uint32_t u;
    z = z + 0.0f;  /* -0.0 + 0.0 = +0.0: the two zeros are one value, with one key */
    memcpy(&u, &z, 4);
    return (uint64_t)softrank_flip32(u);
}

/* The float32 z of a softrank_descending_key32 key (-0.0 comes back as +0.0). */
static inline float softrank_value_of_key32(uint32_t key) {
    const uint32_t u = softrank_flip32(key);
    float z;
    memcpy(&z, &u, 4);
    return z;
}

static inline uint64_t softrank_descending_key64(double z) {
    uint64_t u;
    z = z + 0.0;
    memcpy(&u, &z, 8);
    return u ^ (((u >> 63) - 1u) & 0x7FFFFFFFFFFFFFFFull);
}

/* The sort word of x[j] = v: the high 32 bits of its key << 32 | j. float64 keys are stored
   whole in full[j] (for ties of their high halves). */
static inline uint64_t softrank_word_of(float v, Py_ssize_t j, double sign,
                                        softrank_span<uint64_t> full) {
    (void)full;
    return (softrank_descending_key32((float)(sign * v)) << 32) | (uint64_t)j;
}

static inline uint64_t softrank_word_of(double v, Py_ssize_t j, double sign,
                                        softrank_span<uint64_t> full) {
    const uint64_t key = softrank_descending_key64(sign * v);
    full[j] = key;
    return (key & 0xFFFFFFFF00000000ull) | (uint64_t)j;
}

/* ----------------------------------------------------------------------------- radix sort */

/* The radix sort orders words by their high 32 bits in four passes of one 8-bit digit each,
   lowest digit first; a histogram of 256 counts per digit (SOFTRANK_HIST_WORDS words in all). */
enum { SOFTRANK_RADIX_BITS = 8, SOFTRANK_RADIX_DIGITS = 4, SOFTRANK_RADIX_BUCKETS = 256 };
static const uint64_t SOFTRANK_RADIX_MASK = SOFTRANK_RADIX_BUCKETS - 1;

/* One stable counting-sort pass of src[0:n) into dst by the digit at shift; offsets: the
   digit's exclusive prefix sums (advanced as words are placed). */
static inline void softrank_scatter_pass(softrank_span<uint64_t> src, softrank_span<uint64_t> dst,
                                         Py_ssize_t n, int shift, uint64_t mask,
                                         softrank_span<uint32_t> offsets) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        const uint64_t k = src[i];
        const Py_ssize_t digit = (Py_ssize_t)((k >> shift) & mask);
        const uint32_t pos = offsets[digit];
        offsets[digit] = pos + 1;
        dst[pos] = k;
    }
}

/* LSD radix sort of the high 32 bits of the words ka[0:n) (the low 32 bits, the element's
   index, ride along and keep the sort stable); hist: the counts of each digit. Returns false
   if the result is in ka, true if it is in kb. A digit on which every key agrees is skipped
   (common for the exponent digit of similar-magnitude data). */
static inline bool softrank_radix_sort(softrank_span<uint64_t> ka, softrank_span<uint64_t> kb,
                                       Py_ssize_t n, softrank_span<uint32_t> hist) {
    const Py_ssize_t buckets = SOFTRANK_RADIX_BUCKETS;
    bool in_b = false;
    bool skip[SOFTRANK_RADIX_DIGITS];
    const uint64_t first_key = ka[0];
    for (int d = 0; d < SOFTRANK_RADIX_DIGITS; ++d)
        skip[d] = hist[d * buckets + ((first_key >> (32 + SOFTRANK_RADIX_BITS * d))
                                      & SOFTRANK_RADIX_MASK)] == (uint32_t)n;
    /* The exclusive prefix sums of all digits in one loop: independent add chains. */
    uint32_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (Py_ssize_t b = 0; b < buckets; ++b) {
        uint32_t c = hist[b];
        hist[b] = t0;
        t0 += c;
        c = hist[buckets + b];
        hist[buckets + b] = t1;
        t1 += c;
        c = hist[2 * buckets + b];
        hist[2 * buckets + b] = t2;
        t2 += c;
        c = hist[3 * buckets + b];
        hist[3 * buckets + b] = t3;
        t3 += c;
    }
    for (int d = 0; d < SOFTRANK_RADIX_DIGITS; ++d) {
        if (skip[d]) continue;
        if (in_b)
            softrank_scatter_pass(kb, ka, n, 32 + SOFTRANK_RADIX_BITS * d, SOFTRANK_RADIX_MASK,
                                  hist.sub(d * buckets, buckets));
        else
            softrank_scatter_pass(ka, kb, n, 32 + SOFTRANK_RADIX_BITS * d, SOFTRANK_RADIX_MASK,
                                  hist.sub(d * buckets, buckets));
        in_b = !in_b;
    }
    return in_b;
}

/* Words (softrank_word_of) of x[lo:hi) into ka[lo:hi), full float64 keys into full[lo:hi),
   every digit counted into hist (zeroed by the caller). Returns true if x[lo:hi) holds a NaN
   or an infinity. */
template <typename T>
static inline bool softrank_build_keys(softrank_span<const T> x, double sign,
                                       softrank_span<uint64_t> ka, softrank_span<uint64_t> full,
                                       softrank_span<uint32_t> hist, Py_ssize_t lo,
                                       Py_ssize_t hi) {
    bool nonfinite = false;
    for (Py_ssize_t j = lo; j < hi; ++j) {
        const double v = x[j];
        if (!(v - v == 0)) nonfinite = true;  /* NaN or +-inf */
        const uint64_t key = softrank_word_of(x[j], j, sign, full);
        for (int d = 0; d < SOFTRANK_RADIX_DIGITS; ++d)
            hist[d * SOFTRANK_RADIX_BUCKETS
                 + ((key >> (32 + SOFTRANK_RADIX_BITS * d)) & SOFTRANK_RADIX_MASK)] += 1;
        ka[j] = key;
    }
    return nonfinite;
}

/* Counts of the digit at shift of src[lo:hi) into hist (SOFTRANK_RADIX_BUCKETS counts). */
static inline void softrank_count_digit(softrank_span<uint64_t> src, Py_ssize_t lo,
                                        Py_ssize_t hi, int shift, softrank_span<uint32_t> hist) {
    memset(hist.ptr, 0, SOFTRANK_RADIX_BUCKETS * sizeof(uint32_t));
    for (Py_ssize_t j = lo; j < hi; ++j) hist[(src[j] >> shift) & SOFTRANK_RADIX_MASK] += 1;
}

/* ------------------------------------------------------------------ from words to the order */

/* perm and s of sorted float32 words [lo, hi). The float32 key is exact: decoding s from the
   sorted words (sequential reads) avoids gathering x[perm[j]] (random reads). s: float64, or
   float32 (softrank_f32_values in pav.h); an empty perm is not written (the sort modes' calls
   that want no partition never read it, and its pages then never become resident). */
template <typename V>
static inline void softrank_decode_words32(softrank_span<uint64_t> ka, softrank_span<int32_t> perm,
                                           softrank_span<V> s, Py_ssize_t lo, Py_ssize_t hi) {
    if (perm.len == 0) {
        for (Py_ssize_t j = lo; j < hi; ++j)
            s[j] = softrank_value_of_key32((uint32_t)(ka[j] >> 32));
        return;
    }
    for (Py_ssize_t j = lo; j < hi; ++j) {
        const uint64_t key = ka[j];
        perm[j] = (int32_t)(key & 0xFFFFFFFFu);
        s[j] = softrank_value_of_key32((uint32_t)(key >> 32));
    }
}

/* perm[lo:hi) of sorted float64 words. Returns true if a word in [lo, hi) has the high half
   of the word before it: a run that softrank_sort_equal_high_runs must sort (the branch-free
   test costs less than that function's scan). */
static inline bool softrank_perm_of_words(softrank_span<uint64_t> ka, softrank_span<int32_t> perm,
                                          Py_ssize_t lo, Py_ssize_t hi) {
    int shared = 0;
    for (Py_ssize_t j = lo; j < hi; ++j) perm[j] = (int32_t)(ka[j] & 0xFFFFFFFFu);
    for (Py_ssize_t j = std::max(lo, (Py_ssize_t)1); j < hi; ++j)
        shared |= ((ka[j] ^ ka[j - 1]) >> 32) == 0;
    return shared != 0;
}

/* Sort indices by their 64-bit key, ties by index (stable order). */
static inline void softrank_sort_by_key(const uint64_t *keys, int32_t *idx, Py_ssize_t n) {
    std::sort(idx, idx + n, [keys](int32_t a, int32_t b) {
        return keys[a] < keys[b] || (keys[a] == keys[b] && a < b);
    });
}

/* Sort by the full float64 key each run of sorted words with equal high halves that starts in
   [lo, hi) (a run that started before lo is its own starter's; a run may end past hi). */
static inline void softrank_sort_equal_high_runs(softrank_span<uint64_t> ka,
                                                 softrank_span<uint64_t> full,
                                                 softrank_span<int32_t> perm, Py_ssize_t lo,
                                                 Py_ssize_t hi) {
    const Py_ssize_t n = ka.len;
    Py_ssize_t j = lo;
    if (j > 0)
        while (j < hi && (ka[j] >> 32) == (ka[j - 1] >> 32)) j += 1;
    while (j < hi) {
        const uint64_t high = ka[j] >> 32;
        Py_ssize_t e = j + 1;
        while (e < n && (ka[e] >> 32) == high) e += 1;
        if (e - j > 1) softrank_sort_by_key(full.ptr, perm.sub(j, e - j).ptr, e - j);
        j = e;
    }
}

template <typename T>
static inline void softrank_gather_sorted(softrank_span<const T> x, double sign,
                                          softrank_span<int32_t> perm, softrank_span<double> s,
                                          Py_ssize_t lo, Py_ssize_t hi) {
    for (Py_ssize_t j = lo; j < hi; ++j) s[j] = sign * x[perm[j]];
}

/* perm and s of a row from its words sorted in ka: for float32 the word holds the whole key
   (s: float64, or float32 for softrank_f32_values); float64 rows then sort each run of equal
   high halves by the full key. */
template <typename V>
static inline void softrank_order_of_sorted_words(softrank_span<const float> x, double sign,
                                                  softrank_span<uint64_t> ka,
                                                  softrank_span<uint64_t> full,
                                                  softrank_span<int32_t> perm,
                                                  softrank_span<V> s) {
    (void)x; (void)sign; (void)full;
    softrank_decode_words32(ka, perm, s, 0, x.len);
}

static inline void softrank_order_of_sorted_words(softrank_span<const double> x, double sign,
                                                  softrank_span<uint64_t> ka,
                                                  softrank_span<uint64_t> full,
                                                  softrank_span<int32_t> perm,
                                                  softrank_span<double> s) {
    const Py_ssize_t n = x.len;
    if (softrank_perm_of_words(ka, perm, 0, n)) softrank_sort_equal_high_runs(ka, full, perm, 0, n);
    softrank_gather_sorted(x, sign, perm, s, 0, n);
}

/* ------------------------------------------------------------------------------- kernels */

/* The sort words of x into ka (full float64 keys into full); true if x holds a NaN or an
   infinity. */
template <typename T>
static inline bool softrank_words_of_row(softrank_span<const T> x, double sign,
                                         softrank_span<uint64_t> ka,
                                         softrank_span<uint64_t> full) {
    bool nonfinite = false;
    for (Py_ssize_t j = 0; j < x.len; ++j) {
        const double v = x[j];
        if (!(v - v == 0)) nonfinite = true;  /* NaN or +-inf */
        ka[j] = softrank_word_of(x[j], j, sign, full);
    }
    return nonfinite;
}

/* The radix argsort; V: the type of s (float32 rows may keep float32 values, perm then
   possibly empty: not written, softrank_decode_words32). */
template <typename T, typename V = double>
static inline bool softrank_radix_argsort(softrank_span<const T> x, double sign,
                                          softrank_span<uint64_t> ka, softrank_span<uint64_t> kb,
                                          softrank_span<uint64_t> full,
                                          softrank_span<uint32_t> hist,
                                          softrank_span<int32_t> perm, softrank_span<V> s) {
    memset(hist.ptr, 0, SOFTRANK_RADIX_DIGITS * SOFTRANK_RADIX_BUCKETS * sizeof(uint32_t));
    if (softrank_build_keys<T>(x, sign, ka, full, hist, 0, x.len)) return true;
    if (softrank_radix_sort(ka, kb, x.len, hist)) ka = kb;
    softrank_order_of_sorted_words(x, sign, ka, full, perm, s);
    return false;
}

/* The sorting network on the words (rows that softrank_network_sorts). */
template <typename T>
static inline bool softrank_network_argsort(softrank_span<const T> x, double sign,
                                            softrank_span<uint64_t> ka,
                                            softrank_span<uint64_t> full,
                                            softrank_span<int32_t> perm,
                                            softrank_span<double> s) {
    if (softrank_words_of_row(x, sign, ka, full)) return true;
    softrank_sort_words_by_network(ka.ptr, x.len);
    softrank_order_of_sorted_words(x, sign, ka, full, perm, s);
    return false;
}

/* std::sort of the words: the general comparison sort, which the debug entry point can force
   (benchmarks/bench_sort_kernels.py measures the kernels against it). */
template <typename T>
static inline bool softrank_std_argsort(softrank_span<const T> x, double sign,
                                        softrank_span<uint64_t> ka, softrank_span<uint64_t> full,
                                        softrank_span<int32_t> perm, softrank_span<double> s) {
    if (softrank_words_of_row(x, sign, ka, full)) return true;
    std::sort(ka.ptr, ka.ptr + x.len);
    softrank_order_of_sorted_words(x, sign, ka, full, perm, s);
    return false;
}

/* Counting ranks (short rows): float32 keys are 32-bit words in the space of ka. */
static inline bool softrank_counting_argsort(softrank_span<const float> x, double sign,
                                             softrank_span<uint64_t> ka,
                                             softrank_span<int32_t> perm,
                                             softrank_span<double> s) {
    const Py_ssize_t n = x.len;
    softrank_span<uint32_t> keys32((uint32_t *)ka.ptr, 2 * ka.len);
    bool nonfinite = false;
    for (Py_ssize_t j = 0; j < n; ++j) {
        const double v = x[j];
        if (!(v - v == 0)) nonfinite = true;
        keys32[j] = (uint32_t)softrank_descending_key32((float)(sign * v));
    }
    if (nonfinite) return true;
    softrank_rank_by_counting32(keys32.ptr, x.ptr, sign, perm.ptr, s.ptr, n);
    return false;
}

static inline bool softrank_counting_argsort(softrank_span<const double> x, double sign,
                                             softrank_span<uint64_t> ka,
                                             softrank_span<int32_t> perm,
                                             softrank_span<double> s) {
    const Py_ssize_t n = x.len;
    bool nonfinite = false;
    for (Py_ssize_t j = 0; j < n; ++j) {
        const double v = x[j];
        if (!(v - v == 0)) nonfinite = true;
        ka[j] = softrank_descending_key64(sign * v);
    }
    if (nonfinite) return true;
    softrank_rank_by_counting(ka.ptr, x.ptr, sign, perm.ptr, s.ptr, n);
    return false;
}

/* ------------------------------------------------------------------------------ dispatch */

enum {
    SOFTRANK_SORT_AUTO = 0,
    SOFTRANK_SORT_COUNTING = 1,
    SOFTRANK_SORT_NETWORK = 2,
    SOFTRANK_SORT_RADIX = 3,
    SOFTRANK_SORT_STD = 4,
};

/* The kernel every row gets, if not SOFTRANK_SORT_AUTO (debug entry point only), where that
   kernel can sort the row: counting up to its limit, the network up to its size. */
static int softrank_forced_sort_kernel = SOFTRANK_SORT_AUTO;

template <typename T>
static inline int softrank_sort_kernel_for(Py_ssize_t n) {
    const int counting_max = sizeof(T) == 4 ? softrank_counting_max_f32 : softrank_counting_max_f64;
    const int forced = softrank_forced_sort_kernel;
    if (forced != SOFTRANK_SORT_AUTO && (forced != SOFTRANK_SORT_COUNTING || n <= counting_max)
        && (forced != SOFTRANK_SORT_NETWORK || n <= softrank_network_max))
        return forced;
    if (n <= counting_max) return SOFTRANK_SORT_COUNTING;
    if (softrank_network_sorts(n)) return SOFTRANK_SORT_NETWORK;
    return SOFTRANK_SORT_RADIX;
}

/* perm <- indices of sign*x in decreasing order (stable), s <- the sorted sign*x. Returns true
   if the row holds a NaN or an infinity (perm and s are then not filled). ka, kb, full: n
   words each; hist: the radix histograms (SOFTRANK_HIST_WORDS words). */
template <typename T>
static inline bool softrank_argsort_row(softrank_span<const T> x, double sign,
                                        softrank_span<uint64_t> ka, softrank_span<uint64_t> kb,
                                        softrank_span<uint64_t> full,
                                        softrank_span<uint32_t> hist,
                                        softrank_span<int32_t> perm, softrank_span<double> s) {
    switch (softrank_sort_kernel_for<T>(x.len)) {
    case SOFTRANK_SORT_COUNTING: return softrank_counting_argsort(x, sign, ka, perm, s);
    case SOFTRANK_SORT_NETWORK: return softrank_network_argsort(x, sign, ka, full, perm, s);
    case SOFTRANK_SORT_STD: return softrank_std_argsort(x, sign, ka, full, perm, s);
    default: return softrank_radix_argsort(x, sign, ka, kb, full, hist, perm, s);
    }
}

#endif  /* SOFTRANK_ARGSORT_H */
