"""The training loop: a fixed data order per seed, DDP, AMP, a warm-up + cosine/step schedule, checkpoints.

The data order (:mod:`balanced_l1.experiments.data.loader`) and the learning rate
(:mod:`balanced_l1.experiments.run.schedule`) are pure functions of the seed and the iteration; the model,
optimizer, grad scaler and random states are in the checkpoint (:mod:`balanced_l1.experiments.run.checkpoint`),
written atomically by rank 0 every ``checkpoint_every`` iterations and at the end. Resuming from one
continues exactly where the run stopped. An image that cannot be read stops the run with
:class:`~balanced_l1.experiments.data.coco_data.ImageReadError`; the last checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from balanced_l1.detection.gradient_balance import GradientBalanceMonitor
from balanced_l1.experiments.data.loader import DataOrder, training_loader, unpack
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.metric_names import METRICS
from balanced_l1.experiments.output_folder.files import ROI_SAMPLE_ROWS
from balanced_l1.experiments.run.checkpoint import load_checkpoint, restore_checkpoint, rng_state, save_checkpoint
from balanced_l1.experiments.run.distributed import DistContext, barrier, gather_objects, mean_over_ranks
from balanced_l1.experiments.run.schedule import lr_factor

if TYPE_CHECKING:
    from balanced_l1.experiments.run.runlog import RunObserver


class TrainingDivergedError(RuntimeError):
    """The training loss stopped being finite."""


class TrainingStoppedError(RuntimeError):
    """A validation hook asked the run to stop (a pruner judged it behind); ``iteration`` is where it stopped."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"stopped after the validation at iteration {iteration}")
        self.iteration = iteration


#: Called on every rank after each validation during training with the iteration and rank 0's AP (``None`` on the
#: other ranks); it must return the same answer on every rank: ``True`` stops the run with
#: :class:`TrainingStoppedError`.
ValidationHook = Callable[[int, float | None], bool]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run, resolved from :class:`~balanced_l1.experiments.config.CompareConfig`.

    No field has a default here: the defaults live in ``CompareConfig`` alone
    (:func:`balanced_l1.experiments.run.runner.train_config` builds this from it).

    Attributes:
        iters: number of iterations (global batches).
        batch_size: images per global batch (split over ranks under ``torchrun``).
        lr: peak learning rate of SGD.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        warmup_iters: linear warm-up length.
        warmup_factor: the learning-rate factor at iteration 0.
        lr_schedule: ``"cosine"`` or ``"step"``.
        lr_steps: iterations where the step schedule drops by 10x.
        grad_clip: maximum global gradient norm, 0 for none.
        hflip: probability of a horizontal flip of each training image.
        amp: mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU).
        checkpoint_every: iterations between checkpoints.
        eval_every: iterations between validations on the held-out split during training, 0 for none.
    """

    iters: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    warmup_factor: float
    lr_schedule: str
    lr_steps: tuple[int, ...]
    grad_clip: float
    hflip: float
    amp: bool
    checkpoint_every: int
    eval_every: int

    def factor(self, iteration: int) -> float:
        """The learning-rate factor at ``iteration``."""
        return lr_factor(
            iteration,
            iters=self.iters,
            warmup_iters=self.warmup_iters,
            warmup_factor=self.warmup_factor,
            schedule=self.lr_schedule,
            steps=self.lr_steps,
        )


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if not config.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class _State:
    """What one run carries from iteration to iteration, and into its checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    history: list[dict[str, float]]
    balance: list[dict[str, dict[str, float | None]]] = field(default_factory=list)
    roi_sample: list[torch.Tensor] = field(default_factory=list)
    start: int = 0

    def restore(self, ckpt: dict[str, Any], ctx: DistContext) -> None:
        # checks every part against what it is loaded into: a damaged checkpoint is named, not a traceback
        restore_checkpoint(ckpt, self.model, self.optimizer, self.scaler, ctx.rank, ctx.device)
        self.history, self.balance, self.start = ckpt["history"], ckpt["gradient_balance"], ckpt["iteration"]
        self.roi_sample = [ckpt["roi_sample"]] if "roi_sample" in ckpt else []

    def sample(self) -> torch.Tensor:
        """The RoI-head positives kept so far, ``(K, 12)`` float64 (see :data:`ROI_SAMPLE_ROWS`)."""
        return torch.cat(self.roi_sample) if self.roi_sample else torch.zeros((0, 12), dtype=torch.float64)

    def keep(self, pairs: torch.Tensor, per_iteration: int, iteration: int) -> None:
        """Keep ``per_iteration`` of this iteration's rows at random, from a generator of its own seeded with the
        iteration: the run's random streams are untouched and a resumed run keeps the same rows. (Evenly spaced
        rows would be biased: the rows are in image order, and each image's ground-truth boxes, which torchvision
        adds to the proposals, come last.)"""
        rows = pairs.shape[0]
        if rows > per_iteration:
            chosen = torch.randperm(rows, generator=torch.Generator().manual_seed(iteration))[:per_iteration]
            pairs = pairs[chosen.sort().values.to(pairs.device)]
        self.roi_sample.append(pairs.detach().cpu())

    def save(self, path: Path, iteration: int, fingerprint: dict[str, Any], ctx: DistContext) -> None:
        states = gather_objects(ctx, rng_state(ctx.device))
        if ctx.is_main:
            save_checkpoint(
                path,
                {
                    "fingerprint": fingerprint,
                    "iteration": iteration,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "rng": states,
                    "history": self.history,
                    "gradient_balance": self.balance,
                    "roi_sample": self.sample(),
                },
            )
        barrier(ctx)


def _step(
    ddp: nn.Module,
    state: _State,
    batch: list[Any],
    config: TrainConfig,
    ctx: DistContext,
    iteration: int,
    monitor: GradientBalanceMonitor | None,
) -> dict[str, float]:
    images, targets = unpack(batch)
    device = ctx.device
    images = [image.to(device, non_blocking=True).float().div_(255.0) for image in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in target.items()} for target in targets]
    for group in state.optimizer.param_groups:
        group["lr"] = config.lr * config.factor(iteration)
    with _autocast(config, device):
        losses = ddp(images, targets)
    total: torch.Tensor = torch.stack([v.float() for v in losses.values()]).sum()
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(total).backward()
    if monitor is not None:  # reads the gradients of this backward pass; changes nothing
        state.balance.append(monitor.step())
    if config.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        params = [p for g in state.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    names = ["loss", *sorted(losses)]
    values = torch.stack([total.detach(), *(losses[n].detach().float() for n in names[1:])])
    return dict(zip(names, mean_over_ranks(ctx, values).cpu().tolist(), strict=True))


@dataclass
class TrainResult:
    """What a training run records besides the weights.

    Attributes:
        history: one ``{"loss": total, <component>: value, ...}`` per iteration, averaged over ranks.
        gradient_balance: one :meth:`~balanced_l1.detection.GradientBalanceMonitor.step` record per
            iteration (global batch), empty when no monitor was given.
        roi_sample: ``(K, 12)`` float64: a bounded sample of the RoI head's positives from the second half of
            training (rank 0's), each its predicted deltas, target deltas and proposal box; empty for a
            one-stage model or without a monitor.
    """

    history: list[dict[str, float]]
    gradient_balance: list[dict[str, dict[str, float | None]]]
    roi_sample: torch.Tensor


def _start(
    model: nn.Module,
    config: TrainConfig,
    ctx: DistContext,
    *,
    seed: int,
    checkpoint_path: Path,
    fingerprint: dict[str, Any],
    resume: bool,
) -> _State:
    """A fresh run's state (random streams seeded), or the checkpoint's when resuming."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp and ctx.device.type == "cuda")
    state = _State(model, optimizer, scaler, [])
    if resume and checkpoint_path.exists():
        state.restore(load_checkpoint(checkpoint_path, fingerprint, ctx.world_size, iters=config.iters), ctx)
    else:
        _seed_everything(seed * 1000 + ctx.rank)
    return state


def _progress(config: TrainConfig, state: _State, ctx: DistContext, desc: str, position: int, bar: bool) -> tqdm[Any]:
    return tqdm(
        total=config.iters,
        initial=state.start,
        desc=desc,
        disable=not (ctx.is_main and bar),
        leave=True,
        dynamic_ncols=True,
        position=position,
    )


def train(
    model: nn.Module,
    split: DetectionSplit,
    config: TrainConfig,
    *,
    seed: int,
    ctx: DistContext,
    checkpoint_path: Path,
    fingerprint: dict[str, Any],
    resume: bool,
    desc: str,
    workers: int = 0,
    position: int = 0,
    monitor: GradientBalanceMonitor | None = None,
    observer: RunObserver | None = None,
    validate: Callable[[], dict[str, Any] | None] | None = None,
    on_validation: ValidationHook | None = None,
) -> TrainResult:
    """Train ``model`` in place, checkpointing every ``config.checkpoint_every`` iterations and at the end.

    Args:
        model: a torchvision detector in training mode on ``ctx.device``.
        split: the training split (images are read lazily).
        config: the optimisation settings.
        seed: the run's seed (data order, flips and the per-rank RNG streams).
        ctx: this process's place in the job.
        checkpoint_path: where rank 0 writes the checkpoint.
        fingerprint: the run's identity (settings, data, seed; see
            :func:`~balanced_l1.experiments.run.runner.run_fingerprint`), stored in the checkpoint and checked on
            resume.
        resume: continue from ``checkpoint_path`` if it exists.
        desc: label of the progress bar.
        workers: DataLoader worker processes.
        position: line of the progress bar (runs side by side each have their own).
        monitor: a gradient-balance monitor attached to ``model``; read after every backward pass.
        observer: what reports the run on rank 0 (log lines, TensorBoard; see
            :class:`~balanced_l1.experiments.run.runlog.RunObserver`); its ``bars`` say whether a tqdm bar is drawn.
        validate: scores the model on the held-out split (every rank calls it; rank 0 gets the metrics), called
            after every ``config.eval_every`` iterations; the metrics of :data:`~balanced_l1.experiments.run.evaluate.
            METRICS` go into that iteration's history row as ``val_<metric>`` (so a checkpoint keeps them).
        on_validation: told the iteration and AP after each validation (see :data:`ValidationHook`).

    Returns:
        The loss history and the gradient-balance series.

    Raises:
        TrainingDivergedError: if the loss becomes NaN or infinite.
        TrainingStoppedError: if ``on_validation`` returned ``True``.
        CheckpointMismatchError: if the checkpoint to resume belongs to another run or cannot be read.
        ImageReadError: if a training image cannot be read (the last checkpoint is kept).
    """
    ddp: nn.Module = DistributedDataParallel(model) if ctx.distributed else model
    state = _start(
        model, config, ctx, seed=seed, checkpoint_path=checkpoint_path, fingerprint=fingerprint, resume=resume
    )
    if monitor is not None:
        monitor.resume_at(state.start)
    loader = training_loader(
        split,
        DataOrder(seed, len(split), config.hflip),
        batch_size=config.batch_size,
        start=state.start,
        stop=config.iters,
        rank=ctx.rank,
        world_size=ctx.world_size,
        workers=workers,
        device=ctx.device,
    )
    model.train()
    bar = _progress(config, state, ctx, desc, position, observer is None or observer.bars)
    if observer is not None and ctx.is_main:
        observer.begin(state.start, config.iters)
    half = config.iters // 2  # the sample: every stride-th iteration of the second half, per_iteration rows each
    stride = math.ceil(max(1, config.iters - half) / ROI_SAMPLE_ROWS)
    per_iteration = max(1, ROI_SAMPLE_ROWS // math.ceil(max(1, config.iters - half) / stride))
    try:
        for iteration, batch in enumerate(loader, start=state.start):
            if monitor is not None:
                monitor.keep_roi_pairs = iteration >= half and (iteration - half) % stride == 0
            record = _step(ddp, state, batch, config, ctx, iteration, monitor)
            if monitor is not None and monitor.roi_pairs is not None:
                state.keep(monitor.roi_pairs, per_iteration, iteration)
                monitor.roi_pairs = None
            if not math.isfinite(record["loss"]):
                raise TrainingDivergedError(
                    f"{desc}: loss became {record['loss']} at iteration {iteration}; lower --lr"
                )
            state.history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            done = iteration + 1
            if observer is not None and ctx.is_main:
                balance = state.balance[-1] if monitor is not None else None
                observer.iteration(done, record, config.lr * config.factor(iteration), balance)
            if validate is not None and config.eval_every and done % config.eval_every == 0:
                ap = _validate(validate, record, done, observer if ctx.is_main else None)
                if on_validation is not None and on_validation(done, ap):
                    raise TrainingStoppedError(done)
            if done % config.checkpoint_every == 0 or done == config.iters:
                state.save(checkpoint_path, done, fingerprint, ctx)
    except BaseException:
        if observer is not None:  # the run stops here: its event file and log are closed
            observer.close()
        raise
    finally:
        bar.close()
    return TrainResult(state.history, state.balance, state.sample()[:ROI_SAMPLE_ROWS])


def _validate(
    validate: Callable[[], dict[str, Any] | None], record: dict[str, float], done: int, observer: RunObserver | None
) -> float | None:
    """Score the model now; rank 0 keeps the metrics in this iteration's history row as ``val_<metric>``.

    Returns:
        The AP on rank 0, ``None`` on the other ranks.
    """
    metrics = validate()
    if metrics is None:  # not rank 0
        return None
    record.update({f"val_{name}": float(metrics[name]) for name in METRICS})
    if observer is not None:
        observer.validation(done, metrics)
    return float(metrics["AP"])


def validation_curve(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The validations a run's history holds: ``[{"iteration": n, "AP": ..., "AP50": ..., ...}, ...]``.

    Example:
        >>> validation_curve([{"loss": 2.0}, {"loss": 1.0, "val_AP": 0.5}])
        [{'iteration': 2, 'AP': 0.5}]
    """
    curve = []
    for index, row in enumerate(history):
        values = {name[len("val_") :]: value for name, value in row.items() if name.startswith("val_")}
        if values:
            curve.append({"iteration": index + 1, **values})
    return curve
