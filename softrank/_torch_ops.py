"""The back ends registered with torch.library, for torch.compile (no graph breaks).

softrank::solve          (x, op, regularization, eps, sign, eps_rows, target) -> (out, perm, blocks)
softrank::solve_backward (g, perm, blocks, aux, op, regularization, eps, sign, eps_rows) -> grad

eps_rows (optional): one float64 strength per row of x folded into rows, in place of eps;
target (optional): the project modes' sorted target rows, (1, n) or (rows, n).

x is solved along its last dimension (any rank: folded into rows); perm and blocks are shaped
like x. Both ops have fake
(meta) implementations and autograd formulas, so AOTAutograd traces forward and backward;
solve_backward's own derivative (double backward) comes from softrank/_torch_formulas.py.
Eager calls take softrank/_torch.py's Functions instead, which skip the custom-op dispatcher's
per-call work (docs/PERFORMANCE.md).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _contract as C
from . import _torch_backend as backend
from . import _torch_formulas as formulas
from ._torch import _differentiable, save_partition, saved_partition, vjp


@torch.library.custom_op("softrank::solve", mutates_args=())
def solve(x: Tensor, op: str, regularization: str, eps: float, sign: int,
          eps_rows: Optional[Tensor] = None,
          target: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out, perm, blocks = backend.forward(C.mode_of(op, regularization), rows,
                                        eps if eps_rows is None else eps_rows.contiguous(), sign,
                                        None if target is None else target.contiguous())
    return (out.view(x.shape), backend.as_tensor(perm).view(x.shape),
            backend.as_tensor(blocks).view(x.shape))


@solve.register_fake
def _solve_fake(x, op, regularization, eps, sign, eps_rows=None, target=None):
    index = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    return torch.empty_like(x, memory_format=torch.contiguous_format), index, torch.empty_like(index)


@torch.library.custom_op("softrank::solve_backward", mutates_args=())
def solve_backward(g: Tensor, perm: Tensor, blocks: Tensor, aux: Optional[Tensor], op: str,
                   regularization: str, eps: float, sign: int,
                   eps_rows: Optional[Tensor] = None) -> Tensor:
    # Anyone can call this op with any perm, while the native backward trusts perm to be the
    # forward's (the eager routes never pass another): the check lives here, at the one door
    # that takes perm from outside.
    n = g.shape[-1]
    if perm.shape != g.shape or blocks.shape != g.shape or (
            perm.numel() and (int(perm.min()) < 0 or int(perm.max()) >= n)):
        raise ValueError(f"perm and blocks must be the forward's, of shape {tuple(g.shape)} "
                         f"with perm in [0, {n})")
    def rows(t):
        return t.reshape(-1, n).contiguous()

    grad = backend.backward(C.mode_of(op, regularization), rows(g), rows(perm), rows(blocks),
                            None if aux is None else rows(aux),
                            eps if eps_rows is None else eps_rows.contiguous(), sign)
    return grad.view(g.shape)


@solve_backward.register_fake
def _solve_backward_fake(g, perm, blocks, aux, op, regularization, eps, sign, eps_rows=None):
    return torch.empty_like(g, memory_format=torch.contiguous_format)


def _solve_setup_context(ctx, inputs, output):
    x, op, regularization, eps, sign, eps_rows, target = inputs
    save_partition(ctx, (C.mode_of(op, regularization), eps if eps_rows is None else eps_rows,
                         sign, target), x, output)


def _native_backward(mode, g, perm, blocks, aux, eps, sign):
    op, regularization = C.MODE_NAMES[mode]
    if type(eps) is float:
        return solve_backward(g, perm, blocks, aux, op, regularization, eps, sign)
    return solve_backward(g, perm, blocks, aux, op, regularization, 1.0, sign, eps)


def _solve_backward_rule(ctx, grad_out, _grad_perm, _grad_blocks):
    grad = vjp(ctx.spec, grad_out, *saved_partition(ctx), native=_native_backward)
    return grad, None, None, None, None, None, None


solve.register_autograd(_solve_backward_rule, setup_context=_solve_setup_context)


def _solve_backward_setup_context(ctx, inputs, output):
    g, perm, blocks, aux, op, regularization, eps, sign, eps_rows = inputs
    ctx.spec = (C.mode_of(op, regularization), eps if eps_rows is None else eps_rows, sign)
    ctx.save_for_backward(g, perm, blocks, aux)


def _solve_backward_backward_rule(ctx, grad_grad):
    g, perm, blocks, aux = ctx.saved_tensors
    grad_g, grad_aux = _differentiable(formulas.vjp_of_vjp, ctx.spec, g, perm, blocks, aux,
                                       grad_grad)
    return grad_g, None, None, grad_aux, None, None, None, None, None


solve_backward.register_autograd(_solve_backward_backward_rule,
                                 setup_context=_solve_backward_setup_context)
