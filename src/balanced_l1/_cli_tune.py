"""``balanced-l1 tune``'s arguments: the settings of ``compare`` (one flag per field, as ``compare`` has them) and
the tune's own, parsed into :class:`~balanced_l1.experiments.tune.settings.TuneSettings`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from balanced_l1._cli_args import (
    add_settings,
    add_settings_sources,
    check_device,
    int_list,
    integer,
    number,
    resolve_settings,
)


def add_tune_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``tune`` subcommand to ``subparsers``."""
    from balanced_l1.experiments.tune.settings import PRUNERS, SAMPLERS, TuneSettings

    defaults = TuneSettings()
    tune = subparsers.add_parser(
        "tune",
        help="search box losses and their parameters with Optuna (TPE or a grid, pruned on validation AP)",
        description="An Optuna study whose trials are runs of compare's runner (same settings, fingerprints and "
        "files under --out/runs). The baseline runs first; every search trial uses its seed (the first of "
        "--seeds); the best settings are then confirmed on --confirm-seeds and judged against the baseline. The "
        "same command on several machines with one --storage URL and --study name shares the study. Exit status: "
        "0 on success, 2 for bad arguments or a study of other settings, 1 for an unreachable database, bad data "
        "or a run of other settings in --out.",
    )
    add_settings_sources(tune)
    tune.add_argument(
        "--space",
        default=None,
        help="arms and ranges, e.g. 'balanced_l1(alpha=0.05..2.0:log,"
        "gamma=0.5..3.0),giou(loss_weight=2..20)' (default: every box-loss arm, declared ranges)",
    )
    tune.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=defaults.sampler,
        help="tpe, or grid: --arms (a|b makes a grid) crossed with --seeds (default %(default)s)",
    )
    tune.add_argument("--sampler-seed", type=integer, default=defaults.sampler_seed, help="the TPE sampler's seed")
    tune.add_argument(
        "--pruner",
        choices=PRUNERS,
        default=defaults.pruner,
        help="on the AP at each --eval-every point (default %(default)s)",
    )
    tune.add_argument("--trials", type=integer, default=None, help="search trials (besides baseline, confirmation)")
    tune.add_argument("--timeout", type=number, default=None, help="seconds after which no search trial starts")
    tune.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="database URL shared by workers (postgresql://user:password@host/db); default: SQLite in OUT/study.db",
    )
    tune.add_argument("--study", default=defaults.study, help="the study's name (default %(default)s)")
    tune.add_argument("--baseline", default=defaults.baseline, help="the baseline arm (default %(default)s)")
    tune.add_argument(
        "--confirm",
        type=integer,
        default=defaults.confirm,
        help="rerun this many best settings and the baseline on --confirm-seeds; 0 skips (default %(default)s)",
    )
    tune.add_argument(
        "--confirm-seeds",
        type=int_list,
        default=defaults.confirm_seeds,
        help=f"seeds of the confirmation (default {','.join(map(str, defaults.confirm_seeds))})",
    )
    tune.add_argument(
        "--heartbeat",
        type=integer,
        default=defaults.heartbeat,
        help="seconds between a trial's heartbeats; a trial silent twice as long is retried (default %(default)s)",
    )
    tune.add_argument(
        "--validation-images",
        type=integer,
        default=defaults.validation_images,
        help="held-out images scored at each --eval-every point (the final AP uses all; default %(default)s)",
    )
    add_settings(tune)
    tune.set_defaults(handler=run_tune, command_parser=tune)  # fmt: skip


def run_tune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``balanced-l1 tune``; return the exit status (2: bad arguments, 1: a runtime failure)."""
    from balanced_l1.detection.models import BackboneWeightsError
    from balanced_l1.experiments.config.checks import ConfigError
    from balanced_l1.experiments.data.coco_data import DataError
    from balanced_l1.experiments.output_folder.errors import OutputFolderError
    from balanced_l1.experiments.tune.settings import TuneSettings

    settings = TuneSettings(
        space=args.space, sampler=args.sampler, sampler_seed=args.sampler_seed, pruner=args.pruner,
        trials=args.trials, timeout=args.timeout, storage=args.storage, study=args.study, baseline=args.baseline,
        confirm=args.confirm, confirm_seeds=args.confirm_seeds, heartbeat=args.heartbeat,
        validation_images=args.validation_images,
    )  # fmt: skip
    try:
        config = resolve_settings(args)
        config.validate()
        settings.validate(config)
    except ConfigError as err:
        parser.error(str(err))
    check_device(config.device, parser)
    needed = ("optuna", "sqlalchemy", *(("optuna_integration",) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ()))
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(
            f"tune needs {' and '.join(missing)}: pip install -e '.[tune]' in a clone of the balanced-l1 repository"
        )
    import torch

    from balanced_l1.experiments.tune.study import StorageError
    from balanced_l1.experiments.tune.worker import run_tune

    torch.set_num_threads(config.threads)
    try:
        run_tune(config, settings)
    except ConfigError as err:
        print(f"balanced-l1 tune: error: {err}", file=sys.stderr)
        return 2
    except (StorageError, DataError, OutputFolderError, BackboneWeightsError, OSError) as err:
        print(f"balanced-l1 tune: error: {err}", file=sys.stderr)
        return 1
    return 0
