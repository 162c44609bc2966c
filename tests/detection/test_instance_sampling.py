"""Instance-balanced positive sampling: the rule, the sampler, and the RoI head switched to it."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import Tensor

from balanced_l1.detection import (
    InstanceBalancedPositiveSampler,
    build_small_faster_rcnn,
    instance_balanced_positives,
    use_instance_balanced_sampling,
)


def _instances(*sizes: int) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def _counts(gt: Tensor, mask: Tensor) -> list[int]:
    return torch.bincount(gt[mask], minlength=int(gt.max()) + 1).tolist()


def _draw(gt: Tensor, num: int, seed: int = 0) -> Tensor:
    return instance_balanced_positives(gt, num, torch.Generator().manual_seed(seed))


def test_an_overfilled_share_is_cut_to_a_random_subset() -> None:
    gt = _instances(20, 20, 20)
    # int(round(9 / 3) + 1) = 4 each makes 12 > 9: a random 9 of those 12, so no instance gets more than 4
    for seed in range(10):
        counts = _counts(gt, _draw(gt, 9, seed))
        assert sum(counts) == 9 and max(counts) <= 4 and min(counts) >= 1


def test_each_instance_gets_int_round_share_plus_one() -> None:
    gt = _instances(10, 10, 10, 10, 10)
    for seed in range(5):  # int(round(20 / 5) + 1) = 5 each: 25 > 20, cut at random to 20
        counts = _counts(gt, _draw(gt, 20, seed))
        assert sum(counts) == 20 and max(counts) <= 5
    gt = _instances(10, 2, 2)
    assert _counts(gt, _draw(gt, 8)) == [4, 2, 2]  # int(round(8 / 3) + 1) = 4, 2, 2: exactly 8


def test_short_instances_are_topped_up_from_the_other_positives() -> None:
    gt = _instances(30, 2, 1)
    for seed in range(5):
        assert _counts(gt, _draw(gt, 12, seed)) == [9, 2, 1]  # 5 + 2 + 1, then 4 more of the first's 25


def test_python_rounding_halves_to_even() -> None:
    gt = _instances(10, 10, 10, 10)
    # 10 / 4 = 2.5 rounds to 2, so 3 each: 12 > 10, then a random 10 of the 12
    for seed in range(5):
        assert max(_counts(gt, _draw(gt, 10, seed))) <= 3


def test_one_instance_is_a_uniform_draw() -> None:
    gt = _instances(50)
    hits = sum(_draw(gt, 10, seed).to(torch.float32) for seed in range(400))
    assert int(_draw(gt, 10).sum()) == 10
    assert torch.allclose(hits / 400, torch.full((50,), 0.2), atol=0.08)


def test_more_instances_than_slots_takes_one_each_from_a_random_subset() -> None:
    gt = _instances(*([3] * 10))
    for seed in range(5):
        counts = _counts(gt, _draw(gt, 4, seed))
        assert sum(counts) == 4 and max(counts) == 1  # int(round(0.4) + 1) = 1 each, then 4 of the 10


def test_no_positives_and_no_slots() -> None:
    assert _draw(torch.zeros(0, dtype=torch.int64), 5).numel() == 0
    assert int(_draw(_instances(4, 4), 0).sum()) == 0


def test_fewer_positives_than_slots_takes_them_all() -> None:
    gt = _instances(3, 1)
    assert _draw(gt, 10).all()


def test_the_same_seed_draws_the_same_positives_and_another_seed_others() -> None:
    gt = _instances(40, 30, 5)
    assert torch.equal(_draw(gt, 20, 1), _draw(gt, 20, 1))
    assert any(not torch.equal(_draw(gt, 20, 1), _draw(gt, 20, seed)) for seed in range(2, 6))


def test_the_sampler_draws_negatives_at_random_and_never_ignored_ones() -> None:
    labels = torch.tensor([1] * 10 + [3, 3] + [0] * 20 + [-1] * 5)
    gt = torch.tensor([0] * 10 + [1, 2] + [0] * 25)
    sampler = InstanceBalancedPositiveSampler(12, 0.5, generator=torch.Generator().manual_seed(0))
    pos, neg = sampler([labels], [gt])
    assert _counts(gt, pos[0].bool())[1:] == [1, 1] and int(pos[0].sum()) == 6
    assert int(neg[0].sum()) == 6 and not neg[0][labels != 0].any()
    assert pos[0].dtype == torch.uint8


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, 0.5), ValueError, r"batch_size_per_image must be an integer >= 1, got 0"),
        ((8, 1.5), ValueError, r"positive_fraction must be finite and >= 0 and <= 1, got 1.5"),
        ((8, "0.5"), TypeError, r"positive_fraction must be a real number, got '0.5' of type str"),
        ((8, True), TypeError, r"positive_fraction must be a real number, got True of type bool"),
    ],
)
def test_bad_arguments_are_rejected(args: tuple[object, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        InstanceBalancedPositiveSampler(*args)  # type: ignore[arg-type]


def test_numpy_scalars_are_accepted() -> None:
    sampler = InstanceBalancedPositiveSampler(np.int64(8), np.float32(0.5))
    assert (sampler.batch_size_per_image, sampler.positive_fraction) == (8, 0.5)


def test_inputs_must_match() -> None:
    sampler = InstanceBalancedPositiveSampler(8, 0.5)
    labels = torch.ones(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="one tensor per image, got 1 and 2"):
        sampler([labels], [labels, labels])
    with pytest.raises(ValueError, match=r"image 0: matched_idxs and gt_indices must be 1-D of equal length"):
        sampler([labels], [labels[:2]])


def _images_and_targets() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(2)]
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 60.0, 120.0, 120.0], [20.0, 80.0, 40.0, 100.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2, 1])} for _ in images]
    return images, targets


def test_the_switched_head_trains_and_keeps_weights_copies_and_pickles() -> None:
    torch.manual_seed(0)
    model = build_small_faster_rcnn(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    use_instance_balanced_sampling(model, generator=torch.Generator().manual_seed(0))
    assert isinstance(model.roi_heads.fg_bg_sampler, InstanceBalancedPositiveSampler)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    losses = model(*_images_and_targets())
    assert torch.isfinite(sum(losses.values()))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone.roi_heads) is type(model.roi_heads)
        assert isinstance(clone.roi_heads.fg_bg_sampler, InstanceBalancedPositiveSampler)


def test_a_model_without_roi_heads_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"model\.roi_heads must be a torchvision RoIHeads"):
        use_instance_balanced_sampling(torch.nn.Linear(2, 2))
