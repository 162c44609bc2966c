"""The ``balanced-l1`` command line: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from balanced_l1.params import FORMULATIONS, BalancedL1Params


def _add_plot_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    plot = subparsers.add_parser("plot", help="draw loss and gradient of Balanced L1 beside smooth L1")
    plot.add_argument("--alpha", type=float, default=0.5, help="inlier gradient scale (default 0.5)")
    plot.add_argument("--gamma", type=float, default=1.5, help="outlier gradient (default 1.5)")
    plot.add_argument("--beta", type=float, default=1.0, help="inflection point (default 1.0)")
    plot.add_argument("--formulation", choices=FORMULATIONS, default="scaled")
    plot.add_argument("--out", default="balanced_l1.png", help="PNG file to write (default balanced_l1.png)")
    plot.set_defaults(handler=_run_plot)


def _run_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not str(args.out).lower().endswith(".png"):
        parser.error(f"--out must name a .png file, got {args.out!r}")
    try:
        params = BalancedL1Params(args.alpha, args.gamma, args.beta, args.formulation)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    from balanced_l1.plots import plot_loss

    path = plot_loss(params, args.out)
    print(f"wrote {path}")
    return 0


def _seed_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers such as 0,1,2, got {text!r}")
    seeds = tuple(int(p) for p in parts)
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must not repeat, got {text!r}")
    return seeds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_compare_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    compare = subparsers.add_parser(
        "compare",
        help="train a small Faster R-CNN once per arm (smooth L1 vs Balanced L1) and compare COCO AP",
        description="Train the same small Faster R-CNN once per arm and seed (same initial weights and data order), "
        "evaluate COCO AP with pycocotools, print a table and write results.json and figures to --out. "
        "Exit status: 0 on success, 2 for bad arguments, 1 for bad data, a checkpoint of another run or a "
        "diverged training loss.",
    )
    compare.add_argument(
        "--arms", default="smooth_l1,balanced_l1", help="comma-separated arms (default smooth_l1,balanced_l1)"
    )
    compare.add_argument("--seeds", type=_seed_list, default=(0,), help="comma-separated training seeds (default 0)")
    compare.add_argument("--iters", type=_positive_int, default=300, help="training iterations per run (default 300)")
    compare.add_argument("--batch-size", type=_positive_int, default=8, help="images per global batch (default 8)")
    compare.add_argument("--lr", type=float, default=0.04, help="peak SGD learning rate (default 0.04)")
    compare.add_argument("--warmup-iters", type=int, default=50, help="linear warm-up iterations (default 50)")
    compare.add_argument("--checkpoint-every", type=_positive_int, default=20, help="iterations between checkpoints")
    compare.add_argument("--image-size", type=int, default=128, help="synthetic image side; longer side the model sees")
    compare.add_argument("--train-images", type=_positive_int, default=1024, help="synthetic training images")
    compare.add_argument("--val-images", type=_positive_int, default=200, help="synthetic held-out images")
    compare.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set (default 0)")
    compare.add_argument(
        "--data",
        default=None,
        help="COCO-format folder: PATH/annotations/{train,val}.json and PATH/images/ (default: synthetic)",
    )
    compare.add_argument("--out", default="compare_out", help="output folder (default compare_out)")
    compare.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    compare.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    compare.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads per process (default 1: steady on shared cores; try 2+ on an idle machine)",
    )
    compare.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    from balanced_l1.experiments.arms import arm_names
    from balanced_l1.experiments.coco_data import DataError
    from balanced_l1.experiments.compare import CompareConfig, ConfigError, run_compare
    from balanced_l1.experiments.train import CheckpointMismatchError, TrainingDivergedError

    arms = tuple(a.strip() for a in args.arms.split(","))
    unknown = [a for a in arms if a not in arm_names()]
    if unknown:
        parser.error(f"--arms: unknown arm(s) {', '.join(map(repr, unknown))}; valid arms: {', '.join(arm_names())}")
    try:
        import torch

        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device!r}: CUDA is not available here; use --device cpu")
    torch.set_num_threads(args.threads)
    config = CompareConfig(
        out=Path(args.out),
        arms=arms,
        seeds=args.seeds,
        iters=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_iters=args.warmup_iters,
        checkpoint_every=args.checkpoint_every,
        image_size=args.image_size,
        train_images=args.train_images,
        val_images=args.val_images,
        data_seed=args.data_seed,
        data=Path(args.data) if args.data else None,
        device=args.device,
        resume=args.resume,
    )
    try:
        config.validate()
    except ConfigError as err:
        parser.error(str(err))
    try:
        run_compare(config)
    except ConfigError as err:
        print(f"balanced-l1 compare: error: {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointMismatchError, TrainingDivergedError) as err:
        print(f"balanced-l1 compare: error: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="balanced-l1", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_plot_parser(subparsers)
    _add_compare_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``balanced-l1`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args, parser))


if __name__ == "__main__":
    sys.exit(main())
