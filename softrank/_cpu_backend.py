"""CPU back end: thin, unchecked wrapper of the Cython solver (softrank/_cpu.pyx).

Same signatures as the CUDA back end (docs/CONTRACT.md); callers validate and allocate.
"""
import os
import threading

import numpy as np

from . import _cpu

_MODES = {("rank", "l2"): 0, ("rank", "kl"): 1, ("sort", "l2"): 2, ("sort", "kl"): 3}

# Rows run in parallel from this many elements, for rows of at least PARALLEL_MIN_N (measured:
# 32 x 100 rows gain 1.6x on 2 threads; rows of 10 elements gain nothing).
PARALLEL_MIN_ELEMENTS = 2048
PARALLEL_MIN_N = 32
# Histograms of the 8 key bytes, 256 buckets each (matches RADIX_BUCKETS in _cpu.pyx).
_HISTOGRAM_WORDS = 8 * 256


def _default_threads():
    for name in ("SOFTRANK_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_THREADS = _default_threads() if _cpu.openmp_enabled() else 1


def _threads_for(rows, n):
    if rows < 2 or n < PARALLEL_MIN_N or rows * n < PARALLEL_MIN_ELEMENTS:
        return 1
    return min(MAX_THREADS, rows)


# Rows up to this length reuse per-thread workspaces instead of allocating them per call.
_CACHED_WORKSPACE_MAX_N = 4096
_workspaces = threading.local()


def _forward_workspaces(threads, n):
    if threads == 1 and n <= _CACHED_WORKSPACE_MAX_N:
        cached = getattr(_workspaces, "forward", None)
        if cached is None or cached[1].shape[1] < 3 * n:
            size = _CACHED_WORKSPACE_MAX_N
            cached = (np.empty((1, 2 * size + _HISTOGRAM_WORDS), dtype=np.uint64),
                      np.empty((1, 3 * size), dtype=np.int32),
                      np.empty((1, 3 * size), dtype=np.float64))
            _workspaces.forward = cached
        return cached
    return (_per_thread(threads, 2 * n + _HISTOGRAM_WORDS, np.uint64),
            _per_thread(threads, 3 * n, np.int32),
            _per_thread(threads, 3 * n, np.float64))


def _per_thread(threads, length, dtype):
    """(threads, >= length) workspace whose rows never share a cache line (no false sharing)."""
    per_line = 64 // np.dtype(dtype).itemsize
    padded = -(-length // per_line) * per_line + per_line
    return np.empty((threads, padded), dtype=dtype)


def forward(op, regularization, x, eps, sign, out, perm, blocks):
    rows, n = x.shape
    threads = _threads_for(rows, n)
    keys, ints, reals = _forward_workspaces(threads, n)
    solver = _cpu.forward_f32 if x.dtype == np.float32 else _cpu.forward_f64
    solver(_MODES[op, regularization], x, out, perm, blocks, eps, sign, keys, ints, reals,
           threads)


def backward(op, regularization, g, perm, blocks, aux, eps, sign, grad):
    rows, n = g.shape
    threads = _threads_for(rows, n)
    needs_weights = op == "sort" and regularization == "kl"
    reals = _per_thread(threads, n if needs_weights else 1, np.float64)
    solver = _cpu.backward_f32 if g.dtype == np.float32 else _cpu.backward_f64
    solver(_MODES[op, regularization], g, perm, blocks, g if aux is None else aux, eps, sign,
           grad, reals, threads)
