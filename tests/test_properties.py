"""Properties of soft_rank / soft_sort that hold whatever the implementation: limits, ties,
sums, monotonicity, descending and dim identities, memory layouts, dtypes, empty and 1-D
inputs, NaN/inf rows, no mutation of the input."""

import contextlib

import numpy as np
import pytest
import scipy.stats
import torch

import softrank
from _helpers import OPS, REGS

FUNCS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}
VJPS = {"rank": softrank.soft_rank_vjp, "sort": softrank.soft_sort_vjp}


def _separated(rng, rows, n):
    """Rows of well separated values (gaps >= 0.4)."""
    return np.stack([rng.permutation(n) + rng.uniform(-0.3, 0.3, size=n) for _ in range(rows)])


@contextlib.contextmanager
def _default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------------------------------
# Limits and invariants
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reg", REGS)
def test_hard_limit(rng, reg, dtype):
    for n in [1, 2, 5, 40]:
        x = _separated(rng, 3, n).astype(dtype)
        for values in (x, torch.tensor(x)):
            rank = np.asarray(softrank.soft_rank(values, reg, 1e-4))
            np.testing.assert_allclose(rank, scipy.stats.rankdata(x, axis=-1), atol=1e-5)
            rank_desc = np.asarray(softrank.soft_rank(values, reg, 1e-4, descending=True))
            np.testing.assert_allclose(rank_desc, scipy.stats.rankdata(-x, axis=-1), atol=1e-5)
            srt = np.asarray(softrank.soft_sort(values, reg, 1e-4))
            np.testing.assert_allclose(srt, np.sort(x, axis=-1), atol=1e-5)
            srt_desc = np.asarray(softrank.soft_sort(values, reg, 1e-4, descending=True))
            np.testing.assert_allclose(srt_desc, np.sort(x, axis=-1)[:, ::-1], atol=1e-5)


@pytest.mark.parametrize("reg", REGS)
def test_hard_limit_along_dim0(rng, reg):
    x = _separated(rng, 4, 6).T.copy()  # (6, 4): columns are the rows
    np.testing.assert_allclose(softrank.soft_rank(x, reg, 1e-4, dim=0),
                               scipy.stats.rankdata(x, axis=0), atol=1e-6)
    np.testing.assert_allclose(softrank.soft_sort(x, reg, 1e-4, dim=0), np.sort(x, axis=0),
                               atol=1e-6)


@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("reg", REGS)
def test_ties_get_equal_ranks(rng, reg, eps):
    for x in ([1.0, 1.0, 2.0], [2.0, 1.0, 1.0], [5.0, 5.0, 5.0], [0.0, 3.0, 0.0, 3.0, 1.0]):
        r = softrank.soft_rank(np.array(x), reg, eps)
        for i in range(len(x)):
            for j in range(len(x)):
                if x[i] == x[j]:
                    assert r[i] == pytest.approx(r[j], abs=1e-9), (x, r)
    x = rng.integers(0, 4, size=(5, 12)).astype(np.float64)
    r = softrank.soft_rank(x, reg, eps)
    for row, rrow in zip(x, r):
        for v in np.unique(row):
            np.testing.assert_allclose(rrow[row == v], rrow[row == v][0], atol=1e-9)
    # two tied values in the hard limit share the average of their ranks
    np.testing.assert_allclose(softrank.soft_rank(np.array([1.0, 1.0, 2.0]), reg, 1e-3),
                               [1.5, 1.5, 3.0], atol=1e-9)


@pytest.mark.parametrize("magnitude", [1e4, 1e10, 1e29])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reg", REGS)
def test_ties_of_large_magnitude(reg, dtype, magnitude):
    """[v, 0, v] has exact ranks [2.5, 1, 2.5] for any large v at eps = 1 (the tie is pooled;
    0 sits in its own block), and so has a known gradient."""
    x = np.array([magnitude, 0.0, magnitude], dtype=dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    out, pullback = softrank.soft_rank_vjp(x, reg, 1.0)
    np.testing.assert_allclose(out, [2.5, 1.0, 2.5], rtol=0, atol=tol * 3,
                               err_msg=f"x={x!r} reg={reg}")
    # l2: (g - mean_B g) / eps; kl: r_j (g_j - sum_B(g r) / R_B) / eps with r = 2.5
    expected = [0.5, 0.0, -0.5] if reg == "l2" else [1.25, 0.0, -1.25]
    np.testing.assert_allclose(pullback(np.array([1.0, 0.0, 0.0], dtype=dtype)), expected,
                               rtol=0, atol=tol * 3, err_msg=f"x={x!r} reg={reg}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 100.0])
@pytest.mark.parametrize("reg", REGS)
def test_rank_sums_and_bounds(rng, reg, eps, dtype):
    for n in [1, 2, 17, 300]:
        x = (rng.normal(size=(4, n)) * rng.choice([0.01, 1.0, 100.0])).astype(dtype)
        r = softrank.soft_rank(x, reg, eps).astype(np.float64)
        tol = (1e-5 if dtype == np.float32 else 1e-11) * n * (n + 1) / 2
        np.testing.assert_allclose(r.sum(axis=-1), n * (n + 1) / 2, rtol=0, atol=tol)
        slack = 1e-5 * n if dtype == np.float32 else 1e-10 * n
        assert np.all(r >= 1 - slack) and np.all(r <= n + slack)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 100.0])
@pytest.mark.parametrize("reg", REGS)
def test_soft_sort_is_monotone_and_within_range(rng, reg, eps, dtype):
    for n in [1, 2, 17, 300]:
        x = (rng.normal(size=(4, n)) * rng.choice([0.01, 1.0, 100.0])).astype(dtype)
        slack = (1e-6 if dtype == np.float32 else 1e-12) * (1 + np.abs(x).max())
        asc = softrank.soft_sort(x, reg, eps)
        desc = softrank.soft_sort(x, reg, eps, descending=True)
        assert np.all(np.diff(asc, axis=-1) >= -slack)
        assert np.all(np.diff(desc, axis=-1) <= slack)
        for out in (asc, desc):
            assert np.all(out >= x.min(axis=-1, keepdims=True) - slack)
            assert np.all(out <= x.max(axis=-1, keepdims=True) + slack)
        if reg == "l2":  # the L2 soft sort lies in the permutahedron of x
            np.testing.assert_allclose(asc.sum(axis=-1), x.astype(np.float64).sum(axis=-1),
                                       atol=100 * slack * n)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_rank_order_preserving_and_sort_permutation_invariant(rng, op, reg):
    x = rng.normal(size=30)
    perm = rng.permutation(30)
    out, out_perm = FUNCS[op](x, reg, 0.5), FUNCS[op](x[perm], reg, 0.5)
    if op == "rank":
        np.testing.assert_allclose(out_perm, out[perm], atol=1e-12)
        order = np.argsort(x)
        assert np.all(np.diff(out[order]) >= -1e-12)
    else:
        np.testing.assert_allclose(out_perm, out, atol=1e-12)


@pytest.mark.parametrize("reg", REGS)
def test_large_strength_limit(rng, reg):
    x = rng.normal(size=(2, 9))
    np.testing.assert_allclose(softrank.soft_rank(x, reg, 1e8), 5.0, atol=1e-5)
    if reg == "l2":
        np.testing.assert_allclose(softrank.soft_sort(x, reg, 1e8),
                                   np.broadcast_to(x.mean(axis=-1, keepdims=True), x.shape),
                                   atol=1e-5)


# ---------------------------------------------------------------------------------------
# descending and dim identities
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.01, 1.0, 10.0])
@pytest.mark.parametrize("reg", REGS)
def test_descending_identities(rng, reg, eps):
    x = rng.normal(size=(3, 11))
    np.testing.assert_allclose(softrank.soft_rank(x, reg, eps, descending=True),
                               softrank.soft_rank(-x, reg, eps), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(softrank.soft_sort(x, reg, eps, descending=True),
                               -softrank.soft_sort(-x, reg, eps), rtol=1e-12, atol=1e-12)
    # and their gradients (torch)
    cot = torch.tensor(rng.normal(size=(3, 11)))
    for op, sign in (("rank", 1), ("sort", -1)):
        a = torch.tensor(x, requires_grad=True)
        b = torch.tensor(x, requires_grad=True)
        (ga,) = torch.autograd.grad(FUNCS[op](a, reg, eps, descending=True), a, cot)
        (gb,) = torch.autograd.grad(sign * FUNCS[op](-b, reg, eps), b, cot)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_dim_identities(rng, op, reg):
    x = rng.normal(size=(3, 4, 5))
    for dim in [0, 1, 2, -1, -2, -3]:
        expected = np.moveaxis(FUNCS[op](np.moveaxis(x, dim, -1).copy(), reg, 0.8), -1, dim)
        np.testing.assert_array_equal(FUNCS[op](x, reg, 0.8, dim=dim), expected)
        xt = torch.tensor(x, requires_grad=True)
        out = FUNCS[op](xt, reg, 0.8, dim=dim)
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-13, atol=1e-13)
        cot = torch.tensor(rng.normal(size=x.shape))
        (g,) = torch.autograd.grad(out, xt, cot)
        xm = torch.tensor(np.moveaxis(x, dim, -1).copy(), requires_grad=True)
        (gm,) = torch.autograd.grad(FUNCS[op](xm, reg, 0.8), xm, cot.movedim(dim, -1))
        torch.testing.assert_close(g, gm.movedim(-1, dim), rtol=1e-13, atol=1e-13)


def test_one_dimensional_inputs(rng):
    for op in OPS:
        for values in ([3.0, 1.0, 2.0], np.array([3.0, 1.0, 2.0]), torch.tensor([3.0, 1.0, 2.0])):
            out = FUNCS[op](values, "l2", 1e-3)
            assert tuple(out.shape) == (3,)
            expected = [3.0, 1.0, 2.0] if op == "rank" else [1.0, 2.0, 3.0]
            np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
            assert tuple(FUNCS[op](values, "kl", 1.0, dim=0).shape) == (3,)
    # length-1 rows: rank 1, sort = identity
    x = rng.normal(size=(4, 1))
    np.testing.assert_allclose(softrank.soft_rank(x), 1.0)
    np.testing.assert_allclose(softrank.soft_sort(x), x)
    np.testing.assert_allclose(softrank.soft_sort(x, "kl"), x, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Memory layouts and input handling
# ---------------------------------------------------------------------------------------
def _numpy_views(rng):
    base = rng.normal(size=(6, 8))
    base3 = rng.normal(size=(3, 4, 5))
    return [
        ("transposed", base.T, -1),
        ("transposed-dim0", base.T, 0),
        ("strided", base[:, ::2], -1),
        ("strided-rows", base[::2, 1::3], -1),
        ("reversed", base[::-1, ::-1], -1),
        ("fortran", np.asfortranarray(base), -1),
        ("broadcast", np.broadcast_to(base[0], (5, 8)), -1),
        ("3d-transposed", base3.transpose(2, 0, 1), 1),
        ("big-endian", base.astype(">f8"), -1),
    ]


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_noncontiguous_numpy_equals_contiguous(rng, op, reg):
    for name, view, dim in _numpy_views(rng):
        expected = FUNCS[op](np.ascontiguousarray(view, dtype=np.float64), reg, 0.5, dim=dim)
        got = FUNCS[op](view, reg, 0.5, dim=dim)
        np.testing.assert_array_equal(got, expected, err_msg=name)
        cot = rng.normal(size=view.shape)
        _, pb = VJPS[op](view, reg, 0.5, dim=dim)
        _, pb_c = VJPS[op](np.ascontiguousarray(view, dtype=np.float64), reg, 0.5, dim=dim)
        np.testing.assert_array_equal(pb(cot), pb_c(cot), err_msg=name)
        # a non-contiguous cotangent too
        cot_nc = np.asfortranarray(cot) if cot.ndim > 1 else cot[::-1].copy()[::-1]
        np.testing.assert_array_equal(pb(cot_nc), pb_c(cot), err_msg=name)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_noncontiguous_torch_equals_contiguous(rng, op, reg):
    base = torch.tensor(rng.normal(size=(6, 8)))
    base3 = torch.tensor(rng.normal(size=(3, 4, 5)))
    views = [("t", lambda b, b3: b.t(), -1), ("t-dim0", lambda b, b3: b.t(), 0),
             ("strided", lambda b, b3: b[:, ::2], -1), ("expand", lambda b, b3: b[0].expand(5, 8), -1),
             ("permute", lambda b, b3: b3.permute(2, 0, 1), 1),
             ("unsqueeze-expand", lambda b, b3: b[:, :1].expand(6, 4), 0)]
    for name, make, dim in views:
        leaf = base.clone().requires_grad_()
        leaf3 = base3.clone().requires_grad_()
        view = make(leaf, leaf3)
        out = FUNCS[op](view, reg, 0.5, dim=dim)
        cot = torch.tensor(rng.normal(size=tuple(view.shape)))
        (g_view,) = torch.autograd.grad(out, view, cot)
        contig = view.detach().contiguous().requires_grad_()
        out_c = FUNCS[op](contig, reg, 0.5, dim=dim)
        (g_c,) = torch.autograd.grad(out_c, contig, cot)
        torch.testing.assert_close(out.detach(), out_c.detach(), rtol=0, atol=0, msg=name)
        torch.testing.assert_close(g_view, g_c, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("op", OPS)
def test_read_only_numpy_input(rng, op):
    x = rng.normal(size=(3, 7))
    ro = x.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(FUNCS[op](ro), FUNCS[op](x))
    out, pb = VJPS[op](ro)
    cot = rng.normal(size=(3, 7))
    cot.setflags(write=False)
    np.testing.assert_array_equal(pb(cot), VJPS[op](x)[1](cot.copy()))


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_input_is_not_modified_and_not_aliased(rng, op, reg):
    x = rng.normal(size=(4, 6))
    x[1, 2] = np.nan
    x[2, 0] = x[2, 3]  # a tie
    keep = x.copy()
    out = FUNCS[op](x, reg, 0.3)
    assert np.array_equal(x, keep, equal_nan=True)
    assert not np.shares_memory(out, x)
    out, pb = VJPS[op](x, reg, 0.3)
    cot = rng.normal(size=x.shape)
    cot_keep = cot.copy()
    pb(cot)
    assert np.array_equal(x, keep, equal_nan=True) and np.array_equal(cot, cot_keep)
    # single-element rows: a trivial output must still be a new array
    x1 = rng.normal(size=(3, 1))
    x1_keep = x1.copy()
    out1 = FUNCS[op](x1, reg, 0.3)
    out1 += 1
    assert np.array_equal(x1, x1_keep) and not np.shares_memory(out1, x1)

    t = torch.tensor(keep, requires_grad=True)
    t_keep = t.detach().clone()
    out_t = FUNCS[op](t, reg, 0.3)
    out_t.backward(torch.ones_like(out_t))
    assert torch.equal(torch.nan_to_num(t.detach(), 7.0), torch.nan_to_num(t_keep, 7.0))
    assert out_t.data_ptr() != t.data_ptr()


# ---------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_torch_half_precision(rng, op, reg, dtype):
    x = torch.tensor(rng.normal(size=(3, 10))).to(dtype).requires_grad_()
    out = FUNCS[op](x, reg, 0.5)
    assert out.dtype == dtype and out.shape == x.shape
    x32 = x.detach().float().requires_grad_()
    out32 = FUNCS[op](x32, reg, 0.5)
    torch.testing.assert_close(out, out32.to(dtype))
    cot = torch.tensor(rng.normal(size=(3, 10))).to(dtype)
    (g,) = torch.autograd.grad(out, x, cot)
    (g32,) = torch.autograd.grad(out32, x32, cot.float())
    assert g.dtype == dtype
    torch.testing.assert_close(g, g32.to(dtype))


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                                   torch.bool])
@pytest.mark.parametrize("op", OPS)
def test_torch_integer_and_bool_inputs(op, dtype, default):
    x = torch.tensor([[3, 0, 2, 1], [1, 1, 0, 0]]).to(dtype)
    with _default_dtype(default):
        out = FUNCS[op](x, "l2", 0.5)
        assert out.dtype == default and out.shape == x.shape
        expected = FUNCS[op](x.to(default), "l2", 0.5)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", OPS)
def test_torch_float_dtype_preserved(rng, op, dtype):
    x = torch.tensor(rng.normal(size=(2, 5)), dtype=dtype)
    out = FUNCS[op](x)
    assert out.dtype == dtype and isinstance(out, torch.Tensor) and out.device == x.device


@pytest.mark.parametrize("op", OPS)
def test_numpy_dtypes(rng, op):
    x = rng.normal(size=(3, 6))
    for dtype in (np.float32, np.float64):
        out = FUNCS[op](x.astype(dtype))
        assert isinstance(out, np.ndarray) and out.dtype == dtype
    out16 = FUNCS[op](x.astype(np.float16))
    assert out16.dtype == np.float16
    np.testing.assert_array_equal(out16, FUNCS[op](x.astype(np.float16).astype(np.float32))
                                  .astype(np.float16))
    xi = rng.integers(-3, 4, size=(3, 6))
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64, np.bool_):
        xd = xi.astype(dtype) if dtype is not np.bool_ else xi > 0
        out = FUNCS[op](xd)
        assert out.dtype == np.float64, dtype
        np.testing.assert_array_equal(out, FUNCS[op](xd.astype(np.float64)))


@pytest.mark.parametrize("op", OPS)
def test_python_sequences_give_float64_numpy(op):
    for values in ([3, 1, 2], [3.0, 1.0, 2.0], (3, 1, 2), [[3, 1, 2], [0, 5, 1]], [True, False]):
        out = FUNCS[op](values)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        assert out.shape == np.shape(values)
        np.testing.assert_array_equal(out, FUNCS[op](np.asarray(values, dtype=np.float64)))


# ---------------------------------------------------------------------------------------
# Empty inputs
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,dim", [((0,), -1), ((0,), 0), ((3, 0), -1), ((3, 0), 0),
                                       ((0, 4), 0), ((0, 4), -1), ((2, 0, 3), 1), ((2, 0, 3), 2)])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_empty_inputs(op, reg, shape, dim):
    for dtype in (np.float32, np.float64):
        out = FUNCS[op](np.zeros(shape, dtype), reg, dim=dim)
        assert isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype
        out, pb = VJPS[op](np.zeros(shape, dtype), reg, dim=dim)
        assert out.shape == shape and np.asarray(pb(np.zeros(shape, dtype))).shape == shape
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    out = FUNCS[op](x, reg, dim=dim)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert tuple(FUNCS[op](torch.zeros(shape, dtype=torch.int64), reg, dim=dim).shape) == shape
    assert FUNCS[op]([], reg).shape == (0,)


# ---------------------------------------------------------------------------------------
# NaN / inf rows
# ---------------------------------------------------------------------------------------
def _with_bad_rows(rng, dim):
    x = rng.normal(size=(6, 7))
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    x[3, 6] = -np.inf
    x[4, :] = np.nan
    x[5, 3] = np.nan
    x[5, 4] = np.inf
    good, bad = [0], [1, 2, 3, 4, 5]
    return (x if dim == -1 else x.T.copy()), good, bad


def _rows(a, idx, dim):
    return a[idx] if dim == -1 else a[:, idx]


@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_nan_and_inf_rows_numpy(rng, op, reg, dim):
    x, good, bad = _with_bad_rows(rng, dim)
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        out, pb = VJPS[op](xd, reg, 0.5, dim=dim)
        np.testing.assert_array_equal(out, FUNCS[op](xd, reg, 0.5, dim=dim))
        assert np.all(np.isnan(_rows(out, bad, dim)))
        alone, pb_alone = VJPS[op](_rows(xd, good, dim), reg, 0.5, dim=dim)
        np.testing.assert_array_equal(_rows(out, good, dim), alone)
        cot = rng.normal(size=x.shape).astype(dtype)
        grad = pb(cot)
        assert np.all(np.isnan(_rows(grad, bad, dim)))
        assert np.all(np.isfinite(_rows(grad, good, dim)))
        np.testing.assert_array_equal(_rows(grad, good, dim), pb_alone(_rows(cot, good, dim)))


@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_nan_and_inf_rows_torch(rng, op, reg, dim):
    x, good, bad = _with_bad_rows(rng, dim)
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor(x, dtype=dtype, requires_grad=True)
        out = FUNCS[op](t, reg, 0.5, dim=dim)
        assert torch.all(torch.isnan(_rows(out, bad, dim)))
        cot = torch.tensor(rng.normal(size=x.shape), dtype=dtype)
        (grad,) = torch.autograd.grad(out, t, cot)
        assert torch.all(torch.isnan(_rows(grad, bad, dim)))
        assert torch.all(torch.isfinite(_rows(grad, good, dim)))
        t_good = _rows(t.detach(), good, dim).clone().requires_grad_()
        out_good = FUNCS[op](t_good, reg, 0.5, dim=dim)
        torch.testing.assert_close(_rows(out, good, dim), out_good, rtol=0, atol=0)
        (grad_good,) = torch.autograd.grad(out_good, t_good, _rows(cot, good, dim))
        torch.testing.assert_close(_rows(grad, good, dim), grad_good, rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
def test_nan_edge_cases(op):
    for reg in REGS:
        # a single NaN / inf element, all-inf rows, inf of both signs, NaN in 1-D input
        for values in ([np.nan], [np.inf], [np.inf, np.inf], [-np.inf, np.inf, 0.0],
                       [1.0, 2.0, np.nan]):
            out = FUNCS[op](np.array(values), reg)
            assert out.shape == (len(values),) and np.all(np.isnan(out)), (values, out)
            out_t = FUNCS[op](torch.tensor(values), reg)
            assert torch.all(torch.isnan(out_t))
        # float16 inf is a bad row as well
        out = FUNCS[op](np.array([[1.0, np.inf], [1.0, 2.0]], dtype=np.float16), reg)
        assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))


@pytest.mark.parametrize("eps", [1e-3, 1.0, 100.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_finite_values_near_overflow_give_finite_results(op, reg, dtype, eps):
    """Finite inputs close to the largest float (where x / eps overflows) still give the
    finite, exactly known answer: hard ranks, and for the sort the reference value."""
    import _reference as ref

    big = float(np.finfo(dtype).max) / 1.5
    x = np.array([big, 0.0, -big, big / 2, big], dtype=dtype)  # the tie's sum overflows
    out = FUNCS[op](x, reg, eps)
    assert np.all(np.isfinite(out)), (x, out)
    if op == "rank":
        np.testing.assert_allclose(out, [4.5, 2.0, 1.0, 3.0, 4.5], rtol=0, atol=1e-6)
    else:
        expected = ref.soft_sort_1d(list(x.astype(np.float64)), reg, eps, dps=700)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=0)
