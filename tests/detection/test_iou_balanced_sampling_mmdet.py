"""IoUBalancedNegativeSampler(mode="mmdet"): mmdetection 3.3's steady-state rule on hand-built IoU vectors.

The vector: a ground-truth proposal (IoU 1) and a positive, 10 negatives of IoU 0, 6 in the lowest bin
[0, 1/3) and 3 in the middle bin [1/3, 2/3) of the span [0, 1) (the largest IoU of *all* proposals).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from balanced_l1.detection import IoUBalancedNegativeSampler

ZEROS = 10
LOW = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
MIDDLE = (0.35, 0.4, 0.45)


def _vector() -> tuple[Tensor, Tensor]:
    ious = torch.tensor([1.0, 0.7] + [0.0] * ZEROS + list(LOW) + list(MIDDLE))
    labels = torch.tensor([1, 1] + [0] * (ZEROS + len(LOW) + len(MIDDLE)))
    return labels, ious


def _sampler(batch: int, seed: int = 0, **kwargs: object) -> IoUBalancedNegativeSampler:
    return IoUBalancedNegativeSampler(
        batch,
        0.0,
        mode="mmdet",
        generator=torch.Generator().manual_seed(seed),
        **kwargs,  # type: ignore[arg-type]
    )


def _counts(neg: Tensor, ious: Tensor) -> tuple[int, int, int]:
    chosen = ious[neg.bool()]
    return int((chosen == 0).sum()), int(((chosen > 0) & (chosen < 1 / 3)).sum()), int((chosen >= 1 / 3).sum())


def test_bins_span_zero_to_the_largest_iou_of_all_proposals() -> None:
    _, ious = _vector()
    groups = _sampler(8).mmdet_group_of(ious, ious.max())
    assert groups[2 : 2 + ZEROS].tolist() == [-1] * ZEROS  # the floor set: IoU exactly 0
    assert groups[2 + ZEROS : 2 + ZEROS + len(LOW)].tolist() == [0] * len(LOW)
    assert groups[-len(MIDDLE) :].tolist() == [1] * len(MIDDLE)
    assert groups[:2].tolist() == [3, 2]  # IoU 1 is in no bin (the last one is open at the maximum)


@pytest.mark.parametrize("seed", range(5))
def test_each_bin_gives_int_n_over_bins_then_the_other_positive_iou_negatives_top_up(seed: int) -> None:
    labels, ious = _vector()
    _, neg = _sampler(8, seed)([labels], [ious])
    # int(8 / 3) = 2 per bin: 2 + 2 + 0, then 4 of the 4 + 1 left above IoU 0; never an IoU-0 one
    assert _counts(neg[0], ious)[0] == 0 and sum(_counts(neg[0], ious)) == 8
    assert _counts(neg[0], ious)[2] >= 2


def test_with_a_third_per_bin_the_middle_bin_is_taken_whole() -> None:
    labels, ious = _vector()
    _, neg = _sampler(9 + 3)([labels], [ious])  # 12 negatives: 9 above IoU 0 are not more than the 12 slots
    assert _counts(neg[0], ious) == (3, len(LOW), len(MIDDLE))
    _, neg = _sampler(7)([labels], [ious])  # int(7 / 3) = 2 per bin: 2 + 2, then 3 of the 5 left
    assert _counts(neg[0], ious)[0] == 0 and _counts(neg[0], ious)[2] >= 2


def test_the_top_up_is_uniform_over_the_positive_iou_negatives_left() -> None:
    labels = torch.tensor([1] + [0] * 21)
    ious = torch.tensor([1.0] + [0.0] * 10 + [0.1] * 10 + [0.4])
    sampler, hits, draws = _sampler(6), torch.zeros(22), 1500
    for _ in range(draws):
        hits += sampler([labels], [ious])[1][0]
    # int(6 / 3) = 2 from the 10 at 0.1 and 1 at 0.4, then 3 more of the 8 left at 0.1: 5 of 10 each
    assert hits[-1] == draws and not hits[:11].any()
    assert torch.allclose(hits[11:21] / draws, torch.full((10,), 0.5), atol=0.06)


def test_iou_zero_negatives_fill_what_is_left_uniformly() -> None:
    labels = torch.tensor([1] + [0] * 21)
    ious = torch.tensor([1.0] + [0.0] * 10 + [0.1] * 10 + [0.4])
    sampler, hits, draws = _sampler(14), torch.zeros(22), 1500
    for _ in range(draws):
        hits += sampler([labels], [ious])[1][0]
    assert (hits[11:] == draws).all()  # all 11 above IoU 0, then 3 of the 10 at IoU 0
    assert torch.allclose(hits[1:11] / draws, torch.full((10,), 0.3), atol=0.06)


def test_the_paper_mode_draws_iou_zero_negatives_where_mmdet_does_not() -> None:
    labels, ious = _vector()
    paper = IoUBalancedNegativeSampler(8, 0.0, generator=torch.Generator().manual_seed(0))
    zeros_paper = sum(_counts(paper([labels], [ious])[1][0], ious)[0] for _ in range(20))
    zeros_mmdet = sum(_counts(_sampler(8, seed)([labels], [ious])[1][0], ious)[0] for seed in range(20))
    assert zeros_paper > 0 and zeros_mmdet == 0


def test_floor_threshold_minus_one_is_mmdetections_steady_state_zero() -> None:
    labels, ious = _vector()
    first = _sampler(8, seed=3, floor_thr=-1.0)([labels], [ious])
    second = _sampler(8, seed=3, floor_thr=0.0)([labels], [ious])
    assert torch.equal(first[1][0], second[1][0])


def test_a_positive_floor_threshold_splits_the_floor_at_it_and_shares_the_slots() -> None:
    labels, ious = _vector()
    sampler = _sampler(8, floor_thr=0.12, floor_fraction=0.5)
    groups = sampler.mmdet_group_of(ious, ious.max())
    assert (groups[2 : 2 + ZEROS + 2] == -1).all() and (groups[2 + ZEROS + 2 : 2 + ZEROS + len(LOW)] == 0).all()
    _, neg = sampler([labels], [ious])
    chosen = ious[neg[0].bool()]
    assert int((chosen >= 0.12).sum()) == 4 and int((chosen < 0.12).sum()) == 4  # int(8 * 0.5) above the floor


def test_one_bin_draws_uniformly_above_the_floor() -> None:
    labels, ious = _vector()
    _, neg = _sampler(5, num_bins=1)([labels], [ious])
    assert _counts(neg[0], ious)[0] == 0 and int(neg[0].sum()) == 5


def test_fewer_negatives_than_asked_takes_them_all() -> None:
    labels, ious = _vector()
    _, neg = _sampler(100)([labels], [ious])
    assert torch.equal(neg[0], (labels == 0).to(torch.uint8))


def test_an_image_without_boxes_draws_its_negatives_at_random() -> None:
    labels, ious = torch.zeros(30, dtype=torch.int64), torch.zeros(30)
    _, neg = _sampler(8)([labels], [ious])
    assert int(neg[0].sum()) == 8


def test_instance_balanced_positives_pair_with_iou_balanced_negatives() -> None:
    labels = torch.tensor([1] * 12 + [0] * 30)
    gt = torch.tensor([0] * 10 + [1, 2] + [0] * 30)
    ious = torch.cat([torch.full((12,), 0.8), torch.linspace(0, 0.45, 30)])
    sampler = _sampler(8, positive_sampling="instance_balanced")
    sampler.positive_fraction = 0.5
    pos, neg = sampler([labels], [ious], [gt])
    assert torch.bincount(gt[pos[0].bool()], minlength=3).tolist() == [2, 1, 1]  # int(round(4 / 3) + 1) = 2 each
    assert int(neg[0].sum()) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "mmdetection"}, r"mode must be one of paper, mmdet, got 'mmdetection'"),
        ({"positive_sampling": "instance"}, r"positive_sampling must be one of .*got 'instance'"),
    ],
)
def test_unknown_modes_are_rejected(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IoUBalancedNegativeSampler(8, 0.25, **kwargs)  # type: ignore[arg-type]


def test_instance_balanced_positives_need_matching_gt_indices() -> None:
    labels, ious = _vector()
    sampler = _sampler(8, positive_sampling="instance_balanced")
    with pytest.raises(ValueError, match="needs gt_indices, the instance of each RoI"):
        sampler([labels], [ious])
    with pytest.raises(ValueError, match=r"gt_indices must have one tensor per image \(1\), got 2"):
        sampler([labels], [ious], [labels, labels])
    with pytest.raises(ValueError, match=r"image 0: matched_idxs and gt_indices must be 1-D of equal length"):
        sampler([labels], [ious], [labels[:3]])
