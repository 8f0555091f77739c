"""Per-call overhead of the eager torch path on tiny inputs (where overhead is everything).

    python benchmarks/bench_overhead.py [--repeat 7] [--number 2000]

Prints the median over repeats of the per-call time, in microseconds, of forward and
forward+backward for soft_rank/soft_sort on (1, 10) and (8, 32) float32 tensors, next to
torch.sort (values + indices) measured in the same run. Used to check that a change to the
torch layer does not add per-call overhead (run it on both versions, same machine, same load).
"""
import argparse
import statistics
import timeit

import torch

import softrank


def per_call_us(fn, number, repeat):
    fn()
    times = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(times) / number * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, softrank {softrank.__version__} ({softrank.__file__})")
    print(f"{'case':34s} {'median us':>10s}")
    for shape in [(1, 10), (8, 32)]:
        x = torch.randn(*shape)
        leaf = x.clone().requires_grad_()
        grad = torch.randn(*shape)
        cases = {
            "torch.sort fwd": lambda: torch.sort(x),
            "torch.sort fwd+bwd": lambda: torch.sort(leaf)[0].backward(grad),
        }
        for name, op in [("soft_rank", softrank.soft_rank), ("soft_sort", softrank.soft_sort)]:
            cases[f"{name} fwd"] = lambda op=op: op(x)
            cases[f"{name} fwd+bwd"] = lambda op=op: op(leaf).backward(grad)
        for case, fn in cases.items():
            label = f"{case} {shape}"
            print(f"{label:34s} {per_call_us(fn, args.number, args.repeat):10.1f}")


if __name__ == "__main__":
    main()
