"""The RPN's neg_pos_ub: at most so many negative anchors per positive one."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from balanced_l1.detection import NegativeCappedSampler, build_small_faster_rcnn, use_rpn_negative_cap


def _sampler(neg_pos_ub: int = 5, seed: int = 0) -> NegativeCappedSampler:
    return NegativeCappedSampler(256, 0.5, neg_pos_ub=neg_pos_ub, generator=torch.Generator().manual_seed(seed))


def _labels(positives: int, negatives: int, ignored: int = 0) -> torch.Tensor:
    return torch.tensor([1] * positives + [0] * negatives + [-1] * ignored)


@pytest.mark.parametrize(("positives", "expected"), [(0, 5), (1, 5), (3, 15), (40, 200), (128, 128)])
def test_negatives_are_capped_at_neg_pos_ub_per_drawn_positive(positives: int, expected: int) -> None:
    pos, neg = _sampler()([_labels(positives, 1000)])
    assert int(pos[0].sum()) == positives and int(neg[0].sum()) == expected


def test_the_cap_counts_drawn_positives_not_all_positives() -> None:
    pos, neg = _sampler(neg_pos_ub=1)([_labels(300, 1000)])
    assert int(pos[0].sum()) == 128 and int(neg[0].sum()) == 128  # 256 - 128, and 1 * 128


def test_a_cap_of_zero_samples_no_negatives() -> None:
    _, neg = _sampler(neg_pos_ub=0)([_labels(4, 100)])
    assert int(neg[0].sum()) == 0


def test_ignored_anchors_are_never_sampled_and_masks_are_uint8() -> None:
    pos, neg = _sampler()([_labels(2, 3, ignored=50)])
    assert pos[0].dtype == neg[0].dtype == torch.uint8
    assert not (pos[0] | neg[0])[5:].any() and int(neg[0].sum()) == 3


def test_without_a_binding_cap_it_draws_as_torchvision_does() -> None:
    labels = [_labels(20, 500), _labels(7, 300)]
    torch.manual_seed(3)
    theirs = BalancedPositiveNegativeSampler(256, 0.5)(labels)
    torch.manual_seed(3)
    ours = NegativeCappedSampler(256, 0.5, neg_pos_ub=1000)(labels)
    for mine, reference in zip(ours, theirs, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine, reference, strict=True))


def test_the_same_seed_gives_the_same_sample() -> None:
    labels = [_labels(10, 400)]
    assert torch.equal(_sampler(seed=1)(labels)[1][0], _sampler(seed=1)(labels)[1][0])
    assert not torch.equal(_sampler(seed=1)(labels)[1][0], _sampler(seed=2)(labels)[1][0])


@pytest.mark.parametrize(
    ("neg_pos_ub", "error", "allowed"),
    [
        (-1, ValueError, "an integer >= 0"),
        (2.5, TypeError, "an integer"),
        (True, TypeError, "an integer"),
        (None, TypeError, "an integer"),
    ],
)
def test_bad_caps_are_rejected(neg_pos_ub: object, error: type[Exception], allowed: str) -> None:
    with pytest.raises(error, match=rf"neg_pos_ub \(negatives per positive\) must be {allowed}, got {neg_pos_ub}"):
        NegativeCappedSampler(256, 0.5, neg_pos_ub=neg_pos_ub)  # type: ignore[arg-type]


def test_numpy_integers_are_accepted_as_the_cap() -> None:
    sampler = NegativeCappedSampler(np.int64(256), np.float32(0.5), neg_pos_ub=np.int64(3))
    assert (sampler.neg_pos_ub, type(sampler.neg_pos_ub)) == (3, int)


def test_use_rpn_negative_cap_changes_only_that_models_sampler() -> None:
    torch.manual_seed(0)
    model, other = build_small_faster_rcnn(2), build_small_faster_rcnn(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    use_rpn_negative_cap(model)
    sampler = model.rpn.fg_bg_sampler
    assert isinstance(sampler, NegativeCappedSampler) and sampler.neg_pos_ub == 5
    assert (sampler.batch_size_per_image, sampler.positive_fraction) == (128, 0.5)  # the model's own
    assert type(other.rpn.fg_bg_sampler) is BalancedPositiveNegativeSampler
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.rpn.fg_bg_sampler.neg_pos_ub == 5


def test_a_model_without_an_rpn_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"model\.rpn must be a torchvision RegionProposalNetwork, got NoneType"):
        use_rpn_negative_cap(torch.nn.Linear(2, 2))
