"""``balanced-l1 compare``: train the same detector once per arm and seed, evaluate, report.

For every seed, each arm starts from the same initial weights (``torch.manual_seed(seed)`` before the
model is built), sees the same images in the same order with the same flips, and draws from the same
RNG streams; only the arm's ``configure`` differs. Output folder ``--out``::

    config.toml         the resolved settings (``--print-config``'s format, read back by ``--config``), written first
    log.txt             progress lines of every run (appended; see :mod:`~balanced_l1.experiments.run.runlog`)
    results.json        settings, per-arm metrics per seed, mean and std, paired differences, the verdict
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
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from balanced_l1._files import (
    write_atomically,
)
from balanced_l1.detection.balance_prediction import roi_box_loss
from balanced_l1.detection.box_loss import BoxLossConfig
from balanced_l1.detection.models import build_detector
from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.config import CompareConfig, ConfigError, as_dict, to_toml
from balanced_l1.experiments.data.coco_data import (
    DetectionSplit,
    format_data_report,
)
from balanced_l1.experiments.output_folder import LOCK_NAME, exclusive_out
from balanced_l1.experiments.report.balance import (
    Series,
    explain_balance,
    format_balance_table,
    run_summary,
    save_balance_figure,
    save_balance_vs_ap_figure,
)
from balanced_l1.experiments.report.plateau import explain_plateau
from balanced_l1.experiments.report.predicted_balance import format_prediction_table, predict_from_baseline
from balanced_l1.experiments.report.summary import ap_points, format_table, save_figures, summarize, write_results
from balanced_l1.experiments.report.verdict import compare_to_baseline, verdict_lines
from balanced_l1.experiments.run.checkpoint import CheckpointMismatchError, load_checkpoint
from balanced_l1.experiments.run.distributed import (
    DistContext,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from balanced_l1.experiments.run.runner import (
    build_arm_model,
    load_data,
    read_record,
    read_sample,
    roi_sample_path,
    run_fingerprint,
    run_one,
    run_paths,
    run_single,
    train_config,
)
from balanced_l1.experiments.run.train import validation_curve
from balanced_l1.experiments.run.trained import CONFIG_NAME

__all__ = ["LOCK_NAME", "load_data", "roi_sample_path", "run_compare", "run_fingerprint", "run_single", "train_config"]


def _check_resumable(config: CompareConfig, splits: dict[str, DetectionSplit], ctx: DistContext) -> None:
    for arm in config.arm_specs():
        for seed in config.seeds:
            record_path, ckpt = run_paths(config, arm, seed)
            fingerprint = run_fingerprint(config, splits, arm, seed)
            if record_path.exists():
                if read_record(record_path)["fingerprint"] != fingerprint:
                    raise CheckpointMismatchError(
                        f"{record_path}: finished by a run with other settings or data; this run has {fingerprint}. "
                        "Use another --out or run without --resume to start over."
                    )
            elif ckpt.exists():
                load_checkpoint(ckpt, fingerprint, ctx.world_size)


def _check_arms_fit_model(config: CompareConfig, num_classes: int) -> dict[str, BoxLossConfig | None]:
    """Configure every arm on the model once (random backbone, nothing downloaded) before any training.

    Returns:
        Each arm's RoI-head box loss as configured (``None`` for a model without a RoI head).
    """
    state = torch.get_rng_state()
    try:
        return {
            arm.name: roi_box_loss(build_arm_model(config, num_classes, arm, weights_backbone="none"))
            for arm in config.arm_specs()
        }
    finally:
        torch.set_rng_state(state)


def _check_backbone_weights(config: CompareConfig, num_classes: int) -> None:
    """Build the detector once with the backbone weights the runs will start from, so that a file that is not a
    plain-data state_dict of the backbone, or DEFAULT weights that cannot be downloaded, are refused
    (:class:`~balanced_l1.detection.models.BackboneWeightsError`) before ``config.out`` is touched."""
    if config.weights_backbone == "none":
        return
    min_size, max_size = config.resize()
    state = torch.get_rng_state()
    try:
        build_detector(
            config.model, num_classes, weights_backbone=config.weights_backbone, min_size=min_size, max_size=max_size
        )
    finally:
        torch.set_rng_state(state)


def _write_text(text: str, path: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run the comparison described by ``config``; validate everything that can be before any training.

    Args:
        config: the settings.
        log: where rank 0 prints its summary lines.

    Returns:
        The content of ``results.json`` on rank 0, ``None`` on other ranks.

    Raises:
        ConfigError: for a bad setting, or an arm that does not fit the model (before ``config.out`` is touched).
        balanced_l1.experiments.data.coco_data.DataError: for bad data, or an image that cannot be read (a
            ``ValueError``).
        balanced_l1.experiments.run.checkpoint.CheckpointMismatchError: when ``--resume`` finds another run's checkpoint
            or run record, or one that cannot be read.
        balanced_l1.detection.models.BackboneWeightsError: when backbone weights cannot be had (before ``config.out``
            is touched).
        balanced_l1.experiments.run.train.TrainingDivergedError: when a run's loss stops being finite.
    """
    started = time.perf_counter()
    ctx = setup_distributed(config.device)
    try:
        config.validate(ctx.world_size)
        # Everything else that can refuse the settings, before --out is touched: reading the data (read-only), every
        # arm configured on the model once, the schedule's length in iterations. Every rank checks, as it validates.
        splits = load_data(config)
        box_losses = _check_arms_fit_model(config, len(splits["train"].category_ids))
        _check_backbone_weights(config, len(splits["train"].category_ids))
        train_config(config, len(splits["train"]))
        with contextlib.ExitStack() as stack:
            error = None
            if ctx.is_main:
                try:
                    stack.enter_context(exclusive_out(Path(config.out)))
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
    todo = [t for t in tasks if not (config.resume and run_paths(config, *t)[0].exists())]
    parallel = config.jobs > 1 and not ctx.distributed and len(todo) > 1
    if parallel:
        from balanced_l1.experiments.run.parallel import run_in_processes

        run_in_processes(config, [(spec.name, seed) for spec, seed in todo], config.jobs)
    for spec, seed in tasks:
        record: dict[str, Any] | None
        if parallel:
            record = read_record(run_paths(config, spec, seed)[0])
        else:
            record = run_one(config, ctx, splits, tc, spec, seed)
        if record is not None:
            runs[spec.name][seed] = {**record["metrics"], **run_summary(record["gradient_balance"])}
            histories[spec.name][seed] = record["history"]
            balance[spec.name][seed] = record["gradient_balance"]
    if not ctx.is_main:
        return None
    baseline = specs[0]
    summary = summarize(runs, baseline.name, {spec.name: spec.description for spec in specs})
    verdicts = compare_to_baseline(ap_points(summary["arms"]), baseline.name)
    samples = [read_sample(roi_sample_path(config, baseline, seed)) for seed in config.seeds]
    predicted = predict_from_baseline(samples, box_losses)
    settings = {**as_dict(config), "iters_resolved": tc.iters, "world_size": ctx.world_size}
    results = {
        "config": settings,
        "data": {n: s.report for n, s in splits.items()},
        **summary,
        "verdict": [v.as_dict() for v in verdicts],
        "predicted_from_baseline": predicted,
    }
    figures = [
        *save_figures(histories, summary, config.out),
        save_balance_figure(balance, config.out),
        save_balance_vs_ap_figure(summary["arms"], config.out),
        *_save_pictures(config, splits, specs, histories, ctx.device, log),
    ]
    path = write_results(results, config.out)
    log("\n".join([format_table(summary), *verdict_lines(verdicts)]))
    log("gradient balance, second half of training (mean over seeds):\n" + format_balance_table(summary["arms"]))
    if predicted:
        log(
            f"RoI-head gradient balance predicted from {baseline.name}'s regression errors (second half of its "
            "training), beside what each arm measured:\n" + format_prediction_table(predicted, summary["arms"])
        )
    for line in [
        *explain_balance(summary["arms"], baseline.name),
        *explain_plateau(histories, tc.iters, tc.lr_schedule, tc.lr_steps),
    ]:
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
    from balanced_l1.experiments.report.pictures import save_ap_curve_figure, save_detections_figure
    from balanced_l1.experiments.run.trained import _load

    out = Path(config.out)
    written = []
    curves = {arm: {s: validation_curve(h) for s, h in by_seed.items()} for arm, by_seed in histories.items()}
    curves = {arm: {s: c for s, c in by_seed.items() if c} for arm, by_seed in curves.items()}
    if any(curves.values()):
        written.append(save_ap_curve_figure({arm: c for arm, c in curves.items() if c}, out / "ap_curve.png"))
    seed = config.seeds[0]
    models = {}
    for spec in specs:
        record_path = run_paths(config, spec, seed)[0]
        try:
            models[spec.name] = _load(config, spec, read_record(record_path), record_path, device)
        except CheckpointMismatchError as err:  # a run finished by an older version has no weights
            log(f"detections.png leaves out {spec.name}: {err}")
    if models:
        written.append(save_detections_figure(splits["val"], models, out / "detections.png", device))
    return written
