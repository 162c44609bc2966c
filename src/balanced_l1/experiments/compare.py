"""``balanced-l1 compare``: train the same detector once per arm and seed, evaluate, report.

For every seed, each arm starts from the same initial weights (``torch.manual_seed(seed)`` before the
model is built), sees the same images in the same order with the same flips, and draws from the same
RNG streams; only the arm's ``configure`` differs. Output folder ``--out``::

    config.toml         the resolved settings (``--print-config``'s format, read back by ``--config``), written first
    log.txt             progress lines of every run (appended; see :mod:`~balanced_l1.experiments.runlog`)
    results.json        settings, per-arm metrics per seed, mean and std, paired differences
    loss_curves.png     training loss per arm
    ap_vs_iou.png       AP against IoU threshold 0.50..0.95 per arm
    gradient_balance.png  the gradient-balance statistics over training per arm (the paper's 0.3 marked)
    balance_vs_ap.png   each arm's AP against its RoI inlier/outlier and box/cls gradient ratios
    detections.png      the first 4 held-out images: ground truth and each arm's detections (first seed)
    ap_curve.png        AP on the held-out split during training per arm (only with --eval-every)
    runs/<arm>_seed<s>.json        one finished run: its fingerprint, metrics, loss history, gradient balance,
                                   validations during training and the number of classes
    runs/<arm>_seed<s>_model.pt    its final weights, a plain state_dict (``load_trained_model``)
    runs/<arm>_seed<s>_roi_sample.npy  a bounded sample of its RoI head's positives (``balanced-l1 balance``)
    checkpoints/<arm>_seed<s>.pt   the latest checkpoint of that run (for --resume)
    tensorboard/<arm>_seed<s>/     TensorBoard event files of that run (only with --tensorboard)
    evaluate/           written by ``balanced-l1 evaluate`` only (its results.json, show/ pictures)

``<arm>`` is the arm's canonical name as a file name (:attr:`~balanced_l1.experiments.arm_specs.ArmSpec.file_stem`).

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balanced_l1._files import (
    UnreadableFileError,
    open_regular_file,
    remove_stale_temp_files,
    write_atomically,
    write_json_atomically,
)
from balanced_l1.detection.balance_prediction import roi_box_loss
from balanced_l1.detection.box_loss import BoxLossConfig
from balanced_l1.detection.gradient_balance import GradientBalanceMonitor
from balanced_l1.detection.zoo import build_detector
from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.balance import (
    Series,
    format_balance_table,
    run_summary,
    save_balance_figure,
    save_balance_vs_ap_figure,
)
from balanced_l1.experiments.checkpoint import CheckpointMismatchError, load_checkpoint
from balanced_l1.experiments.coco_data import (
    DetectionSplit,
    format_data_report,
    load_coco_dataset,
    load_coco_folder,
)
from balanced_l1.experiments.config import MAX_ITERS, CompareConfig, ConfigError, as_dict, to_toml
from balanced_l1.experiments.distributed import (
    DistContext,
    barrier,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from balanced_l1.experiments.evaluate import evaluate_detector
from balanced_l1.experiments.explain import (
    explain_balance,
    explain_plateau,
    format_prediction_table,
    predict_from_baseline,
)
from balanced_l1.experiments.report import format_table, save_figures, summarize, write_results
from balanced_l1.experiments.runlog import LOG_NAME, TENSORBOARD_FOLDER, LogFile, RunObserver, is_terminal
from balanced_l1.experiments.synthetic import make_synthetic_dataset
from balanced_l1.experiments.train import TrainConfig, train, validation_curve
from balanced_l1.experiments.trained import CONFIG_NAME, model_path, save_model

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
        eval_every=config.eval_every * per_epoch if config.epochs is not None else config.eval_every,
    )


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


_OUTPUT_FILES = (
    "results.json", "loss_curves.png", "ap_vs_iou.png", "gradient_balance.png", "balance_vs_ap.png", "config.toml",
    "log.txt", "detections.png", "ap_curve.png",
)  # fmt: skip
_OUTPUT_FOLDERS = ("runs", "checkpoints", "tensorboard", "evaluate")
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
    _check_no_link_out(out)
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"out {out}: the output folder is not writable")


def _check_no_link_out(out: Path) -> None:
    """Raise ConfigError if a path this run writes or reads in ``out`` is a symbolic link leading out of it.

    ``out`` itself may be a link (the user named it); inside it, nothing followed may lead elsewhere: the output
    files, ``runs/`` and ``checkpoints/`` and every entry in them (a link that stays inside ``out`` is allowed).
    """
    from balanced_l1._files import link_leaving

    entries = [out / name for name in (*_OUTPUT_FILES, *_OUTPUT_FOLDERS)]
    entries += [entry for name in _OUTPUT_FOLDERS if (out / name).is_dir() for entry in sorted((out / name).iterdir())]
    for entry in entries:
        target = link_leaving(out, entry)
        if target is not None:
            raise ConfigError(
                f"out {out}: {entry} is a symbolic link that leads out of the output folder (to {target}); "
                "this run follows no link out of --out: remove it or choose another --out"
            )


def _open_lock(out: Path) -> Any:
    """Open (create) ``out``'s lock file for appending: never through a symbolic link, never a FIFO or device."""
    from balanced_l1._files import file_kind

    lock = out / LOCK_NAME
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        kind = file_kind(os.lstat(lock).st_mode)
    except FileNotFoundError:
        kind = None
    except OSError as err:
        raise ConfigError(f"out {out}: cannot write to the output folder ({err.strerror or err})") from None
    try:
        if kind is not None:
            raise ConfigError(
                f"out {out}: {lock} is {kind}, not a regular file; this run opens no link, FIFO or device there: "
                "remove it"
            )
        fd = os.open(lock, flags, 0o666)
    except OSError as err:  # a link or FIFO put there after the check: O_NOFOLLOW and O_NONBLOCK refuse it
        raise ConfigError(f"out {out}: cannot open the lock file {lock} ({err.strerror or err})") from None
    kind = file_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise ConfigError(f"out {out}: {lock} is {kind}, not a regular file; remove it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a")


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
    handle = _open_lock(out)  # held open for the whole run
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


def _paths(config: CompareConfig, arm: ArmSpec, seed: int) -> tuple[Path, Path]:
    out = Path(config.out)
    stem = f"{arm.file_stem}_seed{seed}"
    return out / "runs" / f"{stem}.json", out / "checkpoints" / f"{stem}.pt"


def roi_sample_path(config: CompareConfig, arm: ArmSpec, seed: int) -> Path:
    """Where a finished run keeps its sample of RoI-head positives (an ``.npy`` of float64, ``(K, 12)``)."""
    record, _ = _paths(config, arm, seed)
    return record.with_name(record.stem + "_roi_sample.npy")


def _read_record(path: Path) -> dict[str, Any]:
    """A finished run's record, checked (a regular file of bounded size, every field of its type)."""
    from balanced_l1._files import UnreadableFileError, read_regular_file
    from balanced_l1.experiments.checkpoint import MAX_RECORD_BYTES, run_record_problem

    try:
        why = "see balanced_l1.experiments.checkpoint.MAX_RECORD_BYTES"
        record = json.loads(read_regular_file(path, MAX_RECORD_BYTES, "finished-run record", why=why).decode())
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


def _check_resumable(config: CompareConfig, splits: dict[str, DetectionSplit], ctx: DistContext) -> None:
    for arm in config.arm_specs():
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


def _check_arms_fit_model(config: CompareConfig, num_classes: int) -> dict[str, BoxLossConfig | None]:
    """Configure every arm on the model once (random backbone, nothing downloaded) before any training.

    Returns:
        Each arm's RoI-head box loss as configured (``None`` for a model without a RoI head).
    """
    state = torch.get_rng_state()
    try:
        return {
            arm.name: roi_box_loss(_build(config, num_classes, arm, weights_backbone="none"))
            for arm in config.arm_specs()
        }
    finally:
        torch.set_rng_state(state)


def _read_sample(path: Path) -> np.ndarray:
    """A finished run's RoI sample (empty when the file is missing: a run record from an earlier version)."""
    if not path.exists():
        return np.zeros((0, 12))
    try:
        with open_regular_file(path, 64 * 2**20, "RoI sample", why="a run keeps at most 4096 rows") as handle:
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
    _run_one(config, ctx, splits, train_config(config, len(splits["train"])), spec, seed, position=position)


def _run_one(
    config: CompareConfig,
    ctx: DistContext,
    splits: dict[str, DetectionSplit],
    tc: TrainConfig,
    arm: ArmSpec,
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


def _write_text(text: str, path: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def _save_array(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run the comparison described by ``config``; validate everything that can be before any training.

    Args:
        config: the settings.
        log: where rank 0 prints its summary lines.

    Returns:
        The content of ``results.json`` on rank 0, ``None`` on other ranks.

    Raises:
        ConfigError: for a bad setting, or an arm that does not fit the model (before ``config.out`` is touched).
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
        # Everything else that can refuse the settings, before --out is touched: reading the data (read-only), every
        # arm configured on the model once, the schedule's length in iterations. Every rank checks, as it validates.
        splits = load_data(config)
        box_losses = _check_arms_fit_model(config, len(splits["train"].category_ids))
        train_config(config, len(splits["train"]))
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
            return _compare(config, ctx, log, started, splits, box_losses)
    finally:
        teardown_distributed(ctx)


def _compare(
    config: CompareConfig,
    ctx: DistContext,
    log: Callable[[str], None],
    started: float,
    splits: dict[str, DetectionSplit],
    box_losses: dict[str, BoxLossConfig | None],
) -> dict[str, Any] | None:
    if ctx.is_main:
        log(format_data_report(splits))
    specs = config.arm_specs()
    tc = train_config(config, len(splits["train"]))
    if config.resume:
        _check_resumable(config, splits, ctx)
    if ctx.is_main:  # a results.json left by an earlier run must not pass for this run's before it ends
        (Path(config.out) / "results.json").unlink(missing_ok=True)
        write_atomically(Path(config.out) / CONFIG_NAME, partial(_write_text, to_toml(config)))
    names = [spec.name for spec in specs]
    runs: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in names}
    histories: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in names}
    balance: dict[str, dict[int, Series]] = {arm: {} for arm in names}
    tasks = [(spec, seed) for seed in config.seeds for spec in specs]
    todo = [t for t in tasks if not (config.resume and _paths(config, *t)[0].exists())]
    parallel = config.jobs > 1 and not ctx.distributed and len(todo) > 1
    if parallel:
        from balanced_l1.experiments.parallel import run_in_processes

        run_in_processes(config, [(spec.name, seed) for spec, seed in todo], config.jobs)
    for spec, seed in tasks:
        record: dict[str, Any] | None
        if parallel:
            record = _read_record(_paths(config, spec, seed)[0])
        else:
            record = _run_one(config, ctx, splits, tc, spec, seed)
        if record is not None:
            runs[spec.name][seed] = {**record["metrics"], **run_summary(record["gradient_balance"])}
            histories[spec.name][seed] = record["history"]
            balance[spec.name][seed] = record["gradient_balance"]
    if not ctx.is_main:
        return None
    baseline = specs[0]
    summary = summarize(runs, baseline.name, {spec.name: spec.description for spec in specs})
    samples = [_read_sample(roi_sample_path(config, baseline, seed)) for seed in config.seeds]
    predicted = predict_from_baseline(samples, box_losses)
    settings = {**as_dict(config), "iters_resolved": tc.iters, "world_size": ctx.world_size}
    results = {
        "config": settings,
        "data": {n: s.report for n, s in splits.items()},
        **summary,
        "predicted_from_baseline": predicted,
    }
    figures = [
        *save_figures(histories, summary, config.out),
        save_balance_figure(balance, config.out),
        save_balance_vs_ap_figure(summary["arms"], config.out),
        *_save_pictures(config, splits, specs, histories, ctx.device, log),
    ]
    path = write_results(results, config.out)
    log(format_table(summary))
    log("gradient balance, second half of training (mean over seeds):\n" + format_balance_table(summary["arms"]))
    if predicted:
        log(
            f"RoI-head gradient balance predicted from {baseline.name}'s regression errors (second half of its "
            "training), beside what each arm measured:\n" + format_prediction_table(predicted, summary["arms"])
        )
    for line in [*explain_balance(summary["arms"], baseline.name), *explain_plateau(histories, tc.iters)]:
        log(line)
    log(f"wrote {path}, {', '.join(str(f) for f in figures)} in {time.perf_counter() - started:.0f} s")
    return results


def _save_pictures(
    config: CompareConfig,
    splits: dict[str, DetectionSplit],
    specs: list[ArmSpec],
    histories: dict[str, dict[int, list[dict[str, float]]]],
    device: torch.device,
    log: Callable[[str], None],
) -> list[Path]:
    """``detections.png`` (each arm's first-seed model on the first held-out images) and, when runs validated during
    training, ``ap_curve.png``."""
    from balanced_l1.experiments.pictures import save_ap_curve_figure, save_detections_figure
    from balanced_l1.experiments.trained import _load

    out = Path(config.out)
    written = []
    curves = {arm: {s: validation_curve(h) for s, h in by_seed.items()} for arm, by_seed in histories.items()}
    curves = {arm: {s: c for s, c in by_seed.items() if c} for arm, by_seed in curves.items()}
    if any(curves.values()):
        written.append(save_ap_curve_figure({arm: c for arm, c in curves.items() if c}, out / "ap_curve.png"))
    seed = config.seeds[0]
    models = {}
    for spec in specs:
        record_path = _paths(config, spec, seed)[0]
        try:
            models[spec.name] = _load(config, spec, _read_record(record_path), record_path, device)
        except CheckpointMismatchError as err:  # a run finished by an older version has no weights
            log(f"detections.png leaves out {spec.name}: {err}")
    if models:
        written.append(save_detections_figure(splits["val"], models, out / "detections.png", device))
    return written
