"""Concurrency (Python threads) and large inputs."""

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import softrank
from _helpers import OPS, REGS

FUNCS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}
VJPS = {"rank": softrank.soft_rank_vjp, "sort": softrank.soft_sort_vjp}


def _task(spec):
    """One unit of work: forward and gradient, NumPy or torch, returned as NumPy arrays."""
    kind, op, reg, eps, descending, x, cot = spec
    if kind == "numpy":
        out, pullback = VJPS[op](x, reg, eps, descending=descending)
        return out, pullback(cot)
    t = torch.tensor(x, requires_grad=True)
    out = FUNCS[op](t, reg, eps, descending=descending)
    (grad,) = torch.autograd.grad(out, t, torch.tensor(cot))
    return out.detach().numpy(), grad.numpy()


def test_threads_give_sequential_results(rng):
    specs = []
    for i in range(96):
        rows, n = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        dtype = np.float32 if i % 3 == 0 else np.float64
        x = (rng.normal(size=(rows, n)) * rng.choice([0.1, 1.0, 10.0])).astype(dtype)
        cot = rng.normal(size=(rows, n)).astype(dtype)
        specs.append(("numpy" if i % 2 else "torch", OPS[(i // 2) % 2], REGS[(i // 4) % 2],
                      float(rng.choice([0.01, 1.0, 10.0])), bool(i % 5 == 0), x, cot))
    sequential = [_task(s) for s in specs]
    for workers in (4, 16):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            concurrent = list(pool.map(_task, specs))
        for spec, (out_s, g_s), (out_c, g_c) in zip(specs, sequential, concurrent):
            np.testing.assert_array_equal(out_c, out_s, err_msg=str(spec[:5]))
            np.testing.assert_array_equal(g_c, g_s, err_msg=str(spec[:5]))


def test_threads_share_one_input(rng):
    """Many threads reading the same (read-only) array and tensor."""
    x = rng.normal(size=(50, 200))
    x.setflags(write=False)
    expected = softrank.soft_rank(x, "kl", 0.5)
    t = torch.tensor(x)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: softrank.soft_rank(x, "kl", 0.5), range(32)))
        results_t = list(pool.map(lambda _: softrank.soft_rank(t, "kl", 0.5), range(32)))
    for r in results:
        np.testing.assert_array_equal(r, expected)
    for r in results_t:
        np.testing.assert_array_equal(r.numpy(), expected)


@pytest.mark.parametrize("reg", REGS)
def test_million_element_row_rank(rng, reg):
    n = 1_000_000
    x = rng.normal(size=n)
    start = time.perf_counter()
    r = softrank.soft_rank(x, reg, 1.0)
    elapsed = time.perf_counter() - start
    assert r.shape == (n,) and np.all(np.isfinite(r))
    assert r.sum() == pytest.approx(n * (n + 1) / 2, rel=1e-9)
    assert r.min() >= 1 - 1e-6 and r.max() <= n + 1e-6
    assert elapsed < 20, f"1e6-element soft_rank took {elapsed:.1f}s"
    # float32 torch, with a gradient
    t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    rt = softrank.soft_rank(t, reg, 1.0)
    assert torch.all(torch.isfinite(rt))
    assert rt.double().sum().item() == pytest.approx(n * (n + 1) / 2, rel=1e-5)
    (g,) = torch.autograd.grad(rt, t, torch.ones_like(rt) / n)
    assert torch.all(torch.isfinite(g))


@pytest.mark.parametrize("reg", REGS)
def test_million_element_row_sort(rng, reg):
    n = 1_000_000
    x = rng.normal(size=n)
    start = time.perf_counter()
    s, pullback = softrank.soft_sort_vjp(x, reg, 0.01)
    g = pullback(np.ones(n))
    elapsed = time.perf_counter() - start
    assert np.all(np.isfinite(s)) and np.all(np.diff(s) >= -1e-12)
    assert s.min() >= x.min() - 1e-9 and s.max() <= x.max() + 1e-9
    assert np.all(np.isfinite(g))
    if reg == "l2":  # d sum(out) / dx = 1 for the L2 soft sort (sum is preserved)
        np.testing.assert_allclose(g, 1.0, atol=1e-9)
    assert elapsed < 20, f"1e6-element soft_sort took {elapsed:.1f}s"


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_adversarial_pav_inputs_are_fast(op, reg):
    """Inputs that make PAV pool everything, or pool and re-pool repeatedly."""
    n = 200_000
    cases = [np.arange(n, dtype=np.float64),                       # one block at large eps
             np.arange(n, dtype=np.float64)[::-1].copy(),
             np.tile([0.0, 1.0], n // 2) + np.arange(n) * 1e-3,     # sawtooth
             np.zeros(n)]                                           # all ties
    for x in cases:
        for eps in (1e-3, 1e6):
            start = time.perf_counter()
            out = FUNCS[op](x, reg, eps)
            assert np.all(np.isfinite(out))
            assert time.perf_counter() - start < 10
    r = softrank.soft_rank(np.zeros(n), reg)
    np.testing.assert_allclose(r, (n + 1) / 2, rtol=1e-9)


def test_many_rows(rng):
    x = rng.normal(size=(20_000, 50)).astype(np.float32)
    r = softrank.soft_rank(x, "l2", 0.1)
    np.testing.assert_allclose(r.sum(axis=1, dtype=np.float64), 50 * 51 / 2, rtol=1e-5)
    s = softrank.soft_sort(torch.tensor(x), "kl", 0.1)
    assert torch.all(s[:, 1:] >= s[:, :-1] - 1e-4)


def _long_rows(rng, n, dtype):
    """Rows that exercise each step of the split solver: ties, -0.0, a common offset, float64
    values equal in their high 32 bits, values near the float64 limit, NaN and inf."""
    rows = {
        "normal": rng.standard_normal(n),
        "ties": rng.integers(0, 50, n).astype(float),
        "offset": 1e8 + rng.standard_normal(n),
        "constant": np.full(n, 3.0),
        "increasing": np.arange(n, dtype=float),
    }
    signed_zeros = rng.standard_normal(n)
    signed_zeros[::7], signed_zeros[1::7] = -0.0, 0.0
    rows["signed zeros"] = signed_zeros
    if dtype == np.float64:
        rows["equal high halves"] = 1.0 + rng.integers(0, 1000, n) * 1e-12
        rows["huge"] = rng.standard_normal(n) * 1e300
    for bad in (np.nan, np.inf):
        row = rng.standard_normal(n)
        row[n // 3] = bad
        rows[f"with {bad}"] = row
    return {name: np.ascontiguousarray(row.astype(dtype)[None, :]) for name, row in rows.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_row_split_across_threads_is_bitwise_serial(rng, dtype):
    """A row of split_row_min elements or more in a batch of fewer rows than threads is solved
    with its radix passes, decoding, expansion and backward split across the threads. Outputs,
    permutation, blocks and gradients must equal the one-thread solve bit for bit, for any
    number of threads (also one that does not divide n)."""
    from softrank import _cpu

    n = _cpu._debug("sort_limits")["split_row_min"] + 3
    saved = _cpu.thread_policy()
    try:
        for name, x in _long_rows(rng, n, dtype).items():
            g = rng.standard_normal(x.shape).astype(dtype)
            for mode in range(4):
                for eps, sign in [(1e-3, 1.0), (1.0, -1.0), (100.0, 1.0)]:
                    _cpu.set_thread_policy(1, 0, 0)
                    serial = _cpu.forward(mode, x, eps, sign)
                    aux = {1: serial[0], 3: x}.get(mode)  # rank/kl reads out, sort/kl reads x
                    serial_grad = _cpu.backward(mode, g, serial[1], serial[2], aux, eps, sign)
                    for threads in (2, 3):
                        _cpu.set_thread_policy(threads, 0, 0)
                        assert _cpu._debug("threads_for", mode, 1, n) == threads
                        split = _cpu.forward(mode, x, eps, sign)
                        for a, b in zip(serial, split):
                            np.testing.assert_array_equal(a, b, err_msg=f"{name} mode {mode}")
                        split_grad = _cpu.backward(mode, g, split[1], split[2], aux, eps, sign)
                        np.testing.assert_array_equal(serial_grad, split_grad,
                                                      err_msg=f"{name} mode {mode} backward")
    finally:
        _cpu.set_thread_policy(*saved)


def _run_python(code, env=None, timeout=120):
    """Run code in a fresh interpreter (this checkout's softrank); returns the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("SOFTRANK_NUM_THREADS", "OMP_NUM_THREADS")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_after_a_parallel_call():
    """GNU OpenMP's thread pool does not survive fork(): a child's first parallel region would
    wait forever for the parent's threads. softrank switches a forked child to one thread; the
    child (a multiprocessing 'fork' worker, a DataLoader worker) then computes normally."""
    from softrank import _cpu

    if not _cpu.openmp_enabled():
        pytest.skip("built without OpenMP")
    result = _run_python("""
        import os, sys
        import numpy as np
        from softrank import _cpu, _cpu_backend as cpu
        _cpu.set_thread_policy(2, 0, 0)  # threads even on a one-CPU machine
        x = np.random.default_rng(0).normal(size=(64, 1000))
        long_row = np.random.default_rng(1).normal(size=(1, 100_000))
        assert _cpu._debug("threads_for", 0, 64, 1000) == 2
        expected = [cpu.forward(mode, x, 1.0, 1.0)[0] for mode in range(4)]
        cpu.forward(0, long_row, 1.0, 1.0)  # the split-row driver's parallel regions too
        pid = os.fork()
        if pid == 0:
            ok = all(np.array_equal(cpu.forward(mode, x, 1.0, 1.0)[0], expected[mode])
                     for mode in range(4))
            ok = ok and np.all(np.isfinite(cpu.forward(0, long_row, 1.0, 1.0)[0]))
            ok = ok and cpu.MAX_THREADS == 1 and _cpu._debug("threads_for", 0, 64, 1000) == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("value", ["\u0663", "3\u0663", "99999999999999999999999", "1000000",
                                   "2147483647", "-2", "", " ", "0", "abc", "1.5"])
@pytest.mark.parametrize("name", ["SOFTRANK_NUM_THREADS", "OMP_NUM_THREADS"])
def test_thread_count_from_junk_environment(name, value):
    """A thread count that is not a positive integer is ignored, one above the CPU count is
    capped at it; either way with a RuntimeWarning naming the variable, never a crash at import
    or a workspace sized by the junk (2147483647 threads once segfaulted on a 70,000 row)."""
    result = _run_python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import numpy as np
            from softrank import _cpu, _cpu_backend as cpu
        print(cpu.MAX_THREADS, cpu._cpu_count())
        for w in caught:
            print("WARNING", w.category.__name__, w.message)
        x = np.random.default_rng(0).normal(size=(1, 70_000))
        for mode in range(4):
            out, perm, blocks = cpu.forward(mode, x, 1.0, 1.0)
            aux = {1: out, 3: x}.get(mode)
            assert np.all(np.isfinite(cpu.backward(mode, x, perm, blocks, aux, 1.0, 1.0)))
        assert np.all(np.isfinite(cpu.forward(0, np.ones((64, 5000)), 1.0, 1.0)[0]))
    """, env={name: value})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    threads, cpus = map(int, lines[0].split())
    assert 1 <= threads <= cpus
    warned = [line for line in lines[1:] if line.startswith("WARNING RuntimeWarning")]
    assert len(warned) == 1 and name in warned[0], result.stdout


@pytest.mark.parametrize("value, expected", [("1", 1), ("1,4", 1), (" 1 ", 1), ("01", 1)])
def test_thread_count_from_environment(value, expected):
    result = _run_python("""
        import warnings
        warnings.simplefilter("error")
        from softrank import _cpu, _cpu_backend as cpu
        print(cpu.MAX_THREADS, _cpu.thread_policy()[0])
    """, env={"SOFTRANK_NUM_THREADS": value, "OMP_NUM_THREADS": "junk"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(expected)] * 2
