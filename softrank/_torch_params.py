"""Per-slice strengths and targets on torch tensors, and their exact gradients.

softrank/_torch.py solves x through its Functions, which differentiate x only. A strength or
a target w that requires grad is differentiated here, from the partition the Functions return,
by terms whose value is exactly 0 and whose derivatives (of every order) are the output's:

* strength eps, rank and project modes: the output depends on x / eps only, so the rows are
  solved as x * (e0 / eps) with strength e0 = eps.detach(): e0 / eps is exactly 1, and its
  derivative is the output's. sort/l2 scales with x at fixed x / eps**-1 (sort(x, eps) =
  (e0 / eps) sort(x eps / e0, e0)); sort/kl does not, but its dependence on eps is a closed form
  of the partition alone (softrank/_torch_formulas.py's sort_kl_offset), added as
  offset(eps) - offset(e0).
* target w (sorted decreasingly, differentiably, by torch.sort): formulas.target_term.
"""
import torch

from . import _contract as C
from . import _torch_formulas as formulas
from ._torch import _solve


def strength_rows(strength, shape, axis, device):
    """One strength per row (float64, (rows,), possibly requiring grad), from a per-slice
    strength broadcast to the input's shape without axis."""
    s = strength if isinstance(strength, torch.Tensor) else torch.as_tensor(strength)
    kind = "b" if s.dtype is torch.bool else ("c" if s.is_complex() else (
        "f" if s.is_floating_point() else "i"))
    C.check_strength_kind(kind)
    s = s.to(device=device, dtype=torch.float64)
    batch = C.batch_shape(shape, axis)
    try:
        s = torch.broadcast_to(s, batch)
    except RuntimeError:
        raise C.strength_shape_error(s.shape, batch) from None
    C.check_strengths_positive(_holds((s > 0) & s.isfinite()))
    return s.reshape(-1)


def _holds(condition):
    """Whether condition holds everywhere; True where its values cannot be read without
    breaking a torch.compile graph, a torch.func transform or a CUDA graph capture (a read-back
    to the host). There the back ends still check every strength (ValueError naming eps;
    except under capture), and a target that is not finite (or not > 0 for kl) gives NaN
    outputs, not a crash."""
    if torch.compiler.is_compiling() or (condition.is_cuda
                                         and torch.cuda.is_current_stream_capturing()):
        return True
    try:
        return bool(condition.all())
    except RuntimeError:  # vmap cannot read a batched tensor's values
        return True


def target_rows(target, mode, shape, axis, device, dtype):
    """The target rows, sorted decreasingly (differentiably), (1, n) or (rows, n): soft_topk's
    k ones and n - k zeros for a TopK, else the caller's w (the length of dim, or broadcast to
    the input's shape)."""
    n = shape[axis]
    if isinstance(target, C.TopK):
        w = torch.zeros(1, n, dtype=dtype, device=device)
        w[:, :C.check_k(target.k, n)] = 1
        return w
    w = target if isinstance(target, torch.Tensor) else torch.as_tensor(target)
    if w.dtype is torch.bool or w.is_complex():
        raise TypeError(f"w must be real numbers, got dtype {w.dtype}")
    w = w.to(device=device, dtype=dtype)
    if w.ndim == 1 and w.shape[0] == n:
        w = w.reshape(1, n)
    else:
        try:
            w = torch.broadcast_to(w, shape)
        except RuntimeError:
            raise C.target_shape_error(w.shape, n, shape) from None
        w = w.movedim(axis, -1).reshape(-1, n)
    C.check_target_values(_holds(w.isfinite()), _holds(w > 0), C.is_kl(mode))
    return torch.sort(w, dim=-1, descending=True, stable=True).values


def solve(x, mode, eps, sign, target):
    """The soft op of contiguous (rows, n) rows x with per-row strengths eps (or one float) and
    the sorted target rows (or None), differentiable in all three."""
    eps_grad = isinstance(eps, torch.Tensor) and eps.requires_grad
    target_grad = target is not None and target.requires_grad
    fixed_eps = eps.detach().contiguous() if isinstance(eps, torch.Tensor) else eps
    fixed_target = None if target is None else target.detach().contiguous()
    if not (eps_grad or target_grad):
        return _solve(x, mode, fixed_eps, sign, fixed_target)
    if eps_grad:
        column = eps.reshape(-1, 1)
        one = (fixed_eps.reshape(-1, 1) / column).to(x.dtype)  # exactly 1
        if mode == C.SORT_L2:
            x = x / one
        elif mode != C.SORT_KL:
            x = x * one
    out, perm, blocks = _solve(x, mode, fixed_eps, sign, fixed_target, partition=True)
    partition = formulas.Partition(perm, blocks)
    if eps_grad and mode == C.SORT_L2:
        out = out * one
    elif eps_grad and mode == C.SORT_KL:
        offset = formulas.sort_kl_offset(partition, column.to(x.dtype), out)
        out = out + sign * (offset - offset.detach())
    if target_grad:
        out = out + formulas.target_term(mode, partition, target, out)
    return out
