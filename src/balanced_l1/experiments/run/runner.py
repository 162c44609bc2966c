"""One run of a comparison: an (arm, seed) trained, evaluated and recorded, and the facts that make it that run.

- :func:`load_data`: the splits the settings name; :func:`train_config`: the optimisation settings of a run;
- :func:`run_fingerprint`: what makes a run the run it is (``--resume`` reuses only an equal one);
- :func:`run_paths`, :func:`roi_sample_path`: where a run keeps its record, checkpoint and sample;
- :func:`build_arm_model`: the detector built under the run's seed and configured by the arm;
- :func:`run_one`: train, evaluate, write the sample, the weights and the record (in this process, or as one
  rank of a distributed job); :func:`run_single` does it in a worker process of ``--jobs N``;
- :func:`read_record`, :func:`read_sample`: a finished run's record and sample, checked.

:mod:`~balanced_l1.experiments.compare` orchestrates the runs; :mod:`~balanced_l1.experiments.run.parallel`
starts worker processes that call :func:`run_single`. Neither imports the other's callers back.
"""

from __future__ import annotations

import dataclasses
import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from balanced_l1._files import (
    UnreadableFileError,
    open_regular_file,
    write_atomically,
    write_json_atomically,
)
from balanced_l1.detection.gradient_balance import GradientBalanceMonitor
from balanced_l1.detection.models import build_detector
from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.config import MAX_ITERS, CompareConfig, ConfigError, as_dict
from balanced_l1.experiments.data.coco_data import (
    DetectionSplit,
    load_coco_dataset,
    load_coco_folder,
)
from balanced_l1.experiments.data.synthetic import make_synthetic_dataset
from balanced_l1.experiments.run.checkpoint import CheckpointMismatchError
from balanced_l1.experiments.run.distributed import (
    DistContext,
    barrier,
)
from balanced_l1.experiments.run.evaluate import evaluate_detector
from balanced_l1.experiments.run.runlog import LOG_NAME, TENSORBOARD_FOLDER, LogFile, RunObserver, is_terminal
from balanced_l1.experiments.run.train import ROI_SAMPLE_ROWS, TrainConfig, train, validation_curve

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
        ConfigError: if ``epochs`` come to more than :data:`~balanced_l1.experiments.config.MAX_ITERS` iterations.
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


def run_paths(config: CompareConfig, arm: ArmSpec, seed: int) -> tuple[Path, Path]:
    out = Path(config.out)
    stem = f"{arm.file_stem}_seed{seed}"
    return out / "runs" / f"{stem}.json", out / "checkpoints" / f"{stem}.pt"


#: A finished run's final weights: ``runs/<arm>_seed<s>_model.pt`` beside its record.
MODEL_SUFFIX = "_model.pt"


def model_path(record_path: str | os.PathLike[str]) -> Path:
    """Where the run whose record is ``record_path`` keeps its final weights (``<stem>_model.pt`` beside it)."""
    record = Path(record_path)
    return record.with_name(record.stem + MODEL_SUFFIX)


def save_model(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s ``state_dict`` (tensors moved to the CPU) atomically, owner-only as checkpoints are."""
    state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    return write_atomically(path, partial(torch.save, state), owner_only=True)


def sample_path(record_path: str | os.PathLike[str]) -> Path:
    """Where the run whose record is ``record_path`` keeps its sample of RoI-head positives (beside it)."""
    record = Path(record_path)
    return record.with_name(record.stem + "_roi_sample.npy")


def roi_sample_path(config: CompareConfig, arm: ArmSpec, seed: int) -> Path:
    """Where a finished run keeps its sample of RoI-head positives (an ``.npy`` of float64, ``(K, 12)``)."""
    return sample_path(run_paths(config, arm, seed)[0])


def read_record(path: Path) -> dict[str, Any]:
    """A finished run's record, checked (a regular file of bounded size, standard JSON with finite numbers and 64-bit
    integers, every field of its type)."""
    from balanced_l1._files import UnreadableFileError, loads_strict_json, read_regular_file
    from balanced_l1.experiments.run.checkpoint import MAX_RECORD_BYTES, run_record_problem

    try:
        why = "see balanced_l1.experiments.run.checkpoint.MAX_RECORD_BYTES"
        record = loads_strict_json(read_regular_file(path, MAX_RECORD_BYTES, "finished-run record", why=why))
    except UnreadableFileError as err:
        raise CheckpointMismatchError(f"{err}; delete it to train the run again") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointMismatchError(
            f"{path}: cannot read this finished-run record ({type(err).__name__}: {err}); "
            "delete it to train the run again"
        ) from None
    problem = run_record_problem(record)
    if problem is not None:
        raise CheckpointMismatchError(
            f"{path}: not a run record of balanced-l1 compare ({problem}); delete it to train the run again"
        )
    return record


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


def _check_sample_header(handle: Any) -> None:
    """Raise ValueError unless the ``.npy`` header declares what a run writes: float64, C order, ``(K, 12)`` with
    ``K`` <= :data:`ROI_SAMPLE_ROWS`; read before the data, so a header declaring 10**9 rows allocates nothing.
    Leaves ``handle`` at its start."""
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version}; a run writes 1.0")
    shape, fortran_order, dtype = readers[version](handle)
    if len(shape) != 2 or shape[1] != 12 or shape[0] > ROI_SAMPLE_ROWS or dtype != np.float64 or fortran_order:
        raise ValueError(
            f"its header declares a {dtype} array of shape {shape}; a run writes float64 (K, 12) with K <= "
            f"{ROI_SAMPLE_ROWS}"
        )
    handle.seek(0)


def read_sample(path: Path, *, missing_ok: bool = True) -> np.ndarray:
    """A finished run's RoI sample, checked: a regular file (not a link) holding a finite ``(K, 12)`` float64 array.

    Args:
        path: the sample file (:func:`sample_path` of the run's record).
        missing_ok: return an empty sample for a missing file (a run record from an earlier version), instead of
            raising.

    Raises:
        CheckpointMismatchError: naming the file, if it cannot be read or is not such an array.
    """
    if missing_ok and not path.is_symlink() and not path.exists():
        return np.zeros((0, 12))
    try:
        with open_regular_file(
            path, 64 * 2**20, "RoI sample", why="a run keeps at most 4096 rows", follow_symlinks=False
        ) as handle:
            _check_sample_header(handle)
            array = np.load(handle, allow_pickle=False)
    except (UnreadableFileError, OSError, ValueError) as err:
        raise CheckpointMismatchError(
            f"{path}: cannot read this run's RoI sample ({err}); delete the run's record to train it again"
        ) from None
    if array.ndim != 2 or array.shape[1] != 12 or array.dtype != np.float64 or not np.isfinite(array).all():
        raise CheckpointMismatchError(
            f"{path}: not a RoI sample of balanced-l1 compare (a finite (K, 12) float64 array)"
        )
    return array


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
) -> dict[str, Any] | None:
    record_path, ckpt_path = run_paths(config, arm, seed)
    if config.resume and record_path.exists():
        return read_record(record_path)
    fingerprint = run_fingerprint(config, splits, arm, seed)
    torch.manual_seed(seed)
    model = build_arm_model(config, len(splits["train"].category_ids), arm)
    model.to(ctx.device)
    monitor = GradientBalanceMonitor(model, task_balance_every=config.balance_every)
    observer = _observer(config, arm, seed) if ctx.is_main else None

    def validate() -> dict[str, Any] | None:
        return evaluate_detector(model, splits["val"], ctx=ctx, workers=config.workers, show_progress=False)

    result = train(
        model,
        splits["train"],
        tc,
        seed=seed,
        ctx=ctx,
        checkpoint_path=ckpt_path,
        fingerprint=fingerprint,
        resume=config.resume,
        desc=f"{arm.name} seed {seed}",
        workers=config.workers,
        position=position,
        monitor=monitor,
        observer=observer,
        validate=validate if tc.eval_every else None,
    )
    monitor.remove()
    metrics = evaluate_detector(
        model, splits["val"], ctx=ctx, workers=config.workers, show_progress=observer is None or observer.bars
    )
    record: dict[str, Any] | None = None
    if ctx.is_main:
        sample = result.roi_sample.numpy()
        write_atomically(roi_sample_path(config, arm, seed), lambda tmp: _save_array(tmp, sample))
        save_model(model, model_path(record_path))  # before the record, which marks the run finished
        record = {
            "arm": arm.name,
            "seed": seed,
            "fingerprint": fingerprint,
            "metrics": metrics,
            "history": result.history,
            "gradient_balance": result.gradient_balance,
            "validation": validation_curve(result.history),
            "num_classes": len(splits["train"].category_ids),
            "category_ids": splits["train"].category_ids,
        }
        write_json_atomically(record, record_path)
    if observer is not None:
        observer.end(metrics)
    barrier(ctx)
    return record


def _observer(config: CompareConfig, arm: ArmSpec, seed: int) -> RunObserver:
    """What reports a run on rank 0: lines in OUT/log.txt (and on stderr when it is no terminal), TensorBoard."""
    bars = is_terminal()
    log = LogFile(Path(config.out) / LOG_NAME, echo=not bars)
    board = Path(config.out) / TENSORBOARD_FOLDER / f"{arm.file_stem}_seed{seed}" if config.tensorboard else None
    return RunObserver(f"{arm.name} seed {seed}", log, config.log_every, tensorboard=board, bars=bars)


def _save_array(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
