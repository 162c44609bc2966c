"""What a training run carries from iteration to iteration and into its checkpoint, and the RoI sample's schedule.

:class:`LoopState` holds the model, optimizer and grad scaler the loop updates, the loss history, the gradient-balance
series and the RoI-head positives kept so far; it writes them to a checkpoint and restores them from one
(:mod:`~balanced_l1.experiments.run.checkpoint`). :class:`RoiSampling` says which iterations keep positives and how
many, so that a run keeps at most :data:`ROI_SAMPLE_ROWS` of them; :meth:`LoopState.result` is what the run
records besides its weights (:class:`TrainResult`). The loop itself is :func:`balanced_l1.experiments.run.train.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balanced_l1.experiments.output_folder.files import ROI_SAMPLE_ROWS
from balanced_l1.experiments.run.checkpoint import restore_checkpoint, rng_state, save_checkpoint
from balanced_l1.experiments.run.distributed import DistContext, barrier, gather_objects


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


@dataclass
class LoopState:
    """What one run carries from iteration to iteration, and into its checkpoint.

    Attributes:
        model: the model the loop trains.
        optimizer: its optimizer.
        scaler: its gradient scaler.
        history: one row of losses per iteration done.
        balance: one gradient-balance record per iteration done (empty without a monitor).
        roi_sample: the RoI-head positives kept so far, in pieces.
        start: the iteration the loop starts at (0, or the checkpoint's).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    history: list[dict[str, float]] = field(default_factory=list)
    balance: list[dict[str, dict[str, float | None]]] = field(default_factory=list)
    roi_sample: list[torch.Tensor] = field(default_factory=list)
    start: int = 0

    def restore(self, ckpt: dict[str, Any], ctx: DistContext) -> None:
        """Continue from a checkpoint read by :func:`~balanced_l1.experiments.run.checkpoint.load_checkpoint`."""
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

    def result(self) -> TrainResult:
        """What the run records besides the weights, its RoI sample cut to :data:`ROI_SAMPLE_ROWS` rows."""
        return TrainResult(self.history, self.balance, self.sample()[:ROI_SAMPLE_ROWS])

    def save(self, path: Path, iteration: int, fingerprint: dict[str, Any], ctx: DistContext) -> None:
        """Write the checkpoint after ``iteration`` iterations on rank 0 (every rank's random states in it)."""
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


@dataclass(frozen=True)
class RoiSampling:
    """Which iterations keep RoI-head positives for the sample, and how many rows each: every ``stride``-th
    iteration of the second half, ``per_iteration`` rows each, about :data:`ROI_SAMPLE_ROWS` in all.

    Attributes:
        half: the first iteration of the second half.
        stride: iterations between two that keep rows.
        per_iteration: the most rows one iteration keeps.
    """

    half: int
    stride: int
    per_iteration: int

    @classmethod
    def over(cls, iters: int) -> RoiSampling:
        """The sampling of a run of ``iters`` iterations."""
        half = iters // 2
        stride = math.ceil(max(1, iters - half) / ROI_SAMPLE_ROWS)
        return cls(half, stride, max(1, ROI_SAMPLE_ROWS // math.ceil(max(1, iters - half) / stride)))

    def keeps(self, iteration: int) -> bool:
        """Whether ``iteration`` keeps rows."""
        return iteration >= self.half and (iteration - self.half) % self.stride == 0
