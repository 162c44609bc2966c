"""The RoI-head mixin shared by the Libra samplers: one IoU matrix per image feeds the matcher and the sampler.

A sampler installed with :func:`switch_roi_sampler` is called as ``sampler.sample(labels, max_ious,
gt_indices)``, per image: the class labels (>= 1 object, 0 background, -1 ignored), each proposal's
largest IoU with any ground-truth box, and the index of the ground-truth box it is matched to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads

from balanced_l1.detection._mixins import _with_mixin


class _SamplingRoIHeads(RoIHeads):
    """RoIHeads mixin: keeps each proposal's max IoU and matched instance and hands both to the sampler."""

    mixin_label = "LibraSampling"
    fg_bg_sampler: Any

    def assign_targets_to_proposals(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        matched_idxs, labels, _ = self.assign_targets_with_ious(proposals, gt_boxes, gt_labels)
        return matched_idxs, labels

    def assign_targets_with_ious(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Match proposals to ground truth as torchvision does, also returning each proposal's max IoU.

        Args:
            proposals: per image, proposal boxes ``(N, 4)`` in ``(x1, y1, x2, y2)``.
            gt_boxes: per image, ground-truth boxes ``(M, 4)``.
            gt_labels: per image, ground-truth labels ``(M,)``.

        Returns:
            Per image: the matched ground-truth index (clamped to >= 0), the label (>= 1 object, 0
                background, -1 ignored) and the largest IoU with any ground-truth box (0 without boxes).
        """
        matched_idxs: list[Tensor] = []
        labels: list[Tensor] = []
        max_ious: list[Tensor] = []
        for boxes, gt, gt_label in zip(proposals, gt_boxes, gt_labels, strict=True):
            if gt.numel() == 0:
                matched = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                label = torch.zeros_like(matched)
                max_iou = torch.zeros(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
            else:
                iou = self.box_similarity(gt, boxes)
                raw = self.proposal_matcher(iou)
                max_iou = iou.max(dim=0).values
                matched = raw.clamp(min=0)
                label = gt_label[matched].to(torch.int64)
                label[raw == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
                label[raw == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            matched_idxs.append(matched)
            labels.append(label)
            max_ious.append(max_iou)
        return matched_idxs, labels, max_ious

    def select_training_samples(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        self.check_targets(targets)
        assert targets is not None  # check_targets raised otherwise
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels, max_ious = self.assign_targets_with_ious(proposals, gt_boxes, gt_labels)
        pos_masks, neg_masks = self.fg_bg_sampler.sample(labels, max_ious, matched_idxs)
        matched_gt_boxes = []
        for i, (pos, neg) in enumerate(zip(pos_masks, neg_masks, strict=True)):
            keep = torch.where(pos | neg)[0]
            proposals[i], labels[i], matched_idxs[i] = proposals[i][keep], labels[i][keep], matched_idxs[i][keep]
            gt = gt_boxes[i] if gt_boxes[i].numel() > 0 else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(gt[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets


def switch_roi_sampler(
    model: nn.Module,
    build: Callable[[int, float], Any],
    batch_size_per_image: int | None,
    positive_fraction: float | None,
) -> nn.Module:
    """Install ``build(batch, fraction)`` as ``model.roi_heads.fg_bg_sampler`` and mix in :class:`_SamplingRoIHeads`.

    Args:
        model: a torchvision two-stage detector.
        build: makes the sampler from the batch size and positive fraction; it validates them.
        batch_size_per_image: ``None`` keeps the current sampler's value.
        positive_fraction: ``None`` keeps the current sampler's value.

    Returns:
        ``model`` itself, modified (unchanged if ``build`` raises).

    Raises:
        TypeError: if ``model.roi_heads`` is missing or not a torchvision ``RoIHeads``.
    """
    roi_heads = getattr(model, "roi_heads", None)
    if not isinstance(roi_heads, RoIHeads):
        raise TypeError(
            f"model.roi_heads must be a torchvision RoIHeads (a two-stage detector), got {type(roi_heads).__name__}"
        )
    current = roi_heads.fg_bg_sampler
    roi_heads.fg_bg_sampler = build(
        current.batch_size_per_image if batch_size_per_image is None else batch_size_per_image,
        current.positive_fraction if positive_fraction is None else positive_fraction,
    )
    roi_heads.__class__ = _with_mixin(type(roi_heads), _SamplingRoIHeads)
    return model
