#!/usr/bin/env python
"""Where the GPU path's time goes (a diagnosis for tuning, not a target check).

For each shape of bench_gpu.SHAPES and each op/regularization, float32, prints the median ms per
call of ``torch.sort(x, dim=-1)`` (``sort``, the reference of the targets) and of

* ``host``    : CPU time of one back-end call (``_backend.forward_into`` on preallocated CuPy
                arrays), from a loop of calls without synchronisation; when it is close to ``kernels``,
                the call is bound by the Python and launch overhead, not by the GPU;
* ``kernels`` : the same back-end calls timed with CUDA events (GPU time, back to back);
* ``api``     : ``softrank.soft_rank/soft_sort`` on a torch CUDA tensor without grad (events);
* ``api host``: the CPU time of that API call;
* ``api f+b`` : forward + backward on a leaf that requires grad (events);
* ``views``   : ``api`` and ``api f+b`` with the bridge's views as they were before the pointer
                arguments (a CuPy view per tensor per call, ``cupy.from_dlpack``), in the same
                process;

then, for the tiled shapes, the GPU time of each launch of one forward (presort, tile PAV, each
merge level, tile expand), and a cProfile of the API call on the smallest-work shape.
Usage: python benchmarks/gpu_profile.py
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import time

from bench_gpu import SHAPES, bench

PAIRS = [("rank", "l2"), ("sort", "l2"), ("rank", "kl"), ("sort", "kl")]


def event_ms(torch, fn):
    """GPU ms per call: bench_gpu's CUDA-event timer (5 rounds of at least 6 ms each)."""
    return bench(fn, torch, 5, 30.0)


def host_ms(cupy, fn, reps, rounds=5):
    samples = []
    for _ in range(rounds):
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / reps)
    cupy.cuda.Device().synchronize()
    return statistics.median(samples)


def per_launch(cupy, _backend, tuning, mode, x):
    """GPU ms of every launch of one tiled forward, in order (merge levels by span)."""
    rows, n = x.shape
    out, perm, blocks = cupy.empty_like(x), cupy.empty(x.shape, "i4"), cupy.empty(x.shape, "i4")
    device_id = cupy.cuda.Device().id
    plan = tuning.plan_forward(rows, n, x.itemsize, _backend._smem_limit(device_id))
    inner = _backend._launcher(device_id, x.dtype, mode)
    _backend.forward_into(mode, x, 1.0, 1, out, perm, blocks)  # compile + warm
    timings = []

    def launch(name, grid, block, smem, args):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        inner(name, grid, block, smem, args)
        stop.record()
        timings.append((name.split("<")[0].replace("softrank::softrank_", ""), grid, block,
                        start, stop))

    cupy.cuda.Device().synchronize()
    t0 = cupy.cuda.Event()
    t0.record()
    _backend.presort(cupy, x, 1)
    t1 = cupy.cuda.Event()
    t1.record()
    _backend.forward_launches(cupy, launch, plan, mode, x, 1.0, 1, out, perm, blocks)
    cupy.cuda.Device().synchronize()
    rows_out = [("presort (separate)", 0, 0, cupy.cuda.get_elapsed_time(t0, t1))]
    rows_out += [(name, grid, block, cupy.cuda.get_elapsed_time(a, b))
                 for name, grid, block, a, b in timings]
    return plan, rows_out


def main():
    import cupy
    import torch

    import softrank
    from softrank._contract import MODES
    from softrank.cuda import _backend, tuning

    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"cupy {cupy.__version__}")
    print(f"{'op':8} {'batch':>6} {'n':>8} {'family':>6} {'sort':>8} {'host':>8} {'kernels':>8} "
          f"{'api':>8} {'api host':>8} {'api f+b':>8}")
    for op, reg in PAIRS:
        fn = softrank.soft_rank if op == "rank" else softrank.soft_sort
        for batch, n in SHAPES:
            x = cupy.random.standard_normal((batch, n), dtype=cupy.float32)
            out = cupy.empty_like(x)
            perm, blocks = cupy.empty(x.shape, "i4"), cupy.empty(x.shape, "i4")
            kind = tuning.plan_forward(batch, n, 4, _backend._smem_limit(0)).kind

            def backend():
                _backend.forward_into(MODES[op, reg], x, 1.0, 1, out, perm, blocks)

            xt = torch.from_dlpack(x)
            xg = xt.clone().requires_grad_()
            gt = torch.randn_like(xt)

            def api():
                fn(xt, reg, 1.0)

            def api_fb():
                xg.grad = None
                fn(xg, reg, 1.0).backward(gt)

            reps = 10
            t_sort = event_ms(torch, lambda: torch.sort(xt, dim=-1))
            h = host_ms(cupy, backend, reps)
            k = event_ms(torch, backend)
            a = event_ms(torch, api)
            ah = host_ms(cupy, api, reps)
            fb = event_ms(torch, api_fb)
            print(f"{op + '/' + reg:8} {batch:6d} {n:8d} {kind:>6} {t_sort:8.4f} {h:8.4f} "
                  f"{k:8.4f} {a:8.4f} {ah:8.4f} {fb:8.4f}", flush=True)

    print("\nper launch of one forward (float32, GPU ms):")
    for op, reg in PAIRS:
        for batch, n in SHAPES:
            x = cupy.random.standard_normal((batch, n), dtype=cupy.float32)
            plan, launches = per_launch(cupy, _backend, tuning, MODES[op, reg], x)
            if plan.kind != "tiled":
                continue
            total = sum(t for *_, t in launches[1:])
            print(f"  {op}/{reg} ({batch}, {n}) tile={plan.tile} tiles={plan.tiles} "
                  f"G={plan.group}: total {total:.4f}")
            for name, grid, block, t in launches:
                print(f"      {name:22} grid {grid:7d} block {block:5d} {t:9.4f}")

    print("\ncProfile of soft_rank/l2 (65536, 32) float32 on a torch tensor, 200 calls:")
    xt = torch.randn(65536, 32, device="cuda")
    softrank.soft_rank(xt)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        softrank.soft_rank(xt)
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
