"""The ``balanced-l1`` command line: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from balanced_l1._cli_args import (
    add_settings,
    add_settings_sources,
    check_device,
    count,
    grid_of,
    integer,
    name_list,
    number,
    resolve_settings,
)
from balanced_l1.params import FORMULATIONS, BalancedL1Params


def _add_plot_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    defaults = BalancedL1Params()
    plot = subparsers.add_parser(
        "plot",
        help="draw loss and gradient of Balanced L1 beside smooth L1",
        description="Draw Balanced L1's loss and gradient against |x| beside smooth L1's (with the same beta), "
        "both in units of beta, and write them to a PNG file. Exit status: 0 on success, 2 for bad arguments, "
        "1 if the file cannot be written.",
    )
    plot.add_argument("--alpha", type=float, default=defaults.alpha, help=f"inlier gradient scale ({defaults.alpha})")
    plot.add_argument("--gamma", type=float, default=defaults.gamma, help=f"outlier gradient ({defaults.gamma})")
    plot.add_argument("--beta", type=float, default=defaults.beta, help=f"inflection point ({defaults.beta})")
    plot.add_argument(
        "--formulation",
        choices=FORMULATIONS,
        default=defaults.formulation,
        help="how beta enters: scaled, beta * L(|x| / beta), or mmdet, mmdetection's expression (default %(default)s)",
    )
    plot.add_argument("--out", default="balanced_l1.png", help="PNG file to write (default balanced_l1.png)")
    plot.set_defaults(handler=_run_plot, command_parser=plot)


def _check_plot_out(out: Path, parser: argparse.ArgumentParser) -> None:
    if not out.name.lower().endswith(".png"):
        parser.error(f"--out must name a .png file, got {str(out)!r}")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"--out {str(out)!r}: cannot create the folder {str(parent)!r} ({err.strerror or err})")
    if not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"--out {str(out)!r}: the folder {str(parent)!r} is not writable")
    limit = os.pathconf(parent, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if len(os.fsencode(out.name)) > limit:
        parser.error(f"--out {str(out)!r}: the file name is longer than this file system allows ({limit} bytes)")
    if out.is_dir():
        parser.error(f"--out {str(out)!r} is a folder; name a .png file")


def _run_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    out = Path(args.out)
    _check_plot_out(out, parser)
    from balanced_l1.plots import check_plottable, plot_loss

    try:
        params = BalancedL1Params(args.alpha, args.gamma, args.beta, args.formulation)
        check_plottable(params)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    try:
        path = plot_loss(params, out)
    except OSError as err:
        print(f"balanced-l1 plot: error: cannot write {out}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _balance_flags() -> dict[str, tuple[type, str]]:
    """Every parameter of every registered box loss, and ``loss_weight``: its type and its help, with each loss that
    takes it and its default there (one ``balance`` flag each, derived from the registry)."""
    from balanced_l1.detection.box_loss import box_loss_names, get_box_loss

    found: dict[str, tuple[type, str, list[str]]] = {}
    for name in box_loss_names():
        loss = get_box_loss(name)
        for parameter in (*loss.parameters, loss.loss_weight):
            kind = str if isinstance(parameter.default, str) else float
            shown = parameter.default if isinstance(parameter.default, str) else f"{parameter.default:.4g}"
            found.setdefault(parameter.name, (kind, parameter.help, []))[2].append(f"{name} {shown}")
    return {key: (kind, f"{text} (default: {', '.join(losses)})") for key, (kind, text, losses) in found.items()}


def _add_balance_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    from balanced_l1.detection.box_loss import box_loss_names

    balance = subparsers.add_parser(
        "balance",
        help="predict the RoI gradient balance of any box loss from the errors a finished compare run recorded",
        description="Reads the RoI-head positives that the finished runs of --arm in OUT kept from the second half "
        "of their training (every seed pooled) and prints the gradient balance each loss and parameter set would "
        "give on them, beside what the arm measured. Values a|b|c make a grid. With --target-ratio or --target-arm "
        "it solves for the Balanced L1 alpha that gives that inlier/outlier ratio, for each --gamma and --beta. "
        "Exit status: 0 on success, 2 for bad arguments or an OUT without runs of --arm, 1 for an unreadable sample.",
    )
    balance.add_argument("out", metavar="OUT", help="the output folder of a balanced-l1 compare run")
    balance.add_argument(
        "--arm", default="smooth_l1", help="the arm whose recorded errors are used (default %(default)s)"
    )
    balance.add_argument(
        "--loss",
        choices=box_loss_names(),
        default="balanced_l1",
        help="the loss to predict for (default %(default)s); its parameters not given take the loss's defaults",
    )
    for key, (kind, help_text) in _balance_flags().items():
        flag, shown = "--" + key.replace("_", "-"), help_text.replace("%", "%%")
        balance.add_argument(flag, type=grid_of(kind), default=None, help=f"{shown}, one value or a grid a|b|c")
    target = balance.add_mutually_exclusive_group()
    target.add_argument("--target-ratio", type=number, default=None, help="solve for alpha reaching this ratio")
    target.add_argument("--target-arm", default=None, help="solve for alpha reaching this arm's measured ratio")
    balance.set_defaults(handler=_run_balance, command_parser=balance)


def _solve_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[float], list[float], str]:
    """The gammas, betas and formulation ``balance`` solves alpha for: the flags, else Balanced L1's defaults."""
    from balanced_l1.detection.box_loss import get_box_loss
    from balanced_l1.experiments.report.predicted_balance import check_solve_grid

    given = {key for key in _balance_flags() if getattr(args, key) and key not in ("gamma", "beta", "formulation")}
    if args.loss != "balanced_l1" or given:
        parser.error("--target-ratio/--target-arm solve for Balanced L1's alpha: give --gamma/--beta only")
    defaults = get_box_loss("balanced_l1").defaults()
    formulations = args.formulation or [defaults["formulation"]]
    if len(formulations) != 1:
        parser.error("give one --formulation when solving for alpha")
    gammas, betas = args.gamma or [defaults["gamma"]], args.beta or [defaults["beta"]]
    try:
        check_solve_grid(gammas, betas, formulations[0])
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    return gammas, betas, formulations[0]


def _run_balance(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from balanced_l1.experiments.output_folder.errors import OutputFolderError, RunsNotFoundError
    from balanced_l1.experiments.report.predicted_balance import (
        load_arm_runs,
        loss_grid,
        predict_table,
        solve_alpha_table,
    )

    out = Path(args.out)
    if not out.is_dir():
        parser.error(f"OUT {str(out)!r} is not a folder")
    solving = args.target_ratio is not None or args.target_arm is not None
    if solving:
        gammas, betas, formulation = _solve_settings(args, parser)
    else:
        try:
            grid = loss_grid(args.loss, {key: getattr(args, key) for key in _balance_flags()})
        except (TypeError, ValueError) as err:
            parser.error(str(err))
    try:
        runs = load_arm_runs(out, args.arm)
        if solving:
            if args.target_arm is not None:
                ratio = load_arm_runs(out, args.target_arm).measured.get("inlier_outlier_gradient_ratio")
                if ratio is None:
                    parser.error(f"--target-arm {args.target_arm!r}: its runs measured no inlier/outlier ratio")
                label = f"{args.target_arm}'s measured ratio {ratio:.4f}"
            else:
                ratio = args.target_ratio
                if not (ratio > 0 and ratio != float("inf")):
                    parser.error(f"--target-ratio must be finite and > 0, got {ratio}")
                label = f"ratio {ratio:g}"
            print(f"Balanced L1 alpha reaching {label} on {args.arm}'s errors (seeds {list(runs.seeds)}):")
            print(solve_alpha_table(runs, ratio, gammas, betas, formulation))
        else:
            print(f"RoI gradient balance on {args.arm}'s recorded errors (seeds {list(runs.seeds)}, "
                  f"{runs.sample.shape[0]} positives):")  # fmt: skip
            print(predict_table(runs, grid))
    except RunsNotFoundError as err:
        parser.error(str(err))
    except OutputFolderError as err:
        print(f"balanced-l1 balance: error: {err}", file=sys.stderr)
        return 1
    return 0


def _add_compare_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]

    compare = subparsers.add_parser(
        "compare",
        help="train a detector once per arm (smooth L1, Balanced L1, Libra R-CNN...) and compare COCO AP",
        description="Train the same detector once per arm and seed (same initial weights, data order and flips), "
        "evaluate COCO AP with pycocotools, print a table and write results.json and figures to --out. "
        "Settings resolve as: defaults < --recipe < --config < flags. Exit status: 0 on success, 2 for bad "
        "arguments, 1 for bad data, an unreadable image, a checkpoint of another run or a diverged training loss.",
    )
    add_settings_sources(compare)
    compare.add_argument("--print-config", action="store_true", help="print the resolved settings as TOML and exit")
    add_settings(compare)
    compare.set_defaults(handler=_run_compare, command_parser=compare)


def _run_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from balanced_l1.detection.models import BackboneWeightsError
    from balanced_l1.experiments.compare import run_compare
    from balanced_l1.experiments.config.checks import ConfigError
    from balanced_l1.experiments.config.toml_files import to_toml
    from balanced_l1.experiments.data.coco_data import DataError, ImageReadError
    from balanced_l1.experiments.output_folder.errors import OutputFolderError
    from balanced_l1.experiments.output_folder.layout import CHECKPOINTS_FOLDER
    from balanced_l1.experiments.run.parallel import RunFailedError
    from balanced_l1.experiments.run.train import TrainingDivergedError

    try:
        config = resolve_settings(args)
        config.validate()
        if args.print_config:  # checked as a run would be, but not against this machine's CUDA devices
            check_device(config.device, parser, here=False)
            print(to_toml(config), end="")
            return 0
    except ConfigError as err:
        parser.error(str(err))
    check_device(config.device, parser)
    import torch

    torch.set_num_threads(config.threads)
    try:
        run_compare(config)
    except ConfigError as err:
        print(f"balanced-l1 compare: error: {err}", file=sys.stderr)
        return 2
    except (ImageReadError, OSError) as err:  # a broken image; a read-only folder or a full disk (path and reason)
        print(f"balanced-l1 compare: error: {err}", file=sys.stderr)
        if any((Path(config.out) / CHECKPOINTS_FOLDER).glob("*.pt")):  # it failed after a checkpoint was written
            fix = "the file" if isinstance(err, ImageReadError) else "the folder or free space"
            print(f"the last checkpoint is kept: fix {fix} and run the same command with --resume", file=sys.stderr)
        return 1
    except (DataError, OutputFolderError, TrainingDivergedError, BackboneWeightsError, RunFailedError) as err:
        print(f"balanced-l1 compare: error: {err}", file=sys.stderr)
        return 1
    return 0


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    evaluate = subparsers.add_parser(
        "evaluate",
        help="score the finished runs of a compare output folder again from their saved weights, without training",
        description="Rebuilds every finished run in OUT (runs/*.json) from OUT/config.toml and its saved weights "
        "(runs/<arm>_seed<s>_model.pt), scores it with COCO AP on the runs' held-out split or on the one given with "
        "--val-ann/--val-root, prints compare's tables and writes results.json to --out (default OUT/evaluate; "
        "OUT/results.json and the run records are left alone). Each run must have the fingerprint OUT/config.toml's "
        "settings and data give it, as --resume checks. Exit status: 0 on success, 2 for bad arguments or an OUT "
        "without config.toml or finished runs, 1 for a run of other settings or data, unreadable weights or bad data.",
    )
    evaluate.add_argument("out", metavar="OUT", help="the output folder of a balanced-l1 compare run")
    evaluate.add_argument("--val-ann", default=None, metavar="FILE", help="another held-out split's COCO annotations")
    evaluate.add_argument("--val-root", default=None, metavar="DIR", help="that split's image folder")
    evaluate.add_argument(
        "--show",
        type=count,
        default=0,
        metavar="N",
        help="draw the first N images with the ground truth and each arm's detections (its lowest seed), one PNG "
        "per image under --out/show/ (default 0)",
    )
    evaluate.add_argument(
        "--out", dest="dest", default=None, metavar="DIR", help="where to write (default OUT/evaluate)"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    evaluate.add_argument("--threads", type=integer, default=1, help="torch CPU threads (default 1)")
    evaluate.add_argument(
        "--arm-modules",
        type=name_list,
        default=(),
        metavar="MODULES",
        help="comma-separated Python modules that register the runs' own arms; OUT/config.toml may name them, but "
        "nothing an output folder names is imported: give each module you trust here",
    )
    evaluate.set_defaults(handler=_run_evaluate, command_parser=evaluate)


def _run_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from balanced_l1.experiments.config.checks import ConfigError, check_int
    from balanced_l1.experiments.data.coco_data import DataError
    from balanced_l1.experiments.output_folder.errors import OutputFolderError, RunsNotFoundError

    out = Path(args.out)
    if not out.is_dir():
        parser.error(f"OUT {str(out)!r} is not a folder")
    if (args.val_ann is None) != (args.val_root is None):
        parser.error("give --val-ann and --val-root together (the annotation file and its image folder)")
    try:
        check_int("threads", args.threads)  # compare's bound and its reason
    except ConfigError as err:
        parser.error(f"--{err}")
    check_device(args.device, parser)
    import torch

    from balanced_l1.experiments.evaluate_out import check_destination, evaluate_out
    from balanced_l1.experiments.output_folder.files import saved_config
    from balanced_l1.experiments.output_folder.lock import exclusive_out
    from balanced_l1.experiments.run.runlog import is_terminal

    try:  # the settings and where to write, before the lock on OUT and any work
        config = saved_config(out, args.arm_modules)
        check_destination(out, Path(args.dest) if args.dest is not None else out / "evaluate", config, args.val_root)
    except ConfigError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    try:
        with exclusive_out(out):
            evaluate_out(
                out,
                val_ann=args.val_ann,
                val_root=args.val_root,
                show=args.show,
                dest=args.dest,
                device=args.device,
                progress=is_terminal(),
                arm_modules=args.arm_modules,
            )
    except (ConfigError, RunsNotFoundError) as err:
        parser.error(str(err))
    except (DataError, OutputFolderError) as err:
        print(f"balanced-l1 evaluate: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"balanced-l1 evaluate: error: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="balanced-l1", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_plot_parser(subparsers)
    _add_compare_parser(subparsers)
    _add_balance_parser(subparsers)
    _add_evaluate_parser(subparsers)
    from balanced_l1._cli_tune import add_tune_parser

    add_tune_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``balanced-l1`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args, args.command_parser))  # errors show the subcommand's usage


if __name__ == "__main__":
    sys.exit(main())
