"""IoU-balanced sampling of negative RoIs (Libra R-CNN, Pang et al., CVPR 2019, arXiv:1904.02701).

Random sampling of RoI-head negatives picks mostly easy background (IoU near 0 with every object), because
easy negatives vastly outnumber hard ones. IoU-balanced sampling splits the IoU range of the negatives
into ``num_bins`` equal intervals and asks each interval for the same number of samples, so hard
negatives (IoU close to the background threshold) are drawn as often as the paper's hard-example
statistics say they should be. This module gives:

* :class:`IoUBalancedNegativeSampler`, with the call convention of torchvision's
  ``BalancedPositiveNegativeSampler`` plus the maximum IoU of every proposal, in two modes:
  ``"paper"`` (the default) and ``"mmdet"`` (mmdetection 3.3's rule);
* ``use_iou_balanced_sampling(model)``, which switches a torchvision R-CNN's RoI head to it. The head then
  computes the proposal/ground-truth IoU matrix once per image, through ``roi_heads.box_similarity``,
  and passes its per-proposal maximum both to the matcher and to the sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from balanced_l1.detection._random_draws import (
    check_batch,
    check_generator,
    check_image,
    permutation,
    sampled_masks,
    take_per_group,
    top_up,
)
from balanced_l1.detection._roi_sampling import switch_roi_sampler
from balanced_l1.detection.instance_sampling import instance_balanced_positives
from balanced_l1.params import check_choice, check_number

MODES = ("paper", "mmdet")
POSITIVE_SAMPLING = ("random", "instance_balanced")


class IoUBalancedNegativeSampler:
    """Sample a fixed number of RoIs per image, drawing the negatives evenly over IoU bins.

    Positives (label >= 1) are drawn uniformly at random (``positive_sampling="random"``, as torchvision's
    ``BalancedPositiveNegativeSampler`` does) or instance-balanced (``"instance_balanced"``, see
    :func:`~balanced_l1.detection.instance_sampling.instance_balanced_positives`),
    ``int(batch_size_per_image * positive_fraction)`` at most; the rest of the batch is negatives
    (label 0), all of them when there are not enough. Labels of -1 are never sampled.

    ``mode="paper"`` (the default): negatives are split into a *floor* set, IoU <= ``floor_thr`` (empty
    when ``floor_thr < 0``), and the rest, which is cut into ``num_bins`` equal-width IoU intervals
    spanning ``[max(floor_thr, 0), max IoU of those negatives]`` (the last interval includes its right
    end). ``int(num_negatives * floor_fraction)`` negatives are drawn at random from the floor set, and
    the others are shared evenly by the bins (the remainder of the division goes one each to the
    highest-IoU bins). Each set gives what it is asked for or everything it has; whatever is still
    missing is drawn at random from the negatives not yet chosen. With ``floor_thr=-1`` every negative,
    IoU 0 included, is in a bin: the paper's "N negatives equally distributed to each bin".

    ``mode="mmdet"``: mmdetection 3.3's ``IoUBalancedNegSampler`` in its steady state (every call after
    its first, when it has set ``floor_thr=-1`` to 0). With ``f = max(floor_thr, 0)``: if there are no
    more negatives than wanted, all are taken. Otherwise the floor set is the negatives with IoU in
    ``[0, f)``, or IoU exactly 0 when ``f = 0``; the others (IoU >= ``f``, or > 0) get
    ``int(num_negatives * (1 - floor_fraction))`` slots. If they do not outnumber their slots they are
    all taken; else (``num_bins >= 2``) bins ``[f + i w, f + (i + 1) w)`` with ``w = (M - f) / num_bins``,
    ``M`` the largest IoU of *all* proposals (ground truth included, so usually 1), give
    ``int(slots / num_bins)`` each at random, and the missing slots are topped up at random from those
    negatives not yet chosen (``num_bins = 1``: a uniform draw). The floor set fills what is left, at
    random, and only then anything else. The first call of mmdetection's sampler (``floor_thr=-1``)
    differs: it puts the IoU-0 negatives into the lowest bin and the top-up instead of after them.

    Args:
        batch_size_per_image: number of RoIs to sample per image, >= 1.
        positive_fraction: largest fraction of the batch taken by positives, in [0, 1].
        num_bins: number of IoU intervals, >= 1 (1 means uniform random sampling above the floor).
        floor_thr: IoU at or below which a negative belongs to the floor set (``"mmdet"``: below, or
            exactly 0 for 0); negative: no floor set (``"mmdet"``: the same as 0, as in its steady state).
        floor_fraction: fraction of the negatives drawn from the floor set, in [0, 1]; must be 0 when
            ``floor_thr < 0``.
        mode: ``"paper"`` or ``"mmdet"``, see above.
        positive_sampling: ``"random"`` or ``"instance_balanced"``.
        generator: random number generator for reproducible draws; ``None`` uses torch's global one.

    Raises:
        TypeError: if a number is not one (``bool`` and strings are not; NumPy scalars are), a count
            not an integer, or ``generator`` neither a ``torch.Generator`` nor ``None``.
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
        mode: str = "paper",
        positive_sampling: str = "random",
        generator: torch.Generator | None = None,
    ) -> None:
        batch_size_per_image, positive_fraction = check_batch(batch_size_per_image, positive_fraction)
        num_bins = check_number("num_bins", num_bins, minimum=1, integer=True)
        floor_thr = check_number("floor_thr", floor_thr)
        if floor_thr >= 1.0:
            raise ValueError(f"floor_thr must be finite and < 1 (negative: no floor set), got {floor_thr!r}")
        floor_fraction = check_number("floor_fraction", floor_fraction, minimum=0.0, maximum=1.0)
        if floor_thr < 0 and floor_fraction > 0:
            raise ValueError(
                f"floor_fraction={floor_fraction!r} needs a floor set, but floor_thr={floor_thr!r} < 0 disables it; "
                "set floor_thr >= 0 or floor_fraction=0"
            )
        check_choice("mode", mode, MODES)
        check_choice("positive_sampling", positive_sampling, POSITIVE_SAMPLING)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.num_bins = num_bins
        self.floor_thr = floor_thr
        self.floor_fraction = floor_fraction
        self.mode = mode
        self.positive_sampling = positive_sampling
        self.generator = check_generator(generator)

    def __call__(
        self, matched_idxs: list[Tensor], ious: list[Tensor], gt_indices: list[Tensor] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Choose the positive and negative RoIs of every image.

        Args:
            matched_idxs: per image, a 1-D integer tensor of labels: >= 1 positive, 0 negative, -1 ignored
                (torchvision passes the class labels under this name).
            ious: per image, a 1-D floating tensor of the same length: each proposal's largest IoU with
                any ground-truth box (0 for images without boxes).
            gt_indices: per image, a 1-D integer tensor of the same length: the ground-truth instance each
                proposal is matched to; needed only with ``positive_sampling="instance_balanced"``.

        Returns:
            Two lists of ``uint8`` masks shaped like ``matched_idxs``: the sampled positives and the
                sampled negatives of each image.

        Raises:
            ValueError: if the lists differ in length, an image's tensors are not 1-D of equal length, an IoU
                is NaN or infinite, or ``gt_indices`` is missing with instance-balanced positives.
            TypeError: if an IoU tensor is not floating point.
        """
        if len(matched_idxs) != len(ious):
            raise ValueError(
                f"matched_idxs and ious must have one tensor per image, got {len(matched_idxs)} and {len(ious)}"
            )
        if self.positive_sampling == "instance_balanced":
            if gt_indices is None:
                raise ValueError("positive_sampling='instance_balanced' needs gt_indices, the instance of each RoI")
            if len(gt_indices) != len(matched_idxs):
                raise ValueError(
                    f"gt_indices must have one tensor per image ({len(matched_idxs)}), got {len(gt_indices)}"
                )
        pos_masks: list[Tensor] = []
        neg_masks: list[Tensor] = []
        for image, (labels, iou) in enumerate(zip(matched_idxs, ious, strict=True)):
            check_image(image, labels, iou, "ious")
            if not iou.is_floating_point():
                raise TypeError(f"image {image}: ious must be a floating tensor, got {iou.dtype}")
            bad = ~torch.isfinite(iou)
            if bool(bad.any()):
                first = int(torch.where(bad)[0][0])
                raise ValueError(
                    f"image {image}: ious must be finite (an IoU lies in [0, 1]), got {float(iou[first])} at "
                    f"proposal {first} ({int(bad.sum())} of {iou.numel()} not finite)"
                )
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            if gt_indices is not None and self.positive_sampling == "instance_balanced":
                check_image(image, labels, gt_indices[image], "gt_indices")
                chosen_pos = positive[instance_balanced_positives(gt_indices[image][positive], num_pos, self.generator)]
            else:
                chosen_pos = positive[permutation(positive.numel(), labels.device, self.generator)[:num_pos]]
            if self.mode == "mmdet":
                max_iou = iou.max() if iou.numel() > 0 else iou.new_zeros(())
                chosen_neg = negative[self._sample_negatives_mmdet(iou[negative], max_iou, num_neg)]
            else:
                chosen_neg = negative[self._sample_negatives(iou[negative], num_neg)]
            pos_mask, neg_mask = sampled_masks(labels, chosen_pos, chosen_neg)
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks

    def sample(
        self, labels: list[Tensor], ious: list[Tensor], gt_indices: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The RoI head's entry point: ``self(labels, ious, gt_indices)``."""
        return self(labels, ious, gt_indices)

    def group_of(self, ious: Tensor) -> Tensor:
        """Tell which set each negative is drawn from in ``mode="paper"``.

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

    def mmdet_group_of(self, ious: Tensor, max_iou: Tensor | float) -> Tensor:
        """Tell which set each negative is drawn from in ``mode="mmdet"``.

        Args:
            ious: 1-D floating tensor, the largest IoU of each negative proposal.
            max_iou: the largest IoU of all the image's proposals (positives and ground truth included).

        Returns:
            An int64 tensor of ious's shape: -1 for the floor set, ``k`` for IoU bin ``k`` (lowest first),
                ``num_bins`` for the negatives above the floor that fall in no bin (IoU >= ``max_iou``).
        """
        low = max(self.floor_thr, 0.0)
        above = ious > 0 if low == 0 else ious >= low
        width = (torch.as_tensor(max_iou, dtype=ious.dtype, device=ious.device) - low) / self.num_bins
        groups = torch.where(above, self.num_bins, -1)
        for k in range(self.num_bins):
            groups[above & (ious >= low + k * width) & (ious < low + (k + 1) * width)] = k
        return groups.to(torch.int64)

    def quotas(self, num_negatives: int) -> list[int]:
        """Split the number of wanted negatives into the floor set's and each bin's share (``mode="paper"``).

        Args:
            num_negatives: number of negatives to sample in one image.

        Returns:
            ``num_bins + 1`` counts summing to ``num_negatives``: the floor set's first, then the bins'
                from the lowest IoU to the highest.
        """
        num_floor = int(num_negatives * self.floor_fraction)
        per_bin, extra = divmod(num_negatives - num_floor, self.num_bins)
        return [num_floor] + [per_bin + (k >= self.num_bins - extra) for k in range(self.num_bins)]

    def _sample_negatives(self, ious: Tensor, num: int) -> Tensor:
        """Positions in ``ious`` of ``num`` negatives: each set's quota, then a random top-up."""
        if ious.numel() == 0 or num == 0:
            return torch.zeros(0, dtype=torch.int64, device=ious.device)
        quota = torch.tensor(self.quotas(num), device=ious.device)
        chosen = take_per_group(self.group_of(ious), quota, self.generator)
        top_up(chosen, torch.ones_like(chosen), num - int(chosen.sum()), self.generator)
        return torch.where(chosen)[0]

    def _sample_negatives_mmdet(self, ious: Tensor, max_iou: Tensor, num: int) -> Tensor:
        """Positions in ``ious`` of ``num`` negatives by mmdetection 3.3's steady-state rule."""
        if ious.numel() <= num:
            return torch.arange(ious.numel(), device=ious.device)
        groups = self.mmdet_group_of(ious, max_iou)
        above = groups >= 0
        slots = int(num * (1 - self.floor_fraction))
        if int(above.sum()) <= slots:
            chosen = above.clone()
        elif self.num_bins >= 2:
            per_bin = torch.full((self.num_bins,), int(slots / self.num_bins), device=ious.device)
            chosen = take_per_group(torch.where(groups < self.num_bins, groups, -1), per_bin, self.generator)
            top_up(chosen, above, slots - int(chosen.sum()), self.generator)
        else:
            chosen = torch.zeros_like(above)
            top_up(chosen, above, slots, self.generator)
        top_up(chosen, ~above & (ious >= 0), num - int(chosen.sum()), self.generator)
        top_up(chosen, torch.ones_like(chosen), num - int(chosen.sum()), self.generator)
        return torch.where(chosen)[0]


def use_iou_balanced_sampling(
    model: nn.Module,
    *,
    num_bins: int = 3,
    floor_thr: float = -1.0,
    floor_fraction: float = 0.0,
    mode: str = "paper",
    positive_sampling: str = "random",
    batch_size_per_image: int | None = None,
    positive_fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Make a torchvision two-stage detector sample its RoI-head negatives IoU-balanced, in place.

    ``model.roi_heads.fg_bg_sampler`` becomes an :class:`IoUBalancedNegativeSampler` and the RoI head's
    class becomes a subclass that keeps the maximum IoU of each proposal from its single IoU matrix
    per image (computed with ``roi_heads.box_similarity``) and hands it, with each proposal's matched
    ground-truth index, to the sampler. Composes with ``use_balanced_l1``; calling it again replaces
    the sampler. Inference is unchanged.

    Args:
        model: a torchvision ``FasterRCNN`` / ``MaskRCNN`` / ``KeypointRCNN`` (anything with a
            ``RoIHeads`` at ``model.roi_heads``).
        num_bins: number of IoU intervals, >= 1.
        floor_thr: see :class:`IoUBalancedNegativeSampler`.
        floor_fraction: fraction of the negatives drawn at random from the floor set, in [0, 1].
        mode: ``"paper"`` (default) or ``"mmdet"`` (mmdetection 3.3's steady-state rule).
        positive_sampling: ``"random"`` (default, torchvision's) or ``"instance_balanced"`` (mmdetection's
            Libra config).
        batch_size_per_image: RoIs sampled per image; ``None`` keeps the model's current value.
        positive_fraction: largest fraction of positives; ``None`` keeps the model's current value.
        generator: random number generator for reproducible sampling; ``None`` uses torch's global one.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: if ``model.roi_heads`` is missing or not a torchvision ``RoIHeads``.
        ValueError: if a sampling argument is out of range (see :class:`IoUBalancedNegativeSampler`).
    """

    def build(batch: int, fraction: float) -> IoUBalancedNegativeSampler:
        return IoUBalancedNegativeSampler(
            batch,
            fraction,
            num_bins=num_bins,
            floor_thr=floor_thr,
            floor_fraction=floor_fraction,
            mode=mode,
            positive_sampling=positive_sampling,
            generator=generator,
        )

    return switch_roi_sampler(model, build, batch_size_per_image, positive_fraction)
