"""use_balanced_l1 on torchvision SSD and SSDlite: the box loss by value, and that nothing else changes."""

from __future__ import annotations

import copy
import functools
import pickle
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.functional import smooth_l1_loss
from torchvision.models.detection import ssd as tv_ssd
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead

from balanced_l1 import balanced_l1_loss
from balanced_l1.detection import use_balanced_l1
from balanced_l1.detection.losses import CONFIG_ATTRIBUTE

SIZE = 64
NUM_CLASSES = 3
SSD_BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))  # the weights SSD's paper and torchvision use
TORCHVISION_COMPUTE_LOSS = SSD.__dict__["compute_loss"]


def _backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
    )


def _ssd(lite: bool = False) -> SSD:
    torch.manual_seed(1)
    anchors = DefaultBoxGenerator([[2]])
    head = SSDLiteHead([8], [4], NUM_CLASSES, nn.BatchNorm2d) if lite else SSDHead([8], [4], NUM_CLASSES)
    return SSD(_backbone(), anchors, (SIZE, SIZE), NUM_CLASSES, head=head, score_thresh=0.0)


def _batch(size: int = SIZE) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    gen = torch.Generator().manual_seed(2)
    images = [torch.rand(3, size, size, generator=gen) for _ in range(2)]
    scale = size / SIZE
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 12.0, 60.0, 52.0]]) * scale,
            "labels": torch.tensor([1, 2]),
        },
        {"boxes": torch.tensor([[10.0, 3.0, 34.0, 28.0]]) * scale, "labels": torch.tensor([2])},
    ]
    return images, targets


def _losses(model: nn.Module, size: int = SIZE) -> dict[str, Tensor]:
    model.train()
    images, targets = _batch(size)
    return model(images, targets)


class _Recorder:
    """Wraps a method of one instance and keeps its last arguments."""

    def __init__(self, owner: object, name: str) -> None:
        self.wrapped = getattr(owner, name)
        self.args: tuple[Any, ...] = ()
        setattr(owner, name, self)

    def __call__(self, *args: Any) -> Any:
        self.args = args
        return self.wrapped(*args)


def _hand_box_loss(recorded: _Recorder, loss: Any) -> Tensor:
    """sum over the foreground default boxes of all images of ``loss(pred, encoded target)`` / max(1, count)."""
    targets, head_outputs, anchors, matched_idxs = recorded.args
    total, count = torch.zeros(()), 0
    for target, deltas, anchors_i, matched in zip(
        targets, head_outputs["bbox_regression"], anchors, matched_idxs, strict=True
    ):
        fg = torch.where(matched >= 0)[0]
        count += len(fg)
        encoded = SSD_BOX_CODER.encode_single(target["boxes"][matched[fg]], anchors_i[fg])
        total = total + loss(deltas[fg], encoded)
    assert count > 0
    return total / count


@pytest.mark.parametrize("lite", [False, True], ids=["ssd", "ssdlite-head"])
def test_box_loss_equals_hand_computation_and_classification_stays(lite: bool) -> None:
    reference = _losses(_ssd(lite))
    model = use_balanced_l1(_ssd(lite), beta=0.11, formulation="mmdet", loss_weight=2.0)
    recorded = _Recorder(model, "compute_loss")
    losses = _losses(model)
    params = {"beta": 0.11, "formulation": "mmdet", "reduction": "sum"}
    expected = 2.0 * _hand_box_loss(recorded, functools.partial(balanced_l1_loss, **params))
    torch.testing.assert_close(losses["bbox_regression"], expected, rtol=1e-6, atol=0.0)
    assert torch.equal(losses["classification"], reference["classification"])
    assert not torch.allclose(losses["bbox_regression"], reference["bbox_regression"], rtol=1e-3)


def test_ssdlite320_training_step_is_finite_and_its_box_loss_is_balanced_l1() -> None:
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    use_balanced_l1(model)
    recorded = _Recorder(model, "compute_loss")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = _losses(model, size=320)
    assert all(torch.isfinite(value) for value in losses.values())
    expected = _hand_box_loss(recorded, functools.partial(balanced_l1_loss, reduction="sum"))
    torch.testing.assert_close(losses["bbox_regression"], expected, rtol=1e-6, atol=0.0)
    before = copy.deepcopy(model.head.regression_head.state_dict())
    sum(losses.values()).backward()
    optimizer.step()
    after = model.head.regression_head.state_dict()
    assert any(not torch.equal(after[name], value) for name, value in before.items())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_another_ssd_keeps_smooth_l1_by_value() -> None:
    untouched = _ssd()
    switched = use_balanced_l1(copy.deepcopy(untouched))
    recorded = _Recorder(untouched, "compute_loss")
    before = _losses(untouched)
    smooth = _hand_box_loss(recorded, functools.partial(smooth_l1_loss, reduction="sum", beta=1.0))
    _losses(switched)
    after = _losses(untouched)
    assert type(untouched) is SSD and tv_ssd.SSD.__dict__["compute_loss"] is TORCHVISION_COMPUTE_LOSS
    torch.testing.assert_close(before["bbox_regression"], smooth, rtol=1e-6, atol=0.0)
    for name, value in before.items():
        assert torch.equal(after[name], value), name


@pytest.mark.parametrize("lite", [False, True], ids=["ssd", "ssdlite-head"])
def test_eval_mode_outputs_are_unchanged(lite: bool) -> None:
    untouched = _ssd(lite).eval()
    switched = use_balanced_l1(copy.deepcopy(untouched)).eval()
    images, _ = _batch()
    with torch.no_grad():
        expected, outputs = untouched(images), switched(images)
    assert sum(len(out["boxes"]) for out in expected) > 0
    for out, ref in zip(outputs, expected, strict=True):
        assert out.keys() == ref.keys()
        for key in ref:
            assert torch.equal(out[key], ref[key]), key


def test_state_dict_deepcopy_and_pickle_are_unchanged() -> None:
    untouched = _ssd()
    model = use_balanced_l1(copy.deepcopy(untouched), beta=0.3)
    assert type(model).__name__ == "SSDWithBoxLoss"
    state = model.state_dict()
    assert list(state) == list(untouched.state_dict())
    assert str(untouched.load_state_dict(state)) == "<All keys matched successfully>"
    expected = _losses(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone) is type(model)
        assert getattr(clone, CONFIG_ATTRIBUTE) == getattr(model, CONFIG_ATTRIBUTE)
        losses = _losses(clone)
        for name, value in expected.items():
            assert torch.equal(losses[name], value), name


def test_second_call_replaces_parameters_without_stacking() -> None:
    model = use_balanced_l1(_ssd(), beta=0.5)
    cls = type(model)
    use_balanced_l1(model, beta=0.2)
    assert type(model) is cls and len(cls.__mro__) == len(SSD.__mro__) + 2
    assert getattr(model, CONFIG_ATTRIBUTE).values["beta"] == 0.2


@pytest.mark.parametrize("placement", ["rpn", "roi"])
def test_stage_placements_are_rejected_before_anything_changes(placement: str) -> None:
    model = _ssd()
    with pytest.raises(ValueError, match=r"^SSD has neither an RPN nor RoI heads.*leave placement at None or 'both'"):
        use_balanced_l1(model, placement=placement)
    assert type(model) is SSD and not hasattr(model, CONFIG_ATTRIBUTE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gamma": -1.0}, r"gamma must be finite and > 0, got -1.0"), ({"loss_weight": -2.0}, r"loss_weight must be")],
)
def test_invalid_parameters_raise_before_anything_changes(kwargs: dict[str, float], message: str) -> None:
    model = _ssd()
    with pytest.raises(ValueError, match=message):
        use_balanced_l1(model, **kwargs)
    assert type(model) is SSD and not hasattr(model, CONFIG_ATTRIBUTE)
