"""The search space of ``balanced-l1 tune``: which arms, and the range each of their parameters is drawn from.

The default space is every box-loss arm (:func:`balanced_l1.experiments.arms.box_loss_arm_names`), each parameter
within the search range its declaration gives (``LossParameter.search``; a parameter without one stays at its
default). ``--space`` narrows it in the arm syntax of ``compare``::

    balanced_l1(alpha=0.05..2.0:log,gamma=0.5..3.0),smooth_l1(beta=0.01..1.0:log),giou(loss_weight=2..20)

``low..high`` is a range of numbers (``:log`` draws it on a log scale), ``a|b|c`` a choice among values, a single
value fixes the parameter; an arm named bare takes its declared ranges, and a parameter not named in parentheses
stays at its default. Both ends of a range must be values the parameter accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from balanced_l1.experiments.arm_specs import ArmSpec, ArmSpecError, parameter_items, split_arm_list
from balanced_l1.experiments.arms import ARM_NAME_PATTERN, Arm, get_arm

__all__ = ["MAX_SPACE_CHARS", "ArmSpace", "ParameterSpace", "SearchSpace", "default_space", "parse_space"]

#: The longest ``--space`` read (the paper's whole Table 6 grid as ranges takes about 300 characters).
MAX_SPACE_CHARS = 4096


class Suggester(Protocol):
    """What draws a value: an Optuna trial, or a ``TorchDistributedTrial`` that broadcasts rank 0's draw."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class ParameterSpace:
    """Where one parameter of an arm is drawn from.

    Attributes:
        name: the parameter's key.
        low: the smallest value of a range (``None`` for a choice).
        high: the largest value of a range.
        log: draw the range on a log scale.
        choices: the values of a choice (empty for a range).
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[float | str, ...] = ()

    def describe(self) -> str:
        """The parameter in ``--space`` syntax, e.g. ``alpha=0.05..2.0:log``."""
        if self.choices:
            return f"{self.name}={'|'.join(_text(c) for c in self.choices)}"
        return f"{self.name}={self.low!r}..{self.high!r}{':log' if self.log else ''}"


@dataclass(frozen=True)
class ArmSpace:
    """One arm of the space and the parameters drawn for it (the others stay at their defaults)."""

    arm: str
    parameters: tuple[ParameterSpace, ...]

    def describe(self) -> str:
        """The arm in ``--space`` syntax."""
        inside = ",".join(p.describe() for p in self.parameters)
        return f"{self.arm}({inside})" if inside else self.arm


@dataclass(frozen=True)
class SearchSpace:
    """The arms a search draws from, in order."""

    arms: tuple[ArmSpace, ...]

    def describe(self) -> str:
        """The whole space in ``--space`` syntax (what the study's fingerprint records)."""
        return ",".join(arm.describe() for arm in self.arms)

    def suggest(self, trial: Suggester) -> ArmSpec:
        """Draw an arm, then each of its parameters (named ``<arm>.<key>`` in the study).

        Raises:
            ValueError: if the arm's own check refuses the combination drawn (the message names it).
        """
        name = str(trial.suggest_categorical("arm", [arm.arm for arm in self.arms]))
        space = next(arm for arm in self.arms if arm.arm == name)
        values: dict[str, float | str] = {}
        for parameter in space.parameters:
            key = f"{name}.{parameter.name}"
            if parameter.choices:
                values[parameter.name] = trial.suggest_categorical(key, list(parameter.choices))
            else:
                low, high = float(parameter.low), float(parameter.high)  # type: ignore[arg-type]  # a range has both
                values[parameter.name] = trial.suggest_float(key, low, high, log=parameter.log)
        return arm_spec(name, values)


def arm_spec(name: str, values: dict[str, float | str]) -> ArmSpec:
    """The arm ``name`` with ``values`` over its defaults, checked as ``compare`` checks an arm spec.

    Raises:
        ValueError: if the arm's check refuses the values.
    """
    arm = get_arm(name)
    defaults = arm.defaults()
    full = {**defaults, **values}
    if arm.check is not None:
        arm.check(**full)
    given = tuple((p.name, full[p.name]) for p in arm.parameters if full[p.name] != defaults[p.name])
    return ArmSpec(arm, given)


def default_space() -> SearchSpace:
    """Every box-loss arm, each parameter within its declared search range."""
    from balanced_l1.experiments.arms import box_loss_arm_names

    return SearchSpace(tuple(_declared(get_arm(name)) for name in box_loss_arm_names()))


def _declared(arm: Arm) -> ArmSpace:
    parameters = []
    for parameter in arm.parameters:
        search = parameter.search
        if search is None:
            continue
        if search.choices:
            parameters.append(ParameterSpace(parameter.name, choices=tuple(search.choices)))
        else:
            parameters.append(ParameterSpace(parameter.name, search.low, search.high, search.log))
    return ArmSpace(arm.name, tuple(parameters))


def parse_space(text: str) -> SearchSpace:
    """Read ``--space`` (see the module docstring).

    Raises:
        ArmSpecError: for text over :data:`MAX_SPACE_CHARS`, an unknown arm or key, an arm named twice, a range whose
            ends are not numbers, reversed or empty, a log range reaching 0, or an end the parameter refuses; the
            message names the arm, the key and what is allowed.
    """
    if len(text) > MAX_SPACE_CHARS:
        raise ArmSpecError(f"space: {len(text)} characters, at most {MAX_SPACE_CHARS}")
    arms: list[ArmSpace] = []
    for item in split_arm_list(text):
        space = _parse_arm(item)
        if any(arm.arm == space.arm for arm in arms):
            raise ArmSpecError(f"space: arm {space.arm!r} is named twice; name each arm once with all its ranges")
        arms.append(space)
    return SearchSpace(tuple(arms))


def _parse_arm(item: str) -> ArmSpace:
    if not item:
        raise ArmSpecError("space: an empty arm (two commas in a row, or a comma at an end)")
    name, paren, rest = item.partition("(")
    name = name.strip()
    if paren and not rest.rstrip().endswith(")"):
        raise ArmSpecError(f"space {item!r}: expected NAME(key=low..high, ...), with nothing after ')'")
    if not ARM_NAME_PATTERN.fullmatch(name):
        raise ArmSpecError(
            f"space {item!r}: expected NAME or NAME(key=low..high, ...), such as balanced_l1(alpha=0.1..1)"
        )
    try:
        arm = get_arm(name)
    except ValueError as err:
        raise ArmSpecError(f"space {item!r}: {err}") from None
    body = rest.rstrip()[:-1] if paren else ""
    if not body.strip():
        return _declared(arm)
    expected = "key=low..high, key=a|b or key=value"
    given = parameter_items(f"space {item!r}", arm, body, expected, value_required=True)
    parameters = {key: _parse_parameter(item, arm, key, value.strip()) for key, value in given.items()}
    return ArmSpace(name, tuple(parameters[p.name] for p in arm.parameters if p.name in parameters))


def _parse_parameter(item: str, arm: Arm, key: str, value: str) -> ParameterSpace:
    declared = next(p for p in arm.parameters if p.name == key)
    numeric = not isinstance(declared.default, str)
    if ".." not in value:
        choices = tuple(_number(item, key, v) if numeric else v.strip() for v in value.split("|"))
        for choice in choices:
            _accepts(item, arm, key, choice, declared)
        if len(set(choices)) != len(choices):
            raise ArmSpecError(f"space {item!r}: {key} repeats a value in {value!r}")
        return ParameterSpace(key, choices=choices)
    if not numeric:
        raise ArmSpecError(
            f"space {item!r}: {key} takes one of {', '.join(declared.choices)}, not a range; write {key}=a|b"
        )
    bounds, colon, scale = value.partition(":")
    low_text, _, high_text = bounds.partition("..")
    if colon and scale.strip() != "log":
        raise ArmSpecError(f"space {item!r}: {key}: after ':' only 'log' is allowed, got {scale!r}")
    low, high = _number(item, key, low_text), _number(item, key, high_text)
    if not low < high:
        raise ArmSpecError(f"space {item!r}: {key}={value}: the low end must be below the high end")
    if colon and low <= 0:
        raise ArmSpecError(f"space {item!r}: {key}={value}: a log range must be above 0")
    for end in (low, high):
        _accepts(item, arm, key, end, declared)
    return ParameterSpace(key, low, high, bool(colon))


def _number(item: str, key: str, text: str) -> float:
    try:
        number = float(text.strip())
    except ValueError:
        raise ArmSpecError(f"space {item!r}: {key} must be numbers, got {text.strip()!r}") from None
    if not math.isfinite(number):
        raise ArmSpecError(f"space {item!r}: {key} must be finite, got {text.strip()!r}")
    return number


def _accepts(item: str, arm: Arm, key: str, value: float | str, declared: Any) -> None:
    """Raise unless ``value`` is one the parameter (and the arm with every other parameter at its default) accepts."""
    try:
        declared.check(value)
        if arm.check is not None:
            arm.check(**{**arm.defaults(), key: value})
    except (TypeError, ValueError) as err:
        search = declared.search
        allowed = ""
        if search is not None:
            declared_range = ParameterSpace(key, search.low, search.high, search.log, tuple(search.choices))
            allowed = f"; its declared search range is {declared_range.describe()}"
        raise ArmSpecError(
            f"space {item!r}: arm {arm.name!r}, {key}={_text(value)} is not accepted ({err}){allowed}"
        ) from None


def _text(value: float | str) -> str:
    return repr(value) if isinstance(value, float) else str(value)
