"""The compiled solver (softrank/_cpu.pyx and softrank/csrc/): its entry points' checks, its
sort kernels, its numerics at the edges, its debug bounds checks and its workspaces."""

import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

import softrank
from softrank import _cpu
from softrank._contract import MODES, RANK_KL, RANK_L2, SORT_KL, SORT_L2
import _reference as ref
from _helpers import REGS

FUNCS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}


@pytest.fixture(params=[True, False], ids=["cpu-kernels", "no-avx512-kernels"])
def kernels(request):
    """Runs a test with this CPU's kernels and with those of a CPU without AVX-512 (the AVX2
    sorting kernels, libm's exp instead of the vector one)."""
    _cpu._debug("use_avx512", request.param)
    yield request.param
    _cpu._debug("use_avx512", True)


@pytest.fixture
def policy():
    """Restores the thread policy that a test changes."""
    saved = _cpu.thread_policy()
    yield
    _cpu.set_thread_policy(*saved)


def _rows(rows, n, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, n)).astype(dtype)


def _aux(mode, x, out):
    return {RANK_KL: out, SORT_KL: x}.get(mode)


def _solve(mode, x, eps=1.0, sign=1.0, g=None):
    """forward, then backward of g (or of a fixed cotangent): out, perm, blocks, grad."""
    out, perm, blocks = _cpu.forward(mode, x, eps, sign)
    if g is None:
        g = _rows(*x.shape, x.dtype, seed=1)
    grad = _cpu.backward(mode, g, perm, blocks, _aux(mode, x, out), eps, sign)
    return out, perm, blocks, grad


def _soft_rank(x, reg, eps):
    """Ascending soft ranks of a 1-D float64 row, straight from the solver."""
    return _cpu.forward(MODES["rank", reg], np.ascontiguousarray(x)[None, :], eps, 1.0)[0][0]


# ----------------------------------------------------------------------------- entry points

def _swapped(x):
    return x.astype(x.dtype.newbyteorder())


def _unaligned(x):
    raw = np.empty(x.nbytes + 1, np.uint8)
    a = raw[1:].view(x.dtype).reshape(x.shape)
    a[...] = x
    return a


BAD_X = [
    (lambda x: x.astype(np.float16), TypeError, "x must be float32 or float64, got float16"),
    (lambda x: x.astype(np.int64), TypeError, "x must be float32 or float64"),
    (lambda x: x.tolist(), TypeError, "x must be a numpy.ndarray, got list"),
    (lambda x: np.ma.masked_array(x), TypeError, "x must be a numpy.ndarray, got MaskedArray"),
    (lambda x: x.ravel(), ValueError, r"x must be 2-D \(rows, n\), got shape \(24,\)"),
    (lambda x: x[None], ValueError, "x must be 2-D"),
    (lambda x: x[:, ::2], ValueError, "contiguous: False"),
    (lambda x: np.asfortranarray(x), ValueError, "contiguous: False"),
    (_swapped, ValueError, "native byte order: False"),
    (_unaligned, ValueError, "aligned: False"),
]


@pytest.mark.parametrize("entry", ["forward", "forward_values"])
@pytest.mark.parametrize("bad, exc, message", BAD_X)
def test_forward_rejects_wrong_arrays(entry, bad, exc, message):
    x = bad(_rows(3, 8))
    with pytest.raises(exc, match=message):
        getattr(_cpu, entry)(0, x, 1.0, 1.0)


@pytest.mark.parametrize("entry", ["forward", "forward_values"])
@pytest.mark.parametrize("mode, eps, sign, message", [
    (6, 1.0, 1.0, r"mode must be 0\.\.5, got 6"), (-1, 1.0, 1.0, "mode must be 0..5"),
    (0, 0.0, 1.0, "eps must be a finite number > 0"), (0, -1.0, 1.0, "eps must be"),
    (0, np.inf, 1.0, "eps must be"), (0, np.nan, 1.0, "eps must be"),
    (0, 1.0, 0.5, "sign must be 1 or -1, got 0.5"), (0, 1.0, np.nan, "sign must be"),
])
def test_forward_rejects_wrong_scalars(entry, mode, eps, sign, message):
    with pytest.raises(ValueError, match=message):
        getattr(_cpu, entry)(mode, _rows(2, 5), eps, sign)


def _backward_args(mode=RANK_KL, dtype=np.float64):
    x = _rows(3, 8, dtype)
    out, perm, blocks = _cpu.forward(mode, x, 1.0, 1.0)
    return dict(g=_rows(3, 8, dtype, seed=1), perm=perm, blocks=blocks, aux=_aux(mode, x, out))


@pytest.mark.parametrize("change, exc, message", [
    (dict(g=lambda a: a.astype(np.float16)), TypeError, "g must be float32 or float64"),
    (dict(g=lambda a: a[:, ::2]), ValueError, "g must be a C-contiguous"),
    (dict(g=lambda a: a[:, :4].copy()), ValueError, r"perm must have shape \(3, 4\)"),
    (dict(g=lambda a: a.ravel()), ValueError, "g must be 2-D"),
    (dict(g=lambda a: np.asfortranarray(a)), ValueError, "g must be a C-contiguous"),
    (dict(perm=lambda a: a.astype(np.int64)), TypeError, "perm must be int32, got int64"),
    (dict(perm=lambda a: a.astype(np.float64)), TypeError, "perm must be int32"),
    (dict(perm=lambda a: a[:2]), ValueError, r"perm must have shape \(3, 8\), got \(2, 8\)"),
    (dict(perm=lambda a: a.ravel()), ValueError, "perm must be 2-D"),
    (dict(perm=_swapped), ValueError, "native byte order: False"),
    (dict(perm=lambda a: a.tolist()), TypeError, "perm must be a numpy.ndarray"),
    (dict(blocks=lambda a: a.T.copy()), ValueError, r"blocks must have shape \(3, 8\)"),
    (dict(blocks=lambda a: a.astype(np.uint32)), TypeError, "blocks must be int32"),
    (dict(blocks=_unaligned), ValueError, "aligned: False"),
    (dict(aux=lambda a: None), ValueError, "aux is required for the kl regularization"),
    (dict(aux=lambda a: a.astype(np.float32)), TypeError, "aux must be float64, got float32"),
    (dict(aux=lambda a: a[:, :4]), ValueError, "aux must have shape"),
    (dict(aux=lambda a: a[:, ::-1]), ValueError, "aux must be a C-contiguous"),
])
def test_backward_rejects_wrong_arrays(change, exc, message):
    args = _backward_args()
    for name, bad in change.items():
        args[name] = bad(args[name])
    with pytest.raises(exc, match=message):
        _cpu.backward(RANK_KL, args["g"], args["perm"], args["blocks"], args["aux"], 1.0, 1.0)


def test_backward_rejects_aux_for_l2_and_a_wrong_mode():
    args = _backward_args(RANK_L2)
    with pytest.raises(ValueError, match="aux must be None for the l2 regularization"):
        _cpu.backward(RANK_L2, args["g"], args["perm"], args["blocks"], args["g"], 1.0, 1.0)
    with pytest.raises(ValueError, match="mode must be 0..5"):
        _cpu.backward(7, args["g"], args["perm"], args["blocks"], None, 1.0, 1.0)


@pytest.mark.parametrize("n", [8, 70_000])
@pytest.mark.parametrize("mode", range(4))
def test_backward_with_blocks_that_are_not_a_forwards(mode, n, policy):
    """blocks are only compared, never used to index (the split-row backward leaves rows whose
    blocks are not a forward's to the serial loop): any values give an answer, no crash."""
    _cpu.set_thread_policy(2, 0, 0)
    x = _rows(1 if n > 8 else 3, n)
    out, perm, blocks = _cpu.forward(mode, x, 1.0, 1.0)
    junk = np.random.default_rng(0).integers(-5, n + 5, size=blocks.shape).astype(np.int32)
    junk[:, 0] = 0
    grad = _cpu.backward(mode, np.ones_like(x), perm, junk, _aux(mode, x, out), 1.0, 1.0)
    assert grad.shape == x.shape


def test_debug_builds_check_the_indices_read_through_perm():
    """perm indexes the cotangent: the entry points check its layout, and a debug build every
    index read through it (a release build trusts a forward's perm)."""
    if not _cpu._debug("bounds_checked"):
        pytest.skip("release build: span indices are not checked (SOFTRANK_CYTHON_DEBUG=1 is)")
    code = """if True:
        import numpy as np
        from softrank import _cpu
        x = np.random.default_rng(0).normal(size=(3, 8))
        out, perm, blocks = _cpu.forward(0, x, 1.0, 1.0)
        perm[1, 3] = 8
        _cpu.backward(0, x, perm, blocks, None, 1.0, 1.0)
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "index 8 out of bounds for a span of 8" in result.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", range(4))
def test_entry_points_accept_read_only_inputs_and_return_new_arrays(mode, dtype):
    x = _rows(5, 40, dtype)
    expected = _solve(mode, x, 0.5, -1.0)
    x.flags.writeable = False
    out, perm, blocks = _cpu.forward(mode, x, 0.5, -1.0)
    for a in (out, perm, blocks):
        assert a.flags.c_contiguous and a.flags.writeable and a.base is None
        a.flags.writeable = False
    g = _rows(5, 40, dtype, seed=1)
    g.flags.writeable = False
    grad = _cpu.backward(mode, g, perm, blocks, _aux(mode, x, out), 0.5, -1.0)
    assert grad.flags.c_contiguous and grad.flags.writeable and grad.base is None
    for got, want in zip((out, perm, blocks, grad), expected):
        np.testing.assert_array_equal(got, want)
    assert out.dtype == grad.dtype == dtype and perm.dtype == blocks.dtype == np.int32
    again = _cpu.forward(mode, x, 0.5, -1.0)
    assert not any(np.shares_memory(a, b) for a, b in zip(again, (out, perm, blocks)))


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("mode", range(4))
def test_empty_rows(mode, shape):
    x = np.empty(shape, np.float32)
    out, perm, blocks = _cpu.forward(mode, x, 1.0, 1.0)
    assert out.shape == perm.shape == blocks.shape == shape and out.dtype == np.float32
    assert _cpu.forward_values(mode, x, 1.0, 1.0).shape == shape
    grad = _cpu.backward(mode, x, perm, blocks, x if mode & 1 else None, 1.0, 1.0)
    assert grad.shape == shape and grad.dtype == np.float32


def test_workspace_reuse_across_sizes():
    """Calls alternate between the cached per-thread workspace and per-call buffers (> 8 MiB);
    every result must be right: the hard ranks."""
    rng = np.random.default_rng(3)
    for n in (5, 3000, 5, 1_200_000, 30, 200_000, 7):
        x = rng.permutation(n).astype(np.float64)
        np.testing.assert_array_equal(_soft_rank(x, "l2", 1e-6), x + 1)


def test_bounds_checks_abort_in_debug_builds():
    assert _cpu._debug("index_span", 3) == 3.0
    if not _cpu._debug("bounds_checked"):
        pytest.skip("release build: span indices are not checked (SOFTRANK_CYTHON_DEBUG=1 is)")
    result = subprocess.run(
        [sys.executable, "-c", "from softrank import _cpu; _cpu._debug('index_span', 4)"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "index 4 out of bounds for a span of 4" in result.stderr


def test_debug_names_its_hooks():
    with pytest.raises(ValueError, match="no debug hook 'nope'; there are"):
        _cpu._debug("nope")


# ----------------------------------------------------------------------------- torch route

@pytest.mark.parametrize("op", ["rank", "sort"])
def test_in_place_change_of_a_saved_tensor_is_detected(op):
    """kl keeps a reference to the output (rank) or the input (sort): changing it in place
    before backward must raise, as for torch's own operators, not give a wrong gradient."""
    x = torch.randn(3, 6, requires_grad=True)
    rows = x * 1.0
    out = FUNCS[op](rows, "kl", 1.0)
    with torch.no_grad():
        (out if op == "rank" else rows).add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_expanded_and_non_contiguous_cotangents():
    """Expanded (sum().backward()) and transposed cotangents reach the native backward as
    contiguous arrays: the same gradients as a contiguous cotangent."""
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    for reg in REGS:
        out = softrank.soft_rank(x, reg, 0.3)
        (g1,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
        (g2,) = torch.autograd.grad(out, x, torch.ones(5, 7, dtype=torch.float64),
                                    retain_graph=True)
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
        cot = torch.randn(7, 5, dtype=torch.float64).t()
        (g3,) = torch.autograd.grad(out, x, cot, retain_graph=True)
        (g4,) = torch.autograd.grad(out, x, cot.contiguous())
        torch.testing.assert_close(g3, g4, rtol=0, atol=0)


# ----------------------------------------------------------------------------- threads

def test_threads_follow_the_policy(policy):
    _cpu.set_thread_policy(4, 768, 2048)
    split_min = _cpu._debug("sort_limits")["split_row_min"]

    def threads_for(rows, n, backward=False, op="rank", regularization="l2"):
        return _cpu._debug("threads_for", MODES[op, regularization], rows, n, backward)

    assert threads_for(1, 10) == 1  # too little work for a parallel region
    assert threads_for(1, split_min - 1) == 1  # one short row: one thread
    assert threads_for(1, split_min) == 4  # one long row: split
    assert threads_for(1024, 1000) == 4
    assert threads_for(2, 1000) == 2
    assert threads_for(1000, 1, backward=True) == 1  # the backward's threshold is higher
    assert threads_for(1000, 10, backward=True) == 4
    # a rank/kl or project/kl forward (twice the work per element) goes parallel from half the
    # elements
    for op, regularization in MODES:
        assert threads_for(768, 1, False, op, regularization) == 4
        if (op, regularization) not in (("rank", "kl"), ("project", "kl")):
            assert threads_for(767, 1, False, op, regularization) == 1
    assert threads_for(384, 1, False, "rank", "kl") == 4
    assert threads_for(384, 1, False, "project", "kl") == 4
    assert threads_for(384, 1, False, "sort", "kl") == 1
    assert threads_for(384, 1, True, "rank", "kl") == 1  # not the backward
    _cpu.set_thread_policy(1, 768, 2048)
    assert threads_for(1024, 1000) == threads_for(1, split_min) == 1
    for bad in (0, -1, _cpu.MAX_THREADS_LIMIT + 1):
        with pytest.raises(ValueError, match="max_threads must be in 1.."):
            _cpu.set_thread_policy(bad, 768, 2048)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_give_the_one_thread_results(dtype, policy):
    """Rows in parallel, with per-thread workspaces: the same bits as one thread."""
    x = _rows(64, 300, dtype)
    x[5, 7] = np.nan
    for mode in range(4):
        _cpu.set_thread_policy(1, 0, 0)
        serial = _solve(mode, x, 0.3, -1.0)
        _cpu.set_thread_policy(3, 0, 0)
        for a, b in zip(serial, _solve(mode, x, 0.3, -1.0)):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- sorting

def _sort_lengths():
    limits = _cpu._debug("sort_limits")
    return sorted({1, 2, 3, 8, 9, 10, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 95, 96, 97,
                   127, 128, 129, 255, 256, 257, 300, 320, 321, 511, 512, 513, 640, 641, 1000,
                   1024, 1025, 2047, 2048, 5000,
                   *limits["counting_max"], *(m + 1 for m in limits["counting_max"]),
                   max(limits["network_max"], 1), limits["network_max"] + 1})


def _tie_rows(n, dtype):
    """Rows with many ties, signed zeros and float64 values that agree in their top 32 key
    bits (the radix sort leaves those in one run that is then sorted by the full key)."""
    rng = np.random.default_rng(n)
    x = rng.integers(-4, 5, size=(6, n)).astype(dtype)
    x[0] = rng.normal(size=n)
    x[1, ::3] = -0.0
    x[2] = 1.0 + rng.integers(0, 50, size=n) * 2.0**-40
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_permutation_is_the_stable_descending_argsort(dtype, kernels):
    """Around every kernel's limits (sort_limits, by CPU): perm is numpy's stable argsort of
    -sign*x, ties (including -0.0 == +0.0) in index order."""
    for n in _sort_lengths():
        x = _tie_rows(n, dtype)
        for sign in (1.0, -1.0):
            out, perm, blocks = _cpu.forward(0, x, 1.0, sign)
            expected = np.argsort(-sign * x.astype(np.float64) + 0.0, axis=1, kind="stable")
            if dtype == np.float32:  # 1 + k 2**-40 rounds to 1 in float32: all ties
                expected[2] = np.arange(n)
            np.testing.assert_array_equal(perm, expected, err_msg=f"n={n} sign={sign}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_sort_kernel_gives_the_same_results(dtype):
    """Each kernel forced on every row (the debug hook; the network only where it sorts the
    length) gives the automatic choice's outputs, permutation and blocks, bit for bit."""
    for n in (1, 5, 16, 17, 24, 40, 100, 128, 129, 600, 1000, 3000):
        x = _tie_rows(n, dtype)
        for mode in range(4):
            expected = _cpu.forward(mode, x, 0.7, -1.0)
            for kernel in _cpu._debug("sort_kernels"):
                try:
                    _cpu._debug("sort_kernel", kernel)
                    got = _cpu.forward(mode, x, 0.7, -1.0)
                finally:
                    _cpu._debug("sort_kernel", "auto")
                for a, b in zip(got, expected):
                    np.testing.assert_array_equal(a, b, err_msg=f"{kernel} n={n} mode={mode}")


def test_float64_values_sharing_their_high_bits_sort_fast():
    """One run of 400,000 equal high halves: sorted by std::sort (n log n), not quadratically."""
    x = 1.0 + np.random.default_rng(0).permutation(400_000) * 2.0**-40
    out, perm, blocks = _cpu.forward(0, x[None, :], 1.0, 1.0)
    np.testing.assert_array_equal(perm[0], np.argsort(-x, kind="stable"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_rows_on_every_sort_path(dtype, kernels):
    """Rows of every kernel's lengths: a NaN or +-inf anywhere makes its row NaN (output and
    gradient, blocks[0] = -1) and leaves the other rows exactly as when solved alone."""
    for n in (7, 100, 600, 5000):
        rng = np.random.default_rng(n)
        x = rng.normal(size=(5, n)).astype(dtype)
        x[1, n - 1] = np.nan
        x[2, 0] = np.inf
        x[3, n // 2] = -np.inf
        for mode in range(4):
            out, perm, blocks, grad = _solve(mode, x, 0.5, 1.0)
            assert np.all(np.isnan(out[1:4])) and np.all(np.isnan(grad[1:4]))
            assert np.all(blocks[1:4, 0] == -1)
            np.testing.assert_array_equal(_cpu.forward_values(mode, x, 0.5, 1.0), out)
            for r in (0, 4):
                o1, p1, b1 = _cpu.forward(mode, np.ascontiguousarray(x[r:r + 1]), 0.5, 1.0)
                np.testing.assert_array_equal(out[r], o1[0])
                np.testing.assert_array_equal(perm[r], p1[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_values_equals_forward(dtype, policy):
    """The no-partition forward (perm and blocks in scratch memory, for calls nothing will
    differentiate) gives forward's output bit for bit: rows of every kernel, a NaN row, and a
    long row split across threads."""
    rng = np.random.default_rng(3)
    shapes = [(3, 1), (5, 10), (4, 100), (2, 300), (3, 5000),
              (1, _cpu._debug("sort_limits")["split_row_min"] + 1)]
    for threads in (1, 2):
        _cpu.set_thread_policy(threads, 0, 0)
        for rows, n in shapes:
            x = rng.normal(size=(rows, n)).astype(dtype)
            x[-1, n // 2] = np.nan
            for mode in range(4):
                np.testing.assert_array_equal(_cpu.forward_values(mode, x, 0.3, -1.0),
                                              _cpu.forward(mode, x, 0.3, -1.0)[0])


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_short_row_kernels_follow_the_cpu():
    """The short-row kernels are picked at load time from the CPU (GCC on x86-64 Linux): a
    failed dispatch would keep every result right but silently lose the faster kernels."""
    flags = _cpu_flags()
    if flags is None or platform.machine() != "x86_64":
        pytest.skip("needs /proc/cpuinfo on x86-64")

    def limits():
        found = _cpu._debug("sort_limits")
        return found["counting_max"], found["network_max"]

    mine = limits()
    if not _cpu._debug("cpu_dispatch"):  # another compiler or platform: the portable kernels
        assert mine == ((32, 48), 0)
    elif {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        assert mine == ((16, 16), 1024)
    elif "avx2" in flags:
        assert mine == ((24, 24), 128)
    else:
        assert mine == ((32, 48), 0)
    try:  # the kernels of a CPU without AVX-512, as the tests with the kernels fixture use them
        _cpu._debug("use_avx512", False)
        avx2 = _cpu._debug("cpu_dispatch") and "avx2" in flags
        assert limits() == (((24, 24), 128) if avx2 else ((32, 48), 0))
    finally:
        _cpu._debug("use_avx512", True)
    assert limits() == mine


# ----------------------------------------------------------------------------- numerics

def _exp_test_points():
    rng = np.random.default_rng(0)
    edges = [-746.0, -745.2, -745.13, -744.44, -708.4, -708.39, -1e-300, -0.0, 0.0, 5e-324,
             -1e-10, 1e-10, 0.34657359, -0.34657359, 709.78, 709.79, 1e6, -1e6, -np.inf, np.inf]
    t = np.concatenate([rng.uniform(-745, 0, 200_000), rng.uniform(-1, 1, 50_000),
                        rng.uniform(0, 709, 20_000), edges])
    return t[None, :]


def test_vector_exp_is_within_one_ulp_of_libm(kernels):
    """The exp that weights soft_rank/kl blocks (softrank/csrc/vector_exp.h): within 1 ulp of
    glibc's exp (math.exp) everywhere, 0 and inf past the double range, NaN for NaN; libm's
    own where the CPU has neither AVX-512 nor AVX2 with FMA."""
    import math
    t = _exp_test_points()
    got = _cpu._debug("exp_of", t)[0]
    expected = np.array([math.exp(v) if v <= 709.78 else math.inf for v in t[0]])
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf (equal: 0 ulp)
        ulps = np.where(got == expected, 0.0,
                        np.abs(got - expected) / np.spacing(np.abs(expected)))
    assert ulps.max() <= 1.0
    if _cpu._debug("vector_exp") == "libm":
        np.testing.assert_array_equal(got, expected)
    assert np.isnan(_cpu._debug("exp_of", np.array([[np.nan, 0.0]]))[0, 0])


def test_vector_exp_kernels_give_the_same_bits():
    """The AVX2 exp (no scalef: 2^k from exponent bits, in two halves) is the AVX-512 one lane
    for lane, subnormal, overflowing and NaN results included, and so are the sums and
    corrected weights built on it."""
    t = _exp_test_points()
    results = {}
    try:
        for allowed in (True, False):
            _cpu._debug("use_avx512", allowed)
            results[_cpu._debug("vector_exp")] = _cpu._debug("exp_of", t)
    finally:
        _cpu._debug("use_avx512", True)
    if set(results) != {"avx512", "avx2"}:
        pytest.skip(f"needs a CPU with AVX-512 (this one: {sorted(results)})")
    np.testing.assert_array_equal(results["avx512"], results["avx2"])
    x = np.random.default_rng(5).normal(size=(3, 999)) * 5
    x[1] = np.linspace(0, 129, 999)  # pools across stretches: head-relative exp sums too
    outs = []
    try:
        for allowed in (True, False):
            _cpu._debug("use_avx512", allowed)
            outs.append(_cpu.forward_values(RANK_KL, x, 0.7, 1.0))
    finally:
        _cpu._debug("use_avx512", True)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 100.0])
def test_kernel_sets_agree(dtype, eps):
    """This CPU's kernels and those of a CPU without AVX-512 give the same permutation and
    blocks, and outputs within 4 ulp, over the short-row and radix lengths. Only soft_rank/kl's
    exps differ (by up to 1 ulp each): its outputs are exp * (R / sum of exps), three roundings
    apart at most, and the sums add the same terms in the same order."""
    for n in (7, 16, 17, 24, 25, 100, 128, 129, 256, 257, 321, 512, 513, 641, 1024, 1025, 3000):
        x = np.random.default_rng(n).normal(size=(4, n)).astype(dtype)
        x[1] = np.round(x[1])  # ties
        for mode in range(4):
            results = []
            try:
                for allowed in (True, False):
                    _cpu._debug("use_avx512", allowed)
                    results.append(_cpu.forward(mode, x, eps, 1.0))
            finally:
                _cpu._debug("use_avx512", True)
            (out, perm, blocks), (out2, perm2, blocks2) = results
            np.testing.assert_array_equal(perm, perm2)
            np.testing.assert_array_equal(blocks, blocks2)
            np.testing.assert_array_max_ulp(out, out2, maxulp=4)


def _epoch_starts(s, eps, span=64.0):
    """Where soft_rank/kl's PAV starts a new stretch of weights (softrank/csrc/pav.h,
    softrank_epoch_end): the first position whose (s_j - s_first) / eps is below -span."""
    starts, first = [], 0
    for j in range(1, len(s)):
        if (s[j] - s[first]) / eps < -span:
            starts.append(j)
            first = j
    return starts


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("top, n, eps", [(129.0, 3000, 1.0), (193.0, 6000, 1.0),
                                         (1.0, 300, 1 / 129)])
def test_rank_kl_pools_blocks_across_weight_epochs(kernels, top, n, eps, dtype):
    """soft_rank/kl's PAV weighs the sorted row a stretch of 64 * eps at a time and converts
    blocks between stretches where they meet. These evenly spaced rows pool a block across a
    stretch boundary (checked below from the returned blocks); the outputs still match the
    reference to 1e-12 (float64), or to the float32 rounding of the outputs (float32 rows,
    whose values the solver keeps in the output array and whose ranks it stages before
    scattering them, softrank/csrc/forward.h)."""
    x = np.linspace(0.0, top, n).astype(dtype)
    for call in (_cpu.forward, _cpu.forward_values):
        result = call(RANK_KL, x[None, :], eps, 1.0)
        out = result[0] if isinstance(result, tuple) else result
        if call is _cpu.forward:
            s = x[result[1][0]]  # sorted decreasingly
            straddled = [b for b in _epoch_starts(s, eps) if result[2][0, b] < b]
            assert straddled, "no block crosses a stretch boundary: the test lost its point"
        np.testing.assert_allclose(out[0], ref.soft_rank(x.astype(np.float64), "kl", eps),
                                   rtol=1e-12 if dtype == np.float64 else 2.0**-23, atol=0)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("eps", [0.01, 0.1, 1.0, 10.0])
def test_float64_ranks_are_within_a_few_ulp_of_a_40_digit_reference(kernels, reg, eps):
    """Every float64 soft rank within 4 ulp of the reference computed with 40 digits."""
    rng = np.random.default_rng(7)
    for scale in (1.0, 10.0, 100.0):
        x = rng.normal(size=200) * scale
        expected = np.array(ref.soft_rank(x, reg, eps, dps=40), dtype=np.float64)
        np.testing.assert_array_max_ulp(_soft_rank(x, reg, eps), expected, maxulp=4)


@pytest.mark.parametrize("offset", [20.0, 40.0, 63.0])
def test_rank_kl_weights_far_from_their_reference_keep_their_precision(kernels, offset):
    """soft_rank/kl weighs a block against the first value of its stretch, here an outlier
    offset * eps above a cluster that pools: exp((s - s_ref) / eps) has an argument near
    -offset whose rounding would cost ~offset ulp. softrank_exp_of_steps puts the rounding
    back; the cluster's ranks stay within 4 ulp of the 40-digit reference."""
    rng = np.random.default_rng(11)
    x = np.concatenate([[offset + 0.1], rng.normal(size=300) * 0.3]) * 0.7
    eps = 0.7
    expected = np.array(ref.soft_rank(x, "kl", eps, dps=40), dtype=np.float64)
    np.testing.assert_array_max_ulp(_soft_rank(x, "kl", eps), expected, maxulp=4)


@pytest.mark.parametrize("mode", [RANK_L2, SORT_L2])
def test_values_near_the_float64_limit_are_solved_scaled(mode):
    """l2 rows beyond 2**1000 are solved scaled by 2**-64 (exact): finite outputs equal to the
    scaled problem's (rank: the same ranks; sort: 2**64 times the sort)."""
    x = np.random.default_rng(2).normal(size=(2, 500)) * 1e307
    k = 2.0**64
    out = _cpu.forward(mode, x, 1e280, 1.0)[0]
    assert np.all(np.isfinite(out))
    if mode == RANK_L2:
        np.testing.assert_array_equal(out, _cpu.forward(mode, x / k, 1e280 / k, 1.0)[0])
    else:
        np.testing.assert_array_equal(out, k * _cpu.forward(mode, x / k, 1e280 * k, 1.0)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_kl_singletons_have_exactly_zero_gradient(dtype):
    """A soft_rank/kl block of one element outputs the constant n - a: its gradient is exactly
    0 (the general block formula would leave rounding noise). The two elements pooled at the
    end keep a nonzero gradient."""
    n = 1000
    x = np.arange(n, dtype=dtype)[None, ::-1].copy()
    x[0, n - 2] = x[0, n - 1] + 1e-3  # the two smallest values pool at this strength
    out, perm, blocks = _cpu.forward(RANK_KL, x, 0.1, 1.0)
    assert np.array_equal(blocks[0, :-1], np.arange(n - 1)) and blocks[0, -1] == n - 2
    g = np.random.default_rng(0).normal(size=(1, n)).astype(dtype)
    grad = _cpu.backward(RANK_KL, g, perm, blocks, out, 0.1, 1.0)
    assert np.all(grad[0, perm[0, :-2]] == 0.0)
    assert np.all(grad[0, perm[0, -2:]] != 0.0)


def test_sort_kl_block_terms_follow_the_strength(policy):
    """soft_sort/kl keeps, per thread, a block-size term computed for the last strength it saw
    (softrank_geometric_memo_for). Alternating strengths in one process, on rows that pool
    blocks of under and over 64 elements, on one thread and on several, must give the
    reference's values every time: a term left over from another strength would shift whole
    blocks."""
    _cpu.set_thread_policy(2, 768, 2048)
    rng = np.random.default_rng(7)
    short_rows = rng.normal(size=(64, 50)) * 4.0  # 3200 elements: rows solved in parallel
    long_row = np.linspace(0.0, 40.0, 300)[None, :]  # evenly spaced: pools long blocks
    sizes = set()
    for eps in [0.3, 3.0, 0.3, 30.0, 3.0, 0.3]:
        for x in (short_rows, long_row):
            rows, n = x.shape
            out, perm, blocks = _cpu.forward(SORT_KL, x, eps, -1.0)
            for r in range(rows):
                starts = np.flatnonzero(blocks[r] == np.arange(n))
                sizes.update(np.diff(np.append(starts, n)).tolist())
            np.testing.assert_allclose(out, ref.soft_sort(x, "kl", eps), rtol=1e-12, atol=1e-12)
    assert any(1 < c < 64 for c in sizes) and max(sizes) >= 64, sorted(sizes)


# ----------------------------------------------------------------------------- project modes


def test_project_modes_check_their_target_and_per_row_strengths():
    x = _rows(3, 5)
    target = np.arange(5.0, 0.0, -1.0).reshape(1, 5)
    for bad, message in [
        (None, "target is required for the project modes"),
        (target.astype(np.float32), "target must be float64"),
        (np.ones((2, 5)), r"target must have shape \(1, 5\) or \(3, 5\)"),
        (np.ones((1, 4)), "target must have shape"),
        (np.asfortranarray(np.ones((3, 5))), "target must be a C-contiguous"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            _cpu.forward(4, x, 1.0, 1.0, bad)
    with pytest.raises(ValueError, match="target must be None for the rank and sort modes"):
        _cpu.forward(0, x, 1.0, 1.0, target)
    for bad, message in [
        (np.array([1.0, 2.0]), "eps must have shape"),
        (np.array([1.0, -2.0, 1.0]), "eps must be finite and > 0 in every row, got -2.0 in row 1"),
        (np.array([1.0, np.nan, 1.0]), "eps must be finite and > 0 in every row"),
        (np.ones((3, 1)), "eps must be a float or a 1-D"),
        (np.ones(3, np.float32), "eps must be float64"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            _cpu.forward(0, x, bad, 1.0)
        with pytest.raises((ValueError, TypeError), match=message):
            out, perm, blocks = _cpu.forward(0, x, 1.0, 1.0)
            _cpu.backward(0, x, perm, blocks, None, bad, 1.0)


@pytest.mark.parametrize("mode", range(6))
def test_per_row_strengths_equal_one_call_per_row(mode):
    x = _rows(4, 300)
    eps = np.array([0.01, 0.3, 1.0, 50.0])
    target = np.sort(np.random.default_rng(3).uniform(0.5, 2, 300))[::-1].copy()[None]
    target = target if mode >= 4 else None
    out, perm, blocks = _cpu.forward(mode, x, eps, 1.0, target)
    g = _rows(4, 300, seed=5)
    aux = out if mode in (1, 5) else (x if mode == 3 else None)
    grad = _cpu.backward(mode, g, perm, blocks, aux, eps, 1.0)
    for r in range(4):
        o, p, b = _cpu.forward(mode, x[r:r + 1], float(eps[r]), 1.0, target)
        np.testing.assert_array_equal(out[r:r + 1], o)
        np.testing.assert_array_equal(blocks[r:r + 1], b)
        a = o if mode in (1, 5) else (x[r:r + 1] if mode == 3 else None)
        np.testing.assert_array_equal(grad[r:r + 1],
                                      _cpu.backward(mode, g[r:r + 1], p, b, a, float(eps[r]), 1.0))
