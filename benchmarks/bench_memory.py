"""Peak temporary memory of the NumPy API per element, for long rows (issue 16, item 9).

Each case runs in a fresh subprocess: it imports softrank, warms the solver up on a short row,
allocates the input (and the cotangent), then resets the kernel's high-water mark of resident
memory (writing 5 to /proc/self/clear_refs; tracemalloc does not see the solver's C++
allocations) and makes the call. The temporary memory is

    VmHWM after the call - VmRSS before it - the bytes of what the call returns

(the output; for forward+backward also the gradient), divided by the row's length. What the
pullback keeps for the backward (perm, blocks: 8 B/element, and aux) counts as temporary.

    python benchmarks/bench_memory.py                       # 1e6, 1e7, 2e7; float32, float64
    python benchmarks/bench_memory.py --sizes 1000000 --dtypes float32 --ops rank
    python benchmarks/bench_memory.py --time                # forward times, (1, 1e6), (1, 1e7)

Linux only (/proc). Prints one line per case and a final RESULT line (the largest float32
figure).
"""
import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys
import numpy as np
import softrank

n, dtype, what, reg, op = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
eps = float(sys.argv[6])

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

fn = getattr(softrank, "soft_" + op)
vjp = getattr(softrank, "soft_" + op + "_vjp")
warm = np.random.default_rng(1).standard_normal(70000).astype(dtype)
fn(warm, regularization=reg)
vjp(warm, regularization=reg)[1](warm)
# Gaps of about 1 between neighbours and a small strength: (almost) every block a singleton,
# so PAV's stack fills every page of its arrays (pooled rows touch fewer: smaller peaks).
x = (np.random.default_rng(0).standard_normal(n) * n).astype(dtype)
g = np.ones(n, dtype=dtype) if what == "forward+backward" else None
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
if what == "forward":
    out = fn(x, regularization=reg, regularization_strength=eps)
    kept = out.nbytes
else:
    out, pullback = vjp(x, regularization=reg, regularization_strength=eps)
    grad = pullback(g)
    kept = out.nbytes + grad.nbytes
peak = status("VmHWM")
print(json.dumps({"bytes_per_element": (peak - before - kept) / n, "peak_extra_mb":
                  (peak - before - kept) / 2**20}))
"""


def measure(n, dtype, what, reg, op, eps):
    result = subprocess.run([sys.executable, "-c", CHILD, str(n), dtype, what, reg, op, str(eps)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def time_forward(sizes, repeats):
    """Median seconds of soft_rank (float32, l2) on (1, n), in this process."""
    import numpy as np

    import softrank

    times = {}
    for n in sizes:
        x = np.random.default_rng(0).standard_normal((1, n)).astype(np.float32)
        softrank.soft_rank(x)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            softrank.soft_rank(x)
            samples.append(time.perf_counter() - t0)
        times[n] = sorted(samples)[len(samples) // 2]
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7, 2 * 10**7])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--what", nargs="+", default=["forward", "forward+backward"])
    parser.add_argument("--ops", nargs="+", default=["rank"], help="rank and/or sort")
    parser.add_argument("--regs", nargs="+", default=["l2"], help="l2 and/or kl")
    parser.add_argument("--strength", type=float, default=1e-3,
                        help="regularization_strength (default 1e-3: singleton blocks, the "
                             "largest peak; 1.0 pools the N(0, n**2) rows less than fully)")
    parser.add_argument("--time", action="store_true",
                        help="also time soft_rank float32 forward on (1, 1e6) and (1, 1e7)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("bench_memory.py needs Linux (/proc/self/clear_refs)")
    worst = 0.0
    for op in args.ops:
        for reg in args.regs:
            for dtype in args.dtypes:
                for n in args.sizes:
                    for what in args.what:
                        r = measure(n, dtype, what, reg, op, args.strength)
                        if dtype == "float32":
                            worst = max(worst, r["bytes_per_element"])
                        print(f"soft_{op:<4} {reg} {dtype} n={n:>9} {what:<17} "
                              f"{r['bytes_per_element']:6.1f} B/element "
                              f"({r['peak_extra_mb']:.0f} MiB)", flush=True)
    if args.time:
        for n, t in time_forward([10**6, 10**7], args.repeats).items():
            print(f"time soft_rank float32 l2 (1, {n}): {t * 1e3:.1f} ms (median of "
                  f"{args.repeats})")
    print(f"RESULT max float32 temporaries: {worst:.1f} B/element")


if __name__ == "__main__":
    main()
