"""``balanced-l1 compare``: train the same detector once per arm and seed, evaluate, report.

For every seed, each arm starts from the same initial weights (``torch.manual_seed(seed)`` before the
model is built), sees the same images in the same order with the same flips, and draws from the same
RNG streams; only the arm's ``configure`` differs. What it writes to ``--out``, and where, is
:mod:`~balanced_l1.experiments.output_folder.layout`'s.

Every file is written atomically; ``results.json`` is written last, and one left by an earlier run is
removed before training starts. ``--resume`` reuses finished runs and checkpoints only if their
fingerprint (every setting that changes the result, and a hash of the data) matches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from balanced_l1.detection.balance_prediction import roi_box_loss
from balanced_l1.detection.box_loss import BoxLossConfig
from balanced_l1.detection.models import build_detector
from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.config import CompareConfig, as_dict
from balanced_l1.experiments.config.checks import ConfigError
from balanced_l1.experiments.config.toml_files import to_toml
from balanced_l1.experiments.data.coco_data import format_data_report
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.output_folder.errors import RunMismatchError
from balanced_l1.experiments.output_folder.files import (
    read_record,
    read_sample,
    remove_results,
    write_config,
    write_results,
)
from balanced_l1.experiments.output_folder.layout import AP_CURVE_FIGURE, DETECTIONS_FIGURE, RunFiles
from balanced_l1.experiments.output_folder.lock import exclusive_out
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
from balanced_l1.experiments.report.summary import ap_points, format_table, save_figures, summarize
from balanced_l1.experiments.report.verdict import compare_to_baseline, verdict_lines
from balanced_l1.experiments.run.checkpoint import load_checkpoint
from balanced_l1.experiments.run.distributed import (
    DistContext,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from balanced_l1.experiments.run.runner import (
    build_arm_model,
    load_data,
    run_fingerprint,
    run_one,
    train_config,
)
from balanced_l1.experiments.run.train import TrainConfig, validation_curve
from balanced_l1.experiments.run.trained_model import load_run_model


def _check_resumable(
    config: CompareConfig, specs: list[ArmSpec], splits: dict[str, DetectionSplit], ctx: DistContext
) -> None:
    for arm in specs:
        for seed in config.seeds:
            files = RunFiles.of(config.out, arm, seed)
            fingerprint = run_fingerprint(config, splits, arm, seed)
            if files.record.exists():
                if read_record(files.record)["fingerprint"] != fingerprint:
                    raise RunMismatchError(
                        f"{files.record}: finished by a run with other settings or data; this run has {fingerprint}. "
                        "Use another --out or run without --resume to start over."
                    )
            elif files.checkpoint.exists():
                load_checkpoint(files.checkpoint, fingerprint, ctx.world_size)


def _check_arms_fit_model(
    config: CompareConfig, specs: list[ArmSpec], num_classes: int
) -> dict[str, BoxLossConfig | None]:
    """Configure every arm on the model once (random backbone, nothing downloaded) before any training.

    Returns:
        Each arm's RoI-head box loss as configured (``None`` for a model without a RoI head).
    """
    state = torch.get_rng_state()
    try:
        return {
            arm.name: roi_box_loss(build_arm_model(config, num_classes, arm, weights_backbone="none")) for arm in specs
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
        balanced_l1.experiments.output_folder.errors.OutputFolderError: when ``--resume`` finds another run's
            checkpoint or run record, or one that cannot be read.
        balanced_l1.detection.models.BackboneWeightsError: when backbone weights cannot be had (before ``config.out``
            is touched).
        balanced_l1.experiments.run.train.TrainingDivergedError: when a run's loss stops being finite.
    """
    started = time.perf_counter()
    ctx = setup_distributed(config.device)
    try:
        specs = config.validate(ctx.world_size)
        # Everything else that can refuse the settings, before --out is touched: reading the data (read-only), every
        # arm configured on the model once, the schedule's length in iterations. Every rank checks, as it validates.
        splits = load_data(config)
        box_losses = _check_arms_fit_model(config, specs, len(splits["train"].category_ids))
        _check_backbone_weights(config, len(splits["train"].category_ids))
        tc = train_config(config, len(splits["train"]))
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
            return _compare(config, specs, tc, ctx, log, started, splits, box_losses)
    finally:
        teardown_distributed(ctx)


def _compare(
    config: CompareConfig,
    specs: list[ArmSpec],
    tc: TrainConfig,
    ctx: DistContext,
    log: Callable[[str], None],
    started: float,
    splits: dict[str, DetectionSplit],
    box_losses: dict[str, BoxLossConfig | None],
) -> dict[str, Any] | None:
    if ctx.is_main:
        log(format_data_report(splits))
    if config.resume:
        _check_resumable(config, specs, splits, ctx)
    if ctx.is_main:  # a results.json left by an earlier run must not pass for this run's before it ends
        remove_results(config.out)
        write_config(to_toml(config), config.out)
    runs, histories, balance = _gather_runs(config, ctx, splits, tc, specs)
    if not ctx.is_main:
        return None
    baseline = specs[0]
    summary = summarize(runs, baseline.name, {spec.name: spec.description for spec in specs})
    verdicts = compare_to_baseline(ap_points(summary["arms"]), baseline.name)
    samples = [read_sample(RunFiles.of(config.out, baseline, seed).roi_sample) for seed in config.seeds]
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
        *_save_pictures(config, splits, specs, histories, ctx.device),
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


def _gather_runs(
    config: CompareConfig,
    ctx: DistContext,
    splits: dict[str, DetectionSplit],
    tc: TrainConfig,
    specs: list[ArmSpec],
) -> tuple[
    dict[str, dict[int, dict[str, Any]]], dict[str, dict[int, list[dict[str, float]]]], dict[str, dict[int, Series]]
]:
    """Train every run not finished yet (in this process, or in ``--jobs`` worker processes) and gather each run's
    metrics and gradient-balance summary, loss history and gradient-balance series, per arm and seed."""
    names = [spec.name for spec in specs]
    runs: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in names}
    histories: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in names}
    balance: dict[str, dict[int, Series]] = {arm: {} for arm in names}
    tasks = [(spec, seed) for seed in config.seeds for spec in specs]
    todo = [t for t in tasks if not (config.resume and RunFiles.of(config.out, *t).record.exists())]
    parallel = config.jobs > 1 and not ctx.distributed and len(todo) > 1
    if parallel:
        from balanced_l1.experiments.run.parallel import run_in_processes

        run_in_processes(config, [(spec.name, seed) for spec, seed in todo], config.jobs)
    for spec, seed in tasks:
        record: dict[str, Any] | None
        if parallel:
            record = read_record(RunFiles.of(config.out, spec, seed).record)
        else:
            record = run_one(config, ctx, splits, tc, spec, seed)
        if record is not None:
            runs[spec.name][seed] = {**record["metrics"], **run_summary(record["gradient_balance"])}
            histories[spec.name][seed] = record["history"]
            balance[spec.name][seed] = record["gradient_balance"]
    return runs, histories, balance


def _save_pictures(
    config: CompareConfig,
    splits: dict[str, DetectionSplit],
    specs: list[ArmSpec],
    histories: dict[str, dict[int, list[dict[str, float]]]],
    device: torch.device,
) -> list[Path]:
    """``detections.png`` (each arm's first-seed model on the first held-out images) and, when runs validated during
    training, ``ap_curve.png``."""
    from balanced_l1.experiments.report.pictures import save_ap_curve_figure, save_detections_figure

    out = Path(config.out)
    written = []
    curves = {arm: {s: validation_curve(h) for s, h in by_seed.items()} for arm, by_seed in histories.items()}
    curves = {arm: {s: c for s, c in by_seed.items() if c} for arm, by_seed in curves.items()}
    if any(curves.values()):
        written.append(save_ap_curve_figure({arm: c for arm, c in curves.items() if c}, out / AP_CURVE_FIGURE))
    models = {}
    for spec in specs:
        record = RunFiles.of(out, spec, config.seeds[0]).record
        models[spec.name] = load_run_model(config, spec, read_record(record), record, device)
    written.append(save_detections_figure(splits["val"], models, out / DETECTIONS_FIGURE, device))
    return written
