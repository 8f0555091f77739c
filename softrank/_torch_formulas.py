"""Derivatives of the soft operators written with differentiable torch ops.

The back ends' native backward is the fast first-order path. These formulas are used where
autograd must see through the derivative itself: double backward (create_graph=True,
gradgradcheck, Hessian-vector products), forward-mode AD (jvp, jacfwd) and torch.func transforms.
They use the saved permutation and block starts (docs/CONTRACT.md), never float comparisons.
All tensors are (rows, n); `mode` is softrank/_contract.py's; eps is a float or a (rows, 1)
tensor of per-row strengths.

Notation (sorted coordinates): v' = v.gather(perm); a block B holds sorted positions with equal
block start; segsum(v)_j = sum of v over j's block; rows marked blocks[:, 0] == -1 are NaN rows.

Deviation, as in the native backward (softrank/csrc/backward.h): where the rank modes' scale
sign/eps exceeds the dtype's largest finite value M (tiny strengths: eps < 1/M), it is floored
to sign * M; rank gradients are clamped to [-M, M] (the true ones, ~1/eps for ties, can
exceed the dtype): finite, and 0 exactly for singleton blocks (inf * 0 would be NaN). Where
the plain product is finite it is returned unchanged, bit for bit.
"""
import torch

from ._contract import PROJECT_KL, PROJECT_L2, RANK_KL, RANK_L2, SORT_KL, SORT_L2

_RANKS = (RANK_L2, RANK_KL, PROJECT_L2, PROJECT_KL)


def _rank_scaled(v, sign, eps, r=None):
    """(sign / eps) * v, or (sign / eps) * r * v, kept finite (module docstring): the plain
    product where it is finite, else the scale applied last (no inf * 0), floored to the
    dtype's largest value M where sign / eps exceeds it, and the result clamped to [-M, M]."""
    largest = torch.finfo(v.dtype).max
    scale = sign / eps
    if isinstance(scale, torch.Tensor):  # per-row strengths: the same, row by row
        floored = scale.clamp(-largest, largest).to(v.dtype)
        unscaled = v if r is None else r * v
        plain = scale.to(v.dtype) * unscaled if r is None else scale.to(v.dtype) * r * v
        return torch.where(plain.isfinite() & (scale.abs() <= largest), plain,
                           unscaled * floored).clamp(-largest, largest)
    if not abs(scale) <= largest:
        scale = largest if sign > 0 else -largest
        return ((v if r is None else r * v) * scale).clamp(-largest, largest)
    plain = scale * v if r is None else scale * r * v
    if r is not None:
        plain = torch.where(plain.isfinite(), plain, scale * (r * v))
    return plain.clamp(-largest, largest)


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

    def target_sum(self, mode, r):
        """The block sums of the target (R_B or T_B), r the sorted output: closed form for the
        ranks, the outputs' block sums for the projections."""
        return self.rho_sum(r) if mode == RANK_KL else self.segsum(r)


def vjp(mode, g, partition, aux, eps, sign):
    """Gradient w.r.t. x from the cotangent g of out (differentiable in g and aux)."""
    if mode in _RANKS:
        gs = partition.sorted(g)
        if mode == RANK_L2 or mode == PROJECT_L2:
            grad_s = _rank_scaled(gs - partition.segsum(gs) / partition.count(gs), sign, eps)
        else:
            r = partition.sorted(aux)
            grad_s = _rank_scaled(gs - partition.segsum(gs * r) / partition.target_sum(mode, r),
                                  sign, eps, r)
    elif mode == SORT_L2:
        grad_s = partition.segsum(g) / partition.count(g)
    else:
        p = partition.softmax_weights(sign * partition.sorted(aux))
        grad_s = p * partition.segsum(g)
    return partition.mask_nan_rows(partition.unsorted(grad_s))


def jvp(mode, t, partition, aux, eps, sign):
    """Tangent of out from the tangent t of x (forward mode; differentiable in t and aux)."""
    if mode in _RANKS:
        # The rank Jacobian is symmetric (in sorted coordinates, and so after un-permuting).
        return vjp(mode, t, partition, aux, eps, sign)
    ts = partition.sorted(t)
    if mode == SORT_L2:
        tangent = partition.segsum(ts) / partition.count(ts)
    else:
        p = partition.softmax_weights(sign * partition.sorted(aux))
        tangent = partition.segsum(p * ts)
    return partition.mask_nan_rows(tangent)


def vjp_of_vjp(mode, g, partition, aux, eps, sign, u):
    """Cotangents of (g, aux) for the map (g, aux) -> vjp(g, aux), given the cotangent u of it."""
    grad_g = jvp(mode, u, partition, aux, eps, sign)
    if mode in (RANK_L2, SORT_L2, PROJECT_L2):
        return grad_g, None
    us = partition.sorted(u)
    if mode == RANK_KL or mode == PROJECT_KL:
        gs, r = partition.sorted(g), partition.sorted(aux)
        total = partition.target_sum(mode, r)
        mean_g = partition.segsum(gs * r) / total
        grad_r = _rank_scaled(us * (gs - mean_g) - gs * partition.segsum(us * r) / total, sign,
                              eps)
        if mode == PROJECT_KL:  # total = segsum(r) depends on r too
            grad_r = grad_r + _rank_scaled(partition.segsum(us * r * mean_g) / total, sign, eps)
    else:
        p = partition.softmax_weights(sign * partition.sorted(aux))
        grad_r = sign * partition.segsum(g) * p * (us - partition.segsum(p * us))
    return grad_g, partition.mask_nan_rows(partition.unsorted(grad_r))


def target_term(mode, partition, target, out):
    """A term of value 0 whose derivatives are those of out w.r.t. the sorted target (rows or
    one row, differentiable): l2 adds mean_B(t) to each output, kl scales a block's outputs by
    T_B = sum_B(t) (out_j = T_B softmax_j)."""
    t = target.expand_as(out)
    if mode == PROJECT_L2:
        mean = partition.segsum(t) / partition.count(t)
        return partition.unsorted(mean - mean.detach())
    total = partition.segsum(t)
    fixed = total.detach()
    return partition.unsorted(partition.sorted(out) / fixed * (total - fixed))


def sort_kl_offset(partition, eps, like):
    """The part of a sort/kl output that depends on eps, not on x: position j of a block
    starting at a of c elements gets -log(sum_{m<c} exp(-m/eps)) - (j - a)/eps
    (docs/CONTRACT.md's closed form; eps a (rows, 1) tensor)."""
    n = like.shape[-1]
    c = partition.count(like)
    offset = torch.arange(n, device=like.device, dtype=like.dtype) - partition.start.to(like.dtype)
    geometric = torch.log(-torch.expm1(-c / eps)) - torch.log(-torch.expm1(-1.0 / eps))
    return -geometric - offset / eps
