"""The command line's argument types and shared checks, used by every subcommand's parser (``cli`` and ``_cli_tune``).

Each type turns one flag's text into a value or raises :class:`argparse.ArgumentTypeError` with the value and what is
allowed; argparse then exits 2 with the flag's name.
"""

from __future__ import annotations

import argparse
from typing import Any


def int_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers such as 0,1,2, got {text!r}")
    values = tuple(int(p) for p in parts)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"values must not repeat, got {text!r}")
    return values


def name_list(text: str) -> tuple[str, ...]:
    from balanced_l1.experiments.arm_specs import ArmSpecError, split_arm_list

    try:
        return split_arm_list(text)
    except ArmSpecError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def grid_of(kind: type) -> object:
    """A flag value of one or more alternatives, ``a|b|c``, each of ``kind``."""

    def parse(text: str) -> list[object]:
        values = []
        for part in text.split("|"):
            try:
                value = kind(part.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {kind.__name__} values separated by |, got {text!r}"
                ) from None
            if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
                raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
            values.append(value)
        return values

    return parse


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    """One flag per field of CompareConfig, with its help and default taken from there (never repeated here)."""
    from balanced_l1.experiments.config import DEFAULTS, FIELDS

    spec = FIELDS[name]
    kind = str(spec.type)
    default = getattr(DEFAULTS, name)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    choices = spec.metadata.get("choices")
    one_of = f"; one of {', '.join(choices)}" if choices else ""
    help_text = f"{spec.metadata['help']}{one_of} (default: {spec.metadata.get('shown_default', shown)})"
    help_text = help_text.replace("%", "%%")
    flag = "--" + name.replace("_", "-")
    if kind == "bool":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        return
    parse = {
        "tuple[int, ...]": int_list,
        "tuple[str, ...]": name_list,
        "float": number,
        "int": integer,
        "int | None": integer,
    }.get(kind, str)
    parser.add_argument(
        flag, type=parse, choices=choices, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text
    )


def check_device(device: str, parser: argparse.ArgumentParser, *, here: bool = True) -> None:
    """Exit 2 unless ``device`` names a cpu or cuda device (and, with ``here``, one this machine has)."""
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, ValueError) as err:
        parser.error(f"--device {device!r}: {err}")
    if target.type == "cpu":
        return
    if target.type != "cuda":
        parser.error(f"--device {device!r}: training needs cpu or cuda[:N], got a {target.type!r} device")
    if not here:
        return
    if not torch.cuda.is_available():
        parser.error(f"--device {device!r}: CUDA is not available here; use --device cpu")
    if target.index is not None and target.index >= torch.cuda.device_count():
        parser.error(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def count(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_settings_sources(parser: argparse.ArgumentParser) -> None:
    """``--recipe`` and ``--config``: the settings files a command's flags override."""
    from balanced_l1.experiments.config.toml_files import recipe_names

    parser.add_argument(
        "--recipe", choices=recipe_names(), default=None, help="a settings file shipped with the package"
    )
    parser.add_argument("--config", default=None, metavar="FILE", help="your own TOML settings file")


def add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of :class:`~balanced_l1.experiments.config.CompareConfig` (see :func:`add_setting`)."""
    from balanced_l1.experiments.config import FIELDS

    for name in FIELDS:
        add_setting(parser, name)


def resolve_settings(args: argparse.Namespace) -> Any:
    """The settings of ``args``: defaults < ``--recipe`` < ``--config`` < flags, resolved (not yet validated).

    Raises:
        ConfigError: for a bad settings file or flag value.
    """
    from balanced_l1.experiments.config import FIELDS, resolve
    from balanced_l1.experiments.config.toml_files import load_config_file, load_recipe

    layers = [load_recipe(args.recipe)] if args.recipe else []
    if args.config:
        layers.append(load_config_file(args.config))
    return resolve([*layers, {name: value for name, value in vars(args).items() if name in FIELDS}])
