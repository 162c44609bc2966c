"""``balanced-l1 compare``: train the same detector once per arm and seed, evaluate, report.

For every seed, each arm starts from the same initial weights (``torch.manual_seed(seed)`` before the
model is built), sees the same images in the same order with the same flips, and draws from the same
RNG streams; only the arm's ``configure`` differs. Output folder ``--out``::

    results.json        settings, per-arm metrics per seed, mean and std, paired differences
    loss_curves.png     training loss per arm
    ap_vs_iou.png       AP against IoU threshold 0.50..0.95 per arm
    gradient_balance.png  the gradient-balance statistics over training per arm (the paper's 0.3 marked)
    runs/<arm>_seed<s>.json        one finished run: its fingerprint, metrics, loss history and gradient balance
    checkpoints/<arm>_seed<s>.pt   the latest checkpoint of that run (for --resume)

Every file is written atomically; ``results.json`` is written last, and one left by an earlier run is
removed before training starts. ``--resume`` reuses finished runs and checkpoints only if their
fingerprint (every setting that changes the result, and a hash of the data) matches.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from balanced_l1._files import remove_stale_temp_files, write_json_atomically
from balanced_l1.detection.gradient_balance import GradientBalanceMonitor
from balanced_l1.detection.zoo import build_detector
from balanced_l1.experiments.arms import get_arm
from balanced_l1.experiments.balance import Series, format_balance_table, run_summary, save_balance_figure
from balanced_l1.experiments.checkpoint import CheckpointMismatchError, load_checkpoint
from balanced_l1.experiments.coco_data import (
    DetectionSplit,
    format_data_report,
    load_coco_dataset,
    load_coco_folder,
)
from balanced_l1.experiments.config import CompareConfig, ConfigError, as_dict
from balanced_l1.experiments.distributed import (
    DistContext,
    barrier,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from balanced_l1.experiments.evaluate import evaluate_detector
from balanced_l1.experiments.report import format_table, save_figures, summarize, write_results
from balanced_l1.experiments.synthetic import make_synthetic_dataset
from balanced_l1.experiments.train import TrainConfig, train

# settings that do not change what a run computes, left out of its fingerprint
_NOT_IN_FINGERPRINT = (
    "arms", "seeds", "out", "resume", "threads", "workers", "jobs", "checkpoint_every", "follow_symlinks",
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
    """
    per_epoch = math.ceil(num_train_images / config.batch_size)
    iters = config.epochs * per_epoch if config.epochs is not None else int(config.iters)  # type: ignore[arg-type]
    steps = tuple(s * per_epoch for s in config.lr_steps)
    return TrainConfig(
        iters=iters,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        warmup_iters=min(config.warmup_iters, iters),
        warmup_factor=config.warmup_factor,
        lr_schedule=config.lr_schedule,
        lr_steps=steps,
        grad_clip=config.grad_clip,
        hflip=config.hflip,
        amp=config.amp,
        checkpoint_every=config.checkpoint_every,
    )


def run_fingerprint(config: CompareConfig, splits: dict[str, DetectionSplit], arm: str, seed: int) -> dict[str, Any]:
    """What makes a run the run it is: its arm, seed, every setting that changes the result, and the data's hash.

    The one place the fingerprint is built; the training loop stores it in checkpoints and run records
    carry it, and ``--resume`` reuses either only if it is equal.
    """
    settings = {k: v for k, v in as_dict(config).items() if k not in _NOT_IN_FINGERPRINT and k not in _DATA_KEYS}
    data = {name: split.fingerprint for name, split in sorted(splits.items())}
    return {"arm": arm, "seed": seed, "settings": settings, "data": data}


_OUTPUT_FILES = ("results.json", "loss_curves.png", "ap_vs_iou.png", "gradient_balance.png")
_OUTPUT_FOLDERS = ("runs", "checkpoints")
LOCK_NAME = ".balanced-l1.lock"


def _check_out(out: Path) -> None:
    """Raise ConfigError unless ``out`` is (or can be made) a folder whose output paths have the right kind."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out {out}: cannot create the output folder ({err.strerror or err})") from None
    for name in _OUTPUT_FILES:
        if (out / name).is_dir():
            raise ConfigError(f"out {out}: {out / name} is a folder, where this run writes a file; move it away")
    for name in _OUTPUT_FOLDERS:
        if (out / name).exists() and not (out / name).is_dir():
            raise ConfigError(f"out {out}: {out / name} is a file, where this run keeps a folder; move it away")
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"out {out}: the output folder is not writable")


def _remove_stale_temporaries(out: Path) -> None:
    """Remove temporary files that a killed run left behind (called while holding the lock on ``out``)."""
    for folder in (out, *(out / name for name in _OUTPUT_FOLDERS)):
        remove_stale_temp_files(folder)


@contextlib.contextmanager
def _exclusive_out(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run, so that two runs never write into one folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        yield
        return
    _check_out(out)
    try:
        handle = open(out / LOCK_NAME, "a")  # noqa: SIM115 - held open for the whole run
    except OSError as err:
        raise ConfigError(f"out {out}: cannot write to the output folder ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"out {out} is in use by another balanced-l1 compare run (it holds {out / LOCK_NAME}); "
                "wait for it to finish or choose another --out"
            ) from None
        _remove_stale_temporaries(out)
        yield
    finally:
        handle.close()


def _paths(config: CompareConfig, arm: str, seed: int) -> tuple[Path, Path]:
    out = Path(config.out)
    return out / "runs" / f"{arm}_seed{seed}.json", out / "checkpoints" / f"{arm}_seed{seed}.pt"


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointMismatchError(
            f"{path}: cannot read this finished-run record ({type(err).__name__}: {err}); "
            "delete it to train the run again"
        ) from None
    if not isinstance(record, dict) or not {"fingerprint", "metrics", "history", "gradient_balance"} <= set(record):
        raise CheckpointMismatchError(
            f"{path}: not a run record of balanced-l1 compare; delete it to train the run again"
        )
    return record


def _check_resumable(config: CompareConfig, splits: dict[str, DetectionSplit], ctx: DistContext) -> None:
    for arm in config.arms:
        for seed in config.seeds:
            record_path, ckpt = _paths(config, arm, seed)
            fingerprint = run_fingerprint(config, splits, arm, seed)
            if record_path.exists():
                if _read_record(record_path)["fingerprint"] != fingerprint:
                    raise CheckpointMismatchError(
                        f"{record_path}: finished by a run with other settings or data; this run has {fingerprint}. "
                        "Use another --out or run without --resume to start over."
                    )
            elif ckpt.exists():
                load_checkpoint(ckpt, fingerprint, ctx.world_size)


def _build(
    config: CompareConfig, num_classes: int, arm: str, *, weights_backbone: str | None = None
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
        get_arm(arm).configure(model)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"arm {arm!r} cannot be used with model {config.model!r}: {err}") from None
    return model


def _check_arms_fit_model(config: CompareConfig, num_classes: int) -> None:
    """Configure every arm on the model once (random backbone, nothing downloaded) before any training."""
    state = torch.get_rng_state()
    try:
        for arm in config.arms:
            _build(config, num_classes, arm, weights_backbone="none")
    finally:
        torch.set_rng_state(state)


def run_single(config: CompareConfig, arm: str, seed: int, *, position: int = 0) -> None:
    """Train and evaluate one (arm, seed) run in this process alone and write its run record.

    This is what each process of ``--jobs N`` does; the results are those of the same run inside a whole
    comparison, since a run depends only on the settings, the data, the arm and the seed.
    """
    splits = load_data(config)
    ctx = DistContext(0, 1, torch.device(config.device))
    _run_one(config, ctx, splits, train_config(config, len(splits["train"])), arm, seed, position=position)


def _run_one(
    config: CompareConfig,
    ctx: DistContext,
    splits: dict[str, DetectionSplit],
    tc: TrainConfig,
    arm: str,
    seed: int,
    *,
    position: int = 0,
) -> dict[str, Any] | None:
    record_path, ckpt_path = _paths(config, arm, seed)
    if config.resume and record_path.exists():
        return _read_record(record_path)
    fingerprint = run_fingerprint(config, splits, arm, seed)
    torch.manual_seed(seed)
    model = _build(config, len(splits["train"].category_ids), arm)
    model.to(ctx.device)
    monitor = GradientBalanceMonitor(model, task_balance_every=config.balance_every)
    result = train(
        model,
        splits["train"],
        tc,
        seed=seed,
        ctx=ctx,
        checkpoint_path=ckpt_path,
        fingerprint=fingerprint,
        resume=config.resume,
        desc=f"{arm} seed {seed}",
        workers=config.workers,
        position=position,
        monitor=monitor,
    )
    monitor.remove()
    metrics = evaluate_detector(model, splits["val"], ctx=ctx, workers=config.workers)
    record: dict[str, Any] | None = None
    if ctx.is_main:
        record = {
            "arm": arm,
            "seed": seed,
            "fingerprint": fingerprint,
            "metrics": metrics,
            "history": result.history,
            "gradient_balance": result.gradient_balance,
        }
        write_json_atomically(record, record_path)
    barrier(ctx)
    return record


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run the comparison described by ``config``; validate everything that can be before any training.

    Args:
        config: the settings.
        log: where rank 0 prints its summary lines.

    Returns:
        The content of ``results.json`` on rank 0, ``None`` on other ranks.

    Raises:
        ConfigError: for a bad setting, or an arm that does not fit the model.
        balanced_l1.experiments.coco_data.DataError: for bad data, or an image that cannot be read (a ``ValueError``).
        balanced_l1.experiments.checkpoint.CheckpointMismatchError: when ``--resume`` finds another run's checkpoint
            or run record, or one that cannot be read.
        balanced_l1.detection.zoo.BackboneWeightsError: when backbone weights cannot be had.
        balanced_l1.experiments.train.TrainingDivergedError: when a run's loss stops being finite.
    """
    started = time.perf_counter()
    ctx = setup_distributed(config.device)
    try:
        config.validate(ctx.world_size)
        with contextlib.ExitStack() as stack:
            error = None
            if ctx.is_main:
                try:
                    stack.enter_context(_exclusive_out(Path(config.out)))
                except ConfigError as err:
                    error = err
            errors = [e for e in gather_objects(ctx, error) if e is not None]
            if errors:
                raise errors[0]
            return _compare(config, ctx, log, started)
    finally:
        teardown_distributed(ctx)


def _compare(
    config: CompareConfig, ctx: DistContext, log: Callable[[str], None], started: float
) -> dict[str, Any] | None:
    splits = load_data(config)
    if ctx.is_main:
        log(format_data_report(splits))
    _check_arms_fit_model(config, len(splits["train"].category_ids))
    tc = train_config(config, len(splits["train"]))
    if config.resume:
        _check_resumable(config, splits, ctx)
    if ctx.is_main:  # a results.json left by an earlier run must not pass for this run's before it ends
        (Path(config.out) / "results.json").unlink(missing_ok=True)
    runs: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in config.arms}
    histories: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in config.arms}
    balance: dict[str, dict[int, Series]] = {arm: {} for arm in config.arms}
    tasks = [(arm, seed) for seed in config.seeds for arm in config.arms]
    todo = [t for t in tasks if not (config.resume and _paths(config, *t)[0].exists())]
    if config.jobs > 1 and not ctx.distributed and len(todo) > 1:
        from balanced_l1.experiments.parallel import run_in_processes

        run_in_processes(config, todo, config.jobs)
    for arm, seed in tasks:
        record: dict[str, Any] | None
        if config.jobs > 1 and not ctx.distributed and len(todo) > 1:
            record = _read_record(_paths(config, arm, seed)[0])
        else:
            record = _run_one(config, ctx, splits, tc, arm, seed)
        if record is not None:
            runs[arm][seed] = {**record["metrics"], **run_summary(record["gradient_balance"])}
            histories[arm][seed] = record["history"]
            balance[arm][seed] = record["gradient_balance"]
    if not ctx.is_main:
        return None
    descriptions = {arm: get_arm(arm).description for arm in config.arms}
    summary = summarize(runs, config.arms[0], descriptions)  # paired differences against the first arm
    settings = {**as_dict(config), "iters_resolved": tc.iters, "world_size": ctx.world_size}
    results = {"config": settings, "data": {n: s.report for n, s in splits.items()}, **summary}
    figures = [*save_figures(histories, summary, config.out), save_balance_figure(balance, config.out)]
    path = write_results(results, config.out)
    log(format_table(summary))
    log("gradient balance, second half of training (mean over seeds):\n" + format_balance_table(summary["arms"]))
    log(f"wrote {path}, {', '.join(str(f) for f in figures)} in {time.perf_counter() - started:.0f} s")
    return results
