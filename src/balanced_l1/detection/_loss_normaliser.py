"""Loss normalisers that agree across data-parallel ranks.

A detection loss is a sum over sampled items divided by a count (sampled RoIs, sampled anchors,
images). Under data parallelism each rank sees its own share of the global batch and the counts
differ between ranks; ``DistributedDataParallel`` then averages the gradients over ranks. Dividing
each rank's sum by its own count would weight the items of a rank that drew few samples more than
those of a rank that drew many. Dividing by the global count and multiplying by the world size,

    loss_local = sum_local * world_size / count_global,

makes the averaged gradient equal to the single-process gradient of ``sum_global / count_global``
on the concatenated batch, and the mean over ranks of ``loss_local`` equal to that loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _world_size() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def normaliser(count: int, like: Tensor) -> float | Tensor:
    """Return the factor that turns a rank's summed loss into its share of the global mean.

    Outside a distributed run with more than one process this is ``1 / max(count, 1)``. Inside
    one, the count is all-reduced as a detached tensor on ``like``'s device (no host
    synchronisation, nothing for autograd to track) and the factor is
    ``world_size / max(count_global, 1)``. Every rank must call this the same number of times, in
    the same order.

    Args:
        count: how many items this rank contributed to the normaliser.
        like: a tensor on the device (and of the floating dtype, at least float32) to reduce on.

    Returns:
        A Python float outside distributed runs, else a 0-dim tensor.

    Example:
        >>> torch.tensor(6.0) * normaliser(4, torch.tensor(0.0))
        tensor(1.5000)
    """
    world_size = _world_size()
    if world_size == 1:
        return 1.0 / max(count, 1)
    dtype = torch.promote_types(like.dtype, torch.float32)
    count_global = torch.tensor(float(count), dtype=dtype, device=like.device)
    dist.all_reduce(count_global, op=dist.ReduceOp.SUM)
    return world_size / count_global.clamp_min(1.0)
