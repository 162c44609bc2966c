"""The torch Dataset over a split: keys, horizontal flips from the key, targets, pickling into workers."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from balanced_l1.experiments.data.coco_data import DetectionDataset
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.data.synthetic import make_synthetic_split


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


@pytest.fixture(scope="module")
def split() -> DetectionSplit:
    return make_synthetic_split("train", 4, image_size=64, seed=2)


def test_index_and_unflipped_tuple_key_give_the_same_sample(split: DetectionSplit) -> None:
    dataset = DetectionDataset(split)
    image, target = dataset[1]
    same_image, same_target = dataset[(1, False)]
    assert torch.equal(image, same_image) and all(torch.equal(target[k], same_target[k]) for k in target)
    assert target["image_id"].dtype == torch.int64 and target["image_id"].dim() == 0
    assert int(target["image_id"]) == split.image_id(1)


def test_flip_mirrors_the_image_and_the_boxes(split: DetectionSplit) -> None:
    dataset = DetectionDataset(split)
    image, target = dataset[2]
    flipped, flipped_target = dataset[(2, True)]
    assert type(flipped) is torch.Tensor and type(flipped_target["boxes"]) is torch.Tensor
    assert torch.equal(flipped, image.flip(-1))
    x1, y1, x2, y2 = target["boxes"].unbind(1)
    assert torch.equal(flipped_target["boxes"], torch.stack([64 - x2, y1, 64 - x1, y2], dim=1))
    assert torch.equal(flipped_target["labels"], target["labels"])


def test_flipping_twice_is_the_identity_on_the_pixels_inside_each_box(split: DetectionSplit) -> None:
    dataset = DetectionDataset(split)
    image, target = dataset[0]
    flipped, flipped_target = dataset[(0, True)]
    for (x1, y1, x2, y2), (fx1, _, fx2, _) in zip(target["boxes"].int(), flipped_target["boxes"].int(), strict=True):
        assert torch.equal(image[:, y1:y2, x1:x2], flipped[:, y1:y2, fx1:fx2].flip(-1))


def test_sample_is_a_fresh_copy(split: DetectionSplit) -> None:
    dataset = DetectionDataset(split)
    image, target = dataset[0]
    image.zero_()
    target["boxes"].zero_()
    again, target_again = dataset[0]
    assert again.any() and target_again["boxes"].any()


@pytest.mark.parametrize("key", [(0, 1), (0,), (0, True, 1), "0", 1.0, (0.0, False), True])
def test_bad_key_is_refused_naming_it(split: DetectionSplit, key: object) -> None:
    with pytest.raises(TypeError, match=r"(a key must be an index or \(index, hflip: bool\)|an image index must)"):
        DetectionDataset(split)[key]  # type: ignore[index]


@pytest.mark.parametrize("index", [4, -1])
def test_index_out_of_range_is_refused(split: DetectionSplit, index: int) -> None:
    with pytest.raises(IndexError, match=rf"image index {index} out of range for a split of 4 images"):
        DetectionDataset(split)[index]


def test_dataset_pickles_to_an_equal_dataset(split: DetectionSplit) -> None:
    dataset = DetectionDataset(split)
    copy = pickle.loads(pickle.dumps(dataset))
    image, target = copy[(3, True)]
    expected_image, expected_target = dataset[(3, True)]
    assert torch.equal(image, expected_image) and torch.equal(target["boxes"], expected_target["boxes"])


@pytest.mark.slow
def test_spawned_dataloader_workers_serve_the_same_samples(split: DetectionSplit) -> None:
    dataset = DetectionDataset(split)
    keys = [(0, False), (1, True), (2, False), (3, True)]
    loader = DataLoader(
        dataset,
        sampler=keys,
        batch_size=2,
        num_workers=2,
        multiprocessing_context="spawn",
        collate_fn=_as_list,
    )
    served = [sample for batch in loader for sample in batch]
    for (image, target), key in zip(served, keys, strict=True):
        assert torch.equal(image, dataset[key][0]) and torch.equal(target["boxes"], dataset[key][1]["boxes"])
