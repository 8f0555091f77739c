"""PyTorch front end: argument checks and row layout, then the back end through autograd.

A call is checked (softrank/_contract.py), its `dim` moved last and made contiguous, and then
solved by one of:
* nothing to differentiate: the back end's forward_values, outside autograd;
* an eager call: EagerSoftOp, a classic autograd.Function that keeps the partition on ctx as
  the back end returned it;
* a torch.func transform or forward-mode AD: SoftOp (setup_context style, with jvp and vmap);
* torch.compile and torch.jit.trace: the custom op softrank::solve (softrank/_torch_ops.py).
Both Functions share one backward, vjp() below. EagerSoftOp exists because a setup_context
Function's public apply binds its arguments with inspect.signature on every call, a per-call
cost that a classic Function does not pay (docs/PERFORMANCE.md has the measurement).
Only what the backward needs is kept: the int32 permutation and block starts (8 bytes per
element), plus the output (rank/kl) or the input (sort/kl) through save_for_backward.

A spec is (mode, eps, sign, target): eps a float or a float64 tensor of one strength per row,
target the project modes' sorted target rows (else None), both detached. A strength or target
that requires grad is differentiated outside the Functions, from the partition they return
(softrank/_torch_params.py).
"""
import torch

from . import _contract as C
from . import _torch_backend as backend
from . import _torch_compat as compat
from . import _torch_formulas as formulas

_HALF_DTYPES = (torch.float16, torch.bfloat16)
_PLAIN_DISPATCH = torch.Tensor.__torch_dispatch__


def _differentiable(formula, spec, t, perm, blocks, aux, *more):
    """A formula of softrank/_torch_formulas.py on tensors shaped like x (any rank)."""
    mode, eps, sign = spec[:3]
    if type(eps) is not float:
        eps = eps.reshape(-1, 1)
    n = t.shape[-1]
    partition = formulas.Partition(backend.as_tensor(perm).reshape(-1, n),
                                   backend.as_tensor(blocks).reshape(-1, n))
    rows = [None if a is None else a.reshape(-1, n) for a in (t, aux) + more]
    result = formula(mode, rows[0], partition, rows[1], eps, sign, *rows[2:])
    if isinstance(result, tuple):
        return tuple(None if r is None else r.reshape(t.shape) for r in result)
    return result.reshape(t.shape)


def vjp(spec, g, perm, blocks, aux, native=backend.backward):
    """The backward of every route: the gradient w.r.t. x from the cotangent g of out.

    Under create_graph or a transform, autograd must see through it: the differentiable
    formulas. Otherwise the back end's native kernel (or `native`, the custom op's).
    """
    if torch.is_grad_enabled() or compat.needs_transform_route():
        return _differentiable(formulas.vjp, spec, g, perm, blocks, aux)
    mode, eps, sign = spec[:3]
    return native(mode, g.contiguous(), perm, blocks, aux, eps, sign)


class EagerSoftOp(torch.autograd.Function):
    """The soft op of contiguous (rows, n) rows x; spec = (mode, eps, sign, target)."""

    @staticmethod
    def forward(ctx, x, spec):
        mode, eps, sign, target = spec
        out, perm, blocks = backend.forward(mode, x, eps, sign, target)
        ctx.spec = spec
        ctx.partition = (perm, blocks)  # reached by nothing but this backward
        aux = C.aux_of(mode, x, out)
        if aux is not None:
            ctx.save_for_backward(aux)
        return out

    @staticmethod
    def backward(ctx, g):
        aux = ctx.saved_tensors[0] if C.is_kl(ctx.spec[0]) else None
        return vjp(ctx.spec, g, *ctx.partition, aux), None


class SoftOp(torch.autograd.Function):
    """EagerSoftOp for torch.func transforms and forward-mode AD: returns (out, perm, blocks),
    perm and blocks marked non-differentiable."""

    @staticmethod
    def forward(x, mode, eps, sign, target):
        out, perm, blocks = backend.forward(mode, x, eps, sign, target)
        return out, backend.as_tensor(perm), backend.as_tensor(blocks)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, mode, eps, sign, target = inputs
        ctx.save_for_forward(*save_partition(ctx, (mode, eps, sign, target), x, output))

    @staticmethod
    def backward(ctx, g, _grad_perm, _grad_blocks):
        return vjp(ctx.spec, g, *saved_partition(ctx)), None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _differentiable(formulas.jvp, ctx.spec, x_tangent, *saved_partition(ctx)), None, None

    @staticmethod
    def vmap(info, in_dims, x, mode, eps, sign, target):
        # Rows are independent: the vmapped dimension folds into the rows, and so do per-row
        # strengths and targets (repeated where they are not vmapped).
        size = info.batch_size
        x = x if in_dims[0] is None else x.movedim(in_dims[0], 0)
        x = x.expand(size, *x.shape[-2:]) if in_dims[0] is None else x
        rows = x.shape[1]
        if type(eps) is not float:
            eps = (eps.movedim(in_dims[2], 0) if in_dims[2] is not None
                   else eps.expand(size, rows)).reshape(-1).contiguous()
        if target is not None:
            target = (target.movedim(in_dims[4], 0) if in_dims[4] is not None
                      else target.expand(size, *target.shape))
            target = target.expand(size, rows, x.shape[-1]).reshape(-1, x.shape[-1]).contiguous()
        outputs = SoftOp.apply(x.reshape(-1, x.shape[-1]).contiguous(), mode, eps, sign, target)
        return tuple(o.view(x.shape) for o in outputs), (0, 0, 0)


def save_partition(ctx, spec, x, output):
    """setup_context of SoftOp and of the custom op: keep (perm, blocks, aux); returns them."""
    out, perm, blocks = output
    ctx.mark_non_differentiable(perm, blocks)
    ctx.spec = spec
    aux = C.aux_of(spec[0], x, out)
    saved = (perm, blocks) if aux is None else (perm, blocks, aux)
    ctx.save_for_backward(*saved)
    return saved


def saved_partition(ctx):
    """(perm, blocks, aux) from save_partition (aux is None for l2)."""
    perm, blocks, *aux = ctx.saved_tensors
    return perm, blocks, (aux[0] if aux else None)


def _dtypes(dtype):
    """(compute, output) dtypes of a tensor dtype (softrank/_contract.py's policy)."""
    default = str(torch.get_default_dtype()).replace("torch.", "")
    compute, out = C.solver_dtypes(str(dtype).replace("torch.", ""), default)
    return getattr(torch, compute), getattr(torch, out)


def _solve(x, mode, eps, sign, target=None, partition=False):
    """The soft op of contiguous (rows, n) rows x, by the route its context needs: out, or
    (out, perm, blocks) as tensors with `partition`."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        from . import _torch_ops  # registers softrank::solve on first use

        op, regularization = C.MODE_NAMES[mode]
        per_row = type(eps) is not float
        outputs = torch.ops.softrank.solve(x, op, regularization, 1.0 if per_row else eps, sign,
                                           eps if per_row else None, target)
        return outputs if partition else outputs[0]
    if type(x).__torch_dispatch__ is not _PLAIN_DISPATCH:
        # Wrapper subclasses (FakeTensor, MaskedTensor, ...) hold no data the solvers can read.
        raise TypeError(f"values must be a torch.Tensor with data, got the tensor subclass "
                        f"{type(x).__name__}")
    if x.is_neg():  # a negative view (torch._neg_view) is read as its values
        x = x.resolve_neg()
    if partition or compat.needs_transform_route():
        outputs = SoftOp.apply(x, mode, eps, sign, target)
        return outputs if partition else outputs[0]
    if x.requires_grad and torch.is_grad_enabled():
        return EagerSoftOp.apply(x, (mode, eps, sign, target))
    return backend.forward_values(mode, x, eps, sign, target)


def soft_op(op, values, regularization, regularization_strength, dim, descending, target=None):
    """soft_rank/soft_sort, or with op "project" the projection onto the permutahedron of
    target: an int k (soft_topk's (1, ..., 1, 0, ..., 0), k ones) or the caller's w."""
    mode, eps, sign = C.call_spec(op, regularization, regularization_strength, descending)
    per_slice = eps is None
    if values.is_nested:
        raise TypeError("values must be a dense (strided) tensor, got a nested tensor")
    if values.layout is not torch.strided:
        raise TypeError(f"values must be a dense (strided) tensor, got layout {values.layout}")
    if not (values.is_cpu or values.is_cuda):
        raise ValueError(f"values must be on a CPU or CUDA device, got {values.device}")
    compute_dtype = out_dtype = values.dtype
    if compute_dtype is not torch.float32 and compute_dtype is not torch.float64:
        compute_dtype, out_dtype = _dtypes(compute_dtype)
        if out_dtype in _HALF_DTYPES and torch.is_autocast_enabled(values.device.type):
            # Like softmax on autocast's float32 list: fp16/bf16 cannot hold ranks beyond
            # 2048/256.
            out_dtype = torch.float32
    shape = values.shape
    ndim = len(shape)
    axis = C.normalize_dim(dim, ndim)
    C.check_row_length(shape[axis])
    if per_slice or target is not None:
        from . import _torch_params as params

        strengths = (params.strength_rows(regularization_strength, shape, axis, values.device)
                     if per_slice else eps)
        if target is not None:
            target = params.target_rows(target, mode, shape, axis, values.device, compute_dtype)
    if 0 in shape:
        return values.to(out_dtype).clone()
    last = axis == ndim - 1
    x = values if last else values.movedim(axis, -1)
    if ndim != 2:
        moved_shape = x.shape
        x = x.reshape(-1, shape[axis])
    if compute_dtype is not x.dtype:
        x = x.to(compute_dtype)
    if per_slice or target is not None:
        out = params.solve(x.contiguous(), mode, strengths, sign, target)
    else:
        out = _solve(x.contiguous(), mode, eps, sign)
    if ndim != 2:
        out = out.view(moved_shape)
    if not last:
        out = out.movedim(-1, axis).contiguous()
    return out if out_dtype is compute_dtype else out.to(out_dtype)


def soft_op_vjp(op, values, regularization, regularization_strength, dim, descending,
                target=None):
    """Forward on a tensor plus a pullback(cotangent) -> gradient, through autograd."""
    return vjp_of(lambda x: soft_op(op, x, regularization, regularization_strength, dim,
                                    descending, target), values)


def vjp_of(function, values):
    """function(values) and its pullback(cotangent) -> gradient w.r.t. values, by autograd."""
    x = values.detach()
    if not x.dtype.is_floating_point:  # differentiate integer input as the float it becomes
        x = x.to(_dtypes(x.dtype)[0])
    x.requires_grad_()
    with torch.enable_grad():
        out = function(x)

    def pullback(cotangent):
        cotangent = torch.as_tensor(cotangent, device=out.device)
        if cotangent.is_complex():
            raise TypeError(f"cotangent must be real, got complex dtype {cotangent.dtype}")
        cotangent = cotangent.to(out.dtype)
        if cotangent.shape != out.shape:
            raise ValueError(
                f"cotangent must have the output's shape {tuple(out.shape)}, "
                f"got {tuple(cotangent.shape)}"
            )
        (grad,) = torch.autograd.grad(out, x, cotangent, retain_graph=True)
        return grad

    return out.detach(), pullback
