"""PyTorch front end: validation and layout, then the native solver through autograd.

Eager calls use SoftOpFunction (autograd.Function, setup_context style); under torch.compile the
same solver is called as the custom op softrank::solve (softrank/_torch_ops.py).
Only what the backward needs is saved: the int32 permutation and the int32 block starts
(8 bytes per element), plus a reference (no copy) to the output (rank/kl) or the input (sort/kl).
"""
import torch

from . import _torch_formulas as formulas
from . import _validation as V
from ._torch_native import run_backward, run_forward

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _functorch_active():
    return torch._C._are_functorch_transforms_active()


class SoftOpFunction(torch.autograd.Function):
    """Soft rank/sort of contiguous (rows, n) float32/float64 rows; returns (out, perm, blocks).

    Eager path. First-order backward runs the native solver; when autograd must differentiate
    the backward itself (create_graph, torch.func) it uses softrank/_torch_formulas.py instead.
    Forward mode (jvp) and vmap have their own rules, so every torch.func transform works.
    """

    @classmethod
    def apply(cls, *args):
        # Function.apply binds the arguments with inspect.signature on every call of a
        # setup_context-style Function (about 20 us, more than the whole solve of a short row).
        # Our callers pass every argument positionally, so outside functorch transforms we go
        # straight to the C++ apply, as Function.apply itself does after binding.
        if _functorch_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)

    @staticmethod
    def forward(x, op, regularization, eps, sign):
        return run_forward(op, regularization, x.detach(), eps, sign)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_forward(*formulas.save_for_derivatives(ctx, inputs, output))

    @staticmethod
    def backward(ctx, grad_out, _grad_perm, _grad_blocks):
        perm, blocks, aux = formulas.saved_for_derivatives(ctx)
        op, regularization, eps, sign = ctx.args
        if torch.is_grad_enabled() or _functorch_active():
            grad = formulas.vjp(op, regularization, grad_out, formulas.Partition(perm, blocks),
                                aux, eps, sign)
        else:
            grad = run_backward(op, regularization, grad_out.contiguous(), perm, blocks,
                                None if aux is None else aux.detach(), eps, sign)
        return grad, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        perm, blocks, aux = formulas.saved_for_derivatives(ctx)
        op, regularization, eps, sign = ctx.args
        tangent = formulas.jvp(op, regularization, x_tangent, formulas.Partition(perm, blocks),
                               aux, eps, sign)
        return tangent, None, None

    @staticmethod
    def vmap(info, in_dims, x, op, regularization, eps, sign):
        # Rows are independent: fold the vmapped dimension into the rows.
        batch = x.shape[in_dims[0]]
        x = x.movedim(in_dims[0], 0)
        rows = x.reshape(-1, x.shape[-1])
        outputs = SoftOpFunction.apply(rows, op, regularization, eps, sign)
        outputs = tuple(o.reshape(batch, *x.shape[1:]) for o in outputs)
        return outputs, (0, 0, 0)


def _solve(rows, op, regularization, eps, sign):
    if torch.compiler.is_compiling():
        from . import _torch_ops  # registers softrank::solve on first use

        return torch.ops.softrank.solve(rows, op, regularization, eps, sign)
    if (rows.requires_grad and torch.is_grad_enabled()) or _functorch_active() \
            or _forward_ad_active():
        return SoftOpFunction.apply(rows, op, regularization, eps, sign)
    # Nothing can differentiate this call: skip the autograd.Function (about 9 us per call).
    return run_forward(op, regularization, rows, eps, sign)


def _forward_ad_active():
    """True inside a torch.autograd.forward_ad.dual_level (dual tensors need the jvp rule)."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0


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
    if values.layout is not torch.strided:
        raise TypeError(f"values must be a dense (strided) tensor, got layout {values.layout}")
    if not (values.is_cpu or values.is_cuda):
        raise ValueError(f"values must be on a CPU or CUDA device, got {values.device}")
    compute_dtype, out_dtype = _dtypes(values)
    if out_dtype in _HALF_DTYPES and torch.is_autocast_enabled(values.device.type):
        # Like softmax on autocast's float32 list: fp16/bf16 cannot hold ranks beyond 2048/256.
        out_dtype = torch.float32
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
    out, _, _ = _solve(rows, op, regularization, eps, V.sign_for(op, descending))
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
