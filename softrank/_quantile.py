"""soft_quantile: the ascending soft sort along dim, interpolated linearly at q * (n - 1).

The interpolation is torch.quantile's and numpy.quantile's "linear" method, lerp(below, above,
weight) with weight = q (n - 1) - floor(q (n - 1)), written as both libraries write it
(a + weight (b - a) below one half, b - (1 - weight) (b - a) above), so that as the strength
goes to 0 (the hard sort) the result is theirs. It is linear in the sorted values: the NumPy
pullback is the soft sort's applied to its transpose.
"""
import math

from . import _contract as C


def quantile_arguments(q):
    """(the quantiles as Python floats, whether q was a scalar)."""
    shape = getattr(q, "shape", None)
    if isinstance(q, (bool, str, bytes)) or getattr(getattr(q, "dtype", None), "kind", "f") == "b":
        raise TypeError(f"q must be a float or a 1-D sequence of floats, got {type(q).__name__}")
    if shape is not None and len(shape) == 0 or isinstance(q, (int, float)):
        return C.check_quantiles([_as_float(q)]), True
    if shape is not None and len(shape) != 1:
        raise ValueError(f"q must be a float or 1-D, got shape {tuple(shape)}")
    values = q.tolist() if hasattr(q, "tolist") else list(q)
    if any(isinstance(v, (list, tuple)) or len(getattr(v, "shape", ())) for v in values):
        raise ValueError("q must be a float or 1-D, got a nested sequence")
    if not values:
        raise ValueError("q must hold at least one quantile, got an empty sequence")
    return C.check_quantiles([_as_float(v) for v in values]), False


def _as_float(v):
    if isinstance(v, (bool, str, bytes)) or not hasattr(v, "__float__") or isinstance(v, complex):
        raise TypeError(f"q must hold real numbers, got {type(v).__name__}")
    return float(v)


def positions(quantiles, n):
    """For each q: (index below, index above, weight) of position q (n - 1)."""
    out = []
    for q in quantiles:
        rank = q * (n - 1)
        below = math.floor(rank)
        out.append((below, min(below + 1, n - 1) if rank > below else below, rank - below))
    return out


def lerp(below, above, weight):
    """below + weight (above - below), as torch.lerp and numpy's quantile compute it."""
    if weight < 0.5:
        return below + weight * (above - below)
    return above - (1.0 - weight) * (above - below)


def _module(a):
    """torch, or the array module (numpy or cupy) of a."""
    name = type(a).__module__.split(".")[0]
    if name == "torch":
        import torch

        return torch
    if name == "cupy":
        import cupy

        return cupy
    import numpy

    return numpy


def _take(xp, a, index, axis):
    """a[..., index:index + 1, ...] along axis (kept as size 1)."""
    if xp.__name__ == "torch":
        return a.narrow(axis, index, 1)
    return xp.take(a, [index], axis=axis)


def interpolate(sorted_values, quantiles, scalar, dim, keepdim):
    """The quantiles of rows sorted ascending along dim, shaped as torch.quantile's result."""
    xp = _module(sorted_values)
    axis = C.normalize_dim(dim, sorted_values.ndim)
    n = sorted_values.shape[axis]
    if n == 0:
        raise ValueError("values must have at least one element along dim for a quantile")
    parts = [lerp(_take(xp, sorted_values, lo, axis), _take(xp, sorted_values, hi, axis), weight)
             for lo, hi, weight in positions(quantiles, n)]
    if scalar:
        out = parts[0]
    else:
        out = xp.stack(parts, 0)
        axis += 1
    if not keepdim:
        out = out.squeeze(axis) if xp.__name__ == "torch" else xp.squeeze(out, axis=axis)
    return out


def transpose(sorted_values, cotangent, quantiles, scalar, dim, keepdim, expected):
    """The cotangent of the sorted values from that of interpolate's result (arrays), whose
    shape is `expected`."""
    xp = _module(sorted_values)
    axis = C.normalize_dim(dim, sorted_values.ndim)
    n = sorted_values.shape[axis]
    g = xp.asarray(cotangent)
    if g.shape != tuple(expected):
        raise ValueError(f"cotangent must have the output's shape {tuple(expected)}, got "
                         f"{g.shape}")
    if scalar:
        g = g[None]
    if not keepdim:
        g = xp.expand_dims(g, axis + 1)
    grad = xp.zeros(sorted_values.shape, dtype=xp.result_type(sorted_values.dtype, g.dtype))
    moved = xp.moveaxis(grad, axis, -1)  # a view: writes land in grad
    for (lo, hi, weight), part in zip(positions(quantiles, n), g):
        part = xp.moveaxis(part, axis, -1)[..., 0]
        moved[..., lo] += (1.0 - weight) * part
        moved[..., hi] += weight * part
    return grad
