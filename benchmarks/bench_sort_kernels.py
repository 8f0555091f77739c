"""Each sort kernel of the compiled solver against the general path, and this build against an
older checkout.

    python benchmarks/bench_sort_kernels.py [--rounds 15] [--dtypes float32,float64] [--mode 0]
    python benchmarks/bench_sort_kernels.py --before /path/to/old/checkout [--tasks ...]

Kernel mode (the default) times the forward of soft_rank/l2 (softrank._cpu.forward, mode 0, one
thread) on the grid of SHAPES with the kernel the solver picks ("auto") and with each other
kernel forced through the debug entry point (softrank._cpu._debug("sort_kernel", name)), on this
CPU's kernels and on those of a CPU without AVX-512 ("avx2:" configurations). It prints the
median over rounds of each configuration's time divided by auto's, measured in the same round
(rounds interleave the configurations): a ratio of 1.10 or more for every general-path
configuration (radix, std) means the automatic kernel wins at least 10% on that shape.
A forced kernel that cannot sort a length (counting beyond its limit, the network beyond its
size) leaves the row to auto: those cells print "-". --mode 1 times soft_rank/kl instead: on
rows that both kernel sets radix sort (n > 1024), "avx2:auto" then differs from "auto" only by
the vector exp (AVX2 against AVX-512).

Before mode starts two worker processes, one importing softrank from --before (its own in-place
build) and one from this checkout, and alternates them call by call: the ratio is new / old,
median over rounds. The worker for an old checkout uses its forward_at/backward_at entry points
if it has them.

Every timed call cycles through a pool of distinct inputs, so that no branch predictor learns
one row by heart. Run it pinned to one CPU (taskset -c 1 python ...) on a quiet machine, and
rerun before believing a difference under ~5%.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(1, 10), (32, 10), (1, 100), (1024, 100), (1, 1000), (1024, 1000), (32, 10_000),
          (1, 100_000), (1, 1_000_000)]
CONFIGS = ["auto", "counting", "network", "radix", "std",
           "avx2:auto", "avx2:network", "avx2:radix", "avx2:std"]
ELEMENTS_PER_TIMING = 300_000


def _pool(rows, n, dtype, seed=0):
    """Distinct inputs (several copies of the shape, about 4e6 elements in all at most)."""
    count = max(1, min(64, int(4e6 // (rows * n))))
    return [np.random.default_rng(seed + i).normal(size=(rows, n)).astype(dtype)
            for i in range(count)]


def _reps(rows, n, pool):
    return max(len(pool), ELEMENTS_PER_TIMING // (rows * n))


def _timed(call, pool, reps):
    start = time.perf_counter()
    for i in range(reps):
        call(pool[i % len(pool)])
    return (time.perf_counter() - start) / reps


# ----------------------------------------------------------------------------- kernel mode

def _applies(cpu, config, n, dtype):
    """Whether a forced kernel sorts rows of n itself (else the solver falls back to auto)."""
    kernel = config.split(":")[-1]
    cpu._debug("use_avx512", not config.startswith("avx2:"))
    limits = cpu._debug("sort_limits")
    if kernel == "counting":
        return n <= limits["counting_max"][dtype == np.float64]
    if kernel == "network":
        return 0 < n <= limits["network_max"]
    return True


def _set(cpu, config):
    kernels_of_this_cpu = not config.startswith("avx2:")
    cpu._debug("use_avx512", kernels_of_this_cpu)
    cpu._debug("sort_kernel", config.split(":")[-1])


def kernel_mode(args):
    sys.path.insert(0, os.path.join(HERE, ".."))
    from softrank import _cpu

    saved = _cpu.thread_policy()
    _cpu.set_thread_policy(1, 0, 0)
    limits = _cpu._debug("sort_limits")
    print(f"sort limits of this CPU: {limits}")
    _cpu._debug("use_avx512", False)
    print(f"sort limits without AVX-512: {_cpu._debug('sort_limits')}")
    _cpu._debug("use_avx512", True)
    configs = [c for c in args.configs.split(",") if c.split(":")[-1] in
               ["auto"] + _cpu._debug("sort_kernels")]
    print(f"forward of mode {args.mode} (0: soft_rank/l2), one thread; auto in us, the others / "
          "auto (median of per-round ratios)")
    print(f"{'dtype':8s}{'shape':>14s}" + "".join(f"{c:>14s}" for c in configs), flush=True)
    try:
        for dtype in [np.dtype(d) for d in args.dtypes.split(",")]:
            for rows, n in SHAPES:
                pool = _pool(rows, n, dtype)
                reps = _reps(rows, n, pool)
                live = [c for c in configs
                        if c.endswith("auto") or _applies(_cpu, c, n, dtype)]
                times = {c: [] for c in live}
                for _ in range(args.rounds):
                    for config in live:
                        _set(_cpu, config)
                        times[config].append(
                            _timed(lambda x: _cpu.forward(args.mode, x, 1.0, 1.0), pool, reps))
                cells = []
                for config in configs:
                    if config == "auto":
                        cells.append(f"{statistics.median(times['auto']) * 1e6:11.2f} us")
                    elif config in times:
                        ratio = statistics.median(
                            a / b for a, b in zip(times[config], times["auto"]))
                        cells.append(f"{ratio:13.2f}x")
                    else:
                        cells.append(f"{'-':>14s}")
                print(f"{dtype.name:8s}{str((rows, n)):>14s}" + "".join(cells), flush=True)
    finally:
        _set(_cpu, "auto")
        _cpu.set_thread_policy(*saved)


# ----------------------------------------------------------------------------- before mode

WORKER = r"""
import sys, time
import numpy as np
from softrank import _cpu
old = hasattr(_cpu, "forward_at")
if not old:
    _cpu.set_thread_policy(1, 0, 0)
ELEMENTS = int(sys.argv[1])

def pool_of(rows, n, dtype):
    count = max(1, min(64, int(4e6 // (rows * n))))
    return [np.random.default_rng(i).normal(size=(rows, n)).astype(dtype) for i in range(count)]

def call_of(task, rows, n, dtype, pool):
    kind, mode = task[:3], int(task[3])
    single = dtype == np.float32
    aux_of = lambda x, out: {1: out, 3: x}.get(mode)
    address = {id(x): x.ctypes.data for x in pool}  # (x.ctypes costs a microsecond a call)
    if kind == "fwd":
        if old:
            return lambda x: _cpu.forward_at(mode, address[id(x)], rows, n, single, 1.0, 1.0, 1)
        return lambda x: _cpu.forward(mode, x, 1.0, 1.0)
    saved = {}
    for x in pool:
        if old:
            out, perm, blocks = _cpu.forward_at(mode, address[id(x)], rows, n, single, 1.0, 1.0, 1)
        else:
            out, perm, blocks = _cpu.forward(mode, x, 1.0, 1.0)
        aux = aux_of(x, out)
        saved[id(x)] = (perm, blocks, aux, 0 if aux is None else aux.ctypes.data)
    if old:
        return lambda g: _cpu.backward_at(mode, address[id(g)], saved[id(g)][0], saved[id(g)][1],
                                          saved[id(g)][3], single, 1.0, 1.0, 1)
    return lambda g: _cpu.backward(mode, g, *saved[id(g)][:3], 1.0, 1.0)

cache = {}
for line in sys.stdin:
    task, rows, n, dtype = line.split()
    rows, n, dtype = int(rows), int(n), np.dtype(dtype)
    key = (task, rows, n, dtype)
    if key not in cache:
        pool = pool_of(rows, n, dtype)
        cache.clear()
        cache[key] = (pool, call_of(task, rows, n, dtype, pool))
    pool, call = cache[key]
    reps = max(len(pool), ELEMENTS // (rows * n))
    call(pool[0])
    start = time.perf_counter()
    for i in range(reps):
        call(pool[i % len(pool)])
    print((time.perf_counter() - start) / reps, flush=True)
"""


def _worker(root):
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.Popen([sys.executable, "-c", WORKER, str(ELEMENTS_PER_TIMING)], cwd=root,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _ask(worker, request):
    worker.stdin.write(request + "\n")
    worker.stdin.flush()
    return float(worker.stdout.readline())


def before_mode(args):
    workers = {"old": _worker(os.path.abspath(args.before)),
               "new": _worker(os.path.abspath(os.path.join(HERE, "..")))}
    tasks = args.tasks.split(",")
    print(f"new / old, one thread, median of per-round ratios ({args.rounds} rounds); "
          "old time in us")
    print(f"{'dtype':8s}{'shape':>14s}" + "".join(f"{t:>20s}" for t in tasks), flush=True)
    try:
        for dtype in args.dtypes.split(","):
            for rows, n in SHAPES:
                cells = []
                for task in tasks:
                    request = f"{task} {rows} {n} {dtype}"
                    ratios, olds = [], []
                    for r in range(args.rounds):
                        order = ("old", "new") if r % 2 == 0 else ("new", "old")
                        got = {who: _ask(workers[who], request) for who in order}
                        ratios.append(got["new"] / got["old"])
                        olds.append(got["old"])
                    cells.append(f"{statistics.median(olds) * 1e6:10.1f} {statistics.median(ratios):7.3f}x")
                print(f"{dtype:8s}{str((rows, n)):>14s}" + "".join(f"{c:>20s}" for c in cells),
                      flush=True)
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="kernel mode: configurations to time (auto first)")
    parser.add_argument("--mode", type=int, default=0, help="kernel mode: the solver's mode")
    parser.add_argument("--before", help="an older checkout with its own in-place build")
    parser.add_argument("--shapes", help="rowsxn,... instead of the grid (e.g. 1024x100,1x1000)")
    parser.add_argument("--tasks", default="fwd0",
                        help="before mode: fwdM / bwdM for mode M (0 rank/l2, 1 rank/kl, "
                             "2 sort/l2, 3 sort/kl), comma-separated")
    args = parser.parse_args()
    if args.shapes:
        SHAPES[:] = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.before:
        before_mode(args)
    else:
        kernel_mode(args)


if __name__ == "__main__":
    main()
