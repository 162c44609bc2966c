"""The CPU-sized Faster R-CNN: a multi-level FPN, reproducible initial weights, clear errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FasterRCNN

from balanced_l1.detection.models import build_small_faster_rcnn


def test_backbone_returns_an_ordered_dict_of_three_fpn_levels_and_a_pooled_one() -> None:
    model = build_small_faster_rcnn(3).eval()
    features = model.backbone(torch.zeros(1, 3, 128, 128))
    assert list(features) == ["0", "1", "2", "pool"]
    assert [f.shape[-1] for f in features.values()] == [32, 16, 8, 4]
    assert isinstance(model, FasterRCNN) and model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]


def test_same_seed_builds_identical_weights_and_another_seed_does_not() -> None:
    def weights(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return list(build_small_faster_rcnn(3).state_dict().values())

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_predicts_one_score_per_class_plus_background() -> None:
    assert build_small_faster_rcnn(5).roi_heads.box_predictor.cls_score.out_features == 6


def test_detects_in_eval_mode_on_images_of_another_size() -> None:
    detections = build_small_faster_rcnn(2, image_size=96).eval()([torch.rand(3, 60, 80)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
        ({"num_classes": 2, "image_size": 16}, r"image_size \(pixels\) must be an integer >= 32, got 16"),
        ({"num_classes": 2, "anchor_sizes": (8, 16)}, "anchor_sizes needs one size per level"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_small_faster_rcnn(**kwargs)


def test_a_class_count_that_is_not_an_integer_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"num_classes must be an integer, got 2\.5 of type float"):
        build_small_faster_rcnn(2.5)  # type: ignore[arg-type]
