"""PyTorch front end: an autograd.Function around the native solver (CPU: Cython, CUDA: CuPy).

Only what the backward needs is saved: the int32 permutation and the int32 block starts
(8 bytes per element), plus a reference (no copy) to the output (rank/kl) or the input (sort/kl).
"""
import torch
from torch.autograd.function import once_differentiable

from . import _cpu_backend
from . import _validation as V

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _run_forward(op, regularization, x, eps, sign):
    out = torch.empty_like(x)
    perm = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    blocks = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    if x.device.type == "cuda":
        from . import _interop

        _interop.torch_cuda_forward(op, regularization, x, eps, sign, out, perm, blocks)
    else:
        _cpu_backend.forward(op, regularization, x.numpy(), eps, sign, out.numpy(),
                             perm.numpy(), blocks.numpy())
    return out, perm, blocks


def _run_backward(op, regularization, g, perm, blocks, aux, eps, sign):
    grad = torch.empty_like(g)
    if g.device.type == "cuda":
        from . import _interop

        _interop.torch_cuda_backward(op, regularization, g, perm, blocks, aux, eps, sign, grad)
    else:
        _cpu_backend.backward(op, regularization, g.numpy(), perm.numpy(), blocks.numpy(),
                              None if aux is None else aux.numpy(), eps, sign, grad.numpy())
    return grad


class SoftOpFunction(torch.autograd.Function):
    """Soft rank/sort of contiguous (rows, n) float32/float64 rows; returns (out, perm, blocks)."""

    @classmethod
    def apply(cls, *args):
        # Function.apply binds the arguments with inspect.signature on every call of a
        # setup_context-style Function (about 20 us, more than the whole solve of a short row).
        # Our callers pass every argument positionally, so outside functorch transforms we go
        # straight to the C++ apply, as Function.apply itself does after binding.
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)

    @staticmethod
    def forward(x, op, regularization, eps, sign):
        return _run_forward(op, regularization, x.detach(), eps, sign)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, op, regularization, eps, sign = inputs
        out, perm, blocks = output
        ctx.mark_non_differentiable(perm, blocks)
        ctx.op, ctx.regularization, ctx.eps, ctx.sign = op, regularization, eps, sign
        if regularization == "kl":
            aux = out if op == "rank" else x
            ctx.save_for_backward(perm, blocks, aux)
        else:
            ctx.save_for_backward(perm, blocks)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_perm, _grad_blocks):
        perm, blocks, *aux = ctx.saved_tensors
        aux = aux[0].detach() if aux else None
        grad = _run_backward(ctx.op, ctx.regularization, grad_out.contiguous(), perm, blocks,
                             aux, ctx.eps, ctx.sign)
        return grad, None, None, None, None


def _dtypes(values):
    dtype = values.dtype
    if dtype.is_complex:
        raise TypeError(f"values must be real, got complex dtype {dtype}")
    if dtype in (torch.float32, torch.float64):
        return dtype, dtype
    if dtype in _HALF_DTYPES:
        return torch.float32, dtype
    if dtype.is_floating_point:  # float8 and other exotic floats
        return torch.float32, dtype
    default = torch.get_default_dtype()  # integers and bool (torchsort's README passes ints)
    return default, default


def soft_op(op, values, regularization, regularization_strength, dim, descending):
    regularization = V.check_regularization(regularization)
    eps = V.check_regularization_strength(regularization_strength)
    descending = V.check_descending(descending)
    if values.layout != torch.strided:
        raise TypeError(f"values must be a dense (strided) tensor, got layout {values.layout}")
    if values.device.type not in ("cpu", "cuda"):
        raise ValueError(f"values must be on a CPU or CUDA device, got {values.device}")
    compute_dtype, out_dtype = _dtypes(values)
    ndim = values.dim()
    axis = V.normalize_dim(dim, ndim)
    n = values.shape[axis]
    V.check_row_length(n)
    if values.numel() == 0:
        return values.to(out_dtype).clone()
    last = axis == ndim - 1
    moved = values if last else values.movedim(axis, -1)
    rows = moved if ndim == 2 and last else moved.reshape(-1, n)
    if rows.dtype != compute_dtype:
        rows = rows.to(compute_dtype)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out, _, _ = SoftOpFunction.apply(rows, op, regularization, eps, V.sign_for(op, descending))
    if not (ndim == 2 and last):
        out = out.reshape(moved.shape)
    if not last:
        out = out.movedim(-1, axis).contiguous()
    return out if out_dtype == compute_dtype else out.to(out_dtype)


def soft_op_vjp(op, values, regularization, regularization_strength, dim, descending):
    """Forward on a tensor plus a pullback(cotangent) -> gradient, through autograd."""
    x = values.detach()
    if not x.dtype.is_floating_point:  # differentiate integer input as the float it becomes
        x = x.to(_dtypes(x)[0])
    x.requires_grad_()
    with torch.enable_grad():
        out = soft_op(op, x, regularization, regularization_strength, dim, descending)

    def pullback(cotangent):
        cotangent = torch.as_tensor(cotangent, dtype=out.dtype, device=out.device)
        if cotangent.shape != out.shape:
            raise ValueError(
                f"cotangent must have the output's shape {tuple(out.shape)}, "
                f"got {tuple(cotangent.shape)}"
            )
        (grad,) = torch.autograd.grad(out, x, cotangent, retain_graph=True)
        return grad

    return out.detach(), pullback
