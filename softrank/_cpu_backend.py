"""CPU back end: thin wrapper of the Cython solver (softrank/_cpu.pyx); sets its thread policy.

forward/backward have the CUDA back end's signatures (docs/CONTRACT.md): callers validate and
allocate. forward_at/backward_at are the torch layer's cheaper form: data by address, outputs
allocated by the solver.
"""
import os

from . import _cpu

# The solver's mode numbers (the enum in softrank/_cpu.pyx); odd modes are kl.
MODES = {("rank", "l2"): 0, ("rank", "kl"): 1, ("sort", "l2"): 2, ("sort", "kl"): 3}
MODE_NAMES = {mode: names for names, mode in MODES.items()}
# MODES[op][regularization] without building a tuple: a lookup on every torch call.
MODE_OF = {"rank": {"l2": 0, "kl": 1}, "sort": {"l2": 2, "kl": 3}}

# Rows run in parallel from this many elements (measured with benchmarks/bench_threads.py and
# forward-only loops, interleaved: once the short-row kernels got faster, a parallel region's
# ~1-2 us no longer paid off on (32, 10) or (16, 32) forwards, while (24, 32) and (8, 100) gain
# 1-3 us with two threads; a rank/kl forward does about twice the work per element and counts
# its elements twice, so it goes parallel from 384. The backward does less work per element:
# two threads tie with one at 1300-2000 elements and gain 1.5-4 us from about 2500 (l2; kl from
# about 1600)).
PARALLEL_MIN_ELEMENTS = 768
PARALLEL_MIN_ELEMENTS_BACKWARD = 2048


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
SPLIT_ROW_MIN = _cpu.split_row_min()


_cpu.set_thread_policy(MAX_THREADS, PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_ELEMENTS_BACKWARD)
AUTO_THREADS = 0  # n_threads argument: the solver applies the policy above


def threads_for(op, regularization, rows, n, backward=False):
    """Threads of a call on (rows, n): rows run in parallel; a batch of fewer rows than threads
    uses one thread per row, except rows of SPLIT_ROW_MIN elements or more, which the solver
    splits across all the threads (softrank/_cpu.pyx applies this policy itself)."""
    return _cpu.threads_for(MODES[op, regularization], rows, n, backward)


def forward(op, regularization, x, eps, sign, out, perm, blocks):
    _cpu.forward(MODES[op, regularization], x, out, perm, blocks, eps, sign, AUTO_THREADS)


def forward_values(op, regularization, x, eps, sign):
    """forward() when nothing will differentiate the call: returns new out rows only."""
    return _cpu.forward_values(MODES[op, regularization], x, eps, sign, AUTO_THREADS)


def backward(op, regularization, g, perm, blocks, aux, eps, sign, grad):
    _cpu.backward(MODES[op, regularization], g, perm, blocks, g if aux is None else aux, eps,
                  sign, grad, AUTO_THREADS)


def forward_at(op, regularization, x_address, rows, n, single, eps, sign):
    """forward() of the C-contiguous (rows, n) float32 (single) or float64 rows at x_address,
    which the caller keeps alive; returns new (out, perm, blocks) arrays."""
    return _cpu.forward_at(MODES[op, regularization], x_address, rows, n, single, eps, sign,
                           AUTO_THREADS)


def backward_at(op, regularization, g_address, perm, blocks, aux_address, single, eps, sign):
    """backward() of the C-contiguous cotangent at g_address, shaped like perm; aux_address is
    out (rank/kl), x (sort/kl) or 0 (l2). Returns a new grad array."""
    return _cpu.backward_at(MODES[op, regularization], g_address, perm, blocks, aux_address,
                            single, eps, sign, AUTO_THREADS)
