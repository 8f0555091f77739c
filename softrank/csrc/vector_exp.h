/* vector_exp.h: exp of many doubles at once, for the weights of soft_rank/kl blocks and their
   sums (softrank/csrc/pav.h), with AVX-512 where the CPU has it, else with AVX2 and FMA (the same
   bits, 4 lanes), else libm's exp.

   The vector kernel: exp(x) = 2^k exp(r) with k = round(x / ln 2) and r = x - k ln 2 in
   [-ln2/2, ln2/2] (ln 2 split in two doubles, each product subtracted by one fused
   multiply-add), exp(r) by its Taylor polynomial of degree 13 (truncation error below 5e-18 on
   that interval) in Horner form, and 2^k applied by scalef (exact, one rounding in the
   subnormal range; 0 below it). It stays within 1 ulp of glibc's exp over the double range
   (tests/test_native_solver.py checks random and edge points).

   Deviation from a plain exp: softrank_exp_of_steps also carries the rounding of its argument
   back in (below), so weights far from their reference keep the precision of the exp. */
#ifndef SOFTRANK_VECTOR_EXP_H_
#define SOFTRANK_VECTOR_EXP_H_

#include <Python.h>
#include <math.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SOFTRANK_HAS_VECTOR_EXP 1

/* Unmasked max, min, roundscale and scalef start from an "undefined" register that GCC 12's
   -Wall reports as maybe uninitialized (GCC bug 105593): their all-lanes masked forms. */
#define SOFTRANK_EXP_LANES ((__mmask8)0xFF)

/* The constants of both kernels: ln 2 rounded and what that rounding lost, 1 / ln 2, and the
   Taylor coefficients 1/13!, ..., 1/2!, 1, 1 in Horner order. */
static const double softrank_ln2_hi = 0x1.62e42fefa39efp-1;
static const double softrank_ln2_lo = 0x1.abc9e3b39803fp-56;
static const double softrank_log2e = 0x1.71547652b82fep0;
static const double softrank_exp_taylor[14] = {
    1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
    1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};

__attribute__((target("avx512f"))) static inline __m512d softrank_exp8(__m512d x) {
    /* Beyond these exp is 0 or inf; clamping keeps k finite. max/min return their second
       operand when one is NaN: NaN goes through. */
    x = _mm512_maskz_max_pd(SOFTRANK_EXP_LANES, _mm512_set1_pd(-746.0), x);
    x = _mm512_maskz_min_pd(SOFTRANK_EXP_LANES, _mm512_set1_pd(710.0), x);
    const __m512d k = _mm512_maskz_roundscale_pd(
        SOFTRANK_EXP_LANES, _mm512_mul_pd(x, _mm512_set1_pd(softrank_log2e)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(softrank_ln2_hi), x);
    r = _mm512_fnmadd_pd(k, _mm512_set1_pd(softrank_ln2_lo), r);
    __m512d p = _mm512_set1_pd(softrank_exp_taylor[0]);
    for (int i = 1; i < 14; ++i) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(softrank_exp_taylor[i]));
    return _mm512_maskz_scalef_pd(SOFTRANK_EXP_LANES, p, k);
}

/* w[i] = exp((s[i] - head) / eps) * scale for i < count. */
__attribute__((target("avx512f"))) static void softrank_scaled_exp_avx512(
        const double *s, double head, double eps, double scale, double *w, Py_ssize_t count) {
    const __m512d h = _mm512_set1_pd(head), e = _mm512_set1_pd(eps), f = _mm512_set1_pd(scale);
    for (Py_ssize_t i = 0; i < count; i += 8) {
        const Py_ssize_t left = count - i;
        const __mmask8 lanes = left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1);
        const __m512d t = _mm512_div_pd(_mm512_sub_pd(_mm512_maskz_loadu_pd(lanes, s + i), h), e);
        _mm512_mask_storeu_pd(w + i, lanes, _mm512_mul_pd(softrank_exp8(t), f));
    }
}

/* softrank_exp_of_steps below, 8 lanes at a time. */
__attribute__((target("avx512f"))) static void softrank_exp_of_steps_avx512(
        const double *s, double ref, double eps, double *w, Py_ssize_t count) {
    const __m512d ref_v = _mm512_set1_pd(ref), minus_ref = _mm512_set1_pd(-ref);
    const __m512d e = _mm512_set1_pd(eps), inverse = _mm512_set1_pd(1.0 / eps);
    for (Py_ssize_t i = 0; i < count; i += 8) {
        const Py_ssize_t left = count - i;
        const __mmask8 lanes = left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1);
        const __m512d x = _mm512_maskz_loadu_pd(lanes, s + i);
        const __m512d d = _mm512_sub_pd(x, ref_v);
        const __m512d back = _mm512_sub_pd(d, x);  /* TwoSum: d + lost = x - ref exactly */
        const __m512d lost = _mm512_add_pd(_mm512_sub_pd(x, _mm512_sub_pd(d, back)),
                                           _mm512_sub_pd(minus_ref, back));
        const __m512d q = _mm512_mul_pd(d, inverse);
        const __m512d delta = _mm512_mul_pd(_mm512_add_pd(_mm512_fnmadd_pd(q, e, d), lost),
                                            inverse);
        const __m512d y = softrank_exp8(q);
        _mm512_mask_storeu_pd(w + i, lanes, _mm512_fmadd_pd(y, delta, y));
    }
}

/* w[i] = exp((s[i] - head) / eps) for i < count; returns their sum (8 partial sums, then the
   lanes in a fixed order: the same bits for the same row). */
__attribute__((target("avx512f"))) static double softrank_exp_sum_avx512(
        const double *s, double head, double eps, double *w, Py_ssize_t count) {
    const __m512d h = _mm512_set1_pd(head), e = _mm512_set1_pd(eps);
    __m512d total = _mm512_setzero_pd();
    for (Py_ssize_t i = 0; i < count; i += 8) {
        const Py_ssize_t left = count - i;
        const __mmask8 lanes = left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1);
        const __m512d t = _mm512_div_pd(_mm512_sub_pd(_mm512_maskz_loadu_pd(lanes, s + i), h), e);
        const __m512d x = _mm512_maskz_mov_pd(lanes, softrank_exp8(t));
        _mm512_mask_storeu_pd(w + i, lanes, x);
        total = _mm512_add_pd(total, x);
    }
    double lane[8];  /* (_mm512_reduce_add_pd trips GCC 12's bug 105593 warning) */
    _mm512_storeu_pd(lane, total);
    return ((lane[0] + lane[1]) + (lane[2] + lane[3]))
           + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* The same exp, 4 lanes, for CPUs with AVX2 and FMA but no AVX-512 (the same operations, so
   the same bits lane for lane): AVX2 has no scalef, so 2^k is applied as 2^h 2^(k-h),
   h = floor(k / 2), both powers normal over the clamped range (the first product is exact,
   the second rounds once, as scalef does), each built from its exponent bits. */
#define SOFTRANK_AVX2_FMA __attribute__((target("avx2,fma")))

SOFTRANK_AVX2_FMA static inline __m256d softrank_power_of_two4(__m256d k) {
    const __m256d magic = _mm256_set1_pd(0x1.8p52);  /* k + magic holds k in its low bits */
    const __m256i bits = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(k, magic)),
                                          _mm256_castpd_si256(magic));
    return _mm256_castsi256_pd(
        _mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52));
}

SOFTRANK_AVX2_FMA static inline __m256d softrank_exp4(__m256d x) {
    x = _mm256_max_pd(_mm256_set1_pd(-746.0), x);  /* NaN goes through, as in softrank_exp8 */
    x = _mm256_min_pd(_mm256_set1_pd(710.0), x);
    const __m256d k = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(softrank_log2e)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(softrank_ln2_hi), x);
    r = _mm256_fnmadd_pd(k, _mm256_set1_pd(softrank_ln2_lo), r);
    __m256d p = _mm256_set1_pd(softrank_exp_taylor[0]);
    for (int i = 1; i < 14; ++i) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(softrank_exp_taylor[i]));
    const __m256d half = _mm256_floor_pd(_mm256_mul_pd(k, _mm256_set1_pd(0.5)));
    return _mm256_mul_pd(_mm256_mul_pd(p, softrank_power_of_two4(half)),
                         softrank_power_of_two4(_mm256_sub_pd(k, half)));
}

/* Lanes [0, left) of 4, as a maskload/maskstore mask. */
SOFTRANK_AVX2_FMA static inline __m256i softrank_exp_lanes4(Py_ssize_t left) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)left), _mm256_set_epi64x(3, 2, 1, 0));
}

SOFTRANK_AVX2_FMA static void softrank_scaled_exp_avx2(
        const double *s, double head, double eps, double scale, double *w, Py_ssize_t count) {
    const __m256d h = _mm256_set1_pd(head), e = _mm256_set1_pd(eps), f = _mm256_set1_pd(scale);
    for (Py_ssize_t i = 0; i < count; i += 4) {
        const __m256i lanes = softrank_exp_lanes4(count - i);
        const __m256d t = _mm256_div_pd(_mm256_sub_pd(_mm256_maskload_pd(s + i, lanes), h), e);
        _mm256_maskstore_pd(w + i, lanes, _mm256_mul_pd(softrank_exp4(t), f));
    }
}

SOFTRANK_AVX2_FMA static void softrank_exp_of_steps_avx2(
        const double *s, double ref, double eps, double *w, Py_ssize_t count) {
    const __m256d ref_v = _mm256_set1_pd(ref), minus_ref = _mm256_set1_pd(-ref);
    const __m256d e = _mm256_set1_pd(eps), inverse = _mm256_set1_pd(1.0 / eps);
    for (Py_ssize_t i = 0; i < count; i += 4) {
        const __m256i lanes = softrank_exp_lanes4(count - i);
        const __m256d x = _mm256_maskload_pd(s + i, lanes);
        const __m256d d = _mm256_sub_pd(x, ref_v);
        const __m256d back = _mm256_sub_pd(d, x);
        const __m256d lost = _mm256_add_pd(_mm256_sub_pd(x, _mm256_sub_pd(d, back)),
                                           _mm256_sub_pd(minus_ref, back));
        const __m256d q = _mm256_mul_pd(d, inverse);
        const __m256d delta = _mm256_mul_pd(_mm256_add_pd(_mm256_fnmadd_pd(q, e, d), lost),
                                            inverse);
        const __m256d y = softrank_exp4(q);
        _mm256_maskstore_pd(w + i, lanes, _mm256_fmadd_pd(y, delta, y));
    }
}

/* Eight elements a round in two halves, so that the partial sums match the AVX-512 kernel's. */
SOFTRANK_AVX2_FMA static double softrank_exp_sum_avx2(
        const double *s, double head, double eps, double *w, Py_ssize_t count) {
    const __m256d h = _mm256_set1_pd(head), e = _mm256_set1_pd(eps);
    __m256d total[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
    for (Py_ssize_t i = 0; i < count; i += 4) {
        const __m256i lanes = softrank_exp_lanes4(count - i);
        const __m256d t = _mm256_div_pd(_mm256_sub_pd(_mm256_maskload_pd(s + i, lanes), h), e);
        const __m256d x = _mm256_and_pd(softrank_exp4(t), _mm256_castsi256_pd(lanes));
        _mm256_maskstore_pd(w + i, lanes, x);
        total[(i >> 2) & 1] = _mm256_add_pd(total[(i >> 2) & 1], x);
    }
    double lane[8];
    _mm256_storeu_pd(lane, total[0]);
    _mm256_storeu_pd(lane + 4, total[1]);
    return ((lane[0] + lane[1]) + (lane[2] + lane[3]))
           + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}
#endif

/* Which kernel computes the exps: the AVX-512 one, the AVX2 one, or libm's exp (chosen at
   import by softrank_choose_vector_exp). */
enum { SOFTRANK_EXP_LIBM = 0, SOFTRANK_EXP_AVX2 = 1, SOFTRANK_EXP_AVX512 = 2 };
static int softrank_vector_exp = SOFTRANK_EXP_LIBM;

/* The kernel for this CPU (has_avx512 = 0 keeps to those of a CPU without AVX-512: tests
   run both); returns it. */
static int softrank_choose_vector_exp(int has_avx512) {
    softrank_vector_exp = SOFTRANK_EXP_LIBM;
#ifdef SOFTRANK_HAS_VECTOR_EXP
    __builtin_cpu_init();
    if (has_avx512) softrank_vector_exp = SOFTRANK_EXP_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        softrank_vector_exp = SOFTRANK_EXP_AVX2;
#else
    (void)has_avx512;
#endif
    return softrank_vector_exp;
}

/* w[i] = exp((s[i] - head) / eps) * scale for i < count. */
static inline void softrank_scaled_exp(const double *s, double head, double eps, double scale,
                                       double *w, Py_ssize_t count) {
#ifdef SOFTRANK_HAS_VECTOR_EXP
    if (softrank_vector_exp == SOFTRANK_EXP_AVX512) {
        softrank_scaled_exp_avx512(s, head, eps, scale, w, count);
        return;
    }
    if (softrank_vector_exp == SOFTRANK_EXP_AVX2) {
        softrank_scaled_exp_avx2(s, head, eps, scale, w, count);
        return;
    }
#endif
    for (Py_ssize_t i = 0; i < count; ++i) w[i] = exp((s[i] - head) / eps) * scale;
}

/* w[i] = exp((s[i] - ref) / eps) for i < count, as precise as the exp itself however far s[i]
   lies from ref (weights against a common reference, to 64 eps away): the argument is taken as
   q + delta, with q = (s[i] - ref) * (1 / eps) rounded and delta what that rounding lost (the
   difference's by TwoSum, the quotient's by the FMA residual d - q eps, exact), and
   exp(q + delta) = exp(q) (1 + delta) up to delta^2 / 2 (|delta| < 1e-13). Without the
   correction, soft ranks from weights tens of eps away would lose tens of ulp
   (tests/test_native_solver.py pins this). 1 / eps must be finite. */
static inline void softrank_exp_of_steps(const double *s, double ref, double eps, double *w,
                                         Py_ssize_t count) {
#ifdef SOFTRANK_HAS_VECTOR_EXP
    if (softrank_vector_exp == SOFTRANK_EXP_AVX512) {
        softrank_exp_of_steps_avx512(s, ref, eps, w, count);
        return;
    }
    if (softrank_vector_exp == SOFTRANK_EXP_AVX2) {
        softrank_exp_of_steps_avx2(s, ref, eps, w, count);
        return;
    }
#endif
    const double inverse = 1.0 / eps;
    for (Py_ssize_t i = 0; i < count; ++i) {
        const double d = s[i] - ref, back = d - s[i];
        const double lost = (s[i] - (d - back)) + (-ref - back);
        const double q = d * inverse;
        const double delta = (fma(-q, eps, d) + lost) * inverse;
        const double y = exp(q);
        w[i] = fma(y, delta, y);
    }
}

/* w[i] = exp((s[i] - head) / eps) for i < count; returns their sum, added in the vector
   kernel's order (so the two differ only by their exps). */
static inline double softrank_exp_sum(const double *s, double head, double eps, double *w,
                                      Py_ssize_t count) {
#ifdef SOFTRANK_HAS_VECTOR_EXP
    if (softrank_vector_exp == SOFTRANK_EXP_AVX512)
        return softrank_exp_sum_avx512(s, head, eps, w, count);
    if (softrank_vector_exp == SOFTRANK_EXP_AVX2)
        return softrank_exp_sum_avx2(s, head, eps, w, count);
#endif
    double lane[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (Py_ssize_t i = 0; i < count; ++i) {
        w[i] = exp((s[i] - head) / eps);
        lane[i & 7] += w[i];
    }
    return ((lane[0] + lane[1]) + (lane[2] + lane[3]))
           + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

#endif  /* SOFTRANK_VECTOR_EXP_H_ */
