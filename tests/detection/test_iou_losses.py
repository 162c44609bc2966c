"""The IoU-loss arms: decoded-box losses against torchvision's own functions, and their place in the RoI head."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from balanced_l1.detection import build_small_faster_rcnn, use_box_loss
from balanced_l1.detection.box_loss import BoxLossConfig, box_loss_names, get_box_loss
from balanced_l1.detection.iou_losses import decoded_box_loss
from balanced_l1.detection.losses import roi_head_losses
from balanced_l1.experiments.arms import get_arm

CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))
FUNCTIONS = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
IOU_LOSSES = [name for name in box_loss_names() if get_box_loss(name).decoded]
#: mmdetection's Faster R-CNN configs: GIoU 10, CIoU 12; DIoU (no config) takes GIoU's.
MMDETECTION_LOSS_WEIGHTS = {"giou": 10.0, "diou": 10.0, "ciou": 12.0}


def test_the_registered_iou_losses_are_torchvisions_three_with_mmdetections_weights() -> None:
    assert {name: get_box_loss(name).function for name in IOU_LOSSES} == FUNCTIONS
    assert {name: get_box_loss(name).loss_weight.default for name in IOU_LOSSES} == MMDETECTION_LOSS_WEIGHTS
    assert all(get_box_loss(name).placements == ("roi",) for name in IOU_LOSSES)


PROPOSALS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0], [2.0, 30.0, 12.0, 60.0]], dtype=torch.float64)
GT = torch.tensor([[1.0, 1.0, 11.0, 12.0], [4.0, 6.0, 20.0, 16.0], [30.0, 30.0, 40.0, 40.0]], dtype=torch.float64)


@pytest.mark.parametrize("loss", IOU_LOSSES)
def test_decoded_loss_equals_torchvisions_function_on_the_decoded_boxes(loss: str) -> None:
    deltas = torch.tensor([[0.5, -0.2, 0.1, 0.3], [0.0, 0.0, 0.0, 0.0], [-1.0, 2.0, -0.5, 0.4]], dtype=torch.float64)
    # decoded by hand, independently of torchvision's coder: centre + d / 10 * size, size * exp(d / 5)
    w, h = PROPOSALS[:, 2] - PROPOSALS[:, 0], PROPOSALS[:, 3] - PROPOSALS[:, 1]
    cx, cy = PROPOSALS[:, 0] + 0.5 * w, PROPOSALS[:, 1] + 0.5 * h
    pcx, pcy = cx + deltas[:, 0] / 10.0 * w, cy + deltas[:, 1] / 10.0 * h
    pw, ph = w * torch.exp(deltas[:, 2] / 5.0), h * torch.exp(deltas[:, 3] / 5.0)
    decoded = torch.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], dim=1)
    expected = FUNCTIONS[loss](decoded, GT, reduction="sum")
    got = decoded_box_loss(FUNCTIONS[loss], deltas, PROPOSALS, GT, CODER)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_a_perfect_box_has_zero_loss_and_an_empty_set_a_connected_zero() -> None:
    targets = CODER.encode_single(GT, PROPOSALS)
    for loss in IOU_LOSSES:
        # torchvision's losses add eps = 1e-7 to the union, so a perfect box is 0 to about 1e-7 / area
        assert float(decoded_box_loss(FUNCTIONS[loss], targets, PROPOSALS, GT, CODER)) == pytest.approx(0.0, abs=1e-8)
    empty = torch.zeros((0, 4), requires_grad=True)
    total = decoded_box_loss(generalized_box_iou_loss, empty, torch.zeros((0, 4)), torch.zeros((0, 4)), CODER)
    total.backward()
    assert float(total) == 0.0 and empty.grad is not None


def test_the_roi_head_loss_decodes_the_positives_true_class_and_divides_by_the_sampled_count() -> None:
    torch.manual_seed(0)
    labels = [torch.tensor([1, 0, 2])]
    logits = torch.randn(3, 3)
    regression = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    config = BoxLossConfig("giou", loss_weight=10.0)
    _, box = roi_head_losses(
        logits, regression, labels, [torch.zeros(3, 4)], config, decoding=([PROPOSALS], [GT], CODER)
    )
    rows = regression.reshape(3, 3, 4)[[0, 2], [1, 2]]
    expected = (
        10.0 * generalized_box_iou_loss(CODER.decode_single(rows, PROPOSALS[[0, 2]]), GT[[0, 2]], reduction="sum") / 3
    )
    torch.testing.assert_close(box, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="compares decoded boxes"):
        roi_head_losses(logits, regression, labels, [torch.zeros(3, 4)], config)


@pytest.mark.parametrize("loss", IOU_LOSSES)
def test_the_iou_arms_use_mmdetections_loss_weight_in_the_roi_head_only(loss: str) -> None:
    torch.manual_seed(0)
    model = build_small_faster_rcnn(3)
    get_arm(loss).apply(model, {})
    config = model.roi_heads.balanced_l1_config
    assert (config.loss, config.loss_weight) == (loss, MMDETECTION_LOSS_WEIGHTS[loss])
    assert type(model.rpn) is RegionProposalNetwork
    model.train()
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_an_iou_loss_is_refused_in_the_rpn_and_in_one_stage_models() -> None:
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(ValueError, match="RoI head only"):
        use_box_loss(model, "giou", placement="both")
    from torchvision.models.detection import retinanet_resnet50_fpn

    retina = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(ValueError, match="RoI head only"):
        use_box_loss(retina, "giou")
