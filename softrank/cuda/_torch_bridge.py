"""torch <-> CuPy exchange for the CUDA back end: zero-copy DLPack views on torch's current stream.

Every tensor here was allocated by torch (the caller) and is contiguous.  For the duration of a
launch we enter ``cupy.cuda.Device(idx)`` (kernels are compiled for and launched on the tensor's
device) and make ``ExternalStream(torch.cuda.current_stream(idx).cuda_stream, idx)`` CuPy's current
stream: every kernel runs on torch's stream, so it is ordered after whatever produced the inputs and
before whatever consumes the outputs.

The CuPy views are made from DLPack capsules (``torch.utils.dlpack.to_dlpack``, handed to
``cupy.from_dlpack``), not through ``Tensor.__dlpack__``: the latter's stream handshake and device
checks were half of the host time of a short call on an H100 machine (cProfile in
benchmarks/gpu_profile.py),
and buy nothing here because producer and consumer use the same stream.  The views share memory
with the tensors (no copy) and the outputs are written in place.  No ``synchronize()``.

Long rows (the tiled family) need ``perm`` before the kernels run; for torch tensors it comes from
``torch.sort`` (a segmented sort, several times faster than the CuPy 1-D radix sorts of
``_backend.presort`` on an H100), with the same key and tie order.
"""

from __future__ import annotations

import contextlib
import functools

from . import _backend


@functools.lru_cache(maxsize=64)
def _stream(cupy, ptr: int, idx: int):
    # A non-owning wrapper of torch's stream; cached because creating one costs a few us and a
    # warnings filter.  A pointer reused by a new torch stream wraps the same handle: still right.
    return _backend.external_stream(cupy, ptr, idx)


@contextlib.contextmanager
def torch_stream_context(device):
    """Device + torch's current stream as CuPy's current device and stream; yields cupy."""
    import torch

    cupy = _backend.require_cupy()
    idx = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(idx)
    with cupy.cuda.Device(idx), _stream(cupy, stream.cuda_stream, idx):
        yield cupy


def _views(cupy, *tensors):
    from torch.utils.dlpack import to_dlpack

    return [None if t is None else cupy.from_dlpack(to_dlpack(t.detach())) for t in tensors]


def torch_presort(x, sign: int, perm):
    """Write into ``perm`` (int32, x's shape) what ``_backend.presort`` computes, with torch.sort.

    Key ``-(sign * x) + 0`` sorted ascending and stably: z decreasing, ties by index increasing,
    and -0.0 keyed as +0.0 (``0 - x`` and ``x + 0`` both map -0.0 to +0.0).  Works on any device.
    """
    import torch

    key = torch.rsub(x, 0.0) if sign > 0 else x + 0.0
    order = torch.sort(key, dim=-1, stable=True).indices
    perm.copy_(order)


def torch_cuda_forward(op, regularization, x, eps, sign, out, perm, blocks):
    """CUDA back-end forward on torch CUDA tensors (docs/CONTRACT.md), on torch's current stream."""
    with torch_stream_context(x.device) as cupy:
        presorted = _backend.needs_presort(x.shape, x.element_size())
        if presorted:
            torch_presort(x, sign, perm)
        xc, oc, pc, bc = _views(cupy, x, out, perm, blocks)
        _backend.forward(op, regularization, xc, eps, sign, oc, pc, bc, presorted=presorted)


def torch_cuda_backward(op, regularization, g, perm, blocks, aux, eps, sign, grad):
    """CUDA back-end VJP on torch CUDA tensors (docs/CONTRACT.md), on torch's current stream."""
    with torch_stream_context(g.device) as cupy:
        gc, pc, bc, ac, rc = _views(cupy, g, perm, blocks, aux, grad)
        _backend.backward(op, regularization, gc, pc, bc, ac, eps, sign, rc)
