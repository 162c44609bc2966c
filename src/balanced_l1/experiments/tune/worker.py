"""``balanced-l1 tune``: a worker of a study, on one machine (one process, or every rank of a ``torchrun`` job).

Every worker runs the same command. It checks the settings, opens (or creates) the study, and then claims
trials until none is left: first the baseline, search and grid trials, then, once no search trial waits or runs
anywhere, the confirmation runs. At the end it writes the study's outputs to its own ``--out``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.arms import get_arm
from balanced_l1.experiments.config import CompareConfig
from balanced_l1.experiments.config.checks import ConfigError
from balanced_l1.experiments.config.toml_files import to_toml
from balanced_l1.experiments.output_folder.files import write_config
from balanced_l1.experiments.output_folder.layout import LOG_NAME
from balanced_l1.experiments.output_folder.lock import exclusive_out
from balanced_l1.experiments.run.distributed import (
    DistContext,
    barrier,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from balanced_l1.experiments.run.runlog import LogFile
from balanced_l1.experiments.run.runner import build_arm_model, load_data, run_fingerprint, train_config
from balanced_l1.experiments.tune import study as studies
from balanced_l1.experiments.tune.settings import TuneSettings
from balanced_l1.experiments.tune.study import BASELINE, CONFIRM, GRID, SEARCH, StudyPlan
from balanced_l1.experiments.tune.trial import TrialJob, TrialOutcome, first_images, run_trial

__all__ = ["ranked_settings", "run_tune"]

_SEARCH_ROLES = (BASELINE, SEARCH, GRID)


def _plan(config: CompareConfig, settings: TuneSettings, baseline: ArmSpec, grid: list[str]) -> StudyPlan:
    seeds = config.seeds if settings.sampler == "grid" else config.seeds[:1]
    points = tuple((arm, seed) for seed in seeds for arm in grid if (arm, seed) != (baseline.name, seeds[0]))
    ranks = range(settings.confirm + 1) if settings.confirm else range(0)
    return StudyPlan(
        baseline=baseline.name,
        seed=config.seeds[0],
        search_trials=settings.trials if settings.sampler == "tpe" else 0,
        grid=points,
        confirm_slots=tuple((rank, seed) for seed in settings.confirm_seeds for rank in ranks),
    )


def _fingerprint(
    config: CompareConfig, settings: TuneSettings, splits: dict[str, Any], baseline: ArmSpec, space: str
) -> dict[str, Any]:
    """What every worker of a study must share: the settings that change a run and the data (as a run's fingerprint
    has them), ``eval_every`` (the pruner's rungs) and the study's design."""
    run = run_fingerprint(config, splits, baseline, config.seeds[0])
    design = {
        "space": space, "sampler": settings.sampler, "sampler_seed": settings.sampler_seed,
        "pruner": settings.pruner, "trials": settings.trials, "baseline": settings.baseline,
        "seeds": list(config.seeds), "confirm": settings.confirm, "confirm_seeds": list(settings.confirm_seeds),
        "validation_images": settings.validation_images, "eval_every": config.eval_every,
    }  # fmt: skip
    return {"settings": run["settings"], "data": run["data"], "design": design}


def _sampler(settings: TuneSettings, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    """TPE seeded by ``--sampler-seed`` and the trial's number: workers that each hold a sampler draw different
    settings for different trials (one seed for all would give every worker the same first draws), and the draws of
    a trial are the same whichever worker claims it, given the same finished trials."""
    return optuna.samplers.TPESampler(seed=(settings.sampler_seed + trial_number) % 2**32)


def _pruner(settings: TuneSettings, first_point: int, iters: int) -> optuna.pruners.BasePruner:
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_point, max_resource=iters)
    if settings.pruner == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_point)
    return optuna.pruners.NopPruner()


def _check_arms_fit(config: CompareConfig, num_classes: int, specs: list[ArmSpec]) -> None:
    state = torch.get_rng_state()
    try:
        for spec in specs:
            build_arm_model(config, num_classes, spec, weights_backbone="none")
    finally:
        torch.set_rng_state(state)


def run_tune(
    config: CompareConfig, settings: TuneSettings, log: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """Work on the study ``settings`` describe until it is done, then write its outputs to ``config.out``.

    Returns:
        The content of ``tune.json`` on rank 0, ``None`` on other ranks.

    Raises:
        ConfigError: for a bad setting, or a study created with other settings (nothing trained).
        balanced_l1.experiments.tune.study.StorageError: if the study's database cannot be used.
        balanced_l1.experiments.data.coco_data.DataError: for bad data.
        balanced_l1.experiments.run.checkpoint.CheckpointMismatchError: for a run of other settings in ``--out``.
    """
    started = time.monotonic()
    ctx = setup_distributed(config.device)
    try:
        specs = config.validate(ctx.world_size)
        settings.validate(config)
        splits = load_data(config)
        baseline = settings.baseline_spec()
        space = None if settings.sampler == "grid" else settings.search_space()
        grid_specs = specs if space is None else []
        if space is None and baseline.name not in [s.name for s in grid_specs]:
            grid_specs.insert(0, baseline)
        checked = [baseline, *grid_specs, *(ArmSpec(get_arm(a.arm)) for a in (space.arms if space else ()))]
        _check_arms_fit(config, len(splits["train"].category_ids), checked)
        tc = train_config(config, len(splits["train"]))
        grid = [s.name for s in grid_specs]
        plan = _plan(config, settings, baseline, grid)
        fingerprint = _fingerprint(config, settings, splits, baseline, space.describe() if space else ",".join(grid))
        with contextlib.ExitStack() as stack:
            study, error = None, None
            if ctx.is_main:
                try:
                    study = _open(config, settings, stack, fingerprint, plan, tc)
                except (ConfigError, studies.StorageError) as err:
                    error = err
            errors = [e for e in gather_objects(ctx, error) if e is not None]
            if errors:
                raise errors[0]
            worker = _Worker(config, settings, ctx, study, started, log)
            worker.work(splits, tc, baseline, space, grid)
            results = None
            if study is not None:
                from balanced_l1.experiments.tune.outputs import write_outputs

                results = write_outputs(study, config, settings, baseline.name, log)
        barrier(ctx)  # every rank leaves the process group together, once rank 0 has written the outputs
        return results
    finally:
        teardown_distributed(ctx)


def _open(
    config: CompareConfig,
    settings: TuneSettings,
    stack: contextlib.ExitStack,
    fingerprint: dict[str, Any],
    plan: StudyPlan,
    tc: Any,
) -> optuna.Study:
    url = settings.storage_url(config)
    storage = studies.open_storage(url, settings.heartbeat) if settings.storage is not None else None
    stack.enter_context(exclusive_out(Path(config.out)))
    if storage is None:
        storage = studies.open_storage(url, settings.heartbeat)
    first = tc.eval_every or tc.iters
    study = studies.open_study(
        storage,
        settings.study,
        fingerprint,
        plan,
        sampler=_sampler(settings),
        pruner=_pruner(settings, first, tc.iters),
    )
    write_config(to_toml(config), config.out)
    return study


class _Worker:
    """The claim-run-tell loop of one worker; rank 0 claims and tells, every rank trains."""

    def __init__(
        self,
        config: CompareConfig,
        settings: TuneSettings,
        ctx: DistContext,
        study: optuna.Study | None,
        started: float,
        log: Callable[[str], None],
    ) -> None:
        self.config, self.settings, self.ctx, self.study, self.log = config, settings, ctx, study, log
        self.deadline = None if settings.timeout is None else started + settings.timeout
        self.poll = max(0.2, min(5.0, settings.heartbeat / 4))
        self.durations: list[float] = []

    def work(
        self,
        splits: dict[str, Any],
        tc: Any,
        baseline: ArmSpec,
        space: Any,
        grid: list[str],
    ) -> None:
        subset = first_images(splits["val"], self.settings.validation_images)
        prune = self.settings.pruner != "none"
        while True:
            job = gather_objects(self.ctx, self._next_job() if self.ctx.is_main else None)[0]
            if job is None:
                return
            if job == "wait":
                continue
            trial = None
            if self.study is not None:
                self.study.sampler = _sampler(self.settings, studies.trial_number(self.study, job.trial_id))
                trial = optuna.Trial(self.study, job.trial_id)
            begun = time.monotonic()
            with (
                studies.heartbeat(self.study, job.trial_id, self.settings.heartbeat)
                if self.study
                else contextlib.nullcontext()
            ):
                try:
                    outcome = run_trial(
                        trial, job, config=self.config, ctx=self.ctx, splits=splits, tc=tc, baseline=baseline,
                        space=space, grid=grid, subset=subset, prune=prune,
                    )  # fmt: skip
                except Exception as err:
                    if trial is not None:
                        self._tell(trial, job, TrialOutcome(TrialState.FAIL, None, None, str(err)))
                    raise
            self.durations.append(time.monotonic() - begun)
            if trial is not None:
                self._tell(trial, job, outcome)

    def _time_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _next_job(self) -> TrialJob | str | None:
        study = self.study
        assert study is not None
        studies.fail_stale_trials(study)  # a dead worker's trial goes back to the queue, whatever this one does next
        if not self._time_up():
            claimed = studies.claim_trial(study, _SEARCH_ROLES)
            if claimed is None and self.settings.trials is None and self.settings.sampler == "tpe":
                study.enqueue_trial({}, user_attrs={"role": SEARCH, "seed": self.config.seeds[0]})
                return "wait"
            if claimed is not None:
                return self._job(claimed)
        if self._running(_SEARCH_ROLES):
            time.sleep(self.poll)
            return "wait"
        if self.settings.confirm:
            claimed = studies.claim_trial(study, (CONFIRM,))
            if claimed is not None:
                return self._confirm_job(claimed)
            if self._running((CONFIRM,)):
                time.sleep(self.poll)
                return "wait"
        return None

    def _running(self, roles: tuple[str, ...]) -> bool:
        assert self.study is not None
        return any(t.state == TrialState.RUNNING for t in studies.trials_of(self.study, *roles))

    def _job(self, trial: FrozenTrial) -> TrialJob:
        role = trial.user_attrs["role"]
        rank = trial.user_attrs.get("rank")
        return TrialJob(
            trial._trial_id, trial.number, role, int(trial.user_attrs["seed"]), role == BASELINE or rank == 0
        )

    def _confirm_job(self, trial: FrozenTrial) -> TrialJob | str:
        assert self.study is not None
        rank = int(trial.user_attrs["rank"])
        if rank > 0 and not trial.params and not trial.system_attrs.get("fixed_params"):
            ranked = ranked_settings(self.study)
            if rank > len(ranked):
                reason = f"only {len(ranked)} setting(s) finished the search; nothing to confirm as number {rank}"
                studies.fail_claimed(self.study, trial, reason)
                return "wait"
            studies.fix_params(self.study, trial, ranked[rank - 1][1])
        return self._job(trial)

    def _tell(self, trial: optuna.Trial, job: TrialJob, outcome: TrialOutcome) -> None:
        assert self.study is not None
        if outcome.arm is not None:
            trial.set_user_attr("arm", outcome.arm)
        if outcome.reason is not None:
            trial.set_user_attr("reason", outcome.reason)
        if outcome.state == TrialState.COMPLETE:
            self.study.tell(trial, outcome.value)
        else:
            self.study.tell(trial, state=outcome.state)
        self.log(self._line(job, outcome))

    def _line(self, job: TrialJob, outcome: TrialOutcome) -> str:
        assert self.study is not None
        trials = studies.trials_of(self.study)
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("role") in _SEARCH_ROLES]
        best = max(done, key=lambda t: t.value or 0.0, default=None)
        left = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
        mean = sum(self.durations) / len(self.durations)
        ap = "n/a" if outcome.value is None else f"{outcome.value:.4f}"
        best_text = (
            "none yet" if best is None else f"{best.value:.4f} (trial {best.number}, {best.user_attrs.get('arm')})"
        )
        why = f" ({outcome.reason})" if outcome.reason and outcome.state != TrialState.PRUNED else ""
        line = (
            f"trial {job.number} [{job.role}] {outcome.arm or '?'} seed {job.seed}: AP {ap}, "
            f"{outcome.state.name.lower()}{why}; best {best_text}; {left} trial(s) left, about "
            f"{left * mean / 60:.1f} min at this worker's {mean:.0f} s per trial"
        )
        with LogFile(Path(self.config.out) / LOG_NAME) as logfile:
            logfile.line(line)
        return line


def ranked_settings(study: optuna.Study) -> list[tuple[str, dict[str, Any]]]:
    """The finished search or grid settings other than the baseline, best mean AP first: ``(arm, params)``."""
    finished = [
        t for t in studies.trials_of(study, SEARCH, GRID) if t.state == TrialState.COMPLETE and t.value is not None
    ]
    baseline = next((t.user_attrs.get("arm") for t in studies.trials_of(study, BASELINE)), None)
    values: dict[str, list[float]] = {}
    params: dict[str, dict[str, Any]] = {}
    for trial in finished:
        arm = trial.user_attrs.get("arm")
        if arm is None or arm == baseline:
            continue
        values.setdefault(arm, []).append(float(trial.value))  # type: ignore[arg-type]
        params.setdefault(arm, dict(trial.params))
    order = sorted(values, key=lambda arm: -sum(values[arm]) / len(values[arm]))
    return [(arm, params[arm]) for arm in order]
