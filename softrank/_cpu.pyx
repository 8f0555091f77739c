"""Batched soft ranking / soft sorting on the CPU: argsort + pool-adjacent-violators + un-permute.

What is solved (Blondel et al. 2020, arXiv:2002.08871; notation of docs/CONTRACT.md):
for each row, with z = sign * x sorted decreasingly into s and rho = (n, n-1, ..., 1), PAV solves
the *decreasing* isotonic problem

    l2:  v = argmin_{v_1 >= ... >= v_n}  1/2 ||v - y||^2,                   block value  mean_B(y)
    kl:  v = argmin_{v_1 >= ... >= v_n}  sum_i exp(y_i - v_i) + exp(w_i) v_i,  block value
                                           logsumexp(y_B) - logsumexp(w_B)

with y = s/eps - rho (soft rank, l2), (y, w) = (s/eps, log rho) (soft rank, kl),
y = rho/eps - s (soft sort, l2) and (y, w) = (rho/eps, s) (soft sort, kl).

Deviations from the textbook algorithm, and why:
* Block values are kept in units of x (the rank problems are multiplied by eps), and the rho
  sums of a block have closed forms, so no y/w arrays exist and x/eps never overflows.
* Every block stores its start; the solver writes the start of each element's block
  (``blocks``), so the backward never re-detects blocks by comparing floats.
* Sorting is on order-preserving integer keys, ties in index order: an LSD radix sort for long
  rows, counting (O(n^2), branch-free) for short ones and, where the CPU has AVX2 or AVX-512, a
  bitonic network in registers for rows in between (_bitonic_sort.h). -0.0 is keyed as +0.0.
* A row holding NaN or +-inf is marked with blocks[0] = -1; its outputs and gradients are NaN.
* Accumulation is in float64 for both float32 and float64 data.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport exp, log, expm1, isfinite, NAN
from libc.stdint cimport uint64_t, uint32_t, int32_t
from libc.string cimport memcpy, memset
cimport cython
cimport numpy as cnp

cnp.import_array()

# Plain C++ helpers live in headers next to this file: _span.h (bounds-checked rows),
# _sort_kernels.h (std::sort by key, counting ranks, the kernels chosen for this CPU),
# _bitonic_sort.h (the sorting network), _vector_exp.h (rank/kl's exp) and _workspace.h
# (scratch memory).
cdef extern from "_span.h":
    cdef cppclass Span "softrank_span"[T]:
        Span() nogil
        Span(T*, Py_ssize_t) nogil
        T& operator[](Py_ssize_t) nogil
        Span[T] sub(Py_ssize_t, Py_ssize_t) nogil
        T* ptr
        Py_ssize_t len
    const int softrank_bounds_checked

ctypedef fused floating:
    float
    double

# Compile-time mode tags: _pav_row and its per-element helpers are specialised per
# (op, regularization) through this fused type, so the inner loops carry no mode tests.
ctypedef struct RankL2:
    char unused
ctypedef struct RankKL:
    char unused
ctypedef struct SortL2:
    char unused
ctypedef struct SortKL:
    char unused

ctypedef fused Mode:
    RankL2
    RankKL
    SortL2
    SortKL

cdef enum:
    RANK_L2 = 0
    RANK_KL = 1
    SORT_L2 = 2
    SORT_KL = 3

# Rows whose largest magnitude exceeds HUGE (2**1000) are solved scaled by 1/HUGE_SCALE (2**-64).
cdef double HUGE = 1.0715086071862673e301
cdef double HUGE_SCALE = 18446744073709551616.0

cdef enum:
    HIST_WORDS = 3 * 2048 // 2  # workspace words of the largest radix histograms (3 x 2048 uint32)

# Rows radix sorted with 11-bit digits from this length on (8-bit below): measured crossover
# ~2000 (float32) and ~700 (float64); 1-10% faster on long rows (interleaved A/Bs; noisy VM).
cdef Py_ssize_t RADIX_WIDE_MIN = 2048

cdef extern from "_sort_kernels.h":
    void softrank_sort_by_key(const uint64_t *keys, int32_t *idx, Py_ssize_t n) noexcept nogil
    void softrank_rank_by_counting(const uint64_t *keys, const double *x, double sign,
                                   int32_t *perm, double *s, Py_ssize_t n) noexcept nogil
    void softrank_rank_by_counting32(const uint32_t *keys, const float *x, double sign,
                                     int32_t *perm, double *s, Py_ssize_t n) noexcept nogil
    int softrank_counting_max_f32
    int softrank_counting_max_f64
    int softrank_network_max
    bint softrank_network_sorts(Py_ssize_t n) noexcept nogil
    void softrank_sort_words_by_network(uint64_t *words, Py_ssize_t n) noexcept nogil
    const int softrank_cpu_dispatch
    int softrank_choose_kernels(int allow_avx512) noexcept nogil

cdef extern from "_vector_exp.h":
    int softrank_vector_exp
    int softrank_choose_vector_exp(int has_avx512) noexcept nogil
    void softrank_scaled_exp(const double *s, double head, double eps, double scale,
                             double *w, Py_ssize_t count) noexcept nogil
    double softrank_exp_sum(const double *s, double head, double eps, double *w,
                            Py_ssize_t count) noexcept nogil
    void softrank_exp_of_steps(const double *s, double ref, double eps, double *w,
                               Py_ssize_t count) noexcept nogil


cdef void _choose_kernels(bint allow_avx512) noexcept nogil:
    softrank_choose_vector_exp(softrank_choose_kernels(allow_avx512))


_choose_kernels(True)


# One thread's scratch space for one row of n elements (carved out of 64-bit words).
cdef struct Workspace:
    Span[uint64_t] keys    # 3n: two radix buffers, full float64 keys; + the radix histograms
    Span[int32_t] ints     # n: PAV block starts
    Span[double] reals     # 3n: sorted values, PAV block states, PAV block values



# ----------------------------------------------------------------------------- keys and sorting

# Order-preserving maps float -> unsigned integer, inverted so that ascending keys = descending
# values: a negative value keeps its bits, a positive one has all but its sign bit flipped. No
# branches: the sign of random data is a coin flip, and a mispredicted branch per element cost
# (1024, 100) rows 15% of their forward. The map is its own inverse.
cdef inline uint32_t _flip32(uint32_t u) noexcept nogil:
    return u ^ (((u >> 31) - 1u) & 0x7FFFFFFFu)


cdef inline uint64_t _descending_key32(float z) noexcept nogil:
    cdef uint32_t u
    z = z + <float>0.0  # -0.0 + 0.0 = +0.0: the two zeros are one value, with one key
    memcpy(&u, &z, 4)
    return <uint64_t>_flip32(u)


cdef inline float _value_of_key32(uint32_t key) noexcept nogil:
    """The float32 z of a _descending_key32 key (-0.0 comes back as +0.0, its key's value)."""
    cdef uint32_t u = _flip32(key)
    cdef float z
    memcpy(&z, &u, 4)
    return z


cdef inline uint64_t _descending_key64(double z) noexcept nogil:
    cdef uint64_t u
    z = z + 0.0
    memcpy(&u, &z, 8)
    return u ^ (((u >> 63) - 1u) & 0x7FFFFFFFFFFFFFFFu)


cdef inline void _scatter_pass(Span[uint64_t] src, Span[uint64_t] dst, Py_ssize_t n, int shift,
                               uint64_t mask, Span[uint32_t] offsets) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t pos
    cdef uint64_t k
    cdef Py_ssize_t digit
    for i in range(n):
        k = src[i]
        digit = <Py_ssize_t>((k >> shift) & mask)
        pos = offsets[digit]
        offsets[digit] = pos + 1
        dst[pos] = k


# The radix sort orders words by their high 32 bits in passes of one digit each. Two plans:
# four 8-bit digits (small histograms: cheap to clear and sum on medium rows) and three 11-bit
# digits (one pass less; its 3 x 2048 counts pay off on long rows).
ctypedef struct Bytes4:
    char _unused
ctypedef struct Digits11x3:
    char _unused

ctypedef fused RadixPlan:
    Bytes4
    Digits11x3


cdef inline int _digit_bits(RadixPlan* plan) noexcept nogil:
    return 8 if RadixPlan is Bytes4 else 11


cdef inline int _digit_count(RadixPlan* plan) noexcept nogil:
    return 4 if RadixPlan is Bytes4 else 3


cdef inline bint _radix_sort(RadixPlan* plan, Span[uint64_t] ka, Span[uint64_t] kb,
                             Py_ssize_t n, Span[uint32_t] hist) noexcept nogil:
    """LSD radix sort of the high 32 bits of the words; hist holds the counts of each digit
    (_digit_count histograms of 2**_digit_bits counts, lowest digit first). The low 32 bits
    (the element's index) ride along and keep the sort stable.

    Returns False if the result is in ka, True if it is in kb. A digit on which every key
    agrees is skipped (common for the exponent digit of similar-magnitude data).
    """
    cdef int bits = _digit_bits(plan), count = _digit_count(plan)
    cdef Py_ssize_t buckets = 1 << bits
    cdef uint64_t mask = buckets - 1
    cdef bint in_b = False
    cdef bint skip[4]
    cdef int d
    cdef Py_ssize_t b
    cdef uint32_t c, t0 = 0, t1 = 0, t2 = 0, t3 = 0
    cdef uint64_t first_key = ka[0]
    for d in range(count):
        skip[d] = hist[d * buckets + ((first_key >> (32 + bits * d)) & mask)] == <uint32_t>n
    # The exclusive prefix sums of all digits in one loop: independent add chains.
    for b in range(buckets):
        c = hist[b]
        hist[b] = t0
        t0 += c
        c = hist[buckets + b]
        hist[buckets + b] = t1
        t1 += c
        c = hist[2 * buckets + b]
        hist[2 * buckets + b] = t2
        t2 += c
        if count == 4:
            c = hist[3 * buckets + b]
            hist[3 * buckets + b] = t3
            t3 += c
    for d in range(count):
        if skip[d]:
            continue
        if in_b:
            _scatter_pass(kb, ka, n, 32 + bits * d, mask, hist.sub(d * buckets, buckets))
        else:
            _scatter_pass(ka, kb, n, 32 + bits * d, mask, hist.sub(d * buckets, buckets))
        in_b = not in_b
    return in_b


cdef inline uint64_t _word_of(floating v, Py_ssize_t j, double sign,
                              Span[uint64_t] full) noexcept nogil:
    """The sort word of x[j] = v: the high 32 bits of its key << 32 | j. float64 keys are
    stored whole in full[j] (for ties of their high halves)."""
    cdef uint64_t key
    if floating is float:
        return (_descending_key32(<float>(sign * v)) << 32) | <uint64_t>j
    key = _descending_key64(sign * v)
    full[j] = key
    return (key & 0xFFFFFFFF00000000u) | <uint64_t>j


cdef inline bint _build_keys(RadixPlan* plan, Span[floating] x, double sign, Span[uint64_t] ka,
                             Span[uint64_t] full, Span[uint32_t] hist, Py_ssize_t lo,
                             Py_ssize_t hi) noexcept nogil:
    """Words (_word_of) of x[lo:hi] into ka[lo:hi], full float64 keys into full[lo:hi], every
    digit counted into hist (zeroed by the caller). Returns True if x[lo:hi] holds a NaN or an
    infinity."""
    cdef int bits = _digit_bits(plan), count = _digit_count(plan)
    cdef Py_ssize_t buckets = 1 << bits
    cdef uint64_t mask = buckets - 1
    cdef Py_ssize_t j
    cdef int d
    cdef bint nonfinite = False
    cdef double v
    cdef uint64_t key
    for j in range(lo, hi):
        v = x[j]
        if not (v - v == 0):  # NaN or +-inf
            nonfinite = True
        key = _word_of(x[j], j, sign, full)
        for d in range(count):
            hist[d * buckets + ((key >> (32 + bits * d)) & mask)] += 1
        ka[j] = key
    return nonfinite


cdef inline void _decode_words32(Span[uint64_t] ka, Span[int32_t] perm, Span[double] s,
                                 Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """perm and s of sorted float32 words [lo, hi). The float32 key is exact: decoding s from
    the sorted words (sequential reads) beats gathering x[perm[j]] (random reads, most of
    this step on long rows)."""
    cdef Py_ssize_t j
    cdef uint64_t key
    for j in range(lo, hi):
        key = ka[j]
        perm[j] = <int32_t>(key & 0xFFFFFFFFu)
        s[j] = _value_of_key32(<uint32_t>(key >> 32))


cdef inline bint _perm_of_words(Span[uint64_t] ka, Span[int32_t] perm, Py_ssize_t lo,
                                Py_ssize_t hi) noexcept nogil:
    """perm[lo:hi] of sorted float64 words. Returns True if a word in [lo, hi) has the high half
    of the word before it: a run that _sort_equal_high_runs must sort (rare in most data; the
    branch-free test costs less than that function's scan)."""
    cdef Py_ssize_t j
    cdef int shared = 0
    for j in range(lo, hi):
        perm[j] = <int32_t>(ka[j] & 0xFFFFFFFFu)
    for j in range(max(lo, 1), hi):
        shared |= ((ka[j] ^ ka[j - 1]) >> 32) == 0
    return shared != 0


cdef inline void _sort_equal_high_runs(Span[uint64_t] ka, Span[uint64_t] full,
                                       Span[int32_t] perm, Py_ssize_t lo,
                                       Py_ssize_t hi) noexcept nogil:
    """Sort by the full float64 key each run of sorted words with equal high halves that starts
    in [lo, hi) (a run that started before lo is its own starter's; a run may end past hi)."""
    cdef Py_ssize_t n = ka.len
    cdef Py_ssize_t j = lo, e
    cdef uint64_t high
    if j > 0:
        while j < hi and (ka[j] >> 32) == (ka[j - 1] >> 32):
            j += 1
    while j < hi:
        high = ka[j] >> 32
        e = j + 1
        while e < n and (ka[e] >> 32) == high:
            e += 1
        if e - j > 1:
            softrank_sort_by_key(full.ptr, perm.ptr + j, e - j)
        j = e


cdef inline void _gather_sorted(Span[floating] x, double sign, Span[int32_t] perm,
                                Span[double] s, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(lo, hi):
        s[j] = sign * x[perm[j]]


cdef inline void _order_of_sorted_words(Span[floating] x, double sign, Span[uint64_t] ka,
                                        Span[uint64_t] full, Span[int32_t] perm,
                                        Span[double] s) noexcept nogil:
    """perm and s of a row from its words sorted in ka: for float32 that is the whole key;
    float64 rows then sort each run of equal high halves by the full key (runs are short unless
    many values agree in their top 32 bits; std::sort bounds the worst case)."""
    cdef Py_ssize_t n = x.len
    if floating is float:
        _decode_words32(ka, perm, s, 0, n)
    else:
        if _perm_of_words(ka, perm, 0, n):
            _sort_equal_high_runs(ka, full, perm, 0, n)
        _gather_sorted(x, sign, perm, s, 0, n)


cdef inline bint _radix_argsort(RadixPlan* plan, Span[floating] x, double sign,
                                Span[uint64_t] ka, Span[uint64_t] kb, Span[uint64_t] full,
                                Span[uint32_t] hist, Span[int32_t] perm,
                                Span[double] s) noexcept nogil:
    """_argsort_row by radix sorting words (_word_of), so that a pass moves a single word:
    half the passes of a 64-bit radix sort for float64 rows."""
    cdef Py_ssize_t n = x.len
    memset(hist.ptr, 0, _digit_count(plan) * (1 << _digit_bits(plan)) * sizeof(uint32_t))
    if _build_keys(plan, x, sign, ka, full, hist, 0, n):
        return True
    if _radix_sort(plan, ka, kb, n, hist):
        ka = kb
    _order_of_sorted_words(x, sign, ka, full, perm, s)
    return False


cdef inline bint _network_argsort(Span[floating] x, double sign, Span[uint64_t] ka,
                                  Span[uint64_t] full, Span[int32_t] perm,
                                  Span[double] s) noexcept nogil:
    """_argsort_row by a sorting network on the words (_word_of; rows that
    softrank_network_sorts). The network takes a raw pointer: the debug bounds checks do not
    cover it."""
    cdef Py_ssize_t n = x.len
    cdef Py_ssize_t j
    cdef bint nonfinite = False
    cdef double v
    for j in range(n):
        v = x[j]
        if not (v - v == 0):  # NaN or +-inf
            nonfinite = True
        ka[j] = _word_of(x[j], j, sign, full)
    if nonfinite:
        return True
    softrank_sort_words_by_network(ka.ptr, n)
    _order_of_sorted_words(x, sign, ka, full, perm, s)
    return False


cdef inline bint _counting_argsort(Span[floating] x, double sign, Span[uint64_t] ka,
                                   Span[int32_t] perm, Span[double] s) noexcept nogil:
    """_argsort_row by counting (short rows). The counting kernels take raw pointers: the
    debug bounds checks do not cover them."""
    cdef Py_ssize_t n = x.len
    cdef Py_ssize_t j
    cdef bint nonfinite = False
    cdef double v
    # float32 keys are 32-bit words in the space of ka
    cdef Span[uint32_t] keys32 = Span[uint32_t](<uint32_t*>ka.ptr, 2 * ka.len)
    for j in range(n):
        v = x[j]
        if not (v - v == 0):  # NaN or +-inf
            nonfinite = True
        if floating is float:
            keys32[j] = <uint32_t>_descending_key32(<float>(sign * v))
        else:
            ka[j] = _descending_key64(sign * v)
    if nonfinite:
        return True
    if floating is float:
        softrank_rank_by_counting32(keys32.ptr, x.ptr, sign, perm.ptr, s.ptr, n)
    else:
        softrank_rank_by_counting(ka.ptr, x.ptr, sign, perm.ptr, s.ptr, n)
    return False


cdef inline bint _argsort_row(Span[floating] x, double sign, Span[uint64_t] ka,
                              Span[uint64_t] kb, Span[uint64_t] full, Span[uint32_t] hist,
                              Span[int32_t] perm, Span[double] s) noexcept nogil:
    """perm <- indices of sign*x in decreasing order (stable), s <- the sorted sign*x.

    Returns True if the row holds a NaN or an infinity (perm and s are then not filled).
    Short rows are ranked by counting, then (where the CPU has AVX-512) sorted by a network,
    longer ones radix sorted (8-bit digits, or 11-bit digits from RADIX_WIDE_MIN elements).
    """
    cdef Py_ssize_t n = x.len
    if n <= (softrank_counting_max_f32 if sizeof(floating) == 4 else softrank_counting_max_f64):
        return _counting_argsort(x, sign, ka, perm, s)
    if softrank_network_sorts(n):
        return _network_argsort(x, sign, ka, full, perm, s)
    if n >= RADIX_WIDE_MIN:
        return _radix_argsort(<Digits11x3*>NULL, x, sign, ka, kb, full, hist, perm, s)
    return _radix_argsort(<Bytes4*>NULL, x, sign, ka, kb, full, hist, perm, s)


# ----------------------------------------------------------------------------- PAV

cdef extern from *:
    """
    /* log(sum_{k<c} exp(-k/eps)) = log(1 - exp(-c/eps)) - log(1 - exp(-1/eps)), the part of a
       soft_sort/kl block's value that depends only on its size c, memoised per thread for the
       last eps the thread asked about: every row of a call (and usually every call of a
       training run) has the same eps, and an expm1 and two logs per pooled block were a fifth
       of a (1024, 10) forward. Entry c < SOFTRANK_GEOMETRIC_MEMO is filled on first use (NaN:
       not yet; a new eps costs 64 stores, not 64 logs), with the expression used for larger
       blocks, so the bits do not depend on the memo; entry 0 holds log(1 - exp(-1/eps)).
       The lookup is not inlined: only pooled blocks need it, and inlined into the PAV loop it
       cost rows that seldom pool (n >= 100) 2-10% of their time (interleaved), against
       1.00-1.02x as a call, like the libm calls it replaces. */
    #define SOFTRANK_GEOMETRIC_MEMO 64
    static thread_local double softrank_geometric_eps = -1.0;
    static thread_local double softrank_geometric_memo[SOFTRANK_GEOMETRIC_MEMO];
    static inline double *softrank_geometric_memo_for(double eps) {
        double *memo = softrank_geometric_memo;
        if (eps != softrank_geometric_eps) {
            for (int c = 1; c < SOFTRANK_GEOMETRIC_MEMO; ++c) memo[c] = NAN;
            memo[0] = log(-expm1(-1.0 / eps));
            softrank_geometric_eps = eps;
        }
        return memo;
    }
    static __attribute__((noinline)) double softrank_log_geometric_ratio(Py_ssize_t c, double eps,
                                                                        double *memo) {
        double v;
        if (c < SOFTRANK_GEOMETRIC_MEMO) {
            v = memo[c];
            if (v == v) return v;
        }
        v = log(-expm1(-c / eps)) - memo[0];
        if (c < SOFTRANK_GEOMETRIC_MEMO) memo[c] = v;
        return v;
    }
    """
    double* softrank_geometric_memo_for(double eps) noexcept nogil
    double _log_geometric_ratio "softrank_log_geometric_ratio" (Py_ssize_t c, double eps,
                                                                double* memo) noexcept nogil
    # log(sum_{k<c} exp(-k/eps)) = logsumexp(rho_B/eps) - rho_a/eps for a block of c elements;
    # memo: softrank_geometric_memo_for(eps), this thread's.


# Block state, relative to the block's first (largest) element s_a, so that a large common offset
# (values like 1e29, or 1e8 + noise) costs no precision and nothing overflows:
#   l2:      d = sum_B (s_j - s_a)
#   rank/kl: S = sum_B exp((s_j - s_a)/eps), in [1, c] (its own loop, _pav_rank_kl, keeps the
#            sums against a common reference instead; the expansion sums S anew)
#   sort/kl: S = sum_B exp(s_j - s_a), in [1, c]
# A single element has state 0 (l2) or 1 (kl). Pooling a kl block costs one exp (no log-add-exp).

cdef inline double _initial_state(Mode* mode) noexcept nogil:
    if Mode is RankKL or Mode is SortKL:
        return 1.0
    return 0.0


cdef inline double _block_value(Mode* mode, double s_a, double state, Py_ssize_t a, Py_ssize_t c,
                                Py_ssize_t n, double eps, double* memo) noexcept nogil:
    cdef double mean_rho = (n - a) - 0.5 * (c - 1)
    if Mode is RankL2:      # eps * mean_B(s/eps - rho)
        return s_a + state / c - eps * mean_rho
    elif Mode is RankKL:    # eps * (logsumexp(s_B/eps) - log sum_B rho)
        return s_a + eps * log(state / (c * mean_rho))
    elif Mode is SortL2:    # mean_B(rho/eps - s)
        return mean_rho / eps - (s_a + state / c)
    else:                   # logsumexp(rho_B/eps) - logsumexp(s_B)
        if c == 1:
            return (n - a) / eps - s_a
        return (n - a) / eps - s_a + _log_geometric_ratio(c, eps, memo) - log(state)


cdef inline double _merged_state(Mode* mode, double left, double right, double shift,
                                 Py_ssize_t right_count, double eps) noexcept nogil:
    """State of two adjacent blocks pooled; shift = s_b - s_a <= 0 (right head minus left head)."""
    if Mode is RankL2 or Mode is SortL2:
        return left + right + right_count * shift
    elif Mode is RankKL:
        return left + right * exp(shift / eps)
    else:
        return left + right * exp(shift)


# soft_rank/kl pools blocks by comparing value = s_ref + eps * log(W / R), W = sum_B w_j with
# w_j = exp((s_j - s_ref)/eps), in the linear domain: W_prev * R_top <= W_top * R_prev. The
# weights w are computed a stretch ("epoch") of the row at a time with the vector exp, against
# the stretch's first value s_ref, so the pooling loop does no exp and its comparisons wait on a
# multiply, not on an exp: a mispredicted pooling branch (random rows pool about half of their
# pushes) costs a short pipeline refill. A stretch ends where w would fall below exp(-EPOCH_SPAN):
# no weight underflows. The weights carry their arguments' rounding back in
# (softrank_exp_of_steps), so they are as precise as the exp however far from s_ref, and the
# expansion turns them into outputs directly (w_j * R / W), except for blocks pooled across
# stretches, whose weights are in two units.
cdef double EPOCH_SPAN = 64.0


cdef inline Py_ssize_t _epoch_end(Span[double] s, Py_ssize_t first, double eps) noexcept nogil:
    """The first position after first whose (s_j - s_first)/eps is below -EPOCH_SPAN, or n
    (binary search: s is sorted decreasingly, so that test is monotone in j)."""
    cdef Py_ssize_t lo = first + 1, hi = s.len, mid
    cdef double head = s[first]
    if (s[hi - 1] - head) / eps >= -EPOCH_SPAN:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if (s[mid] - head) / eps >= -EPOCH_SPAN:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _pav_rank_kl(Span[double] s, double eps, Span[int32_t] start,
                                    Span[double] weight_sum, Span[double] rho_sum,
                                    Span[uint64_t] spare) noexcept nogil:
    """PAV of soft_rank/kl; returns the index of the top block. Per block: start, W (weight_sum,
    in units of its epoch's exp(s_ref/eps)), R (rho_sum, the sum of n - k over the block) and
    its epoch's first position. spare: 2n words, left holding the weights w and the blocks'
    epochs for the expansion."""
    cdef Py_ssize_t n = s.len
    cdef Span[double] w = Span[double](<double*>spare.ptr, n)
    cdef Span[int32_t] epoch = Span[int32_t](<int32_t*>(spare.ptr + n), n)
    cdef Py_ssize_t j = 0, first, end, top = -1, floor
    # The top block lives in registers: the pooling loop waits on a multiply, not on stores
    # and reloads of the block it has just pooled.
    cdef double top_w = 0.0, top_r = 0.0, new_w, new_r, shift
    cdef int32_t top_start = 0, top_epoch = 0
    # 1 / eps overflows only for eps below 2**-1024: weights without the rounding correction.
    cdef bint precise = isfinite(1.0 / eps)
    while j < n:
        first = j
        end = _epoch_end(s, first, eps)
        w[first] = 1.0
        if precise:
            softrank_exp_of_steps(s.sub(first + 1, end - first - 1).ptr, s[first], eps,
                                  w.sub(first + 1, end - first - 1).ptr, end - first - 1)
        else:
            softrank_scaled_exp(s.sub(first + 1, end - first - 1).ptr, s[first], eps, 1.0,
                                w.sub(first + 1, end - first - 1).ptr, end - first - 1)
        floor = top + 1  # blocks floor.. are this epoch's; those below, older epochs'
        for j in range(first, end):
            new_w = w[j]
            new_r = <double>(n - j)
            # The new element is tested against the top block while both are in registers (a
            # spill and reload of the top would sit on the mispredicted branch's path).
            if top >= floor and top >= 0 and top_w * new_r <= new_w * top_r:
                top_w = top_w + new_w
                top_r = top_r + new_r
            else:
                if top >= 0:
                    start[top] = top_start
                    weight_sum[top] = top_w
                    rho_sum[top] = top_r
                    epoch[top] = top_epoch
                top += 1
                top_start = <int32_t>j
                top_epoch = <int32_t>first
                top_w = new_w
                top_r = new_r
                if top > floor:  # the block below is this epoch's: the test above said no
                    continue
            while True:
                if top > floor:
                    if not (weight_sum[top - 1] * top_r <= top_w * rho_sum[top - 1]):
                        break
                    top_w = weight_sum[top - 1] + top_w
                elif top > 0:
                    # The block below is an older epoch's: in this epoch's units (>= 1; inf,
                    # far apart, never pools). Pooled, it joins this epoch: its weight is then
                    # bounded by the top's, so it stays finite.
                    shift = exp((s[epoch[top - 1]] - s[first]) / eps)
                    if not (weight_sum[top - 1] * shift * top_r <= top_w * rho_sum[top - 1]):
                        break
                    top_w = weight_sum[top - 1] * shift + top_w
                    floor -= 1
                else:
                    break
                top_r = rho_sum[top - 1] + top_r
                top_start = start[top - 1]
                top -= 1
        j = end
    start[top] = top_start
    weight_sum[top] = top_w
    rho_sum[top] = top_r
    epoch[top] = top_epoch
    return top


cdef inline Py_ssize_t _pav_blocks(Mode* mode, Span[double] s, double eps, Span[int32_t] start,
                                   Span[double] state, Span[double] value,
                                   Span[uint64_t] spare) noexcept nogil:
    """Pool adjacent violators on the sorted row s: a stack of blocks, each (start, state,
    value). Returns the index of the top block. spare: 2n words of scratch (rank/kl)."""
    cdef Py_ssize_t n = s.len
    cdef Py_ssize_t j, top = -1, a, right
    cdef double st
    cdef double* memo = softrank_geometric_memo_for(eps) if Mode is SortKL else NULL
    if Mode is RankKL:
        return _pav_rank_kl(s, eps, start, state, value, spare)
    # The top block lives in registers (top_start, top_state, top_value), spilled to the stack
    # when a new element does not pool into it: the test against it waits on no reload.
    cdef Py_ssize_t top_start = 0
    cdef double top_state = 0.0, top_value = 0.0, new_value
    for j in range(n):
        new_value = _block_value(mode, s[j], _initial_state(mode), j, 1, n, eps, memo)
        if top < 0 or not (top_value <= new_value):
            if top >= 0:
                start[top] = <int32_t>top_start
                state[top] = top_state
                value[top] = top_value
            top += 1
            top_start = j
            top_state = _initial_state(mode)
            top_value = new_value
            continue
        a = top_start
        top_state = _merged_state(mode, top_state, _initial_state(mode), s[j] - s[a], 1, eps)
        top_value = _block_value(mode, s[a], top_state, a, j + 1 - a, n, eps, memo)
        while top > 0 and value[top - 1] <= top_value:
            a = start[top - 1]
            right = top_start
            top_state = _merged_state(mode, state[top - 1], top_state, s[right] - s[a],
                                      j + 1 - right, eps)
            top -= 1
            top_start = a
            top_value = _block_value(mode, s[a], top_state, a, j + 1 - a, n, eps, memo)
    if top >= 0:
        start[top] = <int32_t>top_start
        state[top] = top_state
        value[top] = top_value
    return top


cdef inline double _sum_of(Span[double] w) noexcept nogil:
    """The sum of w in 8 interleaved partial sums, added pairwise at the end: a fixed order (the
    same bits on every CPU), and rounding errors that grow with len / 8."""
    cdef double lane[8]
    cdef Py_ssize_t j
    for j in range(8):
        lane[j] = 0.0
    for j in range(w.len):
        lane[j & 7] += w[j]
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))


cdef inline void _expand_blocks(Mode* mode, Span[double] s, double eps, double sign,
                                Span[int32_t] perm, Span[floating] out, Span[int32_t] blocks,
                                Span[int32_t] start, Span[double] state, Span[double] weights,
                                Span[uint64_t] spare, Py_ssize_t top, Py_ssize_t b_lo,
                                Py_ssize_t b_hi) noexcept nogil:
    """Expand blocks b_lo..b_hi-1 of the PAV solution into outputs (closed forms:
    docs/CONTRACT.md). weights: scratch of n; spare: what _pav_blocks left there (rank/kl: its
    weights, then the blocks' epochs)."""
    cdef Py_ssize_t n = s.len
    cdef Span[double] w = Span[double](<double*>spare.ptr, n)
    cdef Span[int32_t] epoch = Span[int32_t](<int32_t*>(spare.ptr + n), n)
    cdef Py_ssize_t j, b, a, e, c
    cdef double st, s_a, mean_rho, scale
    cdef double* memo = softrank_geometric_memo_for(eps) if Mode is SortKL else NULL
    for b in range(b_lo, b_hi):
        a = start[b]
        e = start[b + 1] if b < top else n
        c = e - a
        st = state[b]
        s_a = s[a]
        mean_rho = (n - a) - 0.5 * (c - 1)
        blocks[a] = <int32_t>a
        if c == 1:
            # A singleton's state is exactly 0 (l2) or 1 (kl): the closed forms below reduce to
            # these, bit for bit, without their one or two divisions (sort rows of random data
            # are mostly singletons).
            if Mode is RankL2 or Mode is RankKL:
                out[perm[a]] = <floating>mean_rho
            else:
                out[a] = <floating>(sign * s_a + 0.0)
            continue
        if Mode is RankL2:
            for j in range(a, e):
                out[perm[j]] = <floating>(((s[j] - s_a) - st / c) / eps + mean_rho)
                blocks[j] = <int32_t>a
        elif Mode is RankKL and epoch[b] <= a:
            # The block lies in one epoch: PAV's weights, precise against the epoch's first
            # value, give the softmax without an exp.
            scale = c * mean_rho / _sum_of(w.sub(a, c))
            for j in range(a, e):
                out[perm[j]] = <floating>(w[j] * scale)
                blocks[j] = <int32_t>a
        elif Mode is RankKL:
            # A block pooled across epochs (its weights are in two units): weights against its
            # head (exp(0) = 1 for it), summed anew.
            st = 1.0 + softrank_exp_sum(s.sub(a + 1, c - 1).ptr, s_a, eps,
                                        weights.sub(a + 1, c - 1).ptr, c - 1)
            scale = c * mean_rho / st
            out[perm[a]] = <floating>scale
            for j in range(a + 1, e):
                out[perm[j]] = <floating>(weights[j] * scale)
                blocks[j] = <int32_t>a
        elif Mode is SortL2:
            for j in range(a, e):
                # + 0.0 turns -0.0 into +0.0 (hard sorts print as torch.sort's do)
                out[j] = <floating>(sign * (s_a + st / c + ((a - j) + 0.5 * (c - 1)) / eps) + 0.0)
                blocks[j] = <int32_t>a
        else:
            st = s_a + log(st) - _log_geometric_ratio(c, eps, memo)
            for j in range(a, e):
                out[j] = <floating>(sign * (st - (j - a) / eps) + 0.0)
                blocks[j] = <int32_t>a


cdef inline void _pav_row(Mode* mode, Span[double] s, double eps, double sign,
                          Span[int32_t] perm, Span[floating] out, Span[int32_t] blocks,
                          Span[int32_t] start, Span[double] state, Span[double] value,
                          Span[uint64_t] spare) noexcept nogil:
    cdef Py_ssize_t top = _pav_blocks(mode, s, eps, start, state, value, spare)
    _expand_blocks(mode, s, eps, sign, perm, out, blocks, start, state, value, spare, top, 0,
                   top + 1)


cdef inline void _nan_row_forward(Span[floating] out, Span[int32_t] perm,
                                  Span[int32_t] blocks) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(out.len):
        out[j] = NAN
        perm[j] = <int32_t>j
        blocks[j] = 0
    blocks[0] = -1


cdef inline bint _needs_scaling(int mode, Span[double] s) noexcept nogil:
    """Differences s_j - s_a of l2 rows with values near the float64 limit overflow."""
    cdef Py_ssize_t n = s.len
    return (mode == RANK_L2 or mode == SORT_L2) and max(-s[n - 1], s[0]) > HUGE


cdef inline void _solve_sorted_row(int mode, Span[double] s, double eps, double sign,
                                   Span[int32_t] perm, Span[floating] out, Span[int32_t] blocks,
                                   Workspace* work) noexcept nogil:
    """PAV and expansion of a finite row sorted into s (perm: its order)."""
    cdef Py_ssize_t n = s.len
    cdef Span[int32_t] start = work.ints.sub(0, n)
    cdef Span[double] state = work.reals.sub(n, n)
    cdef Span[double] value = work.reals.sub(2 * n, n)
    cdef Span[uint64_t] spare = work.keys.sub(0, 2 * n)  # the sort's, done with
    cdef Py_ssize_t j
    if _needs_scaling(mode, s):
        # Solve the problem scaled by a power of two (exact). rank(x, eps) = rank(x/k, eps/k)
        # and sort(x, eps) = k * sort(x/k, eps*k) for the l2 projection.
        for j in range(n):
            s[j] = s[j] * (1.0 / HUGE_SCALE)
        if mode == RANK_L2:
            _pav_row(<RankL2*>NULL, s, eps / HUGE_SCALE, sign, perm, out, blocks, start, state,
                     value, spare)
        else:
            _pav_row(<SortL2*>NULL, s, eps * HUGE_SCALE, sign, perm, out, blocks, start, state,
                     value, spare)
            for j in range(n):
                out[j] = <floating>(out[j] * HUGE_SCALE)
        return
    # Dispatch once per row to the _pav_row specialised for the mode.
    if mode == RANK_L2:
        _pav_row(<RankL2*>NULL, s, eps, sign, perm, out, blocks, start, state, value, spare)
    elif mode == RANK_KL:
        _pav_row(<RankKL*>NULL, s, eps, sign, perm, out, blocks, start, state, value, spare)
    elif mode == SORT_L2:
        _pav_row(<SortL2*>NULL, s, eps, sign, perm, out, blocks, start, state, value, spare)
    else:
        _pav_row(<SortKL*>NULL, s, eps, sign, perm, out, blocks, start, state, value, spare)


cdef inline void _forward_row(int mode, Span[floating] x, Span[floating] out,
                              Span[int32_t] perm, Span[int32_t] blocks, double eps, double sign,
                              Workspace* work) noexcept nogil:
    cdef Py_ssize_t n = x.len
    cdef Span[uint64_t] ka = work.keys.sub(0, n)
    cdef Span[uint64_t] kb = work.keys.sub(n, n)
    cdef Span[uint64_t] full = work.keys.sub(2 * n, n)
    cdef Span[uint32_t] hist = Span[uint32_t](<uint32_t*>work.keys.sub(3 * n, HIST_WORDS).ptr,
                                              2 * HIST_WORDS)
    cdef Span[double] s = work.reals.sub(0, n)
    if _argsort_row(x, sign, ka, kb, full, hist, perm, s):
        _nan_row_forward(out, perm, blocks)
        return
    _solve_sorted_row(mode, s, eps, sign, perm, out, blocks, work)


# ----------------------------------------------------------------------------- backward

cdef inline void _backward_row(int mode, Span[floating] g, Span[int32_t] perm,
                               Span[int32_t] blocks, Span[floating] aux, double eps,
                               double sign, Span[floating] grad,
                               Span[double] weights) noexcept nogil:
    cdef Py_ssize_t j
    if blocks[0] < 0:
        for j in range(g.len):
            grad[j] = NAN
        return
    _backward_blocks(mode, g, perm, blocks, aux, eps, sign, grad, weights, 0, g.len)


cdef inline double _sum_at(Span[floating] g, Span[int32_t] perm, Py_ssize_t a,
                           Py_ssize_t e) noexcept nogil:
    """The sum of g[perm[j]] over [a, e) in four interleaved partial sums, so that the
    additions of a long block do not wait on each other (one chain cost 4 cycles an element)."""
    cdef double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0
    cdef Py_ssize_t j = a
    while j + 4 <= e:
        t0 += g[perm[j]]
        t1 += g[perm[j + 1]]
        t2 += g[perm[j + 2]]
        t3 += g[perm[j + 3]]
        j += 4
    while j < e:
        t0 += g[perm[j]]
        j += 1
    return (t0 + t1) + (t2 + t3)


cdef inline double _dot_at(Span[floating] g, Span[floating] aux, Span[int32_t] perm,
                           Py_ssize_t a, Py_ssize_t e) noexcept nogil:
    """The sum of g[perm[j]] * aux[perm[j]] (products in double) over [a, e), as _sum_at."""
    cdef double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0
    cdef Py_ssize_t j = a
    while j + 4 <= e:
        t0 += <double>g[perm[j]] * aux[perm[j]]
        t1 += <double>g[perm[j + 1]] * aux[perm[j + 1]]
        t2 += <double>g[perm[j + 2]] * aux[perm[j + 2]]
        t3 += <double>g[perm[j + 3]] * aux[perm[j + 3]]
        j += 4
    while j < e:
        t0 += <double>g[perm[j]] * aux[perm[j]]
        j += 1
    return (t0 + t1) + (t2 + t3)


cdef inline void _backward_blocks(int mode, Span[floating] g, Span[int32_t] perm,
                                  Span[int32_t] blocks, Span[floating] aux, double eps,
                                  double sign, Span[floating] grad, Span[double] weights,
                                  Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Gradient of the blocks in sorted positions [lo, hi) (lo and hi are block starts or n)."""
    cdef Py_ssize_t n = g.len
    cdef Py_ssize_t a, e, j, c
    cdef double total, norm, mean, scale = sign / eps, ref, r
    a = lo
    while a < hi:
        e = a + 1
        while e < hi and blocks[e] == a:
            e += 1
        c = e - a
        total = 0.0
        if c == 1 and mode == SORT_L2:  # the block mean of one cotangent, without a division
            grad[perm[a]] = <floating>(total + g[a])
        elif mode == RANK_L2:
            mean = _sum_at(g, perm, a, e) / c
            for j in range(a, e):
                grad[perm[j]] = <floating>(scale * (g[perm[j]] - mean))
        elif mode == RANK_KL and c == 1:  # a singleton's rank is the constant n - a
            grad[perm[a]] = 0.0
        elif mode == RANK_KL:
            # softmax(s_B) = out / sum_B(rho): the forward output is already max-shifted.
            mean = _dot_at(g, aux, perm, a, e) / (c * ((n - a) - 0.5 * (c - 1)))
            for j in range(a, e):
                r = aux[perm[j]]
                grad[perm[j]] = <floating>(scale * r * (g[perm[j]] - mean))
        elif mode == SORT_L2:
            for j in range(a, e):
                total += g[j]
            mean = total / c
            for j in range(a, e):
                grad[perm[j]] = <floating>mean
        elif c == 1:  # a singleton block: softmax weight exactly 1
            grad[perm[a]] = g[a]
        else:
            # softmax of s over the block, shifted by its maximum s_a (s is sorted decreasingly).
            ref = sign * aux[perm[a]]
            norm = 0.0
            for j in range(a, e):
                weights[j] = exp(sign * aux[perm[j]] - ref)
                norm += weights[j]
                total += g[j]
            for j in range(a, e):
                grad[perm[j]] = <floating>(weights[j] / norm * total)
        a = e


# ----------------------------------------------------------------------------- batched drivers

cdef extern from "_workspace.h":
    cdef cppclass WorkspaceBuffer "softrank_workspace_buffer":
        WorkspaceBuffer()
        uint64_t* acquire(size_t words) except +


cdef inline Py_ssize_t _forward_words(Py_ssize_t n) noexcept nogil:
    """Words of one thread's forward workspace, padded to whole cache lines plus one line."""
    cdef Py_ssize_t words = (3 * n + HIST_WORDS) + (n + 1) // 2 + 3 * n
    return (words + 7) // 8 * 8 + 8


cdef inline Workspace _forward_workspace(uint64_t* words, Py_ssize_t n) noexcept nogil:
    cdef Workspace work
    cdef Py_ssize_t key_words = 3 * n + HIST_WORDS
    cdef Py_ssize_t int_words = (n + 1) // 2
    work.keys = Span[uint64_t](words, key_words)
    work.ints = Span[int32_t](<int32_t*>(words + key_words), n)
    work.reals = Span[double](<double*>(words + key_words + int_words), 3 * n)
    return work


cdef inline void _forward_one(int mode, Span[floating] x, Span[floating] out,
                              Span[int32_t] perm, Span[int32_t] blocks, Py_ssize_t r,
                              Py_ssize_t n, double eps, double sign,
                              uint64_t* words) noexcept nogil:
    cdef Workspace work = _forward_workspace(words, n)
    _forward_row(mode, x.sub(r * n, n), out.sub(r * n, n), perm.sub(r * n, n),
                 blocks.sub(r * n, n), eps, sign, &work)


cdef void _forward_rows(int mode, Span[floating] x, Span[floating] out, Span[int32_t] perm,
                        Span[int32_t] blocks, Py_ssize_t rows, Py_ssize_t n, double eps,
                        double sign, uint64_t* words, int n_threads) noexcept nogil:
    cdef Py_ssize_t r, per_thread = _forward_words(n)
    cdef Workspace work
    if _splits_rows(rows, n, n_threads):
        work = _forward_workspace(words, n)
        for r in range(rows):
            _forward_split_row(mode, x.sub(r * n, n), out.sub(r * n, n), perm.sub(r * n, n),
                               blocks.sub(r * n, n), eps, sign, &work,
                               Span[uint32_t](<uint32_t*>(words + per_thread),
                                              2 * n_threads * HIST_WORDS), n_threads)
    elif n_threads <= 1:
        for r in range(rows):
            _forward_one(mode, x, out, perm, blocks, r, n, eps, sign, words)
    else:
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            _forward_one(mode, x, out, perm, blocks, r, n, eps, sign,
                         words + threadid() * per_thread)


# One long row on several threads. A batch with fewer rows than threads would leave threads
# idle under the row-parallel drivers above; from SPLIT_ROW_MIN elements such rows are solved one
# at a time, each step but PAV split across the threads: the radix passes (each thread counts
# and scatters its chunk of the words, at offsets that keep the sort stable), the decoding of
# the sorted words, the expansion of the blocks, and the backward's blocks.
# PAV itself stays serial.
cdef Py_ssize_t SPLIT_ROW_MIN = 65536


cdef inline bint _splits_rows(Py_ssize_t rows, Py_ssize_t n, int n_threads) noexcept nogil:
    return n_threads > 1 and rows < n_threads and n >= SPLIT_ROW_MIN


cdef inline Py_ssize_t _chunk_start(Py_ssize_t t, Py_ssize_t n, int n_threads) noexcept nogil:
    """Start of thread t's chunk of n positions (t = n_threads gives n)."""
    return t * n // n_threads


cdef inline Py_ssize_t _split_forward_words(Py_ssize_t n, int n_threads) noexcept nogil:
    """A row's forward workspace plus one set of 11-bit radix histograms per thread."""
    return _forward_words(n) + n_threads * HIST_WORDS


cdef inline void _count_digit(Span[uint64_t] src, Py_ssize_t lo, Py_ssize_t hi, int shift,
                              Span[uint32_t] hist) noexcept nogil:
    cdef Py_ssize_t j
    memset(hist.ptr, 0, 2048 * sizeof(uint32_t))
    for j in range(lo, hi):
        hist[(src[j] >> shift) & 2047] += 1


cdef inline Py_ssize_t _first_block_from(Span[int32_t] start, Py_ssize_t top,
                                         Py_ssize_t position) noexcept nogil:
    """The first block (of 0..top) starting at or after position; top + 1 if none."""
    cdef Py_ssize_t lo = 0, hi = top + 1, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if start[mid] < position:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _pav_blocks_of(int mode, Span[double] s, double eps, Span[int32_t] start,
                                      Span[double] state, Span[double] value,
                                      Span[uint64_t] spare) noexcept nogil:
    if mode == RANK_L2:
        return _pav_blocks(<RankL2*>NULL, s, eps, start, state, value, spare)
    elif mode == RANK_KL:
        return _pav_blocks(<RankKL*>NULL, s, eps, start, state, value, spare)
    elif mode == SORT_L2:
        return _pav_blocks(<SortL2*>NULL, s, eps, start, state, value, spare)
    return _pav_blocks(<SortKL*>NULL, s, eps, start, state, value, spare)


cdef inline void _expand_blocks_of(int mode, Span[double] s, double eps, double sign,
                                   Span[int32_t] perm, Span[floating] out, Span[int32_t] blocks,
                                   Span[int32_t] start, Span[double] state, Span[double] weights,
                                   Span[uint64_t] spare, Py_ssize_t top, Py_ssize_t b_lo,
                                   Py_ssize_t b_hi) noexcept nogil:
    if mode == RANK_L2:
        _expand_blocks(<RankL2*>NULL, s, eps, sign, perm, out, blocks, start, state, weights,
                       spare, top, b_lo, b_hi)
    elif mode == RANK_KL:
        _expand_blocks(<RankKL*>NULL, s, eps, sign, perm, out, blocks, start, state, weights,
                       spare, top, b_lo, b_hi)
    elif mode == SORT_L2:
        _expand_blocks(<SortL2*>NULL, s, eps, sign, perm, out, blocks, start, state, weights,
                       spare, top, b_lo, b_hi)
    else:
        _expand_blocks(<SortKL*>NULL, s, eps, sign, perm, out, blocks, start, state, weights,
                       spare, top, b_lo, b_hi)


cdef void _forward_split_row(int mode, Span[floating] x, Span[floating] out,
                             Span[int32_t] perm, Span[int32_t] blocks, double eps, double sign,
                             Workspace* work, Span[uint32_t] hists, int n_threads) noexcept nogil:
    """_forward_row of one row on n_threads threads (three 11-bit radix passes); hists holds
    3 x 2048 counts per thread. Same results as _forward_row, bit for bit."""
    cdef Py_ssize_t n = x.len
    cdef Span[uint64_t] ka = work.keys.sub(0, n)
    cdef Span[uint64_t] kb = work.keys.sub(n, n)
    cdef Span[uint64_t] full = work.keys.sub(2 * n, n)
    cdef Span[uint64_t] src, dst
    cdef Span[double] s = work.reals.sub(0, n)
    cdef Span[int32_t] start = work.ints.sub(0, n)
    cdef Span[double] state = work.reals.sub(n, n)
    cdef Span[double] value = work.reals.sub(2 * n, n)
    cdef Py_ssize_t per = 3 * 2048  # counts per thread
    cdef Py_ssize_t t, b, top
    cdef int d, shift, nonfinite = 0, shared_highs = 0
    cdef bint moved = False, in_b = False
    cdef uint32_t total, c
    cdef uint64_t first_key
    memset(hists.ptr, 0, n_threads * per * sizeof(uint32_t))
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        nonfinite |= _build_keys(<Digits11x3*>NULL, x, sign, ka, full, hists.sub(t * per, per),
                                 _chunk_start(t, n, n_threads),
                                 _chunk_start(t + 1, n, n_threads))
    if nonfinite:
        _nan_row_forward(out, perm, blocks)
        return
    first_key = ka[0]
    for d in range(3):
        shift = 32 + 11 * d
        # Every key has the same digit: nothing to do (totals do not depend on the order).
        total = 0
        for t in range(n_threads):
            total += hists[t * per + 2048 * d + ((first_key >> shift) & 2047)]
        if total == <uint32_t>n:
            continue
        if in_b:
            src, dst = kb, ka
        else:
            src, dst = ka, kb
        if moved:  # the chunks now hold other words: count this digit again
            for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
                _count_digit(src, _chunk_start(t, n, n_threads),
                             _chunk_start(t + 1, n, n_threads), shift,
                             hists.sub(t * per + 2048 * d, 2048))
        # Offsets: bucket by bucket, thread 0's words before thread 1's (stable).
        total = 0
        for b in range(2048):
            for t in range(n_threads):
                c = hists[t * per + 2048 * d + b]
                hists[t * per + 2048 * d + b] = total
                total += c
        for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            _scatter_pass(src.sub(_chunk_start(t, n, n_threads),
                                  _chunk_start(t + 1, n, n_threads) - _chunk_start(t, n, n_threads)),
                          dst, _chunk_start(t + 1, n, n_threads) - _chunk_start(t, n, n_threads),
                          shift, 2047, hists.sub(t * per + 2048 * d, 2048))
        in_b = not in_b
        moved = True
    if in_b:
        ka = kb
    if floating is float:
        for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            _decode_words32(ka, perm, s, _chunk_start(t, n, n_threads),
                            _chunk_start(t + 1, n, n_threads))
    else:
        for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            shared_highs |= _perm_of_words(ka, perm, _chunk_start(t, n, n_threads),
                                           _chunk_start(t + 1, n, n_threads))
        if shared_highs:
            for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
                _sort_equal_high_runs(ka, full, perm, _chunk_start(t, n, n_threads),
                                      _chunk_start(t + 1, n, n_threads))
        for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            _gather_sorted(x, sign, perm, s, _chunk_start(t, n, n_threads),
                           _chunk_start(t + 1, n, n_threads))
    if _needs_scaling(mode, s):  # rare: the serial solver handles the scaling
        _solve_sorted_row(mode, s, eps, sign, perm, out, blocks, work)
        return
    top = _pav_blocks_of(mode, s, eps, start, state, value, work.keys.sub(0, 2 * n))
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        _expand_blocks_of(mode, s, eps, sign, perm, out, blocks, start, state, value,
                          work.keys.sub(0, 2 * n), top,
                          _first_block_from(start, top, _chunk_start(t, n, n_threads)),
                          _first_block_from(start, top, _chunk_start(t + 1, n, n_threads)))


cdef void _backward_split_row(int mode, Span[floating] g, Span[int32_t] perm,
                              Span[int32_t] blocks, Span[floating] aux, double eps, double sign,
                              Span[floating] grad, Span[double] weights,
                              int n_threads) noexcept nogil:
    """_backward_row of one row on n_threads threads, each on the blocks that start in its
    chunk of sorted positions."""
    cdef Py_ssize_t n = g.len
    cdef Py_ssize_t t, largest = 0
    if blocks[0] >= 0:
        for t in range(n_threads):
            largest = max(largest, _block_start_at(blocks, _chunk_start(t + 1, n, n_threads))
                          - _block_start_at(blocks, _chunk_start(t, n, n_threads)))
    if blocks[0] < 0 or 4 * largest > 3 * n:  # NaN row, or one thread would do most blocks
        _backward_row(mode, g, perm, blocks, aux, eps, sign, grad, weights)
        return
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        _backward_blocks(mode, g, perm, blocks, aux, eps, sign, grad, weights,
                         _block_start_at(blocks, _chunk_start(t, n, n_threads)),
                         _block_start_at(blocks, _chunk_start(t + 1, n, n_threads)))


cdef inline Py_ssize_t _block_start_at(Span[int32_t] blocks, Py_ssize_t position) noexcept nogil:
    """Start of the block holding sorted position (n for position n)."""
    return blocks.len if position >= blocks.len else blocks[position]


cdef inline Py_ssize_t _backward_words(int mode, Py_ssize_t n) noexcept nogil:
    """Words of one thread's backward workspace (softmax weights of sort/kl), padded."""
    return (n + 7) // 8 * 8 + 8 if mode == SORT_KL else 0


cdef void _backward_rows(int mode, Span[floating] g, Span[int32_t] perm, Span[int32_t] blocks,
                         Span[floating] aux, Span[floating] grad, Py_ssize_t rows, Py_ssize_t n,
                         double eps, double sign, uint64_t* words, int n_threads) noexcept nogil:
    cdef Py_ssize_t r, per_thread = _backward_words(mode, n)
    cdef Py_ssize_t weights = n if mode == SORT_KL else 0
    if _splits_rows(rows, n, n_threads):  # the threads share one row's weights
        for r in range(rows):
            _backward_split_row(mode, g.sub(r * n, n), perm.sub(r * n, n), blocks.sub(r * n, n),
                                aux.sub(r * n, n), eps, sign, grad.sub(r * n, n),
                                Span[double](<double*>words, weights), n_threads)
    elif n_threads <= 1:
        for r in range(rows):
            _backward_row(mode, g.sub(r * n, n), perm.sub(r * n, n), blocks.sub(r * n, n),
                          aux.sub(r * n, n), eps, sign, grad.sub(r * n, n),
                          Span[double](<double*>words, weights))
    else:
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            _backward_row(mode, g.sub(r * n, n), perm.sub(r * n, n), blocks.sub(r * n, n),
                          aux.sub(r * n, n), eps, sign, grad.sub(r * n, n),
                          Span[double](<double*>(words + threadid() * per_thread), weights))


# ----------------------------------------------------------------------------- entry points
# Private: softrank/_cpu_backend.py chooses the threads. Two forms of each:
# * forward/backward take ndarrays, read through the NumPy C API (a typed memoryview per argument
#   cost ~0.2 us each, most of a short call), and check their layout, so a wrong call raises
#   instead of corrupting memory;
# * forward_at/backward_at take the address of C-contiguous (rows, n) data that the caller
#   guarantees (the torch layer: x.numpy() and x.detach() cost ~1.2 us per short call) and
#   allocate the outputs themselves.

# Thread policy. A call passing n_threads <= 0 gets _auto_threads: softrank/_cpu_backend.py sets
# (and documents) the thresholds at import; deciding here saves the torch layer a Python call
# per forward and backward.
cdef int _policy_max_threads = 1
cdef Py_ssize_t _policy_min_forward = 256
cdef Py_ssize_t _policy_min_backward = 2048


def set_thread_policy(int max_threads, Py_ssize_t min_forward, Py_ssize_t min_backward):
    """Threads of calls with n_threads <= 0: up to max_threads, and rows in parallel from
    min_forward (forward) or min_backward (backward) elements per call."""
    global _policy_max_threads, _policy_min_forward, _policy_min_backward
    if max_threads < 1:
        raise ValueError(f"max_threads must be >= 1, got {max_threads}")
    _policy_max_threads, _policy_min_forward, _policy_min_backward = (
        max_threads, min_forward, min_backward)


cdef inline int _auto_threads(int mode, Py_ssize_t rows, Py_ssize_t n,
                              bint backward) noexcept nogil:
    """Rows run in parallel; a batch of fewer rows than threads uses one thread per row,
    except rows of SPLIT_ROW_MIN elements or more, which are split across all the threads.
    A rank/kl forward counts its elements twice (two exps per element: about twice the work)."""
    cdef Py_ssize_t work = rows * n * (2 if mode == RANK_KL and not backward else 1)
    if work < (_policy_min_backward if backward else _policy_min_forward):
        return 1
    if rows < _policy_max_threads and n < SPLIT_ROW_MIN:
        return <int>rows
    return _policy_max_threads


def threads_for(int mode, Py_ssize_t rows, Py_ssize_t n, bint backward=False):
    """The threads of a call of mode on (rows, n) that lets the solver choose (n_threads <= 0)."""
    return _auto_threads(mode, rows, n, backward)


cdef void _solve_forward(int mode, int typenum, void* x, void* out, int32_t* perm,
                         int32_t* blocks, Py_ssize_t rows, Py_ssize_t n, double eps, double sign,
                         int n_threads) except *:
    if n > 2147483647:  # positions are int32 (the message of softrank/_validation.py)
        raise ValueError(f"values has {n} elements along dim; at most 2147483647 are supported")
    if rows == 0 or n == 0:
        return
    if n_threads <= 0:
        n_threads = _auto_threads(mode, rows, n, False)
    cdef bint split = _splits_rows(rows, n, n_threads)
    if not split:
        n_threads = max(1, min(n_threads, rows))
    cdef Py_ssize_t size = rows * n
    cdef Py_ssize_t solver_words = (_split_forward_words(n, n_threads) if split
                                    else n_threads * _forward_words(n))
    # perm == NULL: the caller wants out only; perm and blocks go to scratch words (reused
    # memory: fresh perm and blocks arrays cost ~12% of a (1, 1000) forward)
    cdef WorkspaceBuffer buffer
    cdef uint64_t* words = buffer.acquire(solver_words + (size if perm == NULL else 0))
    if perm == NULL:
        perm = <int32_t*>(words + solver_words)
        blocks = perm + size
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _forward_rows(mode, Span[float](<float*>x, size), Span[float](<float*>out, size),
                          Span[int32_t](perm, size), Span[int32_t](blocks, size), rows, n, eps,
                          sign, words, n_threads)
        else:
            _forward_rows(mode, Span[double](<double*>x, size), Span[double](<double*>out, size),
                          Span[int32_t](perm, size), Span[int32_t](blocks, size), rows, n, eps,
                          sign, words, n_threads)


cdef void _solve_backward(int mode, int typenum, void* g, int32_t* perm, int32_t* blocks,
                          void* aux, void* grad, Py_ssize_t rows, Py_ssize_t n, double eps,
                          double sign, int n_threads) except *:
    if rows == 0 or n == 0:
        return
    if n_threads <= 0:
        n_threads = _auto_threads(mode, rows, n, True)
    cdef bint split = _splits_rows(rows, n, n_threads)
    if not split:
        n_threads = max(1, min(n_threads, rows))
    cdef WorkspaceBuffer buffer
    cdef uint64_t* words = buffer.acquire(max(1, (1 if split else n_threads)
                                              * _backward_words(mode, n)))
    cdef Py_ssize_t size = rows * n
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _backward_rows(mode, Span[float](<float*>g, size), Span[int32_t](perm, size),
                           Span[int32_t](blocks, size), Span[float](<float*>aux, size),
                           Span[float](<float*>grad, size), rows, n, eps, sign, words, n_threads)
        else:
            _backward_rows(mode, Span[double](<double*>g, size), Span[int32_t](perm, size),
                           Span[int32_t](blocks, size), Span[double](<double*>aux, size),
                           Span[double](<double*>grad, size), rows, n, eps, sign, words,
                           n_threads)


cdef int _check_array(cnp.ndarray a, str name, int typenum, Py_ssize_t rows, Py_ssize_t n,
                      bint writable) except -1:
    if (cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_TYPE(a) != typenum
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or cnp.PyArray_DIM(a, 0) != rows or cnp.PyArray_DIM(a, 1) != n
            or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError(
            f"{name} must be a C-contiguous {'writable ' if writable else ''}"
            f"({rows}, {n}) array of {cnp.PyArray_DescrFromType(typenum)}, got "
            f"{a.dtype} {(<object>a).shape} (contiguous: {bool(cnp.PyArray_IS_C_CONTIGUOUS(a))}, "
            f"native byte order: {bool(cnp.PyArray_ISNOTSWAPPED(a))})")
    return 0


cdef int _check_rows(cnp.ndarray x, str name) except -1:
    """The typenum of (rows, n) float32/float64 rows, or a ValueError."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")
    if cnp.PyArray_NDIM(x) != 2:
        raise ValueError(f"{name} must be 2-D (rows, n), got shape {(<object>x).shape}")
    return typenum


cdef int _check_mode(int mode) except -1:
    if not 0 <= mode <= 3:
        raise ValueError(f"mode must be 0..3, got {mode}")
    return 0


cdef inline cnp.ndarray _empty(Py_ssize_t rows, Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = rows
    dims[1] = n
    return cnp.PyArray_EMPTY(2, dims, typenum, 0)


cdef inline void* _data(cnp.ndarray a) noexcept:
    return cnp.PyArray_DATA(a)


def forward(int mode, cnp.ndarray x, cnp.ndarray out, cnp.ndarray perm, cnp.ndarray blocks,
            double eps, double sign, int n_threads):
    """Solve every row of x (mode: 0 rank/l2, 1 rank/kl, 2 sort/l2, 3 sort/kl) into out, perm
    and blocks (docs/CONTRACT.md)."""
    cdef int typenum = _check_rows(x, "x")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(x, 0), n = cnp.PyArray_DIM(x, 1)
    _check_array(x, "x", typenum, rows, n, False)
    _check_array(out, "out", typenum, rows, n, True)
    _check_array(perm, "perm", cnp.NPY_INT32, rows, n, True)
    _check_array(blocks, "blocks", cnp.NPY_INT32, rows, n, True)
    _check_mode(mode)
    _solve_forward(mode, typenum, _data(x), _data(out), <int32_t*>_data(perm),
                   <int32_t*>_data(blocks), rows, n, eps, sign, n_threads)


def forward_values(int mode, cnp.ndarray x, double eps, double sign, int n_threads):
    """forward() without the partition (nothing will differentiate the call): returns a new
    out array; perm and blocks go to scratch memory."""
    cdef int typenum = _check_rows(x, "x")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(x, 0), n = cnp.PyArray_DIM(x, 1)
    _check_array(x, "x", typenum, rows, n, False)
    _check_mode(mode)
    cdef cnp.ndarray out = _empty(rows, n, typenum)
    _solve_forward(mode, typenum, _data(x), _data(out), NULL, NULL, rows, n, eps, sign,
                   n_threads)
    return out


def forward_at(int mode, size_t x_address, Py_ssize_t rows, Py_ssize_t n, bint single,
               double eps, double sign, int n_threads):
    """forward() of the float32 (single) or float64 rows at x_address; returns new
    (out, perm, blocks) arrays."""
    _check_mode(mode)
    cdef int typenum = cnp.NPY_FLOAT if single else cnp.NPY_DOUBLE
    cdef cnp.ndarray out = _empty(rows, n, typenum)
    cdef cnp.ndarray perm = _empty(rows, n, cnp.NPY_INT32)
    cdef cnp.ndarray blocks = _empty(rows, n, cnp.NPY_INT32)
    _solve_forward(mode, typenum, <void*>x_address, _data(out), <int32_t*>_data(perm),
                   <int32_t*>_data(blocks), rows, n, eps, sign, n_threads)
    return out, perm, blocks


def forward_values_at(int mode, size_t x_address, Py_ssize_t rows, Py_ssize_t n, bint single,
                      double eps, double sign, int n_threads):
    """forward_at without the partition (nothing will differentiate the call): returns a new
    out array only."""
    _check_mode(mode)
    cdef int typenum = cnp.NPY_FLOAT if single else cnp.NPY_DOUBLE
    cdef cnp.ndarray out = _empty(rows, n, typenum)
    _solve_forward(mode, typenum, <void*>x_address, _data(out), NULL, NULL, rows, n, eps, sign,
                   n_threads)
    return out


def backward(int mode, cnp.ndarray g, cnp.ndarray perm, cnp.ndarray blocks, cnp.ndarray aux,
             double eps, double sign, cnp.ndarray grad, int n_threads):
    """Gradient of every row from the cotangent g and the forward's perm and blocks; aux is the
    output (rank/kl) or the input (sort/kl), ignored for l2."""
    cdef int typenum = _check_rows(g, "g")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(g, 0), n = cnp.PyArray_DIM(g, 1)
    _check_array(g, "g", typenum, rows, n, False)
    _check_array(perm, "perm", cnp.NPY_INT32, rows, n, False)
    _check_array(blocks, "blocks", cnp.NPY_INT32, rows, n, False)
    _check_array(aux, "aux", typenum, rows, n, False)
    _check_array(grad, "grad", typenum, rows, n, True)
    _check_mode(mode)
    _solve_backward(mode, typenum, _data(g), <int32_t*>_data(perm), <int32_t*>_data(blocks),
                    _data(aux), _data(grad), rows, n, eps, sign, n_threads)


def backward_at(int mode, size_t g_address, cnp.ndarray perm, cnp.ndarray blocks,
                size_t aux_address, bint single, double eps, double sign, int n_threads):
    """backward() of the float32 (single) or float64 cotangent at g_address, shaped like perm
    (the arrays forward_at returned); returns a new grad array. aux_address (the output for
    rank/kl, the input for sort/kl) is not read for l2 and may then be 0.
    """
    _check_mode(mode)
    if cnp.PyArray_NDIM(perm) != 2:
        raise ValueError(f"perm must be 2-D (rows, n), got shape {(<object>perm).shape}")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(perm, 0), n = cnp.PyArray_DIM(perm, 1)
    _check_array(perm, "perm", cnp.NPY_INT32, rows, n, False)
    _check_array(blocks, "blocks", cnp.NPY_INT32, rows, n, False)
    if aux_address == 0 and (mode == RANK_KL or mode == SORT_KL) and rows * n > 0:
        raise ValueError("aux_address is required for the kl regularization")
    cdef int typenum = cnp.NPY_FLOAT if single else cnp.NPY_DOUBLE
    cdef cnp.ndarray grad = _empty(rows, n, typenum)
    _solve_backward(mode, typenum, <void*>g_address, <int32_t*>_data(perm),
                    <int32_t*>_data(blocks), <void*>aux_address, _data(grad), rows, n, eps, sign,
                    n_threads)
    return grad


cdef extern from *:
    """
    #ifdef _OPENMP
    static const int softrank_openmp = 1;
    #else
    static const int softrank_openmp = 0;
    #endif
    """
    const int softrank_openmp


def split_row_min():
    """The shortest rows that a batch of fewer rows than threads splits across the threads."""
    return SPLIT_ROW_MIN


def radix_wide_min():
    """The shortest rows radix sorted with 11-bit digits (8-bit digits below)."""
    return RADIX_WIDE_MIN


def cpu_dispatch():
    """Whether the counting kernels were built with per-CPU variants (GCC on x86-64 Linux)."""
    return bool(softrank_cpu_dispatch)


def use_avx512(bint allowed):
    """Tests: allowed=False switches to the kernels of a CPU without AVX-512 (counting ranks,
    libm's exp), True back to those of this CPU. Not thread-safe: no call may be running."""
    _choose_kernels(allowed)


def network_max():
    """Longest row sorted by the sorting network (0: none on this CPU)."""
    return softrank_network_max


def counting_max():
    """(float32, float64): the longest rows ranked by counting instead of radix sorted."""
    return softrank_counting_max_f32, softrank_counting_max_f64


def openmp_enabled():
    """True when this extension was compiled with OpenMP (rows then run in parallel)."""
    return bool(softrank_openmp)


def bounds_checked():
    """True for a debug build (SOFTRANK_CYTHON_DEBUG=1): every span index is checked."""
    return bool(softrank_bounds_checked)


def _index_span_for_test(Py_ssize_t i):
    """Read element i of a 4-element span (tests: a debug build must abort for i outside 0..3)."""
    cdef double data[4]
    data[:] = [0.0, 1.0, 2.0, 3.0]
    cdef Span[double] span = Span[double](data, 4)
    return span[i] if 0 <= i < 4 or softrank_bounds_checked else None


def vector_exp():
    """The kernel that computes soft_rank/kl's exps now: "avx512", "avx2" (with FMA) or "libm"
    (by CPU, and use_avx512)."""
    return ("libm", "avx2", "avx512")[softrank_vector_exp]


def exp_of(cnp.ndarray t):
    """Tests: exp of each value of a C-contiguous (1, m) float64 array, by the kernel that
    weights soft_rank/kl blocks (vector_exp())."""
    _check_rows(t, "t")
    _check_array(t, "t", cnp.NPY_DOUBLE, 1, cnp.PyArray_DIM(t, 1), False)
    cdef cnp.ndarray out = _empty(1, cnp.PyArray_DIM(t, 1), cnp.NPY_DOUBLE)
    softrank_scaled_exp(<double*>_data(t), 0.0, 1.0, 1.0, <double*>_data(out), t.size)
    return out
