"""A split of a detection data set, wherever it comes from: COCO files on disk or the embedded synthetic set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from balanced_l1.experiments.data.datasets import SplitSamples

__all__ = ["DetectionSplit"]


@dataclass(frozen=True)
class DetectionSplit:
    """One split of a detection data set: COCO ground truth, training targets and a source of images.

    Attributes:
        name: the split's name, e.g. ``"train"`` or ``"val"``.
        coco: the cleaned COCO ground truth for evaluation: every image (also those without annotations),
            annotations with ``id`` >= 1, ``area`` and ``iscrowd`` (crowd regions kept), boxes inside the image.
        samples: the images and their training targets (crowd regions left out).
        report: counts of what validation and cleaning found (``images``, ``annotations``,
            ``degenerate_boxes_dropped``, ``boxes_clipped``, ``crowd_regions``, ...).
        fingerprint: a SHA-256 hex digest identifying the data: of the annotation file's content and the
            normalised image folder, or of the settings that generated an in-memory set.
    """

    name: str
    coco: dict[str, Any] = field(repr=False)
    samples: SplitSamples = field(repr=False)
    report: dict[str, int]
    fingerprint: str

    @property
    def category_ids(self) -> list[int]:
        """The sorted COCO category ids; model label ``i + 1`` stands for ``category_ids[i]``."""
        return sorted(int(c["id"]) for c in self.coco["categories"])

    def __len__(self) -> int:
        return len(self.samples)

    def image_id(self, index: int) -> int:
        """The COCO id of image ``index``."""
        return self.samples.image_id(index)

    def target(self, index: int) -> dict[str, torch.Tensor]:
        """The training target of image ``index`` (see :class:`DetectionDataset`)."""
        return self.samples.target(index)

    def load_image(self, index: int) -> np.ndarray:
        """The RGB pixels of image ``index``, ``uint8 (H, W, 3)``, read now from its file (or from memory).

        Raises:
            ImageReadError: naming the file, if it is missing, refused or does not decode.
        """
        return self.samples.load_image(index)
