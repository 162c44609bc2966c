"""Predict the gradient balance a box loss would give, from a sample of a trained detector's regression errors.

:class:`~balanced_l1.detection.GradientBalanceMonitor` measures, while a detector trains, how the box
loss splits its gradient between inliers and outliers. The split depends only on the loss and on the
regression errors it sees, so a sample of a run's RoI-head positives (each its predicted deltas, target
deltas and proposal box) is enough to say what *any* other box loss, with any parameters, would give on
the same errors: :func:`predict_box_gradient_balance`. Solving for the Balanced L1 ``alpha`` that
reaches a given inlier/outlier ratio (such as the baseline's) is :func:`solve_alpha`.

The prediction is a first-order one: a detector trained with another loss ends with other errors. How
close it comes is measured by ``balanced-l1 compare`` (the predicted-from-baseline table) and reported
in the documentation's results.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads

from balanced_l1.detection.box_loss import CONFIG_ATTRIBUTE, FLOAT64, BoxLossConfig, get_box_loss
from balanced_l1.detection.gradient_balance import box_gradient_statistics
from balanced_l1.params import MAX_GAMMA_OVER_ALPHA

__all__ = [
    "PREDICTED_STATISTICS",
    "TORCHVISION_ROI_BOX_LOSS",
    "alpha_search_range",
    "predict_box_gradient_balance",
    "roi_box_loss",
    "solve_alpha",
    "split_roi_sample",
]

#: What a prediction holds: the monitor's sample statistics and the mean box-gradient magnitude.
PREDICTED_STATISTICS = (
    "inlier_fraction",
    "inlier_outlier_gradient_ratio",
    "inlier_gradient_share",
    "mean_box_gradient",
)
#: torchvision's Faster R-CNN RoI-head box coder weights.
ROI_BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def split_roi_sample(sample: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(pred, target, proposals)``, each ``(P, 4)``, of a ``(P, 12)`` sample as a run keeps it.

    Raises:
        ValueError: if the sample is not ``(P, 12)``, or holds a value that is not finite.
    """
    _check_tensor("sample", sample)
    if sample.dim() != 2 or sample.shape[1] != 12:
        raise ValueError(
            f"a RoI sample must be (P, 12): predicted deltas, target deltas, proposals; got {tuple(sample.shape)}"
        )
    if not bool(torch.isfinite(sample).all()):
        raise ValueError("a RoI sample must hold finite numbers only")
    return sample[:, :4], sample[:, 4:8], sample[:, 8:]


def _check_tensor(name: str, value: object) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is a real floating tensor (a complex one would lose its
    imaginary part, a list has no shape)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor, got dtype {value.dtype}")


def predict_box_gradient_balance(
    pred: Tensor,
    target: Tensor,
    config: BoxLossConfig,
    *,
    proposals: Tensor | None = None,
    box_coder: BoxCoder | None = None,
) -> dict[str, float | None]:
    """The gradient balance ``config``'s box loss would give on these positive samples, computed in float64.

    Args:
        pred: ``(P, 4)`` predicted encoded deltas of positive samples.
        target: ``(P, 4)`` their target deltas.
        config: the box loss, its parameters and weight (``BoxLossConfig("smooth_l1", {"beta": 1 / 9})`` is
            torchvision's own); computable in float64 (:meth:`~.box_loss.BoxLossConfig.check_fits`).
        proposals: ``(P, 4)`` the samples' proposal boxes; needed by the IoU losses, which compare boxes
            decoded against them.
        box_coder: the coder of the deltas; torchvision's RoI head's (weights 10, 10, 5, 5) by default.

    Returns:
        ``inlier_fraction``, ``inlier_outlier_gradient_ratio`` and ``inlier_gradient_share`` exactly as the
            monitor defines them, and ``mean_box_gradient``: the mean over samples of the L1 norm of the gradient
            of the sample's own loss (loss weight included) with respect to its 4 deltas. ``None`` where undefined.

    Raises:
        TypeError: for ``pred``, ``target`` or ``proposals`` that is not a real floating tensor (a list, a complex
            or an integer tensor), or a ``config`` that is not a :class:`~.box_loss.BoxLossConfig`.
        ValueError: for shapes that are not ``(P, 4)``, an IoU loss without ``proposals``, or a loss that cannot be
            computed in float64.

    Example:
        >>> pred, target = torch.tensor([[0.1, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]), torch.zeros(2, 4)
        >>> smooth_l1 = BoxLossConfig("smooth_l1", {"beta": 1.0})
        >>> round(predict_box_gradient_balance(pred, target, smooth_l1)["inlier_outlier_gradient_ratio"], 6)
        0.1
    """
    _check_tensor("pred", pred)
    _check_tensor("target", target)
    if proposals is not None:
        _check_tensor("proposals", proposals)
    if not isinstance(config, BoxLossConfig):
        raise TypeError(f"config must be a BoxLossConfig, got {type(config).__name__}")
    config.check_fits(FLOAT64)
    if not (pred.shape == target.shape and pred.dim() == 2 and pred.shape[-1] == 4):
        raise ValueError(f"pred and target must both be (P, 4), got {tuple(pred.shape)} and {tuple(target.shape)}")
    x = pred.detach().double().clone().requires_grad_(True)
    t = target.detach().double()
    if config.decoded:
        if proposals is None or proposals.shape != pred.shape:
            shape = None if proposals is None else tuple(proposals.shape)
            raise ValueError(f"the {config.loss} loss compares decoded boxes: give (P, 4) proposals, got {shape}")
        coder = box_coder if box_coder is not None else BoxCoder(ROI_BOX_CODER_WEIGHTS)
        boxes = proposals.detach().double()
        total = config.summed_decoded(x, boxes, coder.decode_single(t, boxes), coder)
    else:
        total = config.summed(x, t)
    (grad,) = torch.autograd.grad(total, x, allow_unused=True)
    if grad is None:  # an empty sample, or a weight of 0
        grad = torch.zeros_like(x)
    stats: dict[str, float | None] = dict(box_gradient_statistics(x.detach(), t, grad))
    stats["mean_box_gradient"] = float(grad.abs().sum(dim=-1).mean()) if grad.shape[0] else None
    return stats


def alpha_search_range(gamma: float) -> tuple[float, float]:
    """The alphas :func:`solve_alpha` searches for a ``gamma``: from just above ``gamma / 80`` (the largest ratio
    Balanced L1 allows) to ``1000 * gamma``.

    Example:
        >>> [round(a, 6) for a in alpha_search_range(1.6)]
        [0.02, 1600.0]
    """
    return math.exp(math.log(gamma / MAX_GAMMA_OVER_ALPHA) + 1e-12), 1000.0 * gamma


def solve_alpha(
    pred: Tensor,
    target: Tensor,
    target_ratio: float,
    *,
    gamma: float | None = None,
    beta: float | None = None,
    formulation: str | None = None,
) -> float | None:
    """The Balanced L1 ``alpha`` whose predicted inlier/outlier gradient ratio on these samples is ``target_ratio``.

    Searched over every alpha that ``gamma`` allows (``gamma / alpha <= 80``) up to ``1000 * gamma`` and whose loss
    can be computed in float64 (:meth:`~.box_loss.BoxLossConfig.check_fits`: a tiny ``beta`` or ``gamma`` leaves
    out the alphas whose ``alpha * beta / b`` underflows), on a logarithmic grid and then by bisection to a
    relative 1e-12.

    Args:
        pred: ``(P, 4)`` predicted deltas of positive samples (with inliers and outliers among them).
        target: ``(P, 4)`` their targets.
        target_ratio: the inlier/outlier gradient ratio to reach, finite and > 0.
        gamma: Balanced L1's gamma, kept fixed; ``None``: the registry's default (1.5).
        beta: Balanced L1's beta, kept fixed; ``None``: the registry's default (1).
        formulation: ``"scaled"`` or ``"mmdet"``; ``None``: the registry's default (``"scaled"``).

    Returns:
        alpha, or ``None`` when no alpha in that range reaches the ratio (or the samples have no inliers or no
            outliers).

    Raises:
        ValueError: for a target ratio that is not finite and > 0, or bad gamma, beta or formulation.
    """
    if not (isinstance(target_ratio, (int, float)) and math.isfinite(target_ratio) and target_ratio > 0):
        raise ValueError(f"target_ratio must be finite and > 0, got {target_ratio!r}")
    given = {"gamma": gamma, "beta": beta, "formulation": formulation}
    fixed = {**get_box_loss("balanced_l1").defaults(), **{k: v for k, v in given.items() if v is not None}}
    fixed = dict(BoxLossConfig("balanced_l1", {**fixed, "alpha": fixed["gamma"]}).values)  # each value checked

    def config(log_alpha: float) -> BoxLossConfig | None:
        try:
            loss = BoxLossConfig("balanced_l1", {**fixed, "alpha": math.exp(log_alpha)})
            loss.check_fits(FLOAT64)
        except ValueError:
            return None
        return loss

    def gap(loss: BoxLossConfig) -> float | None:
        ratio = predict_box_gradient_balance(pred, target, loss)["inlier_outlier_gradient_ratio"]
        return None if ratio is None else ratio - target_ratio

    low, high = (
        math.log(fixed["gamma"] / MAX_GAMMA_OVER_ALPHA) + 1e-12,
        math.log(1000.0 * fixed["gamma"]),
    )  # see alpha_search_range
    grid = [(p, config(p)) for p in (low + (high - low) * i / 64 for i in range(65))]
    points = [p for p, loss in grid if loss is not None]
    values = [gap(loss) for _, loss in grid if loss is not None]
    if not points or any(v is None for v in values):
        return None
    for i in range(len(points) - 1):
        (a, fa), (b, fb) = (points[i], values[i]), (points[i + 1], values[i + 1])
        assert fa is not None and fb is not None
        if fa == 0.0:
            return math.exp(a)
        if (fa < 0) != (fb < 0):
            for _ in range(200):
                middle = 0.5 * (a + b)
                loss = config(middle)
                fm = None if loss is None else gap(loss)
                if fm is None:
                    return None
                if (fm < 0) == (fa < 0):
                    a, fa = middle, fm
                else:
                    b = middle
                if b - a < 1e-12:
                    break
            return math.exp(0.5 * (a + b))
    return None


#: torchvision's own RoI-head box loss: smooth L1 with beta 1/9 and weight 1, on the encoded deltas.
TORCHVISION_ROI_BOX_LOSS = BoxLossConfig("smooth_l1", {"beta": 1.0 / 9.0}, 1.0)


def roi_box_loss(model: nn.Module) -> BoxLossConfig | None:
    """The box loss a two-stage detector's RoI head trains with, or ``None`` for a model without a RoI head.

    A RoI head switched by ``use_balanced_l1``, ``use_box_loss`` or ``use_libra`` gives its
    :class:`~balanced_l1.detection.losses.BoxLossConfig`; torchvision's own gives :data:`TORCHVISION_ROI_BOX_LOSS`.

    Example:
        >>> from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
        >>> model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
        >>> roi_box_loss(model).loss
        'smooth_l1'
    """
    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, RoIHeads):
        return None
    config = getattr(heads, CONFIG_ATTRIBUTE, None)
    return config if isinstance(config, BoxLossConfig) else TORCHVISION_ROI_BOX_LOSS
