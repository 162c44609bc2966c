"""The RPN's ``neg_pos_ub`` of mmdetection's Libra R-CNN config: at most so many negatives per positive anchor.

mmdetection's ``RandomSampler(neg_pos_ub=5)`` draws positives as usual and then at most
``int(neg_pos_ub * max(1, positives drawn))`` negatives, so an image with few positive anchors trains its
objectness on few negatives rather than on a batch of background. torchvision's RPN calls
``self.fg_bg_sampler(labels)``; :func:`use_rpn_negative_cap` replaces that one sampler object of one
model with a :class:`NegativeCappedSampler` (weights, ``state_dict``, ``deepcopy`` and pickling are
unchanged, and no class or function of torchvision is touched).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.rpn import RegionProposalNetwork

from balanced_l1.detection._random_draws import check_batch, check_generator, permutation, sampled_masks
from balanced_l1.params import check_number


class NegativeCappedSampler(BalancedPositiveNegativeSampler):
    """torchvision's ``BalancedPositiveNegativeSampler`` with at most ``neg_pos_ub`` negatives per positive.

    Per image: ``min(positives, int(batch_size_per_image * positive_fraction))`` positives and
    ``min(negatives, batch_size_per_image - drawn positives, neg_pos_ub * max(1, drawn positives))``
    negatives, each uniformly at random. Labels of -1 are never sampled.

    Args:
        batch_size_per_image: number of anchors to sample per image, >= 1.
        positive_fraction: largest fraction of the batch taken by positives, in [0, 1].
        neg_pos_ub: largest number of negatives per drawn positive (an image without positives counts
            as one), an int >= 0.
        generator: random number generator for reproducible draws; ``None`` uses torch's global one.

    Raises:
        TypeError: if a number is not one (``bool`` and strings are not; NumPy scalars are), or a count
            not an integer.
        ValueError: if an argument is outside the range given above.

    Example:
        >>> import torch
        >>> sampler = NegativeCappedSampler(256, 0.5, neg_pos_ub=5, generator=torch.Generator().manual_seed(0))
        >>> labels = torch.tensor([1, 1] + [0] * 100 + [-1] * 3)
        >>> pos, neg = sampler([labels])
        >>> int(pos[0].sum()), int(neg[0].sum())
        (2, 10)
    """

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        *,
        neg_pos_ub: int = 5,
        generator: torch.Generator | None = None,
    ) -> None:
        batch_size_per_image, positive_fraction = check_batch(batch_size_per_image, positive_fraction)
        neg_pos_ub = check_number("neg_pos_ub (negatives per positive)", neg_pos_ub, minimum=0, integer=True)
        super().__init__(batch_size_per_image, positive_fraction)
        self.neg_pos_ub = neg_pos_ub
        self.generator = check_generator(generator)

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Choose the positive and negative anchors of every image.

        Args:
            matched_idxs: per image, a 1-D tensor of labels: >= 1 positive, 0 negative, -1 ignored.

        Returns:
            Two lists of ``uint8`` masks shaped like ``matched_idxs``: the sampled positives and negatives.
        """
        pos_masks: list[Tensor] = []
        neg_masks: list[Tensor] = []
        for labels in matched_idxs:
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos, self.neg_pos_ub * max(1, num_pos))
            chosen_pos = positive[permutation(positive.numel(), labels.device, self.generator)[:num_pos]]
            chosen_neg = negative[permutation(negative.numel(), labels.device, self.generator)[:num_neg]]
            pos_mask, neg_mask = sampled_masks(labels, chosen_pos, chosen_neg)
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


def use_rpn_negative_cap(
    model: nn.Module, *, neg_pos_ub: int = 5, generator: torch.Generator | None = None
) -> nn.Module:
    """Cap the negatives a torchvision RPN samples per image at ``neg_pos_ub`` per positive, in place.

    ``model.rpn.fg_bg_sampler`` becomes a :class:`NegativeCappedSampler` with the same batch size and
    positive fraction; calling it again replaces it. Composes with ``use_balanced_l1``.

    Args:
        model: a torchvision two-stage detector (``model.rpn`` a ``RegionProposalNetwork``).
        neg_pos_ub: largest number of negatives per positive anchor (mmdetection's Libra config: 5).
        generator: random number generator for reproducible sampling; ``None`` uses torch's global one.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: if ``model.rpn`` is missing or not a torchvision ``RegionProposalNetwork``.
        TypeError: if ``neg_pos_ub`` is not an integer.
        ValueError: if ``neg_pos_ub`` is negative.
    """
    rpn = getattr(model, "rpn", None)
    if not isinstance(rpn, RegionProposalNetwork):
        raise TypeError(f"model.rpn must be a torchvision RegionProposalNetwork, got {type(rpn).__name__}")
    current = rpn.fg_bg_sampler
    rpn.fg_bg_sampler = NegativeCappedSampler(
        current.batch_size_per_image, current.positive_fraction, neg_pos_ub=neg_pos_ub, generator=generator
    )
    return model
