"""The settings of ``balanced-l1 compare``: one dataclass, recipes and config files, validation.

:class:`CompareConfig` is the only home of every setting and its default; the command line is derived
from its fields (:mod:`balanced_l1.cli`), and so are ``--print-config`` and the TOML files. Settings
are resolved in layers, each overriding the one before, as mmdetection's configs are:

1. the dataclass defaults (the embedded default run: a small model, a few CPU minutes);
2. ``--recipe NAME``: a TOML file shipped in ``balanced_l1/experiments/recipes/`` (``coco-1x``: the
   paper's schedule as mmdetection runs it);
3. ``--config FILE``: the user's own TOML file, with the same keys;
4. the flags given on the command line.

The training length is ``iters`` or ``epochs``, never both: a layer that sets one of them clears the
other, so ``--recipe coco-1x --iters 200`` trains 200 iterations instead of the recipe's 12 epochs.

This module is the schema (:class:`CompareConfig`, :func:`resolve`); the bounds and path checks are in
:mod:`~balanced_l1.experiments.config.checks`, the recipes, config files and ``to_toml`` in
:mod:`~balanced_l1.experiments.config.toml_files`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from balanced_l1.detection.models import DETECTORS
from balanced_l1.experiments.arm_specs import ArmSpec, ArmSpecError, TooManyArmsError, expand_arms
from balanced_l1.experiments.config.checks import (
    INT_BOUNDS,
    MAX_EPOCHS,
    MAX_LR,
    MAX_RUNS,
    MAX_SEED,
    MAX_SEEDS,
    MAX_SYNTHETIC_BYTES,
    RUNS_WHY,
    SEED_WHY,
    ConfigError,
    check_choice_setting,
    check_int,
    check_no_nul,
    check_out_folder,
    check_weights_file,
    check_writable_in_toml,
    tensorboard_problem,
)

MODELS = DETECTORS  # the one list of models: the detectors balanced_l1.detection.models builds
LR_SCHEDULES = ("cosine", "step")
LENGTH_KEYS = ("iters", "epochs")
_COCO_KEYS = ("train_ann", "train_root", "val_ann", "val_root")


def import_arm_modules(modules: tuple[str, ...]) -> None:
    """Import the modules that register arms of the user's own (they call ``register_arm`` when imported).

    Raises:
        ConfigError: for a name that is not a dotted module name, or a module that fails to import.
    """
    for name in modules:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"arm_modules: {name!r} is not a Python module name such as my_arms or pkg.arms")
        try:
            importlib.import_module(name)
        except Exception as err:  # any error of the user's module is a bad setting, reported with its cause
            raise ConfigError(f"arm_modules: cannot import {name!r} ({type(err).__name__}: {err})") from None


def arm_spec(name: str) -> ArmSpec:
    """The one arm ``name`` stands for (``balanced_l1``, ``balanced_l1(alpha=0.3)``; no grid): a run's arm, as its
    record and a worker process's task name it (its modules already imported: :func:`import_arm_modules`).

    Raises:
        ConfigError: for an unknown arm, a bad spec or a grid.
    """
    try:
        specs = expand_arms((name,))
    except ArmSpecError as err:
        raise ConfigError(f"arm {name!r}: {err}") from None
    if len(specs) != 1:
        raise ConfigError(f"arm {name!r} is a grid of {len(specs)} arms; name one of them")
    return specs[0]


def _setting(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class CompareConfig:
    """Everything one comparison depends on; each field's ``help`` is also its command-line help."""

    # what is compared
    arms: tuple[str, ...] = _setting(
        ("smooth_l1", "balanced_l1"),
        "comma-separated arms to train and compare, each NAME or NAME(key=value,...); a|b|c in a value makes a grid",
    )
    arm_modules: tuple[str, ...] = _setting(
        (), "comma-separated Python modules that register arms of your own (every process imports them)"
    )
    seeds: tuple[int, ...] = _setting((0,), "comma-separated training seeds; every arm trains once per seed")
    # data
    data: str | None = _setting(None, "COCO-format folder PATH/annotations/{train,val}.json + PATH/images/")
    train_ann: str | None = _setting(None, "COCO annotation file of the training split (with --train-root)")
    train_root: str | None = _setting(None, "image folder of the training split (COCO's train2017/)")
    val_ann: str | None = _setting(None, "COCO annotation file of the held-out split (with --val-root)")
    val_root: str | None = _setting(None, "image folder of the held-out split (COCO's val2017/)")
    follow_symlinks: bool = _setting(
        False,
        "read images that are symbolic links, or lie below a folder under the image root that is one, wherever the "
        "link leads; without it any link below the image root stops the run",
    )
    train_images: int = _setting(1024, "images of the embedded synthetic training split")
    val_images: int = _setting(200, "images of the embedded synthetic held-out split")
    image_size: int = _setting(96, "side of the embedded synthetic images in pixels")
    data_seed: int = _setting(0, "seed of the embedded synthetic data set")
    # model
    model: str = _setting("small", "detector to train", choices=MODELS)
    weights_backbone: str = _setting(
        "none", "backbone initialisation: none, DEFAULT (torchvision's ImageNet weights) or a local file"
    )
    min_size: int | None = _setting(
        None, "torchvision resize: shorter side", shown_default="--image-size for small, else 800"
    )
    max_size: int | None = _setting(
        None, "torchvision resize: longer side cap", shown_default="--image-size for small, else 1333"
    )
    # schedule
    iters: int | None = _setting(800, "training iterations (global batches) per run; or give --epochs")
    epochs: int | None = _setting(None, "training epochs per run, instead of --iters")
    batch_size: int = _setting(8, "images per global batch (split over processes under torchrun)")
    lr: float = _setting(0.04, "peak SGD learning rate")
    momentum: float = _setting(0.9, "SGD momentum")
    weight_decay: float = _setting(1e-4, "SGD weight decay")
    warmup_iters: int = _setting(50, "linear warm-up iterations")
    warmup_factor: float = _setting(0.001, "learning-rate factor at the start of the warm-up")
    lr_schedule: str = _setting(
        "cosine", "after the warm-up: cosine (to 5%) or step (see --lr-steps)", choices=LR_SCHEDULES
    )
    lr_steps: tuple[int, ...] = _setting(
        (),
        "step schedule: the LR drops 10x after each of these epochs (an epoch: ceil(images / batch) iterations)",
    )
    grad_clip: float = _setting(10.0, "maximum global gradient norm; 0 turns clipping off")
    hflip: float = _setting(0.0, "probability of a horizontal flip of each training image")
    amp: bool = _setting(False, "mixed precision: float16 autocast with a GradScaler on CUDA, bfloat16 on CPU")
    # running
    out: str = _setting("compare_out", "output folder")
    device: str = _setting("cpu", "cpu, cuda or cuda:N")
    resume: bool = _setting(False, "continue from the checkpoints and finished runs in --out")
    threads: int = _setting(1, "torch CPU threads per process (1 is steadiest on shared cores)")
    workers: int = _setting(0, "DataLoader worker processes per training process")
    jobs: int = _setting(2, "trainings run side by side, each in its own process (ignored under torchrun)")
    checkpoint_every: int = _setting(20, "iterations between checkpoints")
    balance_every: int = _setting(
        10, "measure the box/classification gradient balance every this many iterations (the rest: every one)"
    )
    # reporting while training (none of these changes what a run computes)
    eval_every: int = _setting(
        0,
        "score AP on the held-out split every this many iterations (epochs when --epochs is given) during "
        "training, recorded per run and drawn in ap_curve.png; 0: only at the end",
    )
    log_every: int = _setting(
        50, "iterations between progress lines in OUT/log.txt (and on stderr when it is not a terminal)"
    )
    tensorboard: bool = _setting(
        False,
        "write TensorBoard event files to OUT/tensorboard/ (needs the tensorboard extra: pip install -e "
        "'.[tensorboard]' in the repository's clone)",
    )

    @property
    def uses_coco_files(self) -> bool:
        """Whether the data are given as annotation files and image roots (COCO's own layout)."""
        return any(getattr(self, key) is not None for key in _COCO_KEYS)

    @property
    def uses_synthetic_data(self) -> bool:
        """Whether the embedded synthetic set is used."""
        return self.data is None and not self.uses_coco_files

    def resize(self) -> tuple[int, int]:
        """The ``(min_size, max_size)`` torchvision's transform resizes to, defaults filled in."""
        small = self.model == "small"
        min_size = self.min_size if self.min_size is not None else (self.image_size if small else 800)
        max_size = self.max_size if self.max_size is not None else (self.image_size if small else 1333)
        return min_size, max_size

    def arm_specs(self) -> list[ArmSpec]:
        """The arms to train, grids expanded, after importing :attr:`arm_modules`.

        Raises:
            ConfigError: for a module that cannot be imported, a bad arm spec, an arm named twice, or more arms than
                make :data:`~balanced_l1.experiments.config.checks.MAX_RUNS` runs with the seeds.
        """
        import_arm_modules(self.arm_modules)
        seeds = max(len(self.seeds), 1)
        try:
            return expand_arms(self.arms, max_arms=MAX_RUNS // seeds)
        except TooManyArmsError:
            raise ConfigError(
                f"arms x seeds: more than {MAX_RUNS // seeds} arms (grids expanded) x {len(self.seeds)} seed(s) "
                f"come to more than {MAX_RUNS} runs, the limit ({RUNS_WHY})"
            ) from None
        except ArmSpecError as err:
            raise ConfigError(f"arms: {err}") from None

    def validate(self, world_size: int = 1) -> list[ArmSpec]:
        """Check every setting that does not need the data.

        Args:
            world_size: number of processes the global batch is split over.

        Returns:
            The arms to train (:meth:`arm_specs`), parsed here once for the caller to pass on.

        Raises:
            ConfigError: naming the setting, its value and what is allowed.
        """
        specs = self.validate_settings(world_size)
        in_script = [s.name for s in specs if getattr(s.arm.configure, "__module__", None) == "__main__"]
        if in_script and self.jobs > 1 and len(specs) * len(self.seeds) > 1:
            raise ConfigError(
                f"arms {', '.join(in_script)} are registered in the script being run, which worker processes cannot "
                "import: register them in a module named in arm_modules (--arm-modules), or use --jobs 1"
            )
        self._validate_weights()
        self._validate_paths()
        self._validate_reporting()
        return specs

    def validate_settings(self, world_size: int = 1) -> list[ArmSpec]:
        """Check the settings by themselves, as a run's (``OUT/config.toml``) are checked before they are used again:
        every bound, the arms, the data keys, the schedule and the model, but not what :meth:`validate` adds for a new
        run (the backbone file, ``out`` and the machine's packages).

        Args:
            world_size: number of processes the global batch is split over.

        Returns:
            The arms, grids expanded.

        Raises:
            ConfigError: naming the setting, its value and what is allowed.
        """
        if not self.arms:
            raise ConfigError("arms must be a non-empty list, got []")
        self._validate_sizes()
        specs = self.arm_specs()
        self._validate_data()
        self._validate_schedule(world_size)
        check_choice_setting("model", self.model, MODELS)
        min_size, max_size = self.resize()
        if max_size < min_size:
            raise ConfigError(f"max_size {max_size} must be >= min_size {min_size}")
        for name in FIELDS:  # every setting can be written to OUT/config.toml (and --print-config) and read back
            check_writable_in_toml(name, getattr(self, name))
        return specs

    def _validate_reporting(self) -> None:
        """eval_every >= 0, log_every >= 1, and --tensorboard only with the tensorboard package installed."""
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {self.log_every}")
        if self.tensorboard:
            problem = tensorboard_problem()
            if problem is not None:
                raise ConfigError(problem)

    def _validate_sizes(self) -> None:
        """Every count and size within its bound (:data:`INT_BOUNDS`), the seeds among them."""
        if len(self.seeds) > MAX_SEEDS:
            raise ConfigError(
                f"seeds: at most {MAX_SEEDS} seeds, got {len(self.seeds)} (every arm trains once per seed)"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be non-negative integers without repeats, got {list(self.seeds)}")
        too_large = [s for s in self.seeds if s > MAX_SEED]
        if too_large:
            raise ConfigError(f"seeds must be <= {MAX_SEED}, got {too_large[0]} ({SEED_WHY})")
        for name in INT_BOUNDS:
            value = getattr(self, name)
            if value is not None:
                check_int(name, value)
        if any(step > MAX_EPOCHS for step in self.lr_steps):
            raise ConfigError(
                f"lr_steps must be <= {MAX_EPOCHS} (epochs), got {max(self.lr_steps)} ({INT_BOUNDS['epochs'][2]})"
            )
        if self.uses_synthetic_data:
            size = (self.train_images + self.val_images) * self.image_size**2 * 3
            if size > MAX_SYNTHETIC_BYTES:
                raise ConfigError(
                    f"train_images {self.train_images} + val_images {self.val_images} synthetic images of "
                    f"{self.image_size}x{self.image_size} pixels take {size} bytes of memory, over the limit of "
                    f"{MAX_SYNTHETIC_BYTES >> 30} GiB (they are generated up front and kept in memory): "
                    "give fewer images or a smaller image_size"
                )

    def _validate_weights(self) -> None:
        """weights_backbone: none; DEFAULT or a local file only for torchvision's models (the file must be there)."""
        weights = self.weights_backbone
        if not weights:
            raise ConfigError("weights_backbone must be none, DEFAULT or the path of a local file, got ''")
        if weights == "none":
            return
        if self.model == "small":
            raise ConfigError(
                f"weights_backbone {weights!r}: the small model is built from scratch and takes only 'none'; "
                f"DEFAULT (torchvision's ImageNet weights) or a weights file is for the models {', '.join(MODELS[1:])}"
            )
        if weights != "DEFAULT":
            check_weights_file(weights)

    def _validate_paths(self) -> None:
        """No path holds a NUL; --out names a folder whose name fits the file system, outside the data folders."""
        for name in (*_COCO_KEYS, "data"):
            value = getattr(self, name)
            if value is not None:
                check_no_nul(name, value)
        check_out_folder(  # tensorboard/<run>/<events>
            "out", self.out, self.data_folders(), inside=len("/tensorboard"), names_below=2
        )

    def data_folders(self) -> tuple[str, ...]:
        """The folders the data are read from: ``data``, or the image roots of the COCO files (none for the
        synthetic data)."""
        return tuple(f for f in (self.data, self.train_root, self.val_root) if f is not None)

    def _validate_data(self) -> None:
        given = [key for key in _COCO_KEYS if getattr(self, key) is not None]
        if self.data is not None and given:
            flags = ", ".join("--" + key.replace("_", "-") for key in given)
            raise ConfigError(f"give either data (a folder) or the annotation files and image roots, not both: {flags}")
        if given and len(given) != len(_COCO_KEYS):
            missing = ", ".join("--" + key.replace("_", "-") for key in _COCO_KEYS if key not in given)
            raise ConfigError(
                f"COCO files need all of --train-ann --train-root --val-ann --val-root; missing {missing}"
            )

    def _validate_schedule(self, world_size: int) -> None:
        if (self.iters is None) == (self.epochs is None):
            raise ConfigError(f"give exactly one of iters and epochs, got iters={self.iters}, epochs={self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be finite and > 0, got {self.lr}")
        if self.lr > MAX_LR:
            raise ConfigError(
                f"lr must be <= {MAX_LR:g}, got {self.lr:g} (detection trains at 0.02 per 16 images, 5.12 at a batch "
                "of 4096; a far larger step overflows the float32 weights in the first SGD update)"
            )
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if not (math.isfinite(self.warmup_factor) and 0.0 < self.warmup_factor <= 1.0):
            raise ConfigError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        check_choice_setting("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if list(self.lr_steps) != sorted(set(self.lr_steps)) or any(s < 1 for s in self.lr_steps):
            raise ConfigError(f"lr_steps must be increasing positive integers, got {list(self.lr_steps)}")
        if self.lr_steps and self.lr_schedule != "step":
            raise ConfigError(f"lr_steps {list(self.lr_steps)} need lr_schedule 'step', got {self.lr_schedule!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ConfigError(f"grad_clip must be finite and >= 0 (0: off), got {self.grad_clip}")
        if not (math.isfinite(self.hflip) and 0.0 <= self.hflip <= 1.0):
            raise ConfigError(f"hflip must be a probability in [0, 1], got {self.hflip}")
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} must be divisible by the number of processes {world_size}")


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in fields(CompareConfig)}
DEFAULTS = CompareConfig()


def resolve(layers: list[Mapping[str, Any]]) -> CompareConfig:
    """Merge setting layers over the defaults, later layers winning (see the module docstring).

    Args:
        layers: partial settings, lowest priority first (recipe, config file, flags).

    Returns:
        The resolved settings (not yet validated).

    Raises:
        ConfigError: for an unknown key, or a layer that sets both ``iters`` and ``epochs``.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        unknown = sorted(set(layer) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
        lengths = [k for k in LENGTH_KEYS if layer.get(k) is not None]
        if len(lengths) > 1:
            raise ConfigError(f"give iters or epochs, not both (got iters={layer['iters']}, epochs={layer['epochs']})")
        if lengths:
            merged.update(dict.fromkeys(LENGTH_KEYS))
        merged.update(layer)
    return dataclasses.replace(DEFAULTS, **merged)


def as_dict(config: CompareConfig) -> dict[str, Any]:
    """The settings as JSON-friendly values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
