"""One thread against two in the compiled solver, to set the parallel thresholds.

    python benchmarks/bench_threads.py [--rounds 40]

For each (rows, n) shape, dtype and mode (rank/l2, rank/kl) prints the best time of the forward
and of the backward of softrank._cpu with 1 and with 2 threads (the thread policy set to 1 or 2
threads and no element threshold before each call), measured interleaved in one process.
softrank/_cpu_backend.py runs rows in parallel from PARALLEL_MIN_ELEMENTS (forward) and
PARALLEL_MIN_ELEMENTS_BACKWARD (backward) elements; a change to the solver or the machine calls
for a rerun.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from softrank import _cpu  # noqa: E402  (the in-place build of this checkout)

SHAPES = [(32, 10), (64, 10), (128, 10), (256, 10), (1024, 10), (16, 32), (32, 32), (64, 32),
          (1024, 32), (8, 100), (16, 100), (32, 100), (1024, 100)]
MODES = {0: "rank/l2", 1: "rank/kl"}


def best_of(rounds, calls):
    """Best time (s) of each call over interleaved rounds."""
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    if not _cpu.openmp_enabled():
        sys.exit("this build of softrank._cpu has no OpenMP: rows never run in parallel")
    saved = _cpu.thread_policy()
    print("us per call, 1 thread / 2 threads")
    for dtype in (np.float32, np.float64):
        for rows, n in SHAPES:
            x = np.random.default_rng(0).normal(size=(rows, n)).astype(dtype)
            line = f"{np.dtype(dtype).name:7s} {rows:5d} x {n:4d}"
            for mode, name in MODES.items():
                out, perm, blocks = _cpu.forward(mode, x, 1.0, 1.0)
                aux = out if mode == 1 else None
                fwd = [lambda t=t: (_cpu.set_thread_policy(t, 0, 0),
                                    _cpu.forward(mode, x, 1.0, 1.0)) for t in (1, 2)]
                bwd = [lambda t=t: (_cpu.set_thread_policy(t, 0, 0),
                                    _cpu.backward(mode, x, perm, blocks, aux, 1.0, 1.0))
                       for t in (1, 2)]
                f1, f2, b1, b2 = best_of(args.rounds, fwd + bwd)
                line += (f" | {name} fwd {f1 * 1e6:7.1f} {f2 * 1e6:7.1f}"
                         f"  bwd {b1 * 1e6:6.1f} {b2 * 1e6:6.1f}")
            print(line, flush=True)
    _cpu.set_thread_policy(*saved)


if __name__ == "__main__":
    main()
