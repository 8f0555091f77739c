"""The back ends (docs/CONTRACT.md) called on torch tensors.

Tensors here are contiguous (rows, n) rows, float32 or float64, read without autograd (callers
are autograd.Functions and custom ops). CPU tensors reach the Cython solver as NumPy views
(`numpy(force=True)` detaches them and refuses tensors without CPU storage) and its outputs come
back as tensors sharing their memory; CUDA tensors go to softrank/cuda/_torch_bridge.py, which
launches on torch's current stream into memory allocated by torch.

perm and blocks are returned as the back end made them: NumPy arrays for CPU rows (only the
native backward reads them; as_tensor converts them when the differentiable formulas need
them), tensors for CUDA rows. eps is a float or a float64 tensor of one strength per row, on
the rows' device; target (the project modes') a tensor of the rows' dtype and device.
"""
import numpy as np
import torch

from . import _cpu_backend


def forward(mode, x, eps, sign, target=None):
    """(out, perm, blocks) of the rows x."""
    if x.is_cuda:
        from .cuda import _torch_bridge

        return _torch_bridge.forward(mode, x.detach(), eps, sign, target=target)
    out, perm, blocks = _cpu_backend.forward(mode, x.numpy(force=True), _host(eps), sign,
                                             None if target is None else _host(target))
    return torch.from_numpy(out), perm, blocks


def forward_values(mode, x, eps, sign, target=None):
    """out alone (no partition is kept)."""
    if x.is_cuda:
        from .cuda import _torch_bridge

        return _torch_bridge.forward_values(mode, x.detach(), eps, sign, target=target)
    return torch.from_numpy(_cpu_backend.forward_values(
        mode, x.numpy(force=True), _host(eps), sign, None if target is None else _host(target)))


def _host(a):
    """A float as it is, a CPU tensor as a NumPy view."""
    return a if type(a) is float else a.numpy(force=True)


def backward(mode, g, perm, blocks, aux, eps, sign):
    """The gradient w.r.t. the rows x from the cotangent g of out (rows like x); aux is out
    (rank/kl), x (sort/kl) or None (l2)."""
    if g.is_cuda:
        from .cuda import _torch_bridge

        return _torch_bridge.backward(mode, g.detach(), as_tensor(perm), as_tensor(blocks),
                                      None if aux is None else aux.detach(), eps, sign)
    grad = _cpu_backend.backward(mode, g.numpy(force=True), _as_array(perm), _as_array(blocks),
                                 None if aux is None else aux.numpy(force=True), _host(eps), sign)
    return torch.from_numpy(grad)


def as_tensor(index):
    """perm or blocks as a tensor (sharing memory)."""
    return index if isinstance(index, torch.Tensor) else torch.from_numpy(index)


def _as_array(index):
    return index if isinstance(index, np.ndarray) else index.numpy(force=True)
