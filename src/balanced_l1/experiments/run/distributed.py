"""The process group of a ``torchrun`` launch, and what the training loop needs from it.

Started by ``torchrun --nproc_per_node N``, the environment holds ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup_distributed` then joins the group (``gloo`` on CPU, ``nccl`` on CUDA).
Started as one plain process, everything here is a no-op with rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: this process's rank, 0 when not distributed.
        world_size: number of processes, 1 when not distributed.
        device: the device this process trains on.
    """

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, writes files and shows progress bars (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group with more than one process is in use."""
        return self.world_size > 1


def setup_distributed(device: str) -> DistContext:
    """Join the ``torchrun`` process group if the environment describes one.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under ``torchrun`` with CUDA each process takes
            ``cuda:LOCAL_RANK``.

    Returns:
        This process's :class:`DistContext`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = torch.device(device)
    if world_size <= 1:
        return DistContext(0, 1, target)
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), target)


def teardown_distributed(ctx: DistContext) -> None:
    """Leave the process group joined by :func:`setup_distributed`, if any.

    Args:
        ctx: the context returned by :func:`setup_distributed`.
    """
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op when not distributed).

    Args:
        ctx: this process's context.
    """
    if ctx.distributed:
        dist.barrier()


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Collect one picklable object from every rank, in rank order (``[obj]`` when not distributed).

    Args:
        ctx: this process's context.
        obj: this rank's object.

    Returns:
        The objects of ranks ``0 .. world_size - 1``.
    """
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Average a detached tensor over ranks (the tensor itself when not distributed).

    Args:
        ctx: this process's context.
        values: a tensor on this rank's device.

    Returns:
        The element-wise mean over ranks.
    """
    if not ctx.distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / ctx.world_size
