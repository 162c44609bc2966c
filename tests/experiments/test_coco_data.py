"""Loading a COCO-format folder: what it accepts, and a clear error naming the file for everything else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from balanced_l1.experiments.coco_data import DataError, DetectionDataset, load_coco_folder, save_coco_folder
from balanced_l1.experiments.synthetic import make_synthetic_dataset


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
        assert all(np.array_equal(a, b) for a, b in zip(loaded[split].images, original[split].images, strict=True))


def test_missing_optional_fields_get_coco_defaults(folder: Path) -> None:
    def strip(doc: dict[str, Any]) -> None:
        for ann in doc["annotations"]:
            del ann["id"], ann["area"], ann["iscrowd"]

    _edit(folder, "train", strip)
    ann = load_coco_folder(folder)["train"].coco["annotations"][0]
    assert ann["id"] == 1 and ann["iscrowd"] == 0 and ann["area"] == ann["bbox"][2] * ann["bbox"][3]


def test_dataset_gives_float_images_xyxy_boxes_and_one_based_labels(folder: Path) -> None:
    split = load_coco_folder(folder)["train"]
    image, target = DetectionDataset(split)[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
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


@pytest.mark.parametrize(("w", "h"), [(0, 5), (5, -2)])
def test_degenerate_box_is_named(folder: Path, w: float, h: float) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update(bbox=[1, 1, w, h]))
    with pytest.raises(DataError, match=r"train\.json: annotation #0 .* degenerate box .* must be > 0"):
        load_coco_folder(folder)


@pytest.mark.parametrize("bbox", [[-1, 0, 5, 5], [60, 10, 10, 5], [0, 62, 4, 4]])
def test_box_outside_the_image_is_named(folder: Path, bbox: list[float]) -> None:
    _edit(folder, "val", lambda doc: doc["annotations"][0].update(bbox=bbox))
    with pytest.raises(DataError, match=r"val\.json: annotation #0 .* outside the image \(64x64\)"):
        load_coco_folder(folder)


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


def test_image_that_does_not_load_is_named(folder: Path) -> None:
    (folder / "images" / "val_00001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"val_00001\.png: cannot load image"):
        load_coco_folder(folder)


def test_missing_image_file_is_named(folder: Path) -> None:
    (folder / "images" / "train_00002.png").unlink()
    with pytest.raises(DataError, match=r"train_00002\.png: cannot load image"):
        load_coco_folder(folder)


def test_image_of_another_size_than_declared_is_named(folder: Path) -> None:
    _edit(folder, "train", lambda doc: doc["images"][1].update(width=80))
    with pytest.raises(DataError, match=r"train_00001\.png: image is 64x64 but its annotation file declares 80x64"):
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
    ("key", "value", "allowed"), [("area", "big", "a finite 'area' >= 0"), ("iscrowd", 2, "'iscrowd' 0 or 1")]
)
def test_ill_typed_optional_field_is_named(folder: Path, key: str, value: Any, allowed: str) -> None:
    _edit(folder, "train", lambda doc: doc["annotations"][0].update({key: value}))
    with pytest.raises(DataError, match=rf"train\.json: annotation #0 needs {allowed} if given, got {value!r}"):
        load_coco_folder(folder)


def test_held_out_split_without_annotations_is_named(folder: Path) -> None:
    _edit(folder, "val", lambda doc: doc.update(annotations=[]))
    with pytest.raises(DataError, match=r"val\.json: the held-out split has no annotations to score"):
        load_coco_folder(folder)
