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
  rows, std::sort for short ones. -0.0 is keyed as +0.0.
* A row holding NaN or +-inf is marked with blocks[0] = -1; its outputs and gradients are NaN.
* Accumulation is in float64 for both float32 and float64 data.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport exp, log, expm1, NAN
from libc.stdint cimport uint64_t, uint32_t, int32_t
from libc.string cimport memcpy
cimport cython

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
    # Rows up to this length are sorted by comparison (std::sort): below it the radix histograms
    # and passes cost more than they save (measured, benchmarks/bench_cpu.py).
    COMPARISON_MAX = 24
    RADIX_BUCKETS = 256

cdef extern from *:
    """
    #include <algorithm>
    #include <stdint.h>
    /* float32 rows: (key << 32 | index) words, so plain integer order is (key, index) order. */
    static inline void softrank_sort_packed(uint64_t *first, Py_ssize_t n) {
        std::sort(first, first + n);
    }
    /* float64 rows: sort the indices by their 64-bit key, ties by index (stable order). */
    static inline void softrank_sort_by_key(const uint64_t *keys, int32_t *idx, Py_ssize_t n) {
        std::sort(idx, idx + n, [keys](int32_t a, int32_t b) {
            return keys[a] < keys[b] || (keys[a] == keys[b] && a < b);
        });
    }
    """
    void softrank_sort_packed(uint64_t *first, Py_ssize_t n) noexcept nogil
    void softrank_sort_by_key(const uint64_t *keys, int32_t *idx, Py_ssize_t n) noexcept nogil


# ----------------------------------------------------------------------------- keys and sorting

cdef inline uint64_t _descending_key32(float z) noexcept nogil:
    # Order-preserving map float32 -> uint32, then inverted so that ascending keys = descending z.
    cdef uint32_t u
    if z == 0:
        z = 0.0  # -0.0 and +0.0 are the same value: give them the same key
    memcpy(&u, &z, 4)
    if u & 0x80000000u:
        u = ~u
    else:
        u = u | 0x80000000u
    return <uint64_t>(~u)


cdef inline uint64_t _descending_key64(double z) noexcept nogil:
    cdef uint64_t u
    if z == 0:
        z = 0.0
    memcpy(&u, &z, 8)
    if u & 0x8000000000000000u:
        u = ~u
    else:
        u = u | 0x8000000000000000u
    return ~u


cdef inline void _scatter_pass(uint64_t[::1] src, uint64_t[::1] dst, int32_t[::1] isrc,
                               int32_t[::1] idst, bint with_idx, Py_ssize_t n, int shift,
                               uint64_t[::1] offsets, Py_ssize_t base) noexcept nogil:
    cdef Py_ssize_t i, pos
    cdef uint64_t k
    cdef int digit
    for i in range(n):
        k = src[i]
        digit = <int>((k >> shift) & 255)
        pos = <Py_ssize_t>offsets[base + digit]
        offsets[base + digit] = pos + 1
        dst[pos] = k
        if with_idx:
            idst[pos] = isrc[i]


cdef inline bint _radix_sort(uint64_t[::1] ka, uint64_t[::1] kb, int32_t[::1] ia,
                             int32_t[::1] ib, bint with_idx, Py_ssize_t n, int first_byte,
                             uint64_t[::1] hist) noexcept nogil:
    """LSD radix sort of bytes first_byte..7 of the keys; hist holds their byte histograms.

    Returns False if the result is in (ka, ia), True if it is in (kb, ib). A byte on which every
    key agrees is skipped (common for the exponent byte of similar-magnitude data).
    """
    cdef bint in_b = False
    cdef int d, digit
    cdef Py_ssize_t base, b
    cdef uint64_t total, c, first_key
    for d in range(first_byte, 8):
        base = d * RADIX_BUCKETS
        first_key = kb[0] if in_b else ka[0]
        digit = <int>((first_key >> (8 * d)) & 255)
        if hist[base + digit] == <uint64_t>n:
            continue
        total = 0
        for b in range(RADIX_BUCKETS):
            c = hist[base + b]
            hist[base + b] = total
            total += c
        if in_b:
            _scatter_pass(kb, ka, ib, ia, with_idx, n, 8 * d, hist, base)
        else:
            _scatter_pass(ka, kb, ia, ib, with_idx, n, 8 * d, hist, base)
        in_b = not in_b
    return in_b


cdef inline bint _argsort_row(const floating[::1] x, double sign, uint64_t[::1] ka,
                              uint64_t[::1] kb, int32_t[::1] ia, int32_t[::1] ib,
                              uint64_t[::1] hist, int32_t[::1] perm,
                              double[::1] s) noexcept nogil:
    """perm <- indices of sign*x in decreasing order (stable), s <- the sorted sign*x.

    Returns True if the row holds a NaN or an infinity (perm and s are then not filled).
    float32 keys are packed with their index into one uint64 (key << 32 | index) so that a radix
    pass moves a single word; float64 keys carry a separate int32 index array.
    (The comparison sorts take raw pointers: Cython's debug bounds checks do not cover them.)
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t j, d
    cdef bint nonfinite = False
    cdef bint use_radix = n > COMPARISON_MAX
    cdef bint in_b = False
    cdef double v
    cdef uint64_t key
    if use_radix:  # clear the histograms of the key bytes that are sorted on
        for j in range((4 if floating is float else 0) * RADIX_BUCKETS, 8 * RADIX_BUCKETS):
            hist[j] = 0
    for j in range(n):
        v = x[j]
        if not (v - v == 0):  # NaN or +-inf
            nonfinite = True
        if floating is float:
            key = (_descending_key32(<float>(sign * v)) << 32) | <uint64_t>j
            if use_radix:
                for d in range(4, 8):
                    hist[d * RADIX_BUCKETS + ((key >> (8 * d)) & 255)] += 1
        else:
            key = _descending_key64(sign * v)
            ia[j] = <int32_t>j
            if use_radix:
                for d in range(8):
                    hist[d * RADIX_BUCKETS + ((key >> (8 * d)) & 255)] += 1
        ka[j] = key
    if nonfinite:
        return True
    if floating is float:
        if use_radix:
            in_b = _radix_sort(ka, kb, ia, ib, False, n, 4, hist)
        else:
            softrank_sort_packed(&ka[0], n)
        for j in range(n):
            perm[j] = <int32_t>((kb[j] if in_b else ka[j]) & 0xFFFFFFFFu)
    else:
        if use_radix:
            in_b = _radix_sort(ka, kb, ia, ib, True, n, 0, hist)
        else:
            softrank_sort_by_key(&ka[0], &ia[0], n)
        for j in range(n):
            perm[j] = ib[j] if in_b else ia[j]
    for j in range(n):
        s[j] = sign * x[perm[j]]
    return False


# ----------------------------------------------------------------------------- PAV

cdef inline double _log_geometric_ratio(Py_ssize_t c, double eps, double log_q1) noexcept nogil:
    """log(sum_{k<c} exp(-k/eps)) = logsumexp(rho_B/eps) - rho_a/eps for a block of c elements.

    log_q1 = log(1 - exp(-1/eps)) is the same for every block of a row (computed once).
    """
    return log(-expm1(-c / eps)) - log_q1


# Block state, relative to the block's first (largest) element s_a, so that a large common offset
# (values like 1e29, or 1e8 + noise) costs no precision and nothing overflows:
#   l2:      d = sum_B (s_j - s_a)
#   rank/kl: S = sum_B exp((s_j - s_a)/eps), in [1, c]
#   sort/kl: S = sum_B exp(s_j - s_a), in [1, c]
# A single element has state 0 (l2) or 1 (kl). Pooling a kl block costs one exp (no log-add-exp).

cdef inline double _initial_state(Mode* mode) noexcept nogil:
    if Mode is RankKL or Mode is SortKL:
        return 1.0
    return 0.0


cdef inline double _block_value(Mode* mode, double s_a, double state, Py_ssize_t a, Py_ssize_t c,
                                Py_ssize_t n, double eps, double log_q1) noexcept nogil:
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
        return (n - a) / eps - s_a + _log_geometric_ratio(c, eps, log_q1) - log(state)


cdef inline double _merged_state(Mode* mode, double left, double right, double shift,
                                 Py_ssize_t right_count, double eps) noexcept nogil:
    """State of two adjacent blocks pooled; shift = s_b - s_a <= 0 (right head minus left head)."""
    if Mode is RankL2 or Mode is SortL2:
        return left + right + right_count * shift
    elif Mode is RankKL:
        return left + right * exp(shift / eps)
    else:
        return left + right * exp(shift)


cdef inline double _rho_sum(Py_ssize_t a, Py_ssize_t c, Py_ssize_t n) noexcept nogil:
    """sum of rho_k = n - k over the block [a, a + c)."""
    return c * ((n - a) - 0.5 * (c - 1))


cdef inline Py_ssize_t _pav_rank_kl(const double[::1] s, double eps, int32_t[::1] start,
                                    double[::1] state) noexcept nogil:
    """PAV of soft_rank/kl; returns the index of the top block.

    Same pooling rule as the generic loop (value(previous) <= value(top), with
    value = s_a + eps * log(S / R)), compared in the linear domain:
    exp((s_prev - s_top)/eps) * S_prev * R_top <= S_top * R_prev. That exponential also pools the
    states, so each comparison costs one exp instead of an exp and a log.
    """
    cdef Py_ssize_t n = s.shape[0]
    cdef Py_ssize_t j, top = -1, a, right
    cdef double ratio
    for j in range(n):
        top += 1
        start[top] = <int32_t>j
        state[top] = 1.0
        while top > 0:
            a = start[top - 1]
            right = start[top]
            ratio = exp((s[a] - s[right]) / eps)  # >= 1; inf means "far apart": no pooling
            if not (ratio * state[top - 1] * _rho_sum(right, j + 1 - right, n)
                    <= state[top] * _rho_sum(a, right - a, n)):
                break
            state[top - 1] = state[top - 1] + state[top] / ratio
            top -= 1
    return top


cdef inline void _pav_row(Mode* mode, const double[::1] s, double eps, double sign,
                          const int32_t[::1] perm, floating[::1] out, int32_t[::1] blocks,
                          int32_t[::1] start, double[::1] state,
                          double[::1] value) noexcept nogil:
    cdef Py_ssize_t n = s.shape[0]
    cdef Py_ssize_t j, top = -1, b, a, e, c, right
    cdef double st, s_a, mean_rho, scale
    cdef double log_q1 = log(-expm1(-1.0 / eps)) if Mode is SortKL else 0.0
    if Mode is RankKL:
        top = _pav_rank_kl(s, eps, start, state)
    else:
        # Pool adjacent violators: a stack of blocks, each (start, state, value).
        for j in range(n):
            top += 1
            start[top] = <int32_t>j
            state[top] = _initial_state(mode)
            value[top] = _block_value(mode, s[j], state[top], j, 1, n, eps, log_q1)
            while top > 0 and value[top - 1] <= value[top]:
                a = start[top - 1]
                right = start[top]
                st = _merged_state(mode, state[top - 1], state[top], s[right] - s[a],
                                   j + 1 - right, eps)
                top -= 1
                state[top] = st
                value[top] = _block_value(mode, s[a], st, a, j + 1 - a, n, eps, log_q1)
    # Expand blocks into outputs (see docs/CONTRACT.md for the closed forms).
    for b in range(top + 1):
        a = start[b]
        e = start[b + 1] if b < top else n
        c = e - a
        st = state[b]
        s_a = s[a]
        mean_rho = (n - a) - 0.5 * (c - 1)
        if Mode is RankL2:
            for j in range(a, e):
                out[perm[j]] = <floating>(((s[j] - s_a) - st / c) / eps + mean_rho)
                blocks[j] = <int32_t>a
        elif Mode is RankKL:
            scale = c * mean_rho / st
            for j in range(a, e):
                out[perm[j]] = <floating>(exp((s[j] - s_a) / eps) * scale)
                blocks[j] = <int32_t>a
        elif Mode is SortL2:
            for j in range(a, e):
                # + 0.0 turns -0.0 into +0.0 (hard sorts print as torch.sort's do)
                out[j] = <floating>(sign * (s_a + st / c + ((a - j) + 0.5 * (c - 1)) / eps) + 0.0)
                blocks[j] = <int32_t>a
        else:
            st = s_a + log(st) - (_log_geometric_ratio(c, eps, log_q1) if c > 1 else 0.0)
            for j in range(a, e):
                out[j] = <floating>(sign * (st - (j - a) / eps) + 0.0)
                blocks[j] = <int32_t>a


cdef inline void _nan_row_forward(floating[::1] out, int32_t[::1] perm,
                                  int32_t[::1] blocks) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(out.shape[0]):
        out[j] = NAN
        perm[j] = <int32_t>j
        blocks[j] = 0
    blocks[0] = -1


cdef inline void _forward_row(int mode, const floating[::1] x, floating[::1] out,
                              int32_t[::1] perm, int32_t[::1] blocks, double eps, double sign,
                              uint64_t[::1] keys, int32_t[::1] ints,
                              double[::1] reals) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0]
    cdef uint64_t[::1] ka = keys[0:n]
    cdef uint64_t[::1] kb = keys[n:2 * n]
    cdef uint64_t[::1] hist = keys[2 * n:]
    cdef int32_t[::1] ia = ints[0:n]
    cdef int32_t[::1] ib = ints[n:2 * n]
    cdef int32_t[::1] start = ints[2 * n:3 * n]
    cdef double[::1] s = reals[0:n]
    cdef double[::1] state = reals[n:2 * n]
    cdef double[::1] value = reals[2 * n:3 * n]
    cdef Py_ssize_t j
    cdef double largest
    if _argsort_row(x, sign, ka, kb, ia, ib, hist, perm, s):
        _nan_row_forward(out, perm, blocks)
        return
    largest = max(-s[n - 1], s[0])
    if largest > HUGE and (mode == RANK_L2 or mode == SORT_L2):
        # Differences s_j - s_a of values near the float64 limit overflow: solve the problem
        # scaled by a power of two (exact). rank(x, eps) = rank(x/k, eps/k) and
        # sort(x, eps) = k * sort(x/k, eps*k) for the l2 projection.
        for j in range(n):
            s[j] = s[j] * (1.0 / HUGE_SCALE)
        if mode == RANK_L2:
            _pav_row(<RankL2*>NULL, s, eps / HUGE_SCALE, sign, perm, out, blocks, start, state, value)
        else:
            _pav_row(<SortL2*>NULL, s, eps * HUGE_SCALE, sign, perm, out, blocks, start, state, value)
            for j in range(n):
                out[j] = <floating>(out[j] * HUGE_SCALE)
        return
    # Dispatch once per row to the _pav_row specialised for the mode.
    if mode == RANK_L2:
        _pav_row(<RankL2*>NULL, s, eps, sign, perm, out, blocks, start, state, value)
    elif mode == RANK_KL:
        _pav_row(<RankKL*>NULL, s, eps, sign, perm, out, blocks, start, state, value)
    elif mode == SORT_L2:
        _pav_row(<SortL2*>NULL, s, eps, sign, perm, out, blocks, start, state, value)
    else:
        _pav_row(<SortKL*>NULL, s, eps, sign, perm, out, blocks, start, state, value)


# ----------------------------------------------------------------------------- backward

cdef inline void _backward_row(int mode, const floating[::1] g, const int32_t[::1] perm,
                               const int32_t[::1] blocks, const floating[::1] aux, double eps,
                               double sign, floating[::1] grad,
                               double[::1] weights) noexcept nogil:
    cdef Py_ssize_t n = g.shape[0]
    cdef Py_ssize_t a, e, j, c
    cdef double total, norm, mean, scale = sign / eps, ref, r
    if blocks[0] < 0:
        for j in range(n):
            grad[j] = NAN
        return
    a = 0
    while a < n:
        e = a + 1
        while e < n and blocks[e] == a:
            e += 1
        c = e - a
        total = 0.0
        if mode == RANK_L2:
            for j in range(a, e):
                total += g[perm[j]]
            mean = total / c
            for j in range(a, e):
                grad[perm[j]] = <floating>(scale * (g[perm[j]] - mean))
        elif mode == RANK_KL:
            # softmax(s_B) = out / sum_B(rho): the forward output is already max-shifted.
            for j in range(a, e):
                total += <double>g[perm[j]] * aux[perm[j]]  # product in double, not float
            mean = total / (c * ((n - a) - 0.5 * (c - 1)))
            for j in range(a, e):
                r = aux[perm[j]]
                grad[perm[j]] = <floating>(scale * r * (g[perm[j]] - mean))
        elif mode == SORT_L2:
            for j in range(a, e):
                total += g[j]
            mean = total / c
            for j in range(a, e):
                grad[perm[j]] = <floating>mean
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

cdef void _forward(int mode, const floating[:, ::1] x, floating[:, ::1] out,
                   int32_t[:, ::1] perm, int32_t[:, ::1] blocks, double eps, double sign,
                   uint64_t[:, ::1] keys, int32_t[:, ::1] ints, double[:, ::1] reals,
                   int n_threads):
    cdef Py_ssize_t rows = x.shape[0], r
    cdef int tid
    with nogil:
        if n_threads <= 1:
            for r in range(rows):
                _forward_indexed(mode, x, out, perm, blocks, r, 0, eps, sign, keys, ints, reals)
        else:
            for r in prange(rows, num_threads=n_threads, schedule="static"):
                tid = threadid()
                _forward_indexed(mode, x, out, perm, blocks, r, tid, eps, sign, keys, ints,
                                 reals)


# Row slices are taken inside these helpers, not in the prange body: slices made in a prange body
# are reference-counted atomically on the shared memoryview, and that contention made two threads
# slower than one on short rows.
cdef inline void _forward_indexed(int mode, const floating[:, ::1] x, floating[:, ::1] out,
                                  int32_t[:, ::1] perm, int32_t[:, ::1] blocks, Py_ssize_t r,
                                  int tid, double eps, double sign, uint64_t[:, ::1] keys,
                                  int32_t[:, ::1] ints, double[:, ::1] reals) noexcept nogil:
    _forward_row(mode, x[r], out[r], perm[r], blocks[r], eps, sign, keys[tid], ints[tid],
                 reals[tid])


cdef inline void _backward_indexed(int mode, const floating[:, ::1] g,
                                   const int32_t[:, ::1] perm, const int32_t[:, ::1] blocks,
                                   const floating[:, ::1] aux, Py_ssize_t r, int tid, double eps,
                                   double sign, floating[:, ::1] grad,
                                   double[:, ::1] reals) noexcept nogil:
    _backward_row(mode, g[r], perm[r], blocks[r], aux[r], eps, sign, grad[r], reals[tid])


cdef void _backward(int mode, const floating[:, ::1] g, const int32_t[:, ::1] perm,
                    const int32_t[:, ::1] blocks, const floating[:, ::1] aux, double eps,
                    double sign, floating[:, ::1] grad, double[:, ::1] reals, int n_threads):
    cdef Py_ssize_t rows = g.shape[0], r
    cdef int tid
    with nogil:
        if n_threads <= 1:
            for r in range(rows):
                _backward_indexed(mode, g, perm, blocks, aux, r, 0, eps, sign, grad, reals)
        else:
            for r in prange(rows, num_threads=n_threads, schedule="static"):
                tid = threadid()
                _backward_indexed(mode, g, perm, blocks, aux, r, tid, eps, sign, grad, reals)


# Entry points: one per dtype (a fused `def` would pay Cython's runtime dtype dispatch per call).
# They are private and unchecked: softrank/_cpu_backend.py validates and allocates.

def forward_f32(int mode, const float[:, ::1] x, float[:, ::1] out, int32_t[:, ::1] perm,
                int32_t[:, ::1] blocks, double eps, double sign, uint64_t[:, ::1] keys,
                int32_t[:, ::1] ints, double[:, ::1] reals, int n_threads):
    _forward(mode, x, out, perm, blocks, eps, sign, keys, ints, reals, n_threads)


def forward_f64(int mode, const double[:, ::1] x, double[:, ::1] out, int32_t[:, ::1] perm,
                int32_t[:, ::1] blocks, double eps, double sign, uint64_t[:, ::1] keys,
                int32_t[:, ::1] ints, double[:, ::1] reals, int n_threads):
    _forward(mode, x, out, perm, blocks, eps, sign, keys, ints, reals, n_threads)


def backward_f32(int mode, const float[:, ::1] g, const int32_t[:, ::1] perm,
                 const int32_t[:, ::1] blocks, const float[:, ::1] aux, double eps, double sign,
                 float[:, ::1] grad, double[:, ::1] reals, int n_threads):
    _backward(mode, g, perm, blocks, aux, eps, sign, grad, reals, n_threads)


def backward_f64(int mode, const double[:, ::1] g, const int32_t[:, ::1] perm,
                 const int32_t[:, ::1] blocks, const double[:, ::1] aux, double eps, double sign,
                 double[:, ::1] grad, double[:, ::1] reals, int n_threads):
    _backward(mode, g, perm, blocks, aux, eps, sign, grad, reals, n_threads)


cdef extern from *:
    """
    #ifdef _OPENMP
    static const int softrank_openmp = 1;
    #else
    static const int softrank_openmp = 0;
    #endif
    """
    const int softrank_openmp


def openmp_enabled():
    """True when this extension was compiled with OpenMP (rows then run in parallel)."""
    return bool(softrank_openmp)
