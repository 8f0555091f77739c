"""The back ends (docs/CONTRACT.md) called on torch tensors.

Tensors here are contiguous, float32 or float64, with the rows along the last dimension, and
are read without autograd (callers are autograd.Functions and custom ops). CPU tensors reach
the Cython solver as NumPy views (which refuse tensors without CPU storage) and its outputs come
back as tensors sharing their memory; CUDA tensors go to softrank/cuda/_torch_bridge.py, which
launches on torch's current stream into memory allocated by torch.

perm and blocks are returned as the back end made them: NumPy arrays for CPU rows (only the
native backward reads them; as_tensor converts them when the differentiable formulas need
them), tensors for CUDA rows.
"""
import numpy as np
import torch

from . import _cpu_backend


def _rows(t):
    """A (rows, n) view of a contiguous tensor, detached."""
    return t.detach().view(-1, t.shape[-1])


def _array(t):
    """A NumPy view of a contiguous CPU tensor, detached, as (rows, n) rows. It refuses tensors
    without CPU storage. Reshaping in NumPy: a torch view costs more than a short row's solve."""
    a = t.numpy(force=True)
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])


def _tensor(result, shape):
    """A (rows, n) result of the CPU back end as a tensor of the given shape."""
    return torch.from_numpy(result if len(shape) == 2 else result.reshape(shape))


def forward(mode, x, eps, sign):
    """(out, perm, blocks): out shaped like x; perm and blocks (rows, n)."""
    if x.is_cuda:
        from .cuda import _torch_bridge

        out, perm, blocks = _torch_bridge.forward(mode, _rows(x), eps, sign)
        return out.view(x.shape), perm, blocks
    out, perm, blocks = _cpu_backend.forward(mode, _array(x), eps, sign)
    return _tensor(out, x.shape), perm, blocks


def forward_values(mode, x, eps, sign):
    """out alone, shaped like x (no partition is kept)."""
    if x.is_cuda:
        from .cuda import _torch_bridge

        return _torch_bridge.forward_values(mode, _rows(x), eps, sign).view(x.shape)
    return _tensor(_cpu_backend.forward_values(mode, _array(x), eps, sign), x.shape)


def backward(mode, g, perm, blocks, aux, eps, sign):
    """The gradient w.r.t. x, shaped like the contiguous cotangent g of out; aux is out
    (rank/kl), x (sort/kl) or None (l2), shaped like g."""
    if g.is_cuda:
        from .cuda import _torch_bridge

        n = g.shape[-1]
        grad = _torch_bridge.backward(mode, _rows(g), as_tensor(perm).view(-1, n),
                                      as_tensor(blocks).view(-1, n),
                                      None if aux is None else _rows(aux), eps, sign)
        return grad.view(g.shape)
    grad = _cpu_backend.backward(mode, _array(g), _as_rows(perm), _as_rows(blocks),
                                 None if aux is None else _array(aux), eps, sign)
    return _tensor(grad, g.shape)


def as_tensor(index):
    """perm or blocks as a tensor (sharing memory)."""
    return index if isinstance(index, torch.Tensor) else torch.from_numpy(index)


def _as_rows(index):
    """perm or blocks as the (rows, n) NumPy array the CPU back end takes."""
    return index if isinstance(index, np.ndarray) else _array(index)
