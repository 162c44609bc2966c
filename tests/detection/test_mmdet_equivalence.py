"""Our Libra pieces against mmdetection 3.3's and mmcv's own classes, run side by side.

Skipped only when mmdet, mmcv or mmengine is not installed (``pip install -e '.[test]'`` installs them).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
from tests.detection._mmdet_pure import load_mmdet
from torch import Tensor

from balanced_l1.detection import BackboneWithBFP, BalancedFeaturePyramid, build_small_faster_rcnn
from balanced_l1.detection.bfp import _EmbeddedGaussianNonLocal
from balanced_l1.detection.instance_sampling import instance_balanced_positives
from balanced_l1.detection.iou_balanced_sampling import IoUBalancedNegativeSampler


@pytest.fixture(scope="module")
def mm() -> dict[str, Any]:
    return load_mmdet()


def _copy_non_local(ours: _EmbeddedGaussianNonLocal, theirs: Any) -> None:
    with torch.no_grad():
        for mine, name in ((ours.theta, "theta"), (ours.phi, "phi"), (ours.g, "g"), (ours.out, "conv_out")):
            conv = getattr(theirs, name).conv
            torch.nn.init.normal_(conv.weight, std=0.3)
            torch.nn.init.normal_(conv.bias, std=0.1)
            mine.weight.copy_(conv.weight)
            mine.bias.copy_(conv.bias)


@pytest.mark.parametrize("shape", [(2, 8, 7, 5), (1, 16, 13, 9), (1, 4, 1, 1)])
@pytest.mark.parametrize(("mmdet", "reduction", "use_scale"), [(True, 1, False), (False, 2, True)])
def test_our_non_local_blocks_equal_mmcvs_with_the_same_weights(
    mm: dict[str, Any], shape: tuple[int, int, int, int], mmdet: bool, reduction: int, use_scale: bool
) -> None:
    torch.manual_seed(0)
    theirs = mm["NonLocal2d"](shape[1], reduction=reduction, use_scale=use_scale)
    ours = _EmbeddedGaussianNonLocal(shape[1], mmdet=mmdet)
    _copy_non_local(ours, theirs)
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_the_mmdet_block_is_initialised_as_mmcvs(mm: dict[str, Any]) -> None:
    torch.manual_seed(0)
    ours = _EmbeddedGaussianNonLocal(64, mmdet=True)
    theirs = mm["NonLocal2d"](64, reduction=1, use_scale=False)
    for name in ("theta", "phi", "g"):
        mine, reference = getattr(ours, name), getattr(theirs, name).conv
        assert mine.weight.shape == reference.weight.shape
        assert (
            abs(float(mine.weight.detach().std()) / float(reference.weight.detach().std()) - 1) < 0.1
        )  # both N(0, 0.01^2)
        assert not mine.bias.any() and not reference.bias.any()
    assert not ours.out.weight.any() and not theirs.conv_out.conv.weight.any()


def _pyramid(channels: int, height: int, width: int, levels: int) -> list[Tensor]:
    sizes = [(height, width)]
    for _ in range(levels - 1):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return [torch.randn(2, channels, h, w) for h, w in sizes]


@pytest.mark.parametrize("size", [(64, 48), (37, 29), (25, 7)])
@pytest.mark.parametrize("refine_type", ["non_local", None])
def test_our_pyramid_equals_mmdetections_bfp(
    mm: dict[str, Any], size: tuple[int, int], refine_type: str | None
) -> None:
    torch.manual_seed(0)
    theirs = mm["BFP"](8, num_levels=5, refine_level=2, refine_type=refine_type)
    ours = BalancedFeaturePyramid(8, 5, 2, None if refine_type is None else "non_local_mmdet")
    if refine_type is not None:
        _copy_non_local(ours.refine, theirs.refine)
    levels = _pyramid(8, *size, levels=5)
    out = ours(OrderedDict((str(i), x) for i, x in enumerate(levels)))
    for mine, reference in zip(out.values(), theirs(tuple(levels)), strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6)


def test_balancing_the_pool_level_equals_mmdetections_bfp_over_the_fpn_outputs(mm: dict[str, Any]) -> None:
    torch.manual_seed(0)
    backbone = build_small_faster_rcnn(2).backbone
    ours = BackboneWithBFP(backbone, refine_level=1, refine_type="non_local_mmdet", balance_pool_level=True)
    theirs = mm["BFP"](backbone.out_channels, num_levels=4, refine_level=1, refine_type="non_local")
    _copy_non_local(ours.bfp.refine, theirs.refine)
    images = torch.randn(1, 3, 75, 61)
    out = ours(images)
    assert list(out) == ["0", "1", "2", "pool"]
    for mine, reference in zip(out.values(), theirs(tuple(backbone(images).values())), strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6)


def _assign(mm: dict[str, Any], gt_inds: Tensor, ious: Tensor) -> Any:
    return mm["AssignResult"](int(gt_inds.max().clamp(min=1)), gt_inds, ious, labels=None)


def _iou_vector() -> tuple[Tensor, Tensor]:
    """Labels 1 for 4 positives (one of them ground truth, IoU 1) and 0 for 90 negatives over four IoU groups."""
    g = torch.Generator().manual_seed(0)
    negatives = torch.cat(
        [torch.zeros(40), torch.rand(30, generator=g) * 0.33, 0.34 + torch.rand(20, generator=g) * 0.16]
    )
    ious = torch.cat([torch.tensor([1.0, 0.8, 0.7, 0.55]), negatives])
    labels = torch.cat([torch.ones(4, dtype=torch.int64), torch.zeros(90, dtype=torch.int64)])
    return labels, ious


@pytest.mark.parametrize(("num", "floor_thr", "floor_fraction"), [(30, -1.0, 0.0), (60, -1.0, 0.0), (30, 0.1, 0.5)])
def test_mmdet_mode_draws_mmdetections_deterministic_counts_per_bin_and_floor(
    mm: dict[str, Any], num: int, floor_thr: float, floor_fraction: float
) -> None:
    labels, ious = _iou_vector()
    theirs = mm["IoUBalancedNegSampler"](num=200, pos_fraction=0.0, floor_thr=floor_thr, floor_fraction=floor_fraction)
    result = _assign(mm, labels, ious)
    theirs._sample_neg(result, num)  # the first call: mmdetection's sampler sets floor_thr -1 to 0 here
    ours = IoUBalancedNegativeSampler(
        200, 0.0, floor_thr=floor_thr, floor_fraction=floor_fraction, mode="mmdet", generator=torch.Generator()
    )
    groups = ours.mmdet_group_of(ious, ious.max())
    quota = int(int(num * (1 - floor_fraction)) / 3)
    negative = labels == 0
    for seed in range(20):
        torch.manual_seed(seed)
        their_mask = torch.zeros_like(negative)
        their_mask[theirs._sample_neg(result, num)] = True
        ours.generator.manual_seed(seed)
        our_mask = torch.zeros_like(negative)
        our_mask[torch.where(negative)[0][ours._sample_negatives_mmdet(ious[negative], ious.max(), num)]] = True
        for mask in (their_mask, our_mask):
            assert int(mask.sum()) == num
            counts = torch.bincount(groups[mask & negative] + 1, minlength=5)
            assert int(counts[0]) == int(torch.bincount(groups[their_mask] + 1, minlength=5)[0])  # the floor
            for k in range(3):
                assert int(counts[k + 1]) >= min(quota, int((groups[negative] == k).sum()))


def test_instance_balanced_positives_take_mmdetections_per_instance_share_without_its_duplicates(
    mm: dict[str, Any],
) -> None:
    gt_inds = torch.cat(
        [torch.full((30,), 1), torch.full((2,), 2), torch.full((1,), 3), torch.zeros(10, dtype=torch.int64)]
    )
    theirs = mm["InstanceBalancedPosSampler"](num=100, pos_fraction=0.5)
    result = _assign(mm, gt_inds, torch.rand(gt_inds.numel()))
    positive = torch.where(gt_inds > 0)[0]
    duplicated = 0
    for seed in range(10):
        torch.manual_seed(seed)
        their_inds = theirs._sample_pos(result, 12)
        ours = instance_balanced_positives(gt_inds[positive], 12, torch.Generator().manual_seed(seed))
        # per instance int(round(12 / 3) + 1) = 5: 5 + 2 + 1 = 8, then 4 more from the first instance's rest
        assert torch.bincount(gt_inds[positive][ours], minlength=4).tolist() == [0, 9, 2, 1]
        assert their_inds.numel() == 12
        their_counts = torch.bincount(gt_inds[their_inds.unique()], minlength=4).tolist()
        assert their_counts[1] >= 5 and their_counts[2:] == [2, 1]
        # mmdetection's top-up subtracts sets of 0-dim tensors, which hash by identity, so it may draw
        # a positive it already chose; ours draws only from those not yet chosen
        duplicated += their_inds.numel() - their_inds.unique().numel()
    assert duplicated > 0
