"""``BalancedL1Loss``: a thin ``torch.nn.Module`` around :func:`balanced_l1.balanced_l1_loss`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from balanced_l1.functional import _dtype_range, balanced_l1_loss
from balanced_l1.params import (
    BalancedL1Params,
    _check_loss_weight_fits_cached,
    check_loss_weight,
    check_loss_weight_fits,
    check_reduction,
    params_for,
)

__all__ = ["BalancedL1Loss"]

_LOSS_PARAMETERS = ("alpha", "gamma", "beta", "formulation")


class BalancedL1Loss(nn.Module):
    """Balanced L1 loss as a module, in the shape detection code uses (mmdetection's interface).

    Args:
        alpha: inlier gradient scale, finite and > 0.
        gamma: outlier gradient (cap), finite and > 0.
        beta: inflection point, finite and > 0.
        reduction: default reduction, ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: factor applied to the result, finite and >= 0. In ``forward`` a nonzero one must
            also fit the dtypes (:func:`balanced_l1.params.check_loss_weight_fits`): at most the dtype's
            largest value divided by the largest gradient (``gamma`` for ``"scaled"``), so that finite
            inputs never give an inf loss or gradient (float32: about 2.3e38 with the defaults).
        formulation: ``"scaled"`` (default) or ``"mmdet"``; see :func:`balanced_l1_loss`.

    Every parameter is an attribute that can be set after construction, under the same rules: an
    assignment is checked at once (``criterion.loss_weight = -5`` raises ``ValueError``), and
    ``alpha``, ``gamma``, ``beta`` and ``formulation`` together (``gamma / alpha <= 80``), so when
    changing both ``alpha`` and ``gamma`` set first the one that keeps the ratio valid.

    Example:
        >>> import torch
        >>> from balanced_l1 import BalancedL1Loss
        >>> criterion = BalancedL1Loss(beta=0.11, loss_weight=2.0)
        >>> float(criterion(torch.tensor([0.5]), torch.tensor([0.0])))
        1.4072905...
    """

    alpha: float
    gamma: float
    beta: float
    formulation: str
    reduction: str
    loss_weight: float

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
        # checked together above; __setattr__ checks each later assignment against the others
        self.__dict__.update(
            alpha=params.alpha,
            gamma=params.gamma,
            beta=params.beta,
            formulation=params.formulation,
            reduction=check_reduction(reduction),
            loss_weight=check_loss_weight(loss_weight),
        )

    def __setattr__(self, name: str, value: Any) -> None:
        """Check a parameter assigned after construction by the constructor's rules, then store it."""
        if name in _LOSS_PARAMETERS:
            current = {key: self.__dict__[key] for key in _LOSS_PARAMETERS}
            value = getattr(BalancedL1Params(**{**current, name: value}), name)
        elif name == "reduction":
            value = check_reduction(value)
        elif name == "loss_weight":
            value = check_loss_weight(value)
        super().__setattr__(name, value)

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
        if self.loss_weight == 1.0:
            return loss
        self._check_loss_weight_fits(loss.dtype, pred.dtype)
        return loss * self.loss_weight

    def _check_loss_weight_fits(self, result: torch.dtype, gradient: torch.dtype) -> None:
        compiling = torch.compiler.is_compiling()  # dynamo does not look through the caches
        params = (BalancedL1Params if compiling else params_for)(self.alpha, self.gamma, self.beta, self.formulation)
        check = check_loss_weight_fits if compiling else _check_loss_weight_fits_cached
        check(self.loss_weight, params, _dtype_range(result), _dtype_range(gradient))

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
