/* bitonic_network.h: sorting networks for short rows (softrank/csrc/sort_kernels.h dispatches
   to them): 64-bit sort words (softrank/csrc/argsort.h: a row's order-preserving key in the
   high 32 bits, the element's index in the low 32) sorted ascending, all words in registers,
   by a bitonic network: 8 words per register with AVX-512, 4 with AVX2. Words are unique (the
   index), so the order is the stable one and no tie rule is needed.

   The network, for 8V words in V registers of 8 lanes: for each block size k = 2, 4, ..., 8V,
   compare each element of a block's first half with its mirror image in the second half (both
   halves are sorted, so this leaves two bitonic halves, every element of the first no greater
   than any of the second), then clean each half with compare-exchanges at distances k/4, ...,
   1. Distances of a register's width or more pair whole registers; shorter ones pair lanes of
   one register through a permutation (4 operations per register, against 1 for a pair of
   registers). From 64 words, the AVX-512 network therefore places the words column-major
   (softrank_column_network): it sorts the 8 lanes' columns of V words with register pairs
   only, merges the columns (6 lane layers in all, against 3 per block size), and transposes
   8x8 tiles on the way out. The AVX2 network is column-major too (4x4 tiles).

   Deviation from the textbook network: rows shorter than the network are padded with
   all-ones words, which sort last and are not stored back. */
#ifndef SOFTRANK_BITONIC_SORT_H
#define SOFTRANK_BITONIC_SORT_H

#include <Python.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SOFTRANK_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) static inline

/* The all-lanes masked forms of the intrinsics: GCC 12's unmasked ones start from an
   "undefined" register that -Wall reports as maybe uninitialized (GCC bug 105593). */
#define SOFTRANK_ALL_LANES ((__mmask8)0xFF)
SOFTRANK_AVX512_INLINE __m512i softrank_min(__m512i a, __m512i b) {
    return _mm512_maskz_min_epu64(SOFTRANK_ALL_LANES, a, b);
}
SOFTRANK_AVX512_INLINE __m512i softrank_max(__m512i a, __m512i b) {
    return _mm512_maskz_max_epu64(SOFTRANK_ALL_LANES, a, b);
}

/* Lane i of the result is lane i ^ distance of a. */
SOFTRANK_AVX512_INLINE __m512i softrank_lanes_xor(__m512i a, int distance) {
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_maskz_permutexvar_epi64(
        SOFTRANK_ALL_LANES, _mm512_xor_si512(lanes, _mm512_set1_epi64(distance)), a);
}

/* Compare-exchange of each lane i with lane i ^ distance: the lanes of upper (those with the
   distance's top bit set) keep the larger word, the others the smaller. */
SOFTRANK_AVX512_INLINE __m512i softrank_exchange_lanes(__m512i a, int distance,
                                                       __mmask8 upper) {
    const __m512i b = softrank_lanes_xor(a, distance);
    return _mm512_mask_blend_epi64(upper, softrank_min(a, b), softrank_max(a, b));
}

/* Lanes with bit 0, 1 or 2 of their index set. */
#define SOFTRANK_LANES_BIT0 ((__mmask8)0xAA)
#define SOFTRANK_LANES_BIT1 ((__mmask8)0xCC)
#define SOFTRANK_LANES_BIT2 ((__mmask8)0xF0)

template <int V>
SOFTRANK_AVX512_INLINE void softrank_clean_lanes(__m512i *v) {
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 4, SOFTRANK_LANES_BIT2);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 2, SOFTRANK_LANES_BIT1);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 1, SOFTRANK_LANES_BIT0);
}

template <int V>
SOFTRANK_AVX512_INLINE void softrank_bitonic_network(__m512i *v) {
    /* Blocks of 2, 4 and 8 lie inside a register: mirrors are lanes i ^ (k - 1). */
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 1, SOFTRANK_LANES_BIT0);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 3, SOFTRANK_LANES_BIT1);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 1, SOFTRANK_LANES_BIT0);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 7, SOFTRANK_LANES_BIT2);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 2, SOFTRANK_LANES_BIT1);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes(v[p], 1, SOFTRANK_LANES_BIT0);
    /* Blocks of kv registers: the mirror of register p is register kv - 1 - p, lanes reversed. */
#pragma GCC unroll 8
    for (int kv = 2; kv <= V; kv *= 2) {
        for (int b = 0; b < V; b += kv)
            for (int p = 0; p < kv / 2; ++p) {
                const __m512i low = v[b + p];
                const __m512i high = softrank_lanes_xor(v[b + kv - 1 - p], 7);
                v[b + p] = softrank_min(low, high);
                v[b + kv - 1 - p] = softrank_lanes_xor(softrank_max(low, high), 7);
            }
        for (int jv = kv / 4; jv >= 1; jv /= 2)
            for (int b = 0; b < V; b += 2 * jv)
                for (int p = b; p < b + jv; ++p) {
                    const __m512i low = v[p], high = v[p + jv];
                    v[p] = softrank_min(low, high);
                    v[p + jv] = softrank_max(low, high);
                }
        softrank_clean_lanes<V>(v);
    }
}

/* v = words[0:n), n <= 8V, padded with all-ones words (no real word is: its index is below
   n), so that they sort last. */
template <int V>
SOFTRANK_AVX512_INLINE void softrank_load_padded(const uint64_t *words, Py_ssize_t n,
                                                 __m512i *v) {
    const __m512i padding = _mm512_set1_epi64(-1);
    for (int p = 0; p < V; ++p) {
        const Py_ssize_t left = n - 8 * p;
        const __mmask8 valid = left >= 8 ? (__mmask8)0xFF
                               : left <= 0 ? (__mmask8)0 : (__mmask8)((1u << left) - 1);
        v[p] = _mm512_mask_loadu_epi64(padding, valid, words + 8 * p);
    }
}

/* Sort words[0:n) ascending, n <= 8V: loaded padded, sorted in registers, the first n stored
   back. */
template <int V>
__attribute__((target("avx512f"))) static void softrank_bitonic_sort_v(uint64_t *words,
                                                                        Py_ssize_t n) {
    __m512i v[V];
    softrank_load_padded<V>(words, n, v);
    softrank_bitonic_network<V>(v);
    for (int p = 0; p < V; ++p) {
        const Py_ssize_t left = n - 8 * p;
        if (left <= 0) break;
        _mm512_mask_storeu_epi64(words + 8 * p,
                                 left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1), v[p]);
    }
}

/* 128-bit blocks of a and b chosen by imm (_mm512_shuffle_i64x2, all-lanes masked form). */
#define softrank_blocks(a, b, imm) _mm512_maskz_shuffle_i64x2(SOFTRANK_ALL_LANES, a, b, imm)

/* t[l] lane i = v[i] lane l: an 8x8 transpose of words (unpacks, then two rounds of 128-bit
   block shuffles). */
SOFTRANK_AVX512_INLINE void softrank_transpose8(const __m512i *v, __m512i *t) {
    __m512i a[8], c[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm512_maskz_unpacklo_epi64(SOFTRANK_ALL_LANES, v[i], v[i + 1]);  /* lanes 0 2 4 6 */
        a[i + 1] = _mm512_maskz_unpackhi_epi64(SOFTRANK_ALL_LANES, v[i], v[i + 1]);  /* 1 3 5 7 */
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; ++h) {
            c[i + h] = softrank_blocks(a[i + h], a[i + 2 + h], 0x88);
            c[i + 2 + h] = softrank_blocks(a[i + h], a[i + 2 + h], 0xDD);
        }
    for (int h = 0; h < 4; ++h) {
        t[h] = softrank_blocks(c[h], c[h + 4], 0x88);
        t[h + 4] = softrank_blocks(c[h], c[h + 4], 0xDD);
    }
}

/* Lanes whose index has bit d (1, 2 or 4) set. */
SOFTRANK_AVX512_INLINE __mmask8 softrank_lanes_with_bit(int d) {
    return d == 1 ? SOFTRANK_LANES_BIT0 : d == 2 ? SOFTRANK_LANES_BIT1 : SOFTRANK_LANES_BIT2;
}

/* Half-cleaners between registers at distances from, from / 2, ..., 1. */
template <int V>
SOFTRANK_AVX512_INLINE void softrank_clean_registers(__m512i *v, int from) {
    for (int jv = from; jv >= 1; jv /= 2)
        for (int b = 0; b < V; b += 2 * jv)
            for (int p = b; p < b + jv; ++p) {
                const __m512i low = v[p], high = v[p + jv];
                v[p] = softrank_min(low, high);
                v[p + jv] = softrank_max(low, high);
            }
}

/* The bitonic network on 8V words laid out column-major: the word in lane l of register r
   ends at sorted position l * V + r. */
template <int V>
SOFTRANK_AVX512_INLINE void softrank_column_network(__m512i *v) {
    /* Each lane's column of V words, sorted by register pairs alone. */
    for (int kv = 2; kv <= V; kv *= 2) {
        for (int b = 0; b < V; b += kv)
            for (int p = 0; p < kv / 2; ++p) {
                const __m512i low = v[b + p], high = v[b + kv - 1 - p];
                v[b + p] = softrank_min(low, high);
                v[b + kv - 1 - p] = softrank_max(low, high);
            }
        softrank_clean_registers<V>(v, kv / 4);
    }
    /* Blocks of kl columns: the mirror of (lane l, register r) is (lane l ^ (kl - 1),
       register V - 1 - r); the lanes of a block's upper half keep the larger word. Then
       half-cleaners between lanes (distances of V words or more), then between registers. */
    for (int kl = 2; kl <= 8; kl *= 2) {
        const __mmask8 upper = softrank_lanes_with_bit(kl / 2);
        for (int r = 0; r < V / 2; ++r) {
            const __m512i x = v[r], y = softrank_lanes_xor(v[V - 1 - r], kl - 1);
            const __m512i low = softrank_min(x, y), high = softrank_max(x, y);
            v[r] = _mm512_mask_blend_epi64(upper, low, high);
            v[V - 1 - r] = softrank_lanes_xor(_mm512_mask_blend_epi64(upper, high, low), kl - 1);
        }
        for (int d = kl / 4; d >= 1; d /= 2)
            for (int r = 0; r < V; ++r)
                v[r] = softrank_exchange_lanes(v[r], d, softrank_lanes_with_bit(d));
        softrank_clean_registers<V>(v, V / 2);
    }
}

/* Sort words[0:n) ascending, 32 < n <= 8V, V >= 8: loaded padded, sorted column-major in
   registers, the first n stored back through 8x8 transposes. */
template <int V>
__attribute__((target("avx512f"))) static void softrank_column_sort_v(uint64_t *words,
                                                                       Py_ssize_t n) {
    __m512i v[V];
    softrank_load_padded<V>(words, n, v);
    softrank_column_network<V>(v);
    for (int b = 0; b < V; b += 8) {
        __m512i t[8];
        softrank_transpose8(v + b, t);
        for (int l = 0; l < 8; ++l) {
            const Py_ssize_t at = (Py_ssize_t)l * V + b, left = n - at;
            if (left <= 0) continue;
            _mm512_mask_storeu_epi64(
                words + at, left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1), t[l]);
        }
    }
}

/* Longest row sorted by the AVX-512 network. Its 64 and 128 registers of 8 words spill (the
   CPU has 32); they are kept where they beat the radix sort (docs/PERFORMANCE.md).
   A row that fills at most 5/8 of the 1024-word network is radix sorted instead
   (softrank_network_sorts in softrank/csrc/sort_kernels.h). */
#define SOFTRANK_BITONIC_MAX 1024

/* words[0:n) sorted ascending, 0 < n <= SOFTRANK_BITONIC_MAX, on a CPU with AVX-512F. */
static void softrank_bitonic_sort(uint64_t *words, Py_ssize_t n) {
    if (n <= 32) softrank_bitonic_sort_v<4>(words, n);
    else if (n <= 64) softrank_column_sort_v<8>(words, n);
    else if (n <= 128) softrank_column_sort_v<16>(words, n);
    else if (n <= 256) softrank_column_sort_v<32>(words, n);
    else if (n <= 512) softrank_column_sort_v<64>(words, n);
    else softrank_column_sort_v<128>(words, n);
}

/* AVX2: 4 words per register. AVX2 has no unsigned 64-bit min/max: words enter with their top
   bit flipped, so that signed compares order them as unsigned ones, and leave flipped back. */
#define SOFTRANK_AVX2_INLINE __attribute__((target("avx2"), always_inline)) static inline

SOFTRANK_AVX2_INLINE __m256i softrank_min4(__m256i a, __m256i b) {
    return _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(a, b));
}
SOFTRANK_AVX2_INLINE __m256i softrank_max4(__m256i a, __m256i b) {
    return _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(a, b));
}

/* Lane orders of _mm256_permute4x64_epi64: lanes i ^ 1, i ^ 2, i ^ 3 (reversed). */
#define SOFTRANK_LANES4_XOR1 0xB1
#define SOFTRANK_LANES4_XOR2 0x4E
#define SOFTRANK_LANES4_REVERSED 0x1B

/* Compare-exchange of each lane with its partner in order LANES; the lanes of UPPER (a 32-bit
   blend mask: 0xCC lanes 1 and 3, 0xF0 lanes 2 and 3) keep the larger word. */
template <int LANES, int UPPER>
SOFTRANK_AVX2_INLINE __m256i softrank_exchange_lanes4(__m256i a) {
    const __m256i b = _mm256_permute4x64_epi64(a, LANES);
    return _mm256_blend_epi32(softrank_min4(a, b), softrank_max4(a, b), UPPER);
}

/* t[l] lane i = v[i] lane l: a 4x4 transpose of words. */
SOFTRANK_AVX2_INLINE void softrank_transpose4(const __m256i *v, __m256i *t) {
    const __m256i a0 = _mm256_unpacklo_epi64(v[0], v[1]);  /* lanes 0 and 2 of both */
    const __m256i a1 = _mm256_unpackhi_epi64(v[0], v[1]);  /* lanes 1 and 3 */
    const __m256i a2 = _mm256_unpacklo_epi64(v[2], v[3]);
    const __m256i a3 = _mm256_unpackhi_epi64(v[2], v[3]);
    t[0] = _mm256_permute2x128_si256(a0, a2, 0x20);
    t[1] = _mm256_permute2x128_si256(a1, a3, 0x20);
    t[2] = _mm256_permute2x128_si256(a0, a2, 0x31);
    t[3] = _mm256_permute2x128_si256(a1, a3, 0x31);
}

/* Half-cleaners between registers at distances from, from / 2, ..., 1. */
template <int V>
SOFTRANK_AVX2_INLINE void softrank_clean_registers4(__m256i *v, int from) {
    for (int jv = from; jv >= 1; jv /= 2)
        for (int b = 0; b < V; b += 2 * jv)
            for (int p = b; p < b + jv; ++p) {
                const __m256i low = v[p], high = v[p + jv];
                v[p] = softrank_min4(low, high);
                v[p + jv] = softrank_max4(low, high);
            }
}

/* Compare-exchange of (lane l, register r) with (its partner in order LANES, register
   V - 1 - r); the lanes of UPPER keep the larger word. */
template <int LANES, int UPPER, int V>
SOFTRANK_AVX2_INLINE void softrank_mirror_lanes4(__m256i *v) {
    for (int r = 0; r < V / 2; ++r) {
        const __m256i x = v[r], y = _mm256_permute4x64_epi64(v[V - 1 - r], LANES);
        const __m256i low = softrank_min4(x, y), high = softrank_max4(x, y);
        v[r] = _mm256_blend_epi32(low, high, UPPER);
        v[V - 1 - r] = _mm256_permute4x64_epi64(_mm256_blend_epi32(high, low, UPPER), LANES);
    }
}

/* softrank_column_network with 4 lanes: the columns sorted by register pairs, then merged in
   blocks of 2 and 4 lanes. */
template <int V>
SOFTRANK_AVX2_INLINE void softrank_column_network4(__m256i *v) {
    for (int kv = 2; kv <= V; kv *= 2) {
        for (int b = 0; b < V; b += kv)
            for (int p = 0; p < kv / 2; ++p) {
                const __m256i low = v[b + p], high = v[b + kv - 1 - p];
                v[b + p] = softrank_min4(low, high);
                v[b + kv - 1 - p] = softrank_max4(low, high);
            }
        softrank_clean_registers4<V>(v, kv / 4);
    }
    softrank_mirror_lanes4<SOFTRANK_LANES4_XOR1, 0xCC, V>(v);
    softrank_clean_registers4<V>(v, V / 2);
    softrank_mirror_lanes4<SOFTRANK_LANES4_REVERSED, 0xF0, V>(v);
    for (int p = 0; p < V; ++p) v[p] = softrank_exchange_lanes4<SOFTRANK_LANES4_XOR1, 0xCC>(v[p]);
    softrank_clean_registers4<V>(v, V / 2);
}

/* Lanes [0, left) of a register of 4 words, as a maskload/maskstore mask. */
SOFTRANK_AVX2_INLINE __m256i softrank_first_lanes4(Py_ssize_t left) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)left), _mm256_set_epi64x(3, 2, 1, 0));
}

template <int V>
__attribute__((target("avx2"))) static void softrank_bitonic_sort_v4(uint64_t *words,
                                                                      Py_ssize_t n) {
    __m256i v[V];
    const __m256i top_bit = _mm256_set1_epi64x((long long)0x8000000000000000ull);
    const __m256i padding = _mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll);  /* all ones, flipped */
    for (int p = 0; p < V; ++p) {
        const Py_ssize_t left = n - 4 * p;
        if (left >= 4) {
            v[p] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(words + 4 * p)), top_bit);
        } else if (left <= 0) {
            v[p] = padding;
        } else {
            const __m256i valid = softrank_first_lanes4(left);
            const __m256i loaded = _mm256_maskload_epi64((const long long *)(words + 4 * p), valid);
            v[p] = _mm256_blendv_epi8(padding, _mm256_xor_si256(loaded, top_bit), valid);
        }
    }
    softrank_column_network4<V>(v);
    for (int b = 0; b < V; b += 4) {
        __m256i t[4];
        softrank_transpose4(v + b, t);
        for (int l = 0; l < 4; ++l) {
            const Py_ssize_t at = (Py_ssize_t)l * V + b, left = n - at;
            if (left <= 0) continue;
            const __m256i sorted = _mm256_xor_si256(t[l], top_bit);
            if (left >= 4)
                _mm256_storeu_si256((__m256i *)(words + at), sorted);
            else
                _mm256_maskstore_epi64((long long *)(words + at), softrank_first_lanes4(left),
                                       sorted);
        }
    }
}

/* Longest row sorted by the AVX2 network: 32 registers of 4 words already spill (16 ymm
   registers); a longer network spills more and did not beat the radix sort
   (docs/PERFORMANCE.md, "Native sort kernels"). */
#define SOFTRANK_BITONIC_MAX_AVX2 128

/* words[0:n) sorted ascending, 0 < n <= SOFTRANK_BITONIC_MAX_AVX2, on a CPU with AVX2. */
static void softrank_bitonic_sort_avx2(uint64_t *words, Py_ssize_t n) {
    if (n <= 32) softrank_bitonic_sort_v4<8>(words, n);
    else if (n <= 64) softrank_bitonic_sort_v4<16>(words, n);
    else softrank_bitonic_sort_v4<32>(words, n);
}
#endif

#endif  /* SOFTRANK_BITONIC_SORT_H */
