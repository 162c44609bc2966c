"""Random draws shared by the samplers: permutations under an optional generator, quotas per group, top-ups."""

from __future__ import annotations

import torch
from torch import Tensor

from balanced_l1.params import check_number


def check_generator(generator: object) -> torch.Generator | None:
    """Return ``generator`` if it is a ``torch.Generator`` or ``None``, else raise ``TypeError`` (a seed is not one)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {generator!r} of type {type(generator).__name__} "
            "(for a seed, pass torch.Generator().manual_seed(seed))"
        )
    return generator


def sampled_masks(labels: Tensor, chosen_pos: Tensor, chosen_neg: Tensor) -> tuple[Tensor, Tensor]:
    """The ``uint8`` positive and negative masks of one image, shaped like ``labels`` (as torchvision returns)."""
    pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
    neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
    pos_mask[chosen_pos] = 1
    neg_mask[chosen_neg] = 1
    return pos_mask, neg_mask


def permutation(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """A random permutation of ``range(n)`` on ``device``, drawn from ``generator`` (torch's global one if ``None``)."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def take_per_group(groups: Tensor, quotas: Tensor, generator: torch.Generator | None) -> Tensor:
    """Choose, uniformly at random within each group, at most ``quotas[g]`` members of every group ``g``.

    Args:
        groups: 1-D int64 tensor, the group of each element in ``[0, len(quotas))``, or -1 for no group.
        quotas: 1-D int64 tensor, the largest number to take from each group.
        generator: random number generator, or ``None`` for torch's global one.

    Returns:
        A bool mask shaped like ``groups``: ``min(quotas[g], size of g)`` elements of each group ``g``.
    """
    n = groups.numel()
    chosen = torch.zeros(n, dtype=torch.bool, device=groups.device)
    if n == 0:
        return chosen
    shuffled = permutation(n, groups.device, generator)
    # group -1 sorts first and is dropped below; shifting by one keeps bincount's input non-negative
    shifted = groups + 1
    grouped = shuffled[torch.argsort(shifted[shuffled], stable=True)]
    counts = torch.bincount(shifted, minlength=quotas.numel() + 1)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=groups.device) - first[shifted[grouped]]
    quota = torch.cat([quotas.new_zeros(1), quotas])[shifted[grouped]]
    chosen[grouped[rank < quota]] = True
    return chosen


def top_up(chosen: Tensor, eligible: Tensor, missing: int, generator: torch.Generator | None) -> None:
    """Add, in place, ``missing`` elements drawn uniformly from ``eligible & ~chosen`` (all of them if fewer).

    Args:
        chosen: 1-D bool mask, modified in place.
        eligible: 1-D bool mask of the same length: the elements a top-up may draw.
        missing: how many to add; nothing happens when it is <= 0.
        generator: random number generator, or ``None`` for torch's global one.
    """
    if missing <= 0:
        return
    rest = torch.where(eligible & ~chosen)[0]
    chosen[rest[permutation(rest.numel(), chosen.device, generator)[:missing]]] = True


def check_batch(batch_size_per_image: object, positive_fraction: object) -> tuple[int, float]:
    """The batch size (an integer >= 1) and the positive fraction (a number in [0, 1]), checked.

    Both go through :func:`balanced_l1.params.check_number`: NumPy scalars are accepted, ``bool`` is not.

    Raises:
        TypeError: if either is not a number (or the batch size not an integer).
        ValueError: if either is out of range or not finite.
    """
    return (
        check_number("batch_size_per_image", batch_size_per_image, minimum=1, integer=True),
        check_number("positive_fraction", positive_fraction, minimum=0.0, maximum=1.0),
    )


def check_image(image: int, labels: Tensor, other: Tensor, other_name: str) -> None:
    """Raise ``ValueError`` unless ``labels`` is 1-D and ``other`` has its shape."""
    if labels.dim() != 1 or other.shape != labels.shape:
        raise ValueError(
            f"image {image}: matched_idxs and {other_name} must be 1-D of equal length, "
            f"got shapes {tuple(labels.shape)} and {tuple(other.shape)}"
        )
