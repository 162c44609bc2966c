"""IoU losses on decoded boxes for the RoI head: the losses the field moved to after Balanced L1.

mmdetection trains Faster R-CNN with GIoU, DIoU or CIoU by setting ``reg_decoded_bbox=True`` on the
bbox head: the predicted deltas are decoded against their proposals and the loss compares the decoded
box with the matched ground-truth box. :func:`decoded_box_loss` does the same with torchvision's box
coder (weights 10, 10, 5, 5 in Faster R-CNN) and torchvision's own loss functions
(:func:`~torchvision.ops.generalized_box_iou_loss`, :func:`~torchvision.ops.distance_box_iou_loss`,
:func:`~torchvision.ops.complete_box_iou_loss`). The gradient reaches the deltas through the decoding,
so the gradient-balance monitor reads it on the same partition of the deltas as for the other losses.

The IoU losses themselves, with the loss weights of mmdetection's Faster R-CNN configs, are declared in
the box-loss registry (:mod:`.box_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["decoded_box_loss"]


def decoded_box_loss(
    loss: Callable[..., Tensor], deltas: Tensor, proposals: Tensor, gt_boxes: Tensor, box_coder: Any
) -> Tensor:
    """The summed IoU loss of predicted deltas decoded against their proposals, versus the ground-truth boxes.

    Args:
        loss: the IoU loss, a torchvision op called as ``loss(boxes, gt_boxes, reduction="sum")``, such as
            :func:`~torchvision.ops.generalized_box_iou_loss`.
        deltas: ``(P, 4)`` predicted encoded deltas of the positive RoIs (their true class).
        proposals: ``(P, 4)`` the RoIs' proposal boxes ``(x1, y1, x2, y2)``.
        gt_boxes: ``(P, 4)`` the matched ground-truth boxes.
        box_coder: the RoI head's ``BoxCoder`` (its ``decode_single`` inverts the encoding of the targets).

    Returns:
        The sum of the per-box losses, computed in float32 at least (a graph-connected 0 when ``P == 0``).

    Example:
        >>> import torch
        >>> from torchvision.models.detection._utils import BoxCoder
        >>> from torchvision.ops import generalized_box_iou_loss
        >>> coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        >>> box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> float(decoded_box_loss(generalized_box_iou_loss, torch.zeros(1, 4), box, box, coder))
        0.0
    """
    work = deltas.float() if deltas.dtype in (torch.float16, torch.bfloat16) else deltas
    if work.shape[0] == 0:
        return work.sum() * 0.0
    boxes = box_coder.decode_single(work, proposals.to(work.dtype))
    return loss(boxes, gt_boxes.to(work.dtype), reduction="sum")
