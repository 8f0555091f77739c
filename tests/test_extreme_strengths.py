"""Tiny regularization strengths (issue 16, item 6): every finite strength > 0 gives finite
outputs and gradients for finite inputs, and the hard sort/rank where the limit is reached.

Causes pinned here (softrank/csrc/pav.h and backward.h, softrank/_torch_formulas.py):
* sort modes: rho/eps overflowed (inf <= inf pooled every element into +-inf outputs);
* rank/l2 rows above 2**1000 were solved scaled by 2**-64, where a subnormal eps / 2**64 is 0
  (NaN ranks);
* rank gradients: sign/eps overflowed to inf, and inf * 0 gave NaN for singleton blocks (and
  inf for ties), in the native backward and in the torch formulas of create_graph/torch.func.
Where the limit is reached the outputs are compared with the hard sort/rank exactly; normal
strengths are checked against the reference of tests/_reference.py.
"""
import numpy as np
import pytest

import softrank
from softrank import _cpu

from _reference import soft_rank_1d, soft_sort_1d

RANK_L2, RANK_KL, SORT_L2, SORT_KL = range(4)
TINY64 = [1e-310, 5e-324, 1e-300, 2e-308]
TINY32 = [1e-40, 1e-45, 1e-310, 5e-324]


def _rows(dtype, n, rng):
    """Named finite rows of n elements: random, ties, a huge spread (1e300 next to 1e-300 for
    float64), integers (many ties)."""
    big, small = (1e300, 1e-300) if dtype == np.float64 else (1e30, 1e-30)
    spread = rng.choice([big, -big, small, -small, 0.0, 1.0, -2.5], size=n)
    rows = {
        "random": rng.standard_normal(n),
        "ties": rng.integers(0, max(2, n // 3), size=n).astype(float),
        "spread": spread,
        "ladder": np.arange(n, dtype=float)[::-1] * 1e-3,
    }
    return {k: v.astype(dtype) for k, v in rows.items()}


def _hard_rank(x, descending):
    """Ranks 1..n, ties averaged (ascending: the smallest gets 1)."""
    z = -x if descending else x
    order = np.argsort(z, kind="stable")
    ranks = np.empty(len(x))
    sz = z[order]
    j = 0
    while j < len(x):
        e = j
        while e + 1 < len(x) and sz[e + 1] == sz[j]:
            e += 1
        ranks[order[j:e + 1]] = (j + e) / 2 + 1
        j = e + 1
    return ranks


def _min_distinct_gap(x):
    u = np.unique(x.astype(np.float64))
    return np.inf if len(u) < 2 else np.min(np.diff(u))


def _max_gap(x):
    u = np.sort(x.astype(np.float64))
    return 0.0 if len(u) < 2 else np.max(np.diff(u / 2)) * 2


@pytest.mark.parametrize("dtype,strengths", [(np.float64, TINY64), (np.float32, TINY32)])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 3000])
def test_tiny_strength_outputs_are_finite_and_hard(dtype, strengths, n):
    rng = np.random.default_rng(n)
    for eps in strengths:
        for name, x in _rows(dtype, n, rng).items():
            for reg in ("l2", "kl"):
                for descending in (False, True):
                    kw = dict(regularization=reg, regularization_strength=eps,
                              descending=descending)
                    r = softrank.soft_rank(x, **kw)
                    s = softrank.soft_sort(x, **kw)
                    where = (eps, name, reg, descending)
                    assert r.dtype == dtype and s.dtype == dtype
                    assert np.all(np.isfinite(r)) and np.all(np.isfinite(s)), where
                    if _min_distinct_gap(x) > eps * n:  # the hard rank, ties averaged
                        np.testing.assert_array_equal(r, _hard_rank(x, descending).astype(dtype),
                                                      err_msg=str(where))
                    if _max_gap(x) * eps < 0.5:  # no two elements can pool: the hard sort
                        hard = np.sort(x)[::-1] if descending else np.sort(x)
                        np.testing.assert_array_equal(s, hard, err_msg=str(where))


@pytest.mark.parametrize("dtype,strengths", [(np.float64, TINY64), (np.float32, TINY32)])
@pytest.mark.parametrize("n", [1, 5, 64, 2000])
def test_tiny_strength_numpy_gradients_are_finite(dtype, strengths, n):
    rng = np.random.default_rng(100 + n)
    for eps in strengths:
        for name, x in _rows(dtype, n, rng).items():
            g = rng.standard_normal(n).astype(dtype)
            for reg in ("l2", "kl"):
                for descending in (False, True):
                    kw = dict(regularization=reg, regularization_strength=eps,
                              descending=descending)
                    where = (eps, name, reg, descending)
                    r, pull_r = softrank.soft_rank_vjp(x, **kw)
                    s, pull_s = softrank.soft_sort_vjp(x, **kw)
                    gr, gs = pull_r(g), pull_s(g)
                    assert np.all(np.isfinite(gr)) and np.all(np.isfinite(gs)), where
                    counts = {v: c for v, c in zip(*np.unique(x, return_counts=True))}
                    alone = np.array([counts[v] == 1 for v in x])
                    if _min_distinct_gap(x) > eps * n:
                        # every untied element is a singleton block: its rank is constant
                        np.testing.assert_array_equal(gr[alone], 0, err_msg=str(where))
                    if _max_gap(x) * eps < 0.5:
                        # a hard sort: the gradient is the cotangent, un-permuted
                        order = np.argsort(-x if descending else x, kind="stable")
                        expect = np.empty_like(g)
                        expect[order] = g
                        np.testing.assert_array_equal(gs, expect, err_msg=str(where))


def test_tiny_strength_tied_rank_gradients_saturate():
    """A tied block's true Jacobian entries are ~1/eps, beyond the dtype: the gradient
    saturates at the dtype's largest value, with the true gradient's sign, 0 where g'_j is
    the block's mean (backward.h)."""
    for dtype, eps in [(np.float64, 1e-310), (np.float64, 5e-324), (np.float32, 1e-40)]:
        big = np.finfo(dtype).max
        x = np.array([[2.0, 2.0, 1.0, 2.0]], dtype=dtype)
        g = np.array([[3.0, 0.0, 5.0, 3.0]], dtype=dtype)  # block mean 2
        for mode in (RANK_L2, RANK_KL):
            out, perm, blocks = _cpu.forward(mode, x, eps, 1.0)
            np.testing.assert_array_equal(out, [[3.0, 3.0, 1.0, 3.0]])
            aux = out if mode == RANK_KL else None
            grad = _cpu.backward(mode, g, perm, blocks, aux, eps, 1.0)
            np.testing.assert_array_equal(grad, [[big, -big, 0.0, big]])
            grad = _cpu.backward(mode, g, perm, blocks, aux, eps, -1.0)
            assert np.all(np.isfinite(grad))


def test_huge_values_with_subnormal_strength_rank():
    """Values above 2**1000 were solved scaled by 2**-64, where eps / 2**64 underflows to 0."""
    x = np.array([1.5e308, -1.7e308, 1e-300, 0.0, 1e301, 1e301], dtype=np.float64)
    for eps in (1e-310, 5e-324, 1e-300):
        for reg in ("l2", "kl"):
            r = softrank.soft_rank(x, regularization=reg, regularization_strength=eps)
            np.testing.assert_array_equal(r, _hard_rank(x, False))


def test_sort_kl_near_the_float64_limit_with_tiny_strength():
    """sort/kl where both rho/eps overflows and the range exceeds 1/(2 eps): solved with its
    block values in units of eps (pav.h), finite, decreasing up to rounding at the scale of
    the values, blocks pooled where gaps exceed 1/eps."""
    rows = [[1.7e308, -1.7e308, 1e308, 0.0, 1.0], [1.7e308, 1.6e308, -1.7e308] * 3,
            list(np.linspace(-8e307, 8e307, 50) * 2)]
    for eps in (2e-308, 1e-308, 1e-310, 5e-324):
        for row in rows:
            x = np.array([row])
            for sign in (1.0, -1.0):
                out, perm, blocks = _cpu.forward(SORT_KL, x, eps, sign)
                grad = _cpu.backward(SORT_KL, np.ones_like(x), perm, blocks, x, eps, sign)
                assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad)), (eps, row)
                assert np.all(sign * np.diff(out[0]) <= 1e-15 * np.max(np.abs(x))), (eps, row)
    out, _, blocks = _cpu.forward(SORT_KL, np.array([[1.7e308, -1.7e308]]), 1e-308, 1.0)
    np.testing.assert_array_equal(blocks, [[0, 0]])  # a gap of 3.4e308 > 1/eps pools


def test_tiny_strengths_split_rows():
    """The split-row driver (long rows on several threads) takes the same paths."""
    _cpu._debug("set_split_row_min", 64)
    try:
        rng = np.random.default_rng(3)
        x = np.round(rng.standard_normal((2, 5000)) * 1e3)  # ties
        for eps in (1e-310, 5e-324):
            for mode in range(4):
                out, perm, blocks = _cpu.forward(mode, x, eps, 1.0)
                assert np.all(np.isfinite(out))
                aux = out if mode == RANK_KL else (x if mode == SORT_KL else None)
                grad = _cpu.backward(mode, np.ones_like(x), perm, blocks, aux, eps, 1.0)
                assert np.all(np.isfinite(grad))
    finally:
        _cpu._debug("set_split_row_min", 65536)


@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 30.0])
@pytest.mark.parametrize("reg", ["l2", "kl"])
def test_normal_strengths_unchanged(eps, reg):
    """Normal strengths (the plain paths) still agree with the reference."""
    rng = np.random.default_rng(7)
    for n in (1, 6, 13):
        x = np.round(rng.standard_normal(n), 1)
        for descending in (False, True):
            kw = dict(regularization=reg, regularization_strength=eps, descending=descending)
            np.testing.assert_allclose(softrank.soft_rank(x, **kw),
                                       [float(v) for v in soft_rank_1d(list(x), **kw)],
                                       rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(softrank.soft_sort(x, **kw),
                                       [float(v) for v in soft_sort_1d(list(x), **kw)],
                                       rtol=1e-9, atol=1e-9)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tiny_strength_torch_gradients_are_finite(dtype):
    """Eager native backward, create_graph (the torch formulas) and torch.func transforms."""
    from torch.func import jacfwd, jacrev

    dt = getattr(torch, dtype)
    strengths = TINY64 if dtype == "float64" else TINY32
    big, small = (1e300, 1e-300) if dtype == "float64" else (1e30, 1e-30)
    rows = {"ties": [1.0, 1.0, 2.0, 2.0, 2.0, 0.0, 3.0], "random": [0.3, -1.2, 2.5, 0.7, -0.1],
            "spread": [big, small, -big, 0.0, small, 5.0, -2 * small], "one": [3.0]}
    for eps in strengths:
        for name, v in rows.items():
            counts = {u: v.count(u) for u in v}
            alone = torch.tensor([counts[u] == 1 for u in v])
            for op in ("rank", "sort"):
                fn = getattr(softrank, "soft_" + op)
                for reg in ("l2", "kl"):
                    for descending in (False, True):
                        where = (eps, name, op, reg, descending)

                        def f(x):
                            return fn(x, regularization=reg, regularization_strength=eps,
                                      descending=descending)

                        x = torch.tensor(v, dtype=dt, requires_grad=True)
                        g = torch.linspace(-1, 2, len(v), dtype=dt)
                        y = f(x)
                        assert torch.isfinite(y).all(), where
                        (eager,) = torch.autograd.grad(f(x), x, g)
                        (graph,) = torch.autograd.grad(y, x, g, create_graph=True)
                        for k, t in {"eager": eager, "create_graph": graph,
                                     "jacrev": jacrev(f)(x.detach()),
                                     "jacfwd": jacfwd(f)(x.detach())}.items():
                            assert torch.isfinite(t).all(), (k, where)
                        if op == "rank" and name != "spread":
                            assert (eager[alone] == 0).all() and (graph[alone] == 0).all(), where
                        torch.testing.assert_close(graph.detach(), eager, rtol=1e-6, atol=0)
