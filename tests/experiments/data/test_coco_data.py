"""Loading COCO annotation files: what is accepted, what is cleaned, and a clear error naming the file for the rest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from balanced_l1.experiments.data.coco_annotations import MAX_BOXES_PER_IMAGE
from balanced_l1.experiments.data.coco_data import (
    DataError,
    DetectionDataset,
    ImageReadError,
    load_coco_folder,
    load_coco_split,
    save_coco_folder,
)
from balanced_l1.experiments.data.images import MAX_IMAGE_PIXELS
from balanced_l1.experiments.data.synthetic import make_synthetic_dataset


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return save_coco_folder(make_synthetic_dataset(3, 2, image_size=64, seed=1), tmp_path / "data")


def _edit(folder: Path, split: str, change: Callable[[dict[str, Any]], None]) -> Path:
    path = folder / "annotations" / f"{split}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def test_saved_folder_loads_back_identically(folder: Path) -> None:
    original = make_synthetic_dataset(3, 2, image_size=64, seed=1)
    loaded = load_coco_folder(folder)
    for split in ("train", "val"):
        assert loaded[split].coco == original[split].coco
        pairs = ((loaded[split].load_image(i), original[split].load_image(i)) for i in range(len(original[split])))
        assert all(np.array_equal(a, b) for a, b in pairs)


def test_missing_optional_fields_get_coco_defaults(folder: Path) -> None:
    def strip(doc: dict[str, Any]) -> None:
        for ann in doc["annotations"]:
            del ann["id"], ann["area"], ann["iscrowd"]

    _edit(folder, "train", strip)
    ann = load_coco_folder(folder)["train"].coco["annotations"][0]
    assert ann["id"] == 1 and ann["iscrowd"] == 0 and ann["area"] == ann["bbox"][2] * ann["bbox"][3]


def test_dataset_gives_uint8_images_xyxy_boxes_and_one_based_labels(folder: Path) -> None:
    split = load_coco_folder(folder)["train"]
    image, target = DetectionDataset(split)[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(split.load_image(0)).permute(2, 0, 1))
    x, y, w, h = split.coco["annotations"][0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert target["labels"].min() >= 1 and target["labels"].max() <= len(split.category_ids)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: data folder not found"):
        load_coco_folder(tmp_path / "nowhere")


def test_missing_annotation_file_is_named(folder: Path) -> None:
    (folder / "annotations" / "val.json").unlink()
    with pytest.raises(DataError, match=r"val\.json: annotation file not found"):
        load_coco_folder(folder)


def test_malformed_json_is_named(folder: Path) -> None:
    (folder / "annotations" / "train.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"train\.json: not a readable JSON file"):
        load_coco_folder(folder)


def test_missing_key_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc.pop("annotations"))
    with pytest.raises(DataError, match=r"train\.json: key 'annotations' must be a list, got NoneType"):
        load_coco_folder(folder)


@pytest.mark.parametrize(("w", "h"), [(0, 5), (5, 0), (0, 0)])
def test_zero_width_or_height_box_is_dropped_and_counted(folder: Path, w: float, h: float) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(bbox=[1, 1, w, h]))
    split = load_coco_folder(folder)["train"]
    assert split.report["degenerate_boxes_dropped"] == 1
    assert 1 not in {a["id"] for a in split.coco["annotations"]}
    assert len(split.coco["annotations"]) == split.report["annotations"] - 1


def test_negative_box_size_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(bbox=[1, 1, 5, -2]))
    with pytest.raises(DataError, match=r"train\.json: annotation #0 .* negative size: width and height must be >= 0"):
        load_coco_folder(folder)


@pytest.mark.parametrize(
    ("bbox", "clipped"),
    [([-1, 0, 5, 5], [0, 0, 4, 5]), ([60, 10, 10, 5], [60, 10, 4, 5]), ([0, 62, 4, 4.5], [0, 62, 4, 2])],
)
def test_box_past_the_border_is_clipped_for_training_and_evaluation(
    folder: Path, bbox: list[float], clipped: list[float]
) -> None:
    _edit(folder, "val", lambda doc: doc["annotations"][0].update(bbox=bbox))
    split = load_coco_folder(folder)["val"]
    assert split.report["boxes_clipped"] == 1
    assert split.coco["annotations"][0]["bbox"] == clipped
    x, y, w, h = clipped
    assert split.target(0)["boxes"][0].tolist() == [x, y, x + w, y + h]


def test_box_inside_the_image_is_kept_exactly_and_not_counted_as_clipped(folder: Path) -> None:
    bbox = [0.1, 0.7, 0.2, 63.3]  # 0.1 + 0.2 - 0.1 != 0.2 in floating point
    _edit(folder, "val", lambda doc: doc["annotations"][0].update(bbox=bbox))
    split = load_coco_folder(folder)["val"]
    assert split.coco["annotations"][0]["bbox"] == bbox and split.report["boxes_clipped"] == 0


def test_box_wholly_outside_the_image_is_dropped_and_counted(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(bbox=[64, 3, 5, 5]))
    split = load_coco_folder(folder)["train"]
    assert split.report["boxes_outside_image_dropped"] == 1 and split.report["boxes_clipped"] == 0
    assert len(split.coco["annotations"]) == split.report["annotations"] - 1


def test_crowd_region_is_kept_for_evaluation_and_left_out_of_training(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(iscrowd=1))
    split = load_coco_folder(folder)["train"]
    crowd = split.coco["annotations"][0]
    assert crowd["iscrowd"] == 1 and split.report["crowd_regions"] == 1
    own = [a for a in split.coco["annotations"] if a["image_id"] == crowd["image_id"]]
    assert len(split.target(0)["boxes"]) == len(own) - 1
    assert split.report["training_boxes"] == split.report["annotations"] - 1


def test_image_without_annotations_is_kept_with_an_empty_target(folder: Path) -> None:
    def unannotate_first(doc: dict[str, Any]) -> None:
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != doc["images"][0]["id"]]

    _edit(folder, "train", unannotate_first)
    split = load_coco_folder(folder)["train"]
    assert len(split) == 3 and split.report["images_without_annotations"] == 1
    _, target = DetectionDataset(split)[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_non_numeric_box_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(bbox=[1, 1, "a", 3]))
    with pytest.raises(DataError, match=r"train\.json: annotation #0 needs 'bbox' = \[x, y, width, height\]"):
        load_coco_folder(folder)


def test_unknown_category_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(category_id=99))
    with pytest.raises(DataError, match=r"train\.json: annotation #0 has unknown category_id 99; known: \[1, 2, 3\]"):
        load_coco_folder(folder)


def test_unknown_image_id_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(image_id=1234))
    with pytest.raises(DataError, match=r"train\.json: annotation #0 refers to unknown image_id 1234"):
        load_coco_folder(folder)


def test_image_without_size_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["images"][0].pop("width"))
    with pytest.raises(DataError, match=r"train\.json: image 'train_00000\.png' needs a positive integer 'width'"):
        load_coco_folder(folder)


def test_categories_differing_between_splits_are_named(folder: Path) -> None:
    _edit(folder, "val", lambda doc: doc["categories"][0].update(name="square"))
    with pytest.raises(DataError, match=r"val\.json: categories differ from train\.json's"):
        load_coco_folder(folder)


def test_image_that_does_not_decode_fails_when_read_naming_it(folder: Path) -> None:
    (folder / "images" / "val_00001.png").write_bytes(b"not a png")
    split = load_coco_folder(folder)["val"]
    with pytest.raises(ImageReadError, match=r"val_00001\.png: cannot decode the image"):
        DetectionDataset(split)[1]


def test_missing_image_file_fails_when_read_naming_it(folder: Path) -> None:
    (folder / "images" / "train_00002.png").unlink()
    dataset = DetectionDataset(load_coco_folder(folder)["train"])
    dataset[1]
    with pytest.raises(ImageReadError, match=r"train_00002\.png: image file not found"):
        dataset[2]


def test_image_of_another_size_than_declared_fails_when_read_naming_it(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["images"][1].update(width=80))
    split = load_coco_folder(folder)["train"]
    with pytest.raises(
        ImageReadError, match=r"train_00001\.png: image is 64x64 but its annotation file declares 80x64"
    ):
        split.load_image(1)


def test_missing_image_folder_is_named(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: image folder not found"):
        load_coco_split(folder / "annotations" / "train.json", tmp_path / "nowhere", "train")


def test_deeply_nested_json_is_named_without_recursion_error(folder: Path) -> None:
    (folder / "annotations" / "train.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"train\.json: not a readable JSON file \(nested too deeply\)"):
        load_coco_folder(folder)


@pytest.mark.parametrize("file_name", ["/etc/passwd", "../../../../etc/passwd", "sub/../../x.png", "C:\\x.png", ""])
def test_file_name_outside_the_image_folder_is_refused_at_load(folder: Path, file_name: str) -> None:
    _edit(folder, "train", lambda doc: doc["images"][0].update(file_name=file_name))
    with pytest.raises(DataError, match=r"train\.json: image 1 has file_name .* that (is|has)") as info:
        load_coco_folder(folder)
    assert not isinstance(info.value, ImageReadError)  # no image was read: an annotation error, not an image's


def test_an_image_with_more_boxes_than_the_bound_is_refused_naming_it_and_why(folder: Path) -> None:
    def crowd(doc: dict[str, Any]) -> None:
        box = {"image_id": 1, "category_id": doc["categories"][0]["id"], "bbox": [1, 1, 5, 5]}
        doc["annotations"] = [dict(box) for _ in range(MAX_BOXES_PER_IMAGE + 1)]

    _edit(folder, "train", crowd)
    with pytest.raises(DataError, match=rf"train\.json: image 1 has more than {MAX_BOXES_PER_IMAGE} boxes .* anchor"):
        load_coco_folder(folder)


def test_an_image_of_as_many_boxes_as_the_bound_is_accepted(folder: Path) -> None:
    def crowd(doc: dict[str, Any]) -> None:
        box = {"image_id": 1, "category_id": doc["categories"][0]["id"], "bbox": [1, 1, 5, 5]}
        doc["annotations"] = [dict(box) for _ in range(MAX_BOXES_PER_IMAGE)]

    _edit(folder, "train", crowd)
    assert len(load_coco_folder(folder)["train"].coco["annotations"]) == MAX_BOXES_PER_IMAGE


def test_an_image_declared_over_the_pixel_bound_is_refused_at_load(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["images"][0].update(width=1 << 20, height=1 << 20))
    with pytest.raises(DataError, match=rf"train\.json: image 1 declares 1048576x1048576 .* {MAX_IMAGE_PIXELS} pixels"):
        load_coco_folder(folder)


def test_boolean_ids_are_not_integers(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["categories"][0].update(id=True))
    with pytest.raises(DataError, match=r"train\.json: every category needs an integer 'id'"):
        load_coco_folder(folder)


@pytest.mark.parametrize(("key", "value"), [("image_id", [1]), ("image_id", "1")])
def test_image_id_that_is_not_an_integer_is_named(folder: Path, key: str, value: Any) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update({key: value}))
    with pytest.raises(DataError, match=r"train\.json: annotation #0 refers to unknown image_id"):
        load_coco_folder(folder)


def test_category_id_that_is_not_an_integer_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(category_id=[1]))
    with pytest.raises(DataError, match=r"train\.json: annotation #0 has unknown category_id \[1\]"):
        load_coco_folder(folder)


@pytest.mark.parametrize("bad_id", [0, -3, "7", 1.5])
def test_annotation_id_that_is_not_a_positive_integer_is_named(folder: Path, bad_id: Any) -> None:
    _edit(folder, "val", lambda doc: doc["annotations"][0].update(id=bad_id))
    with pytest.raises(DataError, match=r"val\.json: annotation #0 needs a positive integer 'id' if given"):
        load_coco_folder(folder)


def test_repeated_annotation_id_is_named(folder: Path) -> None:
    _edit(folder, "val", lambda doc: doc["annotations"][1].update(id=doc["annotations"][0]["id"]))
    with pytest.raises(DataError, match=r"val\.json: annotation id 1 appears twice"):
        load_coco_folder(folder)


def test_missing_annotation_ids_do_not_collide_with_given_ones(folder: Path) -> None:
    def keep_one_id(doc: dict[str, Any]) -> None:
        for ann in doc["annotations"][1:]:
            del ann["id"]
        doc["annotations"][0]["id"] = 2

    _edit(folder, "train", keep_one_id)
    ids = [a["id"] for a in load_coco_folder(folder)["train"].coco["annotations"]]
    assert ids[0] == 2 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("area", "big", "a finite 'area' >= 0"),
        ("area", True, "a finite 'area' >= 0"),
        ("area", float("inf"), "a finite 'area' >= 0"),
        ("iscrowd", 2, "'iscrowd' 0 or 1"),
        ("iscrowd", True, "'iscrowd' 0 or 1"),
        ("iscrowd", 1.0, "'iscrowd' 0 or 1"),
    ],
)
def test_ill_typed_optional_field_is_named(folder: Path, key: str, value: Any, allowed: str) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update({key: value}))
    with pytest.raises(DataError, match=rf"train\.json: annotation #0 needs {allowed} if given, got {value!r}"):
        load_coco_folder(folder)


def test_held_out_split_of_crowd_regions_only_is_named(folder: Path) -> None:
    _edit(folder, "val", lambda doc: [a.update(iscrowd=1) for a in doc["annotations"]])
    with pytest.raises(DataError, match=r"val\.json: every annotation of the held-out split is a crowd region"):
        load_coco_folder(folder)


def test_training_split_without_images_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc.update(images=[], annotations=[]))
    with pytest.raises(DataError, match=r"train\.json: the training split has no images"):
        load_coco_folder(folder)


def test_held_out_split_without_annotations_is_named(folder: Path) -> None:
    _edit(folder, "val", lambda doc: doc.update(annotations=[]))
    with pytest.raises(DataError, match=r"val\.json: the held-out split has no annotations to score"):
        load_coco_folder(folder)
