"""Derivatives of the soft operators written with differentiable torch ops.

The native backward (softrank/_torch_native.py) is the fast first-order path. These formulas are
used where autograd must see through the derivative itself: double backward (create_graph=True,
gradgradcheck, Hessian-vector products), forward-mode AD (jvp, jacfwd) and torch.func transforms.
They use the saved permutation and block starts (docs/CONTRACT.md), never float comparisons.

Notation (sorted coordinates): v' = v.gather(perm); a block B holds sorted positions with equal
block start; segsum(v)_j = sum of v over j's block; rows marked blocks[:, 0] == -1 are NaN rows.
"""
import torch


def save_for_derivatives(ctx, inputs, output):
    """setup_context shared by the eager Function and the custom op: keep what derivatives read.

    That is the int32 permutation and block starts, plus out (rank/kl) or x (sort/kl) as a
    reference; hyperparameters go on ctx. Returns the saved tensors.
    """
    x, op, regularization, eps, sign = inputs
    out, perm, blocks = output
    ctx.mark_non_differentiable(perm, blocks)
    ctx.args = (op, regularization, eps, sign)
    saved = (perm, blocks)
    if regularization == "kl":
        saved += (out if op == "rank" else x,)
    ctx.save_for_backward(*saved)
    return saved


def saved_for_derivatives(ctx):
    """(perm, blocks, aux) from what save_for_derivatives kept (aux is None for l2)."""
    perm, blocks, *aux = ctx.saved_tensors
    return perm, blocks, (aux[0] if aux else None)


class Partition:
    """Per-row block structure from the saved (perm, blocks) of one forward call."""

    def __init__(self, perm, blocks):
        self.perm = perm.long()
        self.nan_rows = blocks[:, :1] < 0
        self.start = blocks.clamp(min=0).long()

    def sorted(self, v):
        return v.gather(1, self.perm)

    def unsorted(self, v_sorted):
        return torch.zeros_like(v_sorted).scatter(1, self.perm, v_sorted)

    def segsum(self, v):
        return torch.zeros_like(v).scatter_add(1, self.start, v).gather(1, self.start)

    def count(self, like):
        return self.segsum(torch.ones_like(like))

    def rho_sum(self, like):
        """sum of rho_k = n - k over each position's block: c * (n - a) - c (c - 1) / 2."""
        n = like.shape[-1]
        a = self.start.to(like.dtype)
        c = self.count(like)
        return c * (n - a) - 0.5 * c * (c - 1)

    def softmax_weights(self, s):
        """softmax of s over each block, shifted by the block's first (largest) element."""
        e = torch.exp(s - s.gather(1, self.start).detach())
        return e / self.segsum(e)

    def mask_nan_rows(self, v):
        return torch.where(self.nan_rows, torch.full_like(v, float("nan")), v)


def vjp(op, regularization, g, partition, aux, eps, sign):
    """Gradient w.r.t. x from the cotangent g of out (differentiable in g and aux)."""
    if op == "rank":
        gs = partition.sorted(g)
        if regularization == "l2":
            grad_s = (sign / eps) * (gs - partition.segsum(gs) / partition.count(gs))
        else:
            r = partition.sorted(aux)
            grad_s = (sign / eps) * r * (gs - partition.segsum(gs * r) / partition.rho_sum(gs))
    elif regularization == "l2":
        grad_s = partition.segsum(g) / partition.count(g)
    else:
        p = partition.softmax_weights(sign * partition.sorted(aux))
        grad_s = p * partition.segsum(g)
    return partition.mask_nan_rows(partition.unsorted(grad_s))


def jvp(op, regularization, t, partition, aux, eps, sign):
    """Tangent of out from the tangent t of x (forward mode; differentiable in t and aux)."""
    if op == "rank":
        # The rank Jacobian is symmetric (in sorted coordinates, and so after un-permuting).
        return vjp(op, regularization, t, partition, aux, eps, sign)
    ts = partition.sorted(t)
    if regularization == "l2":
        tangent = partition.segsum(ts) / partition.count(ts)
    else:
        p = partition.softmax_weights(sign * partition.sorted(aux))
        tangent = partition.segsum(p * ts)
    return partition.mask_nan_rows(tangent)


def vjp_of_vjp(op, regularization, g, partition, aux, eps, sign, u):
    """Cotangents of (g, aux) for the map (g, aux) -> vjp(g, aux), given the cotangent u of it."""
    grad_g = jvp(op, regularization, u, partition, aux, eps, sign)
    if regularization == "l2":
        return grad_g, None
    us = partition.sorted(u)
    if op == "rank":
        gs, r = partition.sorted(g), partition.sorted(aux)
        rho = partition.rho_sum(gs)
        grad_r = (sign / eps) * (us * (gs - partition.segsum(gs * r) / rho)
                                 - gs * partition.segsum(us * r) / rho)
    else:
        p = partition.softmax_weights(sign * partition.sorted(aux))
        grad_r = sign * partition.segsum(g) * p * (us - partition.segsum(p * us))
    return grad_g, partition.mask_nan_rows(partition.unsorted(grad_r))
