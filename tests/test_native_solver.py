"""The compiled solver's private entry points, its debug bounds checks and its workspaces,
and the eager torch route that reads tensors by address."""

import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

import softrank
from softrank import _cpu, _cpu_backend
from softrank import _torch as softrank_torch
import _reference as ref
from _helpers import OPS, REGS

FUNCS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}


@pytest.fixture(params=[True, False], ids=["cpu-kernels", "no-avx512-kernels"])
def kernels(request):
    """Runs a test with this CPU's kernels and with those of a CPU without AVX-512 (the AVX2
    sorting network and counting kernels, libm's exp instead of the vector one)."""
    _cpu.use_avx512(request.param)
    yield request.param
    _cpu.use_avx512(True)


def _arrays(rows, n, dtype=np.float64):
    x = np.random.default_rng(0).normal(size=(rows, n)).astype(dtype)
    return x, np.empty_like(x), np.empty((rows, n), np.int32), np.empty((rows, n), np.int32)


@pytest.mark.parametrize("bad, message", [
    (lambda x, o, p, b: (x.astype(np.float16), o, p, b), "x must be float32 or float64"),
    (lambda x, o, p, b: (x[:, ::2], o, p, b), "x must be a C-contiguous"),
    (lambda x, o, p, b: (x, o[:1], p, b), "out must be a C-contiguous writable (3, 8)"),
    (lambda x, o, p, b: (x, o.astype(np.float32), p, b), "out must be"),
    (lambda x, o, p, b: (x, o, p.astype(np.int64), b), "perm must be"),
    (lambda x, o, p, b: (x, o, p, b.ravel()), "blocks must be"),
    (lambda x, o, p, b: (x.ravel(), o, p, b), "x must be 2-D"),
])
def test_forward_rejects_wrong_arrays(bad, message):
    x, out, perm, blocks = bad(*_arrays(3, 8))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _cpu.forward(0, x, out, perm, blocks, 1.0, 1.0, 1)


def test_forward_rejects_read_only_output_and_bad_mode():
    x, out, perm, blocks = _arrays(2, 5)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _cpu.forward(0, x, out, perm, blocks, 1.0, 1.0, 1)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="mode must be 0..3"):
        _cpu.forward(7, x, out, perm, blocks, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="mode must be 0..3"):
        _cpu.forward_at(-1, x.ctypes.data, 2, 5, False, 1.0, 1.0, 1)


def test_backward_checks_its_arrays():
    x, out, perm, blocks = _arrays(2, 5)
    _cpu.forward(0, x, out, perm, blocks, 1.0, 1.0, 1)
    grad = np.empty_like(x)
    with pytest.raises(ValueError, match="aux must be"):
        _cpu.backward(0, x, perm, blocks, x[:1], 1.0, 1.0, grad, 1)
    with pytest.raises(ValueError, match="perm must be 2-D"):
        _cpu.backward_at(0, x.ctypes.data, perm.ravel(), blocks, 0, False, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="aux_address is required"):
        _cpu.backward_at(1, x.ctypes.data, perm, blocks, 0, False, 1.0, 1.0, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", range(4))
def test_address_entry_points_equal_array_entry_points(mode, dtype):
    x, out, perm, blocks = _arrays(5, 40, dtype)
    _cpu.forward(mode, x, out, perm, blocks, 0.5, -1.0, 1)
    out2, perm2, blocks2 = _cpu.forward_at(mode, x.ctypes.data, 5, 40, dtype == np.float32,
                                           0.5, -1.0, 2)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(perm2, perm)
    np.testing.assert_array_equal(blocks2, blocks)
    g = np.random.default_rng(1).normal(size=x.shape).astype(dtype)
    aux = out if mode == 1 else x
    grad = np.empty_like(x)
    _cpu.backward(mode, g, perm, blocks, aux, 0.5, -1.0, grad, 1)
    grad2 = _cpu.backward_at(mode, g.ctypes.data, perm, blocks, aux.ctypes.data,
                             dtype == np.float32, 0.5, -1.0, 2)
    np.testing.assert_array_equal(grad2, grad)


def test_workspace_reuse_across_sizes():
    """Calls alternate between the cached per-thread workspace and per-call buffers (> 8 MiB);
    every result must equal a fresh solve in another process-independent way: the hard ranks."""
    rng = np.random.default_rng(3)
    for n in (5, 3000, 5, 1_200_000, 30, 200_000, 7):
        x = rng.permutation(n).astype(np.float64)
        r = softrank.soft_rank(x[None, :], "l2", 1e-6)
        np.testing.assert_array_equal(r[0], x + 1)


def test_bounds_checks_abort_in_debug_builds():
    assert _cpu._index_span_for_test(3) == 3.0
    if not _cpu.bounds_checked():
        pytest.skip("release build: span indices are not checked (SOFTRANK_CYTHON_DEBUG=1 is)")
    result = subprocess.run(
        [sys.executable, "-c", "from softrank import _cpu; _cpu._index_span_for_test(4)"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "index 4 out of bounds for a span of 4" in result.stderr


def _eager_route(route, x, op, reg, eps, sign):
    if route == "cpu":  # softrank/_torch_cpu.py: solver mode number, rows by address
        spec = (_cpu_backend.MODES[op, reg], x.dtype == torch.float32, eps, sign, *x.shape, None)
        return softrank_torch._torch_cpu.CpuSoftOp.apply(x, spec)
    return softrank_torch.EagerSoftOp.apply(x, (op, reg, eps, sign))


def _hessian_vector_product(grad, leaf, u):
    # An l2 gradient does not depend on x (the partition is locally constant): no graph.
    if not grad.requires_grad:
        return torch.zeros_like(leaf)
    return torch.autograd.grad(grad, leaf, u)[0]


@pytest.mark.parametrize("route", ["cpu", "eager"])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_routes_equal_transform_route(route, op, reg, dtype):
    """CpuSoftOp and EagerSoftOp (partition on ctx) give SoftOpFunction's numbers, first order
    (native backward) and second order (create_graph: the differentiable formulas)."""
    x = torch.randn(4, 33, dtype=dtype)
    g = torch.randn(4, 33, dtype=dtype)
    u = torch.randn(4, 33, dtype=dtype)
    leaf = x.clone().requires_grad_()
    out = _eager_route(route, leaf, op, reg, 0.7, -1)
    (grad,) = torch.autograd.grad(out, leaf, g, create_graph=True)
    hvp = _hessian_vector_product(grad, leaf, u)
    (grad_native,) = torch.autograd.grad(_eager_route(route, leaf, op, reg, 0.7, -1), leaf, g)
    leaf2 = x.clone().requires_grad_()
    out2 = softrank_torch.SoftOpFunction.apply(leaf2, op, reg, 0.7, -1)[0]
    (grad2,) = torch.autograd.grad(out2, leaf2, g, create_graph=True)
    hvp2 = _hessian_vector_product(grad2, leaf2, u)
    out2 = softrank_torch.SoftOpFunction.apply(leaf2, op, reg, 0.7, -1)[0]
    (grad2_native,) = torch.autograd.grad(out2, leaf2, g)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    torch.testing.assert_close(grad_native, grad2_native, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad2, rtol=0, atol=0)
    torch.testing.assert_close(hvp, hvp2, rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
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
    """The cotangent reaches the native backward by address: expanded (sum().backward()) and
    transposed cotangents must be made contiguous first."""
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


def test_threads_for_is_bounded():
    most = _cpu_backend.MAX_THREADS
    minimum = _cpu_backend.PARALLEL_MIN_ELEMENTS

    def threads_for(rows, n, backward=False, op="rank", regularization="l2"):
        return _cpu_backend.threads_for(op, regularization, rows, n, backward)

    assert threads_for(1, 10) == 1  # too little work for a parallel region
    assert threads_for(1, _cpu_backend.SPLIT_ROW_MIN - 1) == 1  # one short row: one thread
    assert threads_for(1, _cpu_backend.SPLIT_ROW_MIN) == most  # one long row: split
    assert 1 <= threads_for(1024, 1000) <= max(1, most)
    assert threads_for(2, 1000) == min(2, most)
    assert threads_for(1000, 1, backward=True) == 1  # the backward's threshold is higher
    assert threads_for(1000, 10, backward=True) == most
    # a rank/kl forward (twice the work per element) goes parallel from half the elements
    for op, regularization in _cpu_backend.MODES:
        assert threads_for(minimum, 1, False, op, regularization) == most
        if (op, regularization) != ("rank", "kl"):
            assert threads_for(minimum - 1, 1, False, op, regularization) == 1
    assert threads_for(minimum // 2, 1, False, "rank", "kl") == most
    assert threads_for(minimum // 2, 1, False, "sort", "kl") == 1
    assert threads_for(minimum // 2, 1, True, "rank", "kl") == 1  # not the backward


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 10, 15, 16, 17, "max", "max+1", 31, 32, 33, 47, 48,
                               49, 63, 64, 65, 95, 96, 97, 111, 112, 113, 119, 120, 121, 127, 128,
                               129, 255, 256, 257, 300, 320, 321, 511, 512, 513, 640, 641, 1000,
                               "net", "net+1", "wide-1", "wide", 5000])
def test_permutation_is_the_stable_descending_argsort(n, dtype, kernels):
    """Around the counting kernels (one-register AVX-512 rows up to 16, the general loop above),
    the sorting network's register counts (16 to 1024 words), its gap (rows of 513-640 are
    radix sorted where the CPU has AVX-512) and limit
    (_cpu.network_max(), by CPU), the counting/radix crossovers (_cpu.counting_max(), by CPU)
    and the switch from 8-bit to 11-bit radix digits (_cpu.radix_wide_min()): perm is numpy's
    stable argsort of -sign*x, ties (including -0.0 == +0.0) in index order."""
    if n in ("max", "max+1"):
        n = _cpu.counting_max()[dtype == np.float64] + (n == "max+1")
    elif n in ("net", "net+1"):
        n = max(_cpu.network_max(), 1) + (n == "net+1")
    elif n in ("wide-1", "wide"):
        n = _cpu.radix_wide_min() - (n == "wide-1")
    rng = np.random.default_rng(n)
    x = rng.integers(-4, 5, size=(6, n)).astype(dtype)  # many ties
    x[0] = rng.normal(size=n)
    x[1, ::3] = -0.0
    # float64 values that agree in their top 32 key bits: the radix sort leaves them in one run
    # that is then sorted by the full key
    x[2] = 1.0 + rng.integers(0, 50, size=n) * 2.0**-40
    for sign in (1.0, -1.0):
        out, perm, blocks = _cpu.forward_at(0, x.ctypes.data, 6, n, dtype == np.float32, 1.0,
                                            sign, 1)
        expected = np.argsort(-sign * x.astype(np.float64) + 0.0, axis=1, kind="stable")
        if dtype == np.float32:  # 1 + k 2**-40 rounds to 1 in float32: all ties
            expected[2] = np.arange(n)
        np.testing.assert_array_equal(perm, expected)


def test_float64_values_sharing_their_high_bits_sort_fast():
    """One run of 400,000 equal high halves: sorted by std::sort (n log n), not quadratically."""
    x = 1.0 + np.random.default_rng(0).permutation(400_000) * 2.0**-40
    out, perm, blocks = _cpu.forward_at(0, x.ctypes.data, 1, x.size, False, 1.0, 1.0, 1)
    np.testing.assert_array_equal(perm[0], np.argsort(-x, kind="stable"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [7, 100, 600, "wide"])
def test_nonfinite_rows_on_every_sort_path(n, dtype, kernels):
    """Counting, network, 8-bit and 11-bit radix rows: a NaN or +-inf anywhere makes its row NaN (output
    and gradient) and leaves the other rows exactly as when solved alone."""
    if n == "wide":
        n = _cpu.radix_wide_min() + 5
    rng = np.random.default_rng(n)
    x = rng.normal(size=(5, n)).astype(dtype)
    x[1, n - 1] = np.nan
    x[2, 0] = np.inf
    x[3, n // 2] = -np.inf
    good = [0, 4]
    for mode in range(4):
        out, perm, blocks = _cpu.forward_at(mode, x.ctypes.data, 5, n, dtype == np.float32,
                                            0.5, 1.0, 2)
        g = rng.normal(size=x.shape).astype(dtype)
        aux = out if mode == 1 else x
        grad = _cpu.backward_at(mode, g.ctypes.data, perm, blocks, aux.ctypes.data,
                                dtype == np.float32, 0.5, 1.0, 2)
        assert np.all(np.isnan(out[1:4])) and np.all(np.isnan(grad[1:4]))
        for r in good:
            row = np.ascontiguousarray(x[r:r + 1])
            o1, p1, b1 = _cpu.forward_at(mode, row.ctypes.data, 1, n, dtype == np.float32, 0.5,
                                         1.0, 1)
            np.testing.assert_array_equal(out[r], o1[0])
            np.testing.assert_array_equal(perm[r], p1[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_values_at_equals_forward_at(dtype):
    """The no-partition forward (perm and blocks in scratch memory, for calls nothing will
    differentiate) gives forward_at's output bit for bit: rows of every kernel, a NaN row, and
    a long row split across threads."""
    rng = np.random.default_rng(3)
    shapes = [(3, 1), (5, 10), (4, 100), (2, 300), (3, 5000), (1, _cpu.split_row_min() + 1)]
    for rows, n in shapes:
        x = rng.normal(size=(rows, n)).astype(dtype)
        x[-1, n // 2] = np.nan
        for mode in range(4):
            for threads in (1, 2, 0):
                expected = _cpu.forward_at(mode, x.ctypes.data, rows, n, dtype == np.float32,
                                           0.3, -1.0, threads)[0]
                out = _cpu.forward_values_at(mode, x.ctypes.data, rows, n,
                                             dtype == np.float32, 0.3, -1.0, threads)
                np.testing.assert_array_equal(out, expected)
    empty = _cpu.forward_values_at(0, 0, 0, 5, True, 1.0, 1.0, 0)
    assert empty.shape == (0, 5) and empty.dtype == np.float32


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
    """The counting kernels and the sorting network are picked at load time from the CPU (GCC
    on x86-64 Linux): a failed dispatch would keep every result right but silently lose the
    faster kernels."""
    flags = _cpu_flags()
    if flags is None or platform.machine() != "x86_64":
        pytest.skip("needs /proc/cpuinfo on x86-64")
    limits = _cpu.counting_max(), _cpu.network_max()
    if not _cpu.cpu_dispatch():  # another compiler or platform: the portable kernels only
        assert limits == ((32, 48), 0)
    elif {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        assert limits == ((16, 16), 1024)
    elif "avx2" in flags:
        assert limits == ((24, 24), 128)
    else:
        assert limits == ((32, 48), 0)
    try:  # the kernels of a CPU without AVX-512, as the tests with the kernels fixture use them
        _cpu.use_avx512(False)
        expected = ((24, 24), 128) if _cpu.cpu_dispatch() and "avx2" in flags else ((32, 48), 0)
        assert (_cpu.counting_max(), _cpu.network_max()) == expected
    finally:
        _cpu.use_avx512(True)
    assert (_cpu.counting_max(), _cpu.network_max()) == limits


def _exp_test_points():
    rng = np.random.default_rng(0)
    edges = [-746.0, -745.2, -745.13, -744.44, -708.4, -708.39, -1e-300, -0.0, 0.0, 5e-324,
             -1e-10, 1e-10, 0.34657359, -0.34657359, 709.78, 709.79, 1e6, -1e6, -np.inf, np.inf]
    t = np.concatenate([rng.uniform(-745, 0, 200_000), rng.uniform(-1, 1, 50_000),
                        rng.uniform(0, 709, 20_000), edges])
    return t[None, :]


def test_vector_exp_is_within_one_ulp_of_libm(kernels):
    """The exp that weights soft_rank/kl blocks (softrank/_vector_exp.h): within 1 ulp of
    glibc's exp (math.exp) everywhere, 0 and inf past the double range, NaN for NaN; libm's
    own where the CPU has neither AVX-512 nor AVX2 with FMA."""
    import math
    t = _exp_test_points()
    got = _cpu.exp_of(t)[0]
    expected = np.array([math.exp(v) if v <= 709.78 else math.inf for v in t[0]])
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf (equal: 0 ulp)
        ulps = np.where(got == expected, 0.0,
                        np.abs(got - expected) / np.spacing(np.abs(expected)))
    assert ulps.max() <= 1.0
    if _cpu.vector_exp() == "libm":
        np.testing.assert_array_equal(got, expected)
    assert np.isnan(_cpu.exp_of(np.array([[np.nan, 0.0]]))[0, 0])


def test_vector_exp_kernels_give_the_same_bits():
    """The AVX2 exp (no scalef: 2^k from exponent bits, in two halves) is the AVX-512 one lane
    for lane, subnormal, overflowing and NaN results included, and so are the sums and
    corrected weights built on it."""
    t = _exp_test_points()
    results = {}
    try:
        for allowed in (True, False):
            _cpu.use_avx512(allowed)
            results[_cpu.vector_exp()] = _cpu.exp_of(t)
    finally:
        _cpu.use_avx512(True)
    if set(results) != {"avx512", "avx2"}:
        pytest.skip(f"needs a CPU with AVX-512 (this one: {sorted(results)})")
    np.testing.assert_array_equal(results["avx512"], results["avx2"])
    x = np.random.default_rng(5).normal(size=(3, 999)) * 5
    x[1] = np.linspace(0, 129, 999)  # pools across stretches: head-relative exp sums too
    outs = []
    try:
        for allowed in (True, False):
            _cpu.use_avx512(allowed)
            outs.append(_cpu.forward_values_at(1, x.ctypes.data, 3, 999, False, 0.7, 1.0, 1))
    finally:
        _cpu.use_avx512(True)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 100.0])
def test_kernel_sets_agree(dtype, eps):
    """This CPU's kernels and those of a CPU without AVX-512 give the same permutation and
    blocks, and outputs within 4 ulp, over the counting, network and radix lengths. Only
    soft_rank/kl's exps differ (by up to 1 ulp each): its outputs are exp * (R / sum of exps),
    three roundings apart at most, and the sums add the same terms in the same order."""
    for n in (7, 16, 17, 24, 25, 100, 128, 129, 256, 257, 321, 512, 513, 641, 1024, 1025, 3000):
        x = np.random.default_rng(n).normal(size=(4, n)).astype(dtype)
        x[1] = np.round(x[1])  # ties
        for mode in range(4):
            try:
                results = []
                for allowed in (True, False):
                    _cpu.use_avx512(allowed)
                    results.append(_cpu.forward_at(mode, x.ctypes.data, 4, n,
                                                   dtype == np.float32, eps, 1.0, 1))
            finally:
                _cpu.use_avx512(True)
            (out, perm, blocks), (out2, perm2, blocks2) = results
            np.testing.assert_array_equal(perm, perm2)
            np.testing.assert_array_equal(blocks, blocks2)
            np.testing.assert_array_max_ulp(out, out2, maxulp=4)


def _epoch_starts(s, eps, span=64.0):
    """Where soft_rank/kl's PAV starts a new stretch of weights (softrank/_cpu.pyx,
    _epoch_end): the first position whose (s_j - s_first) / eps is below -span."""
    starts, first = [], 0
    for j in range(1, len(s)):
        if (s[j] - s[first]) / eps < -span:
            starts.append(j)
            first = j
    return starts


@pytest.mark.parametrize("top, n, eps", [(129.0, 3000, 1.0), (193.0, 6000, 1.0),
                                         (1.0, 300, 1 / 129)])
def test_rank_kl_pools_blocks_across_weight_epochs(kernels, top, n, eps):
    """soft_rank/kl's PAV weighs the sorted row a stretch of 64 * eps at a time and converts
    blocks between stretches where they meet. These evenly spaced rows pool a block across a
    stretch boundary (checked below from the returned blocks); the outputs still match the
    reference to 1e-12."""
    x = np.linspace(0.0, top, n)
    out, perm, blocks = _cpu.forward_at(1, x.ctypes.data, 1, n, False, eps, 1.0, 1)
    s = x[perm[0]]  # sorted decreasingly
    straddled = [b for b in _epoch_starts(s, eps) if blocks[0, b] < b]
    assert straddled, "no block crosses a stretch boundary: the test lost its point"
    np.testing.assert_allclose(out[0], ref.soft_rank(x, "kl", eps), rtol=1e-12, atol=0)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("eps", [0.01, 0.1, 1.0, 10.0])
def test_float64_ranks_are_within_a_few_ulp_of_a_40_digit_reference(kernels, reg, eps):
    """Every float64 soft rank within 4 ulp of the reference computed with 40 digits
    (measured over 24 rows per case: at most 3)."""
    rng = np.random.default_rng(7)
    for scale in (1.0, 10.0, 100.0):
        x = rng.normal(size=200) * scale
        expected = np.array(ref.soft_rank(x, reg, eps, dps=40), dtype=np.float64)
        got = softrank.soft_rank(x, reg, eps)
        np.testing.assert_array_max_ulp(got, expected, maxulp=4)


@pytest.mark.parametrize("offset", [20.0, 40.0, 63.0])
def test_rank_kl_weights_far_from_their_reference_keep_their_precision(kernels, offset):
    """soft_rank/kl weighs a block against the first value of its stretch, here an outlier
    offset * eps above a cluster that pools: exp((s - s_ref) / eps) has an argument near
    -offset whose rounding would cost ~offset ulp. softrank_exp_of_steps puts the rounding back
    (without it: 21-71 ulp here); the cluster's ranks stay within 4 ulp of the 40-digit
    reference."""
    rng = np.random.default_rng(11)
    x = np.concatenate([[offset + 0.1], rng.normal(size=300) * 0.3]) * 0.7
    eps = 0.7
    got = softrank.soft_rank(x, "kl", eps)
    expected = np.array(ref.soft_rank(x, "kl", eps, dps=40), dtype=np.float64)
    np.testing.assert_array_max_ulp(got, expected, maxulp=4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_kl_singletons_have_exactly_zero_gradient(dtype):
    """A soft_rank/kl block of one element outputs the constant n - a: its gradient is exactly
    0. (The general block formula, g - (g * rank) / rank, left up to 4e-12 on 101 of these
    1000 float64 singletons.) The two elements pooled at the end keep a nonzero gradient."""
    n = 1000
    x = np.arange(n, dtype=dtype)[None, ::-1].copy()
    x[0, n - 2] = x[0, n - 1] + 1e-3  # the two smallest values pool at this strength
    out, perm, blocks = _cpu.forward_at(1, x.ctypes.data, 1, n, dtype == np.float32, 0.1, 1.0, 1)
    assert np.array_equal(blocks[0, :-1], np.arange(n - 1)) and blocks[0, -1] == n - 2
    g = np.random.default_rng(0).normal(size=(1, n)).astype(dtype)
    grad = np.empty_like(g)
    _cpu.backward(1, g, perm, blocks, out, 0.1, 1.0, grad, 1)
    assert np.all(grad[0, perm[0, :-2]] == 0.0)
    assert np.all(grad[0, perm[0, -2:]] != 0.0)


def test_sort_kl_block_terms_follow_the_strength():
    """soft_sort/kl keeps, per thread, a block-size term computed for the last strength it saw
    (softrank_geometric_memo_for). Alternating strengths in one process, on rows that pool blocks
    of under and over 64 elements, on one thread and on several, must give the reference's
    values every time: a term left over from another strength would shift whole blocks."""
    rng = np.random.default_rng(7)
    short_rows = rng.normal(size=(64, 50)) * 4.0  # 3200 elements: rows solved in parallel
    long_row = np.linspace(0.0, 40.0, 300)[None, :]  # evenly spaced: pools long blocks
    sizes = set()
    for eps in [0.3, 3.0, 0.3, 30.0, 3.0, 0.3]:
        for x in (short_rows, long_row):
            rows, n = x.shape
            out, perm, blocks = _cpu.forward_at(3, x.ctypes.data, rows, n, False, eps, -1.0, 0)
            for r in range(rows):
                starts = np.flatnonzero(blocks[r] == np.arange(n))
                sizes.update(np.diff(np.append(starts, n)).tolist())
            np.testing.assert_allclose(out, ref.soft_sort(x, "kl", eps), rtol=1e-12, atol=1e-12)
    assert any(1 < c < 64 for c in sizes) and max(sizes) >= 64, sorted(sizes)
