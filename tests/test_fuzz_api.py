"""Property-based fuzz of the public API: dtypes, layouts, dims, strengths, NaN/inf placement and
thread counts, through NumPy and torch alike.

What must hold for every input: the documented output type, shape and dtype; the caller's input
unchanged; a row holding NaN or +-inf is all NaN and leaves every other row exactly as it is
without it; finite rows match the float64 computation (cast to the output dtype); NumPy and torch
give the same numbers and the same gradients; the thread count changes nothing.

The budget is fixed (derandomized examples, SOFTRANK_FUZZ_EXAMPLES, default 200 per test), so CI
runs the same cases every time. What the fuzz found is kept as @example regressions.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import softrank  # noqa: E402
from softrank import _cpu  # noqa: E402

FUNCS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}
VJPS = {"rank": softrank.soft_rank_vjp, "sort": softrank.soft_sort_vjp}
SETTINGS = settings(max_examples=int(os.environ.get("SOFTRANK_FUZZ_EXAMPLES", "200")),
                    deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Output dtype of each input dtype for NumPy (integers and bool become float64).
NUMPY_DTYPES = ["float16", "float32", "float64", "int32", "int64", "bool"]
TORCH_DTYPES = ["float16", "bfloat16", "float32", "float64", "int32", "int64", "bool"]
RTOL = {"float16": 2e-2, "bfloat16": 2e-2, "float32": 1e-4, "float64": 1e-9}


@st.composite
def calls(draw, kind):
    """(x as float64 data, dtype, layout, dim, op, reg, eps, descending, threads)."""
    dtype = draw(st.sampled_from(NUMPY_DTYPES if kind == "numpy" else TORCH_DTYPES))
    ndim = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 4)) for _ in range(ndim)]
    dim = draw(st.integers(-ndim, ndim - 1))
    shape[dim] = draw(st.integers(1, 40))
    integral = dtype.startswith("int") or dtype == "bool"
    values = st.integers(0, 1) if dtype == "bool" else (
        st.integers(-20, 20) if integral else st.floats(-50, 50, width=16).map(float))
    x = np.array(draw(st.lists(values, min_size=int(np.prod(shape)),
                               max_size=int(np.prod(shape))))).reshape(shape)
    x = x.astype(np.float64)
    if not integral and draw(st.booleans()):  # NaN/inf at random places
        for _ in range(draw(st.integers(1, 3))):
            idx = tuple(draw(st.integers(0, s - 1)) for s in x.shape)
            x[idx] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    op = draw(st.sampled_from(["rank", "sort"]))
    reg = draw(st.sampled_from(["l2", "kl"]))
    eps = float(10.0 ** draw(st.floats(-2, 2)))
    descending = draw(st.booleans())
    threads = draw(st.sampled_from([1, 2]))
    return x, dtype, layout, dim, op, reg, eps, descending, threads


def _values(x, dtype, layout, kind):
    """x in the given dtype and memory layout, as an array or tensor the test owns."""
    if kind == "numpy":
        a, swap, repeat = x.astype(dtype), np.swapaxes, np.repeat
    else:
        a = torch.from_numpy(x).to(getattr(torch, dtype))
        swap, repeat = torch.transpose, torch.repeat_interleave
    if layout == "transposed" and x.ndim > 1:  # the same values, stored transposed
        stored = swap(a, 0, -1)
        stored = stored.copy() if kind == "numpy" else stored.contiguous()
        return swap(stored, 0, -1)
    if layout == "strided":  # every other element of a wider array
        return repeat(a, 2, -1)[..., ::2]
    return a


def _expected(x, dtype, dim, op, reg, eps, descending):
    """float64 computation of what the call should give (NaN rows all NaN)."""
    x64 = np.asarray(x, dtype=np.float64)
    if dtype in ("float16", "bfloat16"):  # the input as the call sees it
        x64 = torch.from_numpy(x64).to(getattr(torch, dtype)).double().numpy()
    moved = np.moveaxis(x64, dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = np.full_like(rows, np.nan)
    finite = np.isfinite(rows).all(axis=-1)
    if finite.any():
        out[finite] = FUNCS[op](rows[finite], reg, eps, descending=descending)
    return np.moveaxis(out.reshape(moved.shape), -1, dim), finite


def _set_threads(threads):
    """Use `threads` threads from the first element on; returns the policy to restore."""
    policy = _cpu.thread_policy()
    _cpu.set_thread_policy(threads, 0, 0)
    return policy


def _out_dtype(dtype, kind):
    if dtype.startswith("int") or dtype == "bool":
        return "float64" if kind == "numpy" else str(torch.get_default_dtype())[6:]
    return dtype


def _run(call, kind):
    x, dtype, layout, dim, op, reg, eps, descending, threads = call
    values = _values(x, dtype, layout, kind)
    before = values.copy() if kind == "numpy" else values.clone()
    policy = _set_threads(threads)
    try:
        out, pullback = VJPS[op](values, reg, eps, dim=dim, descending=descending)
        direct = FUNCS[op](values, reg, eps, dim=dim, descending=descending)
        g = np.random.default_rng(0).normal(size=x.shape)
        grad = pullback(g if kind == "numpy" else torch.from_numpy(g))
    finally:
        _cpu.set_thread_policy(*policy)
    # the caller's input is untouched, the types and dtypes are the documented ones
    if kind == "numpy":
        np.testing.assert_array_equal(values, before)
        assert isinstance(out, np.ndarray) and out.dtype == np.dtype(_out_dtype(dtype, kind))
    else:
        torch.testing.assert_close(values, before, rtol=0, atol=0, equal_nan=True)
        assert isinstance(out, torch.Tensor)
        assert str(out.dtype)[6:] == _out_dtype(dtype, kind)
    assert tuple(out.shape) == x.shape and tuple(grad.shape) == x.shape
    out64 = np.asarray(out.double() if kind == "torch" else out, dtype=np.float64)
    direct64 = np.asarray(direct.double() if kind == "torch" else direct, dtype=np.float64)
    np.testing.assert_array_equal(out64, direct64)
    expected, finite = _expected(x, dtype, dim, op, reg, eps, descending)
    # NaN rows are all NaN; the others match the float64 computation on the clean rows alone
    moved = np.moveaxis(out64, dim, -1).reshape(-1, x.shape[dim])
    assert np.isnan(moved[~finite]).all()
    compute = _out_dtype(dtype, kind)
    rtol = RTOL["float32" if compute in ("float16", "bfloat16") else compute]
    rtol = max(rtol, RTOL.get(dtype, 0) if dtype in ("float16", "bfloat16") else 0)
    scale = np.nanmax(np.abs(expected)) if finite.any() else 1.0
    np.testing.assert_allclose(out64, expected, rtol=rtol, atol=rtol * (1 + scale) * 4,
                               equal_nan=True)
    grad64 = np.asarray(grad.double() if kind == "torch" else grad, dtype=np.float64)
    grad_rows = np.moveaxis(grad64, dim, -1).reshape(-1, x.shape[dim])
    assert np.isfinite(grad_rows[finite]).all() and np.isnan(grad_rows[~finite]).all()
    return out64, grad64


@SETTINGS
@given(calls("numpy"))
@example((np.array([[1.0, np.nan, 2.0], [3.0, 1.0, 2.0]]), "float64", "contiguous", -1, "rank",
          "l2", 1.0, False, 2))
def test_numpy_api_fuzz(call):
    _run(call, "numpy")


@SETTINGS
@given(calls("torch"))
def test_torch_api_fuzz_agrees_with_numpy(call):
    out, grad = _run(call, "torch")
    x, dtype, layout, dim, op, reg, eps, descending, threads = call
    if dtype in ("float32", "float64"):  # the same numbers as the NumPy front end
        out_np, grad_np = _run(call, "numpy")
        np.testing.assert_array_equal(out, out_np)
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(grad, grad_np, rtol=tol, atol=tol * (1 + 1 / eps),
                                   equal_nan=True)
