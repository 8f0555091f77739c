"""Why softrank/_torch.py has two autograd.Functions: fwd+bwd of a short row through each.

    python benchmarks/bench_torch_routes.py [--rounds 30] [--number 300] [--shape 1,10]

Times, interleaved round by round, forward+backward of soft_rank/l2 and soft_sort/kl on one
float32 row through (a) a do-nothing classic autograd.Function (the floor any differentiable op
pays), (b) EagerSoftOp, the classic Function eager calls take, and (c) SoftOp, the
setup_context Function that torch.func transforms take, with the same native backward.
Prints medians of the per-round ratios to (a). Needs a Python that imports the softrank to
measure (PYTHONPATH or an install).
"""
import argparse
import statistics
import time

import torch

import softrank
from bench_cpu import _Identity  # the do-nothing Function that bench_cpu.py calls the floor
from softrank import _contract as C
from softrank import _torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--number", type=int, default=300)
    parser.add_argument("--shape", default="1,10")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.set_num_threads(1)
    x = torch.randn(*shape, requires_grad=True)
    cases = {"floor": lambda: _Identity.apply(x).sum().backward()}
    for op, reg in (("rank", "l2"), ("sort", "kl")):
        spec = (C.mode_of(op, reg), 1.0, C.sign_for(op, False), None)
        cases[f"{op}/{reg} EagerSoftOp"] = (
            lambda spec=spec: _torch.EagerSoftOp.apply(x, spec).sum().backward())
        cases[f"{op}/{reg} SoftOp"] = (
            lambda spec=spec: _torch.SoftOp.apply(x, *spec)[0].sum().backward())
        cases[f"{op}/{reg} public soft_{op}"] = (
            lambda f=getattr(softrank, "soft_" + op), reg=reg: f(x, reg).sum().backward())
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(args.number):
                fn()
            times[name].append((time.perf_counter() - start) / args.number * 1e6)
    print(f"torch {torch.__version__}, shape {shape}, float32, {args.rounds} rounds")
    print(f"{'case':32s} {'median us':>10s} {'/ floor':>8s}")
    for name, ts in times.items():
        ratio = statistics.median(t / f for t, f in zip(ts, times["floor"]))
        print(f"{name:32s} {statistics.median(ts):10.1f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
