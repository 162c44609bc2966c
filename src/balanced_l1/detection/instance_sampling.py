"""Instance-balanced sampling of positive RoIs, as mmdetection's Libra R-CNN config samples its RoI head.

Random sampling of positives favours large objects, which overlap many more proposals than small ones.
Instance-balanced sampling gives every ground-truth instance an equal share of the positive slots:
``int(round(num / instances) + 1)`` each (Python's ``round``, halves to even), drawn at random among
the proposals matched to it. If that leaves slots empty they are filled at random from the positives
not yet chosen; if it overfills them a random subset of the chosen ones is kept. This is the rule of
mmdetection 3.3's ``InstanceBalancedPosSampler``.

* :func:`instance_balanced_positives` is the rule on one image;
* :class:`InstanceBalancedPositiveSampler` is torchvision's ``BalancedPositiveNegativeSampler`` with
  instance-balanced positives (negatives stay uniformly random);
* ``IoUBalancedNegativeSampler(positive_sampling="instance_balanced")`` pairs it with IoU-balanced
  negatives, as mmdetection's Libra config does;
* :func:`use_instance_balanced_sampling` switches a torchvision R-CNN's RoI head to it.
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


def instance_balanced_positives(gt_indices: Tensor, num: int, generator: torch.Generator | None = None) -> Tensor:
    """Choose ``num`` positives of one image with an equal share per ground-truth instance.

    Args:
        gt_indices: 1-D integer tensor, the ground-truth instance each positive is matched to.
        num: how many to choose, >= 0.
        generator: random number generator for reproducible draws; ``None`` uses torch's global one.

    Returns:
        A bool mask shaped like ``gt_indices`` with ``min(num, len(gt_indices))`` elements set.

    Example:
        >>> import torch
        >>> gt = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
        >>> mask = instance_balanced_positives(gt, 4, torch.Generator().manual_seed(0))
        >>> torch.bincount(gt[mask], minlength=3).tolist()
        [2, 1, 1]
    """
    n = gt_indices.numel()
    if n <= num:
        return torch.ones(n, dtype=torch.bool, device=gt_indices.device)
    instances, group = torch.unique(gt_indices, return_inverse=True)
    per_instance = int(round(num / instances.numel()) + 1)
    quotas = torch.full((instances.numel(),), per_instance, dtype=torch.int64, device=gt_indices.device)
    chosen = take_per_group(group.to(torch.int64), quotas, generator)
    taken = int(chosen.sum())
    if taken < num:
        top_up(chosen, torch.ones_like(chosen), num - taken, generator)
    elif taken > num:
        kept = torch.where(chosen)[0]
        chosen[:] = False
        chosen[kept[permutation(kept.numel(), chosen.device, generator)[:num]]] = True
    return chosen


class InstanceBalancedPositiveSampler:
    """Sample a fixed number of RoIs per image, sharing the positive slots equally among the instances.

    ``int(batch_size_per_image * positive_fraction)`` positives at most, chosen with
    :func:`instance_balanced_positives`; the rest of the batch is negatives (label 0) chosen uniformly at
    random, all of them when there are not enough, as torchvision's ``BalancedPositiveNegativeSampler``
    does. Labels of -1 are never sampled.

    Args:
        batch_size_per_image: number of RoIs to sample per image, >= 1.
        positive_fraction: largest fraction of the batch taken by positives, in [0, 1].
        generator: random number generator for reproducible draws; ``None`` uses torch's global one.

    Raises:
        TypeError: if a number is not one (``bool`` and strings are not; NumPy scalars are), or a count
            not an integer.
        ValueError: if an argument is outside the range given above.

    Example:
        >>> import torch
        >>> sampler = InstanceBalancedPositiveSampler(6, 0.5, generator=torch.Generator().manual_seed(0))
        >>> labels = torch.tensor([1, 1, 1, 1, 1, 2, 0, 0, 0, 0])
        >>> gt = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
        >>> pos, neg = sampler([labels], [gt])
        >>> int(pos[0].sum()), int(pos[0][5]), int(neg[0].sum())
        (3, 1, 3)
    """

    def __init__(
        self, batch_size_per_image: int, positive_fraction: float, *, generator: torch.Generator | None = None
    ) -> None:
        batch_size_per_image, positive_fraction = check_batch(batch_size_per_image, positive_fraction)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.generator = check_generator(generator)

    def __call__(self, matched_idxs: list[Tensor], gt_indices: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Choose the positive and negative RoIs of every image.

        Args:
            matched_idxs: per image, a 1-D integer tensor of labels: >= 1 positive, 0 negative, -1 ignored
                (torchvision passes the class labels under this name).
            gt_indices: per image, a 1-D integer tensor of the same length: the ground-truth instance each
                proposal is matched to (read for positives only).

        Returns:
            Two lists of ``uint8`` masks shaped like ``matched_idxs``: the sampled positives and negatives.

        Raises:
            ValueError: if the lists differ in length or an image's tensors are not 1-D of equal length.
        """
        if len(matched_idxs) != len(gt_indices):
            raise ValueError(
                f"matched_idxs and gt_indices must have one tensor per image, "
                f"got {len(matched_idxs)} and {len(gt_indices)}"
            )
        pos_masks: list[Tensor] = []
        neg_masks: list[Tensor] = []
        for image, (labels, gt) in enumerate(zip(matched_idxs, gt_indices, strict=True)):
            check_image(image, labels, gt, "gt_indices")
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            chosen_pos = positive[instance_balanced_positives(gt[positive], num_pos, self.generator)]
            chosen_neg = negative[permutation(negative.numel(), labels.device, self.generator)[:num_neg]]
            pos_mask, neg_mask = sampled_masks(labels, chosen_pos, chosen_neg)
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks

    def sample(
        self, labels: list[Tensor], ious: list[Tensor], gt_indices: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The RoI head's entry point: ``self(labels, gt_indices)``; ``ious`` is not needed."""
        return self(labels, gt_indices)


def use_instance_balanced_sampling(
    model: nn.Module,
    *,
    batch_size_per_image: int | None = None,
    positive_fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Make a torchvision two-stage detector sample its RoI-head positives instance-balanced, in place.

    ``model.roi_heads.fg_bg_sampler`` becomes an :class:`InstanceBalancedPositiveSampler` and the RoI
    head hands it each proposal's matched ground-truth index. Negatives stay uniformly random; for
    IoU-balanced negatives as well use ``use_iou_balanced_sampling(model, positive_sampling="instance_balanced")``.
    Calling it again replaces the sampler. Inference, weights and ``state_dict`` are unchanged.

    Args:
        model: a torchvision ``FasterRCNN`` / ``MaskRCNN`` / ``KeypointRCNN``.
        batch_size_per_image: RoIs sampled per image; ``None`` keeps the model's current value.
        positive_fraction: largest fraction of positives; ``None`` keeps the model's current value.
        generator: random number generator for reproducible sampling; ``None`` uses torch's global one.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: if ``model.roi_heads`` is missing or not a torchvision ``RoIHeads``.
        ValueError: if a sampling argument is out of range.
    """

    def build(batch: int, fraction: float) -> InstanceBalancedPositiveSampler:
        return InstanceBalancedPositiveSampler(batch, fraction, generator=generator)

    return switch_roi_sampler(model, build, batch_size_per_image, positive_fraction)
