"""The study of ``balanced-l1 tune``: its storage, its plan of trials, and how a worker claims the next one.

The study owns what is tried. When it is created, every trial the plan knows is put in its queue as a waiting
trial: the baseline first, then one slot per search trial of the budget (or every grid point), then one slot per
confirmation run. A worker claims a waiting trial by switching it to running, which the database does for one
worker only, so no trial runs twice and the trial count is the budget whatever the number of workers.

While a worker runs a trial it records a heartbeat; a trial whose heartbeat stops (a killed worker, a lost machine)
is marked failed by the next worker that looks, and Optuna's ``RetryHeartbeatStaleTrialCallback`` puts a copy of it,
with the same parameters, back in the queue.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from balanced_l1.experiments.config.checks import ConfigError

__all__ = [
    "StorageError",
    "StudyPlan",
    "claim_trial",
    "fail_claimed",
    "fail_stale_trials",
    "masked_url",
    "open_storage",
    "open_study",
    "trials_of",
]

#: Roles of the trials of a study (user attribute ``role``).
BASELINE, SEARCH, GRID, CONFIRM = "baseline", "search", "grid", "confirm"
_FINGERPRINT_ATTR = "settings_fingerprint"
_READY_ATTR = "plan_enqueued"
_MAX_RETRY = 3
_CREATE_ATTEMPTS = 5

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StorageError(RuntimeError):
    """The study's database cannot be reached or used; the message holds the URL with its password masked."""


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (SQLAlchemy's own rendering); unparsable text is not shown."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<a storage URL that cannot be parsed>"


def _scrub(text: str, url: str) -> str:
    """``text`` with the password of ``url`` removed wherever a driver's message repeats it."""
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    return text.replace(str(password), "***") if password else text


def check_storage_url(url: str) -> None:
    """Raise ConfigError unless ``url`` is a SQLAlchemy URL of SQLite, PostgreSQL or MySQL whose driver is installed.

    Raises:
        ConfigError: naming the URL (password masked) and what is wrong.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if len(url) > 2048:
        raise ConfigError(f"storage: a URL of {len(url)} characters; at most 2048")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            "storage: not a database URL such as postgresql://user:password@host/db or sqlite:///study.db"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(f"storage {shown}: the database must be sqlite, postgresql or mysql")
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError) as err:
        raise ConfigError(
            f"storage {shown}: its driver is not installed ({err}); for PostgreSQL, pip install -e "
            "'.[postgres]' in a clone of the balanced-l1 repository and write postgresql+psycopg2://..."
        ) from None


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """Connect to the study's database (creating Optuna's tables on first use).

    Args:
        url: a SQLAlchemy URL, checked by :func:`check_storage_url`.
        heartbeat: seconds between a running trial's heartbeats; a trial silent for twice as long is retried.

    Raises:
        StorageError: if the database cannot be reached or used, with the URL (password masked) and the reason.
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat,
                    heartbeat_stale_trial_callback=_retry_callback(),
                )
        except (IntegrityError, ProgrammingError) as err:  # two workers creating Optuna's tables at once
            attempt += 1
            if attempt == _CREATE_ATTEMPTS:
                raise StorageError(f"cannot use the study database {masked_url(url)}: {_reason(err, url)}") from None
            time.sleep(0.5 * attempt)
        except (SQLAlchemyError, OSError, RuntimeError, ValueError) as err:
            raise StorageError(f"cannot use the study database {masked_url(url)}: {_reason(err, url)}") from None


def _reason(err: BaseException, url: str) -> str:
    return _scrub(str(getattr(err, "orig", None) or err).strip().splitlines()[0], url)


def _retry_callback() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # a retry on the same machine resumes from the checkpoint, after the validations already reported
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=_MAX_RETRY, inherit_intermediate_values=True)


@dataclass(frozen=True)
class StudyPlan:
    """The trials a study queues when it is created.

    Attributes:
        baseline: the baseline arm's canonical name (its first trial).
        seed: the seed of the baseline and of every search trial.
        search_trials: search slots (``None``: no fixed number, a worker adds trials until its ``--timeout``).
        grid: the grid's ``(arm, seed)`` points, in order (empty for a search).
        confirm_slots: the confirmation runs, ``(rank, seed)``: rank 0 is the baseline, rank k the k-th best setting.
    """

    baseline: str
    seed: int
    search_trials: int | None
    grid: tuple[tuple[str, int], ...]
    confirm_slots: tuple[tuple[int, int], ...]


def open_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    fingerprint: Mapping[str, Any],
    plan: StudyPlan,
    *,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study with its plan queued, or load it and check it was created with the same settings.

    Raises:
        ConfigError: if the study was created with other settings or data (naming what differs).
        StorageError: if the database fails.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        try:
            study = optuna.create_study(
                storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner
            )
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
            _check_fingerprint(study, name, fingerprint)
            return study
        study.set_user_attr(_FINGERPRINT_ATTR, dict(fingerprint))
        _enqueue(study, plan)
        study.set_user_attr(_READY_ATTR, True)
        return study
    except SQLAlchemyError as err:
        raise StorageError(f"the study database failed: {str(getattr(err, 'orig', err)).splitlines()[0]}") from None


def _check_fingerprint(study: optuna.Study, name: str, fingerprint: Mapping[str, Any]) -> None:
    deadline = time.monotonic() + 60
    while not study.user_attrs.get(_READY_ATTR):  # another worker is creating it right now
        if time.monotonic() > deadline:
            raise ConfigError(f"study {name!r}: its creator never finished queueing its trials; use another --study")
        time.sleep(0.5)
    recorded = study.user_attrs.get(_FINGERPRINT_ATTR, {})
    differ = _differences(recorded, fingerprint)
    if differ:
        raise ConfigError(
            f"study {name!r} was created with other settings or data; this worker differs in: {'; '.join(differ)}. "
            "Run it with the study's settings, or use another --study"
        )


def _differences(recorded: Mapping[str, Any], mine: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(recorded) | set(mine)):
        theirs, ours = recorded.get(key), mine.get(key)
        if isinstance(theirs, Mapping) and isinstance(ours, Mapping):
            found += _differences(theirs, ours, f"{prefix}{key}.")
        elif theirs != ours:
            found.append(f"{prefix}{key} (study: {theirs!r}, here: {ours!r})")
    return found


def _enqueue(study: optuna.Study, plan: StudyPlan) -> None:
    def queue(role: str, seed: int, params: dict[str, Any] | None = None, **attrs: Any) -> None:
        study.enqueue_trial(params or {}, user_attrs={"role": role, "seed": seed, **attrs})

    queue(BASELINE, plan.seed, arm=plan.baseline)
    for arm, seed in plan.grid:
        queue(GRID, seed, {"arm": arm})
    for _ in range(plan.search_trials or 0):
        queue(SEARCH, plan.seed)
    for rank, seed in plan.confirm_slots:
        queue(CONFIRM, seed, rank=rank)


def trials_of(study: optuna.Study, *roles: str) -> list[FrozenTrial]:
    """The study's trials of ``roles`` (every role if none given), in order."""
    trials = study.get_trials(deepcopy=False)
    return [t for t in trials if not roles or t.user_attrs.get("role") in roles]


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat is older than the grace period, which queues their retries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def claim_trial(study: optuna.Study, roles: tuple[str, ...]) -> FrozenTrial | None:
    """Claim the first waiting trial of ``roles``: switch it to running for this worker alone.

    Returns:
        The claimed trial, or ``None`` if none of ``roles`` is waiting.
    """
    storage = study._storage
    for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if trial.user_attrs.get("role") not in roles:
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return storage.get_trial(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def fail_claimed(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Record a claimed trial that cannot run as failed, with ``reason`` (user attribute ``reason``)."""
    study._storage.set_trial_user_attr(trial._trial_id, "reason", reason)
    study.tell(trial.number, state=TrialState.FAIL)


def fix_params(study: optuna.Study, trial: FrozenTrial, params: Mapping[str, Any]) -> None:
    """Fix the parameters a claimed trial will be given (before it is turned into an ``optuna.Trial``)."""
    study._storage.set_trial_system_attr(trial._trial_id, "fixed_params", dict(params))


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial_id: int, interval: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the block runs."""
    stop = threading.Event()
    storage = study._storage

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next; the trial goes on
                storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]

    storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def trial_number(study: optuna.Study, trial_id: int) -> int:
    """The number (0, 1, ...) of the study's trial with storage id ``trial_id``."""
    return int(study._storage.get_trial_number_from_id(trial_id))
