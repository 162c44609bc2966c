"""Figures of the loss itself: Balanced L1 beside smooth L1, value and gradient against |x|."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from balanced_l1._files import save_figure_atomically
from balanced_l1.params import BalancedL1Params, DtypeRange, check_number

#: float64's range, for :meth:`BalancedL1Params.check_fits`: the curves are computed in float64.
_FLOAT64 = DtypeRange("float64", float(np.finfo(np.float64).max), float(np.finfo(np.float64).smallest_subnormal))

#: The x-axis spans ``|x| / beta`` from 0 to this many times the larger inflection point.
SPAN = 3.0


def check_plottable(params: BalancedL1Params) -> None:
    """Raise ``ValueError`` for parameters whose curves over ``|x| <= 3 beta`` cannot be held in float64.

    The loss is drawn as ``L / beta``, at most ``3 * gamma`` (scaled) plus ``alpha * |1 / beta - 1|``
    (mmdet), and the gradient at most :attr:`~BalancedL1Params.max_gradient`: both stay below
    ``4 * max_gradient``.
    """
    params.check_fits(_FLOAT64, _FLOAT64)
    limit = _FLOAT64.max / 4.0
    if params.max_gradient > limit:
        raise ValueError(
            f"cannot plot alpha={params.alpha!r}, gamma={params.gamma!r}, beta={params.beta!r}, "
            f"formulation={params.formulation!r}: the largest gradient {params.max_gradient:.6g} must be at most "
            f"{limit:.6g} (a quarter of float64's largest value) so that the curves over |x| <= 3 beta stay finite"
        )


def balanced_l1_curves(t: NDArray[np.float64], params: BalancedL1Params) -> tuple[NDArray[np.float64], ...]:
    """``(L / beta, dL/d|x|)`` of Balanced L1 at ``|x| = t * beta``, ``t >= 0``, overflow-free in float64.

    With ``s = min(t, 1)``, ``u = b s`` and ``c = q - 1`` (0 for ``scaled``, ``1 / beta - 1`` for ``mmdet``):
    ``L / beta = alpha * (((1 + u) ln(1 + u) - u) / b + c ln(1 + u) / b) + gamma (t - s)`` and
    ``dL/d|x| = alpha ln(1 + u) + alpha c / (1 + u)`` below ``beta``, ``gamma`` from ``beta`` on: the
    formulas of :mod:`balanced_l1.reference` divided by ``beta`` and written so that no intermediate
    (``b * |x|``, ``alpha / b``) overflows for extreme parameters. At ``t = 0`` the gradient is the
    right-hand limit (mmdet's starts at ``alpha * c``).
    """
    p = params
    b, c = p.b, p.q - 1.0
    s = np.minimum(t, 1.0)
    u = b * s
    log_term = np.log1p(u)
    inlier = t < 1.0
    # ((1 + u) ln(1 + u) - u) / b <= s ln(1 + b) and ln(1 + u) / b <= s: no quotient exceeds its bound
    loss = p.alpha * (((1.0 + u) * log_term - u) / b) + p.gamma * (t - s)
    if c != 0.0:
        loss = loss + (p.alpha * c) * (log_term / b)
    grad = np.where(inlier, p.alpha * log_term + (p.alpha * c) / (1.0 + u), p.gamma)
    return np.asarray(loss, dtype=np.float64), np.asarray(grad, dtype=np.float64)


def smooth_l1_curves(t: NDArray[np.float64], ratio: float) -> tuple[NDArray[np.float64], ...]:
    """``(L / beta, dL/d|x|)`` of smooth L1 with inflection point ``ratio * beta`` at ``|x| = t * beta``."""
    grad = np.minimum(t, ratio) / ratio  # t / ratio capped at 1, never overflowing for a tiny ratio
    loss = np.where(t < ratio, 0.5 * t * grad, t - 0.5 * ratio)
    return np.asarray(loss, dtype=np.float64), np.asarray(grad, dtype=np.float64)


def figure_title(
    params: BalancedL1Params,
    t: NDArray[np.float64],
    balanced_grad: NDArray[np.float64],
    smooth_grad: NDArray[np.float64],
) -> str:
    """What the drawn gradient curves show, in words: the title of :func:`plot_loss`'s figure.

    Args:
        params: Balanced L1's parameters.
        t: ``|x| / beta`` at the drawn points, from 0.
        balanced_grad: Balanced L1's gradient at ``t`` (at 0 its right-hand limit, as :func:`balanced_l1_curves`).
        smooth_grad: smooth L1's gradient at ``t``.

    Returns:
        The paper's claim, that Balanced L1 raises the inliers' gradient above smooth L1's and caps the
            outliers' at gamma, where the curves bear it out; otherwise what they show instead: an inlier
            gradient above gamma, or one below 0.
    """
    inlier, beside_zero = t < 1.0, (t > 0) & (t < 1.0)
    lowest, highest = float(balanced_grad[inlier].min()), float(balanced_grad[inlier].max())
    setting = f"Balanced L1 ({params.formulation}, β={params.beta:g})"
    if highest > params.gamma:
        return f"{setting}: the inliers' gradient reaches {highest:.4g}, above the outliers' γ = {params.gamma:g}"
    if lowest < 0:
        return f"{setting}: the inliers' gradient starts at {lowest:.4g}, below 0, so the loss goes below 0"
    if (balanced_grad[beside_zero] > smooth_grad[beside_zero]).all():
        return (
            f"Balanced L1 raises the inliers' gradient above smooth L1's and caps the outliers' at γ = {params.gamma:g}"
        )
    return f"{setting} caps the outliers' gradient at γ = {params.gamma:g}, below smooth L1's for some inliers"


def plot_loss(params: BalancedL1Params, out: str | os.PathLike[str], smooth_l1_beta: float | None = None) -> Path:
    """Draw loss and gradient against ``|x|`` for ``params`` and for smooth L1, and save a PNG.

    Smooth L1 uses the same inflection point as ``params`` unless ``smooth_l1_beta`` is given. Both axes
    of the loss are in units of ``beta`` (``|x| / beta`` and ``L / beta``; the gradient is unitless), so
    every ``beta``, from the smallest positive float to the largest, is drawn over the same range
    ``|x| / beta`` in ``[0, 3 * max(1, smooth_l1_beta / beta)]``, where the inflection points are visible
    and no value overflows (at ``beta = 1`` these are the plain ``|x|`` and ``L``; the scaled formulation
    draws the same curves for every ``beta``, since ``L_beta(x) = beta L_1(x / beta)``). The gradient is
    drawn for ``|x| > 0`` (at 0 itself it is 0 by the sign convention). The figure is drawn without
    pyplot, so matplotlib's global backend (a notebook's, say) is left as it is.

    Raises:
        ValueError: for parameters no float64 computation can hold (see
            :meth:`~balanced_l1.params.BalancedL1Params.check_fits`), a largest gradient above a quarter of
            float64's range, or a ``smooth_l1_beta`` that is not finite and > 0 or whose ratio to ``beta``
            is not a finite nonzero float.
        TypeError: for a ``smooth_l1_beta`` that is not a number.
    """
    check_plottable(params)
    if smooth_l1_beta is None:
        smooth_l1_beta, ratio = params.beta, 1.0
    else:
        smooth_l1_beta = check_number("smooth_l1_beta", smooth_l1_beta, strictly_positive=True)
        ratio = smooth_l1_beta / params.beta
        if not 0.0 < ratio < math.inf or SPAN * ratio == math.inf:
            raise ValueError(
                f"smooth_l1_beta / beta must be a finite nonzero float64 so that both curves share an x-axis, "
                f"got smooth_l1_beta={smooth_l1_beta!r} and beta={params.beta!r}"
            )
    from matplotlib.figure import Figure

    t = np.linspace(0.0, SPAN * max(1.0, ratio), 3001)
    balanced_loss, balanced_grad = balanced_l1_curves(t, params)
    smooth_loss, smooth_grad = smooth_l1_curves(t, ratio)
    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_grad = fig.subplots(1, 2)
    label = f"Balanced L1 ({params.formulation}, α={params.alpha:g}, γ={params.gamma:g}, β={params.beta:g})"
    smooth_label = f"smooth L1 (β={smooth_l1_beta:g})"
    ax_loss.plot(t, balanced_loss, label=label, color="tab:red")
    ax_loss.plot(t, smooth_loss, label=smooth_label, color="tab:blue")
    ax_grad.plot(t[1:], balanced_grad[1:], label=label, color="tab:red")
    ax_grad.plot(t[1:], smooth_grad[1:], label=smooth_label, color="tab:blue")
    ax_grad.axhline(params.gamma, color="tab:red", lw=0.8, ls=":", label=f"γ = {params.gamma:g} (outlier gradient)")
    for ax, title in ((ax_loss, "loss L(x) / β"), (ax_grad, "gradient dL/d|x|")):
        ax.axvline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel(f"|x| / β = |pred - target| / {params.beta:g}")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_grad.legend(fontsize=8, loc="lower right")
    fig.suptitle(figure_title(params, t, balanced_grad, smooth_grad))
    return save_figure_atomically(fig, out)
