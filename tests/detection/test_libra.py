"""The Libra R-CNN builder, and the three balancing parts composed on one model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from balanced_l1.detection import (
    BackboneWithBFP,
    IoUBalancedNegativeSampler,
    libra_fasterrcnn_resnet50_fpn,
    use_balanced_l1,
    use_iou_balanced_sampling,
    use_libra,
)
from balanced_l1.detection.models import build_small_faster_rcnn
from balanced_l1.experiments.arms import get_arm


def _images_and_targets() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g)]
    targets = [
        {"boxes": torch.tensor([[12.0, 16.0, 70.0, 90.0], [64.0, 40.0, 120.0, 100.0]]), "labels": torch.tensor([1, 2])}
    ]
    return images, targets


@pytest.fixture(scope="module")
def libra() -> FasterRCNN:
    torch.manual_seed(0)
    return libra_fasterrcnn_resnet50_fpn(num_classes=3, min_size=128, max_size=128, box_batch_size_per_image=64)


def test_the_builder_composes_the_three_parts(libra: FasterRCNN) -> None:
    assert isinstance(libra.backbone, BackboneWithBFP)
    assert (libra.backbone.bfp.refine_level, libra.backbone.bfp.refine_type) == (2, "non_local")
    assert libra.backbone.out_channels == 256
    assert isinstance(libra.roi_heads.fg_bg_sampler, IoUBalancedNegativeSampler)
    assert libra.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert libra.roi_heads.balanced_l1_config.values["beta"] == 1.0
    assert type(libra.rpn) is RegionProposalNetwork  # the RPN keeps torchvision's smooth L1


def test_a_training_step_gives_finite_losses_and_trains_the_balanced_pyramid(libra: FasterRCNN) -> None:
    libra.train()
    losses = libra(*_images_and_targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grad = libra.backbone.bfp.refine.out.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_an_inference_step_returns_detections(libra: FasterRCNN) -> None:
    libra.eval()
    with torch.no_grad():
        (detections,) = libra(_images_and_targets()[0])
    assert set(detections) == {"boxes", "labels", "scores"}
    assert detections["boxes"].shape[1] == 4


@pytest.mark.parametrize("sampling_first", [True, False])
def test_sampling_and_balanced_l1_compose_in_either_order(sampling_first: bool) -> None:
    torch.manual_seed(0)
    model = build_small_faster_rcnn(2)
    model.backbone = BackboneWithBFP(model.backbone, refine_level=1)
    steps = [
        lambda: use_iou_balanced_sampling(model, generator=torch.Generator().manual_seed(0)),
        lambda: use_balanced_l1(model, placement="roi"),
    ]
    for step in steps if sampling_first else steps[::-1]:
        step()
    counted = []
    sampler = model.roi_heads.fg_bg_sampler

    class CountingSampler:
        def sample(
            self, labels: list[Tensor], ious: list[Tensor], gt_indices: list[Tensor]
        ) -> tuple[list[Tensor], list[Tensor]]:
            counted.append(len(ious))
            return sampler.sample(labels, ious, gt_indices)

    model.roi_heads.fg_bg_sampler = CountingSampler()
    losses = model(*_images_and_targets())
    assert counted == [1]
    assert hasattr(model.roi_heads, "balanced_l1_config")
    assert torch.isfinite(sum(losses.values()))


def test_use_libra_gives_a_small_model_the_three_parts() -> None:
    torch.manual_seed(0)
    model = use_libra(build_small_faster_rcnn(2), refine_level=1, refine_type="conv")
    assert isinstance(model.backbone, BackboneWithBFP) and model.backbone.bfp.refine_type == "conv"
    assert isinstance(model.roi_heads.fg_bg_sampler, IoUBalancedNegativeSampler)
    assert hasattr(model.roi_heads, "balanced_l1_config") and type(model.rpn) is RegionProposalNetwork


def test_use_libra_twice_is_rejected() -> None:
    torch.manual_seed(0)
    model = use_libra(build_small_faster_rcnn(2), refine_level=1)
    with pytest.raises(ValueError, match=r"model.backbone is already a BackboneWithBFP; add the Balanced Feature"):
        use_libra(model, refine_level=1)


def test_use_libra_needs_a_two_stage_detector() -> None:
    with pytest.raises(TypeError, match=r"use_libra needs a torchvision two-stage detector .*got Linear"):
        use_libra(nn.Linear(2, 2))


def test_a_module_with_roi_heads_but_no_rpn_is_rejected_unchanged() -> None:
    torch.manual_seed(0)
    parts = build_small_faster_rcnn(2)
    model = nn.Module()
    model.backbone, model.roi_heads = parts.backbone, parts.roi_heads
    with pytest.raises(TypeError, match=r"use_libra needs a torchvision two-stage detector .*got Module"):
        use_libra(model, refine_level=1)
    assert type(model.roi_heads) is RoIHeads and not isinstance(model.backbone, BackboneWithBFP)


def test_a_bad_refine_level_leaves_the_model_unchanged() -> None:
    torch.manual_seed(0)
    model = build_small_faster_rcnn(2)
    with pytest.raises(ValueError, match=r"refine_level must be in \[0, 3\) \(num_levels=3\), got 3"):
        use_libra(model, refine_level=3)
    assert type(model.roi_heads) is RoIHeads and not isinstance(model.backbone, BackboneWithBFP)


@pytest.mark.parametrize(
    ("arm", "bfp", "sampling", "balanced_l1"),
    [
        ("smooth_l1", False, False, False),
        ("balanced_l1", False, False, True),
        ("iou_sampling", False, True, False),
        ("bfp", True, False, False),
        ("libra", True, True, True),
    ],
)
def test_the_compare_arms_configure_their_parts(arm: str, bfp: bool, sampling: bool, balanced_l1: bool) -> None:
    torch.manual_seed(0)
    model = build_small_faster_rcnn(2)
    get_arm(arm).apply(model, {})
    assert isinstance(model.backbone, BackboneWithBFP) is bfp
    assert isinstance(model.roi_heads.fg_bg_sampler, IoUBalancedNegativeSampler) is sampling
    assert hasattr(model.roi_heads, "balanced_l1_config") is balanced_l1
    assert type(model.rpn) is RegionProposalNetwork  # Balanced L1 goes in the RoI head only, as the paper places it


def test_the_libra_arm_and_use_libra_configure_the_same_model() -> None:
    torch.manual_seed(0)
    by_arm = build_small_faster_rcnn(2)
    get_arm("libra").apply(by_arm, {"alpha": 0.3})
    torch.manual_seed(0)
    by_function = use_libra(build_small_faster_rcnn(2), refine_level=1, alpha=0.3)
    assert type(by_arm.roi_heads) is type(by_function.roi_heads)
    assert by_arm.roi_heads.balanced_l1_config == by_function.roi_heads.balanced_l1_config
    assert type(by_arm.rpn) is type(by_function.rpn) is RegionProposalNetwork
    assert by_arm.backbone.bfp.refine_level == by_function.backbone.bfp.refine_level
    for (name, a), (_, b) in zip(by_arm.state_dict().items(), by_function.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
