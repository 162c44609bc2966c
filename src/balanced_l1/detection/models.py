"""A small Faster R-CNN with a multi-level FPN, built from scratch so it trains on a CPU in minutes.

The model is torchvision's :class:`~torchvision.models.detection.FasterRCNN` with a tiny convolutional
backbone (GroupNorm, so its statistics do not depend on the batch split across processes) wrapped in
torchvision's :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`. The backbone
returns an ``OrderedDict`` of pyramid levels ``"0"``, ``"1"``, ``"2"`` (strides 4, 8, 16) and
``"pool"`` (stride 32), so a Balanced Feature Pyramid can wrap ``model.backbone`` later. Nothing is
downloaded; the initial weights depend only on torch's global RNG at construction time.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from balanced_l1.params import check_number

_STAGE_CHANNELS = (16, 32, 64, 96)
FPN_LEVELS = ("0", "1", "2")


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


def _tiny_backbone() -> nn.Sequential:
    c0, c1, c2, c3 = _STAGE_CHANNELS
    return nn.Sequential(
        OrderedDict(
            stem=_conv_block(3, c0, stride=2),
            layer1=_conv_block(c0, c1, stride=2),
            layer2=_conv_block(c1, c2, stride=2),
            layer3=_conv_block(c2, c3, stride=2),
        )
    )


def build_small_faster_rcnn(
    num_classes: int,
    *,
    image_size: int = 128,
    fpn_channels: int = 32,
    anchor_sizes: tuple[int, ...] = (12, 24, 48, 96),
    representation_size: int = 256,
    min_size: int | None = None,
    max_size: int | None = None,
) -> FasterRCNN:
    """Build a CPU-sized Faster R-CNN with a from-scratch backbone and a 3-level FPN (plus a pooled level).

    Call ``torch.manual_seed(seed)`` first for reproducible initial weights.

    Args:
        num_classes: number of object classes, background excluded (the model predicts ``num_classes + 1``).
        image_size: side of the square input images; by default the model's transform keeps this size.
        fpn_channels: channels of every pyramid level.
        anchor_sizes: one anchor size in pixels per level ``"0"``, ``"1"``, ``"2"``, ``"pool"``
            (strides 4, 8, 16, 32), each with aspect ratios 0.5, 1 and 2.
        representation_size: width of the two fully connected layers of the RoI box head.
        min_size: torchvision's resize, shorter side (default ``image_size``).
        max_size: torchvision's resize, cap on the longer side (default ``image_size``).

    Returns:
        A torchvision ``FasterRCNN`` in training mode.

    Raises:
        ValueError: if ``num_classes`` or ``image_size`` is not positive, or ``anchor_sizes`` does not have
            one size per level.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = build_small_faster_rcnn(3).eval()
        >>> list(model.backbone(torch.zeros(1, 3, 128, 128)).keys())
        ['0', '1', '2', 'pool']
    """
    num_classes = check_number("num_classes", num_classes, minimum=1, integer=True)
    image_size = check_number("image_size (pixels)", image_size, minimum=32, integer=True)
    if len(anchor_sizes) != len(FPN_LEVELS) + 1:
        raise ValueError(
            f"anchor_sizes needs one size per level {[*FPN_LEVELS, 'pool']}, got {len(anchor_sizes)}: {anchor_sizes}"
        )
    backbone = BackboneWithFPN(
        _tiny_backbone(),
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2"},
        in_channels_list=list(_STAGE_CHANNELS[1:]),
        out_channels=fpn_channels,
    )
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    roi_pool = MultiScaleRoIAlign(featmap_names=list(FPN_LEVELS), output_size=7, sampling_ratio=1)
    return FasterRCNN(
        backbone,
        min_size=image_size if min_size is None else min_size,
        max_size=image_size if max_size is None else max_size,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=150,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        box_batch_size_per_image=64,
        box_detections_per_img=100,
    )
