"""Differentiable Spearman and Pearson correlation along one axis.

Both functions accept PyTorch tensors (autograd, any device), NumPy arrays and CuPy
arrays, and return a result of the same kind.  Neither torch nor CuPy is imported here:
a torch tensor is recognised through ``sys.modules`` and CuPy is imported only when a
CuPy array comes in.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, SupportsFloat, Union, overload

from . import _contract as C

if TYPE_CHECKING:  # for type checkers only: neither torch nor CuPy is imported at run time
    import numpy
    import numpy.typing as npt
    import torch

    from ._api import _CudaArrayT, _FloatArray, _Regularization

    #: NumPy results: an array, or a NumPy scalar for 1-D input.
    _FloatResult = Union[_FloatArray, numpy.floating[Any]]

__all__ = ["spearmanr", "pearsonr"]


def _torch_module(*arrays):
    """Return the torch module if any of ``arrays`` is a torch tensor, else None."""
    torch = sys.modules.get("torch")
    if torch is not None and any(isinstance(a, torch.Tensor) for a in arrays):
        return torch
    return None


def _array_namespace(x):
    """NumPy or CuPy, whichever the (non-torch) array ``x`` belongs to."""
    if type(x).__module__.startswith("cupy"):
        from .cuda import _backend

        return _backend.require_cupy()
    import numpy

    return numpy


def _check_pair(x, y, names):
    """(xp, x, y): both inputs as arrays of one library (torch, NumPy or CuPy) and one shape.

    A torch tensor paired with an array makes the array a tensor on the tensor's device, in
    the wider dtype of the two (the dtype is chosen later, by _pearson).
    """
    torch = _torch_module(x, y)
    if torch is not None:
        ref = x if isinstance(x, torch.Tensor) else y
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device=ref.device)
        y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y, device=ref.device)
        xp = torch
    else:
        xp = _array_namespace(x)
        if _array_namespace(y) is not xp:
            raise TypeError(
                f"{names[0]} and {names[1]} must come from the same array library, got "
                f"{type(x).__module__}.{type(x).__name__} and "
                f"{type(y).__module__}.{type(y).__name__}"
            )
        x = xp.asarray(x)
        y = xp.asarray(y)
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got "
            f"{names[0]}.shape={tuple(x.shape)} and {names[1]}.shape={tuple(y.shape)}"
        )
    if x.ndim == 0:
        raise ValueError(
            f"{names[0]} and {names[1]} must have at least one dimension (got 0-d inputs)"
        )
    return xp, x, y


def _flat_tolerance(n):
    """Spread (2-norm of the centred slice) below which a slice counts as constant, in
    units of eps * max|value|: centring a constant slice leaves rounding noise of about
    sqrt(n) * eps * |value|; the tolerance is min(n, 16 sqrt(n)) of that unit."""
    return min(float(n), 16.0 * n ** 0.5)


def _dtypes(xp, x, y):
    """(compute, output) dtype of the pair: the wider of the two, by softrank/_contract.py's
    policy (integers become float64 for arrays, torch's default dtype for tensors)."""
    if xp is sys.modules.get("torch"):
        wider = str(xp.promote_types(x.dtype, y.dtype)).replace("torch.", "")
        integer = str(xp.get_default_dtype()).replace("torch.", "")
    else:
        wider, integer = xp.result_type(x.dtype, y.dtype).name, "float64"
    compute, out = C.solver_dtypes(wider, integer)
    return getattr(xp, compute), getattr(xp, out)


def _astype(xp, a, dtype):
    return a.to(dtype) if xp is sys.modules.get("torch") else a.astype(dtype, copy=False)


def _pearson(xp, x, y, dim):
    """Pearson correlation along dim, for torch, NumPy and CuPy alike (see pearsonr)."""
    compute, out_dtype = _dtypes(xp, x, y)
    x, y = _astype(xp, x, compute), _astype(xp, y, compute)
    n = x.shape[dim]
    if n == 0:
        return _astype(xp, (x.sum(axis=dim) + y.sum(axis=dim)) * 0, out_dtype)[()]
    tiny = _flat_tolerance(n) * float(xp.finfo(compute).eps)
    sxx, syy, sxy = _scaled_moments(xp, x, y, dim)
    # A slice whose spread is at rounding level relative to its magnitude (1 after scaling) is
    # constant; NaN stays NaN (a comparison with NaN is False).
    flat = (xp.sqrt(_detached(sxx)) <= tiny) | (xp.sqrt(_detached(syy)) <= tiny)
    # Safe denominators keep the gradient finite (exactly zero) on flat slices; 0 * sxx * syy
    # is 0 there, or NaN when the slice holds NaN.
    den = xp.sqrt(xp.where(flat, 1.0, sxx) * xp.where(flat, 1.0, syy))
    r = xp.where(flat, 0 * sxx * syy, sxy / den)
    return _astype(xp, r.clip(-1.0, 1.0), out_dtype)[()]


def _scaled_moments(xp, x, y, dim):
    """Centred second moments of x / max|x| and y / max|y| along dim: the correlation does not
    change, and no sum of squares overflows or underflows at any finite scale."""
    moments = []
    for a in (x, y):
        scale = _detached(xp.amax(xp.abs(a), axis=dim, keepdims=True))
        a = a / xp.where(scale > 0, scale, 1.0)
        moments.append(a - a.mean(axis=dim, keepdims=True))
    xc, yc = moments
    return ((xc * xc).sum(axis=dim), (yc * yc).sum(axis=dim), (xc * yc).sum(axis=dim))


def _detached(a):
    return a.detach() if hasattr(a, "detach") else a


@overload
def pearsonr(
    x: torch.Tensor, y: torch.Tensor | npt.ArrayLike, *, dim: int = -1
) -> torch.Tensor: ...


@overload
def pearsonr(x: npt.ArrayLike, y: torch.Tensor, *, dim: int = -1) -> torch.Tensor: ...


@overload
def pearsonr(x: _CudaArrayT, y: _CudaArrayT, *, dim: int = -1) -> _CudaArrayT: ...


@overload
def pearsonr(x: npt.ArrayLike, y: npt.ArrayLike, *, dim: int = -1) -> _FloatResult: ...


def pearsonr(x: Any, y: Any, *, dim: int = -1) -> Any:
    """Pearson correlation coefficient of ``x`` and ``y`` along ``dim``.

    Parameters
    ----------
    x, y : torch.Tensor, numpy.ndarray, cupy.ndarray or array_like
        Inputs of the same shape.  A torch tensor may be paired with an array (it is
        converted to a tensor on the tensor's device); NumPy and CuPy cannot be mixed.
    dim : int
        The axis along which the correlation is computed; every other axis is a batch
        axis.

    Returns
    -------
    The correlation of each slice, with the input's shape minus ``dim``, as a tensor
    (differentiable) or array of the input's kind (a NumPy scalar for 1-D NumPy input).
    Integer inputs are computed in float64 (arrays) or torch's default dtype; half
    precision is computed in float32 and returned in the input's dtype.

    Zero variance
    -------------
    The correlation is undefined when a slice of ``x`` or ``y`` is constant (its spread
    is at rounding level relative to its magnitude), and when the slice is empty.  Such a
    slice gives **0** (the neutral value, "no association"), never NaN, and its gradient
    with respect to both inputs is exactly zero.  NaN in the input still propagates.

    Examples
    --------
    >>> import numpy as np, softrank
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 40.0]])
    >>> y = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    >>> softrank.pearsonr(x, y).round(4)  # one correlation per row; the outlier lowers it
    array([1.   , 0.801])
    >>> softrank.spearmanr(x, y, regularization_strength=1e-3).round(4)  # ranks ignore it
    array([1., 1.])
    >>> round(float(softrank.pearsonr([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0])), 4)
    0.9648
    """
    xp, x, y = _check_pair(x, y, ("x", "y"))
    return _pearson(xp, x, y, C.normalize_dim(dim, x.ndim))


@overload
def spearmanr(
    pred: torch.Tensor,
    target: torch.Tensor | npt.ArrayLike,
    *,
    dim: int = -1,
    regularization: _Regularization = "l2",
    regularization_strength: SupportsFloat = 1.0,
) -> torch.Tensor: ...


@overload
def spearmanr(
    pred: npt.ArrayLike,
    target: torch.Tensor,
    *,
    dim: int = -1,
    regularization: _Regularization = "l2",
    regularization_strength: SupportsFloat = 1.0,
) -> torch.Tensor: ...


@overload
def spearmanr(
    pred: _CudaArrayT,
    target: _CudaArrayT,
    *,
    dim: int = -1,
    regularization: _Regularization = "l2",
    regularization_strength: SupportsFloat = 1.0,
) -> _CudaArrayT: ...


@overload
def spearmanr(
    pred: npt.ArrayLike,
    target: npt.ArrayLike,
    *,
    dim: int = -1,
    regularization: _Regularization = "l2",
    regularization_strength: SupportsFloat = 1.0,
) -> _FloatResult: ...


def spearmanr(
    pred: Any,
    target: Any,
    *,
    dim: int = -1,
    regularization: _Regularization = "l2",
    regularization_strength: SupportsFloat = 1.0,
) -> Any:
    """Differentiable Spearman rank correlation of ``pred`` and ``target`` along ``dim``.

    Both inputs are replaced by their soft ranks
    (``softrank.soft_rank(..., regularization, regularization_strength, dim=dim)``) and
    the Pearson correlation of the two rank vectors is returned for every slice along
    ``dim``.  With a small ``regularization_strength`` (relative to the gaps between the
    values) the soft ranks are the exact ranks, ties receive their average rank, and
    the result equals ``scipy.stats.spearmanr`` -- but then the gradient is zero, as
    for hard ranks.  Larger strengths give smoother, informative gradients.  The strength is in the units of the values: with
    ``"l2"``, neighbours (in sorted order) closer than the strength share a blended
    rank, and once it exceeds the largest such gap the soft ranks are an affine
    function of the values, so ``spearmanr`` becomes ``pearsonr``.  Standardise the
    inputs, or scale the strength with them (for n standardised values the gaps are
    about 4 / n).

    Parameters
    ----------
    pred, target : torch.Tensor, numpy.ndarray, cupy.ndarray or array_like
        Inputs of the same shape.  For torch input the result is differentiable with
        respect to both (detach ``target`` if it should not receive a gradient).  A
        torch tensor may be paired with an array, which is converted to a tensor.
    dim : int
        The axis holding the items to rank; every other axis is a batch axis.
    regularization : {"l2", "kl"}
    regularization_strength : float > 0

    Returns
    -------
    rho with the input's shape minus ``dim``, of the input's kind (tensor / array, a
    NumPy scalar for 1-D NumPy input), in ``[-1, 1]``.

    Zero variance: a constant slice of ``pred`` or ``target`` (or an empty one) has no
    defined rank correlation; it gives **0**, not NaN, with an exactly zero gradient for
    that slice.  Note that a model whose predictions are all equal therefore gets no
    gradient from this loss: initialise it so that its outputs differ.

    Examples
    --------
    >>> import numpy as np, softrank
    >>> pred = np.array([[0.1, 0.4, 0.35, 0.8], [1.0, 2.0, 3.0, 4.0]])
    >>> target = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    >>> softrank.spearmanr(pred, target, regularization_strength=1e-3).round(4)
    array([ 0.8, -1. ])
    >>> softrank.spearmanr(pred, target).round(4)  # default strength 1.0: blended ranks
    array([ 0.9134, -1.    ])
    >>> float(softrank.spearmanr(np.ones(4), np.arange(4.0)))  # constant: 0, not NaN
    0.0
    """
    C.check_regularization(regularization)
    C.check_regularization_strength(regularization_strength)
    xp, pred, target = _check_pair(pred, target, ("pred", "target"))
    d = C.normalize_dim(dim, pred.ndim)
    if pred.shape[d] > 0:
        from . import soft_rank

        pred = soft_rank(pred, regularization, regularization_strength, dim=d)
        target = soft_rank(target, regularization, regularization_strength, dim=d)
    return _pearson(xp, pred, target, d)
