"""Arms with parameters: ``name(key=value, ...)``, grids with ``|``, and their canonical names.

The syntax, spaces optional::

    smooth_l1                                   an arm at its defaults
    balanced_l1(alpha=0.3, gamma=1.0)           an arm with parameters
    balanced_l1(alpha=0.2|0.3|0.5, gamma=1.0|1.5)   a grid: 6 arms, alpha varying slowest

A list of arms is comma-separated; commas inside parentheses belong to the arm. An arm's canonical
name spells out the parameters that differ from its defaults, in the order the arm declares them, with
each number as Python's shortest round-trip ``repr`` (``balanced_l1(alpha=0.3,gamma=1.0)``); an arm at
its defaults is its bare name. Two spellings of the same arm have one canonical name, so a list that
repeats an arm is refused (``loss_weight=-0.0`` and ``loss_weight=0.0`` are one arm). The canonical name is
what tables, figures and ``results.json`` show; the full set of values is in each run's fingerprint.

A spec is read in one pass over its characters, without a regular expression that could backtrack, and is at
most :data:`MAX_SPEC_CHARS` long.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from balanced_l1.experiments.arms import Arm, get_arm

__all__ = [
    "MAX_SPEC_CHARS",
    "ArmSpec",
    "ArmSpecError",
    "TooManyArmsError",
    "expand_arms",
    "parse_arm",
    "split_arm_list",
]

_MAX_GRID = 1000
#: The longest arm spec: a grid of 1000 arms with their values fits in far less.
MAX_SPEC_CHARS = 10_000
_NOT_IN_A_NAME = frozenset("(),=|")


class ArmSpecError(ValueError):
    """An arm spec cannot be read; the message names the spec, the arm and the key."""


class TooManyArmsError(ArmSpecError):
    """Arm specs that name more arms in all than a bound allows."""


def split_arm_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of arm specs at the commas outside parentheses.

    Raises:
        ArmSpecError: for unbalanced parentheses.

    Example:
        >>> split_arm_list("smooth_l1, balanced_l1(alpha=0.3,gamma=1.0)")
        ('smooth_l1', 'balanced_l1(alpha=0.3,gamma=1.0)')
    """
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ArmSpecError(f"arms {text!r}: a ')' without its '('")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth:
        raise ArmSpecError(f"arms {text!r}: a '(' without its ')'")
    parts.append("".join(current).strip())
    return tuple(parts)


def _format(value: float | str) -> str:
    return repr(value) if isinstance(value, float) else value


@dataclass(frozen=True)
class ArmSpec:
    """One arm with its parameter values.

    Attributes:
        arm: the registered arm.
        given: the values that differ from the arm's defaults, in the arm's declared order.
    """

    arm: Arm
    given: tuple[tuple[str, float | str], ...] = ()

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``balanced_l1(alpha=0.3,gamma=1.0)``, or the bare name at the defaults."""
        if not self.given:
            return self.arm.name
        return f"{self.arm.name}({','.join(f'{k}={_format(v)}' for k, v in self.given)})"

    @property
    def values(self) -> dict[str, float | str]:
        """Every parameter's value, defaults filled in (what the run's fingerprint records)."""
        return {**self.arm.defaults(), **dict(self.given)}

    @property
    def file_stem(self) -> str:
        """The name as a file name: ``balanced_l1__alpha-0.3__gamma-1.0``.

        Unique per arm by construction: arm names, parameter names and string values hold no ``__`` and neither
        begin nor end with ``_``, and parameter names hold no ``-`` (:func:`~balanced_l1.experiments.arms.register_arm`
        refuses others), so the stem splits back at ``__`` into the arm's name and its ``key-value`` pairs, and
        each pair at its first ``-``. Numbers are written as ``repr`` (``-0.0`` is read as ``0.0``).
        """
        return "__".join([self.arm.name, *(f"{k}-{_format(v)}" for k, v in self.given)])

    @property
    def description(self) -> str:
        """The arm's description, and its parameters if any were given."""
        if not self.given:
            return self.arm.description
        return f"{self.arm.description}; with {', '.join(f'{k}={_format(v)}' for k, v in self.given)}"

    def configure(self, model: nn.Module) -> None:
        """Configure a freshly built model as this arm does."""
        self.arm.apply(model, self.values)


def _value(spec: str, arm: Arm, key: str, text: str) -> float | str:
    parameter = next(p for p in arm.parameters if p.name == key)
    text = text.strip()
    value: float | str = text
    if not isinstance(parameter.default, str):
        try:
            value = float(text)
        except ValueError:
            raise ArmSpecError(f"arm {spec!r}: {key} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ArmSpecError(f"arm {spec!r}: {key} must be finite, got {text!r}")
    try:
        value = parameter.check(value)
    except (TypeError, ValueError) as err:
        raise ArmSpecError(f"arm {spec!r}: {err}") from None
    return value + 0.0 if isinstance(value, float) else value  # -0.0 is 0.0: one arm, one name


def _name_and_body(spec: str) -> tuple[str, str | None]:
    """``NAME`` and the text between the parentheses of ``NAME(...)`` (``None`` without them), in one pass."""
    if len(spec) > MAX_SPEC_CHARS:
        raise ArmSpecError(
            f"arm {spec[:40]!r}...: the spec is {len(spec)} characters long; at most {MAX_SPEC_CHARS} (a grid of "
            f"{_MAX_GRID} arms fits in far less)"
        )
    text = spec.strip()
    opening = text.find("(")
    name, body = (text, None) if opening < 0 else (text[:opening].rstrip(), text[opening + 1 : -1])
    if not name or (opening >= 0 and not text.endswith(")")) or any(c.isspace() or c in _NOT_IN_A_NAME for c in name):
        raise ArmSpecError(f"arm {spec!r}: expected NAME or NAME(key=value, ...), such as balanced_l1(alpha=0.3)")
    return name, body


def parameter_items(where: str, arm: Arm, body: str, expected: str, *, value_required: bool = False) -> dict[str, str]:
    """The ``key=value`` items between an arm's parentheses, in the order given, each value's text as written.

    Shared by the arm specs of ``compare`` and the search spaces of ``tune``: every key is one of the arm's
    parameters, and none is given twice.

    Args:
        where: what the messages name first, e.g. ``"arm 'l1(loss_weight=2)'"``.
        arm: the arm whose parameters the keys must be.
        body: the text between the parentheses.
        expected: the form an item should have, for the message about one without ``=``.
        value_required: refuse an empty value with that message too.

    Returns:
        ``{key: value text}``.

    Raises:
        ArmSpecError: for an item without ``=`` (or an empty value, with ``value_required``), an unknown key or a
            repeated one.
    """
    keys = [p.name for p in arm.parameters]
    items: dict[str, str] = {}
    for item in split_arm_list(body) if body.strip() else ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or (value_required and not text.strip()):
            raise ArmSpecError(f"{where}: expected {expected}, got {item!r}")
        if key not in keys:
            known = f"its parameters: {', '.join(keys)}" if keys else "it takes no parameters"
            raise ArmSpecError(f"{where}: unknown key {key!r} for arm {arm.name!r}; {known}")
        if key in items:
            raise ArmSpecError(f"{where}: key {key!r} is given twice")
        items[key] = text
    return items


def parse_arm(spec: str) -> list[ArmSpec]:
    """The arms one spec names: one, or a grid's product (the first key varying slowest).

    Raises:
        ArmSpecError: for a spec longer than :data:`MAX_SPEC_CHARS`, an unknown arm or key, a repeated key, a value
            of the wrong kind, an empty value, a grid larger than 1000 arms, or parameters the arm's own check
            refuses (everything the loss derives from them included); the message names the spec, the arm and the
            key.

    Example:
        >>> [a.name for a in parse_arm("balanced_l1(alpha=0.3|0.5, gamma = 1.0)")]
        ['balanced_l1(alpha=0.3,gamma=1.0)', 'balanced_l1(gamma=1.0)']
    """
    name, body = _name_and_body(spec)
    try:
        arm = get_arm(name)
    except ValueError as err:
        raise ArmSpecError(f"arm {spec!r}: {err}") from None
    keys = [p.name for p in arm.parameters]
    choices: dict[str, list[float | str]] = {}
    for key, text in parameter_items(f"arm {spec!r}", arm, body or "", "key=value").items():
        if not text.strip() or any(not part.strip() for part in text.split("|")):
            raise ArmSpecError(f"arm {spec!r}: key {key!r} has an empty value")
        choices[key] = [_value(spec, arm, key, part) for part in text.split("|")]
    ordered = [k for k in keys if k in choices]
    size = math.prod(len(choices[k]) for k in ordered)
    if size > _MAX_GRID:
        raise ArmSpecError(f"arm {spec!r}: the grid has {size} arms; at most {_MAX_GRID}")
    defaults = arm.defaults()
    specs = []
    for combination in itertools.product(*(choices[k] for k in ordered)):
        values = dict(zip(ordered, combination, strict=True))
        if arm.check is not None:
            try:
                arm.check(**{**defaults, **values})
            except (TypeError, ValueError) as err:
                raise ArmSpecError(f"arm {spec!r}: {err}") from None
        given = tuple((k, v) for k, v in values.items() if v != defaults[k])
        specs.append(ArmSpec(arm, given))
    return specs


def expand_arms(specs: Iterable[str], *, max_arms: int | None = None) -> list[ArmSpec]:
    """Every arm a list of specs names, grids expanded, in order.

    Args:
        specs: the specs.
        max_arms: the most arms accepted in all; the expansion stops as soon as it is passed.

    Raises:
        ArmSpecError: for a bad spec (see :func:`parse_arm`), an arm named twice (by canonical name), or two arms
            whose names differ only in case (their files would collide on macOS or Windows).
        TooManyArmsError: (an ``ArmSpecError``) when the specs name more than ``max_arms`` arms.
    """
    arms: list[ArmSpec] = []
    seen: dict[str, str] = {}
    stems: dict[str, str] = {}
    for spec in specs:
        expanded = parse_arm(spec)
        if max_arms is not None and len(arms) + len(expanded) > max_arms:
            raise TooManyArmsError(f"the arms come to more than {max_arms} once grids are expanded")
        for arm in expanded:
            if arm.name in seen:
                raise ArmSpecError(
                    f"arm {spec!r} names {arm.name!r}, which {seen[arm.name]!r} already names; each arm once"
                )
            stem = arm.file_stem.casefold()
            if stem in stems:
                raise ArmSpecError(
                    f"arms {stems[stem]!r} and {arm.name!r} differ only in upper and lower case; their files would "
                    "collide on a case-insensitive file system: rename one arm"
                )
            seen[arm.name] = spec
            stems[stem] = arm.name
            arms.append(arm)
    return arms
