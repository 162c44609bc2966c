"""The settings of ``balanced-l1 tune`` beyond those of ``compare``, and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from balanced_l1.experiments.arm_specs import ArmSpec, ArmSpecError, parse_arm
from balanced_l1.experiments.arms import BASELINE_ARM
from balanced_l1.experiments.config import MAX_SEED, CompareConfig
from balanced_l1.experiments.config.checks import ConfigError
from balanced_l1.experiments.output_folder.layout import STUDY_DATABASE
from balanced_l1.experiments.tune.space import SearchSpace, default_space, parse_space

__all__ = ["PRUNERS", "SAMPLERS", "TuneSettings"]

SAMPLERS = ("tpe", "grid")
PRUNERS = ("successive-halving", "hyperband", "none")
#: Upper bounds, each far above a real study's value: a mistyped value is refused instead of running for ever.
MAX_TRIALS = 10_000
MAX_TIMEOUT = 30 * 24 * 3600
MAX_CONFIRM = 20
MAX_HEARTBEAT = 3600
MAX_STUDY_NAME = 128
MAX_VALIDATION_IMAGES = 1_000_000
DEFAULT_STUDY = "balanced-l1-tune"


@dataclass(frozen=True)
class TuneSettings:
    """What a tune adds to the settings of ``compare`` (which give the data, model, schedule and ``--seeds``).

    Attributes:
        space: ``--space`` text, ``None`` for every box-loss arm within its declared ranges.
        sampler: ``tpe`` (seeded by ``sampler_seed``) or ``grid`` (``--arms`` crossed with ``--seeds``).
        sampler_seed: the TPE sampler's seed.
        pruner: ``successive-halving``, ``hyperband`` or ``none``, on the AP of each ``--eval-every`` point.
        trials: search trials (besides the baseline and the confirmation); ``None`` with a ``timeout``.
        timeout: seconds after which this worker starts no new search trial.
        storage: the study's database URL, ``None`` for ``OUT/study.db``.
        study: the study's name.
        baseline: the baseline arm spec.
        confirm: how many of the best settings are rerun on ``confirm_seeds`` with the baseline.
        confirm_seeds: the seeds of the confirmation runs.
        heartbeat: seconds between a running trial's heartbeats (a trial silent for twice that is retried).
        validation_images: held-out images (the first ones) scored at each intermediate validation.
    """

    space: str | None = None
    sampler: str = "tpe"
    sampler_seed: int = 0
    pruner: str = "successive-halving"
    trials: int | None = None
    timeout: float | None = None
    storage: str | None = None
    study: str = DEFAULT_STUDY
    baseline: str = BASELINE_ARM
    confirm: int = 2
    confirm_seeds: tuple[int, ...] = (1, 2)
    heartbeat: int = 60
    validation_images: int = 50

    def storage_url(self, config: CompareConfig) -> str:
        """The database URL: ``--storage``, or SQLite in ``OUT/study.db``."""
        if self.storage is not None:
            return self.storage
        return f"sqlite:///{Path(config.out).resolve() / STUDY_DATABASE}"

    def search_space(self) -> SearchSpace:
        """The space ``--space`` names, or the default one."""
        try:
            return default_space() if self.space is None else parse_space(self.space)
        except ArmSpecError as err:
            raise ConfigError(str(err)) from None

    def baseline_spec(self) -> ArmSpec:
        """The baseline arm, with its parameters."""
        try:
            specs = parse_arm(self.baseline)
        except ArmSpecError as err:
            raise ConfigError(f"baseline: {err}") from None
        if len(specs) != 1:
            raise ConfigError(f"baseline {self.baseline!r} names {len(specs)} arms (a grid); name one arm")
        return specs[0]

    def validate(self, config: CompareConfig) -> None:
        """Check every tune setting against the compare settings, before anything is read or written.

        Raises:
            ConfigError: naming the setting, its value and what is allowed.
        """
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        self._validate_budget()
        if not 0 <= self.sampler_seed <= MAX_SEED:
            raise ConfigError(f"sampler_seed must be between 0 and {MAX_SEED}, got {self.sampler_seed}")
        if not 1 <= self.heartbeat <= MAX_HEARTBEAT:
            raise ConfigError(f"heartbeat must be between 1 and {MAX_HEARTBEAT} seconds, got {self.heartbeat}")
        if not 1 <= self.validation_images <= MAX_VALIDATION_IMAGES:
            raise ConfigError(
                f"validation_images must be between 1 and {MAX_VALIDATION_IMAGES}, got {self.validation_images}"
            )
        if not self.study or len(self.study) > MAX_STUDY_NAME or not self.study.isprintable():
            raise ConfigError(f"study must be 1 to {MAX_STUDY_NAME} printable characters, got {self.study[:40]!r}")
        self._validate_confirm(config)
        self.baseline_spec()
        if self.sampler == "grid":
            if self.space is not None:
                raise ConfigError("--space is for the TPE sampler; a grid is given with --arms (a|b makes a grid)")
        else:
            self.search_space()
        if self.storage is not None:
            from balanced_l1.experiments.tune.study import check_storage_url

            check_storage_url(self.storage)
        if config.eval_every == 0 and self.pruner != "none":
            raise ConfigError(
                f"pruner {self.pruner!r} prunes on the AP at each --eval-every point: give --eval-every, or "
                "--pruner none"
            )

    def _validate_budget(self) -> None:
        if self.trials is not None and not 1 <= self.trials <= MAX_TRIALS:
            raise ConfigError(f"trials must be between 1 and {MAX_TRIALS}, got {self.trials}")
        if self.timeout is not None and not 0 < self.timeout <= MAX_TIMEOUT:
            raise ConfigError(f"timeout must be > 0 and at most {MAX_TIMEOUT} seconds (30 days), got {self.timeout}")
        if self.sampler == "grid" and self.trials is not None:
            raise ConfigError("--trials is for the TPE sampler; a grid runs each of its points once")
        if self.sampler == "tpe" and self.trials is None and self.timeout is None:
            raise ConfigError("give a budget: --trials N and/or --timeout SECONDS")

    def _validate_confirm(self, config: CompareConfig) -> None:
        if not 0 <= self.confirm <= MAX_CONFIRM:
            raise ConfigError(f"confirm must be between 0 and {MAX_CONFIRM}, got {self.confirm}")
        if self.confirm == 0:
            return
        seeds = self.confirm_seeds
        if not seeds or len(set(seeds)) != len(seeds) or any(not 0 <= s <= MAX_SEED for s in seeds):
            raise ConfigError(f"confirm_seeds must be distinct seeds between 0 and {MAX_SEED}, got {list(seeds)}")
        searched = config.seeds if self.sampler == "grid" else config.seeds[:1]
        overlap = sorted(set(seeds) & set(searched))
        if overlap:
            raise ConfigError(
                f"confirm_seeds {list(seeds)} repeat the search's seed(s) {overlap}; the confirmation needs new seeds"
            )
