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


class _Call:
    """One validated call: the array module, the input, its row layout and the solver's
    arguments."""

    def __init__(self, op, values, regularization, regularization_strength, dim, descending):
        self.op = op
        self.regularization = V.check_regularization(regularization)
        self.eps = V.check_regularization_strength(regularization_strength)
        descending = V.check_descending(descending)
        self.xp = _array_module(values)
        self.x = self.xp.asarray(values)
        self.compute_dtype, self.out_dtype = _dtypes(self.x.dtype, self.xp)
        self.layout = _Layout(self.x.shape, V.normalize_dim(dim, self.x.ndim))
        V.check_row_length(self.layout.n)
        self.sign = V.sign_for(op, descending)
        self.backend = _backend(self.xp)

    def empty(self):
        return self.xp.empty(self.x.shape, dtype=self.out_dtype)

    def rows(self, array):
        return self.layout.to_rows(self.xp, array, self.compute_dtype)

    def unrows(self, rows):
        return self.layout.from_rows(self.xp, rows, self.out_dtype)


def soft_op_vjp(op, values, regularization, regularization_strength, dim, descending):
    """Forward of soft_rank/soft_sort on an array, plus its pullback (cotangent -> gradient)."""
    call = _Call(op, values, regularization, regularization_strength, dim, descending)
    xp, x, backend = call.xp, call.x, call.backend
    args = (call.op, call.regularization)

    if x.size == 0:
        out = call.empty()

        def pullback_empty(cotangent):
            _check_cotangent(xp, cotangent, x.shape)
            return call.empty()

        return out, pullback_empty

    with _device_context(xp, x):
        x_rows = call.rows(x)
        out_rows = xp.empty_like(x_rows)
        perm = xp.empty(x_rows.shape, dtype=np.int32)
        blocks = xp.empty(x_rows.shape, dtype=np.int32)
        backend.forward(*args, x_rows, call.eps, call.sign, out_rows, perm, blocks)
        out = call.unrows(out_rows)
    aux = out_rows if args == ("rank", "kl") else x_rows

    def pullback(cotangent):
        g = _check_cotangent(xp, cotangent, x.shape)
        with _device_context(xp, x):
            g_rows = call.rows(g)
            grad_rows = xp.empty_like(g_rows)
            backend.backward(*args, g_rows, perm, blocks, aux, call.eps, call.sign, grad_rows)
            return call.unrows(grad_rows)

    return out, pullback


def _check_cotangent(xp, cotangent, shape):
    g = xp.asarray(cotangent)
    if g.shape != tuple(shape):
        raise ValueError(f"cotangent must have the output's shape {tuple(shape)}, got {g.shape}")
    if np.dtype(g.dtype).kind not in "fiub":
        raise TypeError(f"cotangent must be a real array, got dtype {g.dtype}")
    return g


_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)  # native byte order


def soft_op(op, values, regularization, regularization_strength, dim, descending):
    """soft_rank/soft_sort on an array: the forward alone, keeping no partition."""
    # The common call in fewer steps (the general path below costs ~20 us on a short row): a
    # C-contiguous native float32/float64 ndarray ranked along its last dimension, with plain
    # Python arguments that pass the general path's checks.
    if (type(values) is np.ndarray and type(regularization_strength) is float
            and 0.0 < regularization_strength < math.inf and type(regularization) is str
            and (descending is False or descending is True) and type(dim) is int
            and values.ndim and (dim == -1 or dim == values.ndim - 1) and values.shape[-1]
            and (values.dtype is _FLOAT32 or values.dtype is _FLOAT64)
            and values.flags.c_contiguous and regularization in ("l2", "kl")):
        from . import _cpu_backend

        rows = values.reshape(-1, values.shape[-1])  # a view
        out = _cpu_backend.forward_values(op, regularization, rows, regularization_strength,
                                          V.sign_for(op, descending))
        return out if values.ndim == 2 else out.reshape(values.shape)
    call = _Call(op, values, regularization, regularization_strength, dim, descending)
    if call.x.size == 0:
        return call.empty()
    with _device_context(call.xp, call.x):
        out_rows = call.backend.forward_values(call.op, call.regularization, call.rows(call.x),
                                               call.eps, call.sign)
        return call.unrows(out_rows)
