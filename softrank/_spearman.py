"""Differentiable Spearman and Pearson correlation along one axis.

Both functions accept PyTorch tensors (autograd, any device), NumPy arrays and CuPy
arrays, and return a result of the same kind.  Neither torch nor CuPy is imported here:
a torch tensor is recognised through ``sys.modules`` and CuPy is imported only when a
CuPy array comes in.
"""

import operator
import sys

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
        import cupy

        return cupy
    import numpy

    return numpy


def _check_pair(x, y, names):
    """Validate shapes; coerce a mixed torch/array pair to tensors."""
    torch = _torch_module(x, y)
    if torch is not None:
        # Allow e.g. a NumPy target next to a tensor prediction: the array becomes a
        # tensor on the tensor's device.
        ref = x if isinstance(x, torch.Tensor) else y
        like = dict(device=ref.device)
        if ref.is_floating_point():
            like["dtype"] = ref.dtype
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, **like)
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y, **like)
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
    return torch, x, y


def _normalize_dim(dim, ndim):
    try:
        d = operator.index(dim)
    except TypeError:
        raise TypeError(f"dim must be an int, got {type(dim).__name__}") from None
    if not -ndim <= d < ndim:
        raise ValueError(f"dim={dim} is out of range for inputs with {ndim} dimension(s)")
    return d % ndim


def _flat_tolerance(n):
    """Spread (2-norm of the centred slice) below which a slice counts as constant, in
    units of eps * max|value|.  Centring a constant slice leaves rounding noise of
    about sqrt(n) * eps * |value| (measured: < 5 sqrt(n) up to n = 1e6, float32, NumPy
    and torch); the tolerance is min(n, 16 sqrt(n)) of that unit."""
    return min(float(n), 16.0 * n ** 0.5)


def _pearson_torch(torch, x, y, dim):
    dtype = torch.promote_types(x.dtype, y.dtype)
    if dtype.is_complex:
        raise TypeError(f"complex inputs are not supported (got {dtype})")
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    out_dtype = dtype
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # sums of squared ranks overflow half precision
    x = x.to(dtype)
    y = y.to(dtype)
    n = x.shape[dim]
    if n == 0:
        return ((x.sum(dim) + y.sum(dim)) * 0).to(out_dtype)
    tiny = _flat_tolerance(n) * torch.finfo(dtype).eps
    xc = x - x.mean(dim, keepdim=True)
    yc = y - y.mean(dim, keepdim=True)
    sxx = (xc * xc).sum(dim)
    syy = (yc * yc).sum(dim)
    with torch.no_grad():
        # A slice whose spread is at rounding level relative to its magnitude is constant.
        flat = (sxx.sqrt() <= tiny * x.abs().amax(dim)) | (
            syy.sqrt() <= tiny * y.abs().amax(dim)
        )
    one = torch.ones((), dtype=dtype, device=x.device)
    # Safe denominators keep the gradient finite (exactly zero) on flat slices.
    nx = torch.where(flat, one, sxx).sqrt()
    ny = torch.where(flat, one, syy).sqrt()
    r = (xc * yc).sum(dim) / (nx * ny)
    r = torch.where(flat, torch.zeros((), dtype=dtype, device=x.device), r)
    return r.clamp(-1.0, 1.0).to(out_dtype)


def _pearson_array(xp, x, y, dim):
    dtype = xp.result_type(x.dtype, y.dtype)
    if dtype.kind == "c":
        raise TypeError(f"complex inputs are not supported (got {dtype})")
    if dtype.kind != "f":
        dtype = xp.dtype(xp.float64)
    out_dtype = dtype
    if dtype == xp.float16:
        dtype = xp.dtype(xp.float32)
    x = x.astype(dtype, copy=False)
    y = y.astype(dtype, copy=False)
    n = x.shape[dim]
    if n == 0:
        return xp.zeros(x.shape[:dim] + x.shape[dim + 1:], dtype=out_dtype)[()]
    tiny = _flat_tolerance(n) * float(xp.finfo(dtype).eps)
    xc = x - x.mean(axis=dim, keepdims=True)
    yc = y - y.mean(axis=dim, keepdims=True)
    sxx = (xc * xc).sum(axis=dim)
    syy = (yc * yc).sum(axis=dim)
    flat = (xp.sqrt(sxx) <= tiny * xp.abs(x).max(axis=dim)) | (
        xp.sqrt(syy) <= tiny * xp.abs(y).max(axis=dim)
    )
    den = xp.sqrt(xp.where(flat, 1, sxx) * xp.where(flat, 1, syy))
    r = xp.where(flat, 0, (xc * yc).sum(axis=dim) / den)
    r = xp.clip(r, -1.0, 1.0).astype(out_dtype, copy=False)
    return r[()]


def pearsonr(x, y, *, dim=-1):
    """Pearson correlation coefficient of ``x`` and ``y`` along ``dim``.

    Parameters
    ----------
    x, y : torch.Tensor, numpy.ndarray or cupy.ndarray
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
    """
    torch, x, y = _check_pair(x, y, ("x", "y"))
    d = _normalize_dim(dim, x.ndim)
    if torch is not None:
        return _pearson_torch(torch, x, y, d)
    return _pearson_array(_array_namespace(x), x, y, d)


def spearmanr(pred, target, *, dim=-1, regularization="l2", regularization_strength=1.0):
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
    pred, target : torch.Tensor, numpy.ndarray or cupy.ndarray
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
    torch, pred, target = _check_pair(pred, target, ("pred", "target"))
    d = _normalize_dim(dim, pred.ndim)
    if pred.shape[d] > 0:
        from . import soft_rank

        pred = soft_rank(pred, regularization, regularization_strength, dim=d)
        target = soft_rank(target, regularization, regularization_strength, dim=d)
    if torch is not None:
        return _pearson_torch(torch, pred, target, d)
    return _pearson_array(_array_namespace(pred), pred, target, d)
