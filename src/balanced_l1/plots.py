"""Figures of the loss itself: Balanced L1 beside smooth L1, value and gradient against |x|."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from balanced_l1._files import save_figure_atomically
from balanced_l1.params import BalancedL1Params
from balanced_l1.reference import balanced_l1, balanced_l1_grad, smooth_l1, smooth_l1_grad


def plot_loss(params: BalancedL1Params, out: str | os.PathLike[str], smooth_l1_beta: float | None = None) -> Path:
    """Draw loss and gradient against ``|x|`` for ``params`` and for smooth L1, and save a PNG.

    Smooth L1 uses the same inflection point as ``params`` unless ``smooth_l1_beta`` is given. The
    x-axis spans ``[0, 3 * max(beta, smooth_l1_beta)]`` so the inflection points are visible; the
    gradient is drawn for ``|x| > 0`` (at 0 itself it is 0 by the sign convention). The figure is drawn
    without pyplot, so matplotlib's global backend (a notebook's, say) is left as it is.
    """
    smooth_l1_beta = params.beta if smooth_l1_beta is None else smooth_l1_beta
    from matplotlib.figure import Figure

    span = 3.0 * max(params.beta, smooth_l1_beta)
    x = np.linspace(0.0, span, 3001)
    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_grad = fig.subplots(1, 2)
    label = f"Balanced L1 ({params.formulation}, α={params.alpha:g}, γ={params.gamma:g}, β={params.beta:g})"
    ax_loss.plot(x, balanced_l1(x, params), label=label, color="tab:red")
    ax_loss.plot(x, smooth_l1(x, smooth_l1_beta), label=f"smooth L1 (β={smooth_l1_beta:g})", color="tab:blue")
    ax_grad.plot(x[1:], balanced_l1_grad(x[1:], params), label=label, color="tab:red")
    ax_grad.plot(
        x[1:], smooth_l1_grad(x[1:], smooth_l1_beta), label=f"smooth L1 (β={smooth_l1_beta:g})", color="tab:blue"
    )
    ax_grad.axhline(params.gamma, color="tab:red", lw=0.8, ls=":", label=f"γ = {params.gamma:g} (outlier gradient)")
    for ax, title in ((ax_loss, "loss L(x)"), (ax_grad, "gradient dL/d|x|")):
        ax.axvline(params.beta, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("|x| = |pred - target|")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_grad.legend(fontsize=8, loc="lower right")
    fig.suptitle("Balanced L1 raises the inliers' gradient and caps the outliers' (Libra R-CNN)")
    return save_figure_atomically(fig, out)
