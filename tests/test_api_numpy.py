"""softrank on NumPy inputs agrees with the independent reference (tests/_reference.py).

Both ops, both regularizations, strengths 1e-3 .. 100, row lengths 1 .. 513, float32 and
float64, ascending and descending; plus the NumPy VJP against the reference's numerical
Jacobian.
"""

import numpy as np
import pytest

import softrank
import _reference as ref
from _helpers import OPS, REGS, assert_matches_reference, generic_input_and_vjp

STRENGTHS = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
SIZES = [1, 2, 3, 7, 64, 513]
FUNCS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}
VJPS = {"rank": softrank.soft_rank_vjp, "sort": softrank.soft_sort_vjp}


def _inputs(rng, n, dtype, rows=3):
    """Rows of different character: standard normal, wide spread, and small integers with
    ties (ties do not change outputs, only which equal value sits where)."""
    rows_ = [rng.normal(size=n), rng.normal(scale=30.0, size=n), rng.integers(-5, 6, size=n)]
    return np.stack(rows_[:rows]).astype(dtype)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("eps", STRENGTHS)
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_agrees_with_reference(rng, op, reg, eps, n, dtype, descending):
    x = _inputs(rng, n, dtype)
    out = FUNCS[op](x, reg, eps, descending=descending)
    assert isinstance(out, np.ndarray)
    assert out.dtype == dtype and out.shape == x.shape
    assert_matches_reference(out, x, op, reg, eps, descending=descending, dtype=dtype)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_agrees_with_reference_along_dim0_of_3d(rng, op, reg):
    x = rng.normal(size=(5, 3, 4))
    for dim in [0, 1, -1, -3]:
        out = FUNCS[op](x, reg, 0.5, dim=dim)
        assert_matches_reference(out, x, op, reg, 0.5, dim=dim)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_vjp_output_equals_forward(rng, op, reg):
    x = rng.normal(size=(4, 9))
    out, pullback = VJPS[op](x, reg, 0.3)
    np.testing.assert_array_equal(out, FUNCS[op](x, reg, 0.3))
    assert callable(pullback)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("eps", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_vjp_equals_reference_numerical_jacobian(rng, op, reg, eps, descending):
    for shape, dim in [((6,), -1), ((3, 5), -1), ((5, 3), 0), ((2, 4, 3), 1)]:
        cot = rng.normal(size=shape)
        x, expected = generic_input_and_vjp(
            rng, lambda: rng.normal(size=shape) * 2.0,
            lambda v: ref.soft_op(op, v, reg, eps, dim=dim, descending=descending), cot)
        out, pullback = VJPS[op](x, reg, eps, dim=dim, descending=descending)
        grad = pullback(cot)
        assert isinstance(grad, np.ndarray) and grad.shape == x.shape
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6 * (1 + 1 / eps),
                                   err_msg=f"shape={shape} dim={dim}")
        # the pullback may be called again, and is linear in the cotangent
        np.testing.assert_allclose(pullback(2 * cot), 2 * grad, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pullback(cot), grad, rtol=0, atol=0)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_vjp_float32(rng, op, reg):
    x = rng.normal(size=(3, 8)).astype(np.float32)
    cot = rng.normal(size=(3, 8)).astype(np.float32)
    out, pullback = VJPS[op](x, reg, 1.0)
    assert out.dtype == np.float32
    grad = pullback(cot)
    assert grad.shape == x.shape
    _, pullback64 = VJPS[op](x.astype(np.float64), reg, 1.0)
    np.testing.assert_allclose(grad, pullback64(cot.astype(np.float64)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_vjp_accepts_python_sequences(op):
    out, pullback = VJPS[op]([3.0, 1.0, 2.0], regularization_strength=10.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    grad = np.asarray(pullback(np.array([1.0, 0.0, 0.0])))
    assert grad.shape == (3,)


def test_vjp_docstring_example():
    ranks, pullback = softrank.soft_rank_vjp(np.array([3.0, 1.0, 2.0]), regularization_strength=10.0)
    np.testing.assert_allclose(pullback(np.array([1.0, 0.0, 0.0])), [1 / 15, -1 / 30, -1 / 30],
                               atol=1e-12)


def test_numpy_use_does_not_import_torch():
    """The NumPy front end never imports torch (documented in softrank/__init__)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, softrank\n"
            "softrank.soft_rank(np.array([3.0, 1.0, 2.0]))\n"
            "o, pb = softrank.soft_sort_vjp([[3.0, 1.0, 2.0]], 'kl')\n"
            "pb(np.ones((1, 3)))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_equals_general_path(rng, op, reg, dtype):
    """A C-contiguous native float32/float64 2-D array along its last dim takes a shorter route
    (no partition kept); every other layout of the same values takes the general one. Both
    must give the same bits, and equal the VJP's forward."""
    x = _inputs(rng, 37, dtype)
    for descending in (False, True):
        for dim in (-1, 1):
            fast = FUNCS[op](x, reg, 0.7, dim=dim, descending=descending)
            assert fast.dtype == dtype and fast.shape == x.shape
            general = {
                "transposed": FUNCS[op](np.ascontiguousarray(x.T), reg, 0.7, dim=0,
                                        descending=descending),
                "3-d": FUNCS[op](x[None], reg, 0.7, dim=-1, descending=descending)[0],
                "byte-swapped": FUNCS[op](x.astype(x.dtype.newbyteorder()), reg, 0.7, dim=dim,
                                          descending=descending),
                "vjp": VJPS[op](x, reg, 0.7, dim=dim, descending=descending)[0],
            }
            np.testing.assert_array_equal(general["transposed"].T, fast)
            for name in ("3-d", "byte-swapped", "vjp"):
                np.testing.assert_array_equal(general[name], fast, err_msg=name)
    for shape in [(37,), (3, 1, 37)]:  # other ranks along the last dim: same route
        y = x[0] if len(shape) == 1 else x[:, None, :]
        assert y.flags.c_contiguous and y.shape == shape
        np.testing.assert_array_equal(
            FUNCS[op](y, reg, 0.7), VJPS[op](y, reg, 0.7)[0], err_msg=str(shape))
    read_only = x.copy()
    read_only.flags.writeable = False
    np.testing.assert_array_equal(FUNCS[op](read_only, reg, 0.7), FUNCS[op](x, reg, 0.7))
    assert FUNCS[op](np.empty((0, 4), dtype), reg).shape == (0, 4)
    assert FUNCS[op](np.empty((3, 0), dtype), reg).shape == (3, 0)
    with pytest.raises(ValueError, match="regularization must be 'l2' or 'kl'"):
        FUNCS[op](x, "l1")


def test_native_solver_refuses_byte_swapped_rows():
    """The solver reads rows by pointer: a non-native byte order must raise, not be misread."""
    from softrank import _cpu

    x = np.arange(6.0).reshape(2, 3).astype(">f8")
    with pytest.raises(ValueError, match="native byte order: False"):
        _cpu.forward_values(0, x, 1.0, 1.0)
