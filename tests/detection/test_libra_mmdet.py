"""Libra R-CNN as mmdetection 3.3's config sets it up: use_libra_mmdet and the faithful builder."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.detection.roi_heads import RoIHeads

from balanced_l1.detection import (
    BackboneWithBFP,
    IoUBalancedNegativeSampler,
    NegativeCappedSampler,
    build_small_faster_rcnn,
    libra_fasterrcnn_resnet50_fpn,
    libra_refine_level,
    use_libra_mmdet,
)


def _images_and_targets() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g)]
    boxes = torch.tensor([[12.0, 16.0, 70.0, 90.0], [64.0, 40.0, 120.0, 100.0], [80.0, 10.0, 100.0, 30.0]])
    return images, [{"boxes": boxes, "labels": torch.tensor([1, 2, 1])}]


def _assert_mmdet_parts(model: FasterRCNN, num_levels: int, refine_level: int) -> None:
    assert isinstance(model.backbone, BackboneWithBFP) and model.backbone.balance_pool_level
    bfp = model.backbone.bfp
    assert (bfp.num_levels, bfp.refine_level, bfp.refine_type) == (num_levels, refine_level, "non_local_mmdet")
    sampler = model.roi_heads.fg_bg_sampler
    assert isinstance(sampler, IoUBalancedNegativeSampler)
    assert (sampler.mode, sampler.positive_sampling, sampler.num_bins) == ("mmdet", "instance_balanced", 3)
    assert (sampler.floor_thr, sampler.floor_fraction) == (-1.0, 0.0)
    assert isinstance(model.rpn.fg_bg_sampler, NegativeCappedSampler) and model.rpn.fg_bg_sampler.neg_pos_ub == 5
    config = model.roi_heads.balanced_l1_config
    assert (config.values["alpha"], config.values["gamma"], config.values["beta"]) == (0.5, 1.5, 1.0)
    assert not hasattr(model.rpn, "balanced_l1_config")


def test_the_refine_level_is_the_middle_level_the_finer_of_two() -> None:
    assert [libra_refine_level(n) for n in range(1, 8)] == [0, 0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="num_levels must be an integer >= 1, got 0"):
        libra_refine_level(0)


@pytest.fixture(scope="module")
def faithful() -> FasterRCNN:
    torch.manual_seed(0)
    return libra_fasterrcnn_resnet50_fpn(num_classes=3, min_size=128, max_size=128, mmdet_faithful=True)


def test_the_faithful_builder_balances_five_levels_at_level_two(faithful: FasterRCNN) -> None:
    _assert_mmdet_parts(faithful, num_levels=5, refine_level=2)
    assert faithful.rpn._post_nms_top_n["training"] == 1000
    assert faithful.roi_heads.box_roi_pool.sampling_ratio == 0
    assert (
        faithful.roi_heads.fg_bg_sampler.batch_size_per_image,
        faithful.roi_heads.fg_bg_sampler.positive_fraction,
    ) == (
        512,
        0.25,
    )


def test_the_builders_settings_give_way_to_keyword_arguments() -> None:
    torch.manual_seed(0)
    model = libra_fasterrcnn_resnet50_fpn(num_classes=3, mmdet_faithful=True, rpn_post_nms_top_n_train=300)
    assert model.rpn._post_nms_top_n["training"] == 300


def test_the_builders_flag_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="mmdet_faithful must be a bool, got 'yes'"):
        libra_fasterrcnn_resnet50_fpn(num_classes=3, mmdet_faithful="yes")  # type: ignore[arg-type]


def test_the_small_cpu_model_is_balanced_at_its_stride_8_level_over_four_levels() -> None:
    torch.manual_seed(0)
    model = use_libra_mmdet(build_small_faster_rcnn(2), generator=torch.Generator().manual_seed(0))
    _assert_mmdet_parts(model, num_levels=4, refine_level=1)
    losses = model(*_images_and_targets())
    assert all(torch.isfinite(v) for v in losses.values())
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone.roi_heads) is type(model.roi_heads) and copy.deepcopy(model).rpn.fg_bg_sampler.neg_pos_ub == 5


def test_mobilenet_v3_fpn_is_balanced_over_its_three_levels() -> None:
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    use_libra_mmdet(model)
    _assert_mmdet_parts(model, num_levels=3, refine_level=1)
    model.eval()
    with torch.no_grad():
        (detections,) = model(_images_and_targets()[0])
    assert detections["boxes"].shape[1] == 4


def test_an_explicit_refine_level_is_used_and_checked() -> None:
    torch.manual_seed(0)
    model = use_libra_mmdet(build_small_faster_rcnn(2), refine_level=0)
    assert model.backbone.bfp.refine_level == 0
    other = build_small_faster_rcnn(2)
    with pytest.raises(ValueError, match=r"refine_level must be in \[0, 4\) \(num_levels=4\), got 4"):
        use_libra_mmdet(other, refine_level=4)
    assert type(other.roi_heads) is RoIHeads and not isinstance(other.backbone, BackboneWithBFP)


def test_applying_it_twice_or_to_another_model_is_rejected_unchanged() -> None:
    torch.manual_seed(0)
    model = use_libra_mmdet(build_small_faster_rcnn(2))
    with pytest.raises(ValueError, match=r"model\.backbone is already a BackboneWithBFP"):
        use_libra_mmdet(model)
    with pytest.raises(TypeError, match=r"use_libra_mmdet needs a torchvision two-stage detector .*got Linear"):
        use_libra_mmdet(nn.Linear(2, 2))
