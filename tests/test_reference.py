"""Checks of the pure-Python reference (tests/_reference.py) on its own: no softrank import.

The reference is verified against independent brute force: SciPy's isotonic regression,
the min-max formula of isotonic regression, the facet description of the permutahedron,
the variational inequality characterising a projection onto a convex hull (enumerating
all vertices), multiprecision arithmetic, the known limits, and torchsort's README numbers.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import _reference as ref

REGS = ["l2", "kl"]


def _random_with_ties(rng, n):
    """Values from a small integer set (lots of ties) with some continuous noise mixed in."""
    x = rng.integers(-3, 4, size=n).astype(np.float64)
    mask = rng.random(n) < 0.5
    x[mask] += rng.normal(size=mask.sum())
    return x


# ---------------------------------------------------------------------------------------
# Isotonic regression
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 50, 200])
def test_isotonic_l2_matches_scipy(rng, n):
    for _ in range(10):
        y = _random_with_ties(rng, n) * rng.choice([0.1, 1.0, 10.0])
        expected = scipy.optimize.isotonic_regression(y, increasing=False).x
        np.testing.assert_allclose(ref.isotonic_l2(y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8])
def test_isotonic_l2_matches_minmax_formula(rng, n):
    for _ in range(20):
        y = _random_with_ties(rng, n)
        minmax, maxmin = ref.isotonic_minmax(n, lambda a, b: float(np.mean(y[a:b])))
        np.testing.assert_allclose(minmax, maxmin, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ref.isotonic_l2(y), minmax, rtol=0, atol=1e-12)


def _kl_block_value(y, w):
    def value(a, b):
        return float(np.log(np.sum(np.exp(y[a:b]))) - np.log(np.sum(np.exp(w[a:b]))))

    return value


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8])
def test_isotonic_kl_matches_minmax_formula(rng, n):
    for _ in range(20):
        y = _random_with_ties(rng, n)
        w = _random_with_ties(rng, n)
        minmax, maxmin = ref.isotonic_minmax(n, _kl_block_value(y, w))
        np.testing.assert_allclose(minmax, maxmin, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ref.isotonic_kl(y, w), minmax, rtol=0, atol=1e-12)


def _kl_objective(v, y, w):
    return float(np.sum(np.exp(y - v) + np.exp(w) * v))


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_isotonic_kl_is_optimal_among_feasible_points(rng, n):
    """The KL solution is decreasing and no random decreasing point does better.  Also
    compared with a generic constrained optimiser."""
    for _ in range(5):
        y = rng.normal(size=n)
        w = rng.normal(size=n)
        v = np.array(ref.isotonic_kl(y, w))
        assert np.all(np.diff(v) <= 1e-12)
        best = _kl_objective(v, y, w)
        for _ in range(200):
            # a decreasing point near v: v + decreasing perturbation
            other = v + np.sort(rng.normal(scale=rng.choice([1e-3, 1e-1, 1.0]), size=n))[::-1]
            assert best <= _kl_objective(other, y, w) + 1e-12
        # SLSQP with the constraints v_i - v_{i+1} >= 0
        cons = [{"type": "ineq", "fun": (lambda u, i=i: u[i] - u[i + 1])} for i in range(n - 1)]
        res = scipy.optimize.minimize(
            _kl_objective, np.zeros(n), args=(y, w), constraints=cons, method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        assert best <= res.fun + 1e-9
        np.testing.assert_allclose(v, res.x, atol=1e-4)


def test_isotonic_already_decreasing_is_identity(rng):
    y = np.sort(rng.normal(size=20))[::-1]
    np.testing.assert_allclose(ref.isotonic_l2(y), y, rtol=0, atol=0)
    w = rng.normal(size=20)
    # y - w strictly decreasing => singletons => v = y - w
    y2 = w + np.arange(20)[::-1]
    np.testing.assert_allclose(ref.isotonic_kl(y2, w), y2 - w, atol=1e-12)


def test_multiprecision_agrees_with_float64(rng):
    for n in [1, 3, 7]:
        y = _random_with_ties(rng, n)
        w = rng.normal(size=n)
        np.testing.assert_allclose(
            [float(v) for v in ref.isotonic_l2(y, dps=40)], ref.isotonic_l2(y), atol=1e-13)
        np.testing.assert_allclose(
            [float(v) for v in ref.isotonic_kl(y, w, dps=40)], ref.isotonic_kl(y, w), atol=1e-13)
        for reg in REGS:
            for eps in [0.01, 1.0, 10.0]:
                for desc in [False, True]:
                    np.testing.assert_allclose(
                        ref.soft_rank_1d(y, reg, eps, desc, dps=40),
                        ref.soft_rank_1d(y, reg, eps, desc), rtol=1e-12, atol=1e-12)
                    np.testing.assert_allclose(
                        ref.soft_sort_1d(y, reg, eps, desc, dps=40),
                        ref.soft_sort_1d(y, reg, eps, desc), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# The projection, checked by brute force over the permutahedron's facets and vertices.
# ---------------------------------------------------------------------------------------
def _rho(n):
    return np.arange(n, 0, -1, dtype=np.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_l2_soft_rank_is_the_projection_onto_the_permutahedron(rng, n, eps):
    for _ in range(3):
        x = _random_with_ties(rng, n)
        for desc in [False, True]:
            mu = ref.soft_rank_1d(x, "l2", eps, desc)
            theta = (-x if desc else x) / eps
            assert ref.in_permutahedron(mu, _rho(n), tol=1e-9)
            assert ref.projection_violation_l2(mu, theta, _rho(n)) <= 1e-9


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_kl_soft_rank_is_the_kl_projection(rng, n, eps):
    for _ in range(3):
        x = _random_with_ties(rng, n)
        for desc in [False, True]:
            mu = ref.soft_rank_1d(x, "kl", eps, desc)
            theta = (-x if desc else x) / eps
            assert ref.in_permutahedron(mu, _rho(n), tol=1e-9)
            assert ref.projection_violation_kl(mu, theta, _rho(n)) <= 1e-9


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_soft_sort_is_the_projection_of_rho(rng, n, eps):
    """Descending soft sort = P(rho / eps, x): l2 projects rho/eps onto P(x); kl gives
    log of the KL projection of e^(rho/eps) onto P(e^x).  Ascending = -desc(-x)."""
    for _ in range(3):
        x = _random_with_ties(rng, n)
        z = _rho(n) / eps
        mu = ref.soft_sort_1d(x, "l2", eps, descending=True)
        assert ref.in_permutahedron(mu, x, tol=1e-9)
        assert ref.projection_violation_l2(mu, z, x) <= 1e-9
        mu_kl = np.exp(ref.soft_sort_1d(x, "kl", eps, descending=True))
        assert ref.in_permutahedron(mu_kl, np.exp(x), tol=1e-9)
        assert ref.projection_violation_kl(mu_kl, z, np.exp(x)) <= 1e-9
        for reg in REGS:
            np.testing.assert_allclose(
                ref.soft_sort_1d(x, reg, eps), -np.array(ref.soft_sort_1d(-x, reg, eps, True)),
                atol=1e-12)


def test_brute_force_checks_reject_wrong_answers(rng):
    """The brute-force checkers are not vacuous."""
    x = rng.normal(size=4)
    mu = np.array(ref.soft_rank_1d(x, "l2", 1.0))
    assert not ref.in_permutahedron(mu + np.array([0.1, 0, 0, 0]), _rho(4), tol=1e-9)
    assert not ref.in_permutahedron(np.full(4, 2.5) + [3, -1, -1, -1], _rho(4), tol=1e-9)
    wrong = np.full(4, 2.5)  # in P(rho), but not the projection of a non-constant vector
    assert ref.in_permutahedron(wrong, _rho(4), tol=1e-9)
    assert ref.projection_violation_l2(wrong, x * 10, _rho(4)) > 1e-3
    assert ref.projection_violation_kl(wrong, x * 10, _rho(4)) > 1e-3


# ---------------------------------------------------------------------------------------
# Known values and limits
# ---------------------------------------------------------------------------------------
def test_torchsort_readme_numbers():
    x = [[8, 0, 5, 3, 2, 1, 6, 7, 9]]
    np.testing.assert_allclose(ref.soft_sort(x), [np.arange(9) + 5 / 9], atol=1e-12)
    np.testing.assert_allclose(ref.soft_sort(x, regularization_strength=0.1),
                               [[0, 1, 2, 3, 5, 6, 7, 8, 9]], atol=1e-12)
    np.testing.assert_allclose(ref.soft_rank(x), [[8, 1, 5, 4, 3, 2, 6, 7, 9]], atol=1e-12)
    np.testing.assert_allclose(ref.soft_rank([[1.0, -2.0, 2.0, 3.0, 0.5, -1.0]]),
                               [[3.875, 1, 4.875, 5.875, 3.375, 2]], atol=1e-12)

    def spearmanr(pred, target):
        pred = ref.soft_rank(pred)
        target = ref.soft_rank(target)
        pred = pred - pred.mean()
        pred = pred / np.linalg.norm(pred)
        target = target - target.mean()
        target = target / np.linalg.norm(target)
        return (pred * target).sum()

    assert spearmanr([[1.0, 2, 3, 4, 5]], [[5.0, 6, 7, 8, 7]]) == pytest.approx(0.8321, abs=1e-4)


@pytest.mark.parametrize("reg", REGS)
def test_hard_limit(rng, reg):
    for n in [1, 2, 5, 30]:
        x = rng.permutation(n) * 1.0 + rng.uniform(-0.3, 0.3, size=n)
        np.testing.assert_allclose(ref.soft_rank_1d(x, reg, 1e-4), scipy.stats.rankdata(x),
                                   atol=1e-9)
        np.testing.assert_allclose(ref.soft_rank_1d(x, reg, 1e-4, True),
                                   scipy.stats.rankdata(-x), atol=1e-9)
        np.testing.assert_allclose(ref.soft_sort_1d(x, reg, 1e-4), np.sort(x), atol=1e-9)
        np.testing.assert_allclose(ref.soft_sort_1d(x, reg, 1e-4, True), np.sort(x)[::-1],
                                   atol=1e-9)


def test_large_strength_limit(rng):
    x = rng.normal(size=7)
    np.testing.assert_allclose(ref.soft_rank_1d(x, "l2", 1e6), np.full(7, 4.0), atol=1e-5)
    np.testing.assert_allclose(ref.soft_rank_1d(x, "kl", 1e6), np.full(7, 4.0), atol=1e-4)
    np.testing.assert_allclose(ref.soft_sort_1d(x, "l2", 1e6), np.full(7, x.mean()), atol=1e-5)
    # kl, descending: exp(out) in P(e^x) => every exp(out_j) -> mean(e^x); ascending is
    # -desc(-x)
    np.testing.assert_allclose(ref.soft_sort_1d(x, "kl", 1e6, True),
                               np.full(7, np.log(np.exp(x).mean())), atol=1e-4)
    np.testing.assert_allclose(ref.soft_sort_1d(x, "kl", 1e6),
                               np.full(7, -np.log(np.exp(-x).mean())), atol=1e-4)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 10.0])
def test_reference_properties(rng, reg, eps):
    for n in [1, 2, 3, 8, 40]:
        x = _random_with_ties(rng, n)
        r = np.array(ref.soft_rank_1d(x, reg, eps))
        s = np.array(ref.soft_sort_1d(x, reg, eps))
        # ranks: sum, bounds, ties equal, order preserved
        assert r.sum() == pytest.approx(n * (n + 1) / 2, rel=1e-12)
        assert np.all(r >= 1 - 1e-9) and np.all(r <= n + 1e-9)
        for i, j in itertools.combinations(range(n), 2):
            if x[i] == x[j]:
                assert r[i] == pytest.approx(r[j], abs=1e-9)
            elif x[i] < x[j]:
                assert r[i] <= r[j] + 1e-9
        # sorts: monotone, within [min, max], l2 sums preserved
        assert np.all(np.diff(s) >= -1e-9)
        assert s.min() >= x.min() - 1e-9 and s.max() <= x.max() + 1e-9
        if reg == "l2":
            assert s.sum() == pytest.approx(x.sum(), abs=1e-9 * max(1, np.abs(x).sum()))
        else:
            # ascending kl sort = -P_E(rho/eps, -x): exp(-out) in P(e^-x)
            assert np.exp(-s).sum() == pytest.approx(np.exp(-x).sum(), rel=1e-9)
        # descending identities
        np.testing.assert_allclose(ref.soft_rank_1d(x, reg, eps, True),
                                   ref.soft_rank_1d(-x, reg, eps), atol=1e-12)
        np.testing.assert_allclose(ref.soft_sort_1d(x, reg, eps, True),
                                   -np.array(ref.soft_sort_1d(-x, reg, eps)), atol=1e-12)
        # translation: ranks invariant, sorts equivariant; scaling x by a == eps / a
        c = 0.75
        np.testing.assert_allclose(ref.soft_rank_1d(x + c, reg, eps), r, atol=1e-9)
        np.testing.assert_allclose(ref.soft_sort_1d(x + c, reg, eps), s + c, atol=1e-9)
        np.testing.assert_allclose(ref.soft_rank_1d(2 * x, reg, eps), ref.soft_rank_1d(x, reg, eps / 2),
                                   atol=1e-9)
        # permutation equivariance of ranks, invariance of sorts
        p = rng.permutation(n)
        np.testing.assert_allclose(ref.soft_rank_1d(x[p], reg, eps), r[p], atol=1e-9)
        np.testing.assert_allclose(ref.soft_sort_1d(x[p], reg, eps), s, atol=1e-9)


def test_soft_op_dims_and_empty(rng):
    x = rng.normal(size=(3, 4, 5))
    for dim in [0, 1, 2, -1, -3]:
        out = ref.soft_rank(x, dim=dim)
        moved = np.moveaxis(x, dim, -1)
        expected = np.stack([ref.soft_rank_1d(row) for row in moved.reshape(-1, moved.shape[-1])])
        np.testing.assert_allclose(np.moveaxis(out, dim, -1).reshape(expected.shape), expected)
    assert ref.soft_sort(np.zeros((2, 0))).shape == (2, 0)
    assert ref.soft_rank([5.0]).tolist() == [1.0]
    assert ref.soft_sort([5.0]).tolist() == [5.0]


# ---------------------------------------------------------------------------------------
# Numerical Jacobian
# ---------------------------------------------------------------------------------------
def test_numerical_jacobian_of_known_function(rng):
    a = rng.normal(size=(3, 4))
    x = rng.normal(size=4)
    jac = ref.numerical_jacobian(lambda v: a @ v + np.sin(v[0]), x)
    expected = a + np.outer(np.ones(3), [np.cos(x[0]), 0, 0, 0])
    np.testing.assert_allclose(jac, expected, atol=1e-8)
    v = rng.normal(size=3)
    np.testing.assert_allclose(ref.numerical_vjp(lambda u: a @ u, x, v), v @ a, atol=1e-8)


@pytest.mark.parametrize("eps", [0.1, 1.0, 10.0])
def test_l2_rank_jacobian_is_a_projection_derivative(rng, eps):
    """At a generic point the Jacobian of the Euclidean projection is symmetric with
    eigenvalues in {0, 1/eps} (piecewise linear), and rows sum to 0 (translation
    invariance)."""
    x = rng.normal(size=8)
    jac = ref.numerical_jacobian(lambda v: ref.soft_rank_1d(v, "l2", eps), x, h=1e-7)
    np.testing.assert_allclose(jac, jac.T, atol=1e-6)
    np.testing.assert_allclose(jac.sum(axis=1), 0, atol=1e-6)
    eig = np.linalg.eigvalsh((jac + jac.T) / 2) * eps
    assert np.all(np.minimum(np.abs(eig), np.abs(eig - 1)) < 1e-5)


def test_multiprecision_handles_huge_and_tiny_magnitudes():
    for x in ([1e200, 1e200, -1e200], [3e30, 3e30, 3e30, 1.0], [1e-30, 2e-30, 1e-30]):
        for reg in REGS:
            for eps in [1e-3, 1.0, 100.0]:
                r = np.array(ref.soft_rank_1d(x, reg, eps, dps=400))
                assert np.all(np.isfinite(r))
                assert r.sum() == pytest.approx(len(x) * (len(x) + 1) / 2, rel=1e-12)
                s = np.array(ref.soft_sort_1d(x, reg, eps, dps=400))
                assert np.all(np.isfinite(s)) and np.all(np.diff(s) >= 0)
    r = ref.soft_rank_1d([1e200, 1e200, -1e200], "l2", 1e-3, dps=400)
    assert r == pytest.approx([2.5, 2.5, 1.0])
    assert math.isclose(ref.soft_rank_1d([1e-30, 2e-30, 1e-30], "l2", 1.0, dps=400)[0], 2.0,
                        rel_tol=1e-12)
