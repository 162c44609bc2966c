"""Parameters of the Balanced L1 loss: validation and derived constants.

This module knows no framework. Every backend (PyTorch, JAX, Keras) builds a
:class:`BalancedL1Params` once and reads its derived constants, so the rules
for what is a valid ``alpha``, ``gamma``, ``beta``, ``formulation`` and
``reduction`` are written exactly once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

Formulation = Literal["scaled", "mmdet"]
Reduction = Literal["none", "mean", "sum"]

FORMULATIONS: tuple[str, ...] = ("scaled", "mmdet")
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")

#: Largest ``gamma / alpha``: ``b = exp(80) - 1 ~ 5.5e34`` still fits float32 (max ~3.4e38).
MAX_GAMMA_OVER_ALPHA: float = 80.0

#: float32 machine epsilon, added to ``avg_factor`` as mmdetection does.
AVG_FACTOR_EPS: float = float.fromhex("0x1p-23")


def _check_positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return value


def check_formulation(formulation: object) -> str:
    """Return ``formulation`` if it is valid, else raise ``ValueError`` listing the valid ones."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    return str(formulation)


def check_reduction(reduction: object, valid: tuple[str, ...] = REDUCTIONS) -> str:
    """Return ``reduction`` if it is valid, else raise ``ValueError`` listing the valid ones."""
    if reduction not in valid:
        raise ValueError(f"reduction must be one of {valid}, got {reduction!r}")
    return str(reduction)


def check_avg_factor(avg_factor: object, reduction: str) -> None:
    """Check a host-side ``avg_factor`` against ``reduction``.

    Tensors are accepted as they are: reading their value would force a device
    synchronisation, so only Python numbers are checked for sign and finiteness.
    """
    if avg_factor is None:
        return
    if reduction == "sum":
        raise ValueError(
            "avg_factor can not be used with reduction='sum'; use reduction='mean' "
            f"(sum / (avg_factor + eps)) or drop avg_factor (got avg_factor={avg_factor!r})"
        )
    if isinstance(avg_factor, bool):
        raise TypeError(f"avg_factor must be a number or a 0-dim tensor, got {avg_factor!r}")
    if isinstance(avg_factor, (int, float)) and not (math.isfinite(avg_factor) and avg_factor >= 0):
        raise ValueError(f"avg_factor must be finite and >= 0, got {avg_factor!r}")


@dataclass(frozen=True)
class BalancedL1Params:
    """Validated parameters of the Balanced L1 loss and the constants derived from them.

    Args:
        alpha: scale of the inlier gradient ``alpha * ln(b|x|/beta + 1)``; finite, > 0.
        gamma: the outlier gradient (the cap); finite, > 0.
        beta: the inflection point between inliers and outliers; finite, > 0.
        formulation: ``"scaled"`` (``L_beta(x) = beta * L_1(x / beta)``, continuous gradient)
            or ``"mmdet"`` (mmdetection's expression, gradient jump at ``beta != 1``).
    """

    alpha: float = 0.5
    gamma: float = 1.5
    beta: float = 1.0
    formulation: str = "scaled"

    def __post_init__(self) -> None:
        for name in ("alpha", "gamma", "beta"):
            object.__setattr__(self, name, _check_positive_finite(name, getattr(self, name)))
        check_formulation(self.formulation)
        if self.gamma / self.alpha > MAX_GAMMA_OVER_ALPHA:
            raise ValueError(
                f"gamma / alpha must be at most {MAX_GAMMA_OVER_ALPHA:g} so that b = exp(gamma / alpha) - 1 "
                f"fits float32, got gamma={self.gamma!r}, alpha={self.alpha!r} (ratio {self.gamma / self.alpha:g})"
            )

    @property
    def b(self) -> float:
        """``b = exp(gamma / alpha) - 1``, so that ``alpha * ln(b + 1) = gamma``."""
        return math.expm1(self.gamma / self.alpha)

    @property
    def C(self) -> float:  # noqa: N802 - the paper's name
        """The constant of the outlier branch at ``beta = 1``: ``gamma / b - alpha``."""
        return self.gamma / self.b - self.alpha

    @property
    def q(self) -> float:
        """Offset of the inlier log term: 1 for ``scaled``, ``1 / beta`` for ``mmdet``.

        With ``u = b * min(|x|, beta) / beta`` both formulations read
        ``L = alpha * beta / b * ((u + q) * ln(1 + u) - u) + gamma * max(|x| - beta, 0)``.
        """
        return 1.0 if self.formulation == "scaled" else 1.0 / self.beta


@functools.lru_cache(maxsize=256, typed=True)
def _cached_params(alpha: object, gamma: object, beta: object, formulation: object) -> BalancedL1Params:
    return BalancedL1Params(alpha, gamma, beta, formulation)  # type: ignore[arg-type]


def params_for(alpha: object, gamma: object, beta: object, formulation: object) -> BalancedL1Params:
    """Validated :class:`BalancedL1Params`, cached: a loss called every step validates once."""
    try:
        return _cached_params(alpha, gamma, beta, formulation)
    except TypeError:  # unhashable argument: let the constructor raise its own clear error
        return BalancedL1Params(alpha, gamma, beta, formulation)  # type: ignore[arg-type]
