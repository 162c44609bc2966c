"""The embedded synthetic data set: deterministic, varied, with tight boxes inside the image."""

from __future__ import annotations

import numpy as np
import pytest

from balanced_l1.experiments.data.synthetic import CATEGORIES, make_synthetic_dataset, make_synthetic_split


def test_same_seed_gives_identical_images_and_annotations() -> None:
    a = make_synthetic_split("train", 6, seed=7)
    b = make_synthetic_split("train", 6, seed=7)
    assert a.coco == b.coco
    assert all(np.array_equal(a.load_image(i), b.load_image(i)) for i in range(6))
    assert a.fingerprint == b.fingerprint


def test_other_seed_gives_other_images() -> None:
    a = make_synthetic_split("train", 3, seed=0)
    b = make_synthetic_split("train", 3, seed=1)
    assert not np.array_equal(a.load_image(0), b.load_image(0))
    assert a.fingerprint != b.fingerprint


def test_a_larger_set_starts_with_the_images_of_a_smaller_one() -> None:
    small = make_synthetic_split("val", 3, seed=2)
    large = make_synthetic_split("val", 5, seed=2)
    assert all(np.array_equal(small.load_image(i), large.load_image(i)) for i in range(3))
    assert large.coco["annotations"][: len(small.coco["annotations"])] == small.coco["annotations"]


def test_held_out_split_differs_from_training_split() -> None:
    data = make_synthetic_dataset(4, 4, seed=0)
    train, val = data["train"], data["val"]
    assert not any(np.array_equal(train.load_image(i), val.load_image(j)) for i in range(4) for j in range(4))


def test_images_have_the_requested_size_and_dtype() -> None:
    split = make_synthetic_split("train", 2, image_size=96)
    assert all(im.shape == (96, 96, 3) and im.dtype == np.uint8 for im in map(split.load_image, range(2)))
    assert all(info["width"] == 96 and info["height"] == 96 for info in split.coco["images"])


def test_boxes_are_positive_and_inside_the_image() -> None:
    split = make_synthetic_split("train", 40, image_size=128)
    for ann in split.coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        assert ann["area"] == w * h


def test_every_class_small_medium_and_large_objects_and_varied_aspect_ratios_occur() -> None:
    anns = make_synthetic_split("train", 80).coco["annotations"]
    assert {a["category_id"] for a in anns} == {c["id"] for c in CATEGORIES}
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()
    ratios = np.array([a["bbox"][2] / a["bbox"][3] for a in anns])
    assert ratios.min() < 0.6 and ratios.max() > 1.6


def test_objects_partly_occlude_each_other() -> None:
    split = make_synthetic_split("train", 40)
    overlapping = 0
    for info in split.coco["images"]:
        boxes = [a["bbox"] for a in split.coco["annotations"] if a["image_id"] == info["id"]]
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1 :]:
                if min(x1 + w1, x2 + w2) > max(x1, x2) and min(y1 + h1, y2 + h2) > max(y1, y2):
                    overlapping += 1
    assert overlapping > 0


def test_shape_fills_its_box_edges() -> None:
    split = make_synthetic_split("val", 1, seed=5)
    ann = split.coco["annotations"][-1]  # drawn last, so nothing hides it
    x, y, w, h = ann["bbox"]
    patch = split.load_image(0)[y : y + h, x : x + w].astype(int)
    colour = patch[h // 2, w // 2]
    mask = np.abs(patch - colour).sum(axis=2) == 0
    assert mask[:, 0].any() and mask[:, -1].any() and mask[0].any() and mask[-1].any()


def test_loaded_image_is_a_copy_that_the_caller_may_modify() -> None:
    split = make_synthetic_split("val", 1, seed=4)
    split.load_image(0)[:] = 0
    assert split.load_image(0).any()


def test_report_counts_images_and_boxes_and_nothing_cleaned() -> None:
    split = make_synthetic_split("train", 5, seed=1)
    boxes = len(split.coco["annotations"])
    assert split.report["images"] == 5 and split.report["annotations"] == boxes == split.report["training_boxes"]
    assert split.report["boxes_clipped"] == split.report["degenerate_boxes_dropped"] == 0


def test_fingerprint_depends_on_every_setting() -> None:
    base = make_synthetic_split("train", 2, image_size=64, seed=0).fingerprint
    others = [
        make_synthetic_split("val", 2, image_size=64, seed=0),
        make_synthetic_split("train", 3, image_size=64, seed=0),
        make_synthetic_split("train", 2, image_size=72, seed=0),
        make_synthetic_split("train", 2, image_size=64, seed=1),
    ]
    assert base not in {split.fingerprint for split in others}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "test", "num_images": 1}, "split must be one of"),
        ({"split": "train", "num_images": 0}, "num_images must be an integer >= 1, got 0"),
        (
            {"split": "train", "num_images": 1, "image_size": 32},
            r"image_size \(pixels\) must be an integer >= 64, got 32",
        ),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_synthetic_split(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_images": 2.0}, "num_images must be an integer, got 2.0"),
        ({"num_images": True}, "num_images must be an integer, got True"),
    ],
)
def test_counts_that_are_not_integers_are_a_type_error(kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        make_synthetic_split("train", **kwargs)
