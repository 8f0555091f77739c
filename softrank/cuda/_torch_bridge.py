"""The CUDA back end on torch CUDA tensors: outputs from torch's allocator, launches on its stream.

The back-end functions of docs/CONTRACT.md, on detached, C-contiguous ``(rows, n)`` torch CUDA
tensors (float32/float64; ``perm`` and ``blocks`` int32), all on one device::

    forward(mode, x, eps, sign, target=None) -> (out, perm, blocks)
    forward_values(mode, x, eps, sign, target=None) -> out
    backward(mode, g, perm, blocks, aux, eps, sign) -> grad

``eps`` is a Python float or a float64 tensor of shape ``(rows,)`` (one strength per row) on x's
device or on the CPU (copied to x's device); its values are checked (for a CUDA tensor, by one
flag read back to the host).  ``target`` (the project modes only) is a tensor of x's dtype and
shape ``(1, n)`` or ``(rows, n)`` on x's device (docs/CONTRACT.md).

Outputs are allocated with ``torch.empty`` on the tensors' device, so the memory belongs to torch's
caching allocator on the stream that uses it; the kernels write into zero-copy CuPy views of them.
For the duration of a launch, ``cupy.cuda.Device(idx)`` and an ``ExternalStream`` wrapping
``torch.cuda.current_stream(idx)`` are CuPy's current device and stream, so every kernel runs on
torch's current stream: ordered after whatever produced the inputs and before whatever consumes
the outputs, with no ``synchronize()`` and no cross-stream event.

The views come from DLPack capsules (``torch.utils.dlpack.to_dlpack`` handed to
``cupy.from_dlpack``) rather than ``Tensor.__dlpack__``: the latter's stream handshake and device
checks order two streams, and here producer and consumer are the same stream, so they would only
add host time to every call (docs/PERFORMANCE.md has the measurement).

The tiled family needs ``perm`` before its kernels run.  For tensors it comes from ``torch.sort``
along the rows (one segmented sort for all rows, where ``_backend.presort`` on the CuPy path
sorts with 1-D CuPy sorts; docs/PERFORMANCE.md), with the same key and tie order.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch.utils.dlpack import to_dlpack

from . import _backend

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.int32: "int32"}


def _layout(t):
    """(dtype name, shape, C-contiguous) of a tensor, as _backend.check takes it."""
    dtype = _DTYPE_NAMES.get(t.dtype) or str(t.dtype).replace("torch.", "", 1)
    return dtype, tuple(t.shape), t.is_contiguous()


def _check_device(named):
    """Every tensor is a CUDA tensor on the first one's device."""
    first, t0 = named[0]
    for name, t in named:
        if not t.is_cuda or t.device != t0.device:
            raise ValueError(f"{name} must be a CUDA tensor on {first}'s device ({t0.device}), "
                             f"got {t.device}")


def _check(mode, data, indices=()):
    _check_device([*data, *indices])
    _backend.check(mode, [(name, _layout(t)) for name, t in data],
                   [(name, _layout(t)) for name, t in indices])


def _check_target(mode, target, x):
    if target is not None:
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch tensor, got {type(target).__name__}")
        _check_device([("x", x), ("target", target)])
    _backend.check_target(mode, None if target is None else _layout(target), _layout(x))


def _device_eps(eps, x):
    """``eps`` checked: a Python float, or a float64 tensor of the strengths on x's device."""
    if not isinstance(eps, torch.Tensor):
        return _backend.check_eps_scalar(eps)
    _backend.check_eps_layout(_layout(eps), x.shape[0])
    if eps.device != x.device:
        if eps.is_cuda:
            raise ValueError(f"eps must be on x's device ({x.device}) or the CPU, got "
                             f"{eps.device}")
        _backend.check_eps_values(bool(torch.all((eps > 0) & (eps < torch.inf))))
        return eps.to(x.device)
    _backend.check_eps_values(bool(torch.all((eps > 0) & (eps < torch.inf))))
    return eps


@functools.lru_cache(maxsize=64)
def _stream(cupy, ptr: int, idx: int):
    # A non-owning CuPy wrapper of torch's stream, cached: made once per (stream, device), not per
    # call.  A pointer reused by a new torch stream wraps the same handle, which is still right.
    # ExternalStream is deprecated in CuPy 14 but still works.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(ptr, idx)


@contextlib.contextmanager
def torch_stream_context(device):
    """The device and torch's current stream on it as CuPy's current ones; yields cupy."""
    cupy = _backend.require_cupy()
    idx = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(idx)
    with cupy.cuda.Device(idx), _stream(cupy, stream.cuda_stream, idx):
        yield cupy


def _views(cupy, *tensors):
    """Zero-copy CuPy views of the tensors (None stays None)."""
    return [None if t is None else cupy.from_dlpack(to_dlpack(t.detach())) for t in tensors]


def torch_presort(x, sign: int, perm):
    """Write into ``perm`` (int32, x's shape) what ``_backend.presort`` computes, with torch.sort.

    Key ``-(sign * x) + 0`` sorted ascending and stably: z decreasing, ties by index increasing,
    and -0.0 keyed as +0.0 (``0 - x`` and ``x + 0`` both map -0.0 to +0.0).  Works on any device.
    """
    key = torch.rsub(x, 0.0) if sign > 0 else x + 0.0
    perm.copy_(torch.sort(key, dim=-1, stable=True).indices)


def _empty(x, dtype):
    return torch.empty(x.shape, dtype=dtype, device=x.device)


def forward(mode, x, eps, sign, target=None):
    """Solve every row of ``x`` (rows, n); returns new ``(out, perm, blocks)`` tensors."""
    _check(mode, [("x", x)])
    _check_target(mode, target, x)
    eps = _device_eps(eps, x)
    out, perm, blocks = _empty(x, x.dtype), _empty(x, torch.int32), _empty(x, torch.int32)
    if x.numel() == 0:
        return out, perm, blocks
    with torch_stream_context(x.device) as cupy:
        presorted = _backend.needs_presort(x.shape, x.element_size(), mode)
        if presorted:
            torch_presort(x, sign, perm)
        xv, ov, pv, bv, tv = _views(cupy, x, out, perm, blocks, target)
        if not isinstance(eps, float):
            (eps,) = _views(cupy, eps)
        _backend.forward_into(mode, xv, eps, sign, ov, pv, bv, presorted=presorted, target=tv)
    return out, perm, blocks


def forward_values(mode, x, eps, sign, target=None):
    """:func:`forward` when nothing will differentiate the call: returns ``out`` only."""
    # the kernels need perm and blocks as scratch
    return forward(mode, x, eps, sign, target)[0]


def backward(mode, g, perm, blocks, aux, eps, sign):
    """Gradient w.r.t. x for the cotangent ``g``; ``aux`` is ``out`` (rank/kl, project/kl), ``x``
    (sort/kl) or None (l2).  Returns a new ``grad`` tensor."""
    _backend.check_aux(mode, aux)
    _check(mode, [("g", g)] + ([] if aux is None else [("aux", aux)]),
           [("perm", perm), ("blocks", blocks)])
    eps = _device_eps(eps, g)
    grad = _empty(g, g.dtype)
    if g.numel() == 0:
        return grad
    with torch_stream_context(g.device) as cupy:
        gv, pv, bv, av, rv = _views(cupy, g, perm, blocks, aux, grad)
        if not isinstance(eps, float):
            (eps,) = _views(cupy, eps)
        _backend.backward_into(mode, gv, pv, bv, av, eps, sign, rv)
    return grad
