"""``balanced-l1 evaluate``: score every finished run of an output folder again, from its saved weights.

:func:`evaluate_out` scores the runs on their held-out split or on another one, after checking that each run is
one of ``OUT/config.toml``'s settings and data (its fingerprint, as ``--resume`` checks it). It writes its own
``results.json`` (default ``OUT/evaluate/``), never ``OUT/results.json`` or a run record.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.config import CompareConfig, arm_spec, as_dict
from balanced_l1.experiments.config.checks import ConfigError, check_out_folder
from balanced_l1.experiments.data.coco_data import DataError
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.output_folder.errors import RunsNotFoundError, UnreadableRunFileError
from balanced_l1.experiments.output_folder.files import finished_runs, read_weights, saved_config, write_results
from balanced_l1.experiments.output_folder.layout import EVALUATE_FOLDER, SHOW_FOLDER, RunFiles
from balanced_l1.experiments.output_folder.lock import check_outside_owned
from balanced_l1.experiments.report.balance import format_balance_table, run_summary
from balanced_l1.experiments.report.summary import ap_points, format_table, summarize
from balanced_l1.experiments.report.verdict import compare_to_baseline, verdict_lines
from balanced_l1.experiments.run.evaluate import evaluate_detector
from balanced_l1.experiments.run.runner import load_data, run_fingerprint
from balanced_l1.experiments.run.trained_model import check_fingerprint, load_run_model


@dataclass(frozen=True)
class _Run:
    spec: ArmSpec
    seed: int
    path: Path
    record: dict[str, Any]


def _run_key(record: dict[str, Any], path: Path) -> tuple[str, int]:
    arm, seed = record.get("arm"), record.get("seed")
    if not isinstance(arm, str) or type(seed) is not int:
        raise UnreadableRunFileError(f"{path}: the record names no arm and seed")
    return arm, seed


def _checked_runs(
    config: CompareConfig, records: list[tuple[Path, dict[str, Any]]], splits: dict[str, DetectionSplit]
) -> list[_Run]:
    """The finished runs, each checked against the settings and data, in the settings' arm order (a run of an arm
    the settings do not name last)."""
    known = {spec.name: spec for spec in config.arm_specs()}
    runs = []
    for path, record in records:
        name, seed = _run_key(record, path)
        try:
            spec = known[name] if name in known else arm_spec(name)
        except ConfigError as err:
            raise UnreadableRunFileError(f"{path}: {err}") from None
        check_fingerprint(record, run_fingerprint(config, splits, spec, seed), path)
        model = RunFiles.of_record(path).model
        if not model.exists():
            read_weights(model)  # names the missing file
        runs.append(_Run(spec, seed, path, record))
    order = list(known)
    runs.sort(key=lambda r: (order.index(r.spec.name) if r.spec.name in order else len(order), r.spec.name, r.seed))
    return runs


def _held_out(
    config: CompareConfig, splits: dict[str, DetectionSplit], val_ann: str | None, val_root: str | None
) -> tuple[DetectionSplit, str]:
    if val_ann is None:
        return splits["val"], "the runs' held-out split"
    from balanced_l1.experiments.data.coco_data import load_coco_split

    split = load_coco_split(val_ann, val_root, "val", follow_symlinks=config.follow_symlinks)  # type: ignore[arg-type]
    if split.category_ids != splits["train"].category_ids:
        raise DataError(
            f"{val_ann}: its category ids {split.category_ids} differ from the training split's "
            f"{splits['train'].category_ids}; the models predict the training split's categories"
        )
    return split, f"{val_ann} (images in {val_root})"


def _score(
    config: CompareConfig,
    runs: list[_Run],
    split: DetectionSplit,
    device: torch.device,
    *,
    progress: bool,
    own: bool,
    keep_models: bool,
) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, Any], dict[str, nn.Module]]:
    """Each run's metrics on ``split`` (``own``: the runs' own held-out split): per arm and seed (with the run's
    gradient balance), per run (beside what training recorded), and, if ``keep_models``, each arm's first model."""
    per_arm: dict[str, dict[int, dict[str, Any]]] = {}
    by_run: dict[str, Any] = {}
    first_models: dict[str, nn.Module] = {}
    for run in runs:
        model = load_run_model(config, run.spec, run.record, run.path, device)
        metrics = evaluate_detector(model, split, device=device, workers=config.workers, show_progress=progress)
        assert metrics is not None  # one process
        per_arm.setdefault(run.spec.name, {})[run.seed] = {**metrics, **run_summary(run.record["gradient_balance"])}
        by_run[run.path.stem] = {
            "arm": run.spec.name,
            "seed": run.seed,
            "metrics": metrics,
            "metrics_recorded_by_training": run.record["metrics"] if own else None,
        }
        if keep_models:
            first_models.setdefault(run.spec.name, model)
    return per_arm, by_run, first_models


def _write(
    results: dict[str, Any],
    target: Path,
    split: DetectionSplit,
    models: dict[str, nn.Module],
    device: torch.device,
    show: int,
) -> list[Path]:
    """Write ``target/results.json`` and, with ``show`` > 0, a picture of each of the first ``show`` images of
    ``split`` with each model's detections (``target/show/``)."""
    target.mkdir(parents=True, exist_ok=True)
    written = [write_results(results, target)]
    if show > 0:
        from balanced_l1.experiments.report.pictures import save_image_pictures

        written += save_image_pictures(split, models, target / SHOW_FOLDER, device, show)
    return written


def check_destination(out: Path, dest: Path, config: CompareConfig, val_root: str | None = None) -> None:
    """Raise ConfigError unless ``evaluate`` may write into ``dest``: a folder (or one it can create) with a name
    that fits, outside the data folders (the runs' and ``val_root``) and outside what the comparison keeps in
    ``out`` (see :func:`~balanced_l1.experiments.output_folder.lock.check_outside_owned`).

    Args:
        out: the comparison's output folder.
        dest: where ``evaluate`` writes.
        config: the comparison's settings (for its data folders).
        val_root: another held-out split's image folder, if one is given.

    Raises:
        ConfigError: naming ``--out`` and the reason.
    """
    check_out_folder("--out", str(dest), (*config.data_folders(), val_root), inside=len("/" + SHOW_FOLDER))
    check_outside_owned(out, dest)


def evaluate_out(
    out: str | os.PathLike[str],
    *,
    val_ann: str | None = None,
    val_root: str | None = None,
    show: int = 0,
    dest: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    arm_modules: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``balanced-l1 evaluate``: score every finished run of ``out`` again from its saved weights.

    Every run record in ``OUT/runs`` must carry the fingerprint that ``OUT/config.toml``'s settings and data give
    its arm and seed. Results go to ``dest/results.json`` (default ``OUT/evaluate/``), never to ``OUT/results.json``
    or a run record; the tables are those of ``compare``. With ``show`` > 0, ``dest/show/image<id>.png`` shows
    each of the first ``show`` images of the split with the ground truth and each arm's detections (its lowest
    finished seed).

    Args:
        out: the output folder of ``balanced-l1 compare``.
        val_ann: another held-out split's COCO annotation file (with ``val_root``); default: the runs' own.
        val_root: that split's image folder.
        show: how many images to draw.
        dest: where to write (default ``OUT/evaluate``).
        device: where the models run.
        progress: show a progress bar while predicting.
        log: where the tables go.
        arm_modules: the modules that register the runs' own arms (see
            :func:`~balanced_l1.experiments.output_folder.files.saved_config`).

    Returns:
        The content of ``dest/results.json``.

    Raises:
        ConfigError: for a missing or bad ``config.toml``, or one naming arm modules not in ``arm_modules``; for a
            ``dest`` that is a file, lies under one, has too long a name, lies inside a data folder, is ``out`` itself
            or lies among the comparison's own files (checked before any work).
        RunsNotFoundError: when ``OUT`` holds no finished run.
        RunMismatchError: for a run of other settings or data.
        UnreadableRunFileError: for a run whose record or weights cannot be read.
        DataError: for bad data (a ``ValueError``), or another split whose categories differ.
    """
    root = Path(out)
    target = Path(dest) if dest is not None else root / EVALUATE_FOLDER
    config = saved_config(root, arm_modules)
    check_destination(root, target, config, val_root)
    records = finished_runs(root)
    if not records:
        raise RunsNotFoundError(f"{root}: no finished run (no runs/*.json); train with balanced-l1 compare first")
    splits = load_data(config)
    runs = _checked_runs(config, records, splits)
    split, where = _held_out(config, splits, val_ann, val_root)
    torch_device = torch.device(device)
    per_arm, by_run, first_models = _score(
        config, runs, split, torch_device, progress=progress, own=val_ann is None, keep_models=show > 0
    )
    baseline = next(iter(per_arm))
    summary = summarize(per_arm, baseline, {run.spec.name: run.spec.description for run in runs})
    verdicts = compare_to_baseline(ap_points(summary["arms"]), baseline)
    results = {"out": str(root), "split": where, "data": split.report, "config": as_dict(config), **summary}
    results["verdict"] = [v.as_dict() for v in verdicts]
    results["runs"] = by_run
    written = _write(results, target, split, first_models if show > 0 else {}, torch_device, show)
    log(f"evaluated {len(runs)} finished run(s) of {root} on {where}:")
    log("\n".join([format_table(summary), *verdict_lines(verdicts)]))
    log("gradient balance, second half of training (mean over seeds):\n" + format_balance_table(summary["arms"]))
    shown = ", ".join(str(p) for p in written[:3]) + (f" and {len(written) - 3} more" if len(written) > 3 else "")
    log(f"wrote {shown}")
    return results
