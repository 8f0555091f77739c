"""Array front end on NumPy (CPU) and CuPy (CUDA): validate, lay rows out, call a back end.

No torch import here. Every array is reshaped to contiguous (rows, n) rows along `dim`, solved
by the back end of its device (docs/CONTRACT.md), and laid back out in the caller's shape.
"""
import math

import numpy as np

from . import _contract as V


def _array_module(values):
    """numpy, or cupy for a CuPy array (imported only when one arrives)."""
    if type(values).__module__.split(".")[0] == "cupy":
        from .cuda import _backend

        return _backend.require_cupy()
    if hasattr(values, "__cuda_array_interface__"):
        raise TypeError(f"values is a CUDA array of type {type(values).__name__}: pass a CuPy "
                        "array (cupy.asarray(values), no copy) or a torch tensor")
    return np


def _dtypes(dtype):
    """(compute dtype, output dtype) of an input dtype (softrank/_contract.py's policy)."""
    compute, out = V.solver_dtypes(np.dtype(dtype).name, "float64")
    return np.dtype(compute), np.dtype(out)


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
    from .cuda import _backend

    return _backend


def _device_context(xp, array):
    if xp is np:
        import contextlib

        return contextlib.nullcontext()
    return array.device  # a cupy.cuda.Device is a context manager


class _Call:
    """One validated call: the array module, the input, its row layout and the solver's
    arguments (eps: a float, or one float64 per row; target: the project modes' sorted target
    rows)."""

    def __init__(self, op, values, regularization, regularization_strength, dim, descending,
                 target=None):
        self.mode, self.eps, self.sign = V.call_spec(op, regularization,
                                                     regularization_strength, descending)
        if isinstance(values, np.ma.MaskedArray):
            raise TypeError("values must not be a masked array (the mask would be ignored); "
                            "pass values.filled(...) or the unmasked rows")
        self.xp = _array_module(values)
        self.x = self.xp.asarray(values)
        self.compute_dtype, self.out_dtype = _dtypes(self.x.dtype)
        self.layout = _Layout(self.x.shape, V.normalize_dim(dim, self.x.ndim))
        V.check_row_length(self.layout.n)
        self.backend = _backend(self.xp)
        if self.eps is None:  # one strength per slice
            self.eps = self._strength_rows(regularization_strength)
        self.target = None if target is None else self._target_rows(target)

    def _strength_rows(self, strength):
        xp, layout = self.xp, self.layout
        s = xp.asarray(strength)
        V.check_strength_kind(np.dtype(s.dtype).kind)
        batch = V.batch_shape(layout.shape, layout.axis)
        try:
            s = xp.broadcast_to(s, batch)
        except ValueError:
            raise V.strength_shape_error(s.shape, batch) from None
        s = xp.array(s.reshape(-1), dtype=np.float64)  # a copy: the caller's may change later
        V.check_strengths_positive(bool(xp.all((s > 0) & xp.isfinite(s))))
        return s

    def _target_rows(self, target):
        xp, layout, n = self.xp, self.layout, self.layout.n
        if isinstance(target, V.TopK):
            w = xp.zeros((1, n), dtype=self.compute_dtype)
            w[:, :V.check_k(target.k, n)] = 1
            return w
        w = xp.asarray(target)
        if np.dtype(w.dtype).kind not in "fiu":
            raise TypeError(f"w must be real numbers, got dtype {w.dtype}")
        if w.ndim == 1 and w.shape[0] == n:
            w = w.reshape(1, n)
        else:
            try:
                w = xp.broadcast_to(w, layout.shape)
            except ValueError:
                raise V.target_shape_error(w.shape, n, layout.shape) from None
            w = layout.to_rows(xp, w, self.compute_dtype)
        w = w.astype(self.compute_dtype, copy=False)
        V.check_target_values(bool(xp.isfinite(w).all()), bool((w > 0).all()),
                              V.is_kl(self.mode))
        return xp.ascontiguousarray(xp.sort(w, axis=-1)[:, ::-1])

    def empty(self):
        return self.xp.empty(self.x.shape, dtype=self.out_dtype)

    def rows(self, array):
        return self.layout.to_rows(self.xp, array, self.compute_dtype)

    def unrows(self, rows):
        return self.layout.from_rows(self.xp, rows, self.out_dtype)


def soft_op_vjp(op, values, regularization, regularization_strength, dim, descending,
                target=None):
    """Forward of a soft op on an array, plus its pullback (cotangent -> gradient w.r.t.
    values).

    The pullback keeps its own copies of what it reads, so that later changes to the caller's
    input or to the returned output cannot change the gradients it gives.
    """
    call = _Call(op, values, regularization, regularization_strength, dim, descending, target)
    xp, x, backend, mode = call.xp, call.x, call.backend, call.mode

    if x.size == 0:
        out = call.empty()

        def pullback_empty(cotangent):
            _check_cotangent(xp, cotangent, x.shape)
            return call.empty()

        return out, pullback_empty

    with _device_context(xp, x):
        x_rows = call.rows(x)
        out_rows, perm, blocks = backend.forward(mode, x_rows, call.eps, call.sign, call.target)
        out = call.unrows(out_rows)
        aux = V.aux_of(mode, x_rows, out_rows)
        if aux is not None and (xp.shares_memory(aux, x) or xp.shares_memory(aux, out)):
            aux = aux.copy()

    def pullback(cotangent):
        g = _check_cotangent(xp, cotangent, x.shape)
        with _device_context(xp, x):
            grad_rows = backend.backward(mode, call.rows(g), perm, blocks, aux, call.eps,
                                         call.sign)
            return call.unrows(grad_rows)

    return out, pullback


def _check_cotangent(xp, cotangent, shape):
    g = xp.asarray(cotangent)
    if g.shape != tuple(shape):
        raise ValueError(f"cotangent must have the output's shape {tuple(shape)}, got {g.shape}")
    if np.dtype(g.dtype).kind not in "fiub":
        raise TypeError(f"cotangent must be a real array, got dtype {g.dtype}")
    return g


def soft_op(op, values, regularization, regularization_strength, dim, descending, target=None):
    """A soft op on an array: the forward alone, keeping no partition (target: as
    softrank/_torch.py's soft_op takes it)."""
    call = _Call(op, values, regularization, regularization_strength, dim, descending, target)
    if call.x.size == 0:
        return call.empty()
    with _device_context(call.xp, call.x):
        out_rows = call.backend.forward_values(call.mode, call.rows(call.x), call.eps, call.sign,
                                               call.target)
        return call.unrows(out_rows)
