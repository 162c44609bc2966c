"""Libra R-CNN (Pang et al., CVPR 2019, arXiv:1904.02701): its three parts on any torchvision Faster R-CNN
with an FPN (:func:`use_libra`), and a torchvision-style ResNet-50-FPN builder."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from balanced_l1.detection.bfp import use_balanced_feature_pyramid
from balanced_l1.detection.losses import use_balanced_l1
from balanced_l1.detection.sampling import use_iou_balanced_sampling


def use_libra(model: nn.Module, *, refine_level: int = 2, refine_type: str | None = "non_local") -> nn.Module:
    """Give a torchvision Faster R-CNN with an FPN backbone the three balancing parts of Libra R-CNN, in place.

    * Balanced Feature Pyramid on the backbone (:func:`use_balanced_feature_pyramid`); the ``"pool"``
      level is recomputed from the balanced last level (see :class:`BackboneWithBFP`).
    * IoU-balanced sampling of the RoI head's negatives: 3 bins, no floor set (mmdetection's Libra
      config); positives are sampled as torchvision does.
    * Balanced L1 (alpha 0.5, gamma 1.5, beta 1) for the RoI head's box regression, as in the paper;
      the RPN keeps torchvision's smooth L1, as the paper's and mmdetection's RPN do.

    Call it once per model. Change a part afterwards with :func:`use_iou_balanced_sampling` or
    :func:`balanced_l1.detection.use_balanced_l1`, which replace their settings when called again.

    Args:
        model: a torchvision ``FasterRCNN`` (or Mask / Keypoint R-CNN) whose backbone returns FPN levels.
        refine_level: the level the pyramid is balanced at (see :class:`BalancedFeaturePyramid`);
            2 is stride 16 for torchvision's ResNet-FPN, the middle of the paper's five levels.
        refine_type: ``"non_local"`` (the paper's), ``"conv"`` or ``None``.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: for a model that is not a torchvision ``GeneralizedRCNN`` with a ``RegionProposalNetwork``
            and ``RoIHeads``, or has no FPN ``backbone``; the model is unchanged then.
        ValueError: if ``refine_level`` or ``refine_type`` is invalid for the backbone, or the backbone
            already has a Balanced Feature Pyramid; the model is unchanged then.
    """
    if not (
        isinstance(model, GeneralizedRCNN)
        and isinstance(model.rpn, RegionProposalNetwork)
        and isinstance(model.roi_heads, RoIHeads)
    ):
        raise TypeError(f"use_libra needs a torchvision two-stage detector (Faster R-CNN), got {type(model).__name__}")
    use_balanced_feature_pyramid(model, refine_level=refine_level, refine_type=refine_type)
    use_iou_balanced_sampling(model, num_bins=3, floor_thr=-1.0, floor_fraction=0.0)
    use_balanced_l1(model, rpn=False, roi_heads=True, alpha=0.5, gamma=1.5, beta=1.0)
    return model


def libra_fasterrcnn_resnet50_fpn(
    *,
    weights: FasterRCNN_ResNet50_FPN_Weights | str | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    num_classes: int = 91,
    **kwargs: Any,
) -> FasterRCNN:
    """Build a Libra R-CNN: torchvision's Faster R-CNN ResNet-50-FPN with the paper's three balancing parts.

    The parts are those of :func:`use_libra` with its defaults: a Balanced Feature Pyramid balanced at
    level ``"2"`` (stride 16) with a non-local refinement, IoU-balanced sampling of the RoI head's
    negatives (3 bins), and Balanced L1 for the RoI head's box regression (the RPN keeps smooth L1).

    Nothing is downloaded unless ``weights`` or ``weights_backbone`` is given; then torchvision
    downloads them as ``fasterrcnn_resnet50_fpn`` would. ``weights`` are those of a plain Faster
    R-CNN: they are loaded before the Balanced Feature Pyramid is added, whose refinement starts as
    the identity but whose balanced residual still changes the features, so fine-tune before use.
    Args:
        weights: pretrained Faster R-CNN weights for torchvision, or ``None``.
        weights_backbone: pretrained ResNet-50 weights for torchvision, or ``None`` (the default here,
            unlike torchvision's, so that building never downloads by surprise).
        num_classes: number of output classes, background included.
        **kwargs: passed on to torchvision's ``fasterrcnn_resnet50_fpn`` (for example
            ``trainable_backbone_layers``, ``min_size``, ``box_batch_size_per_image``).

    Returns:
        A ``FasterRCNN`` in training mode whose ``backbone`` is a :class:`BackboneWithBFP`.

    Example:
        >>> model = libra_fasterrcnn_resnet50_fpn(num_classes=3)
        >>> type(model.backbone).__name__, model.roi_heads.fg_bg_sampler.num_bins
        ('BackboneWithBFP', 3)
    """
    model = fasterrcnn_resnet50_fpn(
        weights=weights, weights_backbone=weights_backbone, num_classes=num_classes, **kwargs
    )
    use_libra(model)
    return model
