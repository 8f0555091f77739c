"""CPU back end (docs/CONTRACT.md, "Back-end functions"): the Cython solver softrank/_cpu.pyx
and its thread policy.

forward, forward_values and backward are the solver's own entry points: each checks its
arrays, allocates its outputs and picks its threads by the policy set here:

* at most MAX_THREADS threads: SOFTRANK_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs this
  process may run on; a value that is not a positive integer is ignored and one above the CPU
  count is capped at it, each with a RuntimeWarning naming the variable;
* rows in parallel only from PARALLEL_MIN_ELEMENTS elements per call (forward) or
  PARALLEL_MIN_ELEMENTS_BACKWARD (backward): below them, starting threads costs more than it
  gains (benchmarks/bench_threads.py measures this; docs/PERFORMANCE.md);
* one thread in a child made by os.fork(): GNU OpenMP's thread pool does not survive a fork,
  and a child's first parallel region would wait forever on the parent's threads.
"""
import os
import warnings

from . import _cpu

forward = _cpu.forward
forward_values = _cpu.forward_values
backward = _cpu.backward

PARALLEL_MIN_ELEMENTS = 768
PARALLEL_MIN_ELEMENTS_BACKWARD = 2048


def _cpu_count():
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    return max(1, min(count, _cpu.MAX_THREADS_LIMIT))


def _threads_from(name, value, cpus):
    """The thread count that environment variable `name` asks for (None: ignore it)."""
    first = value.split(",")[0].strip()  # OMP_NUM_THREADS may list one count per nesting level
    if not (first.isascii() and first.isdigit()) or not first.strip("0"):
        warnings.warn(f"{name}={value!r} is not a positive integer: ignored", RuntimeWarning,
                      stacklevel=3)
        return None
    if len(first) > 18 or int(first) > cpus:  # (18 digits: int() never sees a huge string)
        warnings.warn(f"{name}={value!r} asks for more threads than the {cpus} CPUs available: "
                      f"softrank uses {cpus}", RuntimeWarning, stacklevel=3)
        return cpus
    return int(first)


def _default_threads():
    cpus = _cpu_count()
    for name in ("SOFTRANK_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name)
        if value is not None:
            count = _threads_from(name, value, cpus)
            if count is not None:
                return count
    return cpus


MAX_THREADS = _default_threads() if _cpu.openmp_enabled() else 1
_cpu.set_thread_policy(MAX_THREADS, PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_ELEMENTS_BACKWARD)


def _one_thread_after_fork():
    global MAX_THREADS
    MAX_THREADS = 1
    _cpu.set_thread_policy(1, PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_ELEMENTS_BACKWARD)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_one_thread_after_fork)
