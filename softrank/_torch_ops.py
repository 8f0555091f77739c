"""The native solver registered with torch.library, for torch.compile (no graph breaks).

softrank::solve          (x, op, regularization, eps, sign) -> (out, perm, blocks)
softrank::solve_backward (g, perm, blocks, aux, op, regularization, eps, sign) -> grad

Both have fake (meta) implementations and autograd formulas, so AOTAutograd can trace forward
and backward; solve_backward's own derivative (double backward) comes from
softrank/_torch_formulas.py. Eager calls do not go through here (see softrank/_torch.py): the
custom-op dispatcher costs more than the whole solve of a short row.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _torch_formulas as formulas
from ._torch_native import run_backward, run_forward


@torch.library.custom_op("softrank::solve", mutates_args=())
def solve(x: Tensor, op: str, regularization: str, eps: float,
          sign: int) -> Tuple[Tensor, Tensor, Tensor]:
    return run_forward(op, regularization, x.contiguous(), eps, sign)


@solve.register_fake
def _solve_fake(x, op, regularization, eps, sign):
    index = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    return torch.empty_like(x, memory_format=torch.contiguous_format), index, torch.empty_like(index)


@torch.library.custom_op("softrank::solve_backward", mutates_args=())
def solve_backward(g: Tensor, perm: Tensor, blocks: Tensor, aux: Optional[Tensor], op: str,
                   regularization: str, eps: float, sign: int) -> Tensor:
    aux = None if aux is None else aux.contiguous()
    return run_backward(op, regularization, g.contiguous(), perm, blocks, aux, eps, sign)


@solve_backward.register_fake
def _solve_backward_fake(g, perm, blocks, aux, op, regularization, eps, sign):
    return torch.empty_like(g, memory_format=torch.contiguous_format)


def _solve_backward_rule(ctx, grad_out, _grad_perm, _grad_blocks):
    perm, blocks, aux = formulas.saved_for_derivatives(ctx)
    op, regularization, eps, sign = ctx.args
    if torch.is_grad_enabled():  # create_graph: keep the derivative differentiable
        grad = formulas.vjp(op, regularization, grad_out, formulas.Partition(perm, blocks), aux,
                            eps, sign)
    else:
        grad = solve_backward(grad_out, perm, blocks, aux, op, regularization, eps, sign)
    return grad, None, None, None, None


solve.register_autograd(_solve_backward_rule, setup_context=formulas.save_for_derivatives)


def _solve_backward_setup_context(ctx, inputs, output):
    g, perm, blocks, aux, op, regularization, eps, sign = inputs
    ctx.args = (op, regularization, eps, sign)
    ctx.save_for_backward(g, perm, blocks, aux)


def _solve_backward_backward_rule(ctx, grad_grad):
    g, perm, blocks, aux = ctx.saved_tensors
    op, regularization, eps, sign = ctx.args
    grad_g, grad_aux = formulas.vjp_of_vjp(op, regularization, g, formulas.Partition(perm, blocks),
                                           aux, eps, sign, grad_grad)
    return grad_g, None, None, grad_aux, None, None, None, None


solve_backward.register_autograd(_solve_backward_backward_rule,
                                 setup_context=_solve_backward_setup_context)
