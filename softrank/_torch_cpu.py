"""The eager CPU route of the torch front end: the Cython solver called with as little in between
as possible.

On a short row the solve itself is about 1 us of a ~30 us forward+backward: the rest is the
autograd engine (a do-nothing autograd.Function costs about as much) and the Python between the
caller and the solver, which this route keeps to one autograd.Function holding the solver's
mode number, the rows by address and the partition (perm, blocks) as the NumPy arrays the solver
returned; the solver picks its threads (softrank/_cpu_backend.py's policy). Callers
(softrank/_torch.py) have checked that the input is a contiguous CPU float32/float64 tensor
ranked along its last dimension and that no torch.func transform, forward-mode AD or
torch.compile is active; those go through softrank/_torch.py's other routes.
"""
import torch

from . import _cpu
from . import _torch_formulas as formulas
from ._cpu_backend import AUTO_THREADS, MODE_NAMES, MODES

_float32 = torch.float32
_RANK_KL = MODES["rank", "kl"]
_SORT_KL = MODES["sort", "kl"]


# A call's spec, the tuple that CpuSoftOp and solve take besides x:
#   (mode, single, eps, sign, rows, n, shape)
# the solver's mode number, whether x is float32, the strength, the sign (softrank/_validation.py's
# sign_for), x's rows of n, and x's shape when it is not (rows, n), so that the output and the
# gradient come out in it (None for (rows, n)).


class CpuSoftOp(torch.autograd.Function):
    """Soft rank/sort of contiguous CPU x ranked along its last dimension, as spec describes it.

    Two arguments, not seven: each argument of an autograd.Function costs the engine ~0.1 us
    per call (checked for a tensor on the way in, a None gradient on the way out), and on a
    short row that is a measurable part of the call (0.5-0.6 us of ~28 us, interleaved)."""

    @staticmethod
    def forward(ctx, x, spec):
        mode, single, eps, sign, rows, n, shape = spec
        out, perm, blocks = _cpu.forward_at(mode, x.data_ptr(), rows, n, single, eps, sign,
                                            AUTO_THREADS)
        out = torch.from_numpy(out if shape is None else out.reshape(shape))
        if mode == _SORT_KL:
            # The backward reads x. A reference and its version, checked in backward as
            # save_for_backward would: 0.8-1.8 us less per call (interleaved, (1, 10) and
            # (1, 100)), about what separated soft_sort/kl from soft_sort/l2. No reference
            # cycle: x does not lead back to this node (an output would, so rank/kl's goes
            # through save_for_backward).
            ctx.solved = (spec, perm, blocks, x, x._version)
        else:
            ctx.solved = (spec, perm, blocks, None, 0)
            if mode == _RANK_KL:  # the backward reads the output
                ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (mode, single, eps, sign, _, _, shape), perm, blocks, aux, version = ctx.solved
        if aux is not None and aux._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: the input of soft_sort (kl) is at version {aux._version}; "
                f"expected version {version} instead")
        if mode == _RANK_KL:
            aux = ctx.saved_tensors[0]
        if torch.is_grad_enabled():  # create_graph: keep the derivative differentiable
            return _differentiable_vjp(mode, g, perm, blocks, aux, eps, sign, shape), None
        # The solver reads g by address as perm's shape in the forward's dtype: autograd hands
        # backward a cotangent of the output's shape, dtype and device (validated, cast if
        # needed), but not necessarily contiguous (e.g. the expanded cotangent of out.sum()).
        if not g.is_contiguous():
            g = g.contiguous()
        grad = _cpu.backward_at(mode, g.data_ptr(), perm, blocks,
                                0 if aux is None else aux.data_ptr(), single, eps, sign,
                                AUTO_THREADS)
        return torch.from_numpy(grad if shape is None else grad.reshape(shape)), None


def _differentiable_vjp(mode, g, perm, blocks, aux, eps, sign, shape):
    """The backward as torch ops (softrank/_torch_formulas.py), on (rows, n) rows."""
    op, regularization = MODE_NAMES[mode]
    partition = formulas.Partition(torch.from_numpy(perm), torch.from_numpy(blocks))
    if shape is None:
        return formulas.vjp(op, regularization, g, partition, aux, eps, sign)
    rows_shape = perm.shape
    aux = None if aux is None else aux.reshape(rows_shape)
    return formulas.vjp(op, regularization, g.reshape(rows_shape), partition, aux, eps,
                        sign).reshape(shape)


# Function.apply's Python wrapper (functorch checks, argument binding) costs ~1 us and our
# callers have ruled out functorch: call the C++ apply directly, as Function.apply does.
apply = super(torch.autograd.Function, CpuSoftOp).apply


def solve(x, spec):
    """The soft op of contiguous CPU float32/float64 x (as spec describes it), outside autograd
    (no partition is kept)."""
    mode, single, eps, sign, rows, n, shape = spec
    out = _cpu.forward_values_at(mode, x.data_ptr(), rows, n, single, eps, sign, AUTO_THREADS)
    return torch.from_numpy(out if shape is None else out.reshape(shape))


def soft_op(x, mode, eps, sign):
    """The soft op of contiguous CPU (rows, n) float32/float64 rows x, differentiable when x
    requires grad."""
    rows, n = x.shape
    call = (mode, x.dtype is _float32, eps, sign, rows, n, None)
    if x.requires_grad and torch.is_grad_enabled():
        return apply(x, call)
    return solve(x, call)
