"""Array front end on NumPy (CPU) and CuPy (CUDA): validate, lay rows out, call a back end.

No torch import here. Every array is reshaped to contiguous (rows, n) rows along `dim`, solved
by the back end of its device (docs/CONTRACT.md), and laid back out in the caller's shape.
"""
import math

import numpy as np

from . import _validation as V


def _array_module(values):
    """numpy, or cupy for a CuPy array (imported only when one arrives)."""
    if type(values).__module__.split(".")[0] == "cupy":
        from . import _cuda

        return _cuda.require_cupy()
    return np


def _dtypes(dtype, xp):
    """(compute dtype, output dtype) for an input dtype, or a TypeError."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        if dtype in (np.float32, np.float64):
            return np.dtype(dtype), np.dtype(dtype)
        if dtype == np.float16:
            return np.dtype(np.float32), np.dtype(dtype)
        return np.dtype(np.float64), np.dtype(dtype)  # longdouble: solved in float64
    if kind in "iub":
        return np.dtype(np.float64), np.dtype(np.float64)
    if kind == "c":
        raise TypeError(f"values must be real, got complex dtype {np.dtype(dtype)}")
    raise TypeError(f"values must be a real numeric array, got dtype {np.dtype(dtype)}")


class _Layout:
    """How an (..., n, ...) input maps to contiguous (rows, n) rows and back."""

    def __init__(self, shape, axis):
        self.shape = tuple(shape)
        self.axis = axis
        self.moved_shape = self.shape[:axis] + self.shape[axis + 1:] + (self.shape[axis],)
        self.n = self.shape[axis]
        self.rows = math.prod(self.moved_shape[:-1])

    def to_rows(self, xp, array, dtype):
        moved = xp.moveaxis(array, self.axis, -1)
        return xp.ascontiguousarray(moved.reshape(self.rows, self.n), dtype=dtype)

    def from_rows(self, xp, rows, dtype):
        array = xp.moveaxis(rows.reshape(self.moved_shape), -1, self.axis)
        return xp.ascontiguousarray(array, dtype=dtype)


def _backend(xp):
    if xp is np:
        from . import _cpu_backend

        return _cpu_backend
    from . import _cuda

    return _cuda


def _device_context(xp, array):
    if xp is np:
        import contextlib

        return contextlib.nullcontext()
    return array.device  # a cupy.cuda.Device is a context manager


def soft_op_vjp(op, values, regularization, regularization_strength, dim, descending):
    """Forward of soft_rank/soft_sort on an array, plus its pullback (cotangent -> gradient)."""
    regularization = V.check_regularization(regularization)
    eps = V.check_regularization_strength(regularization_strength)
    descending = V.check_descending(descending)
    xp = _array_module(values)
    x = xp.asarray(values)
    compute_dtype, out_dtype = _dtypes(x.dtype, xp)
    axis = V.normalize_dim(dim, x.ndim)
    layout = _Layout(x.shape, axis)
    V.check_row_length(layout.n)
    sign = V.sign_for(op, descending)
    backend = _backend(xp)

    if x.size == 0:
        out = xp.empty(x.shape, dtype=out_dtype)

        def pullback_empty(cotangent):
            _check_cotangent(xp, cotangent, x.shape)
            return xp.empty(x.shape, dtype=out_dtype)

        return out, pullback_empty

    with _device_context(xp, x):
        x_rows = layout.to_rows(xp, x, compute_dtype)
        out_rows = xp.empty_like(x_rows)
        perm = xp.empty(x_rows.shape, dtype=np.int32)
        blocks = xp.empty(x_rows.shape, dtype=np.int32)
        backend.forward(op, regularization, x_rows, eps, sign, out_rows, perm, blocks)
        out = layout.from_rows(xp, out_rows, out_dtype)
    aux = out_rows if (op, regularization) == ("rank", "kl") else x_rows

    def pullback(cotangent):
        g = _check_cotangent(xp, cotangent, x.shape)
        with _device_context(xp, x):
            g_rows = layout.to_rows(xp, g, compute_dtype)
            grad_rows = xp.empty_like(g_rows)
            backend.backward(op, regularization, g_rows, perm, blocks, aux, eps, sign, grad_rows)
            return layout.from_rows(xp, grad_rows, out_dtype)

    return out, pullback


def _check_cotangent(xp, cotangent, shape):
    g = xp.asarray(cotangent)
    if g.shape != tuple(shape):
        raise ValueError(f"cotangent must have the output's shape {tuple(shape)}, got {g.shape}")
    if np.dtype(g.dtype).kind not in "fiub":
        raise TypeError(f"cotangent must be a real array, got dtype {g.dtype}")
    return g


def soft_op(op, values, regularization, regularization_strength, dim, descending):
    out, _ = soft_op_vjp(op, values, regularization, regularization_strength, dim, descending)
    return out
