"""PyTorch front end: validation and layout, then the native solver through autograd.

Three routes to the same solver, from the cheapest:
* CPU rows, eager: softrank/_torch_cpu.py (the solver alone when nothing can differentiate the
  call, else CpuSoftOp, one output, the partition kept on ctx);
* CUDA rows, eager: the solver alone, or EagerSoftOp when the call can be differentiated;
* torch.func transforms and forward-mode AD: SoftOpFunction (setup_context style, jvp, vmap);
  under torch.compile the custom op softrank::solve (softrank/_torch_ops.py).
Only what the backward needs is kept: the int32 permutation and the int32 block starts
(8 bytes per element), plus a reference (no copy) to the output (rank/kl) or the input (sort/kl).
"""
import math

import torch
from torch.autograd import forward_ad as _forward_ad

from . import _torch_cpu
from . import _torch_formulas as formulas
from . import _validation as V
from ._cpu_backend import MODE_OF as _MODE_OF
from ._torch_native import as_tensor, run_backward, run_forward, solve

_HALF_DTYPES = (torch.float16, torch.bfloat16)
# V.sign_for(op, descending) as a lookup: _SIGN_OF[op][descending].
_SIGN_OF = {op: (V.sign_for(op, False), V.sign_for(op, True)) for op in ("rank", "sort")}


_functorch_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling
_is_grad_enabled = torch.is_grad_enabled
_float32, _float64, _strided = torch.float32, torch.float64, torch.strided
_cpu_apply, _cpu_solve = _torch_cpu.apply, _torch_cpu.solve


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


class EagerSoftOp(torch.autograd.Function):
    """Soft rank/sort of contiguous (rows, n) rows for eager autograd; returns out only.
    _solve sends CUDA rows here (CPU rows go to softrank/_torch_cpu.py's shorter route).

    The cheapest autograd.Function for the common case (about 40% less per call than
    SoftOpFunction on short rows): one tensor argument plus the packed hyperparameters, a single
    output, and the partition kept on ctx as the solver returned it (NumPy arrays on CPU), since
    nothing but this backward can see it. The output (rank/kl) or input (sort/kl) goes through
    save_for_backward, so in-place changes to them are detected. Not usable under torch.func
    transforms (old-style forward); _solve routes those to SoftOpFunction.
    """

    @staticmethod
    def forward(ctx, x, spec):
        op, regularization, eps, sign = spec
        out, perm, blocks = solve(op, regularization, x, eps, sign)
        ctx.partition = (perm, blocks)
        ctx.spec = spec
        if regularization == "kl":
            ctx.save_for_backward(out if op == "rank" else x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        perm, blocks = ctx.partition
        op, regularization, eps, sign = ctx.spec
        aux = ctx.saved_tensors[0] if regularization == "kl" else None
        if torch.is_grad_enabled():  # create_graph: keep the derivative differentiable
            grad = formulas.vjp(op, regularization, grad_out,
                                formulas.Partition(as_tensor(perm), as_tensor(blocks)), aux, eps,
                                sign)
        else:
            grad = run_backward(op, regularization, grad_out.contiguous(), perm, blocks, aux,
                                eps, sign)
        return grad, None


# Function.apply's Python wrapper (functorch checks, unwrapping of dead functorch wrappers) costs
# ~1 us; _solve only comes here outside functorch transforms, so it calls the C++ apply directly,
# as SoftOpFunction.apply does.
_eager_apply = super(torch.autograd.Function, EagerSoftOp).apply


def _solve(rows, op, regularization, eps, sign):
    """Soft op of contiguous (rows, n) rows through the cheapest route that can be differentiated
    as the caller may (see the module docstring); returns out."""
    if _functorch_active() or _forward_ad._current_level >= 0 or _is_compiling():
        if _is_compiling():
            from . import _torch_ops  # registers softrank::solve on first use

            return torch.ops.softrank.solve(rows, op, regularization, eps, sign)[0]
        return SoftOpFunction.apply(rows, op, regularization, eps, sign)[0]
    if rows.is_cpu:
        return _torch_cpu.soft_op(rows, _MODE_OF[op][regularization], eps, sign)
    if rows.requires_grad and torch.is_grad_enabled():
        return _eager_apply(rows, (op, regularization, eps, sign))
    return solve(op, regularization, rows, eps, sign)[0]


def _dtypes(dtype):
    if dtype is torch.float32 or dtype is torch.float64:
        return dtype, dtype
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
    # The common call in fewer steps (each tensor attribute costs ~0.1 us, a sizeable part of a
    # short call): a dense contiguous CPU float32/float64 tensor ranked along its last
    # dimension, with plain Python arguments that pass the checks of the general path below.
    # Its rows are solved in place of the input's layout: no reshape nodes in the graph.
    if (type(regularization_strength) is float and 0.0 < regularization_strength < math.inf
            and type(regularization) is str and (descending is False or descending is True)
            and type(dim) is int):
        mode = _MODE_OF[op].get(regularization)
        dtype = values.dtype
        if (mode is not None and (dtype is _float32 or dtype is _float64)
                and values.is_cpu and values.layout is _strided and values.is_contiguous()):
            shape = values.shape
            ndim = len(shape)
            if ndim == 2 and (dim == -1 or dim == 1):  # zero-size too: solved as empty
                rows, n = shape
                shape = None  # the solver's (rows, n) is the output's shape
            elif ndim and ndim != 2 and (dim == -1 or dim == ndim - 1) and shape[-1]:
                n = shape[-1]
                rows = values.numel() // n
            else:
                rows = -1
            if rows >= 0 and not (_functorch_active() or _forward_ad._current_level >= 0
                                  or _is_compiling()):
                spec = (mode, dtype is _float32, regularization_strength,
                        _SIGN_OF[op][descending], rows, n, shape)  # softrank/_torch_cpu.py
                if values.requires_grad and _is_grad_enabled():
                    return _cpu_apply(values, spec)
                return _cpu_solve(values, spec)
    regularization = V.check_regularization(regularization)
    eps = V.check_regularization_strength(regularization_strength)
    descending = V.check_descending(descending)
    if values.layout is not torch.strided:
        raise TypeError(f"values must be a dense (strided) tensor, got layout {values.layout}")
    if not (values.is_cpu or values.is_cuda):
        raise ValueError(f"values must be on a CPU or CUDA device, got {values.device}")
    compute_dtype, out_dtype = _dtypes(values.dtype)
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
    if compute_dtype is not values.dtype:
        rows = rows.to(compute_dtype)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = _solve(rows, op, regularization, eps, V.sign_for(op, descending))
    if not (ndim == 2 and last):
        out = out.reshape(moved.shape)
    if not last:
        out = out.movedim(-1, axis).contiguous()
    return out if out_dtype is compute_dtype else out.to(out_dtype)


def soft_op_vjp(op, values, regularization, regularization_strength, dim, descending):
    """Forward on a tensor plus a pullback(cotangent) -> gradient, through autograd."""
    x = values.detach()
    if not x.dtype.is_floating_point:  # differentiate integer input as the float it becomes
        x = x.to(_dtypes(x.dtype)[0])
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
