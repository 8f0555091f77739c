"""``SpearmanLoss``: 1 - soft Spearman correlation as a ``torch.nn.Module``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, SupportsFloat

import torch

from . import _contract as C
from ._spearman import spearmanr

if TYPE_CHECKING:
    import numpy.typing as npt

    from ._api import _Regularization

__all__ = ["SpearmanLoss"]

_REDUCTIONS = ("mean", "sum", "none")


class SpearmanLoss(torch.nn.Module):
    """Loss ``1 - rho``, where ``rho = softrank.spearmanr(pred, target, dim=dim, ...)``.

    The loss is 0 for a perfectly monotone agreement, 1 for no association and 2 for a
    reversed order.  Each slice along ``dim`` is one ranking problem (for a batch of
    scalar predictions of shape ``(batch,)`` the whole batch is ranked at once), and
    the per-slice losses are combined by ``reduction``.

    Parameters
    ----------
    dim : int
        Axis holding the items to rank.
    regularization : {"l2", "kl"}
    regularization_strength : float > 0
        Passed to ``softrank.soft_rank`` for both ``pred`` and ``target``; in the units
        of the values (standardise them, or scale the strength with them).  Do not
        make it much smaller than the typical gap between neighbouring predictions:
        with ``"l2"``, an item whose soft rank is not blended with a neighbour's (a
        gap larger than the strength) gets no gradient, and a strength below every
        gap gives an exactly zero gradient.
    reduction : {"mean", "sum", "none"}
        ``"none"`` returns one loss per slice (the input's shape minus ``dim``).

    Returns
    -------
    Calling the module, ``loss_fn(pred, target)``, returns a tensor on ``pred``'s device in
    the result dtype of ``softrank.spearmanr``: a 0-d tensor, the mean (``"mean"``) or sum
    (``"sum"``) of ``1 - rho`` over the slices, or ``1 - rho`` itself, with the input's
    shape minus ``dim`` (``"none"``).  It is differentiable with respect to ``pred`` (and
    to ``target`` if that requires a gradient); each slice's loss is in ``[0, 2]``.

    A constant slice (e.g. all predictions equal) has rho = 0, so its loss is 1 with a
    zero gradient; see ``softrank.spearmanr``.

    Examples
    --------
    >>> import torch, softrank
    >>> loss_fn = softrank.SpearmanLoss(regularization_strength=0.3)
    >>> pred = torch.tensor([0.3, 0.1, 0.9, 0.5], requires_grad=True)
    >>> target = torch.tensor([1.0, 2.0, 4.0, 3.0])  # pred swaps the first two
    >>> loss = loss_fn(pred, target)
    >>> round(loss.item(), 4)  # the hard 1 - rho is 0.2
    0.1685
    >>> loss.backward()
    >>> pred.grad.sign()  # gradient descent lowers pred[0] and raises pred[1]
    tensor([ 1., -1., -1., -1.])
    """

    def __init__(
        self,
        *,
        dim: int = -1,
        regularization: _Regularization = "l2",
        regularization_strength: SupportsFloat = 1.0,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))}, "
                f"got reduction={reduction!r}"
            )
        C.check_regularization(regularization)
        C.check_regularization_strength(regularization_strength)
        C.check_dim(dim)
        self.dim = dim
        self.regularization = regularization
        self.regularization_strength = regularization_strength
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
        """The loss ``1 - softrank.spearmanr(pred, target, dim=self.dim, ...)``, reduced.

        Call the module, ``loss_fn(pred, target)``, rather than this method directly.

        Parameters
        ----------
        pred : torch.Tensor
            Predictions, any shape with at least one dimension; ``dim`` holds the items
            to rank.
        target : torch.Tensor or array_like
            Targets of ``pred``'s shape (an array is converted to a tensor on ``pred``'s
            device).  Detach it if it should not receive a gradient.

        Returns
        -------
        torch.Tensor
            ``1 - rho`` reduced by ``self.reduction``: a 0-d tensor for ``"mean"`` and
            ``"sum"``, one loss per slice (the input's shape minus ``dim``) for
            ``"none"``.
        """
        rho = spearmanr(
            pred,
            target,
            dim=self.dim,
            regularization=self.regularization,
            regularization_strength=self.regularization_strength,
        )
        loss = 1 - rho
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, regularization={self.regularization!r}, "
            f"regularization_strength={self.regularization_strength}, "
            f"reduction={self.reduction!r}"
        )
