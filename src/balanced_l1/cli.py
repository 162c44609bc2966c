"""The ``balanced-l1`` command line: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from balanced_l1.params import FORMULATIONS, BalancedL1Params


def _add_plot_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="balanced-l1", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_plot_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``balanced-l1`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args, parser))


if __name__ == "__main__":
    sys.exit(main())
