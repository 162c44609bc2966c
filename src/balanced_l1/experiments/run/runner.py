"""One run of a comparison: an (arm, seed) trained, evaluated and recorded, and the facts that make it that run.

- :func:`load_data`: the splits the settings name; :func:`train_config`: the optimisation settings of a run;
- :func:`run_fingerprint`: what makes a run the run it is (``--resume`` reuses only an equal one);
- :func:`build_arm_model`: the detector built under the run's seed and configured by the arm;
- :func:`run_one`: train, evaluate, write the sample, the weights and the record (in this process, or as one
  rank of a distributed job); :func:`run_single` does it in a worker process of ``--jobs N``.

Where a run keeps its files, and how they are read and written, is
:mod:`~balanced_l1.experiments.output_folder`'s.

:mod:`~balanced_l1.experiments.compare` orchestrates the runs; :mod:`~balanced_l1.experiments.run.parallel`
starts worker processes that call :func:`run_single`. Neither imports the other's callers back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from balanced_l1.detection.gradient_balance import GradientBalanceMonitor
from balanced_l1.detection.models import build_detector
from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.config import CompareConfig, as_dict
from balanced_l1.experiments.config.checks import MAX_ITERS, ConfigError
from balanced_l1.experiments.data.coco_data import load_coco_dataset, load_coco_folder
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.data.synthetic import make_synthetic_dataset
from balanced_l1.experiments.output_folder.files import read_record, write_record, write_sample, write_weights
from balanced_l1.experiments.output_folder.layout import LOG_NAME, RunFiles
from balanced_l1.experiments.run.distributed import (
    DistContext,
    barrier,
)
from balanced_l1.experiments.run.evaluate import evaluate_detector
from balanced_l1.experiments.run.runlog import LogFile, RunObserver, is_terminal
from balanced_l1.experiments.run.train import TrainConfig, TrainResult, ValidationHook, train, validation_curve

# settings that do not change what a run computes, left out of its fingerprint
_NOT_IN_FINGERPRINT = (
    "arms", "arm_modules", "seeds", "out", "resume", "threads", "workers", "jobs", "checkpoint_every",
    "follow_symlinks", "eval_every", "log_every", "tensorboard",
)  # fmt: skip


_DATA_KEYS = ("data", "train_ann", "train_root", "val_ann", "val_root")


def load_data(config: CompareConfig) -> dict[str, DetectionSplit]:
    """The training and held-out splits the settings name (annotations checked; images read later, lazily)."""
    if config.data is not None:
        return load_coco_folder(config.data, follow_symlinks=config.follow_symlinks)
    if config.uses_coco_files:
        return load_coco_dataset(
            config.train_ann,  # type: ignore[arg-type]  # validate() made sure all four are given
            config.train_root,  # type: ignore[arg-type]
            config.val_ann,  # type: ignore[arg-type]
            config.val_root,  # type: ignore[arg-type]
            follow_symlinks=config.follow_symlinks,
        )
    return make_synthetic_dataset(
        config.train_images, config.val_images, image_size=config.image_size, seed=config.data_seed
    )


def train_config(config: CompareConfig, num_train_images: int) -> TrainConfig:
    """The optimisation settings of each run: ``epochs`` and ``lr_steps`` (always in epochs) become iterations.

    An epoch is ``ceil(num_train_images / batch_size)`` iterations.

    Raises:
        ConfigError: if ``epochs`` come to more than
            :data:`~balanced_l1.experiments.config.checks.MAX_ITERS` iterations.
    """
    per_epoch = math.ceil(num_train_images / config.batch_size)
    iters = config.epochs * per_epoch if config.epochs is not None else int(config.iters)  # type: ignore[arg-type]
    if iters > MAX_ITERS:
        raise ConfigError(
            f"epochs {config.epochs} of {per_epoch} iterations ({num_train_images} training images in batches of "
            f"{config.batch_size}) are {iters} iterations, over the limit of {MAX_ITERS} that iters has too"
        )
    resolved: dict[str, Any] = {  # the settings counted in epochs become iterations; the rest are copied by name
        "iters": iters,
        "warmup_iters": min(config.warmup_iters, iters),
        "lr_steps": tuple(s * per_epoch for s in config.lr_steps),
        "eval_every": config.eval_every * per_epoch if config.epochs is not None else config.eval_every,
    }
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    return TrainConfig(**{name: resolved[name] if name in resolved else getattr(config, name) for name in names})


def run_fingerprint(
    config: CompareConfig, splits: dict[str, DetectionSplit], arm: ArmSpec, seed: int
) -> dict[str, Any]:
    """What makes a run the run it is: its arm and the arm's parameters, seed, every setting that changes the
    result, and the data's hash.

    The one place the fingerprint is built; the training loop stores it in checkpoints and run records
    carry it, and ``--resume`` reuses either only if it is equal.
    """
    settings = {k: v for k, v in as_dict(config).items() if k not in _NOT_IN_FINGERPRINT and k not in _DATA_KEYS}
    data = {name: split.fingerprint for name, split in sorted(splits.items())}
    return {"arm": arm.name, "arm_parameters": arm.values, "seed": seed, "settings": settings, "data": data}


def build_arm_model(
    config: CompareConfig, num_classes: int, arm: ArmSpec, *, weights_backbone: str | None = None
) -> torch.nn.Module:
    min_size, max_size = config.resize()
    model = build_detector(
        config.model,
        num_classes,
        weights_backbone=config.weights_backbone if weights_backbone is None else weights_backbone,
        min_size=min_size,
        max_size=max_size,
    )
    try:
        arm.configure(model)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"arm {arm.name!r} cannot be used with model {config.model!r}: {err}") from None
    return model


def run_single(config: CompareConfig, arm: str, seed: int, *, position: int = 0) -> None:
    """Train and evaluate one (arm, seed) run in this process alone and write its run record.

    ``arm`` is the arm's canonical name, one of ``config.arm_specs()``; the modules of ``config.arm_modules``
    are imported first, so a worker process knows the user's own arms.

    This is what each process of ``--jobs N`` does; the results are those of the same run inside a whole
    comparison, since a run depends only on the settings, the data, the arm and the seed.
    """
    splits = load_data(config)
    ctx = DistContext(0, 1, torch.device(config.device))
    spec = next(s for s in config.arm_specs() if s.name == arm)
    run_one(config, ctx, splits, train_config(config, len(splits["train"])), spec, seed, position=position)


def run_one(
    config: CompareConfig,
    ctx: DistContext,
    splits: dict[str, DetectionSplit],
    tc: TrainConfig,
    arm: ArmSpec,
    seed: int,
    *,
    position: int = 0,
    validation_split: DetectionSplit | None = None,
    on_validation: ValidationHook | None = None,
) -> dict[str, Any] | None:
    """Train and evaluate one run, write its files on rank 0 and return its record there (``None`` elsewhere);
    with ``--resume``, a finished run's record is read instead.

    Args:
        config: the settings.
        ctx: this process's place in the job.
        splits: the training and held-out splits.
        tc: the optimisation settings.
        arm: the arm and its parameters.
        seed: the run's seed.
        position: line of the progress bar.
        validation_split: what the validations during training score (default: the whole held-out split); the
            final AP is always the whole held-out split's.
        on_validation: told each validation's AP during training; may stop the run (see
            :data:`~balanced_l1.experiments.run.train.ValidationHook`).
    """
    files = RunFiles.of(config.out, arm, seed)
    if config.resume and files.record.exists():
        return read_record(files.record)
    fingerprint = run_fingerprint(config, splits, arm, seed)
    torch.manual_seed(seed)
    model = build_arm_model(config, len(splits["train"].category_ids), arm)
    model.to(ctx.device)
    monitor = GradientBalanceMonitor(model, task_balance_every=config.balance_every)
    observer = _observer(config, files, f"{arm.name} seed {seed}") if ctx.is_main else None

    def validate() -> dict[str, Any] | None:
        held_out = splits["val"] if validation_split is None else validation_split
        return evaluate_detector(model, held_out, ctx=ctx, workers=config.workers, show_progress=False)

    result = train(
        model,
        splits["train"],
        tc,
        seed=seed,
        ctx=ctx,
        checkpoint_path=files.checkpoint,
        fingerprint=fingerprint,
        resume=config.resume,
        desc=f"{arm.name} seed {seed}",
        workers=config.workers,
        position=position,
        monitor=monitor,
        observer=observer,
        validate=validate if tc.eval_every else None,
        on_validation=on_validation,
    )
    monitor.remove()
    metrics = evaluate_detector(
        model, splits["val"], ctx=ctx, workers=config.workers, show_progress=observer is None or observer.bars
    )
    record: dict[str, Any] | None = None
    if ctx.is_main:
        record = _finished_record(arm, seed, fingerprint, metrics, result, splits["train"])
        _write_finished_run(files, model, result.roi_sample.numpy(), record)
    if observer is not None:
        observer.end(metrics)
    barrier(ctx)
    return record


def _finished_record(
    arm: ArmSpec,
    seed: int,
    fingerprint: dict[str, Any],
    metrics: dict[str, Any] | None,
    result: TrainResult,
    train_split: DetectionSplit,
) -> dict[str, Any]:
    """A finished run's record (:mod:`~balanced_l1.experiments.output_folder.schema` says what it holds)."""
    return {
        "arm": arm.name,
        "seed": seed,
        "fingerprint": fingerprint,
        "metrics": metrics,
        "history": result.history,
        "gradient_balance": result.gradient_balance,
        "validation": validation_curve(result.history),
        "num_classes": len(train_split.category_ids),
        "category_ids": train_split.category_ids,
    }


def _write_finished_run(files: RunFiles, model: torch.nn.Module, sample: Any, record: dict[str, Any]) -> None:
    """Write a run's RoI sample and weights, then its record, which marks the run finished."""
    write_sample(sample, files.roi_sample)
    write_weights(model, files.model)
    write_record(record, files.record)


def _observer(config: CompareConfig, files: RunFiles, label: str) -> RunObserver:
    """What reports a run on rank 0: lines in OUT/log.txt (and on stderr when it is no terminal), TensorBoard."""
    bars = is_terminal()
    log = LogFile(files.out / LOG_NAME, echo=not bars)
    board = files.tensorboard if config.tensorboard else None
    return RunObserver(label, log, config.log_every, tensorboard=board, bars=bars)
