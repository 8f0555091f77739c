"""CPU back end of softrank: the entry points of docs/CONTRACT.md ("Back-end functions") and the
threading drivers that run rows on OpenMP threads.

The numerics live in C++ headers, one job each (their headers state what they solve and how
they deviate from the textbook algorithm):

* softrank/csrc/argsort.h     stable argsort of a row, decreasing, ties by index
* softrank/csrc/pav.h         pool adjacent violators, the four modes, and the block expansion
* softrank/csrc/project.h     the same for the project modes (a caller's target row)
* softrank/csrc/forward.h     one row's forward (argsort + PAV), whole or in split-row steps
* softrank/csrc/backward.h    the gradient of a row from the forward's partition
* softrank/csrc/vector_exp.h  the vector exp of rank/kl's weights
* softrank/csrc/workspace.h   per-thread scratch memory; softrank/csrc/span.h bounds-checked rows

This module only checks its arguments, allocates outputs and workspaces, picks the threads
(the policy that softrank/_cpu_backend.py sets) and runs the rows.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY
from libc.stdint cimport uint64_t, uint32_t, int32_t
cimport numpy as cnp

cnp.import_array()


cdef extern from "csrc/span.h":
    cdef cppclass Span "softrank_span"[T]:
        Span() nogil
        Span(T*, Py_ssize_t) nogil
        T& operator[](Py_ssize_t) nogil
        Span[T] sub(Py_ssize_t, Py_ssize_t) nogil
        T* ptr
        Py_ssize_t len
    const int softrank_bounds_checked

cdef extern from "csrc/workspace.h":
    const int HIST_WORDS "SOFTRANK_HIST_WORDS"
    Py_ssize_t softrank_forward_words(Py_ssize_t n, int full_keys, int mode) noexcept nogil
    cdef cppclass WorkspaceBuffer "softrank_workspace_buffer":
        WorkspaceBuffer()
        uint64_t* acquire(size_t words) except +

cdef extern from "csrc/sort_kernels.h":
    int softrank_counting_max_f32
    int softrank_counting_max_f64
    int softrank_network_max
    const int softrank_cpu_dispatch
    int softrank_choose_kernels(int allow_avx512) noexcept nogil

cdef extern from "csrc/vector_exp.h":
    int softrank_vector_exp
    int softrank_choose_vector_exp(int has_avx512) noexcept nogil
    void softrank_scaled_exp(const double *s, double head, double eps, double scale,
                             double *w, Py_ssize_t count) noexcept nogil

cdef extern from "csrc/argsort.h":
    int softrank_forced_sort_kernel

cdef extern from "csrc/forward.h":
    void forward_row "softrank_forward_row"(int mode, Span[float] x, Span[float] out,
                                            Span[int32_t] perm, Span[int32_t] blocks,
                                            double eps, double sign, Span[float] target,
                                            uint64_t* words) noexcept nogil
    void forward_row "softrank_forward_row"(int mode, Span[double] x, Span[double] out,
                                            Span[int32_t] perm, Span[int32_t] blocks,
                                            double eps, double sign, Span[double] target,
                                            uint64_t* words) noexcept nogil
    cdef cppclass Split "softrank_split":
        Span[uint64_t] ka
        Span[uint64_t] kb
    const int SPLIT_DIGITS "SOFTRANK_SPLIT_DIGITS"
    Span[int32_t] split_scratch_blocks "softrank_split_scratch_blocks"(
        Split* split) noexcept nogil
    Py_ssize_t split_words "softrank_split_words"(Py_ssize_t n, int n_threads,
                                                  int full_keys, int mode) noexcept nogil
    void split_init "softrank_split_init"(Split* split, uint64_t* words, Span[float] out,
                                          int n_threads, int mode) noexcept nogil
    void split_init "softrank_split_init"(Split* split, uint64_t* words, Span[double] out,
                                          int n_threads, int mode) noexcept nogil
    bint split_keys "softrank_split_keys"(const Split* split, Span[float] x, double sign,
                                          int t) noexcept nogil
    bint split_keys "softrank_split_keys"(const Split* split, Span[double] x, double sign,
                                          int t) noexcept nogil
    bint split_digit_is_constant "softrank_split_digit_is_constant"(
        const Split* split, int d) noexcept nogil
    void split_recount "softrank_split_recount"(const Split* split, Span[uint64_t] src, int d,
                                                int t) noexcept nogil
    void split_offsets "softrank_split_offsets"(const Split* split, int d) noexcept nogil
    void split_scatter "softrank_split_scatter"(const Split* split, Span[uint64_t] src,
                                                Span[uint64_t] dst, int d, int t) noexcept nogil
    bint split_decode "softrank_split_decode"(const Split* split, Span[float] x, double sign,
                                              Span[uint64_t] sorted, Span[int32_t] perm,
                                              int t) noexcept nogil
    bint split_decode "softrank_split_decode"(const Split* split, Span[double] x, double sign,
                                              Span[uint64_t] sorted, Span[int32_t] perm,
                                              int t) noexcept nogil
    void split_sort_runs "softrank_split_sort_runs"(const Split* split, Span[uint64_t] sorted,
                                                    Span[int32_t] perm, int t) noexcept nogil
    void split_gather "softrank_split_gather"(const Split* split, Span[double] x, double sign,
                                              Span[int32_t] perm, int t) noexcept nogil
    Py_ssize_t split_pav "softrank_split_pav"(const Split* split, int mode, double eps,
                                              double sign, Span[int32_t] perm, Span[float] out,
                                              Span[int32_t] blocks,
                                              Span[float] target) noexcept nogil
    Py_ssize_t split_pav "softrank_split_pav"(const Split* split, int mode, double eps,
                                              double sign, Span[int32_t] perm, Span[double] out,
                                              Span[int32_t] blocks,
                                              Span[double] target) noexcept nogil
    void split_expand "softrank_split_expand"(const Split* split, int mode, double eps,
                                              double sign, Span[int32_t] perm, Span[float] out,
                                              Span[int32_t] blocks, Py_ssize_t top,
                                              int t) noexcept nogil
    void split_expand "softrank_split_expand"(const Split* split, int mode, double eps,
                                              double sign, Span[int32_t] perm, Span[double] out,
                                              Span[int32_t] blocks, Py_ssize_t top,
                                              int t) noexcept nogil
    bint split_staged "softrank_split_staged"(const Split* split) noexcept nogil
    void split_scatter_ranks "softrank_split_scatter_ranks"(
        const Split* split, Span[int32_t] perm, Span[float] out, int t) noexcept nogil
    void split_scatter_ranks "softrank_split_scatter_ranks"(
        const Split* split, Span[int32_t] perm, Span[double] out, int t) noexcept nogil
    void nan_row_forward "softrank_nan_row_forward"(Span[float] out, Span[int32_t] perm,
                                                    Span[int32_t] blocks) noexcept nogil
    void nan_row_forward "softrank_nan_row_forward"(Span[double] out, Span[int32_t] perm,
                                                    Span[int32_t] blocks) noexcept nogil
    Py_ssize_t chunk_start "softrank_chunk_start"(Py_ssize_t t, Py_ssize_t n,
                                                  int n_threads) noexcept nogil

cdef extern from "csrc/backward.h":
    Py_ssize_t softrank_backward_words(int mode, Py_ssize_t n) noexcept nogil
    void backward_row "softrank_backward_row"(int mode, Span[float] g, Span[int32_t] perm,
                                              Span[int32_t] blocks, Span[float] aux, double eps,
                                              double sign, Span[float] grad,
                                              Span[double] weights) noexcept nogil
    void backward_row "softrank_backward_row"(int mode, Span[double] g, Span[int32_t] perm,
                                              Span[int32_t] blocks, Span[double] aux,
                                              double eps, double sign, Span[double] grad,
                                              Span[double] weights) noexcept nogil
    void backward_blocks "softrank_backward_blocks"(int mode, Span[float] g, Span[int32_t] perm,
                                                    Span[int32_t] blocks, Span[float] aux,
                                                    double eps, double sign, Span[float] grad,
                                                    Span[double] weights, Py_ssize_t lo,
                                                    Py_ssize_t hi) noexcept nogil
    void backward_blocks "softrank_backward_blocks"(int mode, Span[double] g,
                                                    Span[int32_t] perm, Span[int32_t] blocks,
                                                    Span[double] aux, double eps, double sign,
                                                    Span[double] grad, Span[double] weights,
                                                    Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    Py_ssize_t block_start_at "softrank_block_start_at"(Span[int32_t] blocks,
                                                        Py_ssize_t position) noexcept nogil

cdef extern from *:
    """
    #ifdef _OPENMP
    static const int softrank_openmp = 1;
    #else
    static const int softrank_openmp = 0;
    #endif
    """
    const int softrank_openmp

ctypedef fused floating:
    float
    double

cdef enum:
    RANK_L2 = 0
    RANK_KL = 1
    SORT_L2 = 2
    SORT_KL = 3
    PROJECT_L2 = 4
    PROJECT_KL = 5


cdef void _choose_kernels(bint allow_avx512) noexcept nogil:
    softrank_choose_vector_exp(softrank_choose_kernels(allow_avx512))


_choose_kernels(True)


# ----------------------------------------------------------------------------- thread policy
# softrank/_cpu_backend.py sets it at import (and to one thread in a forked child).

# Most threads a call may use: bounds each call's workspace (one row's worth per thread).
MAX_THREADS_LIMIT = 1024

cdef int _policy_max_threads = 1
cdef Py_ssize_t _policy_min_forward = 256
cdef Py_ssize_t _policy_min_backward = 2048
# From this many elements, rows of a batch with fewer rows than threads are split across the
# threads (softrank/csrc/forward.h), instead of leaving threads idle.
cdef Py_ssize_t _split_row_min = 65536


def set_thread_policy(int max_threads, Py_ssize_t min_forward, Py_ssize_t min_backward):
    """Calls use up to max_threads threads, with rows in parallel from min_forward (forward) or
    min_backward (backward) elements per call."""
    global _policy_max_threads, _policy_min_forward, _policy_min_backward
    if not 1 <= max_threads <= MAX_THREADS_LIMIT:
        raise ValueError(f"max_threads must be in 1..{MAX_THREADS_LIMIT}, got {max_threads}")
    _policy_max_threads, _policy_min_forward, _policy_min_backward = (
        max_threads, min_forward, min_backward)


def thread_policy():
    """(max_threads, min_forward, min_backward), as set_thread_policy took them."""
    return _policy_max_threads, _policy_min_forward, _policy_min_backward


def openmp_enabled():
    """True when this extension was compiled with OpenMP (rows then run in parallel)."""
    return bool(softrank_openmp)


cdef inline bint _splits_rows(Py_ssize_t rows, Py_ssize_t n, int n_threads) noexcept nogil:
    return n_threads > 1 and rows < n_threads and n >= _split_row_min


cdef inline int _threads_for(int mode, Py_ssize_t rows, Py_ssize_t n,
                             bint backward) noexcept nogil:
    """Rows run in parallel; a batch of fewer rows than threads uses one thread per row,
    except rows of _split_row_min elements or more, which are split across all the threads.
    A kl forward of ranks or a projection counts its elements twice: each also costs an exp."""
    cdef Py_ssize_t work = rows * n * (2 if (mode == RANK_KL or mode == PROJECT_KL)
                                       and not backward else 1)
    if work < (_policy_min_backward if backward else _policy_min_forward):
        return 1
    if rows < _policy_max_threads and n < _split_row_min:
        return <int>rows
    return _policy_max_threads


# ----------------------------------------------------------------------------- drivers

cdef inline Span[int32_t] _row_of(Span[int32_t] a, Py_ssize_t r, Py_ssize_t n) noexcept nogil:
    """Row r of a; an empty a (no blocks asked for: forward.h writes them to scratch) stays
    empty."""
    if a.len == 0:
        return a
    return a.sub(r * n, n)


cdef inline Span[floating] _target_of(Span[floating] target, Py_ssize_t r,
                                      Py_ssize_t n) noexcept nogil:
    """Row r's target: none (empty), the one shared row (n), or row r of (rows, n)."""
    if target.len <= n:
        return target
    return target.sub(r * n, n)


cdef inline double _eps_of(Span[double] eps, Py_ssize_t r) noexcept nogil:
    """Row r's strength: the one of every row, or its own."""
    return eps[0] if eps.len == 1 else eps[r]


cdef void _forward_rows(int mode, Span[floating] x, Span[floating] out, Span[int32_t] perm,
                        Span[int32_t] blocks, Py_ssize_t rows, Py_ssize_t n, Span[double] eps,
                        double sign, Span[floating] target, uint64_t* words,
                        int n_threads) noexcept nogil:
    """Rows on n_threads threads, each with its own workspace of softrank_forward_words."""
    cdef Py_ssize_t r, per_thread = softrank_forward_words(n, floating is double, mode)
    if n_threads <= 1:
        for r in range(rows):
            forward_row(mode, x.sub(r * n, n), out.sub(r * n, n), perm.sub(r * n, n),
                        _row_of(blocks, r, n), _eps_of(eps, r), sign, _target_of(target, r, n),
                        words)
    else:
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            forward_row(mode, x.sub(r * n, n), out.sub(r * n, n), perm.sub(r * n, n),
                        _row_of(blocks, r, n), _eps_of(eps, r), sign, _target_of(target, r, n),
                        words + threadid() * per_thread)


cdef void _forward_split_row(int mode, Span[floating] x, Span[floating] out,
                             Span[int32_t] perm, Span[int32_t] blocks, double eps, double sign,
                             Span[floating] target, uint64_t* words,
                             int n_threads) noexcept nogil:
    """One row on n_threads threads, step by step (softrank/csrc/forward.h): the radix passes,
    the decoding, the expansion and the scatter of staged ranks split in chunks, PAV
    serial."""
    cdef Split split
    cdef Span[uint64_t] src, dst, sorted_words
    cdef int t, d, nonfinite = 0, shared_highs = 0
    cdef bint moved = False, in_b = False
    cdef Py_ssize_t top
    split_init(&split, words, out, n_threads, mode)
    if blocks.len == 0:  # no blocks asked for
        blocks = split_scratch_blocks(&split)
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        nonfinite |= split_keys(&split, x, sign, t)
    if nonfinite:
        nan_row_forward(out, perm, blocks)
        return
    for d in range(SPLIT_DIGITS):
        if split_digit_is_constant(&split, d):
            continue
        if in_b:
            src, dst = split.kb, split.ka
        else:
            src, dst = split.ka, split.kb
        if moved:
            for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
                split_recount(&split, src, d, t)
        split_offsets(&split, d)
        for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            split_scatter(&split, src, dst, d, t)
        in_b = not in_b
        moved = True
    sorted_words = split.kb if in_b else split.ka
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        shared_highs |= split_decode(&split, x, sign, sorted_words, perm, t)
    if floating is double:
        if shared_highs:
            for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
                split_sort_runs(&split, sorted_words, perm, t)
        for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            split_gather(&split, x, sign, perm, t)
    top = split_pav(&split, mode, eps, sign, perm, out, blocks, target)
    if top < 0:  # solved whole (scaled)
        return
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        split_expand(&split, mode, eps, sign, perm, out, blocks, top, t)
    if split_staged(&split):
        for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            split_scatter_ranks(&split, perm, out, t)


cdef void _backward_rows(int mode, Span[floating] g, Span[int32_t] perm, Span[int32_t] blocks,
                         Span[floating] aux, Span[floating] grad, Py_ssize_t rows, Py_ssize_t n,
                         Span[double] eps, double sign, uint64_t* words,
                         int n_threads) noexcept nogil:
    """Rows on n_threads threads, sort/kl's with softmax weights of their own."""
    cdef Py_ssize_t r, per_thread = softrank_backward_words(mode, n)
    cdef Py_ssize_t weights = n if mode == SORT_KL else 0
    if n_threads <= 1:
        for r in range(rows):
            backward_row(mode, g.sub(r * n, n), perm.sub(r * n, n), blocks.sub(r * n, n),
                         aux.sub(r * n, n), _eps_of(eps, r), sign, grad.sub(r * n, n),
                         Span[double](<double*>words, weights))
    else:
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            backward_row(mode, g.sub(r * n, n), perm.sub(r * n, n), blocks.sub(r * n, n),
                         aux.sub(r * n, n), _eps_of(eps, r), sign, grad.sub(r * n, n),
                         Span[double](<double*>(words + threadid() * per_thread), weights))


cdef void _backward_split_row(int mode, Span[floating] g, Span[int32_t] perm,
                              Span[int32_t] blocks, Span[floating] aux, double eps, double sign,
                              Span[floating] grad, Span[double] weights,
                              int n_threads) noexcept nogil:
    """One row on n_threads threads, each on the blocks that start in its chunk of sorted
    positions."""
    cdef Py_ssize_t n = g.len
    cdef Py_ssize_t t, lo, hi, largest = 0
    if blocks[0] >= 0:
        for t in range(n_threads):
            lo = block_start_at(blocks, chunk_start(t, n, n_threads))
            hi = block_start_at(blocks, chunk_start(t + 1, n, n_threads))
            if lo < 0 or hi < lo:  # not a forward's blocks: the serial loop needs no starts
                largest = n
                break
            largest = max(largest, hi - lo)
    if blocks[0] < 0 or 4 * largest > 3 * n:  # NaN row, or one thread would do most blocks
        backward_row(mode, g, perm, blocks, aux, eps, sign, grad, weights)
        return
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        backward_blocks(mode, g, perm, blocks, aux, eps, sign, grad, weights,
                        block_start_at(blocks, chunk_start(t, n, n_threads)),
                        block_start_at(blocks, chunk_start(t + 1, n, n_threads)))


cdef void _forward_typed(int mode, floating* x, floating* out, int32_t* perm,
                         Span[int32_t] blocks, Py_ssize_t rows, Py_ssize_t n, Span[double] eps,
                         double sign, floating* target, Py_ssize_t target_size, uint64_t* words,
                         int n_threads, bint split) noexcept nogil:
    """_solve_forward's rows in one dtype: split row by row, or rows in parallel."""
    cdef Py_ssize_t size = rows * n, r
    cdef Span[floating] targets = Span[floating](target, target_size)
    if split:
        for r in range(rows):
            _forward_split_row(mode, Span[floating](x, size).sub(r * n, n),
                               Span[floating](out, size).sub(r * n, n),
                               Span[int32_t](perm, size).sub(r * n, n),
                               _row_of(blocks, r, n), _eps_of(eps, r), sign,
                               _target_of(targets, r, n), words, n_threads)
    else:
        _forward_rows(mode, Span[floating](x, size), Span[floating](out, size),
                      Span[int32_t](perm, size), blocks, rows, n, eps, sign, targets, words,
                      n_threads)


cdef void _backward_typed(int mode, floating* g, int32_t* perm, int32_t* blocks, floating* aux,
                          floating* grad, Py_ssize_t rows, Py_ssize_t n, Span[double] eps,
                          double sign, uint64_t* words, int n_threads,
                          bint split) noexcept nogil:
    """_solve_backward's rows in one dtype: split row by row (the threads share one row's
    weights), or rows in parallel."""
    cdef Py_ssize_t size = rows * n, r, weights = n if mode == SORT_KL else 0
    if split:
        for r in range(rows):
            _backward_split_row(mode, Span[floating](g, size).sub(r * n, n),
                                Span[int32_t](perm, size).sub(r * n, n),
                                Span[int32_t](blocks, size).sub(r * n, n),
                                Span[floating](aux, size).sub(r * n, n), _eps_of(eps, r), sign,
                                Span[floating](grad, size).sub(r * n, n),
                                Span[double](<double*>words, weights), n_threads)
    else:
        _backward_rows(mode, Span[floating](g, size), Span[int32_t](perm, size),
                       Span[int32_t](blocks, size), Span[floating](aux, size),
                       Span[floating](grad, size), rows, n, eps, sign, words, n_threads)


cdef void _solve_forward(int mode, int typenum, void* x, void* out, int32_t* perm,
                         int32_t* blocks, Py_ssize_t rows, Py_ssize_t n, Span[double] eps,
                         double sign, void* target, Py_ssize_t target_size) except *:
    """Forward of (rows, n) rows; perm == NULL: the caller wants out only, perm and blocks go
    to scratch words (reused memory, not fresh arrays)."""
    cdef int n_threads = _threads_for(mode, rows, n, False)
    cdef bint split = _splits_rows(rows, n, n_threads)
    if not split:
        n_threads = max(1, min(n_threads, rows))
    cdef Py_ssize_t size = rows * n
    cdef int full_keys = typenum == cnp.NPY_DOUBLE  # float32 keys fit in the sort words
    cdef Py_ssize_t solver_words = (split_words(n, n_threads, full_keys, mode) if split
                                    else n_threads * softrank_forward_words(n, full_keys, mode))
    # perm == NULL: perm goes to scratch words after the solver's; so do project/kl's blocks,
    # while the rank and sort modes write them over PAV's per-block doubles, dead by then
    # (forward.h).
    cdef bint own_blocks = mode == PROJECT_KL
    cdef Py_ssize_t scratch = 0
    if perm == NULL:
        scratch = size if own_blocks else (size + 1) // 2
    cdef WorkspaceBuffer buffer
    cdef uint64_t* words = buffer.acquire(solver_words + scratch)
    if perm == NULL:
        perm = <int32_t*>(words + solver_words)
        blocks = perm + size if own_blocks else NULL
    cdef Span[int32_t] blocks_span
    if blocks != NULL:
        blocks_span = Span[int32_t](blocks, size)
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _forward_typed(mode, <float*>x, <float*>out, perm, blocks_span, rows, n, eps, sign,
                           <float*>target, target_size, words, n_threads, split)
        else:
            _forward_typed(mode, <double*>x, <double*>out, perm, blocks_span, rows, n, eps, sign,
                           <double*>target, target_size, words, n_threads, split)

cdef void _solve_backward(int mode, int typenum, void* g, int32_t* perm, int32_t* blocks,
                          void* aux, void* grad, Py_ssize_t rows, Py_ssize_t n, Span[double] eps,
                          double sign) except *:
    """Backward of (rows, n) rows; aux may be NULL for l2 (not read)."""
    cdef int n_threads = _threads_for(mode, rows, n, True)
    cdef bint split = _splits_rows(rows, n, n_threads)
    if not split:
        n_threads = max(1, min(n_threads, rows))
    cdef WorkspaceBuffer buffer
    cdef uint64_t* words = buffer.acquire(
        max(1, (1 if split else n_threads) * softrank_backward_words(mode, n)))
    if aux == NULL:  # l2: not read
        aux = g
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _backward_typed(mode, <float*>g, perm, blocks, <float*>aux, <float*>grad, rows, n,
                            eps, sign, words, n_threads, split)
        else:
            _backward_typed(mode, <double*>g, perm, blocks, <double*>aux, <double*>grad, rows, n,
                            eps, sign, words, n_threads, split)

# ----------------------------------------------------------------------------- entry points
# Each checks every array before reading a byte of it: an exact numpy.ndarray, 2-D,
# C-contiguous, aligned, in native byte order, of the expected dtype and shape. Arrays are read
# through the NumPy C API (no memoryviews), so read-only inputs are accepted.

cdef int _float_typenum(object a, str name) except -1:
    """The typenum of a float32/float64 ndarray, or a TypeError."""
    if not cnp.PyArray_CheckExact(a):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise TypeError(f"{name} must be float32 or float64, got {(<cnp.ndarray>a).dtype}")
    return typenum


cdef int _check_array(object obj, str name, int typenum, Py_ssize_t rows,
                      Py_ssize_t n) except -1:
    """A TypeError unless obj is an ndarray of typenum, a ValueError unless it is a 2-D
    C-contiguous aligned native-order (rows, n) array (rows < 0: of any 2-D shape)."""
    if not cnp.PyArray_CheckExact(obj):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(obj).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    if not cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(a), typenum):
        raise TypeError(f"{name} must be {cnp.PyArray_DescrFromType(typenum)}, got {a.dtype}")
    if cnp.PyArray_NDIM(a) != 2:
        raise ValueError(f"{name} must be 2-D (rows, n), got shape {obj.shape}")
    if rows >= 0 and (cnp.PyArray_DIM(a, 0) != rows or cnp.PyArray_DIM(a, 1) != n):
        raise ValueError(f"{name} must have shape ({rows}, {n}), got {obj.shape}")
    if cnp.PyArray_DIM(a, 1) > 2147483647:  # positions are int32 (softrank/_contract.py's message)
        raise ValueError(f"values has {cnp.PyArray_DIM(a, 1)} elements along dim; at most "
                         "2147483647 are supported")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
            and cnp.PyArray_ISNOTSWAPPED(a)):
        raise ValueError(
            f"{name} must be a C-contiguous aligned array in native byte order (contiguous: "
            f"{bool(cnp.PyArray_IS_C_CONTIGUOUS(a))}, aligned: {bool(cnp.PyArray_ISALIGNED(a))}, "
            f"native byte order: {bool(cnp.PyArray_ISNOTSWAPPED(a))})")
    return 0


cdef int _check_scalars(int mode, double sign) except -1:
    if not 0 <= mode <= 5:
        raise ValueError(f"mode must be 0..5, got {mode}")
    if sign != 1.0 and sign != -1.0:
        raise ValueError(f"sign must be 1 or -1, got {sign}")
    return 0


cdef Span[double] _strengths(object eps, Py_ssize_t rows, double* one) except *:
    """The strengths of a call's rows as a span: over *one (eps, a number, for every row) or
    over eps, a float64 array of one per row (the caller keeps it alive); every value finite
    and > 0."""
    cdef Py_ssize_t r
    cdef Span[double] span
    if not cnp.PyArray_Check(eps):
        one[0] = eps
        if not (one[0] > 0.0 and one[0] < INFINITY):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        return Span[double](one, 1)
    if not (cnp.PyArray_CheckExact(eps) and cnp.PyArray_NDIM(<cnp.ndarray>eps) == 1):
        raise ValueError(f"eps must be a float or a 1-D numpy.ndarray of {rows} strengths, got "
                         f"{type(eps).__name__} of shape {getattr(eps, 'shape', None)}")
    _check_array(eps.reshape(1, -1), "eps", cnp.NPY_DOUBLE, 1, rows)
    span = Span[double](<double*>cnp.PyArray_DATA(<cnp.ndarray>eps), rows)
    for r in range(rows):
        if not (span[r] > 0.0 and span[r] < INFINITY):
            raise ValueError(f"eps must be finite and > 0 in every row, got {span[r]} in row {r}")
    return span


cdef Py_ssize_t _check_target(int mode, object target, int typenum, Py_ssize_t rows,
                              Py_ssize_t n) except -1:
    """The number of elements of target (0: None), checked for the mode: a (1, n) or (rows, n)
    array of x's dtype for the project modes, None for the others."""
    if mode < PROJECT_L2:
        if target is not None:
            raise ValueError("target must be None for the rank and sort modes")
        return 0
    if target is None:
        raise ValueError("target is required for the project modes")
    _check_array(target, "target", typenum, -1, 0)
    cdef Py_ssize_t target_rows = cnp.PyArray_DIM(<cnp.ndarray>target, 0)
    if cnp.PyArray_DIM(<cnp.ndarray>target, 1) != n or not (target_rows == 1
                                                             or target_rows == rows):
        raise ValueError(f"target must have shape (1, {n}) or ({rows}, {n}), got "
                         f"{target.shape}")
    return target_rows * n


cdef inline cnp.ndarray _empty(Py_ssize_t rows, Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = rows
    dims[1] = n
    return cnp.PyArray_EMPTY(2, dims, typenum, 0)


cdef inline void* _data(object a) noexcept:
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef object _forward(int mode, object x, object eps, double sign, object target,
                     bint partition):
    """forward() (partition: new out, perm, blocks) or forward_values() (out only)."""
    cdef int typenum = _float_typenum(x, "x")
    _check_array(x, "x", typenum, -1, 0)
    cdef Py_ssize_t rows = cnp.PyArray_DIM(<cnp.ndarray>x, 0), n = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    _check_scalars(mode, sign)
    cdef double one_eps
    cdef Span[double] strengths = _strengths(eps, rows, &one_eps)
    cdef Py_ssize_t target_size = _check_target(mode, target, typenum, rows, n)
    cdef cnp.ndarray out = _empty(rows, n, typenum)
    cdef object perm = None, blocks = None
    if partition:
        perm = _empty(rows, n, cnp.NPY_INT32)
        blocks = _empty(rows, n, cnp.NPY_INT32)
    if rows > 0 and n > 0:
        _solve_forward(mode, typenum, _data(x), _data(out),
                       <int32_t*>_data(perm) if partition else NULL,
                       <int32_t*>_data(blocks) if partition else NULL, rows, n, strengths, sign,
                       NULL if target is None else _data(target), target_size)
    return (out, perm, blocks) if partition else out


def forward(int mode, x, eps, double sign, target=None):
    """Solve every row of x (mode: 0 rank/l2, 1 rank/kl, 2 sort/l2, 3 sort/kl, 4 project/l2,
    5 project/kl; eps: a float or one float64 per row; target: the project modes' sorted
    target, (1, n) or (rows, n); docs/CONTRACT.md).

    Returns new arrays (out, perm, blocks): out of x's dtype, perm and blocks int32."""
    return _forward(mode, x, eps, sign, target, True)


def forward_values(int mode, x, eps, double sign, target=None):
    """forward() without the partition, for calls nothing will differentiate: returns a new
    out array only."""
    return _forward(mode, x, eps, sign, target, False)


def backward(int mode, g, perm, blocks, aux, eps, double sign):
    """Gradient of every row from the cotangent g and the forward's perm and blocks; aux is the
    forward's output (rank/kl) or input (sort/kl), None for l2. Returns a new grad array.

    perm must be a forward's: its values index g and aux, and only a debug build checks them."""
    cdef int typenum = _float_typenum(g, "g")
    _check_array(g, "g", typenum, -1, 0)
    cdef Py_ssize_t rows = cnp.PyArray_DIM(<cnp.ndarray>g, 0), n = cnp.PyArray_DIM(<cnp.ndarray>g, 1)
    _check_array(perm, "perm", cnp.NPY_INT32, rows, n)
    _check_array(blocks, "blocks", cnp.NPY_INT32, rows, n)
    _check_scalars(mode, sign)
    cdef double one_eps
    cdef Span[double] strengths = _strengths(eps, rows, &one_eps)
    if mode & 1:
        if aux is None:
            raise ValueError("aux is required for the kl regularization (the forward's output "
                             "for rank and project, its input for sort)")
        _check_array(aux, "aux", typenum, rows, n)
    elif aux is not None:
        raise ValueError("aux must be None for the l2 regularization")
    cdef cnp.ndarray grad = _empty(rows, n, typenum)
    if rows > 0 and n > 0:
        _solve_backward(mode, typenum, _data(g), <int32_t*>_data(perm), <int32_t*>_data(blocks),
                        NULL if aux is None else _data(aux), _data(grad), rows, n,
                        strengths, sign)
    return grad


# ----------------------------------------------------------------------------- debug
# Tests and benchmarks reach the solver's internals through _debug(name, *args) only.

# The general path ("radix", "std": a std::sort of the sort words, for benchmarks) and the
# special kernels of short rows (softrank/csrc/argsort.h).
_SORT_KERNELS = {"auto": 0, "counting": 1, "network": 2, "radix": 3, "std": 4}


def _debug_index_span(Py_ssize_t i):
    """Element i of a 4-element span (a debug build aborts for i outside 0..3)."""
    cdef double data[4]
    data[:] = [0.0, 1.0, 2.0, 3.0]
    cdef Span[double] span = Span[double](data, 4)
    return span[i] if 0 <= i < 4 or softrank_bounds_checked else None


def _debug_use_avx512(bint allowed):
    """False: the kernels of a CPU without AVX-512; True: this CPU's. No call may be running."""
    _choose_kernels(allowed)


def _debug_sort_kernel(str name):
    """Sort every row with this kernel ("auto" to choose by length and CPU again); a network
    that cannot sort a row's length leaves that row to the automatic choice."""
    global softrank_forced_sort_kernel
    softrank_forced_sort_kernel = _SORT_KERNELS[name]


def _debug_sort_limits():
    """The lengths at which the sort kernels change, for this CPU's kernels now."""
    return {"counting_max": (softrank_counting_max_f32, softrank_counting_max_f64),
            "network_max": softrank_network_max, "split_row_min": _split_row_min}


def _debug_set_split_row_min(Py_ssize_t n):
    global _split_row_min
    _split_row_min = n


def _debug_exp_of(t):
    """exp of each value of a C-contiguous (1, m) float64 array, by the kernel that weights
    rank/kl blocks."""
    _check_array(t, "t", cnp.NPY_DOUBLE, -1, 0)
    _check_array(t, "t", cnp.NPY_DOUBLE, 1, cnp.PyArray_DIM(<cnp.ndarray>t, 1))
    cdef cnp.ndarray out = _empty(1, cnp.PyArray_DIM(<cnp.ndarray>t, 1), cnp.NPY_DOUBLE)
    softrank_scaled_exp(<double*>_data(t), 0.0, 1.0, 1.0, <double*>_data(out),
                        cnp.PyArray_DIM(<cnp.ndarray>t, 1))
    return out


def _debug_threads_for(int mode, Py_ssize_t rows, Py_ssize_t n, bint backward=False):
    """The threads of a call of mode on (rows, n) under the policy now."""
    return _threads_for(mode, rows, n, backward)


_DEBUG = {
    "bounds_checked": lambda: bool(softrank_bounds_checked),
    "index_span": _debug_index_span,
    "cpu_dispatch": lambda: bool(softrank_cpu_dispatch),
    "use_avx512": _debug_use_avx512,
    "vector_exp": lambda: ("libm", "avx2", "avx512")[softrank_vector_exp],
    "exp_of": _debug_exp_of,
    "sort_kernel": _debug_sort_kernel,
    "sort_kernels": lambda: [name for name in _SORT_KERNELS if name != "auto"],
    "sort_limits": _debug_sort_limits,
    "set_split_row_min": _debug_set_split_row_min,
    "threads_for": _debug_threads_for,
}


def _debug(str name, *args):
    """Tests and benchmarks only: the solver's internals by name (sorted(_DEBUG) lists them)."""
    try:
        hook = _DEBUG[name]
    except KeyError:
        raise ValueError(f"no debug hook {name!r}; there are {sorted(_DEBUG)}") from None
    return hook(*args)
