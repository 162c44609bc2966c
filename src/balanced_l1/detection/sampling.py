"""IoU-balanced sampling of negative RoIs (Libra R-CNN, Pang et al., CVPR 2019, arXiv:1904.02701).

Random sampling of RoI-head negatives picks mostly easy background (IoU near 0 with every object), because
easy negatives vastly outnumber hard ones. IoU-balanced sampling splits the IoU range of the negatives
into ``num_bins`` equal intervals and asks each interval for the same number of samples, so hard
negatives (IoU close to the background threshold) are drawn as often as the paper's hard-example
statistics say they should be. This module gives:

* :class:`IoUBalancedNegativeSampler`, with the call convention of torchvision's
  ``BalancedPositiveNegativeSampler`` plus the maximum IoU of every proposal;
* ``use_iou_balanced_sampling(model)``, which switches a torchvision R-CNN's RoI head to it. The head then
  computes the proposal/ground-truth IoU matrix once per image, through ``roi_heads.box_similarity``,
  and passes its per-proposal maximum both to the matcher and to the sampler.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads

from balanced_l1.detection._mixins import _with_mixin


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class IoUBalancedNegativeSampler:
    """Sample a fixed number of RoIs per image, drawing the negatives evenly over IoU bins.

    Positives (label >= 1) are drawn uniformly at random, ``int(batch_size_per_image * positive_fraction)``
    at most, exactly as torchvision's ``BalancedPositiveNegativeSampler`` does; the rest of the batch
    is negatives (label 0), all of them when there are not enough. Labels of -1 are never sampled.

    Negatives are split into a *floor* set, IoU <= ``floor_thr`` (empty when ``floor_thr < 0``), and
    the rest, which is cut into ``num_bins`` equal-width IoU intervals spanning
    ``[max(floor_thr, 0), max IoU of those negatives]`` (the last interval includes its right end).
    ``int(num_negatives * floor_fraction)`` negatives are drawn at random from the floor set, and the
    others are shared evenly by the bins (the remainder of the division goes one each to the
    highest-IoU bins). Each set gives what it is asked for or everything it has; whatever is still
    missing is drawn at random from the negatives not yet chosen.

    With the defaults (``num_bins=3, floor_thr=-1, floor_fraction=0``, mmdetection's Libra R-CNN
    config) the bins cover ``[0, max IoU]``. mmdetection itself starts its bins at ``floor_thr``,
    so with ``floor_thr=-1`` two of its three bins lie below IoU 0 and stay empty; here the bins
    start at 0, as the paper describes. ``floor_thr=0`` makes the zero-IoU negatives the floor set,
    as in mmdetection.

    Args:
        batch_size_per_image: number of RoIs to sample per image, >= 1.
        positive_fraction: largest fraction of the batch taken by positives, in [0, 1].
        num_bins: number of IoU intervals, >= 1 (1 means uniform random sampling above the floor).
        floor_thr: IoU at or below which a negative belongs to the floor set; negative: no floor set.
        floor_fraction: fraction of the negatives drawn from the floor set, in [0, 1]; must be 0 when
            ``floor_thr < 0``.
        generator: random number generator for reproducible draws; ``None`` uses torch's global one.

    Raises:
        ValueError: if an argument is outside the range given above.

    Example:
        >>> import torch
        >>> sampler = IoUBalancedNegativeSampler(4, 0.25, generator=torch.Generator().manual_seed(0))
        >>> labels = torch.tensor([1, 0, 0, 0, 0, 0, -1])
        >>> ious = torch.tensor([0.9, 0.05, 0.1, 0.2, 0.3, 0.45, 0.4])
        >>> pos, neg = sampler([labels], [ious])
        >>> pos[0].tolist(), int(neg[0].sum())
        ([1, 0, 0, 0, 0, 0, 0], 3)
    """

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        *,
        num_bins: int = 3,
        floor_thr: float = -1.0,
        floor_fraction: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if not _is_int(batch_size_per_image) or batch_size_per_image < 1:
            raise ValueError(f"batch_size_per_image must be an int >= 1, got {batch_size_per_image!r}")
        if not _is_real(positive_fraction) or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be a number in [0, 1], got {positive_fraction!r}")
        if not _is_int(num_bins) or num_bins < 1:
            raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")
        if not _is_real(floor_thr) or not math.isfinite(floor_thr) or floor_thr >= 1.0:
            raise ValueError(f"floor_thr must be finite and < 1 (negative: no floor set), got {floor_thr!r}")
        if not _is_real(floor_fraction) or not 0.0 <= floor_fraction <= 1.0:
            raise ValueError(f"floor_fraction must be a number in [0, 1], got {floor_fraction!r}")
        if floor_thr < 0 and floor_fraction > 0:
            raise ValueError(
                f"floor_fraction={floor_fraction!r} needs a floor set, but floor_thr={floor_thr!r} < 0 disables it; "
                "set floor_thr >= 0 or floor_fraction=0"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.num_bins = num_bins
        self.floor_thr = floor_thr
        self.floor_fraction = floor_fraction
        self.generator = generator

    def __call__(self, matched_idxs: list[Tensor], ious: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Choose the positive and negative RoIs of every image.

        Args:
            matched_idxs: per image, a 1-D integer tensor of labels: >= 1 positive, 0 negative, -1 ignored
                (torchvision passes the class labels under this name).
            ious: per image, a 1-D floating tensor of the same length: each proposal's largest IoU with
                any ground-truth box (0 for images without boxes).

        Returns:
            Two lists of ``uint8`` masks shaped like ``matched_idxs``: the sampled positives and the
            sampled negatives of each image.

        Raises:
            ValueError: if the lists differ in length or an image's tensors are not 1-D of equal length.
            TypeError: if an IoU tensor is not floating point.
        """
        if len(matched_idxs) != len(ious):
            raise ValueError(
                f"matched_idxs and ious must have one tensor per image, got {len(matched_idxs)} and {len(ious)}"
            )
        pos_masks: list[Tensor] = []
        neg_masks: list[Tensor] = []
        for image, (labels, iou) in enumerate(zip(matched_idxs, ious, strict=True)):
            if labels.dim() != 1 or iou.shape != labels.shape:
                raise ValueError(
                    f"image {image}: matched_idxs and ious must be 1-D of equal length, "
                    f"got shapes {tuple(labels.shape)} and {tuple(iou.shape)}"
                )
            if not iou.is_floating_point():
                raise TypeError(f"image {image}: ious must be a floating tensor, got {iou.dtype}")
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            chosen_pos = positive[self._permutation(positive.numel(), labels.device)[:num_pos]]
            chosen_neg = negative[self._sample_negatives(iou[negative], num_neg)]
            pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
            neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[chosen_pos] = 1
            neg_mask[chosen_neg] = 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks

    def group_of(self, ious: Tensor) -> Tensor:
        """Tell which set each negative is drawn from.

        Args:
            ious: 1-D floating tensor, the largest IoU of each negative proposal.

        Returns:
            An int64 tensor of ious's shape: 0 for the floor set, ``1 + k`` for IoU bin ``k``
            (``k = 0`` holds the lowest IoUs).
        """
        floor = ious <= self.floor_thr
        above = ious[~floor]
        low = max(self.floor_thr, 0.0)
        if above.numel() == 0:
            return torch.zeros_like(ious, dtype=torch.int64)
        # clamped after dividing, so a width is never subnormal: flushed to 0 it would give 0 / 0
        width = ((above.max() - low) / self.num_bins).clamp_min(torch.finfo(ious.dtype).tiny)
        bins = torch.div(ious - low, width, rounding_mode="floor").clamp(0, self.num_bins - 1).to(torch.int64)
        return torch.where(floor, 0, bins + 1)

    def quotas(self, num_negatives: int) -> list[int]:
        """Split the number of wanted negatives into the floor set's and each bin's share.

        Args:
            num_negatives: number of negatives to sample in one image.

        Returns:
            ``num_bins + 1`` counts summing to ``num_negatives``: the floor set's first, then the bins'
            from the lowest IoU to the highest.
        """
        num_floor = int(num_negatives * self.floor_fraction)
        per_bin, extra = divmod(num_negatives - num_floor, self.num_bins)
        return [num_floor] + [per_bin + (k >= self.num_bins - extra) for k in range(self.num_bins)]

    def _permutation(self, n: int, device: torch.device) -> Tensor:
        if self.generator is None:
            return torch.randperm(n, device=device)
        return torch.randperm(n, generator=self.generator, device=self.generator.device).to(device)

    def _sample_negatives(self, ious: Tensor, num: int) -> Tensor:
        """Positions in ``ious`` of ``num`` negatives: each set's quota, then a random top-up."""
        n = ious.numel()
        if n == 0 or num == 0:
            return torch.zeros(0, dtype=torch.int64, device=ious.device)
        groups = self.group_of(ious)
        quota = torch.tensor(self.quotas(num), device=ious.device)
        shuffled = self._permutation(n, ious.device)
        grouped = shuffled[torch.argsort(groups[shuffled], stable=True)]
        counts = torch.bincount(groups, minlength=self.num_bins + 1)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n, device=ious.device) - first[groups[grouped]]
        chosen = torch.zeros(n, dtype=torch.bool, device=ious.device)
        chosen[grouped[rank < quota[groups[grouped]]]] = True
        missing = num - int(chosen.sum())
        if missing > 0:
            rest = torch.where(~chosen)[0]
            chosen[rest[self._permutation(rest.numel(), ious.device)[:missing]]] = True
        return torch.where(chosen)[0]


class _IoUBalancedRoIHeads(RoIHeads):
    """RoIHeads mixin: one IoU matrix per image feeds both the matcher and the IoU-balanced sampler."""

    mixin_label = "IoUBalancedSampling"
    fg_bg_sampler: IoUBalancedNegativeSampler

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
        pos_masks, neg_masks = self.fg_bg_sampler(labels, max_ious)
        matched_gt_boxes = []
        for i, (pos, neg) in enumerate(zip(pos_masks, neg_masks, strict=True)):
            keep = torch.where(pos | neg)[0]
            proposals[i], labels[i], matched_idxs[i] = proposals[i][keep], labels[i][keep], matched_idxs[i][keep]
            gt = gt_boxes[i] if gt_boxes[i].numel() > 0 else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(gt[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets


def use_iou_balanced_sampling(
    model: nn.Module,
    *,
    num_bins: int = 3,
    floor_thr: float = -1.0,
    floor_fraction: float = 0.0,
    batch_size_per_image: int | None = None,
    positive_fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Make a torchvision two-stage detector sample its RoI-head negatives IoU-balanced, in place.

    ``model.roi_heads.fg_bg_sampler`` becomes an :class:`IoUBalancedNegativeSampler` and the RoI head's
    class becomes a subclass that keeps the maximum IoU of each proposal from its single IoU matrix
    per image (computed with ``roi_heads.box_similarity``) and hands it to the sampler. Composes with
    ``use_balanced_l1``; calling it again replaces the sampler. Inference is unchanged.

    Args:
        model: a torchvision ``FasterRCNN`` / ``MaskRCNN`` / ``KeypointRCNN`` (anything with a
            ``RoIHeads`` at ``model.roi_heads``).
        num_bins: number of IoU intervals, >= 1.
        floor_thr: IoU at or below which a negative belongs to the floor set; negative: no floor set.
        floor_fraction: fraction of the negatives drawn at random from the floor set, in [0, 1].
        batch_size_per_image: RoIs sampled per image; ``None`` keeps the model's current value.
        positive_fraction: largest fraction of positives; ``None`` keeps the model's current value.
        generator: random number generator for reproducible sampling; ``None`` uses torch's global one.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: if ``model.roi_heads`` is missing or not a torchvision ``RoIHeads``.
        ValueError: if a sampling argument is out of range (see :class:`IoUBalancedNegativeSampler`).
    """
    roi_heads = getattr(model, "roi_heads", None)
    if not isinstance(roi_heads, RoIHeads):
        raise TypeError(
            f"model.roi_heads must be a torchvision RoIHeads (a two-stage detector), got {type(roi_heads).__name__}"
        )
    current = roi_heads.fg_bg_sampler
    roi_heads.fg_bg_sampler = IoUBalancedNegativeSampler(
        current.batch_size_per_image if batch_size_per_image is None else batch_size_per_image,
        current.positive_fraction if positive_fraction is None else positive_fraction,
        num_bins=num_bins,
        floor_thr=floor_thr,
        floor_fraction=floor_fraction,
        generator=generator,
    )
    roi_heads.__class__ = _with_mixin(type(roi_heads), _IoUBalancedRoIHeads)
    return model
