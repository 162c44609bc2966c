"""The training loop: a fixed data order per seed, DDP, AMP, a warm-up + cosine/step schedule, checkpoints.

The data order (:mod:`balanced_l1.experiments.data.loader`) and the learning rate
(:mod:`balanced_l1.experiments.run.schedule`) are pure functions of the seed and the iteration; the model,
optimizer, grad scaler and random states are in the checkpoint (:mod:`balanced_l1.experiments.run.checkpoint`;
what a run carries into it is :mod:`balanced_l1.experiments.run.loop_state`'s), written atomically by rank 0 every
``checkpoint_every`` iterations and at the end. Resuming from one continues exactly where the run stopped. An image
that cannot be read stops the run with :class:`~balanced_l1.experiments.data.coco_data.ImageReadError`; the last
checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from balanced_l1.detection.gradient_balance import GradientBalanceMonitor
from balanced_l1.experiments.data.loader import DataOrder, training_loader, unpack
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.metric_names import METRICS
from balanced_l1.experiments.run.checkpoint import load_checkpoint
from balanced_l1.experiments.run.distributed import DistContext, mean_over_ranks
from balanced_l1.experiments.run.loop_state import LoopState, RoiSampling, TrainResult
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
    """The settings of one training run, resolved from :class:`~balanced_l1.experiments.config.CompareConfig`.

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
        workers: DataLoader worker processes (how fast the images are read, not which).
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
    workers: int

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


@dataclass(frozen=True)
class LoopParts:
    """What the loop updates: the model, its optimizer and its gradient scaler, built by the caller.

    Attributes:
        model: a torchvision detector on the run's device.
        optimizer: updates the model's trainable parameters; the loop sets each group's learning rate every
            iteration (:meth:`TrainConfig.factor`).
        scaler: scales the loss for float16 (a no-op when disabled); its state is in the checkpoint.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    @classmethod
    def sgd(cls, model: nn.Module, config: TrainConfig, device: torch.device) -> LoopParts:
        """SGD with ``config``'s momentum and weight decay over ``model``'s trainable parameters, and a gradient
        scaler enabled for ``config.amp`` on CUDA."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
        return cls(model, optimizer, scaler)


@dataclass(frozen=True)
class TrainingRun:
    """Which run this is, and where it keeps its checkpoint.

    Attributes:
        label: names the run in its progress bar and its errors (``"balanced_l1 seed 0"``).
        seed: fixes the data order, the flips and the per-rank random streams.
        fingerprint: the run's identity (:func:`~balanced_l1.experiments.run.runner.run_fingerprint`), stored in
            the checkpoint and checked on resume.
        checkpoint: where rank 0 writes the checkpoint.
        resume: continue from ``checkpoint`` if it exists.
    """

    label: str
    seed: int
    fingerprint: dict[str, Any]
    checkpoint: Path
    resume: bool


@dataclass(frozen=True)
class Observers:
    """What watches a run from outside the loop; none is needed, and only ``on_validation`` can change the run.

    Attributes:
        position: line of the progress bar (runs side by side each have their own).
        monitor: a gradient-balance monitor attached to the model; read after every backward pass.
        observer: what reports the run on rank 0 (log lines, TensorBoard; see
            :class:`~balanced_l1.experiments.run.runlog.RunObserver`); its ``bars`` say whether a tqdm bar is drawn.
        validate: scores the model on the held-out split (every rank calls it; rank 0 gets the metrics), called
            after every ``eval_every`` iterations; the metrics of :data:`~balanced_l1.experiments.metric_names.
            METRICS` go into that iteration's history row as ``val_<metric>`` (so a checkpoint keeps them).
        on_validation: told the iteration and AP after each validation (see :data:`ValidationHook`).
    """

    position: int = 0
    monitor: GradientBalanceMonitor | None = None
    observer: RunObserver | None = None
    validate: Callable[[], dict[str, Any] | None] | None = None
    on_validation: ValidationHook | None = None


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if not config.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _start(parts: LoopParts, config: TrainConfig, run: TrainingRun, ctx: DistContext) -> LoopState:
    """A fresh run's state (random streams seeded), or the checkpoint's when resuming."""
    state = LoopState(parts.model, parts.optimizer, parts.scaler)
    if run.resume and run.checkpoint.exists():
        state.restore(load_checkpoint(run.checkpoint, run.fingerprint, ctx.world_size, iters=config.iters), ctx)
    else:  # a fresh run: each rank's random streams seeded
        seed = run.seed * 1000 + ctx.rank
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
    return state


@dataclass
class _Loop:
    """One run's loop from its first iteration (or the checkpoint's) to its last: what each iteration does."""

    ddp: nn.Module
    state: LoopState
    config: TrainConfig
    run: TrainingRun
    ctx: DistContext
    observers: Observers
    bar: tqdm[Any]
    sampling: RoiSampling

    def iteration(self, iteration: int, batch: list[Any]) -> None:
        """The step, its report, and the validation and the checkpoint when they are due."""
        record = self._step(iteration, batch)
        done = iteration + 1
        self._report(done, record)
        validate = self.observers.validate
        if validate is not None and self.config.eval_every and done % self.config.eval_every == 0:
            self._validation_point(validate, done, record)
        if done % self.config.checkpoint_every == 0 or done == self.config.iters:
            self.state.save(self.run.checkpoint, done, self.run.fingerprint, self.ctx)

    def _step(self, iteration: int, batch: list[Any]) -> dict[str, float]:
        """One optimisation step on a global batch, the RoI sample's share of it, and the check that the loss is
        still finite; returns the losses averaged over ranks (``"loss"``: their sum), kept in the history."""
        config, state, monitor, device = self.config, self.state, self.observers.monitor, self.ctx.device
        if monitor is not None:
            monitor.keep_roi_pairs = self.sampling.keeps(iteration)
        images, targets = unpack(batch)
        images = [image.to(device, non_blocking=True).float().div_(255.0) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in target.items()} for target in targets]
        for group in state.optimizer.param_groups:
            group["lr"] = config.lr * config.factor(iteration)
        with _autocast(config, device):
            losses = self.ddp(images, targets)
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
        record = dict(zip(names, mean_over_ranks(self.ctx, values).cpu().tolist(), strict=True))
        if monitor is not None and monitor.roi_pairs is not None:
            state.keep(monitor.roi_pairs, self.sampling.per_iteration, iteration)
            monitor.roi_pairs = None
        if not math.isfinite(record["loss"]):
            raise TrainingDivergedError(
                f"{self.run.label}: loss became {record['loss']} at iteration {iteration}; lower --lr"
            )
        state.history.append(record)
        return record

    def _report(self, done: int, record: dict[str, float]) -> None:
        """The progress bar, and the observer's line on rank 0."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}")
        observer = self.observers.observer
        if observer is not None and self.ctx.is_main:
            balance = self.state.balance[-1] if self.observers.monitor is not None else None
            observer.iteration(done, record, self.config.lr * self.config.factor(done - 1), balance)

    def _validation_point(
        self, validate: Callable[[], dict[str, Any] | None], done: int, record: dict[str, float]
    ) -> None:
        """Score the model now; rank 0 keeps the metrics in this iteration's history row as ``val_<metric>``.

        Raises:
            TrainingStoppedError: if the validation hook says stop.
        """
        metrics = validate()
        ap = None
        if metrics is not None:  # rank 0
            record.update({f"val_{name}": float(metrics[name]) for name in METRICS})
            if self.observers.observer is not None and self.ctx.is_main:
                self.observers.observer.validation(done, metrics)
            ap = float(metrics["AP"])
        hook = self.observers.on_validation
        if hook is not None and hook(done, ap):
            raise TrainingStoppedError(done)


def _loader(
    split: DetectionSplit, config: TrainConfig, run: TrainingRun, ctx: DistContext, start: int
) -> DataLoader[Any]:
    """This rank's batches from iteration ``start`` to the last, in the order the run's seed fixes."""
    return training_loader(
        split,
        DataOrder(run.seed, len(split), config.hflip),
        batch_size=config.batch_size,
        start=start,
        stop=config.iters,
        rank=ctx.rank,
        world_size=ctx.world_size,
        workers=config.workers,
        device=ctx.device,
    )


def _progress(config: TrainConfig, start: int, ctx: DistContext, run: TrainingRun, observers: Observers) -> tqdm[Any]:
    observer = observers.observer
    return tqdm(
        total=config.iters,
        initial=start,
        desc=run.label,
        disable=not (ctx.is_main and (observer is None or observer.bars)),
        leave=True,
        dynamic_ncols=True,
        position=observers.position,
    )


def train(
    parts: LoopParts,
    split: DetectionSplit,
    config: TrainConfig,
    run: TrainingRun,
    ctx: DistContext,
    observers: Observers | None = None,
) -> TrainResult:
    """Train ``parts.model`` in place, checkpointing every ``config.checkpoint_every`` iterations and at the end.

    The loop takes a few concrete objects, as torchvision's reference ``train_one_epoch`` does: what it updates
    (built by the caller, so another optimizer is the caller's choice), what it reads, the plain settings, which
    run it is and where it checkpoints, the process's place in the job, and what watches it. Each is one thing a
    caller decides at once; a new observer, such as a validation hook, is a field of :class:`Observers` with a
    default, not one more parameter of every caller.

    Args:
        parts: the model (a torchvision detector on ``ctx.device``), its optimizer and gradient scaler.
        split: the training split (images are read lazily).
        config: the settings.
        run: the run's label, seed and fingerprint, and its checkpoint.
        ctx: this process's place in the job.
        observers: the progress bar's line, the gradient-balance monitor, the reporter, the validation and its
            hook; none by default.

    Returns:
        The loss history and the gradient-balance series.

    Raises:
        TrainingDivergedError: if the loss becomes NaN or infinite.
        TrainingStoppedError: if ``observers.on_validation`` returned ``True``.
        CheckpointMismatchError: if the checkpoint to resume belongs to another run or cannot be read.
        ImageReadError: if a training image cannot be read (the last checkpoint is kept).
    """
    observers = observers if observers is not None else Observers()
    ddp: nn.Module = DistributedDataParallel(parts.model) if ctx.distributed else parts.model
    state = _start(parts, config, run, ctx)
    if observers.monitor is not None:
        observers.monitor.resume_at(state.start)
    loader = _loader(split, config, run, ctx, state.start)
    parts.model.train()
    bar = _progress(config, state.start, ctx, run, observers)
    if observers.observer is not None and ctx.is_main:
        observers.observer.begin(state.start, config.iters)
    loop = _Loop(ddp, state, config, run, ctx, observers, bar, RoiSampling.over(config.iters))
    try:
        for iteration, batch in enumerate(loader, start=state.start):
            loop.iteration(iteration, batch)
    except BaseException:
        if observers.observer is not None:  # the run stops here: its event file and log are closed
            observers.observer.close()
        raise
    finally:
        bar.close()
    return state.result()


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
