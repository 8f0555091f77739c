"""project_permutahedron, soft_topk, soft_quantile and per-slice strengths (issue 17).

References: tests/_reference.py's projection (slow, written from the paper), numpy/torch
quantiles and hard top-k in the limits, finite differences and torch's gradcheck.
"""
import numpy as np
import pytest
import torch

import _reference as ref
import softrank
from softrank import _cpu

RNG = np.random.default_rng(17)
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-11}


def _project_ref(x, w, regularization, eps):
    """P(x / eps, w) of a 1-D row: the Euclidean projection (l2) or the KL projection of
    exp(x / eps) (kl), from the reference."""
    z = np.asarray(x, float) / eps
    w = np.sort(np.asarray(w, float))[::-1]
    if regularization == "l2":
        return np.asarray(ref.project(z, w, "l2"), float)
    return np.exp(np.asarray(ref.project(z, np.log(w), "kl"), float))


def _rows(rows, n, kind="gaussian", seed=0):
    rng = np.random.default_rng(seed)
    if kind == "ties":
        return rng.integers(-2, 3, size=(rows, n)).astype(float)
    return rng.normal(size=(rows, n)) * 2


# ----------------------------------------------------------------------------- projection


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("kind", ["gaussian", "ties"])
def test_projection_matches_the_reference(dtype, regularization, kind):
    x = _rows(6, 9, kind).astype(dtype)
    w = RNG.permutation(np.concatenate([RNG.uniform(0.5, 4, 6), [1.0, 1.0, 2.0]]))  # ties too
    for eps in (0.05, 1.0, 7.0):
        out = softrank.project_permutahedron(x, w, regularization, eps)
        assert out.dtype == dtype and out.shape == x.shape
        expected = np.stack([_project_ref(row, w, regularization, eps) for row in x])
        np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype] * 10)


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_projection_per_slice_targets_and_dim(regularization):
    x = _rows(4, 3 * 7).reshape(4, 7, 3)  # dim=1 of a 3-d input
    w = RNG.uniform(0.5, 3.0, size=(4, 7, 3))  # one target per slice
    out = softrank.project_permutahedron(x, w, regularization, 0.8, dim=1)
    for i in range(4):
        for j in range(3):
            np.testing.assert_allclose(out[i, :, j],
                                       _project_ref(x[i, :, j], w[i, :, j], regularization, 0.8),
                                       rtol=1e-11, atol=1e-11)
    # a target of the length of dim is shared by every slice
    shared = softrank.project_permutahedron(x, w[0, :, 0], regularization, 0.8, dim=1)
    np.testing.assert_allclose(shared[2, :, 1], _project_ref(x[2, :, 1], w[0, :, 0],
                                                             regularization, 0.8), rtol=1e-11)


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("descending", [False, True])
def test_soft_rank_is_the_projection_onto_the_ranks(regularization, descending):
    x = _rows(5, 30, "ties")
    n = x.shape[1]
    ranks = softrank.soft_rank(x, regularization, 0.6, descending=descending)
    projection = softrank.project_permutahedron(-x if descending else x,
                                                RNG.permutation(np.arange(1.0, n + 1)),
                                                regularization, 0.6)
    np.testing.assert_allclose(projection, ranks, rtol=1e-12, atol=1e-12)


def test_projection_lies_in_the_permutahedron_and_is_optimal():
    x = _rows(1, 5)[0]
    w = np.array([0.3, 2.0, -1.0, 4.0, 4.0])
    mu = softrank.project_permutahedron(x, w, "l2", 1.3)
    assert ref.in_permutahedron(mu, w, 1e-9)
    assert ref.projection_violation_l2(mu, x / 1.3, w) <= 1e-9
    w = np.abs(w) + 0.5
    mu = softrank.project_permutahedron(x, w, "kl", 1.3)
    assert ref.in_permutahedron(mu, w, 1e-9)
    assert ref.projection_violation_kl(mu, x / 1.3, w) <= 1e-9


def test_projection_limits():
    x = np.array([0.3, -1.0, 2.5, 0.9])
    w = np.array([5.0, -2.0, 1.0, 0.5])
    hard = softrank.project_permutahedron(x, w, "l2", 1e-6)  # w permuted by the order of x
    np.testing.assert_allclose(hard, [0.5, -2.0, 5.0, 1.0], atol=1e-9)
    flat = softrank.project_permutahedron(x, w, "l2", 1e9)  # the centre of the permutahedron
    np.testing.assert_allclose(flat, np.full(4, w.mean()), atol=1e-7)


def test_project_modes_on_long_rows_split_across_threads_equal_one_thread():
    x = _rows(1, 70_000)
    w = RNG.uniform(0.1, 2.0, size=70_000)
    results = []
    for threads in (1, 4):
        _cpu.set_thread_policy(threads, 1, 1)
        try:
            results.append([softrank.project_permutahedron(x, w, reg, 0.3) for reg in ("l2", "kl")])
        finally:
            from softrank import _cpu_backend as backend

            _cpu.set_thread_policy(backend.MAX_THREADS, backend.PARALLEL_MIN_ELEMENTS,
                                   backend.PARALLEL_MIN_ELEMENTS_BACKWARD)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(results[0][0].sum(), w.sum(), rtol=1e-9)


# ----------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_is_a_mask_summing_to_k(dtype):
    x = _rows(8, 12).astype(dtype)
    for k in (1, 5, 12):
        for eps in (0.01, 0.5, 3.0, 1e3):
            mask = softrank.soft_topk(x, k, regularization_strength=eps)
            assert mask.dtype == dtype
            assert mask.min() >= -TOL[dtype] and mask.max() <= 1 + TOL[dtype]
            np.testing.assert_allclose(mask.sum(-1), k, rtol=TOL[dtype] * 10)
            expected = np.stack([_project_ref(row, [1.0] * k + [0.0] * (12 - k), "l2", eps)
                                 for row in x.astype(float)])
            np.testing.assert_allclose(mask, expected, atol=TOL[dtype] * 10)


def test_topk_limits_and_smallest():
    x = np.array([[0.3, -1.0, 2.5, 0.9, 7.0, -3.0]])
    hard = softrank.soft_topk(x, 2, regularization_strength=1e-6)
    np.testing.assert_array_equal(hard, [[0, 0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(softrank.soft_topk(x, 2, regularization_strength=1e-6,
                                                     largest=False), [[0, 1, 0, 0, 0, 1]])
    np.testing.assert_allclose(softrank.soft_topk(x, 2, regularization_strength=1e9),
                               np.full((1, 6), 2 / 6), atol=1e-8)
    np.testing.assert_allclose(softrank.soft_topk(x, 3, regularization_strength=0.7,
                                                  largest=False),
                               softrank.soft_topk(-x, 3, regularization_strength=0.7), rtol=0)
    # monotone in the values: a larger value never gets a smaller weight
    mask = softrank.soft_topk(x, 3, regularization_strength=2.0)[0]
    order = np.argsort(x[0])
    assert np.all(np.diff(mask[order]) >= -1e-12)


def test_topk_vjp_matches_finite_differences():
    x = _rows(3, 7)[1]
    for largest in (True, False):
        mask, pullback = softrank.soft_topk_vjp(x, 3, regularization_strength=0.9,
                                                largest=largest)
        v = RNG.normal(size=7)
        expected = ref.numerical_vjp(
            lambda t: softrank.soft_topk(t, 3, regularization_strength=0.9, largest=largest),
            x, v)
        np.testing.assert_allclose(pullback(v), expected, atol=1e-6)


# ----------------------------------------------------------------------------- quantiles


@pytest.mark.parametrize("q", [0.5, 0.0, 1.0, 0.37, [0.1, 0.5, 0.93], np.array([0.25]),
                               torch.tensor([0.2, 0.8], dtype=torch.float64)])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, -1, 1])
def test_quantile_is_torch_quantile_in_the_limit(q, keepdim, dim):
    x = torch.tensor(_rows(4, 5 * 6)).reshape(4, 5, 6)
    out = softrank.soft_quantile(x, q, regularization_strength=1e-9, dim=dim, keepdim=keepdim)
    tq = torch.as_tensor(q, dtype=x.dtype)
    expected = torch.quantile(x, tq, dim=dim, keepdim=keepdim)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    array = softrank.soft_quantile(x.numpy(), q if not isinstance(q, torch.Tensor) else q.numpy(),
                                   regularization_strength=1e-9, dim=dim, keepdim=keepdim)
    np.testing.assert_allclose(array, np.quantile(x.numpy(), np.asarray(q), axis=dim,
                                                  keepdims=keepdim), rtol=0, atol=1e-12)


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_quantile_is_the_interpolated_soft_sort(regularization):
    x = _rows(3, 9)
    s = softrank.soft_sort(x, regularization, 2.0)
    out = softrank.soft_quantile(x, [0.3, 0.5], regularization, 2.0)
    for i, q in enumerate([0.3, 0.5]):
        position = q * 8
        lo = int(np.floor(position))
        expected = s[:, lo] + (position - lo) * (s[:, lo + 1] - s[:, lo])
        np.testing.assert_allclose(out[i], expected, rtol=1e-13)


def test_quantile_vjp_matches_finite_differences():
    x = _rows(2, 6)
    for q, keepdim in ((0.4, False), ([0.1, 0.9], True)):
        out, pullback = softrank.soft_quantile_vjp(x, q, "kl", 1.5, keepdim=keepdim)
        v = RNG.normal(size=out.shape)
        expected = ref.numerical_vjp(
            lambda t: softrank.soft_quantile(t, q, "kl", 1.5, keepdim=keepdim), x, v)
        np.testing.assert_allclose(pullback(v), expected, atol=1e-6)
        t_out, t_pullback = softrank.soft_quantile_vjp(torch.tensor(x), q, "kl", 1.5,
                                                       keepdim=keepdim)
        np.testing.assert_allclose(t_out.numpy(), out, rtol=1e-13)
        np.testing.assert_allclose(t_pullback(torch.tensor(v)).numpy(), expected, atol=1e-6)


# ----------------------------------------------------------------------------- strengths


@pytest.mark.parametrize("op", ["rank", "sort"])
@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_per_slice_strengths_equal_one_call_per_slice(op, regularization):
    x = _rows(3 * 4, 8).reshape(3, 4, 8).astype(np.float32)
    eps = RNG.uniform(0.1, 3.0, size=(3, 1))  # broadcast over the 4 columns of each row
    f = getattr(softrank, f"soft_{op}")
    out = f(x, regularization, eps)
    torch_out = f(torch.tensor(x), regularization, torch.tensor(eps))
    for i in range(3):
        expected = f(x[i], regularization, float(eps[i, 0]))
        np.testing.assert_array_equal(out[i], expected)
        np.testing.assert_array_equal(torch_out[i].numpy(), expected)
    # a 0-d array is one strength for all
    np.testing.assert_array_equal(f(x, regularization, np.float64(0.5)),
                                  f(x, regularization, np.array(0.5)))


@pytest.mark.parametrize("op", ["rank", "sort", "topk", "project"])
@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_learnable_strength_values_and_targets_pass_gradcheck(op, regularization):
    if op == "topk" and regularization == "kl":
        return
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([[0.4], [1.0], [2.5]], dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()

    def f(x, eps, w):
        if op == "project":
            return softrank.project_permutahedron(x, w, regularization, eps.squeeze(-1))
        if op == "topk":
            return softrank.soft_topk(x, 2, regularization, eps.squeeze(-1)) * w
        return getattr(softrank, f"soft_{op}")(x, regularization, eps.squeeze(-1))

    assert torch.autograd.gradcheck(f, (x, eps, w))
    assert torch.autograd.gradgradcheck(f, (x, eps, w))


def test_a_learnable_temperature_trains():
    """A 0-d strength that requires grad is a learnable temperature: gradient descent on it
    moves the soft ranks towards targets made at another strength."""
    x = torch.tensor(_rows(4, 10))
    target = softrank.soft_rank(x, regularization_strength=0.3)
    log_eps = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([log_eps], lr=0.1)
    for _ in range(150):
        optimizer.zero_grad()
        loss = ((softrank.soft_rank(x, regularization_strength=log_eps.exp()) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
    assert abs(log_eps.exp().item() - 0.3) < 0.03


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("op", ["topk", "project_kl", "quantile"])
def test_compile_vmap_jacrev_jvp(op):
    torch.manual_seed(1)
    x = torch.randn(3, 7, dtype=torch.float64)
    w = torch.rand(7, dtype=torch.float64) + 0.5

    def f(t):
        if op == "topk":
            return softrank.soft_topk(t, 3, regularization_strength=0.7)
        if op == "project_kl":
            return softrank.project_permutahedron(t, w, "kl", 0.7)
        return softrank.soft_quantile(t, [0.3, 0.6], regularization_strength=0.7, dim=-1)

    eager = f(x)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager, rtol=0, atol=0)
    xs = x.clone().requires_grad_()
    (g_eager,) = torch.autograd.grad(f(xs).sum(), xs)
    (g_compiled,) = torch.autograd.grad(compiled(xs).sum(), xs)
    torch.testing.assert_close(g_compiled, g_eager)
    from torch.func import jacrev, jvp, vmap

    batched = vmap(f)(x.unsqueeze(1))  # each sample a (1, 7) input
    expected = eager.unsqueeze(1) if op != "quantile" else eager.T.unsqueeze(-1)
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-15)
    row = x[0]
    jac = jacrev(f)(row)
    tangent = torch.randn(7, dtype=torch.float64)
    _, jvp_out = jvp(f, (row,), (tangent,))
    torch.testing.assert_close(jvp_out, jac @ tangent)
    numerical = torch.autograd.functional.jacobian(f, row)
    torch.testing.assert_close(jac, numerical)


def test_vmap_over_targets_and_strengths():
    from torch.func import vmap

    torch.manual_seed(2)
    x = torch.randn(5, 6, dtype=torch.float64)
    ws = torch.rand(5, 6, dtype=torch.float64) + 0.5
    eps = torch.rand(5, dtype=torch.float64) + 0.2
    batched = vmap(lambda t, w, e: softrank.project_permutahedron(t, w, "l2", e))(x, ws, eps)
    for i in range(5):
        torch.testing.assert_close(batched[i], softrank.project_permutahedron(
            x[i], ws[i], "l2", float(eps[i])), rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad inputs


BAD = [
    (lambda x: softrank.soft_topk(x, 0), ValueError, r"k must be in \[1, 6\]"),
    (lambda x: softrank.soft_topk(x, 7), ValueError, "k must be in"),
    (lambda x: softrank.soft_topk(x, 2.0), TypeError, "k must be an int"),
    (lambda x: softrank.soft_topk(x, True), TypeError, "k must be an int"),
    (lambda x: softrank.soft_topk(x, 2, "kl"), ValueError, "regularization must be 'l2'"),
    (lambda x: softrank.soft_topk(x, 2, "l1"), ValueError, "regularization must be 'l2' or"),
    (lambda x: softrank.soft_topk(x, 2, largest=1), TypeError, "largest must be a bool"),
    (lambda x: softrank.soft_quantile(x, float("nan")), ValueError, "q must be in"),
    (lambda x: softrank.soft_quantile(x, [0.5, 1.5]), ValueError, "q must be in"),
    (lambda x: softrank.soft_quantile(x, []), ValueError, "q must hold"),
    (lambda x: softrank.soft_quantile(x, "0.5"), TypeError, "q must be"),
    (lambda x: softrank.soft_quantile(x, [[0.5]]), ValueError, "q must be a float or 1-D"),
    (lambda x: softrank.soft_quantile(x, 0.5, keepdim=None), TypeError, "keepdim must be"),
    (lambda x: softrank.project_permutahedron(x, [1.0, 2.0]), ValueError,
     "w must have the length of dim"),
    (lambda x: softrank.project_permutahedron(x, None), TypeError, "w must be"),
    (lambda x: softrank.project_permutahedron(x, [1.0, 2, 3, 4, 5, float("nan")]), ValueError,
     "w must be finite"),
    (lambda x: softrank.project_permutahedron(x, [1.0, 2, 3, 4, 5, 0], "kl"), ValueError,
     "w must be > 0"),
    (lambda x: softrank.project_permutahedron(x, [1j] * 6), TypeError, "w must be real"),
    (lambda x: softrank.soft_rank(x, "l2", [1.0, 2.0, 3.0]), ValueError,
     "regularization_strength of shape"),
    (lambda x: softrank.soft_rank(x, "l2", [1.0, -2.0]), ValueError,
     "regularization_strength must be finite and > 0"),
    (lambda x: softrank.soft_rank(x, "l2", [1.0, float("inf")]), ValueError,
     "regularization_strength must be finite and > 0"),
    (lambda x: softrank.soft_sort(x, "l2", [True, True]), TypeError,
     "regularization_strength must be real"),
]


@pytest.mark.parametrize("call, exc, message", BAD)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bad_arguments_are_named(call, exc, message, kind):
    x = _rows(2, 6)
    with pytest.raises(exc, match=message):
        call(torch.tensor(x) if kind == "torch" else x)


def test_callers_arrays_are_not_changed_and_the_pullback_keeps_its_own():
    x = _rows(2, 6)
    w = np.array([3.0, 1.0, 2.0, 6.0, 5.0, 4.0])
    eps = np.array([0.5, 2.0])
    copies = (x.copy(), w.copy(), eps.copy())
    softrank.project_permutahedron(x, w, "kl", eps)
    out, pullback = softrank.soft_topk_vjp(x, 2, regularization_strength=eps)
    for a, b in zip((x, w, eps), copies):
        np.testing.assert_array_equal(a, b)
    g = RNG.normal(size=x.shape)
    before = pullback(g)
    eps[:] = 100.0
    x[:] = 0.0
    np.testing.assert_array_equal(pullback(g), before)


def test_a_nan_row_does_not_disturb_the_others():
    x = _rows(3, 6)
    x[1, 2] = np.nan
    out = softrank.project_permutahedron(x, np.arange(6.0) + 1, "kl", [0.5, 1.0, 2.0])
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    np.testing.assert_allclose(out[0], softrank.soft_rank(x[0], "kl", 0.5), rtol=1e-13)


def test_compile_with_learnable_strengths_and_targets():
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    eps = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def f(x, w, eps):
        return ((softrank.project_permutahedron(x, w, "kl", eps) ** 2).sum()
                + (softrank.soft_sort(x, "kl", eps) ** 2).sum()
                + (softrank.soft_rank(x, "l2", eps) ** 2).sum())

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager = torch.autograd.grad(f(x, w, eps), (x, w, eps))
    for a, b in zip(eager, torch.autograd.grad(compiled(x, w, eps), (x, w, eps))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
