"""Calls of the native solvers on torch tensors: Cython on CPU (NumPy views), CuPy on CUDA.

The native code writes into preallocated outputs in place (no copies). CUDA outputs are allocated
by torch (its caching allocator, its stream); CPU outputs by NumPy and shared with torch through
torch.from_numpy, which costs half of torch.empty + .numpy() (per-call overhead matters for short
rows). On CPU the partition (perm, blocks) can stay a pair of NumPy arrays when only the native
backward reads it: two torch.from_numpy calls are a tenth of a short call.
"""
import numpy as np
import torch

from . import _cpu_backend


def solve(op, regularization, x, eps, sign):
    """(out, perm, blocks) for contiguous (rows, n) float32/float64 rows (docs/CONTRACT.md).

    out is a tensor; perm and blocks are NumPy arrays for CPU rows, tensors for CUDA rows.
    x may require grad (CPU rows are read by address: no detach, no .numpy()).
    """
    if x.is_cuda:
        x = x.detach()  # DLPack refuses tensors that require grad
        out = torch.empty_like(x)
        perm = torch.empty(x.shape, dtype=torch.int32, device=x.device)
        blocks = torch.empty(x.shape, dtype=torch.int32, device=x.device)
        if x.numel():
            from . import _interop

            _interop.torch_cuda_forward(op, regularization, x, eps, sign, out, perm, blocks)
        return out, perm, blocks
    rows, n = x.shape
    out, perm, blocks = _cpu_backend.forward_at(op, regularization, x.data_ptr(), rows, n,
                                                x.dtype is torch.float32, eps, sign)
    return torch.from_numpy(out), perm, blocks


def as_tensor(index):
    """A perm/blocks array from solve() as a tensor (shares memory)."""
    return index if isinstance(index, torch.Tensor) else torch.from_numpy(index)


def run_forward(op, regularization, x, eps, sign):
    """solve() with perm and blocks as tensors."""
    out, perm, blocks = solve(op, regularization, x, eps, sign)
    return out, as_tensor(perm), as_tensor(blocks)


def run_backward(op, regularization, g, perm, blocks, aux, eps, sign):
    """Gradient w.r.t. the rows from the contiguous cotangent g of out; aux is out (rank/kl) or
    x (sort/kl), contiguous and of g's dtype. perm and blocks are tensors or, for CPU rows, NumPy
    arrays. g and aux may require grad (read by address on CPU)."""
    if g.is_cuda:
        g = g.detach()
        aux = None if aux is None else aux.detach()
        grad = torch.empty_like(g)
        if g.numel():
            from . import _interop

            _interop.torch_cuda_backward(op, regularization, g, perm, blocks, aux, eps, sign,
                                         grad)
        return grad
    perm = _as_array(perm)
    if g.numel() != perm.size or (aux is not None and aux.dtype is not g.dtype):
        raise ValueError(f"internal: cotangent {g.dtype} {tuple(g.shape)} does not match the "
                         f"forward's {perm.shape}")
    grad = _cpu_backend.backward_at(op, regularization, g.data_ptr(), perm, _as_array(blocks),
                                    0 if aux is None else aux.data_ptr(),
                                    g.dtype is torch.float32, eps, sign)
    return torch.from_numpy(grad)


def _as_array(index):
    return index if isinstance(index, np.ndarray) else index.numpy()
