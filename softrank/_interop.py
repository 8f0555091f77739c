"""torch <-> CuPy exchange for the CUDA back end: zero-copy DLPack views on torch's current stream.

Every tensor here was allocated by torch (the caller) and is contiguous.  For the duration of a
launch we enter, in this order:

1. ``torch.cuda.device(idx)``: ``Tensor.__dlpack__`` refuses tensors of another device than
   torch's current one;
2. ``cupy.cuda.Device(idx)``: kernels are compiled for and launched on the tensor's device;
3. ``ExternalStream(torch.cuda.current_stream(idx).cuda_stream, idx)`` as CuPy's current stream:
   every kernel runs on torch's stream, so it is ordered after whatever produced the inputs and
   before whatever consumes the outputs, and the stream handshakes inside ``__dlpack__`` are no-ops.

The CuPy views (``cupy.from_dlpack(t.detach())``) share memory with the tensors: no copy, and
the outputs are written in place, so nothing has to come back through DLPack.  No
``synchronize()``.  No workspace is kept beyond the call (long rows allocate a temporary workspace
from CuPy's pool on the same stream).
"""

from __future__ import annotations

import contextlib

from . import _cuda


@contextlib.contextmanager
def torch_stream_context(device):
    """Device + torch's current stream as CuPy's current device and stream; yields cupy."""
    import torch

    cupy = _cuda.require_cupy()
    idx = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(idx):
        stream = torch.cuda.current_stream(idx)
        with cupy.cuda.Device(idx), _cuda.external_stream(cupy, stream.cuda_stream, idx):
            yield cupy


def _views(cupy, *tensors):
    return [None if t is None else cupy.from_dlpack(t.detach()) for t in tensors]


def torch_cuda_forward(op, regularization, x, eps, sign, out, perm, blocks):
    """CUDA back-end forward on torch CUDA tensors (docs/CONTRACT.md), on torch's current stream."""
    with torch_stream_context(x.device) as cupy:
        xc, oc, pc, bc = _views(cupy, x, out, perm, blocks)
        _cuda.forward(op, regularization, xc, eps, sign, oc, pc, bc)


def torch_cuda_backward(op, regularization, g, perm, blocks, aux, eps, sign, grad):
    """CUDA back-end VJP on torch CUDA tensors (docs/CONTRACT.md), on torch's current stream."""
    with torch_stream_context(g.device) as cupy:
        gc, pc, bc, ac, rc = _views(cupy, g, perm, blocks, aux, grad)
        _cuda.backward(op, regularization, gc, pc, bc, ac, eps, sign, rc)
