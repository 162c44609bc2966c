"""build_detector: torchvision's standard Faster R-CNNs by name, backbone weights from none, DEFAULT or a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from balanced_l1.detection.models import DETECTORS, BackboneWeightsError, build_detector


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_builds_with_the_requested_classes_and_resize(name: str) -> None:
    model = build_detector(name, 4, min_size=160, max_size=200)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.transform.min_size == (160,) and model.transform.max_size == 200
    assert all(p.requires_grad for p in model.parameters())  # from scratch: every layer trains


def test_unknown_model_and_weights_on_the_small_model_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'yolo'; valid models: small, fasterrcnn_resnet50_fpn"):
        build_detector("yolo", 3)
    with pytest.raises(ValueError, match="the small model is built from scratch"):
        build_detector("small", 3, weights_backbone="DEFAULT")


def _trainable(module: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in module.named_parameters()}


def test_mobilenet_backbone_file_is_loaded_and_set_up_as_torchvision_sets_up_pretrained_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = mobilenet_v3_large()
    torch.save(classifier.state_dict(), tmp_path / "mnv3.pth")
    model = build_detector("fasterrcnn_mobilenet_v3_large_fpn", 3, weights_backbone=str(tmp_path / "mnv3.pth"))
    body = model.backbone.body
    assert torch.equal(body["0"][0].weight, classifier.features[0][0].weight)
    assert torch.equal(body["16"][1].running_var, classifier.features[16][1].running_var)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    reference = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3).body
    assert _trainable(body) == _trainable(reference)


def test_resnet_backbone_file_freezes_batch_norm_and_the_first_stages(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = resnet50()
    torch.save(classifier.state_dict(), tmp_path / "r50.pth")
    model = build_detector("fasterrcnn_resnet50_fpn", 3, weights_backbone=str(tmp_path / "r50.pth"))
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)
    assert torch.equal(body.bn1.running_mean, classifier.bn1.running_mean)
    reference = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3).body
    assert _trainable(body) == _trainable(reference)
    assert isinstance(body.bn1, FrozenBatchNorm2d)


def test_v2_keeps_trainable_batch_norm_as_torchvision_does(tmp_path: Path) -> None:
    torch.save(resnet50().state_dict(), tmp_path / "r50.pth")
    model = build_detector("fasterrcnn_resnet50_fpn_v2", 3, weights_backbone=str(tmp_path / "r50.pth"))
    assert isinstance(model.backbone.body.bn1, nn.BatchNorm2d)
    assert (
        not model.backbone.body.conv1.weight.requires_grad and model.backbone.body.layer4[0].conv1.weight.requires_grad
    )


def test_a_file_that_does_not_fit_the_backbone_is_named(tmp_path: Path) -> None:
    torch.save(mobilenet_v3_large().state_dict(), tmp_path / "mnv3.pth")
    with pytest.raises(BackboneWeightsError, match=r"mnv3\.pth: does not fit the backbone of fasterrcnn_resnet50_fpn"):
        build_detector("fasterrcnn_resnet50_fpn", 3, weights_backbone=str(tmp_path / "mnv3.pth"))
    with pytest.raises(BackboneWeightsError, match="backbone weights file not found"):
        build_detector("fasterrcnn_resnet50_fpn", 3, weights_backbone=str(tmp_path / "none.pth"))
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(BackboneWeightsError, match=r"bad\.pth: not a readable plain-data state_dict"):
        build_detector("fasterrcnn_mobilenet_v3_large_fpn", 3, weights_backbone=str(tmp_path / "bad.pth"))
