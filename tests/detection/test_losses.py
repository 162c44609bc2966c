"""use_balanced_l1 and use_box_loss: which losses change, to what value, and that nothing else changes."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection import retinanet as tv_retinanet
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from balanced_l1 import balanced_l1_loss
from balanced_l1.detection import use_balanced_l1
from balanced_l1.detection._mixins import _with_mixin
from balanced_l1.detection.box_loss import CONFIG_ATTRIBUTE

SIZE = 64
NUM_CLASSES = 3
NUM_KEYPOINTS = 3
BOX_LOSSES = ("loss_box_reg", "loss_rpn_box_reg")


def _backbone() -> nn.Module:
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
    )
    backbone.out_channels = 8
    return backbone


def _anchors() -> AnchorGenerator:
    return AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),))


def _rcnn(kind: str = "faster") -> nn.Module:
    torch.manual_seed(1)
    kwargs: dict[str, Any] = {
        "min_size": SIZE,
        "max_size": SIZE,
        "rpn_anchor_generator": _anchors(),
        "box_roi_pool": MultiScaleRoIAlign(["0"], 7, 2),
        "box_head": TwoMLPHead(8 * 7 * 7, 32),
        "box_predictor": FastRCNNPredictor(32, NUM_CLASSES),
        "rpn_batch_size_per_image": 64,
        "rpn_pre_nms_top_n_train": 200,
        "rpn_post_nms_top_n_train": 50,
        "box_batch_size_per_image": 32,
        "box_score_thresh": 0.0,
    }
    if kind == "mask":
        return MaskRCNN(
            _backbone(),
            mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
            mask_head=MaskRCNNHeads(8, [16], 1),
            mask_predictor=MaskRCNNPredictor(16, 16, NUM_CLASSES),
            **kwargs,
        )
    if kind == "keypoint":
        return KeypointRCNN(
            _backbone(),
            keypoint_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
            keypoint_head=KeypointRCNNHeads(8, [16]),
            keypoint_predictor=KeypointRCNNPredictor(16, NUM_KEYPOINTS),
            **kwargs,
        )
    return FasterRCNN(_backbone(), **kwargs)


def _retinanet() -> RetinaNet:
    torch.manual_seed(1)
    return RetinaNet(
        _backbone(), NUM_CLASSES, min_size=SIZE, max_size=SIZE, anchor_generator=_anchors(), score_thresh=0.0
    )


def _batch() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    gen = torch.Generator().manual_seed(2)
    images = [torch.rand(3, SIZE, SIZE, generator=gen) for _ in range(2)]
    targets = []
    for shift in (0.0, 6.0):
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 12.0, 60.0, 52.0]]) + shift / 2
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist(), strict=True):
            mask[y0:y1, x0:x1] = 1
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        keypoints = torch.stack([centre - 3, centre, centre + 3], dim=1)
        keypoints = torch.cat([keypoints, torch.ones(2, NUM_KEYPOINTS, 1)], dim=2)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks, "keypoints": keypoints})
    return images, targets


def _losses(model: nn.Module, seed: int = 0) -> dict[str, Tensor]:
    model.train()
    images, targets = _batch()
    torch.manual_seed(seed)
    return model(images, targets)


class _Recorder:
    """Wraps a callable on one instance and keeps its last arguments and result."""

    def __init__(self, owner: object, name: str) -> None:
        self.wrapped = getattr(owner, name)
        self.args: tuple[Any, ...] = ()
        self.result: Any = None
        setattr(owner, name, self)

    def __call__(self, *args: Any) -> Any:
        self.args = args
        self.result = self.wrapped(*args)
        return self.result


def _hand_rcnn_box_losses(model: nn.Module, **params: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Train-mode losses of a switched R-CNN and its box losses computed by hand from its recorded inputs."""
    loss_weight = params.pop("loss_weight", 1.0)
    sampler = _Recorder(model.rpn, "fg_bg_sampler")
    rpn_inputs = _Recorder(model.rpn, "compute_loss")
    samples = _Recorder(model.roi_heads, "select_training_samples")
    outputs: list[tuple[Tensor, Tensor]] = []
    model.roi_heads.box_predictor.register_forward_hook(lambda module, args, out: outputs.append(out))
    losses = _losses(model)

    _, deltas, _, rpn_targets = rpn_inputs.args
    pos = torch.where(torch.cat(sampler.result[0]))[0]
    neg = torch.where(torch.cat(sampler.result[1]))[0]
    rpn_box = balanced_l1_loss(deltas[pos], torch.cat(rpn_targets)[pos], reduction="sum", **params)
    box_regression = outputs[0][1]
    labels = torch.cat(samples.result[2])
    roi_pos = torch.where(labels > 0)[0]
    pred = box_regression.reshape(len(labels), -1, 4)[roi_pos, labels[roi_pos]]
    roi_box = balanced_l1_loss(pred, torch.cat(samples.result[3])[roi_pos], reduction="sum", **params)
    expected = {
        "loss_rpn_box_reg": loss_weight * rpn_box / (len(pos) + len(neg)),
        "loss_box_reg": loss_weight * roi_box / len(labels),
    }
    return losses, expected


@pytest.mark.parametrize("kind", ["faster", "mask", "keypoint"])
def test_rcnn_box_losses_equal_hand_computation(kind: str) -> None:
    model = use_balanced_l1(_rcnn(kind))
    losses, expected = _hand_rcnn_box_losses(model)
    assert expected["loss_box_reg"] > 0 and expected["loss_rpn_box_reg"] > 0
    for name in BOX_LOSSES:
        torch.testing.assert_close(losses[name], expected[name], rtol=1e-6, atol=0.0)


def test_parameters_reach_both_box_losses() -> None:
    params = {"alpha": 0.4, "gamma": 1.2, "beta": 0.11, "formulation": "mmdet", "loss_weight": 2.5}
    model = use_balanced_l1(_rcnn(), **params)
    losses, expected = _hand_rcnn_box_losses(model, **params)
    default = _losses(use_balanced_l1(_rcnn()))
    for name in BOX_LOSSES:
        torch.testing.assert_close(losses[name], expected[name], rtol=1e-6, atol=0.0)
        assert not torch.allclose(losses[name], default[name], rtol=1e-3)


@pytest.mark.parametrize("kind", ["faster", "mask", "keypoint"])
def test_rcnn_other_losses_stay_torchvision(kind: str) -> None:
    reference = _losses(_rcnn(kind))
    losses = _losses(use_balanced_l1(_rcnn(kind)))
    assert losses.keys() == reference.keys()
    for name in reference.keys() - set(BOX_LOSSES):
        torch.testing.assert_close(losses[name], reference[name], rtol=1e-6, atol=1e-7)
    for name in BOX_LOSSES:
        assert not torch.allclose(losses[name], reference[name], rtol=1e-3)


@pytest.mark.parametrize("kind", ["faster", "mask", "keypoint"])
def test_rcnn_train_step_updates_every_trainable_parameter(kind: str) -> None:
    model = use_balanced_l1(_rcnn(kind))
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sum(_losses(model).values()).backward()
    optimizer.step()
    unchanged = [name for name, value in model.state_dict().items() if torch.equal(value, before[name])]
    assert unchanged == []


def test_another_model_keeps_torchvision_losses_exactly() -> None:
    untouched = _rcnn("mask")
    switched = copy.deepcopy(untouched)
    before = _losses(untouched)
    use_balanced_l1(switched)
    _losses(switched)
    after = _losses(untouched)
    assert type(untouched.rpn) is tv_rpn.RegionProposalNetwork
    assert type(untouched.roi_heads) is tv_roi_heads.RoIHeads
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_no_torchvision_global_changes_even_during_a_switched_forward() -> None:
    def globals_now() -> list[object]:
        return [
            tv_roi_heads.fastrcnn_loss,
            tv_roi_heads.maskrcnn_loss,
            tv_roi_heads.keypointrcnn_loss,
            tv_roi_heads.RoIHeads.forward,
            tv_rpn.RegionProposalNetwork.compute_loss,
            tv_rpn.F.smooth_l1_loss,
            det_utils._box_loss,
            tv_retinanet._box_loss,
            tv_retinanet.RetinaNetRegressionHead.compute_loss,
            torch.nn.functional.smooth_l1_loss,
        ]

    original = globals_now()
    seen: list[list[object]] = []
    model = use_balanced_l1(_rcnn("mask"))
    model.roi_heads.box_predictor.register_forward_hook(lambda *_: seen.append(globals_now()))
    model.rpn.head.register_forward_hook(lambda *_: seen.append(globals_now()))
    _losses(model)
    retinanet = use_balanced_l1(_retinanet())
    retinanet.head.regression_head.register_forward_hook(lambda *_: seen.append(globals_now()))
    _losses(retinanet)
    assert len(seen) == 3
    assert all(now == original for now in [*seen, globals_now()])


def test_retinanet_box_loss_equals_hand_computation_and_classification_stays() -> None:
    reference = _losses(_retinanet())
    model = use_balanced_l1(_retinanet(), beta=0.11)
    head_inputs = _Recorder(model.head, "compute_loss")
    losses = _losses(model)

    targets, head_outputs, anchors, matched_idxs = head_inputs.args
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    per_image = []
    regression = head_outputs["bbox_regression"]
    for target, deltas, anchors_i, matched in zip(targets, regression, anchors, matched_idxs, strict=True):
        fg = torch.where(matched >= 0)[0]
        encoded = coder.encode_single(target["boxes"][matched[fg]], anchors_i[fg])
        per_image.append(balanced_l1_loss(deltas[fg], encoded, beta=0.11, reduction="sum") / max(1, len(fg)))
    assert all(len(torch.where(m >= 0)[0]) > 0 for m in matched_idxs)
    torch.testing.assert_close(losses["bbox_regression"], sum(per_image) / len(per_image), rtol=1e-6, atol=0.0)
    assert torch.equal(losses["classification"], reference["classification"])
    assert not torch.allclose(losses["bbox_regression"], reference["bbox_regression"], rtol=1e-3)


@pytest.mark.parametrize("placement", ["rpn", "roi"])
def test_one_stage_switch_leaves_the_other_stage_torchvision(placement: str) -> None:
    reference = _losses(_rcnn())
    model = use_balanced_l1(_rcnn(), placement=placement)
    rpn, roi_heads = placement == "rpn", placement == "roi"
    losses = _losses(model)
    switched, kept = ("loss_rpn_box_reg", "loss_box_reg") if rpn else ("loss_box_reg", "loss_rpn_box_reg")
    assert (type(model.rpn) is tv_rpn.RegionProposalNetwork) is not rpn
    assert (type(model.roi_heads) is tv_roi_heads.RoIHeads) is not roi_heads
    assert torch.equal(losses[kept], reference[kept])
    assert not torch.allclose(losses[switched], reference[switched], rtol=1e-3)


def test_second_call_replaces_parameters_without_stacking() -> None:
    model = use_balanced_l1(_rcnn(), beta=0.5)
    classes = (type(model.rpn), type(model.roi_heads))
    use_balanced_l1(model, beta=0.2, loss_weight=3.0)
    fresh = use_balanced_l1(_rcnn(), beta=0.2, loss_weight=3.0)
    assert (type(model.rpn), type(model.roi_heads)) == classes == (type(fresh.rpn), type(fresh.roi_heads))
    assert len(type(model.roi_heads).__mro__) == len(tv_roi_heads.RoIHeads.__mro__) + 2
    assert getattr(model.roi_heads, CONFIG_ATTRIBUTE).values["beta"] == 0.2
    losses, expected = _losses(model), _losses(fresh)
    for name in BOX_LOSSES:
        assert torch.equal(losses[name], expected[name])


class _CountingSampler(tv_roi_heads.RoIHeads):
    """Stands in for a sampler mixin (IoU-balanced sampling) that overrides select_training_samples."""

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> Any:
        self.sampler_calls = getattr(self, "sampler_calls", 0) + 1
        return super().select_training_samples(proposals, targets)


@pytest.mark.parametrize("sampler_first", [True, False], ids=["sampler-then-balanced", "balanced-then-sampler"])
def test_roi_heads_honour_a_sampler_mixin_applied_in_either_order(sampler_first: bool) -> None:
    model = _rcnn()
    if sampler_first:
        model.roi_heads.__class__ = _with_mixin(type(model.roi_heads), _CountingSampler)
    use_balanced_l1(model)
    if not sampler_first:
        model.roi_heads.__class__ = _with_mixin(type(model.roi_heads), _CountingSampler)
    losses, expected = _hand_rcnn_box_losses(model)
    assert model.roi_heads.sampler_calls == 1
    torch.testing.assert_close(losses["loss_box_reg"], expected["loss_box_reg"], rtol=1e-6, atol=0.0)


def test_deepcopy_and_pickle_keep_the_switch_and_the_weights() -> None:
    model = use_balanced_l1(_rcnn(), beta=0.3, loss_weight=2.0)
    expected = _losses(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone.roi_heads) is type(model.roi_heads) and type(clone.rpn) is type(model.rpn)
        assert getattr(clone.rpn, CONFIG_ATTRIBUTE) == getattr(model.rpn, CONFIG_ATTRIBUTE)
        losses = _losses(clone)
        for name, value in expected.items():
            assert torch.equal(losses[name], value), name


def test_state_dict_is_unchanged_and_loads_into_a_torchvision_model() -> None:
    untouched = _rcnn()
    switched = use_balanced_l1(copy.deepcopy(untouched))
    state = switched.state_dict()
    assert list(state) == list(untouched.state_dict())
    assert str(untouched.load_state_dict(state)) == "<All keys matched successfully>"


@pytest.mark.parametrize(
    "build", [lambda: _rcnn("mask"), lambda: _rcnn("keypoint"), _retinanet], ids=["mask", "keypoint", "retinanet"]
)
def test_eval_mode_inference_is_unchanged(build: Any) -> None:
    untouched = build().eval()
    switched = use_balanced_l1(copy.deepcopy(untouched)).eval()
    images, _ = _batch()
    with torch.no_grad():
        expected, outputs = untouched(images), switched(images)
    assert sum(len(out["boxes"]) for out in expected) > 0
    for out, ref in zip(outputs, expected, strict=True):
        assert out.keys() == ref.keys()
        for key in ref:
            assert torch.equal(out[key], ref[key]), key


def _fcos() -> FCOS:
    backbone = nn.Conv2d(3, 32, 3, stride=8, padding=1)
    backbone.out_channels = 32
    return FCOS(backbone, NUM_CLASSES, anchor_generator=AnchorGenerator(((16,),), ((1.0,),)))


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.Linear(2, 2),
        _fcos,
    ],
    ids=["Linear", "FCOS"],
)
def test_unsupported_model_raises_type_error_naming_it(build: Any) -> None:
    model = build()
    with pytest.raises(
        TypeError,
        match=rf"supports torchvision FasterRCNN.*RetinaNet.*SSD \(SSD and SSDlite\).*got {type(model).__name__}$",
    ):
        use_balanced_l1(model)


def test_wrapped_model_error_says_to_pass_the_bare_model() -> None:
    wrapper = nn.Module()
    wrapper.module = _rcnn()
    with pytest.raises(TypeError, match=r"got Module \(pass the bare model, e.g. ddp_model.module\)"):
        use_balanced_l1(wrapper)


@pytest.mark.parametrize("placement", ["none", "", "ROI", 1])
def test_an_unknown_placement_is_an_error_listing_the_valid_ones(placement: object) -> None:
    model = _rcnn()
    with pytest.raises(ValueError, match=r"placement must be one of roi, rpn, both, got"):
        use_balanced_l1(model, placement=placement)
    assert type(model.rpn) is tv_rpn.RegionProposalNetwork and type(model.roi_heads) is tv_roi_heads.RoIHeads


@pytest.mark.parametrize("placement", ["rpn", "roi"])
def test_retinanet_rejects_a_stage_placement(placement: str) -> None:
    model = _retinanet()
    with pytest.raises(ValueError, match=r"RetinaNet has neither an RPN nor RoI heads.*leave placement at None"):
        use_balanced_l1(model, placement=placement)
    assert type(model.head.regression_head) is tv_retinanet.RetinaNetRegressionHead


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"beta": 0.0}, ValueError, r"beta must be finite and > 0, got 0.0"),
        ({"alpha": float("nan")}, ValueError, r"alpha must be finite and > 0, got nan"),
        ({"formulation": "paper"}, ValueError, r"formulation must be one of scaled, mmdet, got 'paper'"),
        ({"loss_weight": -1.0}, ValueError, r"loss_weight must be finite and >= 0, got -1.0"),
        ({"loss_weight": "2"}, TypeError, r"loss_weight must be a real number, got '2' of type str"),
        ({"loss_weight": 1e300}, ValueError, r"loss_weight must be <= 10000, got 1e\+300"),
        ({"delta": 1.0}, ValueError, r"the balanced_l1 loss takes alpha, gamma, beta, formulation; got delta"),
    ],
)
def test_invalid_parameters_raise_and_leave_the_model_untouched(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    model = _rcnn()
    with pytest.raises(error, match=message):
        use_balanced_l1(model, **kwargs)
    assert type(model.rpn) is tv_rpn.RegionProposalNetwork and type(model.roi_heads) is tv_roi_heads.RoIHeads


def test_wrong_target_dtype_is_reported_by_the_switched_head() -> None:
    model = use_balanced_l1(_rcnn()).train()
    images, targets = _batch()
    targets[1]["labels"] = targets[1]["labels"].int()
    with pytest.raises(TypeError, match=r"targets\[1\]\['labels'\] must be int64, got torch.int32"):
        model(images, targets)
