"""Public functions: route each input to the torch or the array front end."""
from __future__ import annotations

import sys
from typing import (TYPE_CHECKING, Any, Callable, Dict, Literal, Sequence, SupportsFloat, Tuple,
                    Union, overload)

from . import _array, _quantile
from . import _contract

if TYPE_CHECKING:  # for type checkers only: importing softrank imports neither torch nor CuPy
    from typing import Protocol, TypeVar

    import numpy
    import numpy.typing as npt
    import torch

    class _CudaArray(Protocol):
        """A CUDA array such as ``cupy.ndarray`` (anything with ``__cuda_array_interface__``)."""

        @property
        def __cuda_array_interface__(self) -> Dict[str, Any]: ...

    _CudaArrayT = TypeVar("_CudaArrayT", bound=_CudaArray)
    #: NumPy results: floating arrays (integer and bool inputs become float64).
    _FloatArray = npt.NDArray[numpy.floating[Any]]
    _Regularization = Literal["l2", "kl"]
    #: One strength for all, or one per slice (arrays, tensors; a learnable tensor).
    _Strength = Union[SupportsFloat, Sequence[SupportsFloat], numpy.ndarray[Any, Any],
                      torch.Tensor]
    _Quantiles = Union[float, Sequence[float], numpy.ndarray[Any, Any], torch.Tensor]


def _is_torch_tensor(values: object) -> bool:
    torch = sys.modules.get("torch")  # never import torch for a NumPy user
    return torch is not None and isinstance(values, torch.Tensor)


# Front end by exact input type: which front end takes an input depends only on its type.
_front_end_of_type: Dict[type, Any] = {}


def _front_end(values: object) -> Any:
    front_end = _front_end_of_type.get(type(values))
    if front_end is None:
        if _is_torch_tensor(values):
            from . import _torch  # imported on first use: NumPy users never import torch

            front_end = _torch
        else:
            front_end = _array
        _front_end_of_type[type(values)] = front_end
    return front_end


_COMMON_PARAMETERS = """
    Parameters
    ----------
    values : torch.Tensor, numpy.ndarray, cupy.ndarray or array_like, shape (..., n, ...)
        Input of any rank >= 1. torch tensors (CPU or CUDA) support autograd; other inputs are
        converted with ``numpy.asarray`` unless they are CuPy arrays. float32/float64 are solved
        natively, float16/bfloat16 in float32; integer and bool inputs become float64 (NumPy) or
        ``torch.get_default_dtype()`` (torch). A row holding NaN or +-inf gives a NaN row.
    regularization : {{"l2", "kl"}}, default "l2"
        Quadratic ("l2") or entropic ("kl") regularization of the projection.
    regularization_strength : float, default 1.0
        eps > 0. As eps -> 0 the result tends to the hard {what}.
    dim : int, default -1
        Dimension along which to {verb}.
    descending : bool, default False
        {descending}
"""

_NOTES = """
    Notes
    -----
    With :math:`\\rho = (n, n-1, \\dots, 1)` and :math:`P(z, w)` the projection of :math:`z` onto
    the permutahedron of :math:`w` (Euclidean for "l2", KL for "kl"), the soft rank is
    :math:`r_\\varepsilon(\\theta) = P(\\theta/\\varepsilon, \\rho)` and the soft sort is
    :math:`s_\\varepsilon(\\theta) = -P(\\rho/\\varepsilon, -\\theta)` (ascending); both reduce to
    an isotonic regression on the sorted input, solved by pool-adjacent-violators in
    :math:`O(n \\log n)`; the gradient costs :math:`O(n)`.

    References
    ----------
    M. Blondel, O. Teboul, Q. Berthet, J. Djolonga. Fast Differentiable Sorting and Ranking.
    ICML 2020. arXiv:2002.08871.
"""


if TYPE_CHECKING:
    class _SoftOp(Protocol):
        """soft_rank and soft_sort: the output has the input's type (array-likes give NumPy)."""

        @overload
        def __call__(self, values: torch.Tensor, regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     descending: bool = False) -> torch.Tensor: ...

        @overload
        def __call__(self, values: _CudaArrayT, regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     descending: bool = False) -> _CudaArrayT: ...

        @overload
        def __call__(self, values: npt.ArrayLike, regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     descending: bool = False) -> _FloatArray: ...

    class _SoftOpVjp(Protocol):
        """soft_rank_vjp and soft_sort_vjp: (output, pullback), typed as the input."""

        @overload
        def __call__(self, values: torch.Tensor, regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     descending: bool = False,
                     ) -> Tuple[torch.Tensor, Callable[[torch.Tensor | npt.ArrayLike],
                                                       torch.Tensor]]: ...

        @overload
        def __call__(self, values: _CudaArrayT, regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     descending: bool = False,
                     ) -> Tuple[_CudaArrayT, Callable[[_CudaArrayT], _CudaArrayT]]: ...

        @overload
        def __call__(self, values: npt.ArrayLike, regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     descending: bool = False,
                     ) -> Tuple[_FloatArray, Callable[[npt.ArrayLike], _FloatArray]]: ...


    class _ProjectOp(Protocol):
        """project_permutahedron: the output has the input's type."""

        @overload
        def __call__(self, values: torch.Tensor, w: torch.Tensor | npt.ArrayLike,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *,
                     dim: int = -1) -> torch.Tensor: ...

        @overload
        def __call__(self, values: _CudaArrayT, w: Any, regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *,
                     dim: int = -1) -> _CudaArrayT: ...

        @overload
        def __call__(self, values: npt.ArrayLike, w: npt.ArrayLike,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *,
                     dim: int = -1) -> _FloatArray: ...

    class _TopKOp(Protocol):
        """soft_topk: the output has the input's type."""

        @overload
        def __call__(self, values: torch.Tensor, k: int, regularization: Literal["l2"] = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     largest: bool = True) -> torch.Tensor: ...

        @overload
        def __call__(self, values: _CudaArrayT, k: int, regularization: Literal["l2"] = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     largest: bool = True) -> _CudaArrayT: ...

        @overload
        def __call__(self, values: npt.ArrayLike, k: int, regularization: Literal["l2"] = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     largest: bool = True) -> _FloatArray: ...

    class _TopKVjp(Protocol):
        """soft_topk_vjp: (output, pullback), typed as the input."""

        @overload
        def __call__(self, values: torch.Tensor, k: int, regularization: Literal["l2"] = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     largest: bool = True,
                     ) -> Tuple[torch.Tensor, Callable[[torch.Tensor | npt.ArrayLike],
                                                       torch.Tensor]]: ...

        @overload
        def __call__(self, values: _CudaArrayT, k: int, regularization: Literal["l2"] = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     largest: bool = True,
                     ) -> Tuple[_CudaArrayT, Callable[[_CudaArrayT], _CudaArrayT]]: ...

        @overload
        def __call__(self, values: npt.ArrayLike, k: int, regularization: Literal["l2"] = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     largest: bool = True,
                     ) -> Tuple[_FloatArray, Callable[[npt.ArrayLike], _FloatArray]]: ...

    class _QuantileOp(Protocol):
        """soft_quantile: the output has the input's type."""

        @overload
        def __call__(self, values: torch.Tensor, q: _Quantiles,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     keepdim: bool = False) -> torch.Tensor: ...

        @overload
        def __call__(self, values: _CudaArrayT, q: _Quantiles,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     keepdim: bool = False) -> _CudaArrayT: ...

        @overload
        def __call__(self, values: npt.ArrayLike, q: _Quantiles,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     keepdim: bool = False) -> _FloatArray: ...

    class _QuantileVjp(Protocol):
        """soft_quantile_vjp: (output, pullback), typed as the input."""

        @overload
        def __call__(self, values: torch.Tensor, q: _Quantiles,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     keepdim: bool = False,
                     ) -> Tuple[torch.Tensor, Callable[[torch.Tensor | npt.ArrayLike],
                                                       torch.Tensor]]: ...

        @overload
        def __call__(self, values: _CudaArrayT, q: _Quantiles,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     keepdim: bool = False,
                     ) -> Tuple[_CudaArrayT, Callable[[_CudaArrayT], _CudaArrayT]]: ...

        @overload
        def __call__(self, values: npt.ArrayLike, q: _Quantiles,
                     regularization: _Regularization = "l2",
                     regularization_strength: _Strength = 1.0, *, dim: int = -1,
                     keepdim: bool = False,
                     ) -> Tuple[_FloatArray, Callable[[npt.ArrayLike], _FloatArray]]: ...

    soft_rank: _SoftOp
    soft_sort: _SoftOp
    soft_rank_vjp: _SoftOpVjp
    soft_sort_vjp: _SoftOpVjp
    project_permutahedron: _ProjectOp
    soft_topk: _TopKOp
    soft_topk_vjp: _TopKVjp
    soft_quantile: _QuantileOp
    soft_quantile_vjp: _QuantileVjp
else:
    def soft_rank(values, regularization="l2", regularization_strength=1.0, *, dim=-1,
                  descending=False):
        return _front_end(values).soft_op("rank", values, regularization,
                                          regularization_strength, dim, descending)

    def soft_sort(values, regularization="l2", regularization_strength=1.0, *, dim=-1,
                  descending=False):
        return _front_end(values).soft_op("sort", values, regularization,
                                          regularization_strength, dim, descending)

    def soft_rank_vjp(values, regularization="l2", regularization_strength=1.0, *, dim=-1,
                      descending=False):
        return _front_end(values).soft_op_vjp("rank", values, regularization,
                                              regularization_strength, dim, descending)

    def soft_sort_vjp(values, regularization="l2", regularization_strength=1.0, *, dim=-1,
                      descending=False):
        return _front_end(values).soft_op_vjp("sort", values, regularization,
                                              regularization_strength, dim, descending)

    def project_permutahedron(values, w, regularization="l2", regularization_strength=1.0, *,
                              dim=-1):
        return _front_end(values).soft_op("project", values, regularization,
                                          regularization_strength, dim, False, _target(w))

    def soft_topk(values, k, regularization="l2", regularization_strength=1.0, *, dim=-1,
                  largest=True):
        return _topk("soft_op", values, k, regularization, regularization_strength, dim, largest)

    def soft_topk_vjp(values, k, regularization="l2", regularization_strength=1.0, *, dim=-1,
                      largest=True):
        return _topk("soft_op_vjp", values, k, regularization, regularization_strength, dim,
                     largest)

    def _topk(method, values, k, regularization, regularization_strength, dim, largest):
        """soft_topk (method "soft_op") or soft_topk_vjp ("soft_op_vjp"): the projection onto
        the permutahedron of (1, ..., 1, 0, ..., 0), of -values for the k smallest."""
        _contract.check_topk_regularization(regularization)
        return getattr(_front_end(values), method)(
            "project", values, regularization, regularization_strength, dim,
            not _contract.check_bool(largest, "largest"), _contract.TopK(k))

    def soft_quantile(values, q, regularization="l2", regularization_strength=1.0, *, dim=-1,
                      keepdim=False):
        quantiles, scalar = _quantile.quantile_arguments(q)
        keepdim = _contract.check_bool(keepdim, "keepdim")
        out = soft_sort(values, regularization, regularization_strength, dim=dim)
        return _quantile.interpolate(out, quantiles, scalar, dim, keepdim)


    def soft_quantile_vjp(values, q, regularization="l2", regularization_strength=1.0, *, dim=-1,
                          keepdim=False):
        quantiles, scalar = _quantile.quantile_arguments(q)
        keepdim = _contract.check_bool(keepdim, "keepdim")
        if _is_torch_tensor(values):  # autograd differentiates the interpolation
            from . import _torch

            return _torch.vjp_of(lambda x: soft_quantile(x, q, regularization,
                                                         regularization_strength, dim=dim,
                                                         keepdim=keepdim), values)
        out, pullback = soft_sort_vjp(values, regularization, regularization_strength, dim=dim)
        result = _quantile.interpolate(out, quantiles, scalar, dim, keepdim)

        def quantile_pullback(cotangent):
            return pullback(_quantile.transpose(out, cotangent, quantiles, scalar, dim, keepdim,
                                                result.shape))

        return result, quantile_pullback


_RANK_PARAMETERS = _COMMON_PARAMETERS.format(
    what="ranks", verb="rank",
    descending="If True the largest value gets rank ~1 (equals ``soft_rank(-values)``).")
_SORT_PARAMETERS = _COMMON_PARAMETERS.format(
    what="sorted values", verb="sort",
    descending="If True sort decreasingly (equals ``-soft_sort(-values)``).")

soft_rank.__doc__ = """Soft ranks: 1-based, ascending (the smallest value gets rank ~1).
""" + _RANK_PARAMETERS + """
    Returns
    -------
    ranks : same type, device and shape as ``values``
        The soft ranks along ``dim``. With "l2" each row sums to n(n+1)/2.
""" + _NOTES + """
    Examples
    --------
    >>> import softrank
    >>> softrank.soft_rank([[8, 0, 5, 3, 2, 1, 6, 7, 9]]).round(4).tolist()
    [[8.0, 1.0, 5.0, 4.0, 3.0, 2.0, 6.0, 7.0, 9.0]]
    >>> softrank.soft_rank([1.0, -2.0, 2.0, 3.0, 0.5, -1.0]).round(4).tolist()
    [3.875, 1.0, 4.875, 5.875, 3.375, 2.0]
"""

soft_sort.__doc__ = """Soft sorted values, ascending unless ``descending``.
""" + _SORT_PARAMETERS + """
    Returns
    -------
    sorted : same type, device and shape as ``values``
        The soft sorted values along ``dim``, monotone along ``dim``.
""" + _NOTES + """
    Examples
    --------
    >>> import softrank
    >>> softrank.soft_sort([[8, 0, 5, 3, 2, 1, 6, 7, 9]]).round(4).tolist()
    [[0.5556, 1.5556, 2.5556, 3.5556, 4.5556, 5.5556, 6.5556, 7.5556, 8.5556]]
    >>> softrank.soft_sort([[8, 0, 5, 3, 2, 1, 6, 7, 9]], regularization_strength=0.1).tolist()
    [[0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0]]
"""

_VJP_RETURNS = """
    Returns
    -------
    out : same type, device and shape as ``values``
        As ``soft_{name}(values, ...)``.
    pullback : callable
        ``pullback(cotangent)`` returns the vector-Jacobian product, the gradient of
        ``sum(cotangent * out)`` with respect to ``values``, in the layout of ``values``.
        It may be called several times. For torch tensors it runs autograd.
"""

soft_rank_vjp.__doc__ = ("""Soft ranks and their vector-Jacobian product (for NumPy/CuPy users).
""" + _RANK_PARAMETERS + _VJP_RETURNS.format(name="rank") + """
    Examples
    --------
    >>> import numpy as np, softrank
    >>> ranks, pullback = softrank.soft_rank_vjp(np.array([3.0, 1.0, 2.0]), regularization_strength=10.0)
    >>> pullback(np.array([1.0, 0.0, 0.0])).round(4).tolist()
    [0.0667, -0.0333, -0.0333]
""")

soft_sort_vjp.__doc__ = ("""Soft sorted values and their vector-Jacobian product.
""" + _SORT_PARAMETERS + _VJP_RETURNS.format(name="sort") + """
    Examples
    --------
    >>> import numpy as np, softrank
    >>> values = np.array([3.0, 1.0, 2.0])
    >>> out, pullback = softrank.soft_sort_vjp(values, regularization_strength=0.1)
    >>> out.tolist()  # a small strength: the hard sort
    [1.0, 2.0, 3.0]
    >>> pullback(np.array([0.0, 0.0, 1.0])).tolist()  # d out[-1] / d values: the largest value
    [1.0, 0.0, 0.0]
    >>> out, pullback = softrank.soft_sort_vjp(values, regularization_strength=2.0)
    >>> out.tolist()  # a large strength blends the values towards their mean
    [1.5, 2.0, 2.5]
    >>> pullback(np.array([0.0, 0.0, 1.0])).round(4).tolist()
    [0.3333, 0.3333, 0.3333]
""")


def _target(w):
    if w is None:
        raise TypeError("w must be a vector of the length of dim (or broadcast to values' "
                        "shape), got None")
    return w


_STRENGTH = """    regularization_strength : float, or array/tensor of one per slice, default 1.0
        eps > 0: a number, or an array or tensor broadcastable to the shape of ``values``
        without ``dim`` (one strength per slice). A torch strength that requires grad gets its
        exact gradient (a learnable temperature).
    dim : int, default -1
        Dimension along which to {verb}."""

_VALUES = """    values : torch.Tensor, numpy.ndarray, cupy.ndarray or array_like, shape (..., n, ...)
        As for :func:`soft_rank`."""

project_permutahedron.__doc__ = """Projection onto the permutahedron of ``w``: the paper's P(z, w),
    z = values / regularization_strength.

    Parameters
    ----------
""" + _VALUES + """
    w : tensor, array or array_like, shape (n,) or broadcastable to ``values``
        The vector whose permutations span the permutahedron, in any order, of the length of
        ``dim`` (or one per slice). torch gradients flow to ``w`` as to ``values``.
    regularization : {"l2", "kl"}, default "l2"
        "l2": the Euclidean projection of z onto the permutahedron of w. "kl": the KL
        projection of exp(z) onto it (every w > 0).
""" + _STRENGTH.format(verb="project") + """

    Returns
    -------
    projection : same type, device and shape as ``values``
        A point of the permutahedron: each slice is a soft permutation of ``w`` (it sums to
        sum(w)), ordered like ``values``. ``soft_rank(x, reg, eps)`` is
        ``project_permutahedron(x, arange(1, n + 1), reg, eps)``.

    Examples
    --------
    >>> import softrank
    >>> softrank.project_permutahedron([0.5, 2.0, -1.0], [10.0, 20.0, 30.0],
    ...                                regularization_strength=0.01).tolist()
    [20.0, 30.0, 10.0]
    >>> softrank.project_permutahedron([0.5, 2.0, -1.0], [10.0, 20.0, 30.0]).tolist()
    [20.0, 21.5, 18.5]
"""

_TOPK = """Soft top-k mask: P(values / eps, (1, ..., 1, 0, ..., 0)) with k ones.

    Entries lie in [0, 1] and each slice sums to k; as eps -> 0 the mask is the hard top-k
    indicator, as eps -> infinity it is k/n everywhere.

    Parameters
    ----------
""" + _VALUES + """
    k : int
        How many entries to select, in [1, n].
    regularization : "l2", default "l2"
        Only "l2": the target has zeros, where the KL projection is undefined.
""" + _STRENGTH.format(verb="select") + """
    largest : bool, default True
        Select the k largest (else the k smallest: equals ``soft_topk(-values, k)``).
"""

soft_topk.__doc__ = _TOPK + """
    Returns
    -------
    mask : same type, device and shape as ``values``

    Examples
    --------
    >>> import softrank
    >>> softrank.soft_topk([[3.0, 1.0, 2.0, 5.0, 4.0]], 2).tolist()
    [[0.0, 0.0, 0.0, 1.0, 1.0]]
    >>> softrank.soft_topk([[3.0, 1.0, 2.0, 5.0, 4.0]], 2, regularization_strength=5.0).round(4).tolist()
    [[0.4, 0.0, 0.2, 0.8, 0.6]]
"""

soft_topk_vjp.__doc__ = ("""Soft top-k mask and its vector-Jacobian product (for NumPy/CuPy users).
""" + _TOPK.split("\n", 1)[1] + _VJP_RETURNS.format(name="topk") + """
    Examples
    --------
    >>> import numpy as np, softrank
    >>> mask, pullback = softrank.soft_topk_vjp(np.array([3.0, 1.0, 2.0]), 1, regularization_strength=2.0)
    >>> mask.round(4).tolist()
    [0.75, 0.0, 0.25]
    >>> pullback(np.array([1.0, 0.0, 0.0])).round(4).tolist()
    [0.25, 0.0, -0.25]
""")

_QUANTILE = """Soft quantiles: the ascending soft sort along ``dim``, interpolated linearly at q (n - 1).

    The "linear" method of ``torch.quantile`` and ``numpy.quantile``, on the soft sorted values:
    as eps -> 0 it equals them.

    Parameters
    ----------
""" + _VALUES + """
    q : float, or 1-D sequence, array or tensor of floats
        Quantiles in [0, 1].
    regularization : {"l2", "kl"}, default "l2"
        As for :func:`soft_sort`.
""" + _STRENGTH.format(verb="take quantiles") + """
    keepdim : bool, default False
        Keep ``dim`` as a dimension of size 1.
"""

soft_quantile.__doc__ = _QUANTILE + """
    Returns
    -------
    quantiles : same type and device as ``values``
        Shaped as ``torch.quantile``'s result: a float q removes ``dim`` (size 1 with
        ``keepdim``); a 1-D q adds a leading dimension of len(q).

    Examples
    --------
    >>> import softrank
    >>> softrank.soft_quantile([[3.0, 1.0, 2.0, 5.0, 4.0]], 0.5, regularization_strength=0.1).tolist()
    [3.0]
    >>> softrank.soft_quantile([[3.0, 1.0, 2.0, 5.0, 4.0]], [0.25, 0.5], regularization_strength=2.0).round(4).tolist()
    [[2.5], [3.0]]
"""

soft_quantile_vjp.__doc__ = ("""Soft quantiles and their vector-Jacobian product.
""" + _QUANTILE.split("\n", 1)[1] + _VJP_RETURNS.format(name="quantile") + """
    Examples
    --------
    >>> import numpy as np, softrank
    >>> median, pullback = softrank.soft_quantile_vjp(np.array([3.0, 1.0, 2.0, 4.0]), 0.5, regularization_strength=0.1)
    >>> float(median)
    2.5
    >>> pullback(1.0).tolist()  # the two middle values share the median
    [0.5, 0.0, 0.5, 0.0]
""")
