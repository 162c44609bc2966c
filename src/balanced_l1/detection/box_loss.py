"""The box-loss registry: each box loss a detector can train with, declared once.

A box loss is declared by :func:`register_box_loss`: its name, its function (an element-wise loss on encoded
deltas, or a torchvision IoU op on decoded boxes, RoI head only), its default loss weight and its
parameters. Each parameter (:class:`LossParameter`) has a default, a check, and the range a search may draw
it from (:class:`SearchRange`). Everything else reads this declaration: :class:`BoxLossConfig` (what a
switched detector module computes), :func:`~balanced_l1.detection.use_box_loss`, the comparison's arms, the
``balanced-l1 balance`` flags and choices, and the gradient-balance prediction. Adding a box loss is one
:func:`register_box_loss` call.

The search ranges are the span of values worth trying on a detector, not the span the checks allow:

- Balanced L1's ``alpha`` 0.05 to 2.0 and ``beta`` 0.01 to 1.0 on a log scale (each spans decades: alpha
  sets the inliers' gradient ``alpha * ln(1 + b|x|/beta)``, the paper's 0.5 in the middle; beta 1 is the
  paper's inflection point and Libra RetinaNet's 0.11 is inside), ``gamma`` 0.5 to 3.0 linear (the paper
  tries 1.0 to 2.0; beyond 3 the outliers' cap dominates the classification loss). beta's range is for the
  ``scaled`` formulation, whose gradient stays continuous at every beta.
- smooth L1's ``beta`` 0.01 to 1.0 on a log scale: torchvision's 1/9 and the paper's 1 are inside.
- ``loss_weight`` 0.25 to 4.0 on a log scale for the losses on deltas (the weight 1 of torchvision and
  mmdetection in the middle, a factor 4 either way) and 2 to 20 for the IoU losses, whose values are ~10
  times smaller (mmdetection weighs GIoU 10 and CIoU 12).

:data:`PLACEMENTS` names where a two-stage detector's box loss goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.nn.functional import l1_loss, smooth_l1_loss
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from balanced_l1.detection.iou_losses import decoded_box_loss
from balanced_l1.functional import balanced_l1_loss
from balanced_l1.params import (
    FORMULATIONS,
    BalancedL1Params,
    DtypeRange,
    check_choice,
    check_loss_weight,
    check_loss_weight_fits,
    check_number,
)

__all__ = [
    "CONFIG_ATTRIBUTE",
    "FLOAT32",
    "FLOAT64",
    "MAX_LOSS_WEIGHT",
    "PLACEMENTS",
    "BoxLoss",
    "BoxLossConfig",
    "LossParameter",
    "SearchRange",
    "box_loss_names",
    "choice_check",
    "get_box_loss",
    "number_check",
    "placement_stages",
    "register_box_loss",
]

#: Where a two-stage detector's box loss goes: the RoI head (the paper's and mmdetection's place), the RPN, or both.
PLACEMENTS = ("roi", "rpn", "both")
#: The instance attribute that holds a switched module's :class:`BoxLossConfig`.
CONFIG_ATTRIBUTE = "balanced_l1_config"
#: The largest loss weight: 800 times mmdetection's largest box-loss weight (CIoU's 12). A weight of 1e300
#: turns every loss into inf in float32; one far above 1e4 only makes the box loss drown the others.
MAX_LOSS_WEIGHT = 1e4
#: float32's range: detectors train in float32, so an arm's loss must be computable there.
FLOAT32 = DtypeRange("float32", float.fromhex("0x1.fffffep+127"), float.fromhex("0x1p-149"))
#: float64's range: the gradient-balance prediction computes in float64.
FLOAT64 = DtypeRange("float64", 1.7976931348623157e308, 5e-324)


@dataclass(frozen=True)
class SearchRange:
    """The range a search draws a parameter from: numbers from ``low`` to ``high`` (``log``: on a log scale),
    or strings from ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class LossParameter:
    """One parameter of a box loss (or of an arm).

    Attributes:
        name: the keyword (``alpha``) and the key in an arm spec (``balanced_l1(alpha=0.3)``).
        default: the value when not given; its type (``float`` or ``str``) is the parameter's type.
        help: one line for the documentation and the command line.
        check: ``check(value)`` returns the value normalised (a Python ``float``, ``-0.0`` as ``0.0``; a
            string) or raises ``ValueError`` / ``TypeError`` naming the parameter, the value and what is allowed.
        search: the range a search draws it from; ``None``: not searched by default.
        choices: the allowed values of a string parameter, else ``()``.
    """

    name: str
    default: float | str
    help: str
    check: Callable[[object], Any]
    search: SearchRange | None = None
    choices: tuple[str, ...] = ()


def number_check(
    name: str, *, minimum: float | None = None, strictly_positive: bool = False
) -> Callable[[object], float]:
    """A :attr:`LossParameter.check` for a finite number (``-0.0`` is returned as ``0.0``).

    Example:
        >>> number_check("beta", strictly_positive=True)(0.5)
        0.5
    """

    def check(value: object) -> float:
        return check_number(name, value, minimum=minimum, strictly_positive=strictly_positive) + 0.0

    return check


def choice_check(name: str, choices: Sequence[str]) -> Callable[[object], str]:
    """A :attr:`LossParameter.check` for one of ``choices``."""

    def check(value: object) -> str:
        return str(check_choice(name, value, choices))

    return check


def _check_loss_weight(value: object) -> float:
    weight = check_loss_weight(value) + 0.0
    if weight > MAX_LOSS_WEIGHT:
        raise ValueError(
            f"loss_weight must be <= {MAX_LOSS_WEIGHT:g}, got {weight:g} (mmdetection's largest box-loss weight is "
            "12; a far larger one drowns the other losses, and 1e300 overflows float32)"
        )
    return weight


@dataclass(frozen=True)
class BoxLoss:
    """A registered box loss (see :func:`register_box_loss`).

    Attributes:
        name: its name.
        description: one line for the documentation.
        function: ``function(pred, target, reduction="sum", **values)`` for a loss on deltas; a torchvision IoU
            op ``function(boxes, gt_boxes, reduction="sum")`` for a loss on decoded boxes.
        parameters: its own parameters, in order (the loss weight is :attr:`loss_weight`).
        loss_weight: the loss weight: its default and search range.
        decoded: whether it compares boxes decoded against the RoI head's proposals (RoI head only).
        check: ``check(values)`` raises ``ValueError`` for values that are each valid but not together.
        fits: ``fits(values, loss_weight, dtype)`` raises ``ValueError`` if the loss with these values cannot
            be computed in ``dtype`` beyond what every loss checks (see :meth:`BoxLossConfig.check_fits`).
    """

    name: str
    description: str
    function: Callable[..., Tensor]
    parameters: tuple[LossParameter, ...]
    loss_weight: LossParameter
    decoded: bool = False
    check: Callable[[Mapping[str, Any]], None] | None = None
    fits: Callable[[Mapping[str, Any], float, DtypeRange], None] | None = None

    @property
    def placements(self) -> tuple[str, ...]:
        """Where it may go: the RoI head only for a loss on decoded boxes, else any of :data:`PLACEMENTS`."""
        return ("roi",) if self.decoded else PLACEMENTS

    def parameter(self, name: str) -> LossParameter:
        """Its parameter ``name`` (``loss_weight`` included).

        Raises:
            KeyError: for a parameter it does not take.
        """
        for parameter in (*self.parameters, self.loss_weight):
            if parameter.name == name:
                return parameter
        raise KeyError(f"the {self.name} loss takes no parameter {name!r}")

    def defaults(self) -> dict[str, Any]:
        """Its parameters' defaults (the loss weight not included)."""
        return {p.name: p.default for p in self.parameters}


_REGISTRY: dict[str, BoxLoss] = {}
#: Names a loss's parameter cannot take, and why.
_RESERVED = {
    "loss_weight": "every loss has it",
    "placement": "every loss has it",
    "loss": "use_box_loss's argument",
    "model": "use_box_loss's argument",
}


def register_box_loss(
    name: str,
    function: Callable[..., Tensor],
    *,
    description: str,
    parameters: Iterable[LossParameter] = (),
    loss_weight: float = 1.0,
    decoded: bool = False,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    fits: Callable[[Mapping[str, Any], float, DtypeRange], None] | None = None,
) -> BoxLoss:
    """Declare a box loss; every part of the package that lists box losses or their parameters reads it.

    Args:
        name: the loss's name: letters, digits and single underscores (it becomes an arm name).
        function: for a loss on encoded deltas, ``function(pred, target, reduction="sum", **values)`` returning
            the summed loss; with ``decoded=True``, a torchvision IoU op ``function(boxes, gt_boxes, reduction="sum")``.
        description: one line for the documentation.
        parameters: the loss's parameters (not the loss weight), each a :class:`LossParameter`.
        loss_weight: the default loss weight; searched from 0.25 to 4 (losses on deltas) or 2 to 20 (IoU losses)
            times 1, on a log scale.
        decoded: the loss compares boxes decoded against the RoI head's proposals (RoI head only).
        check: a check of the values together, beyond each parameter's own (see :class:`BoxLoss`).
        fits: an extra check of values that the loss cannot compute in a dtype (see :class:`BoxLoss`).

    Returns:
        The registered :class:`BoxLoss`.

    Raises:
        ValueError: for a name already registered or not of that shape, a parameter named ``loss_weight``,
            ``placement``, ``loss`` or ``model``, or a parameter whose default its own check does not return.
    """
    if not (isinstance(name, str) and name and "__" not in name and name.strip("_") == name
            and all(c.isascii() and (c.isalnum() or c == "_") for c in name)):  # fmt: skip
        raise ValueError(f"a box loss name must be letters, digits and single inner underscores, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"box loss {name!r} is already registered")
    declared = tuple(parameters)
    for parameter in declared:
        if parameter.name in _RESERVED:
            raise ValueError(
                f"box loss {name!r}: a parameter cannot be named {parameter.name!r} ({_RESERVED[parameter.name]})"
            )
        if parameter.check(parameter.default) != parameter.default:
            raise ValueError(f"box loss {name!r}: the default of {parameter.name} is not what its check returns")
    weight = LossParameter(
        "loss_weight",
        _check_loss_weight(loss_weight),
        "factor applied to the box loss",
        _check_loss_weight,
        SearchRange(2.0, 20.0, log=True) if decoded else SearchRange(0.25, 4.0, log=True),
    )
    loss = BoxLoss(name, description, function, declared, weight, decoded, check, fits)
    _REGISTRY[name] = loss
    return loss


def get_box_loss(name: str) -> BoxLoss:
    """The registered box loss ``name``.

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
        >>> get_box_loss("giou").loss_weight.default
        10.0
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"loss must be one of {', '.join(_REGISTRY)}, got {name!r}") from None


def box_loss_names() -> tuple[str, ...]:
    """The registered box losses, in registration order (``balanced_l1`` first)."""
    return tuple(_REGISTRY)


def placement_stages(placement: str) -> tuple[bool, bool]:
    """``(rpn, roi_heads)`` of a placement.

    Raises:
        ValueError: for an unknown placement, listing the valid ones.

    Example:
        >>> placement_stages("roi")
        (False, True)
    """
    check_choice("placement", placement, PLACEMENTS)
    return placement in ("rpn", "both"), placement in ("roi", "both")


class BoxLossConfig:
    """The box loss a switched module uses: which registered loss, its validated parameter values and its weight.

    Args:
        loss: a registered box loss (:func:`box_loss_names`).
        values: its parameters, each checked by its :class:`LossParameter`; the others take their defaults.
        loss_weight: factor applied to the box loss, finite, >= 0 and <= :data:`MAX_LOSS_WEIGHT`; ``None``
            takes the loss's default (1; GIoU and DIoU 10, CIoU 12 as mmdetection's configs).

    Raises:
        ValueError: for an unknown loss or parameter, or a value its check refuses.
        TypeError: for a value of the wrong type.

    Example:
        >>> BoxLossConfig("smooth_l1", {"beta": 1.0})
        BoxLossConfig('smooth_l1', {'beta': 1.0}, loss_weight=1.0)
    """

    __slots__ = ("loss", "loss_weight", "values")
    loss: str
    values: Mapping[str, Any]
    loss_weight: float

    def __init__(
        self, loss: str = "balanced_l1", values: Mapping[str, object] | None = None, loss_weight: object = None
    ) -> None:
        box_loss = get_box_loss(loss)
        given = dict(values or {})
        unknown = sorted(set(given) - {p.name for p in box_loss.parameters})
        if unknown:
            takes = ", ".join(p.name for p in box_loss.parameters) or "no parameter but loss_weight"
            raise ValueError(f"the {loss} loss takes {takes}; got {', '.join(unknown)}")
        checked = {p.name: p.check(given.get(p.name, p.default)) for p in box_loss.parameters}
        weight = box_loss.loss_weight.check(box_loss.loss_weight.default if loss_weight is None else loss_weight)
        if box_loss.check is not None:
            box_loss.check(checked)
        for name, value in (("loss", loss), ("values", checked), ("loss_weight", weight)):
            object.__setattr__(self, name, value)

    @property
    def box_loss(self) -> BoxLoss:
        """The registered loss."""
        return get_box_loss(self.loss)

    @property
    def decoded(self) -> bool:
        """Whether the loss compares decoded boxes (an IoU loss) rather than encoded deltas."""
        return self.box_loss.decoded

    def check_fits(self, dtype: DtypeRange) -> None:
        """Raise ``ValueError`` if the loss cannot be computed with these values in ``dtype``.

        Every nonzero number of the values, and the loss weight, must be a positive number of ``dtype`` in
        magnitude (from its smallest subnormal to its largest value), and the loss's own ``fits`` must pass
        (Balanced L1: every constant it derives, ``b = exp(gamma / alpha) - 1`` and ``alpha * beta / b``
        among them, and ``loss_weight`` times its largest gradient).
        """
        for name, value in (*self.values.items(), ("loss_weight", self.loss_weight)):
            if isinstance(value, float) and value != 0.0 and not dtype.smallest <= abs(value) <= dtype.max:
                raise ValueError(
                    f"{name} = {value:.6g} cannot be represented in {dtype.name} (magnitudes from "
                    f"{dtype.smallest:.3g} to {dtype.max:.6g}): the {self.loss} loss would give inf or NaN"
                )
        fits = self.box_loss.fits
        if fits is not None:
            fits(self.values, self.loss_weight, dtype)

    def summed_decoded(self, deltas: Tensor, proposals: Tensor, gt_boxes: Tensor, box_coder: object) -> Tensor:
        """Return ``loss_weight * sum(IoU loss)`` of ``deltas`` decoded against ``proposals`` (:mod:`.iou_losses`)."""
        total = decoded_box_loss(self.box_loss.function, deltas, proposals, gt_boxes, box_coder)
        return total * self.loss_weight if self.loss_weight != 1.0 else total

    def summed(self, pred: Tensor, target: Tensor) -> Tensor:
        """Return ``loss_weight * sum(loss(pred - target))`` (0 with a gradient if empty)."""
        total = self.box_loss.function(pred, target, reduction="sum", **self.values)
        return total * self.loss_weight if self.loss_weight != 1.0 else total

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"BoxLossConfig is immutable; build a new one instead of setting {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoxLossConfig):
            return NotImplemented
        return (self.loss, dict(self.values), self.loss_weight) == (other.loss, dict(other.values), other.loss_weight)

    def __hash__(self) -> int:
        return hash((self.loss, tuple(self.values.items()), self.loss_weight))

    def __repr__(self) -> str:
        return f"BoxLossConfig({self.loss!r}, {dict(self.values)!r}, loss_weight={self.loss_weight!r})"

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, Any], float]]:
        return (BoxLossConfig, (self.loss, dict(self.values), self.loss_weight))


def _positive(name: str, default: float, help: str, low: float, high: float, *, log: bool) -> LossParameter:
    return LossParameter(name, default, help, number_check(name, strictly_positive=True), SearchRange(low, high, log))


def _balanced_l1_check(values: Mapping[str, Any]) -> None:
    BalancedL1Params(**values)  # gamma / alpha at most 80


def _balanced_l1_fits(values: Mapping[str, Any], loss_weight: float, dtype: DtypeRange) -> None:
    params = BalancedL1Params(**values)
    params.check_fits(dtype, dtype)
    check_loss_weight_fits(loss_weight, params, dtype, dtype)


_BALANCED = BalancedL1Params()
register_box_loss(
    "balanced_l1",
    balanced_l1_loss,
    description="Balanced L1 (Libra R-CNN): a raised inlier gradient alpha * ln(1 + b|x|/beta), outliers capped at "
    "gamma",
    parameters=(
        _positive("alpha", _BALANCED.alpha, "inlier gradient scale", 0.05, 2.0, log=True),
        _positive("gamma", _BALANCED.gamma, "outlier gradient (the cap)", 0.5, 3.0, log=False),
        _positive("beta", _BALANCED.beta, "inflection point", 0.01, 1.0, log=True),
        LossParameter(
            "formulation",
            _BALANCED.formulation,
            "how beta scales: scaled or mmdet",
            choice_check("formulation", FORMULATIONS),
            None,
            FORMULATIONS,
        ),
    ),
    check=_balanced_l1_check,
    fits=_balanced_l1_fits,
)
register_box_loss(
    "smooth_l1",
    smooth_l1_loss,
    description="smooth L1 (torchvision's box loss, beta 1/9; the paper's baseline has beta 1)",
    parameters=(_positive("beta", 1.0 / 9.0, "smooth L1's beta (torchvision's 1/9)", 0.01, 1.0, log=True),),
)
register_box_loss("l1", l1_loss, description="L1 (mmdetection's Faster R-CNN baseline)")
for _name, _op, _weight, _source in (
    ("giou", generalized_box_iou_loss, 10.0, "as mmdetection's Faster R-CNN config"),
    ("diou", distance_box_iou_loss, 10.0, "GIoU's: mmdetection ships no DIoU Faster R-CNN config"),
    ("ciou", complete_box_iou_loss, 12.0, "as mmdetection's Faster R-CNN config"),
):
    register_box_loss(
        _name,
        _op,
        description=f"{_name.upper()} loss on boxes decoded against the RoI head's proposals (mmdetection's "
        f"reg_decoded_bbox), loss weight {_weight:g}, {_source}",
        loss_weight=_weight,
        decoded=True,
    )
