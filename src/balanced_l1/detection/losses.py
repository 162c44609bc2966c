"""Box-regression losses for torchvision detectors (Balanced L1 and any other registered one), switched per instance.

:func:`use_box_loss` changes how one torchvision Faster / Mask / Keypoint R-CNN, RetinaNet or
SSD / SSDlite *instance* computes its box-regression losses, to any loss of the registry
(:mod:`.box_loss`); :func:`use_balanced_l1` is the same for Balanced L1. It swaps the class of the model's RPN,
RoI heads or RetinaNet regression head (of the SSD itself, whose ``compute_loss`` holds its losses)
for a cached subclass with a mixin (see :mod:`._mixins`); no torchvision module global is patched,
so every other model in the process keeps torchvision's losses.

The normalisation is torchvision's, so loss magnitudes stay comparable:

- RoI head: sum over positive RoIs of the loss of the ground-truth class's deltas, divided by the
  number of sampled RoIs (the classification loss is the mean over sampled RoIs, as before);
- RPN: sum over sampled positive anchors, divided by the number of sampled anchors (objectness:
  mean over sampled anchors);
- RetinaNet: per image, sum over foreground anchors divided by ``max(1, num_foreground)``,
  averaged over images;
- SSD / SSDlite: sum over the foreground default boxes of all images divided by
  ``max(1, num_foreground)`` (the classification loss is torchvision's, divided by the same count);
  see :mod:`.ssd`.

In a distributed run (``torch.distributed`` initialised, world size > 1) every count that differs
between ranks (sampled RoIs, sampled anchors, images, SSD's foreground boxes) is summed over ranks,
so that after DDP's gradient averaging the gradients equal those of one process on the global batch (see
:mod:`._loss_normaliser`). Mask and keypoint losses are torchvision's own functions, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits, cross_entropy
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetRegressionHead
from torchvision.models.detection.roi_heads import RoIHeads, keypointrcnn_loss, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.ssd import SSD

from balanced_l1.detection._loss_normaliser import normaliser
from balanced_l1.detection._mixins import _with_mixin
from balanced_l1.detection._model_kinds import two_stage_parts, wrapper_hint
from balanced_l1.detection.box_loss import CONFIG_ATTRIBUTE, BoxLossConfig, placement_stages
from balanced_l1.detection.ssd import ssd_losses

__all__ = ["retinanet_box_loss", "roi_head_losses", "rpn_losses", "use_balanced_l1", "use_box_loss"]

_SUPPORTED = (
    "torchvision FasterRCNN, MaskRCNN, KeypointRCNN (a GeneralizedRCNN whose rpn is a "
    "RegionProposalNetwork and whose roi_heads is a RoIHeads), RetinaNet (with a RetinaNetRegressionHead) "
    "and SSD (SSD and SSDlite); FCOS, whose box loss is an IoU loss on distances, is not supported"
)


def roi_head_losses(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: list[Tensor],
    regression_targets: list[Tensor],
    config: BoxLossConfig,
    *,
    decoding: tuple[list[Tensor], list[Tensor], object] | None = None,
) -> tuple[Tensor, Tensor]:
    """Classification and box losses of the Fast R-CNN head (torchvision's normalisation).

    Args:
        class_logits: ``(N, num_classes)`` logits of the N sampled RoIs of all images.
        box_regression: ``(N, 4 * num_classes)`` predicted deltas.
        labels: per image, the ``int64`` class of each sampled RoI (0 is background).
        regression_targets: per image, the ``(n_i, 4)`` encoded target deltas.
        config: the box loss.
        decoding: for an IoU loss (``config.decoded``): per image, the sampled RoIs' proposals and their
            matched ground-truth boxes, and the head's box coder.

    Returns:
        ``(cross-entropy summed / N, box loss of the positives' true-class deltas summed / N)``,
            with N summed over ranks in a distributed run.

    Raises:
        ValueError: for an IoU loss without ``decoding``.
    """
    all_labels = torch.cat(labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    count = all_labels.numel()
    positive = torch.where(all_labels > 0)[0]
    deltas = box_regression.reshape(class_logits.shape[0], -1, 4)[positive, all_labels[positive]]
    classification = cross_entropy(class_logits, all_labels, reduction="sum")
    if config.decoded:
        if decoding is None:
            raise ValueError(
                f"the {config.loss} loss compares decoded boxes: pass decoding=(proposals, gt_boxes, coder)"
            )
        proposals, gt_boxes, box_coder = decoding
        box = config.summed_decoded(
            deltas, torch.cat(proposals, dim=0)[positive], torch.cat(gt_boxes, dim=0)[positive], box_coder
        )
    else:
        box = config.summed(deltas, targets[positive])
    scale = normaliser(count, classification)
    return classification * scale, box * scale


def rpn_losses(
    objectness: Tensor,
    pred_bbox_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    sampled_pos_inds: Tensor,
    sampled_neg_inds: Tensor,
    config: BoxLossConfig,
) -> tuple[Tensor, Tensor]:
    """Objectness and box losses of the RPN (torchvision's normalisation).

    Args:
        objectness: objectness logits of all anchors of all images (any shape with one per anchor).
        pred_bbox_deltas: ``(A, 4)`` predicted deltas.
        labels: ``(A,)`` anchor labels (1 foreground, 0 background, negative ignored).
        regression_targets: ``(A, 4)`` encoded target deltas.
        sampled_pos_inds: indices of the sampled positive anchors.
        sampled_neg_inds: indices of the sampled negative anchors.
        config: the box loss.

    Returns:
        ``(binary cross-entropy summed / S, box loss of the positives summed / S)`` with S the
            number of sampled anchors, summed over ranks in a distributed run.
    """
    sampled = torch.cat([sampled_pos_inds, sampled_neg_inds], dim=0)
    logits = objectness.flatten()[sampled]
    objectness_loss = binary_cross_entropy_with_logits(logits, labels[sampled], reduction="sum")
    box = config.summed(pred_bbox_deltas[sampled_pos_inds], regression_targets[sampled_pos_inds])
    scale = normaliser(sampled.numel(), objectness_loss)
    return objectness_loss * scale, box * scale


def retinanet_box_loss(
    head: RetinaNetRegressionHead,
    targets: list[dict[str, Tensor]],
    bbox_regression: Tensor,
    anchors: list[Tensor],
    matched_idxs: list[Tensor],
    config: BoxLossConfig,
) -> Tensor:
    """The box loss of RetinaNet's regression head (torchvision's normalisation).

    Args:
        head: the regression head, whose ``box_coder`` encodes the targets.
        targets: per image, a dict with the ground-truth ``"boxes"``.
        bbox_regression: ``(num_images, A, 4)`` predicted deltas.
        anchors: per image, the ``(A, 4)`` anchors.
        matched_idxs: per image, the index of each anchor's ground-truth box (< 0: not foreground).
        config: the box loss.

    Returns:
        The mean over images of (sum over foreground anchors / ``max(1, num_foreground)``), the
            number of images summed over ranks in a distributed run.
    """
    total = bbox_regression.new_zeros(())
    for target, deltas, anchors_per_image, matched in zip(targets, bbox_regression, anchors, matched_idxs, strict=True):
        foreground = torch.where(matched >= 0)[0]
        gt_boxes = target["boxes"][matched[foreground]]
        encoded = head.box_coder.encode_single(gt_boxes, anchors_per_image[foreground])
        total = total + config.summed(deltas[foreground], encoded) / max(1, foreground.numel())
    return total * normaliser(len(targets), total)


class _BoxLossRPN(RegionProposalNetwork):
    """RPN mixin: the configured box loss for the anchors' box deltas."""

    mixin_label = "BoxLoss"

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        return rpn_losses(
            objectness,
            pred_bbox_deltas,
            torch.cat(labels, dim=0),
            torch.cat(regression_targets, dim=0),
            torch.where(torch.cat(sampled_pos, dim=0))[0],
            torch.where(torch.cat(sampled_neg, dim=0))[0],
            getattr(self, CONFIG_ATTRIBUTE),
        )


def _check_target_dtypes(targets: list[dict[str, Tensor]] | None, keypoints: bool) -> None:
    for i, target in enumerate(targets or []):
        if not target["boxes"].is_floating_point():
            raise TypeError(f"targets[{i}]['boxes'] must be a floating tensor, got {target['boxes'].dtype}")
        if target["labels"].dtype != torch.int64:
            raise TypeError(f"targets[{i}]['labels'] must be int64, got {target['labels'].dtype}")
        if keypoints and target["keypoints"].dtype != torch.float32:
            raise TypeError(f"targets[{i}]['keypoints'] must be float32, got {target['keypoints'].dtype}")


def _matched_boxes(boxes: Tensor, matched_idxs: Tensor, labels: Tensor) -> Tensor:
    """The ground-truth box of each sampled RoI (zeros for the negatives, whose box is never used)."""
    matched = boxes.new_zeros((labels.shape[0], 4))
    positive = labels > 0
    if boxes.numel():
        matched[positive] = boxes[matched_idxs[positive]].to(matched.dtype)
    return matched


class _BoxLossRoIHeads(RoIHeads):
    """RoI heads mixin: the training pass with the configured box loss (on deltas or decoded boxes); inference is
    torchvision's.

    The training pass calls ``self.select_training_samples`` (so an overriding sampler mixin is
    honoured) and torchvision's ``maskrcnn_loss`` / ``keypointrcnn_loss`` for the other branches.
    """

    mixin_label = "BoxLoss"

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        _check_target_dtypes(targets, self.has_keypoint())
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        assert targets is not None  # select_training_samples raised otherwise
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        config = getattr(self, CONFIG_ATTRIBUTE)
        decoding = None
        if config.decoded:
            gt_boxes = [
                _matched_boxes(t["boxes"], m, lab) for t, m, lab in zip(targets, matched_idxs, labels, strict=True)
            ]
            decoding = (proposals, gt_boxes, self.box_coder)
        loss_classifier, loss_box_reg = roi_head_losses(
            class_logits, box_regression, labels, regression_targets, config, decoding=decoding
        )
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if not (self.has_mask() or self.has_keypoint()):
            return [], losses
        positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
        pos_proposals = [p[pos] for p, pos in zip(proposals, positives, strict=True)]
        pos_matched_idxs = [m[pos] for m, pos in zip(matched_idxs, positives, strict=True)]
        if self.has_mask():
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, pos_proposals, image_shapes)))
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            losses["loss_mask"] = maskrcnn_loss(mask_logits, pos_proposals, gt_masks, gt_labels, pos_matched_idxs)
        if self.has_keypoint():
            keypoint_features = self.keypoint_head(self.keypoint_roi_pool(features, pos_proposals, image_shapes))
            keypoint_logits = self.keypoint_predictor(keypoint_features)
            gt_keypoints = [t["keypoints"] for t in targets]
            losses["loss_keypoint"] = keypointrcnn_loss(keypoint_logits, pos_proposals, gt_keypoints, pos_matched_idxs)
        return [], losses


class _BoxLossRetinaNetRegression(RetinaNetRegressionHead):
    """RetinaNet regression head mixin: the configured box loss on the encoded deltas of foreground anchors."""

    mixin_label = "BoxLoss"

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        config = getattr(self, CONFIG_ATTRIBUTE)
        return retinanet_box_loss(self, targets, head_outputs["bbox_regression"], anchors, matched_idxs, config)


class _BoxLossSSD(SSD):
    """SSD / SSDlite mixin: the configured box loss on the encoded deltas of foreground default boxes.

    The classification loss (hard negative mining included) is torchvision's own ``compute_loss``
    result; its smooth L1 box loss is computed there too and discarded (a sum over the foreground
    boxes, small next to the cross-entropy over every default box).
    """

    mixin_label = "BoxLoss"

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        classification = super().compute_loss(targets, head_outputs, anchors, matched_idxs)["classification"]
        config = getattr(self, CONFIG_ATTRIBUTE)
        regression = head_outputs["bbox_regression"]
        return ssd_losses(self.box_coder, targets, regression, anchors, matched_idxs, classification, config)


def _one_stage_module(model: nn.Module) -> nn.Module | None:
    """The module whose class a one-stage model's switch swaps, or None for other models."""
    if isinstance(model, RetinaNet) and isinstance(model.head.regression_head, RetinaNetRegressionHead):
        return model.head.regression_head
    if isinstance(model, SSD):
        return model
    return None


def _switch(module: nn.Module, mixin: type, config: BoxLossConfig) -> None:
    module.__class__ = _with_mixin(type(module), mixin)
    setattr(module, CONFIG_ATTRIBUTE, config)


def use_box_loss(
    model: nn.Module, loss: str, *, placement: str | None = None, loss_weight: float | None = None, **params: Any
) -> nn.Module:
    """Switch the box-regression losses of one torchvision detector instance to a registered box loss.

    Only this instance changes: its RPN, RoI heads or RetinaNet regression head (an SSD: the model
    itself, whose ``compute_loss`` computes its losses) gets a subclass with a mixin and keeps the loss
    in a :class:`~balanced_l1.detection.box_loss.BoxLossConfig` attribute named ``balanced_l1_config``.
    Weights, ``state_dict``, ``deepcopy`` and pickling are unaffected, and inference (eval mode) is
    torchvision's. Calling it again replaces the loss where ``placement`` says. Call it on the bare model,
    before wrapping it in ``DistributedDataParallel``; in a distributed run every rank must run the
    training forward pass, since the loss normalisers are summed over ranks. RetinaNet's regression loss
    is replaced whatever its ``_loss_type`` (l1, smooth_l1, giou, ...). The switched modules are not
    TorchScript-able.

    The losses (:func:`~balanced_l1.detection.box_loss.box_loss_names`): ``"balanced_l1"``, the baselines
    ``"smooth_l1"`` (torchvision's own at beta 1/9; the paper's baseline has beta 1) and ``"l1"``
    (mmdetection's Faster R-CNN baseline), the IoU losses ``"giou"``, ``"diou"`` and ``"ciou"`` on boxes
    decoded against the RoI head's proposals, as mmdetection's ``reg_decoded_bbox=True``, and any loss added
    with :func:`~balanced_l1.detection.box_loss.register_box_loss`; all with torchvision's normalisation.

    Args:
        model: a torchvision ``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN``, ``RetinaNet`` or ``SSD``
            (``ssd300_vgg16``, ``ssdlite320_mobilenet_v3_large`` or any other ``SSD``); an R-CNN for the IoU losses.
        loss: a registered box loss.
        placement: where an R-CNN's loss goes: ``"roi"`` (the RoI head, the paper's place), ``"rpn"`` or
            ``"both"``; the other stage keeps what it has. ``None``: ``"both"``, or ``"roi"`` for the IoU
            losses, which need the RoI head's proposals. RetinaNet and SSD have one box loss, which is always
            switched: leave ``placement`` at ``None`` or ``"both"`` for them.
        loss_weight: factor applied to the box losses, finite, >= 0 and at most
            :data:`~balanced_l1.detection.box_loss.MAX_LOSS_WEIGHT`; ``None``: the loss's default (1; GIoU and
            DIoU 10, CIoU 12, as mmdetection's configs).
        **params: the loss's parameters (Balanced L1: ``alpha``, ``gamma``, ``beta``, ``formulation``; smooth
            L1: ``beta``), each checked by the registry; the others take their defaults.

    Returns:
        ``model`` itself, switched in place.

    Raises:
        TypeError: for an unsupported model (for example FCOS, a plain ``nn.Module``, a DDP wrapper), or a
            parameter of the wrong type.
        ValueError: for an unknown loss, placement or parameter (listing the valid ones), an invalid value, an
            IoU loss in the RPN or in a one-stage model, or a placement other than ``"both"`` for a one-stage model.

    Example:
        >>> from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
        >>> model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
        >>> use_box_loss(model, "smooth_l1", placement="roi", beta=1.0).roi_heads.balanced_l1_config
        BoxLossConfig('smooth_l1', {'beta': 1.0}, loss_weight=1.0)
    """
    config = BoxLossConfig(loss, params, loss_weight)
    if placement is None:
        placement = "roi" if config.decoded else "both"
    rpn, roi_heads = placement_stages(placement)
    one_stage = _one_stage_module(model)
    if config.decoded and (rpn or one_stage is not None):
        raise ValueError(
            f"the {config.loss} loss compares boxes decoded against the RoI head's proposals: it goes in an R-CNN's "
            f"RoI head only (placement='roi'), got placement={placement!r} for a {type(model).__name__}"
        )
    if one_stage is not None:
        name = "SSD" if one_stage is model else "RetinaNet"
        if placement != "both":
            raise ValueError(
                f"{name} has neither an RPN nor RoI heads, it has one box loss: leave placement at None or 'both' "
                f"(got {placement!r})"
            )
        _switch(one_stage, _BoxLossSSD if one_stage is model else _BoxLossRetinaNetRegression, config)
        return model
    parts = two_stage_parts(model)
    if parts is None:
        raise TypeError(f"use_box_loss supports {_SUPPORTED}; got {type(model).__name__}{wrapper_hint(model)}")
    if rpn:
        _switch(parts[0], _BoxLossRPN, config)
    if roi_heads:
        _switch(parts[1], _BoxLossRoIHeads, config)
    return model


def use_balanced_l1(model: nn.Module, *, placement: str | None = None, **settings: Any) -> nn.Module:
    """Switch one detector instance's box losses to Balanced L1: ``use_box_loss(model, "balanced_l1", ...)``.

    Args:
        model: a model :func:`use_box_loss` supports.
        placement: ``"roi"`` (the paper's place), ``"rpn"`` or ``"both"`` (``None``, the default: both stages).
        **settings: ``alpha`` (inlier gradient scale, default 0.5), ``gamma`` (outlier gradient, the cap, 1.5),
            ``beta`` (inflection point, 1; torchvision's smooth L1 uses 1/9), ``formulation`` (``"scaled"`` or
            ``"mmdet"``, see :func:`balanced_l1.balanced_l1_loss`) and ``loss_weight`` (1).

    Returns:
        ``model`` itself, switched in place.

    Raises:
        TypeError: as :func:`use_box_loss`.
        ValueError: as :func:`use_box_loss`.

    Example:
        >>> from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
        >>> model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
        >>> model = use_balanced_l1(model, placement="roi", beta=0.5)
        >>> type(model.roi_heads).__name__, type(model.rpn).__name__
        ('RoIHeadsWithBoxLoss', 'RegionProposalNetwork')
        >>> model.roi_heads.balanced_l1_config.values["beta"]
        0.5
    """
    return use_box_loss(model, "balanced_l1", placement=placement, **settings)
