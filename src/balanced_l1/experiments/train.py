"""The training loop: a fixed data order per seed, DDP sharding of each global batch, checkpoint and resume.

Data order: iteration ``i`` trains on positions ``i * B .. (i + 1) * B - 1`` of an endless stream in which
epoch ``e`` is the permutation ``default_rng([seed, e])`` of the training images, so the order depends only
on the seed and the position is just the iteration. Under ``torchrun`` rank ``r`` of ``W`` takes every
``W``-th image of the global batch starting at ``r`` (as ``DistributedSampler`` does), so the global batch is
the same as in a one-process run.

Checkpoints (written atomically, by rank 0) hold the model, optimizer, LR scheduler, every rank's torch,
NumPy and Python RNG states (torchvision's fg/bg samplers draw from torch's global RNG), the iteration
and the loss history; resuming from one continues exactly where the run stopped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from balanced_l1._files import write_atomically
from balanced_l1.experiments.coco_data import DetectionDataset
from balanced_l1.experiments.distributed import DistContext, barrier, gather_objects, mean_over_ranks

CHECKPOINT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a run with different settings than the one asked to resume it."""


class TrainingDivergedError(RuntimeError):
    """The training loss stopped being finite."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run.

    Attributes:
        iters: number of iterations (global batches).
        batch_size: images per global batch (split over ranks under ``torchrun``).
        lr: peak learning rate of SGD with momentum 0.9.
        weight_decay: L2 weight decay.
        warmup_iters: linear warm-up length; then cosine decay to 5% of ``lr``.
        grad_clip: maximum global gradient norm.
        checkpoint_every: iterations between checkpoints.
    """

    iters: int
    batch_size: int
    lr: float = 0.04
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    grad_clip: float = 10.0
    checkpoint_every: int = 20


def lr_factor(iteration: int, *, iters: int, warmup_iters: int) -> float:
    """Learning-rate multiplier: linear warm-up from 0.1%, then cosine decay from 1 to 0.05.

    Args:
        iteration: the scheduler's step count.
        iters: total iterations.
        warmup_iters: warm-up length.

    Returns:
        The factor applied to the peak learning rate.

    Example:
        >>> lr_factor(0, iters=100, warmup_iters=10), lr_factor(100, iters=100, warmup_iters=10)
        (0.001, 0.05)
    """
    if iteration < warmup_iters:
        return 0.001 + (1.0 - 0.001) * iteration / warmup_iters
    progress = min(1.0, (iteration - warmup_iters) / max(1, iters - warmup_iters))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def global_batch(seed: int, iteration: int, batch_size: int, num_images: int) -> list[int]:
    """The image indices of global batch ``iteration`` in the seed's data order.

    Args:
        seed: the run's seed.
        iteration: the iteration (0-based).
        batch_size: images per global batch.
        num_images: size of the training set.

    Returns:
        ``batch_size`` indices into the training set.

    Example:
        >>> global_batch(0, 3, 4, 10) == global_batch(0, 3, 4, 10)
        True
    """
    indices = []
    permutations: dict[int, np.ndarray] = {}
    for position in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, offset = divmod(position, num_images)
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(num_images)
        indices.append(int(permutations[epoch][offset]))
    return indices


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def load_checkpoint(path: Path, fingerprint: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train` and check it belongs to this run.

    Args:
        path: the checkpoint file.
        fingerprint: the settings of the run that wants to resume.
        world_size: the number of processes of the run that wants to resume.

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointMismatchError: if it was written with other settings or another number of processes.
    """
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("fingerprint") != fingerprint:
        raise CheckpointMismatchError(
            f"{path}: written by a run with other settings ({ckpt.get('fingerprint')}); this run has {fingerprint}. "
            "Use another --out or run without --resume to start over."
        )
    if len(ckpt["rng"]) != world_size:
        raise CheckpointMismatchError(
            f"{path}: written by {len(ckpt['rng'])} process(es); resume it with the same number, not {world_size}"
        )
    return ckpt


def train(
    model: nn.Module,
    dataset: DetectionDataset,
    config: TrainConfig,
    *,
    seed: int,
    ctx: DistContext,
    checkpoint_path: Path,
    fingerprint: dict[str, Any],
    resume: bool,
    desc: str,
) -> list[dict[str, float]]:
    """Train ``model`` in place, checkpointing every ``config.checkpoint_every`` iterations and at the end.

    Args:
        model: a torchvision detector in training mode on ``ctx.device``.
        dataset: the training images.
        config: the optimisation settings.
        seed: the run's seed (data order and the per-rank RNG streams).
        ctx: this process's place in the job.
        checkpoint_path: where rank 0 writes the checkpoint.
        fingerprint: the run's settings, stored in the checkpoint and checked on resume.
        resume: continue from ``checkpoint_path`` if it exists.
        desc: label of the progress bar.

    Returns:
        The loss history: one ``{"loss": total, <component>: value, ...}`` per iteration, averaged over ranks.

    Raises:
        TrainingDivergedError: if the loss becomes NaN or infinite.
        CheckpointMismatchError: if the checkpoint to resume belongs to another run.
    """
    ddp: nn.Module = DistributedDataParallel(model) if ctx.distributed else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    factor: Callable[[int], float] = partial(lr_factor, iters=config.iters, warmup_iters=config.warmup_iters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    fingerprint = {**fingerprint, "train": asdict(config), "seed": seed}
    history: list[dict[str, float]] = []
    start = 0
    if resume and checkpoint_path.exists():
        ckpt = load_checkpoint(checkpoint_path, fingerprint, ctx.world_size)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"][ctx.rank])
        history, start = ckpt["history"], ckpt["iteration"]
    else:
        torch.manual_seed(seed * 1000 + ctx.rank)
        np.random.seed(seed * 1000 + ctx.rank)
        random.seed(seed * 1000 + ctx.rank)

    def checkpoint(iteration: int) -> None:
        states = gather_objects(ctx, _rng_state())
        if ctx.is_main:
            state = {
                "version": CHECKPOINT_VERSION,
                "fingerprint": fingerprint,
                "iteration": iteration,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": states,
                "history": history,
            }
            write_atomically(checkpoint_path, partial(torch.save, state), owner_only=True)
        barrier(ctx)

    model.train()
    bar = tqdm(total=config.iters, initial=start, desc=desc, disable=not ctx.is_main, leave=True, dynamic_ncols=True)
    for iteration in range(start, config.iters):
        shard = global_batch(seed, iteration, config.batch_size, len(dataset))[ctx.rank :: ctx.world_size]
        samples = [dataset[i] for i in shard]
        images = [image.to(ctx.device).float().div_(255.0) for image, _ in samples]
        targets = [{k: v.to(ctx.device) for k, v in target.items()} for _, target in samples]
        losses = ddp(images, targets)
        total: torch.Tensor = torch.stack(list(losses.values())).sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        names = ["loss", *sorted(losses)]
        values = torch.stack([total.detach(), *(losses[n].detach() for n in names[1:])]).float()
        record = dict(zip(names, mean_over_ranks(ctx, values).cpu().tolist(), strict=True))
        if not math.isfinite(record["loss"]):
            raise TrainingDivergedError(f"{desc}: loss became {record['loss']} at iteration {iteration}; lower --lr")
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        done = iteration + 1
        if done % config.checkpoint_every == 0 or done == config.iters:
            checkpoint(done)
    bar.close()
    return history
