"""torchvision detection adapters: Balanced L1 box losses (and the rest of Libra R-CNN's balance)."""

from balanced_l1.detection.bfp import BackboneWithBFP, BalancedFeaturePyramid, use_balanced_feature_pyramid
from balanced_l1.detection.libra import libra_fasterrcnn_resnet50_fpn, use_libra
from balanced_l1.detection.losses import use_balanced_l1
from balanced_l1.detection.models import build_small_faster_rcnn
from balanced_l1.detection.sampling import IoUBalancedNegativeSampler, use_iou_balanced_sampling

__all__ = [
    "BackboneWithBFP",
    "BalancedFeaturePyramid",
    "IoUBalancedNegativeSampler",
    "build_small_faster_rcnn",
    "libra_fasterrcnn_resnet50_fpn",
    "use_balanced_feature_pyramid",
    "use_balanced_l1",
    "use_iou_balanced_sampling",
    "use_libra",
]
