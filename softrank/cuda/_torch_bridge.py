"""The CUDA back end on torch CUDA tensors: outputs from torch's allocator, launches on its stream.

The back-end functions of docs/CONTRACT.md, on detached, C-contiguous ``(rows, n)`` torch CUDA
tensors (float32/float64; ``perm`` and ``blocks`` int32), all on one device::

    forward(mode, x, eps, sign, target=None) -> (out, perm, blocks)
    forward_values(mode, x, eps, sign, target=None) -> out
    backward(mode, g, perm, blocks, aux, eps, sign) -> grad

``eps`` is a Python float or a float64 tensor of shape ``(rows,)`` (one strength per row) on x's
device or on the CPU (copied to x's device); its values are checked (for a CUDA tensor, by one
flag read back to the host; not during CUDA graph capture, see below).  ``target`` (the project
modes only) is a tensor of x's dtype and shape ``(1, n)`` or ``(rows, n)`` on x's device
(docs/CONTRACT.md).

Outputs, and the tiled family's workspaces, are allocated by torch on the tensors' device, so the
memory belongs to torch's caching allocator on the stream that uses it.  For the duration of the
launches, ``cupy.cuda.Device(idx)`` and an ``ExternalStream`` wrapping torch's current stream are
CuPy's current device and stream, so every kernel runs on torch's current stream: ordered after
whatever produced the inputs and before whatever consumes the outputs, with no ``synchronize()``
and no cross-stream event.

The kernels get zero-copy CuPy views of the tensors, made from DLPack capsules
(``torch.utils.dlpack.to_dlpack`` handed to ``cupy.from_dlpack``; the design's one way for torch
and CuPy to share memory) rather than ``Tensor.__dlpack__``, whose stream handshake orders two
streams where producer and consumer are the same one.  The arguments' layouts are checked once
per layout (dtype, shape, contiguity, mode) and remembered; devices and strengths are checked on
every call.

The tiled family needs ``perm`` before its kernels run.  For tensors it comes from ``torch.sort``
along the rows (one segmented sort for all rows, where ``_backend.presort`` on the CuPy path
sorts with 1-D CuPy sorts; docs/PERFORMANCE.md), with the same key and tie order.

**CUDA graphs.**  A call can be captured by ``torch.cuda.graph`` or
``torch.compile(mode="reduce-overhead")``: it launches on the capturing stream (torch's current
one), allocates only through torch (the graph's private pool during capture) and reads nothing
back to the host, provided the kernels were compiled by an earlier call outside capture (the
warm-up that torch asks for anyway).  The one check that needs a read-back, the values of a CUDA
tensor of per-row strengths, is skipped while the current stream is capturing: a strength that
is not finite and > 0 then gives its row meaningless values instead of a ValueError.  A CPU tensor
of strengths cannot be copied to the device during capture (a synchronous copy) and is refused.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from torch.utils.dlpack import to_dlpack

from . import _backend, tuning

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.int32: "int32"}
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                 np.dtype(np.int32): torch.int32}

# Layouts (mode, dtypes, shapes, contiguity) that passed _backend's checks; a key holds every
# property those checks read, so a hit means the same checks would pass again.
_checked: dict = {}
_CHECKED_SIZE = 4096


def _remember(key):
    if len(_checked) >= _CHECKED_SIZE:
        _checked.clear()
    _checked[key] = True


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


def _check_forward(mode, x, target):
    """Every check of a forward's x and target (layouts memoised, devices every time)."""
    if target is None:
        _check_device((("x", x),))
        key = (mode, x.dtype, x.shape, x.is_contiguous())
    elif isinstance(target, torch.Tensor):
        _check_device((("x", x), ("target", target)))
        key = (mode, x.dtype, x.shape, x.is_contiguous(), target.dtype, target.shape,
               target.is_contiguous())
    else:
        key = None
    if key not in _checked:
        _check(mode, [("x", x)])
        _check_target(mode, target, x)
        _remember(key)


def _check_backward(mode, g, perm, blocks, aux):
    """Every check of a backward's tensors (layouts memoised, devices every time)."""
    if aux is None:
        _check_device((("g", g), ("perm", perm), ("blocks", blocks)))
        key = (mode, g.dtype, g.shape, g.is_contiguous(), perm.dtype, perm.shape,
               perm.is_contiguous(), blocks.dtype, blocks.shape, blocks.is_contiguous())
    else:
        _check_device((("g", g), ("aux", aux), ("perm", perm), ("blocks", blocks)))
        key = (mode, g.dtype, g.shape, g.is_contiguous(), perm.dtype, perm.shape,
               perm.is_contiguous(), blocks.dtype, blocks.shape, blocks.is_contiguous(),
               aux.dtype, aux.shape, aux.is_contiguous())
    if key not in _checked:
        _backend.check_aux(mode, aux)
        _check(mode, [("g", g)] + ([] if aux is None else [("aux", aux)]),
               [("perm", perm), ("blocks", blocks)])
        _remember(key)


def _device_eps(eps, x):
    """``eps`` checked: a Python float, or a float64 tensor of the strengths on x's device.

    The values of a CUDA tensor are checked by reading one flag back (a host synchronisation),
    except while the current stream is capturing a CUDA graph, where a read-back is an error."""
    if not isinstance(eps, torch.Tensor):
        return _backend.check_eps_scalar(eps)
    _backend.check_eps_layout(_layout(eps), x.shape[0])
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
    if eps.device != x.device:
        if eps.is_cuda:
            raise ValueError(f"eps must be on x's device ({x.device}) or the CPU, got "
                             f"{eps.device}")
        _backend.check_eps_values(bool(torch.all((eps > 0) & (eps < torch.inf))))
        if capturing:
            raise ValueError("eps must be on x's device during CUDA graph capture: copying a "
                             "CPU tensor there synchronises with the host")
        return eps.to(x.device)
    if not capturing:
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


@functools.lru_cache(maxsize=64)
def _cupy_device(cupy, idx: int):
    return cupy.cuda.Device(idx)


class torch_stream_context:
    """``with torch_stream_context(device) as cupy``: the device and torch's current stream on
    it are CuPy's current ones (a class, not a generator: it runs on every call)."""

    __slots__ = ("device", "_entered")

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        cupy = _backend.require_cupy()
        idx = self.device.index
        if idx is None:
            idx = torch.cuda.current_device()
        ptr = torch.cuda.current_stream(idx).cuda_stream
        device, stream = _cupy_device(cupy, idx), _stream(cupy, ptr, idx)
        device.__enter__()
        try:
            stream.__enter__()
        except BaseException:
            device.__exit__(None, None, None)
            raise
        self._entered = (device, stream)
        return cupy

    def __exit__(self, *exc):
        device, stream = self._entered
        try:
            stream.__exit__(*exc)
        finally:
            device.__exit__(*exc)
        return False


def _views(cupy, *tensors):
    """Zero-copy CuPy views of the tensors (None stays None)."""
    return [None if t is None else cupy.from_dlpack(to_dlpack(t.detach())) for t in tensors]


class _TorchWorkspaces:
    """The array module of the launch sequences' workspaces (``xp.empty``/``xp.zeros``) on the
    torch path: memory from torch's caching allocator on the tensors' device and current stream,
    so that a CUDA graph capture sees no allocation of CuPy's own, and freed (for reuse on the
    same stream) when the launches are enqueued."""

    def __init__(self, cupy, device):
        self.cupy, self.device = cupy, device

    def empty(self, shape, dtype=np.float64):
        t = torch.empty(shape, dtype=_TORCH_DTYPES[np.dtype(dtype)], device=self.device)
        return _views(self.cupy, t)[0]

    def zeros(self, shape, dtype=np.float64):
        t = torch.zeros(shape, dtype=_TORCH_DTYPES[np.dtype(dtype)], device=self.device)
        return _views(self.cupy, t)[0]

    def __getattr__(self, name):
        raise AttributeError(f"the torch path's workspaces provide empty and zeros only, not "
                             f"{name!r} (every allocation must come from torch's allocator)")


def torch_presort(x, sign: int, perm):
    """Write into ``perm`` (int32, x's shape) what ``_backend.presort`` computes, with torch.sort.

    Key ``-(sign * x) + 0`` sorted ascending and stably: z decreasing, ties by index increasing,
    and -0.0 keyed as +0.0 (``0 - x`` and ``x + 0`` both map -0.0 to +0.0).  Works on any device.
    """
    key = torch.rsub(x, 0.0) if sign > 0 else x + 0.0
    perm.copy_(torch.sort(key, dim=-1, stable=True).indices)


def _device_id(cupy, device):
    idx = device.index
    return cupy.cuda.Device().id if idx is None else idx


def forward(mode, x, eps, sign, target=None):
    """Solve every row of ``x`` (rows, n); returns new ``(out, perm, blocks)`` tensors."""
    _check_forward(mode, x, target)
    if not (type(eps) is float and 0.0 < eps < math.inf):
        eps = _device_eps(eps, x)
    out = torch.empty_like(x)
    perm = torch.empty_like(x, dtype=torch.int32)
    blocks = torch.empty_like(x, dtype=torch.int32)
    if x.numel() == 0:
        return out, perm, blocks
    rows, n = x.shape
    with torch_stream_context(x.device) as cupy:
        device_id = _device_id(cupy, x.device)
        plan = tuning.plan_forward(rows, n, x.element_size(), _backend._smem_limit(device_id),
                                   state_size=_backend.state_size(mode))
        tiled = plan.kind == "tiled"
        if tiled:
            torch_presort(x, sign, perm)
        xv, ov, pv, bv, tv = _views(cupy, x, out, perm, blocks, target)
        if eps.__class__ is not float:
            (eps,) = _views(cupy, eps)
        _backend.forward_launches(_TorchWorkspaces(cupy, x.device) if tiled else None,
                                  _backend._launcher(device_id, xv.dtype, mode), plan,
                                  mode, xv, eps, sign, ov, pv, bv, presorted=tiled, target=tv)
    return out, perm, blocks


def forward_values(mode, x, eps, sign, target=None):
    """:func:`forward` when nothing will differentiate the call: returns ``out`` only."""
    # the kernels need perm and blocks as scratch
    return forward(mode, x, eps, sign, target)[0]


def backward(mode, g, perm, blocks, aux, eps, sign):
    """Gradient w.r.t. x for the cotangent ``g``; ``aux`` is ``out`` (rank/kl, project/kl), ``x``
    (sort/kl) or None (l2).  Returns a new ``grad`` tensor."""
    _check_backward(mode, g, perm, blocks, aux)
    if not (type(eps) is float and 0.0 < eps < math.inf):
        eps = _device_eps(eps, g)
    grad = torch.empty_like(g)
    if g.numel() == 0:
        return grad
    rows, n = g.shape
    with torch_stream_context(g.device) as cupy:
        device_id = _device_id(cupy, g.device)
        plan = tuning.plan_backward(rows, n, g.element_size(), _backend._smem_limit(device_id))
        gv, pv, bv, av, rv = _views(cupy, g, perm, blocks, aux, grad)
        if eps.__class__ is not float:
            (eps,) = _views(cupy, eps)
        _backend.backward_launches(_TorchWorkspaces(cupy, g.device) if plan.kind == "tiled"
                                   else None,
                                   _backend._launcher(device_id, gv.dtype, mode), plan,
                                   mode, gv, pv, bv, av, eps, sign, rv)
    return grad
