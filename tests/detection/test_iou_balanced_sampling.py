"""IoU-balanced sampling: the sampler's rules, and the RoI-head mixin that feeds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign, box_iou

from balanced_l1.detection import IoUBalancedNegativeSampler, use_iou_balanced_sampling

EDGES = (0.15, 0.30)  # bin edges when the negatives' IoUs span [0, 0.45]


def _negatives(*ious: float) -> tuple[Tensor, Tensor]:
    """Labels (all negative) and IoUs for the given IoUs."""
    iou = torch.tensor(ious, dtype=torch.float32)
    return torch.zeros(len(ious), dtype=torch.int64), iou


def _three_clusters(per_bin: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Negatives with IoUs in the three bins of [0, 0.45]; the one at 0.45 sets the maximum."""
    ious = [0.05] * per_bin[0] + [0.2] * per_bin[1] + [0.35] * per_bin[2] + [0.45]
    return _negatives(*ious)


def _bin_counts(neg_mask: Tensor, ious: Tensor) -> list[int]:
    chosen = ious[neg_mask.bool()]
    low, high = EDGES
    return [int((chosen < low).sum()), int(((chosen >= low) & (chosen < high)).sum()), int((chosen >= high).sum())]


def _sampler(batch: int, positive_fraction: float = 0.0, seed: int = 0, **kwargs: float) -> IoUBalancedNegativeSampler:
    return IoUBalancedNegativeSampler(batch, positive_fraction, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_each_bin_gives_an_equal_share_of_the_negatives() -> None:
    labels, ious = _three_clusters((30, 30, 30))
    _, neg = _sampler(12)([labels], [ious])
    assert _bin_counts(neg[0], ious) == [4, 4, 4]


def test_the_remainder_of_the_split_goes_to_the_highest_iou_bins() -> None:
    labels, ious = _three_clusters((30, 30, 30))
    _, neg = _sampler(14)([labels], [ious])
    assert _sampler(14).quotas(14) == [0, 4, 5, 5]
    assert _bin_counts(neg[0], ious) == [4, 5, 5]


def test_bins_span_zero_to_the_largest_negative_iou() -> None:
    sampler = _sampler(8)
    groups = sampler.group_of(torch.tensor([0.0, 0.09, 0.11, 0.19, 0.21, 0.3]))
    assert groups.tolist() == [1, 1, 2, 2, 3, 3]


def test_short_bins_are_topped_up_from_the_other_negatives() -> None:
    labels, ious = _three_clusters((30, 30, 0))
    _, neg = _sampler(12)([labels], [ious])
    counts = _bin_counts(neg[0], ious)
    assert counts[2] == 1
    assert counts[0] >= 4 and counts[1] >= 4 and sum(counts) == 12


def test_top_up_draws_from_every_bin_with_spare_negatives() -> None:
    labels, ious = _three_clusters((30, 30, 0))
    extra_low, extra_mid = set(), set()
    for seed in range(20):
        _, neg = _sampler(12, seed=seed)([labels], [ious])
        low, mid, _ = _bin_counts(neg[0], ious)
        extra_low.add(low > 4)
        extra_mid.add(mid > 4)
    assert True in extra_low and True in extra_mid


def test_sampled_negatives_are_distinct_and_exactly_as_many_as_asked() -> None:
    labels, ious = _negatives(*torch.rand(200, generator=torch.Generator().manual_seed(1)).mul(0.5).tolist())
    _, neg = _sampler(64, num_bins=5)([labels], [ious])
    assert neg[0].dtype == torch.uint8
    assert int(neg[0].sum()) == 64


def test_positives_are_drawn_exactly_as_torchvision_draws_them() -> None:
    labels = torch.tensor([1, 2, 0, 1, -1, 0, 3, 0, 1, 0, 2, 0] * 5)
    ious = torch.where(labels >= 1, 0.8, 0.3).float()
    torch.manual_seed(7)
    ours, _ = IoUBalancedNegativeSampler(16, 0.25)([labels], [ious])
    torch.manual_seed(7)
    theirs, _ = BalancedPositiveNegativeSampler(16, 0.25)([labels])
    assert torch.equal(ours[0], theirs[0])
    assert int(ours[0].sum()) == 4


def test_ignored_and_positive_proposals_are_never_sampled_as_negatives() -> None:
    labels = torch.tensor([1, -1, 0, -1, 0, 2, 0])
    ious = torch.tensor([0.9, 0.45, 0.1, 0.4, 0.2, 0.7, 0.3])
    pos, neg = _sampler(7, positive_fraction=0.5)([labels], [ious])
    assert pos[0].tolist() == [1, 0, 0, 0, 0, 1, 0]
    assert neg[0].tolist() == [0, 0, 1, 0, 1, 0, 1]


def test_image_without_negatives_samples_only_positives() -> None:
    labels = torch.tensor([1, 1, -1])
    pos, neg = _sampler(8, positive_fraction=0.5)([labels], [torch.tensor([0.8, 0.6, 0.45])])
    assert pos[0].tolist() == [1, 1, 0]
    assert neg[0].tolist() == [0, 0, 0]


def test_fewer_negatives_than_asked_takes_them_all() -> None:
    labels, ious = _negatives(0.0, 0.1, 0.2, 0.3, 0.4)
    _, neg = _sampler(16)([labels], [ious])
    assert neg[0].tolist() == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("iou", [0.0, 0.25])
def test_negatives_all_of_one_iou_are_sampled_as_asked(iou: float) -> None:
    labels, ious = _negatives(*([iou] * 40))
    sampler = _sampler(10)
    _, neg = sampler([labels], [ious])
    assert int(neg[0].sum()) == 10
    assert sampler.group_of(ious).unique().numel() == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_zero_iou_negatives_are_sampled_when_denormals_are_flushed(dtype: torch.dtype) -> None:
    # an image without ground truth gives every proposal IoU 0, so the bins have zero width
    labels, ious = torch.zeros(40, dtype=torch.int64), torch.zeros(40, dtype=dtype)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        groups = _sampler(10).group_of(ious)
        _, neg = _sampler(10)([labels], [ious])
    finally:
        torch.set_flush_denormal(False)
    assert groups.tolist() == [1] * 40
    assert int(neg[0].sum()) == 10


def test_floor_fraction_of_the_negatives_comes_from_the_floor_set() -> None:
    ious = [0.01 * (i % 10) for i in range(40)] + [0.15] * 20 + [0.25] * 20 + [0.35] * 20 + [0.4]
    labels, iou = _negatives(*ious)
    _, neg = _sampler(20, floor_thr=0.1, floor_fraction=0.25)([labels], [iou])
    chosen = iou[neg[0].bool()]
    assert int((chosen <= 0.1).sum()) == 5  # then bins [0.1, 0.2), [0.2, 0.3), [0.3, 0.4]
    assert [int(((chosen > low) & (chosen < low + 0.1)).sum()) for low in (0.1, 0.2)] == [5, 5]
    assert int((chosen > 0.3).sum()) == 5


def test_floor_threshold_zero_makes_the_zero_iou_negatives_the_floor_set() -> None:
    groups = _sampler(4, floor_thr=0.0).group_of(torch.tensor([0.0, 0.0, 0.05, 0.3]))
    assert groups.tolist() == [0, 0, 1, 3]


def test_negative_floor_threshold_disables_the_floor_set() -> None:
    groups = _sampler(4).group_of(torch.tensor([0.0, 0.0, 0.1, 0.3]))
    assert 0 not in groups.tolist()


def test_same_seed_gives_the_same_sample_and_another_seed_another() -> None:
    labels = torch.tensor([1] * 30 + [0] * 300)
    ious = torch.cat([torch.full((30,), 0.7), torch.rand(300, generator=torch.Generator().manual_seed(2)) * 0.5])
    first = _sampler(64, 0.25, seed=3)([labels], [ious])
    again = _sampler(64, 0.25, seed=3)([labels], [ious])
    other = _sampler(64, 0.25, seed=4)([labels], [ious])
    assert all(torch.equal(a, b) for a, b in zip(first[0] + first[1], again[0] + again[1], strict=True))
    assert not torch.equal(first[1][0], other[1][0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_bins": 0}, ValueError, r"num_bins must be an integer >= 1, got 0"),
        ({"num_bins": True}, TypeError, r"num_bins must be an integer, got True of type bool"),
        ({"floor_fraction": 1.5, "floor_thr": 0.1}, ValueError, r"floor_fraction must be finite and >= 0 and <= 1"),
        ({"floor_fraction": -0.1, "floor_thr": 0.1}, ValueError, r"floor_fraction must be .*>= 0 .*got -0.1"),
        ({"floor_fraction": "0.2", "floor_thr": 0.1}, TypeError, r"floor_fraction must be a real number, got '0.2'"),
        ({"floor_thr": None}, TypeError, r"floor_thr must be a real number, got None"),
        ({"floor_thr": float("nan")}, ValueError, r"floor_thr must be finite, got nan"),
        ({"batch_size_per_image": 8.0}, TypeError, r"batch_size_per_image must be an integer, got 8.0 of type float"),
        ({"positive_fraction": "half"}, TypeError, r"positive_fraction must be a real number, got 'half'"),
        ({"floor_fraction": 0.5}, ValueError, r"floor_fraction=0.5 needs a floor set, but floor_thr=-1.0 < 0"),
        ({"floor_thr": 1.0}, ValueError, r"floor_thr must be finite and < 1 .*got 1.0"),
        ({"batch_size_per_image": 0}, ValueError, r"batch_size_per_image must be an integer >= 1, got 0"),
        ({"positive_fraction": 1.2}, ValueError, r"positive_fraction must be finite and >= 0 and <= 1, got 1.2"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, float], error: type[Exception], message: str) -> None:
    args = {"batch_size_per_image": 8, "positive_fraction": 0.25, **kwargs}
    with pytest.raises(error, match=message):
        IoUBalancedNegativeSampler(**args)  # type: ignore[arg-type]


def test_numpy_scalars_are_accepted_as_python_numbers() -> None:
    sampler = IoUBalancedNegativeSampler(
        np.int64(8), np.float32(0.25), num_bins=np.int32(3), floor_thr=np.float64(0.1), floor_fraction=np.float32(0.5)
    )
    settings = (sampler.batch_size_per_image, sampler.positive_fraction, sampler.num_bins, sampler.floor_thr)
    assert settings == (8, 0.25, 3, 0.1) and sampler.floor_fraction == 0.5
    assert [type(v) for v in settings] == [int, float, int, float]


def test_ious_must_match_the_labels() -> None:
    sampler = _sampler(4)
    with pytest.raises(ValueError, match=r"one tensor per image, got 2 and 1"):
        sampler([torch.zeros(3, dtype=torch.int64)] * 2, [torch.zeros(3)])
    with pytest.raises(ValueError, match=r"image 0: .* got shapes \(3,\) and \(4,\)"):
        sampler([torch.zeros(3, dtype=torch.int64)], [torch.zeros(4)])
    with pytest.raises(TypeError, match=r"image 0: ious must be a floating tensor, got torch.int64"):
        sampler([torch.zeros(3, dtype=torch.int64)], [torch.zeros(3, dtype=torch.int64)])


# --- the RoI-head mixin -------------------------------------------------------------------------


def _roi_heads(batch_size_per_image: int = 32) -> RoIHeads:
    pool = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    return RoIHeads(
        pool, TwoMLPHead(4 * 49, 16), FastRCNNPredictor(16, 3), 0.5, 0.5, batch_size_per_image, 0.25,
        None, 0.05, 0.5, 10,
    )  # fmt: skip


def _proposals_and_targets() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    proposals = []
    for _ in range(2):
        xy = torch.rand(60, 2, generator=g) * 80
        wh = torch.rand(60, 2, generator=g) * 40 + 4
        proposals.append(torch.cat([xy, xy + wh], dim=1))
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 55.0, 100.0, 110.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return proposals, targets


class _CountingIoU:
    def __init__(self) -> None:
        self.matrices: list[Tensor] = []

    def __call__(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        self.matrices.append(box_iou(boxes1, boxes2))
        return self.matrices[-1]


class _RecordingSampler:
    def __init__(self, sampler: IoUBalancedNegativeSampler) -> None:
        self.sampler = sampler
        self.ious: list[Tensor] = []
        self.gt_indices: list[Tensor] = []

    def sample(
        self, labels: list[Tensor], ious: list[Tensor], gt_indices: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        self.ious, self.gt_indices = list(ious), list(gt_indices)  # the head replaces its list items later
        return self.sampler.sample(labels, ious, gt_indices)


def _switched_heads(**kwargs: object) -> RoIHeads:
    model = nn.Module()
    model.roi_heads = _roi_heads()
    use_iou_balanced_sampling(model, **kwargs)  # type: ignore[arg-type]
    return model.roi_heads


def test_the_head_computes_the_iou_matrix_once_and_gives_its_maximum_to_the_sampler() -> None:
    heads = _switched_heads(generator=torch.Generator().manual_seed(0))
    counting, recording = _CountingIoU(), _RecordingSampler(heads.fg_bg_sampler)
    heads.box_similarity, heads.fg_bg_sampler = counting, recording
    heads.select_training_samples(*_proposals_and_targets())
    assert len(counting.matrices) == 1  # the second image has no boxes
    assert torch.equal(recording.ious[0], counting.matrices[0].max(dim=0).values)
    assert torch.equal(recording.ious[1], torch.zeros(60))
    assert torch.equal(recording.gt_indices[0], counting.matrices[0].argmax(dim=0).where(recording.ious[0] >= 0.5, 0))


def test_with_a_batch_taking_every_proposal_the_head_samples_as_torchvision() -> None:
    proposals, targets = _proposals_and_targets()
    theirs = _roi_heads(batch_size_per_image=1000).select_training_samples(list(proposals), targets)
    ours = _switched_heads(batch_size_per_image=1000).select_training_samples(list(proposals), targets)
    for mine, reference in zip(ours, theirs, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine, reference, strict=True))


def test_assign_targets_to_proposals_keeps_torchvisions_signature_and_result() -> None:
    proposals, targets = _proposals_and_targets()
    boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
    theirs = _roi_heads().assign_targets_to_proposals(proposals, boxes, labels)
    ours = _switched_heads().assign_targets_to_proposals(proposals, boxes, labels)
    for mine, reference in zip(ours, theirs, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine, reference, strict=True))


def test_the_head_samples_the_same_rois_under_the_same_seed() -> None:
    proposals, targets = _proposals_and_targets()
    first = _switched_heads(generator=torch.Generator().manual_seed(5)).select_training_samples(proposals, targets)
    again = _switched_heads(generator=torch.Generator().manual_seed(5)).select_training_samples(proposals, targets)
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0], strict=True))


def test_sampling_settings_default_to_the_models_and_can_be_overridden() -> None:
    kept = _switched_heads().fg_bg_sampler
    changed = _switched_heads(batch_size_per_image=64, positive_fraction=0.5, num_bins=5).fg_bg_sampler
    assert (kept.batch_size_per_image, kept.positive_fraction, kept.num_bins) == (32, 0.25, 3)
    assert (changed.batch_size_per_image, changed.positive_fraction, changed.num_bins) == (64, 0.5, 5)


def test_switching_changes_only_the_instance_and_is_idempotent() -> None:
    heads = _switched_heads()
    first_class = type(heads)
    model = nn.Module()
    model.roi_heads = heads
    use_iou_balanced_sampling(model, num_bins=4)
    assert type(heads) is first_class and heads.fg_bg_sampler.num_bins == 4
    assert type(_roi_heads()) is RoIHeads


def test_a_model_without_roi_heads_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"model.roi_heads must be a torchvision RoIHeads .*got NoneType"):
        use_iou_balanced_sampling(nn.Linear(2, 2))


def test_bad_sampling_arguments_leave_the_model_unchanged() -> None:
    model = nn.Module()
    model.roi_heads = _roi_heads()
    with pytest.raises(ValueError, match=r"num_bins must be an integer >= 1, got 0"):
        use_iou_balanced_sampling(model, num_bins=0)
    assert type(model.roi_heads) is RoIHeads
