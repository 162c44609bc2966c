"""The learning-rate schedule: a linear warm-up, then cosine decay or steps.

The factor is a pure function of the iteration, so it needs no state in a checkpoint and is the same
in every process and after ``--resume``. The warm-up multiplies the schedule after it, as
mmdetection's ``LinearLR`` + ``MultiStepLR`` pair does: at iteration ``i < warmup_iters`` the factor
is ``(warmup_factor + (1 - warmup_factor) * i / warmup_iters) * schedule(i)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

COSINE_FINAL_FACTOR = 0.05
STEP_FACTOR = 0.1


def lr_factor(
    iteration: int,
    *,
    iters: int,
    warmup_iters: int,
    warmup_factor: float = 0.001,
    schedule: str = "cosine",
    steps: Sequence[int] = (),
) -> float:
    """The multiplier of the peak learning rate at ``iteration``.

    Args:
        iteration: the iteration about to be trained (0-based).
        iters: total iterations of the run.
        warmup_iters: length of the linear warm-up.
        warmup_factor: the factor at iteration 0.
        schedule: ``"cosine"`` (from 1 after the warm-up down to 0.05 at the end) or ``"step"`` (times 0.1
            from each iteration in ``steps`` on).
        steps: the iterations where a step schedule drops, increasing.

    Returns:
        The factor.

    Raises:
        ValueError: for an unknown schedule.

    Example:
        >>> lr_factor(0, iters=100, warmup_iters=10), lr_factor(100, iters=100, warmup_iters=10)
        (0.001, 0.05)
        >>> round(lr_factor(60, iters=100, warmup_iters=0, schedule="step", steps=(50, 80)), 6)
        0.1
    """
    if schedule == "cosine":
        progress = min(1.0, max(0, iteration - warmup_iters) / max(1, iters - warmup_iters))
        factor = COSINE_FINAL_FACTOR + (1.0 - COSINE_FINAL_FACTOR) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step":
        factor = STEP_FACTOR ** sum(1 for step in steps if iteration >= step)
    else:
        raise ValueError(f"schedule must be 'cosine' or 'step', got {schedule!r}")
    if iteration < warmup_iters:
        factor *= warmup_factor + (1.0 - warmup_factor) * iteration / warmup_iters
    return factor
