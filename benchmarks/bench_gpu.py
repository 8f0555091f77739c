#!/usr/bin/env python
"""GPU benchmark: softrank (CUDA back end) vs torch.sort on the same device, in one process.

For each (batch, n) and dtype prints the median time of

* ``sort``    = ``torch.sort(x, dim=-1)`` (values + indices), the reference;
* ``fwd``     = ``soft_rank(x)`` on a tensor without grad;
* ``fwd+bwd`` = ``soft_rank(x)`` on a leaf with ``requires_grad`` + ``out.backward(g)``;

and the ratios ``fwd/sort`` and ``fb/sort`` (lower is better).  Times come from CUDA events
around blocks of back-to-back calls (median over rounds), after warm-up (which also pays the NVRTC
compilation).  Targets (issue 3, H100): fwd/sort <= 1.5 on every shape; (1, 1e6) fwd+bwd < 1 ms.

``--sweep`` also times soft_rank/l2 under alternative dispatch tables (one tuning key changed at a
time, plus each family forced) to choose the thresholds in ``softrank/cuda/tuning.py``.

``--sanitize-cases`` instead runs a few tiny calls of every kernel family once (for
compute-sanitizer in benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import statistics
import sys

SHAPES = [(65536, 32), (4096, 1000), (256, 10_000), (16, 100_000), (1, 1_000_000)]


def bench(fn, torch, rounds, min_ms):
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    once = max(start.elapsed_time(stop), 1e-3)
    reps = max(1, int(min_ms / rounds / once))
    samples = []
    for _ in range(rounds):
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / reps)
    return statistics.median(samples)


def copy_bandwidth(torch):
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), torch, 5, 50)
    return 2 * x.numel() / (ms * 1e-3) / 1e12


def sanitize_cases():
    import cupy
    import numpy as np

    import softrank
    from softrank.cuda import tuning

    rng = np.random.default_rng(0)
    families = ({}, {"max_group": 1, "block_threads": 64}, {"max_group": 8},
                {"few_rows": 10**9, "split_min_n": 1, "tile": 128, "tile_threads": 32})
    for cfg in families:
        tuning.set_tuning(**cfg)
        for n in (1, 33, 300):
            x = cupy.asarray(rng.normal(size=(5, n)))
            x[1, 0] = np.nan
            for fn in (softrank.soft_rank_vjp, softrank.soft_sort_vjp):
                for reg in ("l2", "kl"):
                    for dtype in (cupy.float32, cupy.float64):
                        out, pullback = fn(x.astype(dtype), reg, 0.5)
                        pullback(cupy.ones_like(out))
        tuning.set_tuning()
    cupy.cuda.Device().synchronize()
    print("sanitize cases ok")


def time_shape(torch, _backend, tuning, fn, reg, dtype, batch, n, args):
    """Median ms of torch.sort, fn forward and fn forward+backward on one (batch, n) input."""
    torch.manual_seed(0)
    x = torch.randn(batch, n, device="cuda", dtype=dtype)
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)
    plan = tuning.plan_forward(batch, n, x.element_size(),
                               _backend._smem_limit(torch.cuda.current_device()))

    def fwd_bwd():
        xg.grad = None
        fn(xg, reg, 1.0).backward(g)

    t_sort = bench(lambda: torch.sort(x, dim=-1), torch, args.rounds, args.min_ms)
    t_fwd = bench(lambda: fn(x, reg, 1.0), torch, args.rounds, args.min_ms)
    t_fb = bench(fwd_bwd, torch, args.rounds, args.min_ms)
    return t_sort, t_fwd, t_fb, plan.kind


SWEEP = [
    {},
    {"items_per_thread": 4}, {"items_per_thread": 16}, {"items_per_thread": 32},
    {"block_threads": 128}, {"block_threads": 512}, {"block_threads": 1024},
    {"max_group": 256}, {"max_group": 512},
    {"tile": 2048}, {"tile": 8192}, {"tile_threads": 256}, {"tile_threads": 1024},
    {"few_rows": 0},  # smem family wherever it fits
    {"few_rows": 10**9, "split_min_n": 1},  # tiled family everywhere
]


def sweep(torch, _backend, tuning, fn, args):
    """soft_rank/l2 float32 under each table of SWEEP (ratios to the default table's time)."""
    print()
    print("sweep: soft_rank/l2 float32, ms (fwd | fwd+bwd) per tuning override")
    for batch, n in SHAPES:
        base = None
        for cfg in SWEEP:
            tuning.set_tuning(**cfg)
            try:
                _, t_fwd, t_fb, kind = time_shape(torch, _backend, tuning, fn, "l2", torch.float32,
                                                  batch, n, args)
            except Exception as exc:  # a table the kernels reject is a finding, not a crash
                print(f"  ({batch}, {n}) {cfg}: {type(exc).__name__}: {exc}")
                continue
            finally:
                tuning.set_tuning()
            base = base or (t_fwd, t_fb)
            print(f"  ({batch:5d}, {n:7d}) {kind:>6} fwd {t_fwd:8.4f} ({t_fwd / base[0]:4.2f}) "
                  f"f+b {t_fb:8.4f} ({t_fb / base[1]:4.2f})  {cfg or 'default'}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-ms", type=float, default=150.0, help="measured time per function")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--ops", default="rank:l2,sort:l2,rank:kl,sort:kl",
                        help="comma-separated op:regularization pairs")
    parser.add_argument("--sweep", action="store_true", help="also time alternative tunings")
    parser.add_argument("--sanitize-cases", action="store_true")
    args = parser.parse_args(argv)
    if args.sanitize_cases:
        sanitize_cases()
        return 0

    import torch

    import softrank
    from softrank.cuda import _backend, tuning

    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"copy bandwidth: {copy_bandwidth(torch):.2f} TB/s (read + write)")
    print(f"tuning: {tuning.get_tuning()}")
    header = (f"{'op':8} {'dtype':8} {'batch':>6} {'n':>8} {'family':>6} {'sort ms':>9} "
              f"{'fwd ms':>9} {'f+b ms':>9} {'fwd/sort':>9} {'fb/sort':>8}")
    print(header)
    print("-" * len(header))
    failures = []
    for pair in args.ops.split(","):
        op, reg = pair.split(":")
        fn = softrank.soft_rank if op == "rank" else softrank.soft_sort
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            for batch, n in SHAPES:
                t_sort, t_fwd, t_fb, kind = time_shape(torch, _backend, tuning, fn, reg, dtype,
                                                      batch, n, args)
                r_f, r_fb = t_fwd / t_sort, t_fb / t_sort
                mark = ""
                if r_f > 1.5:
                    mark += " FAIL[fwd<=1.5x sort]"
                    failures.append((op, reg, dtype_name, batch, n, "fwd"))
                if (batch, n) == (1, 1_000_000) and t_fb >= 1.0:
                    mark += " FAIL[f+b<1ms]"
                    failures.append((op, reg, dtype_name, batch, n, "1ms"))
                print(f"{op + '/' + reg:8} {dtype_name:8} {batch:6d} {n:8d} {kind:>6} "
                      f"{t_sort:9.4f} {t_fwd:9.4f} {t_fb:9.4f} {r_f:9.2f} {r_fb:8.2f}{mark}",
                      flush=True)
    if args.sweep:
        sweep(torch, _backend, tuning, softrank.soft_rank, args)
    print(f"targets missed: {len(failures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
