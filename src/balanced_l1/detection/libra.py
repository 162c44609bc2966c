"""Libra R-CNN (Pang et al., CVPR 2019, arXiv:1904.02701): its three parts on any torchvision Faster R-CNN
with an FPN, as this library sets them up (:func:`use_libra`) or as mmdetection 3.3's
``libra-faster-rcnn_r50_fpn_1x_coco.py`` configures them (:func:`use_libra_mmdet`), and a torchvision-style
ResNet-50-FPN builder for either."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn
from torchvision.ops import MultiScaleRoIAlign

from balanced_l1.detection._model_kinds import is_two_stage
from balanced_l1.detection.bfp import BackboneWithBFP, _infer_num_levels, use_balanced_feature_pyramid
from balanced_l1.detection.box_loss import BoxLossConfig, placement_stages
from balanced_l1.detection.iou_balanced_sampling import use_iou_balanced_sampling
from balanced_l1.detection.losses import use_box_loss
from balanced_l1.detection.rpn_sampling import use_rpn_negative_cap
from balanced_l1.params import check_number


def _check_two_stage(model: nn.Module, caller: str) -> None:
    if not is_two_stage(model):
        raise TypeError(f"{caller} needs a torchvision two-stage detector (Faster R-CNN), got {type(model).__name__}")


def libra_refine_level(num_levels: int) -> int:
    """The level a Balanced Feature Pyramid of ``num_levels`` levels is balanced at: the middle one.

    ``(num_levels - 1) // 2``, the finer of the two middle levels when their number is even. It gives
    mmdetection's choice for ResNet-50-FPN (level 2 of P2-P6) and the stride-8 level for the small model
    of :mod:`balanced_l1.detection.models` (P2-P4 and the pool level).

    Args:
        num_levels: number of balanced levels, >= 1.

    Returns:
        The level index.

    Example:
        >>> [libra_refine_level(n) for n in (1, 2, 3, 4, 5)]
        [0, 0, 1, 1, 2]
    """
    return (check_number("num_levels", num_levels, minimum=1, integer=True) - 1) // 2


def use_libra(
    model: nn.Module,
    *,
    refine_level: int = 2,
    refine_type: str | None = "non_local",
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    formulation: str = "scaled",
    loss_weight: float = 1.0,
    placement: str = "roi",
) -> nn.Module:
    """Give a torchvision Faster R-CNN with an FPN backbone the three balancing parts of Libra R-CNN, in place.

    * Balanced Feature Pyramid on the backbone (:func:`use_balanced_feature_pyramid`); the ``"pool"``
      level is recomputed from the balanced last level (see :class:`BackboneWithBFP`).
    * IoU-balanced sampling of the RoI head's negatives: 3 bins, no floor set (mmdetection's Libra
      config); positives are sampled as torchvision does.
    * Balanced L1 (alpha 0.5, gamma 1.5, beta 1 by default) for the RoI head's box regression, as in the
      paper; the RPN keeps torchvision's smooth L1, as the paper's and mmdetection's RPN do
      (``placement="roi"``; ``"rpn"`` or ``"both"`` move or add it).

    Call it once per model. Change a part afterwards with :func:`use_iou_balanced_sampling` or
    :func:`balanced_l1.detection.use_balanced_l1`, which replace their settings when called again.

    Args:
        model: a torchvision ``FasterRCNN`` (or Mask / Keypoint R-CNN) whose backbone returns FPN levels.
        refine_level: the level the pyramid is balanced at (see :class:`BalancedFeaturePyramid`);
            2 is stride 16 for torchvision's ResNet-FPN, the middle of the paper's five levels.
        refine_type: ``"non_local"`` (the paper's), ``"conv"`` or ``None``.
        alpha: Balanced L1's inlier gradient scale (see :func:`balanced_l1.detection.use_balanced_l1`).
        gamma: Balanced L1's outlier gradient.
        beta: Balanced L1's inflection point.
        formulation: ``"scaled"`` or ``"mmdet"``.
        loss_weight: factor applied to the Balanced L1 box losses.
        placement: ``"roi"`` (the paper's), ``"rpn"`` or ``"both"``: where Balanced L1 goes.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: for a model that is not a torchvision ``GeneralizedRCNN`` with a ``RegionProposalNetwork``
            and ``RoIHeads``, or has no FPN ``backbone``; the model is unchanged then.
        ValueError: if ``refine_level`` or ``refine_type`` is invalid for the backbone, or the backbone
            already has a Balanced Feature Pyramid; the model is unchanged then.
    """
    _check_two_stage(model, "use_libra")
    params = {"alpha": alpha, "gamma": gamma, "beta": beta, "formulation": formulation}
    BoxLossConfig("balanced_l1", params, loss_weight)  # checked before the model changes
    placement_stages(placement)
    use_balanced_feature_pyramid(model, refine_level=refine_level, refine_type=refine_type)
    use_iou_balanced_sampling(model, num_bins=3, floor_thr=-1.0, floor_fraction=0.0)
    return use_box_loss(model, "balanced_l1", placement=placement, loss_weight=loss_weight, **params)


def use_libra_mmdet(
    model: nn.Module, *, refine_level: int | None = None, generator: torch.Generator | None = None
) -> nn.Module:
    """Give a torchvision Faster R-CNN with an FPN the Libra parts of mmdetection 3.3's config, in place.

    The settings that ``libra-faster-rcnn_r50_fpn_1x_coco.py`` adds to its Faster R-CNN base, one by one:

    * ``BFP(num_levels=5, refine_level=2, refine_type="non_local")``: a Balanced Feature Pyramid over
      every level the FPN returns, torchvision's ``"pool"`` level (mmdetection's P6, made the same way)
      included, refined with mmcv's exact non-local block (``refine_type="non_local_mmdet"``);
    * the RoI head's ``CombinedSampler(num=512, pos_fraction=0.25)`` with
      ``InstanceBalancedPosSampler`` and ``IoUBalancedNegSampler(floor_thr=-1, floor_fraction=0,
      num_bins=3)``: ``use_iou_balanced_sampling(mode="mmdet", positive_sampling="instance_balanced")``
      (the RoI batch size and positive fraction are left as the model has them: torchvision's
      defaults are 512 and 0.25 already);
    * the RPN sampler's ``neg_pos_ub=5``: :func:`~balanced_l1.detection.rpn_sampling.use_rpn_negative_cap`;
    * ``BalancedL1Loss(alpha=0.5, gamma=1.5, beta=1.0, loss_weight=1.0)`` for the RoI head's box
      regression; the RPN keeps its loss.

    Args:
        model: a torchvision ``FasterRCNN`` (or Mask / Keypoint R-CNN) whose backbone has a torchvision
            ``fpn`` (``BackboneWithFPN``: the ResNet-50, MobileNet-v3 and small CPU models).
        refine_level: the balanced level; ``None`` takes :func:`libra_refine_level` of the number of
            levels, ``"pool"`` counted (2 for ResNet-50-FPN, as mmdetection; 1 for MobileNet-v3-FPN and
            for the small CPU model).
        generator: random number generator for both samplers; ``None`` uses torch's global one.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: for a model that is not a torchvision two-stage detector, or whose pyramid levels
            cannot be counted; the model is unchanged then.
        ValueError: if ``refine_level`` is out of range or the backbone already has a Balanced Feature
            Pyramid; the model is unchanged then.
    """
    _check_two_stage(model, "use_libra_mmdet")
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"model.backbone must be an FPN backbone module, got {type(backbone).__name__}")
    if isinstance(backbone, BackboneWithBFP):
        raise ValueError("model.backbone is already a BackboneWithBFP; add the Balanced Feature Pyramid once per model")
    num_levels = _infer_num_levels(backbone, True)
    use_balanced_feature_pyramid(
        model,
        refine_level=libra_refine_level(num_levels) if refine_level is None else refine_level,
        refine_type="non_local_mmdet",
        balance_pool_level=True,
    )
    use_iou_balanced_sampling(
        model,
        num_bins=3,
        floor_thr=-1.0,
        floor_fraction=0.0,
        mode="mmdet",
        positive_sampling="instance_balanced",
        generator=generator,
    )
    use_rpn_negative_cap(model, neg_pos_ub=5, generator=generator)
    use_box_loss(model, "balanced_l1", placement="roi")  # the paper's Balanced L1 in the RoI head
    return model


def libra_fasterrcnn_resnet50_fpn(
    *,
    weights: FasterRCNN_ResNet50_FPN_Weights | str | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    num_classes: int = 91,
    mmdet_faithful: bool = False,
    **kwargs: Any,
) -> FasterRCNN:
    """Build a Libra R-CNN: torchvision's Faster R-CNN ResNet-50-FPN with the paper's three balancing parts.

    The parts are those of :func:`use_libra` with its defaults: a Balanced Feature Pyramid balanced at
    level ``"2"`` (stride 16) with a non-local refinement, IoU-balanced sampling of the RoI head's
    negatives (3 bins), and Balanced L1 for the RoI head's box regression (the RPN keeps smooth L1).

    With ``mmdet_faithful=True`` they are those of :func:`use_libra_mmdet` instead, and the settings of
    mmdetection's Faster R-CNN base config that torchvision exposes are taken from it too, unless
    given in ``kwargs``: 1000 proposals per image kept after the RPN's NMS in training
    (``rpn_post_nms_top_n_train``; torchvision's default is 2000) and RoIAlign with an adaptive
    number of sampling points (``sampling_ratio=0``; torchvision's default is 2).

    Nothing is downloaded unless ``weights`` or ``weights_backbone`` is given; then torchvision
    downloads them as ``fasterrcnn_resnet50_fpn`` would. ``weights`` are those of a plain Faster
    R-CNN: they are loaded before the Balanced Feature Pyramid is added, whose refinement starts as
    the identity but whose balanced residual still changes the features, so fine-tune before use.
    Args:
        weights: pretrained Faster R-CNN weights for torchvision, or ``None``.
        weights_backbone: pretrained ResNet-50 weights for torchvision, or ``None`` (the default here,
            unlike torchvision's, so that building never downloads by surprise).
        num_classes: number of output classes, background included.
        mmdet_faithful: configure the model as mmdetection 3.3's Libra R-CNN config, see above.
        **kwargs: passed on to torchvision's ``fasterrcnn_resnet50_fpn`` (for example
            ``trainable_backbone_layers``, ``min_size``, ``box_batch_size_per_image``).

    Returns:
        A ``FasterRCNN`` in training mode whose ``backbone`` is a :class:`BackboneWithBFP`.

    Example:
        >>> model = libra_fasterrcnn_resnet50_fpn(num_classes=3)
        >>> type(model.backbone).__name__, model.roi_heads.fg_bg_sampler.num_bins
        ('BackboneWithBFP', 3)
        >>> faithful = libra_fasterrcnn_resnet50_fpn(num_classes=3, mmdet_faithful=True)
        >>> faithful.backbone.bfp.num_levels, faithful.backbone.bfp.refine_level, faithful.rpn.fg_bg_sampler.neg_pos_ub
        (5, 2, 5)
    """
    if not isinstance(mmdet_faithful, bool):
        raise TypeError(f"mmdet_faithful must be a bool, got {mmdet_faithful!r}")
    if mmdet_faithful:
        kwargs.setdefault("rpn_post_nms_top_n_train", 1000)
        kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=0))
    model = fasterrcnn_resnet50_fpn(
        weights=weights, weights_backbone=weights_backbone, num_classes=num_classes, **kwargs
    )
    if mmdet_faithful:
        use_libra_mmdet(model)
    else:
        use_libra(model)
    return model
