"""Parameters of the Balanced L1 loss: validation and derived constants.

This module knows no framework. Every backend (PyTorch, JAX, Keras) builds a
:class:`BalancedL1Params` once and reads its derived constants, so the rules
for what is a valid ``alpha``, ``gamma``, ``beta``, ``formulation``,
``reduction`` and ``avg_factor`` are written exactly once. :func:`check_number`
is the one checker for numbers the whole package uses.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar, overload

FORMULATIONS: tuple[str, ...] = ("scaled", "mmdet")
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")

T = TypeVar("T")

#: Largest ``gamma / alpha``: ``b = exp(80) - 1 ~ 5.5e34`` still fits float32 (max ~3.4e38).
MAX_GAMMA_OVER_ALPHA: float = 80.0

#: float32 machine epsilon, added to ``avg_factor`` as mmdetection does.
AVG_FACTOR_EPS: float = float.fromhex("0x1p-23")


def _describe(value: object) -> str:
    """``repr(value)``, except for integers too long to print or to convert to a float."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) > 2**1023:
        return f"an integer of {int(value).bit_length()} bits (too large for a float)"
    return repr(value)


def _bounds_text(minimum: float | None, maximum: float | None, strictly_positive: bool) -> str:
    parts = []
    if strictly_positive:
        parts.append("> 0")
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " and ".join(parts)


@overload
def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = ...,
    maximum: float | None = ...,
    strictly_positive: bool = ...,
    integer: Literal[False] = ...,
) -> float: ...


@overload
def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = ...,
    maximum: float | None = ...,
    strictly_positive: bool = ...,
    integer: Literal[True],
) -> int: ...


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strictly_positive: bool = False,
    integer: bool = False,
) -> float | int:
    """Check one host-side number and return it as a Python ``float`` (or ``int`` with ``integer=True``).

    Accepted: Python ``int`` and ``float``, NumPy scalars (``np.float32(0.5)``, ``np.int64(3)``) and any
    other :class:`numbers.Real` (``fractions.Fraction``). Rejected with ``TypeError``: ``bool`` (``True``
    is not a number of anything), strings, tensors, arrays, ``None``; with ``integer=True`` also any
    non-integral type (``3.0`` included). Rejected with ``ValueError``: NaN, infinities, integers too
    large for a float (instead of Python's ``OverflowError``), and values outside the bounds.

    Args:
        name: the argument's name, used in the messages.
        value: the value to check.
        minimum: inclusive lower bound, or ``None``.
        maximum: inclusive upper bound, or ``None``.
        strictly_positive: require ``value > 0``.
        integer: require an integral type and return an ``int``.

    Returns:
        ``value`` as a Python ``float``, or as an ``int`` with ``integer=True``.

    Raises:
        TypeError: ``value`` is not a real number (or not an integer with ``integer=True``).
        ValueError: ``value`` is not finite or is out of bounds.

    Example:
        >>> import numpy as np
        >>> check_number("beta", np.float32(0.5), strictly_positive=True)
        0.5
        >>> check_number("num_bins", 3, minimum=1, integer=True)
        3
    """
    kind = type(value)  # fast path for exact int and float (bool is its own type); the messages are built on error
    if integer:
        if kind is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise TypeError(f"{name} must be an integer, got {value!r} of type {kind.__name__}")
        result: float | int = int(value)  # type: ignore[call-overload]  # an Integral
        if (
            (strictly_positive and result <= 0)
            or (minimum is not None and result < minimum)
            or (maximum is not None and result > maximum)
        ):
            raise ValueError(
                f"{name} must be an integer {_bounds_text(minimum, maximum, strictly_positive)}, got {_describe(value)}"
            )
        return result
    if kind is not float and kind is not int and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {kind.__name__}")
    try:
        result = float(value)  # type: ignore[arg-type]  # a Real
    except OverflowError:
        result = math.inf
    if not (
        math.isfinite(result)
        and (not strictly_positive or result > 0.0)
        and (minimum is None or result >= minimum)
        and (maximum is None or result <= maximum)
    ):
        bounds = _bounds_text(minimum, maximum, strictly_positive)
        raise ValueError(f"{name} must be {f'finite and {bounds}' if bounds else 'finite'}, got {_describe(value)}")
    return result


def check_choice(name: str, value: T, choices: Sequence[object]) -> T:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` naming it and listing the valid ones.

    The one checker for settings that take one of a few values, beside :func:`check_number` for numbers.

    Example:
        >>> check_choice("reduction", "sum", REDUCTIONS)
        'sum'
        >>> check_choice("reduction", "avg", REDUCTIONS)
        Traceback (most recent call last):
        ...
        ValueError: reduction must be one of none, mean, sum, got 'avg'
    """
    try:
        valid = any(type(value) is type(choice) and value == choice for choice in choices)
    except (TypeError, ValueError, RuntimeError):  # a value whose == is not a bool (an array, a tensor)
        valid = False
    if not valid:
        listed = ", ".join(c if isinstance(c, str) else repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value


def check_formulation(formulation: object) -> str:
    """Return ``formulation`` if it is valid, else raise ``ValueError`` listing the valid ones."""
    return str(check_choice("formulation", formulation, FORMULATIONS))


def check_reduction(reduction: object) -> str:
    """Return ``reduction`` if it is valid, else raise ``ValueError`` listing the valid ones."""
    return str(check_choice("reduction", reduction, REDUCTIONS))


def check_loss_weight(loss_weight: object) -> float:
    """The one rule for a loss weight (``BalancedL1Loss``, the detection adapters): finite and >= 0."""
    return check_number("loss_weight", loss_weight, minimum=0.0)


def check_avg_factor(avg_factor: object, reduction: str) -> object:
    """Check ``avg_factor`` against ``reduction`` and return what the loss should use.

    With ``reduction="none"`` it is ignored, whatever it is (as mmdetection does), and ``None`` is
    returned. With ``"sum"`` any ``avg_factor`` is a ``ValueError``. With ``"mean"`` a host number
    (Python or NumPy scalar) must be finite and >= 0 and is returned as a ``float``; anything else
    is returned unchanged for the backend to check (a tensor or array: its value is never read on
    the host, which would force a device synchronisation).
    """
    if avg_factor is None or reduction == "none":
        return None
    if reduction == "sum":
        raise ValueError(
            "avg_factor can not be used with reduction='sum'; use reduction='mean' "
            f"(sum / (avg_factor + eps)) or drop avg_factor (got avg_factor={_describe(avg_factor)})"
        )
    if isinstance(avg_factor, (numbers.Real, bool)):
        return check_number("avg_factor", avg_factor, minimum=0.0)
    return avg_factor


#: The half-precision dtypes that every backend computes in float32 (as autocast does for PyTorch's own losses).
HALF_DTYPES: tuple[str, ...] = ("float16", "bfloat16")


def compute_dtype_name(name: str) -> str:
    """The dtype a backend computes the loss in for inputs of dtype ``name``: float32 for the half ones.

    Example:
        >>> compute_dtype_name("bfloat16"), compute_dtype_name("float64")
        ('float32', 'float64')
    """
    return "float32" if name in HALF_DTYPES else name


class DtypeRange(NamedTuple):
    """What a floating dtype can hold: its name, largest finite value and smallest positive value."""

    name: str
    max: float
    smallest: float

    @classmethod
    def of(cls, name: str, finfo: object) -> DtypeRange:
        """The range from any framework's ``finfo`` (torch, NumPy, JAX, ml_dtypes).

        The smallest positive value is the smallest subnormal, ``smallest_normal * eps`` (both powers of two,
        so the product is exact), which every ``finfo`` has under these names.
        """
        info: Any = finfo
        return cls(name, float(info.max), float(info.smallest_normal) * float(info.eps))


@dataclass(frozen=True)
class BalancedL1Params:
    """Validated parameters of the Balanced L1 loss and the constants derived from them.

    Args:
        alpha: scale of the inlier gradient ``alpha * ln(b|x|/beta + 1)``; finite, > 0.
        gamma: the outlier gradient (the cap); finite, > 0.
        beta: the inflection point between inliers and outliers; finite, > 0.
        formulation: ``"scaled"`` (``L_beta(x) = beta * L_1(x / beta)``, continuous gradient)
            or ``"mmdet"`` (mmdetection's expression, gradient jump at ``beta != 1``).
    """

    alpha: float = 0.5
    gamma: float = 1.5
    beta: float = 1.0
    formulation: str = "scaled"

    def __post_init__(self) -> None:
        for name in ("alpha", "gamma", "beta"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), strictly_positive=True))
        check_formulation(self.formulation)
        if self.gamma / self.alpha > MAX_GAMMA_OVER_ALPHA:
            raise ValueError(
                f"gamma / alpha must be at most {MAX_GAMMA_OVER_ALPHA:g} so that b = exp(gamma / alpha) - 1 "
                f"fits float32, got gamma={self.gamma!r}, alpha={self.alpha!r} (ratio {self.gamma / self.alpha:g})"
            )

    @property
    def b(self) -> float:
        """``b = exp(gamma / alpha) - 1``, so that ``alpha * ln(b + 1) = gamma``."""
        return math.expm1(self.gamma / self.alpha)

    @property
    def C(self) -> float:  # noqa: N802 - the paper's name
        """The constant of the outlier branch at ``beta = 1``: ``gamma / b - alpha``."""
        return self.gamma / self.b - self.alpha

    @property
    def q(self) -> float:
        """Offset of the inlier log term: 1 for ``scaled``, ``1 / beta`` for ``mmdet``.

        With ``u = b * min(|x|, beta) / beta`` both formulations read
        ``L = alpha * beta / b * ((u + q) * ln(1 + u) - u) + gamma * max(|x| - beta, 0)``.
        """
        return 1.0 if self.formulation == "scaled" else 1.0 / self.beta

    @property
    def max_gradient(self) -> float:
        """The largest ``|dL/dx|`` over all ``x``: ``gamma`` for ``scaled``.

        For ``mmdet`` the inlier gradient is ``alpha * (ln(1 + u) + c / (1 + u))``, ``c = q - 1``, on
        ``0 <= u < b``: a convex function of ``u`` for ``c > 0``, increasing for ``c <= 0``, so its
        largest magnitude is at an end: ``alpha * |c|`` at 0 or ``gamma + alpha * c / (1 + b)`` at ``b``.
        """
        c = self.q - 1.0
        return max(self.gamma, self.alpha * abs(c), self.gamma + self.alpha * c / (1.0 + self.b))

    def check_fits(self, compute: DtypeRange, gradient: DtypeRange, *, cached: bool = True) -> None:
        """Raise ``ValueError`` if the loss cannot be computed in ``compute`` or its gradient held in ``gradient``.

        Every constant the computation multiplies by (``alpha``, ``gamma``, ``beta``, ``alpha * beta / b``
        and, for ``mmdet``, ``1 / beta`` and ``alpha * (1 / beta - 1)``) must be finite and nonzero in the
        computation dtype, and the largest gradient (:attr:`max_gradient`) finite in the gradient's dtype
        (``pred``'s: float16 holds at most 65504). Otherwise finite inputs could give ``inf`` or NaN.
        """
        (_check_fits_cached if cached else _check_fits)(self, compute, gradient)


def _check_fits(params: BalancedL1Params, compute: DtypeRange, gradient: DtypeRange) -> None:
    p = params
    constants = {"alpha": p.alpha, "gamma": p.gamma, "beta": p.beta, "alpha * beta / b": p.alpha * p.beta / p.b}
    if p.formulation == "mmdet":
        constants["1 / beta"] = p.q
        if p.q != 1.0:
            constants["alpha * |1 / beta - 1|"] = p.alpha * abs(p.q - 1.0)
    setting = f"alpha={p.alpha!r}, gamma={p.gamma!r}, beta={p.beta!r}, formulation={p.formulation!r}"
    for name, value in constants.items():
        if not compute.smallest <= value <= compute.max:
            raise ValueError(
                f"{name} = {value:.6g} cannot be represented in {compute.name} (positive values from "
                f"{compute.smallest:.3g} to {compute.max:.6g}), with {setting}: finite inputs would give "
                "inf or NaN; use float64 inputs or parameters of a smaller range"
            )
    if p.max_gradient > gradient.max:
        raise ValueError(
            f"the gradient of the loss reaches {p.max_gradient:.6g} with {setting}, beyond {gradient.name}'s "
            f"largest finite value {gradient.max:.6g}, so it would be inf; use {compute.name} inputs, a larger "
            "beta or formulation='scaled'"
        )


_check_fits_cached = functools.lru_cache(maxsize=256)(_check_fits)


def check_loss_weight_fits(
    loss_weight: float, params: BalancedL1Params, result: DtypeRange, gradient: DtypeRange
) -> None:
    """Raise ``ValueError`` if multiplying by ``loss_weight`` can turn a finite loss or gradient into inf (or 0).

    A nonzero ``loss_weight`` must be a positive number of the result's dtype (from its smallest
    positive value to its largest, as every constant of :meth:`BalancedL1Params.check_fits`), and
    ``loss_weight * max_gradient`` must be finite in the gradient's dtype (``pred``'s).
    """
    if loss_weight == 0.0:
        return
    largest = min(result.max, gradient.max / params.max_gradient)
    if not result.smallest <= loss_weight <= largest:
        raise ValueError(
            f"loss_weight = {loss_weight:.6g} does not fit a {result.name} loss with a {gradient.name} gradient: a "
            f"nonzero loss_weight must be from {result.smallest:.3g} to {largest:.6g}, so that it is a nonzero "
            f"{result.name} and loss_weight * the largest gradient ({params.max_gradient:.6g} with alpha="
            f"{params.alpha!r}, gamma={params.gamma!r}, beta={params.beta!r}, formulation={params.formulation!r}) "
            f"is finite in {gradient.name}; otherwise finite inputs would give inf (or 0). Use float64 inputs or a "
            "loss_weight in that range"
        )


_check_loss_weight_fits_cached = functools.lru_cache(maxsize=256)(check_loss_weight_fits)


@functools.lru_cache(maxsize=256, typed=True)
def _cached_params(alpha: object, gamma: object, beta: object, formulation: object) -> BalancedL1Params:
    return BalancedL1Params(alpha, gamma, beta, formulation)  # type: ignore[arg-type]


def params_for(alpha: object, gamma: object, beta: object, formulation: object) -> BalancedL1Params:
    """Validated :class:`BalancedL1Params`, cached: a loss called every step validates once."""
    try:
        return _cached_params(alpha, gamma, beta, formulation)
    except TypeError as error:  # unhashable argument: let the constructor raise its own clear error
        if "unhashable" not in str(error):
            raise
        return BalancedL1Params(alpha, gamma, beta, formulation)  # type: ignore[arg-type]


def inlier_threshold(beta: float, mantissa_bits: int, min_exponent: int) -> float:
    """The smallest float ``t >= beta`` of a binary format, so that ``a < t`` there is exactly ``a < beta``.

    An input ``a`` of that format lies below the real number ``beta`` exactly when it lies below
    ``beta`` rounded *up* to the format. Rounding to nearest instead would make a float32 input equal
    to ``float32(0.11)``, which is below 0.11, an outlier. Pure Python, so that it also runs while
    ``torch.compile`` traces.

    Args:
        beta: the inflection point, finite and > 0.
        mantissa_bits: significand bits of the format, the implicit one included (float32: 24).
        min_exponent: exponent of the smallest positive (subnormal) value (float32: -149).
    """
    if mantissa_bits >= 53:
        return beta
    _, exponent = math.frexp(beta)
    ulp = 2.0 ** max(exponent - mantissa_bits, min_exponent)
    rounded = round(beta / ulp) * ulp
    return rounded + ulp if rounded < beta else rounded
