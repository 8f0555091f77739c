"""Calls of the native solvers on torch tensors: Cython on CPU (NumPy views), CuPy on CUDA.

The native code writes into preallocated outputs in place (no copies). CUDA outputs are allocated
by torch (its caching allocator, its stream); CPU outputs by NumPy and shared with torch through
torch.from_numpy, which costs half of torch.empty + .numpy() (per-call overhead matters for short
rows).
"""
import numpy as np
import torch

from . import _cpu_backend


def run_forward(op, regularization, x, eps, sign):
    """(out, perm, blocks) for contiguous (rows, n) float32/float64 rows (docs/CONTRACT.md)."""
    if x.is_cuda:
        out = torch.empty_like(x)
        perm = torch.empty(x.shape, dtype=torch.int32, device=x.device)
        blocks = torch.empty(x.shape, dtype=torch.int32, device=x.device)
        if x.numel():
            from . import _interop

            _interop.torch_cuda_forward(op, regularization, x, eps, sign, out, perm, blocks)
        return out, perm, blocks
    xn = x.numpy()
    out = np.empty_like(xn)
    perm = np.empty(xn.shape, dtype=np.int32)
    blocks = np.empty(xn.shape, dtype=np.int32)
    if xn.size:
        _cpu_backend.forward(op, regularization, xn, eps, sign, out, perm, blocks)
    return torch.from_numpy(out), torch.from_numpy(perm), torch.from_numpy(blocks)


def run_backward(op, regularization, g, perm, blocks, aux, eps, sign):
    """Gradient w.r.t. the rows from the cotangent g of out; aux is out (rank/kl) or x (sort/kl)."""
    if g.is_cuda:
        grad = torch.empty_like(g)
        if g.numel():
            from . import _interop

            _interop.torch_cuda_backward(op, regularization, g, perm, blocks, aux, eps, sign,
                                         grad)
        return grad
    gn = g.numpy()
    grad = np.empty_like(gn)
    if gn.size:
        _cpu_backend.backward(op, regularization, gn, perm.numpy(), blocks.numpy(),
                              None if aux is None else aux.numpy(), eps, sign, grad)
    return torch.from_numpy(grad)
