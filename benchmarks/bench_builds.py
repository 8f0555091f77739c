"""Two builds of the native solver side by side: time softrank._cpu's forward and backward of
this checkout against another checkout's compiled extension, in one process, interleaved.

Used to show that a change to the solver keeps the speed of the existing modes (e.g. issue 17's
"soft_rank/soft_sort within 5%"): both builds take the same arrays, in alternating rounds, and
the table gives the median over rounds of this build's time / the other's.

    python benchmarks/bench_builds.py /path/to/other/checkout [--rounds 15]

The other checkout must have its extension built in place (python setup.py build_ext --inplace).
"""
import argparse
import glob
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from softrank import _cpu  # noqa: E402

SHAPES = [(1, 10), (1, 1000), (1, 100_000), (32, 10_000), (1024, 1000), (65536, 32)]
MODES = {"rank/l2": 0, "rank/kl": 1, "sort/l2": 2, "sort/kl": 3}


def load_other(checkout):
    """The other checkout's softrank._cpu, loaded under another package name."""
    paths = glob.glob(os.path.join(checkout, "softrank", "_cpu*.so"))
    if not paths:
        sys.exit(f"no built softrank/_cpu*.so in {checkout}")
    loader = importlib.machinery.ExtensionFileLoader("other_softrank._cpu", paths[0])
    spec = importlib.util.spec_from_file_location("other_softrank._cpu", paths[0], loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def per_call(function, budget):
    """Seconds per call of function, calling it in a loop for about `budget` seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        function()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed > budget:
            return elapsed / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="checkout whose built extension is the baseline")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per timing")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    other = load_other(args.other)
    for module in (_cpu, other):
        module.set_thread_policy(min(2, os.cpu_count() or 1), 768, 2048)
    rng = np.random.default_rng(0)
    print(f"this build / the other's ({args.other}), {args.dtype}, median of {args.rounds} "
          "interleaved rounds; < 1 is faster")
    print(f"{'shape':>14} {'mode':>8} {'forward':>9} {'backward':>9}")
    for rows, n in SHAPES:
        x = rng.normal(size=(rows, n)).astype(args.dtype)
        g = rng.normal(size=(rows, n)).astype(args.dtype)
        for name, mode in MODES.items():
            out, perm, blocks = _cpu.forward(mode, x, 1.0, 1.0)
            aux = out if mode == 1 else (x if mode == 3 else None)
            ratios = {"forward": [], "backward": []}
            for _ in range(args.rounds):
                for step, calls in (
                        ("forward", [lambda m=m: m.forward(mode, x, 1.0, 1.0)
                                     for m in (_cpu, other)]),
                        ("backward", [lambda m=m: m.backward(mode, g, perm, blocks, aux, 1.0, 1.0)
                                      for m in (_cpu, other)])):
                    mine, theirs = per_call(calls[0], args.budget), per_call(calls[1], args.budget)
                    ratios[step].append(mine / theirs)
            print(f"{str((rows, n)):>14} {name:>8} {statistics.median(ratios['forward']):9.3f} "
                  f"{statistics.median(ratios['backward']):9.3f}", flush=True)


if __name__ == "__main__":
    main()
