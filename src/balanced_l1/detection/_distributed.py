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


def normalise(total: Tensor, count: int) -> Tensor:
    """Divide ``total`` by ``max(count, 1)``, the count summed over ranks in distributed runs.

    Outside a distributed run with more than one process this is ``total / max(count, 1)``. Inside
    one, the count is all-reduced as a detached tensor on ``total``'s device (no host
    synchronisation, nothing for autograd to track) and the result is scaled by the world size.
    Every rank must call this the same number of times, in the same order.

    Args:
        total: the summed (unnormalised) loss of this rank's items, a scalar tensor.
        count: how many items this rank contributed to the normaliser.

    Returns:
        ``total * world_size / max(count_global, 1)``.

    Example:
        >>> normalise(torch.tensor(6.0), 4)
        tensor(1.5000)
    """
    world_size = _world_size()
    if world_size == 1:
        return total / max(count, 1)
    dtype = torch.promote_types(total.dtype, torch.float32)
    count_global = torch.tensor(float(count), dtype=dtype, device=total.device)
    dist.all_reduce(count_global, op=dist.ReduceOp.SUM)
    return total * world_size / count_global.clamp_min(1.0)
