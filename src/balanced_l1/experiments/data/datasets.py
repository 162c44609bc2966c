"""Per-image training samples of a split and the torch ``Dataset`` that serves them.

:class:`SplitSamples` holds what training needs in a few flat arrays (the boxes of all images concatenated,
with offsets), so that memory grows with the annotations and not with the images: the pixels are read by
its image source on each call. :class:`DetectionDataset` is the torchvision-detection view of it; it holds
nothing else, so it pickles small into ``DataLoader`` workers (``fork`` or ``spawn``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as tvf

from balanced_l1.experiments.data.images import FileImages, MemoryImages

Target = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SplitSamples:
    """The images of a split and their training targets (crowd regions excluded).

    Attributes:
        images: where the pixels come from (files read on each call, or arrays in memory).
        image_ids: the COCO image id of each image, ``int64 (n,)``.
        boxes: every training box, ``x1, y1, x2, y2``, ``float32 (m, 4)``, grouped by image.
        labels: the 1-based contiguous label of each box, ``int64 (m,)``.
        offsets: image ``i`` owns ``boxes[offsets[i]:offsets[i + 1]]``, ``int64 (n + 1,)``.
    """

    images: FileImages | MemoryImages
    image_ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_coco(cls, coco: dict[str, Any], images: FileImages | MemoryImages) -> SplitSamples:
        """Build the training targets of a validated COCO dictionary.

        Args:
            coco: ``images``, ``annotations`` (``bbox`` as ``[x, y, width, height]``) and ``categories``.
            images: the pixels, in the order of ``coco["images"]``.

        Returns:
            The samples; label ``i + 1`` stands for the ``i``-th smallest category id.
        """
        label_of = {cid: i + 1 for i, cid in enumerate(sorted(int(c["id"]) for c in coco["categories"]))}
        index_of = {int(info["id"]): i for i, info in enumerate(coco["images"])}
        train = [a for a in coco["annotations"] if not a["iscrowd"]]
        owner = np.fromiter((index_of[a["image_id"]] for a in train), dtype=np.int64, count=len(train))
        order = np.argsort(owner, kind="stable")
        xywh = np.array([a["bbox"] for a in train], dtype=np.float64).reshape(-1, 4)[order]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        labels = np.fromiter((label_of[a["category_id"]] for a in train), dtype=np.int64, count=len(train))[order]
        offsets = np.zeros(len(index_of) + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=len(index_of)), out=offsets[1:])
        image_ids = np.fromiter(index_of, dtype=np.int64, count=len(index_of))
        return cls(images, image_ids, boxes, labels, offsets)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _index(self, index: int) -> int:
        try:
            if isinstance(index, (bool, np.bool_)):
                raise TypeError
            position = operator.index(index)
        except TypeError:
            raise TypeError(f"an image index must be an integer, got {type(index).__name__} {index!r}") from None
        if not 0 <= position < len(self):
            raise IndexError(f"image index {index!r} out of range for a split of {len(self)} images")
        return position

    def image_id(self, index: int) -> int:
        """The COCO id of image ``index``."""
        return int(self.image_ids[self._index(index)])

    def target(self, index: int) -> Target:
        """The training target of image ``index``: ``boxes`` float32 ``(n, 4)``, ``labels`` int64, ``image_id``."""
        i = self._index(index)
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return {
            "boxes": torch.from_numpy(self.boxes[start:stop].copy()),
            "labels": torch.from_numpy(self.labels[start:stop].copy()),
            "image_id": torch.tensor(int(self.image_ids[i]), dtype=torch.int64),
        }

    def load_image(self, index: int) -> np.ndarray:
        """The RGB pixels of image ``index``, ``uint8 (H, W, 3)``."""
        return self.images.load(self._index(index))


class DetectionDataset(torch.utils.data.Dataset[tuple[torch.Tensor, Target]]):
    """A torchvision-detection view of a split: ``(image, target)`` pairs, images read lazily.

    The image is a ``uint8`` tensor ``(3, H, W)``; the target holds ``boxes`` (``float32``, ``x1, y1, x2, y2``),
    ``labels`` (``int64``, contiguous, 1-based) and ``image_id`` (``int64``, 0-dim). Crowd regions are not in the
    target; an image without boxes gives empty ``boxes`` ``(0, 4)``, which torchvision's detectors accept.

    A key is an index or ``(index, hflip)``; with ``hflip`` true the image and its boxes are flipped horizontally
    (``torchvision.transforms.v2``). The caller decides the flip, so the dataset draws no random numbers.

    Args:
        split: a ``DetectionSplit`` (or anything with a ``samples`` attribute holding :class:`SplitSamples`).
    """

    def __init__(self, split: Any) -> None:
        self.samples: SplitSamples = split.samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, Target]:
        if isinstance(key, tuple):
            if len(key) != 2 or not isinstance(key[1], (bool, np.bool_)):
                raise TypeError(f"a key must be an index or (index, hflip: bool), got {key!r}")
            index, hflip = key[0], bool(key[1])
        else:
            index, hflip = key, False
        target = self.samples.target(index)
        image = torch.from_numpy(self.samples.load_image(index)).permute(2, 0, 1).contiguous()
        if hflip:
            height, width = image.shape[-2:]
            boxes = tv_tensors.BoundingBoxes(
                target["boxes"], format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height, width)
            )
            image = tvf.horizontal_flip(tv_tensors.Image(image)).as_subclass(torch.Tensor)
            target["boxes"] = tvf.horizontal_flip(boxes).as_subclass(torch.Tensor)
        return image, target
