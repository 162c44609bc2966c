"""One trial of ``balanced-l1 tune``: one run of ``compare``'s runner, reporting its AP at each validation point.

A trial trains with :func:`balanced_l1.experiments.run.runner.run_one`, as ``compare`` does: the same fingerprint,
the same files under ``OUT/runs/``, and ``--resume``'s rule (a finished run is read back, a checkpoint continued),
so a trial that ``compare`` would also run gives the same AP. What differs is only what is scored during training:
the first ``validation_images`` held-out images, whose AP goes to the pruner. The final AP is the whole held-out
split's, as ``compare`` scores it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from balanced_l1.experiments.arm_specs import ArmSpec, parse_arm
from balanced_l1.experiments.config import CompareConfig
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.output_folder.errors import RunMismatchError
from balanced_l1.experiments.output_folder.files import read_record
from balanced_l1.experiments.output_folder.layout import RunFiles
from balanced_l1.experiments.report.balance import run_summary
from balanced_l1.experiments.run.distributed import DistContext
from balanced_l1.experiments.run.runner import run_fingerprint, run_one
from balanced_l1.experiments.run.train import TrainConfig, TrainingDivergedError, TrainingStoppedError
from balanced_l1.experiments.tune.space import SearchSpace
from balanced_l1.experiments.tune.study import BASELINE, CONFIRM

__all__ = ["TrialJob", "TrialOutcome", "first_images", "run_trial"]


@dataclass(frozen=True)
class TrialJob:
    """What rank 0 tells every rank about the trial it claimed.

    Attributes:
        trial_id: the trial's id in the storage.
        number: the trial's number in the study.
        role: ``baseline``, ``search``, ``grid`` or ``confirm``.
        seed: the run's seed.
        is_baseline: whether the trial runs the baseline arm (the baseline trial, or its confirmation runs).
    """

    trial_id: int
    number: int
    role: str
    seed: int
    is_baseline: bool


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended (on rank 0).

    Attributes:
        state: complete, pruned or failed.
        value: the final AP (complete), the last intermediate AP (pruned), or ``None``.
        arm: the arm's canonical name, ``None`` if none could be drawn.
        reason: why a failed trial failed.
    """

    state: TrialState
    value: float | None
    arm: str | None
    reason: str | None = None


def first_images(split: DetectionSplit, count: int) -> DetectionSplit:
    """The first ``count`` images of ``split`` (all of it if it has fewer): what intermediate validations score."""
    if count >= len(split):
        return split
    samples = split.samples
    end = int(samples.offsets[count])
    kept = dataclasses.replace(
        samples,
        image_ids=samples.image_ids[:count],
        boxes=samples.boxes[:end],
        labels=samples.labels[:end],
        offsets=samples.offsets[: count + 1],
    )
    ids = {int(i) for i in kept.image_ids}
    coco = {
        **split.coco,
        "images": [info for info in split.coco["images"] if int(info["id"]) in ids],
        "annotations": [a for a in split.coco["annotations"] if int(a["image_id"]) in ids],
    }
    return dataclasses.replace(split, coco=coco, samples=kept, fingerprint=f"{split.fingerprint}:first{count}")


def _spec(trial: Any, job: TrialJob, baseline: ArmSpec, space: SearchSpace | None, grid: list[str]) -> ArmSpec:
    if job.is_baseline:
        return baseline
    if space is None:  # a grid study: the arm is the trial's one parameter
        return parse_arm(str(trial.suggest_categorical("arm", grid)))[0]
    return space.suggest(trial)


def _check_finished_run(config: CompareConfig, splits: dict[str, DetectionSplit], arm: ArmSpec, seed: int) -> None:
    record_path = RunFiles.of(config.out, arm, seed).record
    if record_path.exists():
        fingerprint = run_fingerprint(config, splits, arm, seed)
        if read_record(record_path)["fingerprint"] != fingerprint:
            raise RunMismatchError(
                f"{record_path}: finished by a run with other settings or data; choose another --out"
            )


def run_trial(
    trial: optuna.Trial | None,
    job: TrialJob,
    *,
    config: CompareConfig,
    ctx: DistContext,
    splits: dict[str, DetectionSplit],
    tc: TrainConfig,
    baseline: ArmSpec,
    space: SearchSpace | None,
    grid: list[str],
    subset: DetectionSplit,
    prune: bool,
) -> TrialOutcome:
    """Run one trial on every rank; rank 0 alone talks to the study (``trial`` is ``None`` on the others).

    Under ``torchrun`` the trial is wrapped in Optuna's ``TorchDistributedTrial``: every rank gets rank 0's
    parameters and rank 0's prune decision.

    Returns:
        How the trial ended (meaningful on rank 0).

    Raises:
        RunMismatchError, ImageReadError: as ``compare`` raises them (the trial is failed first).
    """
    shared: Any = trial
    if ctx.distributed:
        from optuna_integration import TorchDistributedTrial

        shared = TorchDistributedTrial(trial if ctx.is_main else None)
    try:
        arm = _spec(shared, job, baseline, space, grid)
    except ValueError as err:
        return TrialOutcome(TrialState.FAIL, None, None, f"the drawn parameters are refused: {err}")
    last: list[float] = []

    def on_validation(iteration: int, ap: float | None) -> bool:
        shared.report(ap if ap is not None else 0.0, iteration)  # rank 0's AP is the one recorded
        if ap is not None:
            last.append(ap)
        stop = bool(shared.should_prune())  # asked on every trial, so its AP takes part in the pruner's rungs
        return stop and prune and job.role not in (BASELINE, CONFIRM)

    run_config = dataclasses.replace(config, resume=True)
    try:
        _check_finished_run(run_config, splits, arm, job.seed)
        record = run_one(
            run_config, ctx, splits, tc, arm, job.seed, validation_split=subset, on_validation=on_validation
        )
    except TrainingStoppedError as stopped:
        return TrialOutcome(TrialState.PRUNED, last[-1] if last else None, arm.name, f"pruned at {stopped.iteration}")
    except TrainingDivergedError as err:
        return TrialOutcome(TrialState.FAIL, None, arm.name, str(err))
    if record is None:
        return TrialOutcome(TrialState.COMPLETE, None, arm.name)
    if trial is not None:
        balance = run_summary(record["gradient_balance"])
        trial.set_user_attr("gradient_balance", _json_safe(balance))
    return TrialOutcome(TrialState.COMPLETE, float(record["metrics"]["AP"]), arm.name)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
