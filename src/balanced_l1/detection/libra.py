"""Libra R-CNN (Pang et al., CVPR 2019, arXiv:1904.02701) as a torchvision-style model builder."""

from __future__ import annotations

from typing import Any

from torchvision.models import ResNet50_Weights
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn

from balanced_l1.detection.bfp import BackboneWithBFP
from balanced_l1.detection.losses import use_balanced_l1
from balanced_l1.detection.sampling import use_iou_balanced_sampling


def libra_fasterrcnn_resnet50_fpn(
    *,
    weights: FasterRCNN_ResNet50_FPN_Weights | str | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    num_classes: int = 91,
    **kwargs: Any,
) -> FasterRCNN:
    """Build a Libra R-CNN: torchvision's Faster R-CNN ResNet-50-FPN with the paper's three balancing parts.

    * Balanced Feature Pyramid on the backbone's FPN: levels balanced at level ``"2"`` (stride 16),
      refined by an embedded-Gaussian non-local block (the paper's setting); the ``"pool"`` level is
      recomputed from the balanced last level (see :class:`BackboneWithBFP`).
    * IoU-balanced sampling of the RoI head's negatives: 3 bins, no floor set (mmdetection's Libra
      config); positives are sampled as torchvision does.
    * Balanced L1 (alpha 0.5, gamma 1.5, beta 1) for the RoI head's box regression, as in the paper;
      the RPN keeps torchvision's smooth L1 (beta 1/9), as the paper's and mmdetection's RPN do.

    Nothing is downloaded unless ``weights`` or ``weights_backbone`` is given; then torchvision
    downloads them as ``fasterrcnn_resnet50_fpn`` would. ``weights`` are those of a plain Faster
    R-CNN: they are loaded before the Balanced Feature Pyramid is added, whose refinement starts as
    the identity but whose balanced residual still changes the features, so fine-tune before use.
    Change a part afterwards with :func:`use_iou_balanced_sampling` or
    :func:`balanced_l1.detection.use_balanced_l1`, which replace their settings when called again.

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
    model.backbone = BackboneWithBFP(model.backbone, refine_level=2, refine_type="non_local")
    use_iou_balanced_sampling(model, num_bins=3, floor_thr=-1.0, floor_fraction=0.0)
    use_balanced_l1(model, rpn=False, roi_heads=True, alpha=0.5, gamma=1.5, beta=1.0)
    return model
