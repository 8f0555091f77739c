/* sort_kernels.h: the short-row kernels of softrank/csrc/argsort.h, chosen for this CPU at
   import (softrank_choose_kernels): counting ranks and the sorting network
   (softrank/csrc/bitonic_network.h).

   Counting ranks: the position of key i is the number of keys ordered before it (ties by
   index). O(n^2) compares but branch-free: on short rows the mispredicted branches of a
   comparison sort cost more than these compares. It writes perm and the sorted values s
   (sign * x, as double) directly, so no gather waits on perm's fresh stores. On x86-64 Linux
   with GCC, a CPU with AVX-512 (x86-64-v4) ranks rows of up to 16 in registers; without it an
   AVX2 clone of the loop (8 float32 or 4 float64 key compares per instruction) is chosen at
   load time. Count is the counter's type: 32-bit counters for 32-bit keys keep the counts in
   the keys' lanes; 64-bit keys keep 64-bit counters (32-bit ones would cost AVX2 a narrowing
   per compare). docs/PERFORMANCE.md has the measurements behind the length limits. */
#ifndef SOFTRANK_SORT_KERNELS_H
#define SOFTRANK_SORT_KERNELS_H

#include <Python.h>
#include <stdint.h>
template <typename Key, typename Count, typename Value>
static inline __attribute__((always_inline)) void softrank_count_ranks(
        const Key *keys, const Value *x, double sign, int32_t *perm, double *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        const Key k = keys[i];
        Count before = 0;
        for (Py_ssize_t j = 0; j < i; ++j) before += keys[j] <= k;
        for (Py_ssize_t j = i + 1; j < n; ++j) before += keys[j] < k;
        perm[before] = (int32_t)i;
        s[before] = sign * (double)x[i];
    }
}
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define SOFTRANK_AVX2_CLONES 1
#define SOFTRANK_CLONES __attribute__((target_clones("avx2", "default")))
static const int softrank_cpu_dispatch = 1;
#else
#define SOFTRANK_CLONES
static const int softrank_cpu_dispatch = 0;
#endif

/* Whether the AVX-512 kernels are in use (softrank_choose_kernels). */
static int softrank_has_avx512 = 0;
#ifdef SOFTRANK_AVX2_CLONES
#include <immintrin.h>
#include "bitonic_network.h"
/* Rows of up to 16 keys with AVX-512: all keys in one (float32) or two (float64) registers,
   each key's position a popcount of two compare masks (no loop over the other keys, whose
   short trip counts dominate the general loop on such rows). */
__attribute__((target("avx512f"))) static void softrank_rank16_32(
        const uint32_t *keys, const float *x, double sign, int32_t *perm, double *s,
        Py_ssize_t n) {
    const __mmask16 valid = (__mmask16)((1u << n) - 1);
    const __m512i all = _mm512_maskz_loadu_epi32(valid, keys);
    for (int i = 0; i < (int)n; ++i) {
        const __m512i k = _mm512_set1_epi32((int)keys[i]);
        const unsigned below = (1u << i) - 1;  /* positions j < i: ties count */
        const unsigned le = _mm512_mask_cmple_epu32_mask(valid, all, k);
        const unsigned lt = _mm512_mask_cmplt_epu32_mask(valid, all, k);
        const int before = __builtin_popcount((le & below) | (lt & ~below));
        perm[before] = i;
        s[before] = sign * (double)x[i];
    }
}
__attribute__((target("avx512f"))) static void softrank_rank16_64(
        const uint64_t *keys, const double *x, double sign, int32_t *perm, double *s,
        Py_ssize_t n) {
    const unsigned valid = (1u << n) - 1;
    const __m512i lo = _mm512_maskz_loadu_epi64((__mmask8)(valid & 0xFF), keys);
    const __m512i hi = _mm512_maskz_loadu_epi64((__mmask8)(valid >> 8), keys + 8);
    for (int i = 0; i < (int)n; ++i) {
        const __m512i k = _mm512_set1_epi64((long long)keys[i]);
        const unsigned below = (1u << i) - 1;
        const unsigned le =
            _mm512_mask_cmple_epu64_mask((__mmask8)(valid & 0xFF), lo, k)
            | ((unsigned)_mm512_mask_cmple_epu64_mask((__mmask8)(valid >> 8), hi, k) << 8);
        const unsigned lt =
            _mm512_mask_cmplt_epu64_mask((__mmask8)(valid & 0xFF), lo, k)
            | ((unsigned)_mm512_mask_cmplt_epu64_mask((__mmask8)(valid >> 8), hi, k) << 8);
        const int before = __builtin_popcount((le & below) | (lt & ~below));
        perm[before] = i;
        s[before] = sign * x[i];
    }
}
#endif
/* float32 keys compare as 32-bit words, float64 keys as 64-bit ones. */
SOFTRANK_CLONES static void softrank_rank_by_counting32_any(
        const uint32_t *keys, const float *x, double sign, int32_t *perm, double *s,
        Py_ssize_t n) {
    softrank_count_ranks<uint32_t, int32_t>(keys, x, sign, perm, s, n);
}
SOFTRANK_CLONES static void softrank_rank_by_counting_any(
        const uint64_t *keys, const double *x, double sign, int32_t *perm, double *s,
        Py_ssize_t n) {
    softrank_count_ranks<uint64_t, int64_t>(keys, x, sign, perm, s, n);
}
/* perm <- the order of the keys of x (float32 rows), s <- sign * x in that order. */
static inline void softrank_rank_by_counting32(const uint32_t *keys, const float *x,
                                               double sign, int32_t *perm, double *s,
                                               Py_ssize_t n) {
#ifdef SOFTRANK_AVX2_CLONES
    if (softrank_has_avx512) {
        softrank_rank16_32(keys, x, sign, perm, s, n);
        return;
    }
#endif
    softrank_rank_by_counting32_any(keys, x, sign, perm, s, n);
}
/* The same for float64 rows. */
static inline void softrank_rank_by_counting(const uint64_t *keys, const double *x,
                                             double sign, int32_t *perm, double *s,
                                             Py_ssize_t n) {
#ifdef SOFTRANK_AVX2_CLONES
    if (softrank_has_avx512) {
        softrank_rank16_64(keys, x, sign, perm, s, n);
        return;
    }
#endif
    softrank_rank_by_counting_any(keys, x, sign, perm, s, n);
}
/* Longest rows ranked by counting, float32 and float64, and longest rows sorted by the
   network (0: none; longer rows are radix sorted), at the crossovers of docs/PERFORMANCE.md
   ("Native sort kernels"). With AVX-512
   the network sorts the rows longer than 16, but for 513-640; with AVX2 those longer than 24.
   Without AVX2 counting ranks rows of up to 32 float32 or 48 float64 elements. */
static int softrank_counting_max_f32 = 32;
static int softrank_counting_max_f64 = 48;
static int softrank_network_max = 0;
/* Whether the network sorts rows of n: up to softrank_network_max, except those that would
   fill at most 5/8 of the AVX-512 network of 1024 words (513-640: mostly padding, work the
   radix sort does not do). */
static inline int softrank_network_sorts(Py_ssize_t n) {
    if (n > softrank_network_max) return 0;
    if (softrank_has_avx512 && n > 512) return n > 1024 / 8 * 5;
    return 1;
}
/* words[0:n) sorted ascending, softrank_network_sorts(n). */
static inline void softrank_sort_words_by_network(uint64_t *words, Py_ssize_t n) {
#ifdef SOFTRANK_AVX2_CLONES
    if (softrank_has_avx512) softrank_bitonic_sort(words, n);
    else softrank_bitonic_sort_avx2(words, n);
#else
    (void)words; (void)n;
#endif
}
/* Picks the kernels for this CPU (at import); allow_avx512 = 0 keeps to those of a CPU without
   AVX-512 (tests run both sets). Returns softrank_has_avx512. */
static int softrank_choose_kernels(int allow_avx512) {
    softrank_has_avx512 = 0;
    softrank_counting_max_f32 = 32;
    softrank_counting_max_f64 = 48;
    softrank_network_max = 0;
#ifdef SOFTRANK_AVX2_CLONES
    __builtin_cpu_init();
    if (allow_avx512 && __builtin_cpu_supports("x86-64-v4")) {
        softrank_has_avx512 = 1;
        softrank_counting_max_f32 = 16;
        softrank_counting_max_f64 = 16;
        softrank_network_max = SOFTRANK_BITONIC_MAX;
    } else if (__builtin_cpu_supports("avx2")) {  /* the AVX2 clone of the counting loop */
        softrank_counting_max_f32 = 24;
        softrank_counting_max_f64 = 24;
        softrank_network_max = SOFTRANK_BITONIC_MAX_AVX2;
    }
#else
    (void)allow_avx512;
#endif
    return softrank_has_avx512;
}

#endif  /* SOFTRANK_SORT_KERNELS_H */
