"""torchvision detection adapters: Balanced L1 box losses (and the rest of Libra R-CNN's balance)."""

from balanced_l1.detection.balance_prediction import predict_box_gradient_balance, solve_alpha
from balanced_l1.detection.bfp import BackboneWithBFP, BalancedFeaturePyramid, use_balanced_feature_pyramid
from balanced_l1.detection.box_loss import BoxLossConfig
from balanced_l1.detection.gradient_balance import GradientBalanceMonitor
from balanced_l1.detection.instance_sampling import (
    InstanceBalancedPositiveSampler,
    instance_balanced_positives,
    use_instance_balanced_sampling,
)
from balanced_l1.detection.iou_balanced_sampling import IoUBalancedNegativeSampler, use_iou_balanced_sampling
from balanced_l1.detection.libra import libra_fasterrcnn_resnet50_fpn, libra_refine_level, use_libra, use_libra_mmdet
from balanced_l1.detection.losses import use_balanced_l1, use_box_loss
from balanced_l1.detection.models import build_small_faster_rcnn
from balanced_l1.detection.rpn_sampling import NegativeCappedSampler, use_rpn_negative_cap

__all__ = [
    "BackboneWithBFP",
    "BalancedFeaturePyramid",
    "BoxLossConfig",
    "GradientBalanceMonitor",
    "InstanceBalancedPositiveSampler",
    "IoUBalancedNegativeSampler",
    "NegativeCappedSampler",
    "build_small_faster_rcnn",
    "instance_balanced_positives",
    "libra_fasterrcnn_resnet50_fpn",
    "libra_refine_level",
    "predict_box_gradient_balance",
    "solve_alpha",
    "use_balanced_feature_pyramid",
    "use_balanced_l1",
    "use_box_loss",
    "use_instance_balanced_sampling",
    "use_iou_balanced_sampling",
    "use_libra",
    "use_libra_mmdet",
    "use_rpn_negative_cap",
]
