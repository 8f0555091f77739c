"""Calls of the native solvers on torch tensors: Cython on CPU (NumPy views), CuPy on CUDA.

Outputs are allocated by torch; the native code writes into them in place (no copies).
"""
import torch

from . import _cpu_backend


def run_forward(op, regularization, x, eps, sign):
    """(out, perm, blocks) for contiguous (rows, n) float32/float64 rows (docs/CONTRACT.md)."""
    out = torch.empty_like(x)
    perm = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    blocks = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    if x.numel() == 0:
        return out, perm, blocks
    if x.device.type == "cuda":
        from . import _interop

        _interop.torch_cuda_forward(op, regularization, x, eps, sign, out, perm, blocks)
    else:
        _cpu_backend.forward(op, regularization, x.numpy(), eps, sign, out.numpy(),
                             perm.numpy(), blocks.numpy())
    return out, perm, blocks


def run_backward(op, regularization, g, perm, blocks, aux, eps, sign):
    """Gradient w.r.t. the rows from the cotangent g of out; aux is out (rank/kl) or x (sort/kl)."""
    grad = torch.empty_like(g)
    if g.numel() == 0:
        return grad
    if g.device.type == "cuda":
        from . import _interop

        _interop.torch_cuda_backward(op, regularization, g, perm, blocks, aux, eps, sign, grad)
    else:
        _cpu_backend.backward(op, regularization, g.numpy(), perm.numpy(), blocks.numpy(),
                              None if aux is None else aux.numpy(), eps, sign, grad.numpy())
    return grad
