"""``BalancedL1Loss``: a thin ``torch.nn.Module`` around :func:`balanced_l1.balanced_l1_loss`."""

from __future__ import annotations

from torch import Tensor, nn

from balanced_l1.functional import balanced_l1_loss
from balanced_l1.params import BalancedL1Params, check_loss_weight, check_reduction

__all__ = ["BalancedL1Loss"]


class BalancedL1Loss(nn.Module):
    """Balanced L1 loss as a module, in the shape detection code uses (mmdetection's interface).

    Args:
        alpha: inlier gradient scale, finite and > 0.
        gamma: outlier gradient (cap), finite and > 0.
        beta: inflection point, finite and > 0.
        reduction: default reduction, ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: factor applied to the result, finite and >= 0.
        formulation: ``"scaled"`` (default) or ``"mmdet"``; see :func:`balanced_l1_loss`.

    Example:
        >>> import torch
        >>> from balanced_l1 import BalancedL1Loss
        >>> criterion = BalancedL1Loss(beta=0.11, loss_weight=2.0)
        >>> float(criterion(torch.tensor([0.5]), torch.tensor([0.0])))
        1.4072905...
    """

    def __init__(
        self,
        alpha: float = 0.5,
        gamma: float = 1.5,
        beta: float = 1.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        formulation: str = "scaled",
    ) -> None:
        super().__init__()
        params = BalancedL1Params(alpha, gamma, beta, formulation)
        self.alpha, self.gamma, self.beta = params.alpha, params.gamma, params.beta
        self.formulation = params.formulation
        self.reduction = check_reduction(reduction)
        self.loss_weight = check_loss_weight(loss_weight)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Compute ``loss_weight * balanced_l1_loss(...)``; ``reduction_override`` replaces ``reduction``."""
        reduction = self.reduction if reduction_override is None else check_reduction(reduction_override)
        loss = balanced_l1_loss(
            pred,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            beta=self.beta,
            weight=weight,
            reduction=reduction,
            avg_factor=avg_factor,
            formulation=self.formulation,
        )
        return loss * self.loss_weight if self.loss_weight != 1.0 else loss

    def __prepare_scriptable__(self) -> BalancedL1Loss:
        """Refuse ``torch.jit.script`` with a clear message instead of a failure deep inside TorchScript."""
        raise RuntimeError(
            "BalancedL1Loss can not be compiled with torch.jit.script: the loss is a custom "
            "torch.autograd.Function, which TorchScript does not support. Use torch.compile instead "
            "(fullgraph=True works), or keep the module in eager mode"
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}, formulation={self.formulation!r}"
        )
