"""The settings as TOML: the recipes shipped in the package, the user's config files, and ``to_toml``, which writes
``--print-config`` and ``OUT/config.toml`` in the format both read back."""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from balanced_l1.experiments.config import FIELDS, CompareConfig
from balanced_l1.experiments.config.checks import ConfigError, toml_char_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def recipe_names() -> tuple[str, ...]:
    """The recipes shipped in the package, by name.

    Example:
        >>> "coco-1x" in recipe_names()
        True
    """
    folder = resources.files("balanced_l1.experiments") / "recipes"
    return tuple(sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml")))


def _too_long_integer(text: str, where: str) -> ConfigError:
    """The error for a TOML text holding an integer of more digits than Python converts, naming its key."""
    limit = sys.get_int_max_str_digits()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        digits = max((len(run.replace("_", "")) for run in re.findall(r"[0-9_]+", value)), default=0)
        if sep and digits > limit:
            return ConfigError(
                f"{where}: {key.strip()} holds an integer of {digits} digits, more than Python converts ({limit}); "
                "no setting needs a number that long"
            )
    return ConfigError(f"{where}: not valid TOML (an integer of more than {limit} digits)")


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML ({err})") from None
    except RecursionError:  # arrays or tables nested thousands deep: no setting is nested at all
        raise ConfigError(f"{where}: not valid TOML (nested too deeply)") from None
    except ValueError:  # tomllib's only other error: an integer past Python's integer-string conversion limit
        raise _too_long_integer(text, where) from None
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    return {key: _coerce(key, value, where) for key, value in doc.items()}


def load_recipe(name: str) -> dict[str, Any]:
    """The settings of a shipped recipe.

    Args:
        name: a name from :func:`recipe_names`.

    Returns:
        The settings the recipe sets.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    if name not in recipe_names():
        raise ConfigError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    resource = resources.files("balanced_l1.experiments") / "recipes" / f"{name}.toml"
    return _read_toml(resource.read_text(encoding="utf-8"), f"recipe {name}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a user's TOML file (the keys of :class:`CompareConfig`).

    The path is checked before it is opened (:func:`balanced_l1._files.read_regular_file`): a FIFO, a device or a
    folder is refused by kind, and a file over 1 MiB by size (every setting written out is about 4 KiB).

    Raises:
        ConfigError: if the file is missing, not a regular file, over 1 MiB, unreadable, not UTF-8, not TOML (or
            nested too deeply), or has an unknown key or a value of the wrong type.
    """
    from balanced_l1._files import UnreadableFileError, read_regular_file

    where = Path(path)
    if not where.exists():
        raise ConfigError(f"{where}: cannot read the config file (no such file)")
    try:
        text = read_regular_file(where, 1 << 20, "config file", why="all the settings take about 4 KiB").decode()
    except UnreadableFileError as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: cannot read the config file ({err})") from None
    return _read_toml(text, str(where))


def _type_name(key: str) -> str:
    kind = FIELDS[key].type
    return str(kind).replace("tuple[int, ...]", "list of integers").replace("tuple[str, ...]", "list of strings")


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check a TOML value against the field's type; lists become tuples, ints are accepted for floats."""
    kind = str(FIELDS[key].type)
    wrong = ConfigError(f"{where}: {key} must be {_type_name(key)}, got {value!r}")
    if kind.startswith("tuple["):
        item = int if "int" in kind else str
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise wrong
        return tuple(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong
        return float(value)
    if kind.startswith("int"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong
        return value
    if not isinstance(value, str):
        raise wrong
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(char) for char in value) + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml_char(char: str) -> str:
    """One character inside a TOML basic string: quote, backslash and control characters escaped."""
    if char in _TOML_ESCAPES:
        return _TOML_ESCAPES[char]
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return f"\\u{code:04X}"
    problem = toml_char_problem(char)  # a lone surrogate: a file name in another encoding, which TOML cannot hold
    if problem is not None:
        raise ValueError(problem)
    return char


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def to_toml(config: CompareConfig) -> str:
    """The settings as a TOML file that :func:`load_config_file` reads back (unset optional ones as comments).

    Strings are TOML basic strings, with quotes, backslashes and control characters escaped, so any text reads back
    equal.

    Raises:
        ConfigError: for a string that holds a lone surrogate (a file name that is not UTF-8), which TOML cannot hold.

    Example:
        >>> "lr = 0.04" in to_toml(CompareConfig())
        True
    """
    lines = []
    for name, spec in FIELDS.items():
        value = getattr(config, name)
        try:
            line = f"# {name} =  (not set)" if value is None else f"{name} = {_toml_value(value)}"
        except ValueError as err:
            raise ConfigError(f"{name} {value!r}: {err}") from None
        unset = (
            f" (default: {spec.metadata['shown_default']})"
            if value is None and "shown_default" in spec.metadata
            else ""
        )
        lines.append(f"{line:<48} # {spec.metadata['help']}{unset}")
    return "\n".join(lines) + "\n"
