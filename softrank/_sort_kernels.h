/* Row sorting helpers of softrank/_cpu.pyx that are plain C++: std::sort by key, counting ranks. */
#ifndef SOFTRANK_SORT_KERNELS_H
#define SOFTRANK_SORT_KERNELS_H

#include <Python.h>
#include <algorithm>
#include <stdint.h>
/* float64 rows: sort indices by their 64-bit key, ties by index (stable order). */
static inline void softrank_sort_by_key(const uint64_t *keys, int32_t *idx, Py_ssize_t n) {
    std::sort(idx, idx + n, [keys](int32_t a, int32_t b) {
        return keys[a] < keys[b] || (keys[a] == keys[b] && a < b);
    });
}
/* Short rows: the position of key i is the number of keys ordered before it (ties by
   index). O(n^2) compares but branch-free: on short rows the mispredicted branches of a
   comparison sort cost more than these compares. Writes perm directly. On x86-64 Linux with
   GCC an AVX-512 (x86-64-v4: 16 float32 or 8 float64 key compares per instruction) or AVX2
   clone (8 or 4) is chosen at load time, and longer rows are then ranked this way
   (softrank_counting_max). Count is the counter's type: 32-bit counters for 32-bit keys keep
   the counts in the keys' lanes (17-24% faster with AVX2 at n = 64-96); 64-bit keys keep
   64-bit counters (32-bit ones cost AVX2 a narrowing per compare: 10-20% slower). */
template <typename Key, typename Count>
static inline __attribute__((always_inline)) void softrank_count_ranks(
        const Key *keys, int32_t *perm, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        const Key k = keys[i];
        Count before = 0;
        for (Py_ssize_t j = 0; j < i; ++j) before += keys[j] <= k;
        for (Py_ssize_t j = i + 1; j < n; ++j) before += keys[j] < k;
        perm[before] = (int32_t)i;
    }
}
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define SOFTRANK_AVX2_CLONES 1
#define SOFTRANK_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
static const int softrank_cpu_dispatch = 1;
#else
#define SOFTRANK_CLONES
static const int softrank_cpu_dispatch = 0;
#endif

#ifdef SOFTRANK_AVX2_CLONES
#include <immintrin.h>
static int softrank_has_avx512 = 0;
/* Rows of up to 16 keys with AVX-512: all keys in one (float32) or two (float64) registers,
   each key's position a popcount of two compare masks (no loop over the other keys, whose
   short trip counts cost the general loop most of its time: rows of 10-16 ranked 25-30%
   faster). */
__attribute__((target("avx512f"))) static void softrank_rank16_32(
        const uint32_t *keys, int32_t *perm, Py_ssize_t n) {
    const __mmask16 valid = (__mmask16)((1u << n) - 1);
    const __m512i all = _mm512_maskz_loadu_epi32(valid, keys);
    for (int i = 0; i < (int)n; ++i) {
        const __m512i k = _mm512_set1_epi32((int)keys[i]);
        const unsigned below = (1u << i) - 1;  /* positions j < i: ties count */
        const unsigned le = _mm512_mask_cmple_epu32_mask(valid, all, k);
        const unsigned lt = _mm512_mask_cmplt_epu32_mask(valid, all, k);
        perm[__builtin_popcount((le & below) | (lt & ~below))] = i;
    }
}
__attribute__((target("avx512f"))) static void softrank_rank16_64(
        const uint64_t *keys, int32_t *perm, Py_ssize_t n) {
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
        perm[__builtin_popcount((le & below) | (lt & ~below))] = i;
    }
}
/* Longer float32 rows with AVX-512: the keys in blocks of one register; a key's position is
   the sum of the popcounts of its compare masks, "<=" on the blocks before it (ties in index
   order), "<" after, both in its own block. No horizontal sums or scalar tails (the general
   loop's cost): one thread ranks rows of 100-320 13-34% faster than the general loop or the
   radix sort; with two threads on the two hyperthreads of this project's VM the radix sort
   catches up by ~220, so counting ranks float32 rows up to 192 elements with AVX-512. */
__attribute__((target("avx512f,popcnt"))) static void softrank_rank_masked32(
        const uint32_t *keys, int32_t *perm, Py_ssize_t n) {
    const Py_ssize_t blocks = (n + 15) / 16;
    const __mmask16 last = (__mmask16)(n % 16 ? (1u << (n % 16)) - 1 : 0xFFFFu);
    for (Py_ssize_t i = 0; i < n; ++i) {
        const __m512i k = _mm512_set1_epi32((int)keys[i]);
        const Py_ssize_t own = i / 16;
        int before = 0;
        for (Py_ssize_t b = 0; b < own; ++b)
            before += __builtin_popcount(
                _mm512_cmple_epu32_mask(_mm512_loadu_si512(keys + 16 * b), k));
        {
            const __mmask16 valid = own == blocks - 1 ? last : (__mmask16)0xFFFFu;
            const __m512i v = _mm512_maskz_loadu_epi32(valid, keys + 16 * own);
            const unsigned below = (1u << (i % 16)) - 1;
            const unsigned le = _mm512_mask_cmple_epu32_mask(valid, v, k);
            const unsigned lt = _mm512_mask_cmplt_epu32_mask(valid, v, k);
            before += __builtin_popcount((le & below) | (lt & ~below));
        }
        for (Py_ssize_t b = own + 1; b < blocks; ++b) {
            const __mmask16 valid = b == blocks - 1 ? last : (__mmask16)0xFFFFu;
            before += __builtin_popcount(_mm512_mask_cmplt_epu32_mask(
                valid, _mm512_maskz_loadu_epi32(valid, keys + 16 * b), k));
        }
        perm[before] = (int32_t)i;
    }
}
#endif
/* float32 keys compare as 32-bit words, float64 keys as 64-bit ones. */
SOFTRANK_CLONES static void softrank_rank_by_counting32_any(const uint32_t *keys,
                                                            int32_t *perm, Py_ssize_t n) {
    softrank_count_ranks<uint32_t, int32_t>(keys, perm, n);
}
SOFTRANK_CLONES static void softrank_rank_by_counting_any(const uint64_t *keys,
                                                          int32_t *perm, Py_ssize_t n) {
    softrank_count_ranks<uint64_t, int64_t>(keys, perm, n);
}
static inline void softrank_rank_by_counting32(const uint32_t *keys, int32_t *perm,
                                               Py_ssize_t n) {
#ifdef SOFTRANK_AVX2_CLONES
    if (softrank_has_avx512) {
        if (n <= 16) softrank_rank16_32(keys, perm, n);
        else softrank_rank_masked32(keys, perm, n);
        return;
    }
#endif
    softrank_rank_by_counting32_any(keys, perm, n);
}
static inline void softrank_rank_by_counting(const uint64_t *keys, int32_t *perm,
                                             Py_ssize_t n) {
#ifdef SOFTRANK_AVX2_CLONES
    if (n <= 16 && softrank_has_avx512) { softrank_rank16_64(keys, perm, n); return; }
#endif
    softrank_rank_by_counting_any(keys, perm, n);
}
/* Longest rows ranked by counting, float32 and float64 (radix sorted above): crossovers
   measured against the radix sort, interleaved in one process. */
static int softrank_counting_max_f32 = 32;
static int softrank_counting_max_f64 = 48;
static void softrank_choose_counting_max(void) {
#ifdef SOFTRANK_AVX2_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) {  /* the AVX-512 clone */
        softrank_has_avx512 = 1;
        softrank_counting_max_f32 = 192;
        softrank_counting_max_f64 = 112;
    } else if (__builtin_cpu_supports("avx2")) {
        softrank_counting_max_f32 = 96;
        softrank_counting_max_f64 = 120;
    }
#endif
}

#endif  /* SOFTRANK_SORT_KERNELS_H */
