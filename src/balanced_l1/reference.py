"""The float64 NumPy reference of the Balanced L1 loss: the oracle every backend is tested against.

It is written straight from the piecewise formulas of the specification (inlier
branch, outlier branch), not from the branch-free rewrite the fast backends use,
so that the two are independent. It is meant for tests and figures, not speed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from balanced_l1.params import BalancedL1Params


def _abs_diff(x: ArrayLike) -> NDArray[np.float64]:
    return np.abs(np.asarray(x, dtype=np.float64))


def balanced_l1(x: ArrayLike, params: BalancedL1Params | None = None) -> NDArray[np.float64]:
    """Element-wise Balanced L1 loss ``L(x)`` of ``x = pred - target``, in float64.

    ``scaled``: ``alpha/b (b a + beta) ln(1 + b a / beta) - alpha a`` for ``a < beta``,
    else ``gamma a + (gamma / b - alpha) beta``. ``mmdet``: ``alpha/b (b a + 1) ln(1 + b a / beta)
    - alpha a`` for ``a < beta``, else ``gamma a + gamma / b - alpha beta``; ``a = |x|``.
    """
    p = params or BalancedL1Params()
    a = _abs_diff(x)
    alpha, gamma, beta, b = p.alpha, p.gamma, p.beta, p.b
    inner = np.minimum(a, beta)  # keeps the unused branch finite
    log_term = np.log1p(b * inner / beta)
    if p.formulation == "scaled":
        inlier = alpha / b * (b * a + beta) * log_term - alpha * a
        outlier = gamma * a + (gamma / b - alpha) * beta
    else:
        inlier = alpha / b * (b * a + 1.0) * log_term - alpha * a
        outlier = gamma * a + gamma / b - alpha * beta
    return np.asarray(np.where(a < beta, inlier, outlier), dtype=np.float64)


def balanced_l1_grad(x: ArrayLike, params: BalancedL1Params | None = None) -> NDArray[np.float64]:
    """Element-wise derivative ``dL/dx`` of :func:`balanced_l1`, in float64.

    At ``|x| = beta`` the outlier side (``gamma``) is taken; at ``x = 0`` the derivative is 0
    for ``scaled`` and ``sign(x) * alpha * (1 - beta) / beta`` (one-sided) for ``mmdet``.
    """
    p = params or BalancedL1Params()
    xa = np.asarray(x, dtype=np.float64)
    a = np.abs(xa)
    alpha, gamma, beta, b = p.alpha, p.gamma, p.beta, p.b
    inner = np.minimum(a, beta)
    log_term = np.log1p(b * inner / beta)
    if p.formulation == "scaled":
        inlier = alpha * log_term
    else:
        inlier = alpha * log_term + alpha * (b * inner + 1.0) / (b * inner + beta) - alpha
    magnitude = np.where(a < beta, inlier, gamma)
    return np.asarray(np.sign(xa) * magnitude, dtype=np.float64)


def smooth_l1(x: ArrayLike, beta: float = 1.0) -> NDArray[np.float64]:
    """Smooth L1 (``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``), for comparison figures."""
    a = _abs_diff(x)
    return np.asarray(np.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta), dtype=np.float64)


def smooth_l1_grad(x: ArrayLike, beta: float = 1.0) -> NDArray[np.float64]:
    """Derivative of :func:`smooth_l1` with respect to ``x``."""
    xa = np.asarray(x, dtype=np.float64)
    return np.asarray(np.clip(xa / beta, -1.0, 1.0), dtype=np.float64)
