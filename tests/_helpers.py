"""Small helpers shared by the softrank test modules (tolerances, conversions)."""

import numpy as np

import _reference as ref

OPS = ["rank", "sort"]
REGS = ["l2", "kl"]

# Relative accuracy asked of the library, relative to the scale of the computation.
BASE_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def to_numpy(a):
    """torch tensor / numpy array -> float64 numpy array (for comparisons)."""
    if hasattr(a, "detach"):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def computation_scale(op, reg, x, eps, dim=-1):
    """The magnitude of the numbers the computation handles, per element of the output
    (broadcast along ``dim``): the cancellation errors of a careful float implementation
    are proportional to it.

    rank: the projection works on x / eps and produces values in [1, n] -> n + max|x| / eps
          (kl multiplies by exp of such numbers: relative errors of the same order, times n).
    sort: outputs lie within [min x, max x]; the block arithmetic handles values of the
          order of max|x| (l2 only adds exact multiples of 1 / eps) -> 1 + max|x|.
          kl additionally takes logsumexp of rho / eps, whose rounding is ~ n / eps * u.
    """
    x = np.moveaxis(np.asarray(x, dtype=np.float64), dim, -1)
    n = x.shape[-1]
    xmax = np.max(np.abs(x), axis=-1, keepdims=True) if n else np.zeros(x.shape[:-1] + (1,))
    if op == "rank":
        scale = n + xmax / eps
        if reg == "kl":
            scale = scale * (1 + np.log(max(n, 1)))
    else:
        scale = 1 + xmax
        if reg == "kl":
            scale = scale + n / eps
    return np.moveaxis(np.broadcast_to(scale, x.shape), -1, dim)


def assert_matches_reference(got, x, op, reg, eps, *, dim=-1, descending=False, dtype=None,
                             rtol=None, expected=None, context=""):
    """Compare a softrank result with the reference, elementwise, within
    rtol * computation_scale.  ``x`` is the input as given to softrank."""
    x64 = to_numpy(x)
    if expected is None:
        expected = ref.soft_op(op, x64, reg, eps, dim=dim, descending=descending)
    got = to_numpy(got)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if rtol is None:
        rtol = BASE_RTOL[np.dtype(dtype if dtype is not None else np.float64)]
    tol = rtol * computation_scale(op, reg, x64, eps, dim)
    err = np.abs(got - expected)
    bad = ~(err <= tol)
    if np.any(bad):
        idx = np.argwhere(bad)[0]
        row = tuple(idx)
        raise AssertionError(
            f"{op}/{reg} eps={eps} dim={dim} descending={descending} {context}: "
            f"{int(bad.sum())}/{bad.size} elements off; first at {row}: got {got[row]!r}, "
            f"expected {expected[row]!r}, |err|={err[row]:.3g} > tol={tol[row]:.3g}; "
            f"max err/tol={np.max(err / tol):.3g}"
        )


def numerical_vjp_at_generic_point(f, x, v, h=1e-6):
    """Central-difference v^T J of the reference function f at x, or None when x is within
    a step of a kink (the pieces of soft sort/rank change where PAV blocks merge or split):
    detected by disagreement between steps h and h / 8."""
    coarse = ref.numerical_vjp(f, x, v, h)
    fine = ref.numerical_vjp(f, x, v, h / 8)
    scale = 1 + np.max(np.abs(coarse))
    if np.max(np.abs(coarse - fine)) > 1e-6 * scale:
        return None
    return coarse


def generic_input_and_vjp(rng, draw, f_of_x, cot, tries=20):
    """Draw inputs with ``draw()`` until the reference is smooth around them; return
    (x, numerical v^T J)."""
    for _ in range(tries):
        x = draw()
        expected = numerical_vjp_at_generic_point(f_of_x, x, cot)
        if expected is not None:
            return x, expected
    raise RuntimeError("could not draw a point away from kinks")
