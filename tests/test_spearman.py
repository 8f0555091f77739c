"""Tests for softrank.spearmanr, softrank.pearsonr and softrank.SpearmanLoss."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

import softrank

torch = pytest.importorskip("torch")

REGS = ("l2", "kl")


def tie_free(rng, shape, gap=0.1):
    """Values along the last axis that are a shuffled grid with spacing >= gap."""
    n = shape[-1]
    base = np.arange(n) * gap
    out = np.empty(shape)
    flat = out.reshape(-1, n)
    for row in flat:
        row[:] = rng.permutation(base) + rng.uniform(0, gap / 4, size=n)
    return out


def scipy_rows(x, y):
    return np.array([scipy.stats.spearmanr(a, b).statistic for a, b in zip(x, y)])


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("n", [2, 3, 10, 57])
def test_matches_scipy_tiny_strength_numpy(reg, n):
    rng = np.random.default_rng(n)
    x = tie_free(rng, (6, n))
    y = tie_free(rng, (6, n))
    for row in range(3):  # correlated, still tie-free: grid values in a noisy x order
        order = np.argsort(np.argsort(x[row]) + rng.normal(scale=n / 8, size=n))
        y[row] = np.sort(y[row])[np.argsort(order)]
    got = softrank.spearmanr(x, y, regularization=reg, regularization_strength=1e-4)
    assert isinstance(got, np.ndarray) and got.shape == (6,)
    np.testing.assert_allclose(got, scipy_rows(x, y), atol=1e-8)


@pytest.mark.parametrize("reg", REGS)
def test_matches_scipy_tiny_strength_torch(reg):
    rng = np.random.default_rng(1)
    x, y = tie_free(rng, (4, 30)), tie_free(rng, (4, 30))
    got = softrank.spearmanr(torch.tensor(x), torch.tensor(y), regularization=reg,
                             regularization_strength=1e-4)
    assert isinstance(got, torch.Tensor) and got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), scipy_rows(x, y), atol=1e-8)


def test_ties_get_average_ranks_like_scipy():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, size=(5, 40)).astype(float)
    y = rng.integers(0, 5, size=(5, 40)).astype(float) + x
    got = softrank.spearmanr(x, y, regularization_strength=1e-6)
    np.testing.assert_allclose(got, scipy_rows(x, y), atol=1e-8)


def test_1d_numpy_returns_scalar_and_perfect_orders():
    x = np.array([0.3, -1.0, 2.0, 0.7])
    assert np.ndim(softrank.spearmanr(x, x)) == 0
    assert softrank.spearmanr(x, 2 * x + 1, regularization_strength=1e-3) == pytest.approx(1.0)
    assert softrank.spearmanr(x, -x, regularization_strength=1e-3) == pytest.approx(-1.0)


def test_large_strength_tends_to_pearson():
    # With l2 and a strength far above the spread, soft ranks are affine in the values.
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(3, 20)), rng.normal(size=(3, 20))
    np.testing.assert_allclose(softrank.spearmanr(x, y, regularization_strength=1e4),
                               softrank.pearsonr(x, y), atol=1e-10)


def test_result_in_range_and_strength_smooths():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(50, 12)), rng.normal(size=(50, 12))
    for s in (1e-3, 0.1, 1.0, 10.0):
        for reg in REGS:
            r = softrank.spearmanr(x, y, regularization=reg, regularization_strength=s)
            assert np.all(np.isfinite(r)) and np.all(np.abs(r) <= 1)


# ---------------------------------------------------------------------- pearsonr


def test_pearsonr_matches_scipy():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4, 15)), rng.normal(size=(4, 15))
    want = [scipy.stats.pearsonr(a, b).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(softrank.pearsonr(x, y), want, atol=1e-12)
    np.testing.assert_allclose(softrank.pearsonr(torch.tensor(x), torch.tensor(y)).numpy(),
                               want, atol=1e-12)


def test_pearsonr_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: softrank.pearsonr(a, b, dim=1), (x, y))


# ------------------------------------------------------------------ zero variance


@pytest.mark.parametrize("const", [0.0, 0.1, 3.0, -1e6])
@pytest.mark.parametrize("reg", REGS)
def test_constant_row_gives_zero_numpy(const, reg):
    x = np.array([[0.3, -1.0, 2.0, 0.7, 0.1], [const] * 5])
    y = np.array([[const] * 5, [1.0, 2.0, 0.5, -3.0, 0.2]])
    with np.errstate(all="raise"):
        r = softrank.spearmanr(x, y, regularization=reg)
        r2 = softrank.pearsonr(x, y)
    np.testing.assert_array_equal(r, [0.0, 0.0])
    np.testing.assert_array_equal(r2, [0.0, 0.0])


@pytest.mark.parametrize("n", [2, 333, 100_003])
def test_constant_rows_of_any_length_are_flat(n):
    rng = np.random.default_rng(n)
    for dtype in (np.float32, np.float64):
        a = np.full((4, n), 1.0, dtype) * rng.uniform(-1e3, 1e3, size=(4, 1)).astype(dtype)
        b = rng.normal(size=(4, n)).astype(dtype)
        assert softrank.pearsonr(a, b).tolist() == [0.0] * 4
        assert softrank.pearsonr(torch.from_numpy(b), torch.from_numpy(a)).tolist() == [0.0] * 4
    a = np.full(n, 0.1)
    assert softrank.spearmanr(a, rng.normal(size=n), regularization_strength=1e-3) == 0.0


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_row_gives_zero_with_finite_gradient(reg, dtype):
    pred = torch.tensor([[0.1] * 6, [0.5, -1.0, 2.0, 0.7, 0.1, 3.0]], dtype=dtype,
                        requires_grad=True)
    target = torch.tensor([[1.0, 2.0, 0.5, -3.0, 0.2, 7.0], [0.1] * 6], dtype=dtype,
                          requires_grad=True)
    r = softrank.spearmanr(pred, target, regularization=reg)
    assert r.tolist() == [0.0, 0.0]
    r.sum().backward()
    for t in (pred, target):
        assert torch.isfinite(t.grad).all()
        assert (t.grad == 0).all()  # documented: the gradient of a flat slice is zero
    loss = softrank.SpearmanLoss(regularization=reg)(pred.detach().requires_grad_(),
                                                     target.detach())
    assert loss.item() == pytest.approx(1.0)


def test_constant_row_does_not_affect_other_rows_gradient():
    x = torch.tensor([[2.0, 2.0, 2.0], [0.1, 0.5, 0.3]], dtype=torch.float64,
                     requires_grad=True)
    y = torch.tensor([[1.0, 3.0, 2.0], [3.0, 1.0, 2.0]], dtype=torch.float64)
    softrank.spearmanr(x, y).sum().backward()
    x1 = x[1:].detach().clone().requires_grad_()
    softrank.spearmanr(x1, y[1:]).sum().backward()
    torch.testing.assert_close(x.grad[1:], x1.grad)


def test_single_item_and_empty_slices_give_zero():
    assert softrank.spearmanr(np.ones((3, 1)), np.ones((3, 1))).tolist() == [0.0] * 3
    assert softrank.spearmanr(np.ones((3, 0)), np.ones((3, 0))).tolist() == [0.0] * 3
    t = torch.ones(2, 1, requires_grad=True)
    r = softrank.spearmanr(t, torch.ones(2, 1))
    assert r.tolist() == [0.0, 0.0]
    r.sum().backward()
    assert (t.grad == 0).all()


def test_nan_propagates():
    x = np.array([[0.0, np.nan, 1.0], [0.0, 2.0, 1.0]])
    r = softrank.pearsonr(x, np.array([[1.0, 2.0, 3.0]] * 2))
    assert np.isnan(r[0]) and np.isfinite(r[1])


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nan_next_to_a_constant_slice_propagates(kind):
    x = np.array([[0.0, np.nan, 1.0], [0.0, 2.0, 1.0]])
    y = np.array([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]])
    if kind == "torch":
        x, y = torch.tensor(x), torch.tensor(y)
    for a, b in ((x, y), (y, x)):
        r = np.asarray(softrank.pearsonr(a, b))
        assert np.isnan(r[0]) and r[1] == 0.0


def test_float64_array_precision_is_kept_next_to_a_float32_tensor():
    """1 + 1e-9 * k is constant in float32: computed in the tensor's float32, a perfect
    correlation would come out 0."""
    x = 1.0 + 1e-9 * np.arange(10.0)
    r = softrank.pearsonr(torch.arange(10.0), x)
    assert r.dtype == torch.float64 and r.item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype,scales", [
    (np.float64, [1e160, 1e-200, 1e300, 1e-300]),
    (np.float32, [1e20, 1e-25, 1e35, 1e-35]),
])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_pearson_is_scale_invariant(kind, dtype, scales):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 50))
    y = x + 0.2 * rng.normal(size=(3, 50))
    expected = np.array([scipy.stats.pearsonr(a, b).statistic for a, b in zip(x, y)])
    for sx in scales:
        for sy in (1.0, sx):
            a, b = (x * sx).astype(dtype), (y * sy).astype(dtype)
            assert np.isfinite(a).all() and np.isfinite(b).all()
            if kind == "torch":
                a, b = torch.from_numpy(a), torch.from_numpy(b)
            r = np.asarray(softrank.pearsonr(a, b), dtype=np.float64)
            np.testing.assert_allclose(r, expected, atol=1e-5 if dtype == np.float32 else 1e-12,
                                       err_msg=f"scale {sx}, {sy}")


def test_pearson_gradient_is_scale_invariant_where_it_should_be():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, dtype=torch.float64, generator=g)
    y = torch.randn(2, 8, dtype=torch.float64, generator=g)
    grads = []
    for scale in (1.0, 1e100):
        leaf = (x * scale).requires_grad_()
        softrank.pearsonr(leaf, y).sum().backward()
        grads.append(leaf.grad * scale)  # r(c x) = r(x): d r / d(c x) = (d r / dx) / c
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------- gradients


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("strength", [0.3, 2.0])
def test_gradcheck_float64(reg, strength):
    g = torch.Generator().manual_seed(7)
    pred = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)

    def f(p, t):
        return softrank.spearmanr(p, t, regularization=reg, regularization_strength=strength)

    assert torch.autograd.gradcheck(f, (pred, target), atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda p, t: softrank.spearmanr(p, t, dim=0, regularization=reg,
                                        regularization_strength=strength),
        (pred, target), atol=1e-6)


def test_loss_decreases_under_gradient_descent():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(32, generator=g)
    pred = torch.randn(32, generator=g, requires_grad=True)
    loss_fn = softrank.SpearmanLoss(regularization_strength=0.1)
    opt = torch.optim.Adam([pred], lr=0.05)
    first = loss_fn(pred, target).item()
    for _ in range(120):
        opt.zero_grad()
        loss = loss_fn(pred, target)
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.8
    hard = scipy.stats.spearmanr(pred.detach().numpy(), target.numpy()).statistic
    assert hard > 0.9


# --------------------------------------------------------------------------- dims


def test_dim_handling_and_output_shape():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(2, 5, 7)), rng.normal(size=(2, 5, 7))
    for dim in (0, 1, 2, -1, -2, -3):
        r = softrank.spearmanr(x, y, dim=dim, regularization_strength=0.5)
        shape = list(x.shape)
        del shape[dim]
        assert r.shape == tuple(shape)
        want = softrank.spearmanr(np.moveaxis(x, dim, -1), np.moveaxis(y, dim, -1),
                                  regularization_strength=0.5)
        np.testing.assert_allclose(r, want, atol=1e-12)
        rt = softrank.spearmanr(torch.tensor(x), torch.tensor(y), dim=dim,
                                regularization_strength=0.5)
        assert tuple(rt.shape) == tuple(shape)
        np.testing.assert_allclose(rt.numpy(), want, atol=1e-10)


def test_bad_dim_and_shapes():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="dim"):
        softrank.spearmanr(x, x, dim=2)
    with pytest.raises(ValueError, match=r"pred.*target"):
        softrank.spearmanr(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"pred.*target"):
        softrank.spearmanr(torch.zeros(3, 4), torch.zeros(3, 1))  # no broadcasting
    with pytest.raises(ValueError, match=r"\bx\b.*\by\b"):
        softrank.pearsonr(x, np.zeros(4))
    with pytest.raises(ValueError):
        softrank.spearmanr(np.float64(1.0), np.float64(2.0))


def test_bad_regularization():
    with pytest.raises(ValueError):
        softrank.spearmanr(np.arange(3.0), np.arange(3.0), regularization="l1")


BAD_SPEARMAN_ARGUMENTS = [
    (dict(dim=True), TypeError, "dim must be an int, got bool"),
    (dict(dim=1.0), TypeError, "dim must be an int, got float"),
    (dict(regularization="l1"), ValueError, "regularization must be 'l2' or 'kl', got 'l1'"),
    (dict(regularization_strength=math.inf), ValueError,
     "regularization_strength must be a finite number > 0"),
    (dict(regularization_strength=True), TypeError,
     "regularization_strength must be a real number, got bool"),
    (dict(regularization_strength="1"), TypeError,
     "regularization_strength must be a real number, got str"),
    (dict(regularization_strength=10**400), ValueError,
     "regularization_strength must be a finite number > 0"),
]


@pytest.mark.parametrize("kwargs,exc,message", BAD_SPEARMAN_ARGUMENTS)
def test_every_entry_point_validates_alike(kwargs, exc, message):
    """spearmanr, SpearmanLoss and soft_rank give the same error for the same bad argument."""
    x = np.array([[0.3, 0.1, 0.2]])
    calls = [lambda: softrank.spearmanr(x, x, **kwargs),
             lambda: softrank.SpearmanLoss(**kwargs)(torch.tensor(x), torch.tensor(x)),
             lambda: softrank.soft_rank(x, **kwargs)]
    for call in calls:
        with pytest.raises(exc, match=re.escape(message)):
            call()


# -------------------------------------------------------------- numpy vs torch


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("strength", [1e-2, 0.5, 5.0])
def test_numpy_equals_torch(reg, strength):
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(8, 13)), rng.normal(size=(8, 13))
    a = softrank.spearmanr(x, y, regularization=reg, regularization_strength=strength)
    b = softrank.spearmanr(torch.tensor(x), torch.tensor(y), regularization=reg,
                           regularization_strength=strength)
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
    a32 = softrank.spearmanr(x.astype(np.float32), y.astype(np.float32), regularization=reg,
                             regularization_strength=strength)
    assert a32.dtype == np.float32
    np.testing.assert_allclose(a32, a, atol=1e-4)


def test_dtypes_and_mixed_inputs():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(2, 9)), rng.normal(size=(2, 9))
    r32 = softrank.spearmanr(torch.tensor(x, dtype=torch.float32), y.astype(np.float32))
    assert r32.dtype == torch.float32
    np.testing.assert_allclose(r32.numpy(), softrank.spearmanr(x, y), atol=1e-5)
    # A float32 tensor next to a float64 array is computed in the wider dtype.
    r64 = softrank.spearmanr(torch.tensor(x, dtype=torch.float32), y)
    assert r64.dtype == torch.float64
    ri = softrank.spearmanr(np.array([[3, 1, 2]]), np.array([[1, 2, 3]]))
    assert ri.dtype == np.float64
    np.testing.assert_allclose(ri, [-0.5], atol=1e-3)


def test_half_precision_does_not_overflow():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=g)
    r = softrank.spearmanr(x.half(), x.half(), regularization_strength=1e-3)
    assert r.dtype == torch.float16
    assert r.item() == pytest.approx(1.0, abs=1e-2)


# ------------------------------------------------------------------- SpearmanLoss


def test_spearman_loss_reductions():
    g = torch.Generator().manual_seed(11)
    pred = torch.randn(4, 10, generator=g, requires_grad=True)
    target = torch.randn(4, 10, generator=g)
    rho = softrank.spearmanr(pred, target, regularization_strength=0.3)
    kw = dict(regularization_strength=0.3)
    none = softrank.SpearmanLoss(reduction="none", **kw)(pred, target)
    torch.testing.assert_close(none, 1 - rho)
    torch.testing.assert_close(softrank.SpearmanLoss(**kw)(pred, target), (1 - rho).mean())
    torch.testing.assert_close(softrank.SpearmanLoss(reduction="sum", **kw)(pred, target),
                               (1 - rho).sum())
    loss = softrank.SpearmanLoss(dim=0, reduction="none", **kw)(pred, target)
    assert loss.shape == (10,)
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_spearman_loss_validation_and_repr():
    with pytest.raises(ValueError, match="reduction"):
        softrank.SpearmanLoss(reduction="avg")
    with pytest.raises(ValueError, match="regularization"):
        softrank.SpearmanLoss(regularization="l1")
    with pytest.raises(ValueError, match="regularization_strength"):
        softrank.SpearmanLoss(regularization_strength=0.0)
    with pytest.raises(TypeError):
        softrank.SpearmanLoss(-1)  # keyword-only
    m = softrank.SpearmanLoss(regularization="kl", regularization_strength=0.5)
    assert isinstance(m, torch.nn.Module)
    assert "kl" in repr(m) and "0.5" in repr(m)


# ------------------------------------------------------------------- devices


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("reg", REGS)
def test_cuda_matches_cpu(reg):
    g = torch.Generator().manual_seed(12)
    pred = torch.randn(5, 33, dtype=torch.float64, generator=g)
    target = torch.randn(5, 33, dtype=torch.float64, generator=g)
    pc = pred.cuda().requires_grad_()
    r = softrank.spearmanr(pc, target.cuda(), regularization=reg, regularization_strength=0.2)
    assert r.device.type == "cuda"
    p0 = pred.clone().requires_grad_()
    r0 = softrank.spearmanr(p0, target, regularization=reg, regularization_strength=0.2)
    torch.testing.assert_close(r.cpu(), r0)
    r.sum().backward()
    r0.sum().backward()
    torch.testing.assert_close(pc.grad.cpu(), p0.grad)


@pytest.mark.cuda
def test_cupy_matches_numpy():
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:  # pragma: no cover
        pytest.skip("no CUDA device for CuPy")
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(4, 21)), rng.normal(size=(4, 21))
    r = softrank.spearmanr(cp.asarray(x), cp.asarray(y), regularization_strength=0.2)
    assert isinstance(r, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(r),
                               softrank.spearmanr(x, y, regularization_strength=0.2),
                               atol=1e-10)
    with pytest.raises(TypeError):
        softrank.spearmanr(cp.asarray(x), y)


def test_numpy_path_does_not_import_torch():
    code = (
        "import sys, numpy as np, softrank\n"
        "r = softrank.spearmanr(np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0]))\n"
        "p = softrank.pearsonr(np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0]))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "print(float(r), float(p))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env())
    assert out.returncode == 0, out.stderr
    assert all(np.isfinite(float(v)) for v in out.stdout.split())


def _env():
    import os

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(softrank.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def test_docstring_examples():
    import doctest

    import softrank._spearman
    import softrank._spearman_torch

    for mod in (softrank._spearman, softrank._spearman_torch):
        failures, attempted = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert attempted >= 3 and failures == 0, mod.__name__


def test_strength_below_every_gap_gives_zero_gradient():
    # Documented: hard (unblended) ranks carry no gradient.
    pred = torch.tensor([0.3, 0.1, 0.9, 0.5], requires_grad=True)
    softrank.spearmanr(pred, torch.tensor([1.0, 2.0, 4.0, 3.0]),
                       regularization_strength=0.05).backward()
    assert (pred.grad == 0).all()
