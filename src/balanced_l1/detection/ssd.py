"""Balanced L1 box loss of torchvision's SSD and SSDlite (``SSD.compute_loss``), torchvision's normalisation.

torchvision's SSD (and SSDlite, an ``SSD`` with an ``SSDLiteHead``) computes, over the images of a
batch, the smooth L1 (beta 1) of the encoded deltas of every foreground default box, summed, and
divides it by ``N = max(1, number of foreground boxes)``; the classification loss (cross-entropy
over the foreground boxes and the hard negatives, ``neg_to_pos_ratio`` per foreground box) is
divided by the same ``N``. Here the box loss is Balanced L1 on the same deltas with the same
normaliser, and the classification loss is torchvision's own. In a distributed run ``N`` is summed
over ranks for both losses (see :mod:`._loss_normaliser`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder

from balanced_l1.detection._loss_normaliser import normaliser

if TYPE_CHECKING:
    from balanced_l1.detection.box_loss import BoxLossConfig

__all__ = ["ssd_losses"]


def ssd_losses(
    box_coder: BoxCoder,
    targets: list[dict[str, Tensor]],
    bbox_regression: Tensor,
    anchors: list[Tensor],
    matched_idxs: list[Tensor],
    classification: Tensor,
    config: BoxLossConfig,
) -> dict[str, Tensor]:
    """SSD's losses with the Balanced L1 box loss (torchvision's normalisation).

    Args:
        box_coder: the model's ``box_coder``, which encodes the targets.
        targets: per image, a dict with the ground-truth ``"boxes"``.
        bbox_regression: ``(num_images, A, 4)`` predicted deltas.
        anchors: per image, the ``(A, 4)`` default boxes.
        matched_idxs: per image, the index of each default box's ground-truth box (< 0: background).
        classification: torchvision's classification loss of this batch, divided by
            ``max(1, number of foreground boxes)`` of this process.
        config: the box loss.

    Returns:
        ``{"bbox_regression": Balanced L1 summed over the foreground boxes of all images / N,
            "classification": classification}`` with ``N = max(1, number of foreground boxes)``; in a
            distributed run ``N`` is summed over ranks and both losses are ``sum * world_size / N``.
    """
    total = bbox_regression.new_zeros(())
    count = 0
    for target, deltas, anchors_per_image, matched in zip(targets, bbox_regression, anchors, matched_idxs, strict=True):
        foreground = torch.where(matched >= 0)[0]
        count += foreground.numel()
        encoded = box_coder.encode_single(target["boxes"][matched[foreground]], anchors_per_image[foreground])
        total = total + config.summed(deltas[foreground], encoded)
    scale = normaliser(count, total)
    if isinstance(scale, Tensor):  # distributed: this rank's mean becomes its share of the global mean
        classification = classification * (max(1, count) * scale)
    return {"bbox_regression": total * scale, "classification": classification}
