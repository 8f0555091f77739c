"""A slow, independent, pure-Python reference for soft sorting and ranking.

Written from the paper (Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable
Sorting and Ranking", ICML 2020, arXiv:2002.08871) and the conventions of
fast-soft-sort / torchsort -- deliberately *not* from docs/CONTRACT.md, whose closed
forms the library implements.  Everything here is plain Python loops over lists of
numbers so that it is easy to read and check:

* ``isotonic_l2`` / ``isotonic_kl`` solve the *decreasing* isotonic problems of the
  paper (Prop. 3) with the pool-adjacent-violators algorithm, recomputing each block's
  optimal value from its definition whenever blocks are pooled.
* ``project`` is the projection onto the permutahedron, P(z, w) = z - v(z_sorted, w)
  un-permuted, with v the isotonic solution (L2: v = iso(s - w); KL: v = iso_kl(s, w)).
* soft_rank(x)  = P(x / eps, rho)          (l2)
                = exp(P_E(x / eps, log rho)) (kl)        rho = (n, n-1, ..., 1)
  soft_sort(x)  = sign * P(rho / eps, sign * x)           sign = -1 ascending, +1 descending
  Ranks are ascending (the smallest value gets ~1) unless ``descending``.

The arithmetic is either float64 (the default) or, with ``dps=<digits>``, mpmath
multiprecision, which makes the reference trustworthy for huge or tiny magnitudes.

It also provides brute-force checks of the reference itself (membership in the
permutahedron by enumerating subsets, optimality of the projection by enumerating the
permutahedron's vertices, the min-max formula of isotonic regression) and a
central-difference numerical Jacobian.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "isotonic_l2",
    "isotonic_kl",
    "isotonic_minmax",
    "project",
    "soft_rank_1d",
    "soft_sort_1d",
    "soft_rank",
    "soft_sort",
    "soft_op",
    "numerical_jacobian",
    "numerical_vjp",
    "in_permutahedron",
    "projection_violation_l2",
    "projection_violation_kl",
]


# --------------------------------------------------------------------------------------
# Arithmetic back ends: float64 or mpmath.
# --------------------------------------------------------------------------------------
class _Float64:
    """Plain float64 arithmetic."""

    def num(self, x):
        return float(x)

    def exp(self, x):
        try:
            return math.exp(x)
        except OverflowError:
            return math.inf

    def log(self, x):
        return math.log(x) if x > 0 else -math.inf

    def to_float(self, x):
        return float(x)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _MP:
    """mpmath arithmetic with ``dps`` significant decimal digits."""

    def __init__(self, dps):
        import mpmath

        self.mpmath = mpmath
        self.dps = dps

    def num(self, x):
        return self.mpmath.mpf(float(x)) if not isinstance(x, self.mpmath.mpf) else x

    def exp(self, x):
        return self.mpmath.exp(x)

    def log(self, x):
        return self.mpmath.log(x)

    def to_float(self, x):
        return float(x)

    def __enter__(self):
        self._ctx = self.mpmath.workdps(self.dps)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _backend(dps):
    return _Float64() if dps is None else _MP(dps)


def _mean(values):
    total = values[0] * 0
    for v in values:
        total = total + v
    return total / len(values)


def _logsumexp(values, be):
    m = max(values)
    total = values[0] * 0
    for v in values:
        total = total + be.exp(v - m)
    return m + be.log(total)


# --------------------------------------------------------------------------------------
# Isotonic regression (decreasing), by pool-adjacent-violators.
# --------------------------------------------------------------------------------------
def _pav_decreasing(n, block_value):
    """Generic PAV for min sum_i f_i(v_i) s.t. v_1 >= v_2 >= ... >= v_n.

    ``block_value(a, b)`` returns the minimiser of sum_{i in [a, b)} f_i(v) over a
    single common value v.  Points are visited left to right; every point opens its own
    block, and while the block to its left does not have a strictly larger value
    (i.e. the decreasing constraint is violated or tight) the two are pooled and the
    pooled value recomputed from scratch.  Returns the solution (a list) and the
    blocks as (start, end) pairs.
    """
    blocks = []  # list of [start, end, value]
    for i in range(n):
        start, end = i, i + 1
        value = block_value(start, end)
        while blocks and blocks[-1][2] <= value:
            start = blocks.pop()[0]
            value = block_value(start, end)
        blocks.append([start, end, value])
    solution = []
    for start, end, value in blocks:
        solution.extend([value] * (end - start))
    return solution, [(a, b) for a, b, _ in blocks]


def isotonic_l2(y, *, dps=None, return_blocks=False):
    """argmin_{v_1 >= ... >= v_n} 0.5 * sum_i (v_i - y_i)^2  (block value: mean of y)."""
    be = _backend(dps)
    with be:
        y = [be.num(v) for v in y]
        sol, blocks = _pav_decreasing(len(y), lambda a, b: _mean(y[a:b]))
        out = [be.to_float(v) for v in sol] if dps is None else sol
    return (out, blocks) if return_blocks else out


def isotonic_kl(y, w, *, dps=None, return_blocks=False):
    """argmin_{v_1 >= ... >= v_n} sum_i exp(y_i - v_i) + exp(w_i) * v_i.

    Setting the derivative of the block objective to zero,
    sum_B exp(y_i - v) = sum_B exp(w_i), gives v_B = logsumexp(y_B) - logsumexp(w_B).
    """
    be = _backend(dps)
    with be:
        y = [be.num(v) for v in y]
        w = [be.num(v) for v in w]
        sol, blocks = _pav_decreasing(
            len(y), lambda a, b: _logsumexp(y[a:b], be) - _logsumexp(w[a:b], be)
        )
        out = [be.to_float(v) for v in sol] if dps is None else sol
    return (out, blocks) if return_blocks else out


def isotonic_minmax(n, block_value):
    """Brute-force decreasing isotonic regression by the min-max formula.

    For separable strictly convex losses, v_i = min_{j <= i} max_{k >= i} m(j, k) where
    m(j, k) is the optimal common value of block [j, k]; the max-min form
    max_{k >= i} min_{j <= i} m(j, k) gives the same answer.  O(n^3) block values.
    Returns both forms.
    """
    m = {(j, k): block_value(j, k + 1) for j in range(n) for k in range(j, n)}
    minmax = [min(max(m[j, k] for k in range(i, n)) for j in range(i + 1)) for i in range(n)]
    maxmin = [max(min(m[j, k] for j in range(i + 1)) for k in range(i, n)) for i in range(n)]
    return minmax, maxmin


# --------------------------------------------------------------------------------------
# Projection onto the permutahedron and the soft operators.
# --------------------------------------------------------------------------------------
def project(z, w, regularization="l2", *, dps=None):
    """P_Q(z, w) (l2) or P_E(z, w) (kl), for 1-D sequences z, w of equal length.

    l2: argmin_{mu in P(w)} ||mu - z||^2;  kl: log argmin_{mu in P(e^w)} KL(mu, e^z).
    Computed as z - v(s, w_sorted) un-permuted, with s = z sorted in decreasing order.
    """
    be = _backend(dps)
    with be:
        z = [be.num(v) for v in z]
        w = [be.num(v) for v in w]
        n = len(z)
        order = sorted(range(n), key=lambda i: -z[i])  # stable: ties in index order
        s = [z[i] for i in order]
        w_sorted = sorted(w, reverse=True)
        if regularization == "l2":
            dual = isotonic_l2([s[j] - w_sorted[j] for j in range(n)], dps=dps)
        elif regularization == "kl":
            dual = isotonic_kl(s, w_sorted, dps=dps)
        else:
            raise ValueError(regularization)
        primal = [s[j] - dual[j] for j in range(n)]
        out = [None] * n
        for j, i in enumerate(order):
            out[i] = primal[j]
    return out


def soft_rank_1d(x, regularization="l2", regularization_strength=1.0, descending=False, *, dps=None):
    """Soft ranks of a 1-D sequence (1-based, ascending unless ``descending``)."""
    be = _backend(dps)
    with be:
        n = len(x)
        if n == 0:
            return []
        eps = be.num(regularization_strength)
        sign = -1 if descending else 1
        theta = [sign * be.num(v) / eps for v in x]
        rho = [be.num(n - j) for j in range(n)]
        if regularization == "l2":
            out = project(theta, rho, "l2", dps=dps)
        else:
            out = [be.exp(v) for v in project(theta, [be.log(r) for r in rho], "kl", dps=dps)]
        return [be.to_float(v) for v in out]


def soft_sort_1d(x, regularization="l2", regularization_strength=1.0, descending=False, *, dps=None):
    """Soft sort of a 1-D sequence (ascending unless ``descending``), in sorted order."""
    be = _backend(dps)
    with be:
        n = len(x)
        if n == 0:
            return []
        eps = be.num(regularization_strength)
        sign = 1 if descending else -1
        rho_over_eps = [be.num(n - j) / eps for j in range(n)]
        out = project(rho_over_eps, [sign * be.num(v) for v in x], regularization, dps=dps)
        return [be.to_float(sign * v) for v in out]


def soft_op(op, values, regularization="l2", regularization_strength=1.0, *, dim=-1,
            descending=False, dps=None):
    """Apply soft_rank_1d / soft_sort_1d along ``dim`` of an array; returns float64."""
    fn = {"rank": soft_rank_1d, "sort": soft_sort_1d}[op]
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError("0-d")
    moved = np.moveaxis(x, dim, -1)
    out = np.empty(moved.shape, dtype=np.float64)
    if out.size == 0:
        return np.moveaxis(out, -1, dim)
    flat_in = moved.reshape(-1, moved.shape[-1])
    flat_out = out.reshape(-1, moved.shape[-1])
    for r in range(flat_in.shape[0]):
        flat_out[r] = fn(list(flat_in[r]), regularization, regularization_strength,
                         descending, dps=dps)
    return np.moveaxis(out, -1, dim)


def soft_rank(values, regularization="l2", regularization_strength=1.0, *, dim=-1,
              descending=False, dps=None):
    return soft_op("rank", values, regularization, regularization_strength, dim=dim,
                   descending=descending, dps=dps)


def soft_sort(values, regularization="l2", regularization_strength=1.0, *, dim=-1,
              descending=False, dps=None):
    return soft_op("sort", values, regularization, regularization_strength, dim=dim,
                   descending=descending, dps=dps)


# --------------------------------------------------------------------------------------
# Numerical differentiation.
# --------------------------------------------------------------------------------------
def numerical_jacobian(f, x, h=1e-6):
    """Central-difference Jacobian of f: R^n -> R^m at the 1-D float64 point x; (m, n)."""
    x = np.asarray(x, dtype=np.float64)
    f0 = np.asarray(f(x), dtype=np.float64)
    jac = np.empty((f0.size, x.size))
    for i in range(x.size):
        xp = x.copy()
        xm = x.copy()
        xp[i] += h
        xm[i] -= h
        jac[:, i] = (np.asarray(f(xp)).ravel() - np.asarray(f(xm)).ravel()) / (2 * h)
    return jac


def numerical_vjp(f, x, v, h=1e-6):
    """v^T J by central differences, for array-valued f on array x (any shape)."""
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    jac = numerical_jacobian(lambda flat: np.asarray(f(flat.reshape(x.shape))).ravel(), x.ravel(), h)
    return (v.ravel() @ jac).reshape(x.shape)


# --------------------------------------------------------------------------------------
# Brute-force checks of the projection (small n only).
# --------------------------------------------------------------------------------------
def in_permutahedron(mu, w, tol):
    """mu in P(w) = conv{permutations of w}?  By definition of the permutahedron's facets:
    sum(mu) == sum(w) and, for every non-empty subset S, sum_S mu <= sum of the |S|
    largest entries of w.  Enumerates all 2^n subsets."""
    mu = [float(v) for v in mu]
    w_desc = sorted((float(v) for v in w), reverse=True)
    n = len(mu)
    if abs(sum(mu) - sum(w_desc)) > tol:
        return False
    for size in range(1, n):
        bound = sum(w_desc[:size])
        for subset in itertools.combinations(range(n), size):
            if sum(mu[i] for i in subset) > bound + tol:
                return False
    return True


def projection_violation_l2(mu, z, w):
    """max over vertices p of P(w) of <z - mu, p - mu>; <= 0 iff mu is the Euclidean
    projection of z onto P(w) (given mu in P(w)).  Enumerates all n! permutations."""
    mu = np.asarray(mu, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    return max(float(np.dot(z - mu, np.asarray(p) - mu)) for p in itertools.permutations(w))


def projection_violation_kl(mu, z, w):
    """max over vertices p of P(w) of -<log mu - z, p - mu>; <= 0 iff mu minimises
    KL(mu, e^z) = sum mu log(mu / e^z) - mu + e^z over P(w) (given mu in P(w))."""
    mu = np.asarray(mu, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    grad = np.log(mu) - z
    return max(float(-np.dot(grad, np.asarray(p) - mu)) for p in itertools.permutations(w))
