"""COCO's own layout with real COCO's quirks: what is dropped, clipped, kept and counted, and how it is read."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tests.experiments.data.coco_fixture import CATEGORIES, MODES, write_coco_quirks

from balanced_l1.experiments.data import images as images_module
from balanced_l1.experiments.data.coco_data import (
    DataError,
    DetectionDataset,
    ImageReadError,
    format_data_report,
    load_coco_dataset,
    load_coco_split,
)
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.run.evaluate import coco_metrics


@pytest.fixture(scope="module")
def quirks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_coco_quirks(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def splits(quirks: dict[str, Any]) -> dict[str, DetectionSplit]:
    return load_coco_dataset(quirks["train_ann"], quirks["train_root"], quirks["val_ann"], quirks["val_root"])


def _load(quirks: dict[str, Any], **kwargs: Any) -> dict[str, DetectionSplit]:
    return load_coco_dataset(quirks["train_ann"], quirks["train_root"], quirks["val_ann"], quirks["val_root"], **kwargs)


@pytest.mark.parametrize("split", ["train", "val"])
def test_report_counts_what_was_written(splits: dict[str, DetectionSplit], quirks: dict[str, Any], split: str) -> None:
    assert splits[split].report == quirks["report"][split]


def test_data_report_has_one_column_per_split_and_every_count(splits: dict[str, DetectionSplit]) -> None:
    lines = format_data_report(splits).splitlines()
    assert lines[0].split() == ["data", "train", "val"]
    assert len(lines) == 1 + len(splits["train"].report)
    clipped = next(line for line in lines if "clipped" in line).split()
    assert clipped[-2:] == [str(splits["train"].report["boxes_clipped"]), str(splits["val"].report["boxes_clipped"])]


def test_sparse_category_ids_map_to_contiguous_labels(splits: dict[str, DetectionSplit]) -> None:
    split = splits["train"]
    assert split.category_ids == sorted(c["id"] for c in CATEGORIES)
    labels = torch.cat([split.target(i)["labels"] for i in range(len(split))])
    used = {split.category_ids[label - 1] for label in labels.tolist()}
    assert used == {3, 7, 12} and labels.min() >= 1


def test_evaluation_ground_truth_keeps_crowd_and_every_image_and_drops_extra_fields(
    splits: dict[str, DetectionSplit], quirks: dict[str, Any]
) -> None:
    coco = splits["val"].coco
    raw = json.loads(Path(quirks["val_ann"]).read_text())
    assert [im["id"] for im in coco["images"]] == [im["id"] for im in raw["images"]]
    assert sum(a["iscrowd"] for a in coco["annotations"]) == 1
    assert all(set(a) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} for a in coco["annotations"])
    assert all(a["id"] >= 1 for a in coco["annotations"])


def test_every_kept_box_lies_inside_its_image_and_has_a_positive_size(splits: dict[str, DetectionSplit]) -> None:
    for split in splits.values():
        size = {im["id"]: (im["width"], im["height"]) for im in split.coco["images"]}
        for ann in split.coco["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = size[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height


def test_training_targets_leave_out_crowd_regions(splits: dict[str, DetectionSplit]) -> None:
    split = splits["train"]
    crowd = next(a for a in split.coco["annotations"] if a["iscrowd"])
    index = [im["id"] for im in split.coco["images"]].index(crowd["image_id"])
    own = [a for a in split.coco["annotations"] if a["image_id"] == crowd["image_id"]]
    target = split.target(index)
    assert len(target["boxes"]) == len(own) - 1 and int(target["image_id"]) == crowd["image_id"]


@pytest.mark.parametrize(("split", "index"), [(s, i) for s in MODES for i in MODES[s]])
def test_grayscale_cmyk_and_rgba_images_become_rgb(
    splits: dict[str, DetectionSplit], quirks: dict[str, Any], split: str, index: int
) -> None:
    pixels = splits[split].load_image(index)
    assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
    with Image.open(Path(quirks[f"{split}_root"]) / splits[split].coco["images"][index]["file_name"]) as stored:
        assert stored.mode == MODES[split][index]
        expected = np.asarray(stored.convert("RGB")).astype(int)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_cmyk_jpeg_keeps_the_red_of_a_square(splits: dict[str, DetectionSplit]) -> None:
    split = splits["val"]
    index = next(i for i, mode in MODES["val"].items() if mode == "CMYK")
    image_id = split.image_id(index)
    squares = [a for a in split.coco["annotations"] if a["image_id"] == image_id and a["category_id"] == 3]
    x, y, w, h = (int(v) for v in squares[0]["bbox"])
    red, green, blue = split.load_image(index)[y + h // 2, x + w // 2].astype(int)
    assert red > 150 and green < 90 and blue < 90


def test_loading_decodes_no_image(quirks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an image was opened while loading annotations")

    monkeypatch.setattr(images_module.Image, "open", refuse)
    monkeypatch.setattr(images_module, "_read_bytes", refuse)
    splits = _load(quirks)
    assert len(splits["train"]) == 20


def test_dataset_holds_no_pixels_so_memory_does_not_grow_with_images(splits: dict[str, DetectionSplit]) -> None:
    dataset = DetectionDataset(splits["train"])
    for index in range(len(dataset)):
        dataset[index]
    pixels = sum(dataset[i][0].numel() for i in range(len(dataset)))
    assert len(pickle.dumps(dataset)) < pixels / 20


def test_a_missing_image_fails_only_when_read(tmp_path: Path, quirks: dict[str, Any]) -> None:
    root = tmp_path / "train"
    shutil.copytree(quirks["train_root"], root)
    split = load_coco_split(quirks["train_ann"], root, "train")
    (root / split.coco["images"][3]["file_name"]).unlink()
    dataset = DetectionDataset(split)
    dataset[2]
    with pytest.raises(ImageReadError, match=rf"{split.coco['images'][3]['file_name']}: image file not found"):
        dataset[3]


def test_evaluation_scores_the_ground_truth_perfectly(splits: dict[str, DetectionSplit]) -> None:
    split = splits["val"]
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in split.coco["annotations"]
        if not a["iscrowd"]
    ]
    assert coco_metrics(split, detections)["AP"] == pytest.approx(1.0)


def test_fingerprint_follows_the_annotation_content_and_the_image_folder(
    tmp_path: Path, quirks: dict[str, Any]
) -> None:
    ann = tmp_path / "train.json"
    shutil.copy(quirks["train_ann"], ann)
    base = load_coco_split(ann, quirks["train_root"], "train").fingerprint
    assert load_coco_split(quirks["train_ann"], quirks["train_root"], "train").fingerprint == base
    same_folder = Path(quirks["train_root"]) / ".." / Path(quirks["train_root"]).name
    assert load_coco_split(ann, same_folder, "train").fingerprint == base
    assert load_coco_split(ann, quirks["val_root"], "train").fingerprint != base
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["bbox"][0] += 1
    ann.write_text(json.dumps(doc))
    assert load_coco_split(ann, quirks["train_root"], "train").fingerprint != base


def test_categories_differing_between_files_are_named(tmp_path: Path, quirks: dict[str, Any]) -> None:
    val = tmp_path / "val.json"
    doc = json.loads(Path(quirks["val_ann"]).read_text())
    doc["categories"] = doc["categories"][:-1]
    val.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"val\.json: categories differ from instances_train\.json's"):
        load_coco_dataset(quirks["train_ann"], quirks["train_root"], val, quirks["val_root"])
