"""The arms of a comparison: each names one way to configure the same freshly built detector.

An arm is a name, a one-line description, a ``configure(model, **parameters)`` function that changes a
torchvision Faster R-CNN in place (its losses, samplers or feature pyramid) and the parameters it takes.
``balanced-l1 compare`` builds the model with the same seed for every arm and then calls the arm's
``configure``, so arms differ only by what ``configure`` does. An arm is named on the command line with
its parameters in parentheses, ``balanced_l1(alpha=0.3,gamma=1.0)``, and a grid of values with ``|``,
``balanced_l1(alpha=0.2|0.3|0.5,gamma=1.0|1.5)`` (see :mod:`balanced_l1.experiments.arm_specs`).

The box-loss arms put their loss where the paper and mmdetection's Libra R-CNN config put Balanced L1:
in the RoI head (``placement=roi``); the RPN keeps torchvision's smooth L1 (beta 1/9). ``placement=rpn``
or ``placement=both`` move or add it. Every box loss of the registry
(:func:`~balanced_l1.detection.box_loss.register_box_loss`) is an arm of its name, whose parameters, defaults
and checks are the registry's (:func:`box_loss_arm`), plus ``placement``.

To add an arm, write its ``configure`` in an importable module, call :func:`register_arm` there, and name
the module in the ``arm_modules`` setting (``--arm-modules my_arms``): every process of a comparison,
worker processes included, imports it before the arms are looked up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from balanced_l1.detection.balance_prediction import TORCHVISION_ROI_BOX_LOSS
from balanced_l1.detection.box_loss import (
    FLOAT32,
    BoxLoss,
    BoxLossConfig,
    LossParameter,
    box_loss_names,
    choice_check,
    get_box_loss,
)

#: The shape of an arm's name, of its parameters' names and of the values of its string parameters: each is part
#: of the file names in the output folder (:attr:`~balanced_l1.experiments.arm_specs.ArmSpec.file_stem`), joined
#: by ``__`` (and a parameter's name and value by ``-``), so none may hold ``__`` or begin or end with ``_``, and a
#: parameter's name holds no ``-`` either. The file stem of every arm is then unique by construction.
ARM_NAME_PATTERN = re.compile(r"[A-Za-z0-9.-]+(?:_[A-Za-z0-9.-]+)*")
_KEY_PATTERN = re.compile(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*")


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison.

    Attributes:
        name: the name used on the command line (``--arms``) and in reports.
        description: one line for the report.
        configure: changes a freshly built torchvision Faster R-CNN in place, called as
            ``configure(model, **parameters)`` with every parameter of :attr:`parameters` (defaults filled in),
            or ``configure(model)`` for an arm without parameters. It runs right after the model is built under
            the run's seed, so parameters it creates are reproducible too.
        parameters: the parameters the arm takes, each a
            :class:`~balanced_l1.detection.box_loss.LossParameter` (its ``check`` normalises a value of an arm spec).
        check: checks a full set of parameter values without a model (raises ``ValueError`` or ``TypeError``);
            called before anything runs.
        box_loss: the registered box loss this arm trains with and nothing else (``None`` for other arms).
    """

    name: str
    description: str
    configure: Callable[..., None]
    parameters: tuple[LossParameter, ...] = ()
    check: Callable[..., None] | None = None
    box_loss: str | None = None

    def defaults(self) -> dict[str, float | str]:
        """Every parameter at its default."""
        return {p.name: p.default for p in self.parameters}

    def apply(self, model: nn.Module, values: Mapping[str, Any]) -> None:
        """Configure ``model`` with ``values`` over the defaults."""
        if self.parameters:
            self.configure(model, **{**self.defaults(), **values})
        else:
            self.configure(model)


_REGISTRY: dict[str, Arm] = {}


def _check_part(kind: str, text: object, pattern: re.Pattern[str], allowed: str) -> None:
    if not isinstance(text, str) or not pattern.fullmatch(text):
        raise ValueError(
            f"{kind} must be made of {allowed}, joined by single '_' (no '__', no '_' at either end: it is part of "
            f"file names), got {text!r}"
        )


def register_arm(arm: Arm) -> Arm:
    """Add ``arm`` to the registry.

    Args:
        arm: the arm to add; its name must be new and made of letters, digits, ``.`` and ``-``, joined by single
            ``_``; its parameters' names of letters and digits joined by single ``_``, and the choices of its
            string parameters as its name (see :data:`ARM_NAME_PATTERN`: the output folder's file names).

    Returns:
        The arm, so the call can be used as an expression.

    Raises:
        ValueError: if a name or choice has another shape, or the arm's name is already registered.
    """
    _check_part("arm name", arm.name, ARM_NAME_PATTERN, "letters, digits, '.' and '-'")
    for parameter in arm.parameters:
        _check_part(f"arm {arm.name!r}: a parameter's name", parameter.name, _KEY_PATTERN, "letters and digits")
        for choice in parameter.choices:
            _check_part(f"arm {arm.name!r}: a choice of {parameter.name}", choice, ARM_NAME_PATTERN,
                        "letters, digits, '.' and '-'")  # fmt: skip
    if arm.name in _REGISTRY:
        raise ValueError(f"arm {arm.name!r} is already registered")
    _REGISTRY[arm.name] = arm
    return arm


def arm_names() -> tuple[str, ...]:
    """The registered arm names, in registration order.

    Returns:
        The names, ``smooth_l1`` (the baseline) first; a box loss registered after this module was imported
            is an arm too (see :func:`box_loss_arm`).
    """
    _add_box_loss_arms()
    return tuple(_REGISTRY)


def box_loss_arm_names() -> tuple[str, ...]:
    """The arms that are a box loss and nothing else, in registration order: the default search space of a tuning.

    Example:
        >>> box_loss_arm_names()[:3]
        ('smooth_l1', 'balanced_l1', 'smooth_l1_beta1')
    """
    _add_box_loss_arms()
    return tuple(name for name, arm in _REGISTRY.items() if arm.box_loss is not None)


def get_arm(name: str) -> Arm:
    """Look up a registered arm.

    Args:
        name: the arm's name.

    Returns:
        The arm.

    Raises:
        ValueError: for an unknown name, listing the valid ones.

    Example:
        >>> get_arm("smooth_l1").name
        'smooth_l1'
    """
    if name not in _REGISTRY:
        _add_box_loss_arms()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown arm {name!r}; valid arms: {', '.join(_REGISTRY)}") from None


# --- the box-loss arms ---------------------------------------------------------------------------------------


def _placement(loss: BoxLoss) -> LossParameter:
    help = (
        "the RoI head only: the loss needs its proposals"
        if loss.decoded
        else "where the loss goes: the RoI head (the paper's), the RPN, or both"
    )
    return LossParameter("placement", "roi", help, choice_check("placement", loss.placements), None, loss.placements)


def box_loss_parameters(loss: str, fixed: Mapping[str, Any] | None = None) -> tuple[LossParameter, ...]:
    """An arm's parameters for the registered box loss ``loss``: the loss's own (less those ``fixed``), its
    ``loss_weight`` and ``placement`` (default ``"roi"``, the paper's place)."""
    box_loss = get_box_loss(loss)
    fixed = fixed or {}
    return (*(p for p in box_loss.parameters if p.name not in fixed), box_loss.loss_weight, _placement(box_loss))


def box_loss_check(loss: str, fixed: Mapping[str, Any] | None = None) -> Callable[..., None]:
    """An arm's check for the box loss ``loss``: every value, and everything the loss derives from them, computable
    in float32 (:meth:`~balanced_l1.detection.box_loss.BoxLossConfig.check_fits`) before anything runs."""

    def check(*, loss_weight: float, placement: str, **values: Any) -> None:
        config = BoxLossConfig(loss, {**(fixed or {}), **values}, loss_weight)
        config.check_fits(FLOAT32)
        _placement(config.box_loss).check(placement)

    return check


def _use(loss: str, fixed: Mapping[str, Any] | None = None) -> Callable[..., None]:
    def configure(model: nn.Module, *, loss_weight: float, placement: str, **values: Any) -> None:
        from balanced_l1.detection.losses import use_box_loss

        use_box_loss(model, loss, placement=placement, loss_weight=loss_weight, **{**(fixed or {}), **values})

    return configure


def box_loss_arm(
    loss: str,
    *,
    name: str | None = None,
    description: str | None = None,
    fixed: Mapping[str, Any] | None = None,
    configure: Callable[..., None] | None = None,
) -> Arm:
    """The arm that trains with the registered box loss ``loss``, its parameters, check and configure derived from it.

    Args:
        loss: a registered box loss.
        name: the arm's name (default: the loss's).
        description: one line for the report (default: the loss's description, in the RoI head).
        fixed: parameters of the loss the arm fixes (not given in its spec).
        configure: replaces :func:`~balanced_l1.detection.use_box_loss` at ``placement`` (called with the same
            keywords).
    """
    box_loss = get_box_loss(loss)
    return Arm(
        loss if name is None else name,
        _description(box_loss) if description is None else description,
        _use(loss, fixed) if configure is None else configure,
        box_loss_parameters(loss, fixed),
        box_loss_check(loss, fixed),
        loss,
    )


def _description(loss: BoxLoss) -> str:
    where = "" if loss.decoded else ", in the RoI head by default"
    return f"{loss.description}{where}; the RPN keeps smooth L1"


def _add_box_loss_arms() -> None:
    """An arm for every box loss registered since this module was imported (unless an arm of that name exists)."""
    for loss in box_loss_names():
        if loss not in _REGISTRY:
            register_arm(box_loss_arm(loss))


def _smooth_l1(model: nn.Module, *, beta: float, loss_weight: float, placement: str) -> None:
    """torchvision's own loss when beta and the weight are torchvision's; else smooth L1 where ``placement`` says."""
    if BoxLossConfig("smooth_l1", {"beta": beta}, loss_weight) != TORCHVISION_ROI_BOX_LOSS:
        _use("smooth_l1")(model, beta=beta, loss_weight=loss_weight, placement=placement)


BASELINE_ARM = "smooth_l1"

register_arm(
    box_loss_arm(
        "smooth_l1",
        description="torchvision's box losses: smooth L1, beta 1/9, in the RPN and the RoI head (with parameters: "
        "smooth L1 of that beta and weight where placement says)",
        configure=_smooth_l1,
    )
)
register_arm(
    box_loss_arm(
        "balanced_l1",
        description="Balanced L1 in the RoI head as the paper places it (alpha 0.5, gamma 1.5, beta 1); the RPN "
        "keeps smooth L1",
    )
)
register_arm(
    box_loss_arm(
        "smooth_l1",
        name="smooth_l1_beta1",
        description="smooth L1 with beta 1 in the RoI head (the paper's baseline, whose RPN keeps beta 1/9)",
        fixed={"beta": 1.0},
    )
)
register_arm(box_loss_arm("l1", description="L1 in the RoI head (placement=both: mmdetection's Faster R-CNN baseline)"))
_add_box_loss_arms()  # the IoU losses


def _use_iou_balanced_sampling(model: nn.Module) -> None:
    from balanced_l1.detection.iou_balanced_sampling import use_iou_balanced_sampling

    use_iou_balanced_sampling(model, num_bins=3, floor_thr=-1.0, floor_fraction=0.0)


def middle_fpn_level(model: nn.Module) -> int:
    """The middle level of a torchvision FPN backbone, where an arm balances the pyramid.

    1 of 3 levels (the small model, stride 8), 2 of 4 (ResNet-50-FPN, stride 16, as mmdetection's Libra
    config), 1 of 2 (MobileNetV3-FPN).

    Raises:
        TypeError: if the backbone has no torchvision FPN whose levels can be counted.
    """
    fpn = getattr(getattr(model, "backbone", None), "fpn", None)
    blocks = getattr(fpn, "inner_blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(
            f"expected a torchvision FPN backbone (model.backbone.fpn), got {type(model.backbone).__name__}"
        )
    return len(blocks) // 2


def _use_balanced_feature_pyramid(model: nn.Module) -> None:
    from balanced_l1.detection.bfp import use_balanced_feature_pyramid

    use_balanced_feature_pyramid(model, refine_level=middle_fpn_level(model), refine_type="non_local")


def _use_libra(model: nn.Module, **box_loss: Any) -> None:
    """``use_libra`` at the middle FPN level: the bfp and iou_sampling arms' settings, and the balanced_l1 arm's."""
    from balanced_l1.detection.libra import use_libra

    use_libra(model, refine_level=middle_fpn_level(model), refine_type="non_local", **box_loss)


register_arm(
    Arm(
        "iou_sampling",
        "IoU-balanced sampling of the RoI head's negatives (3 IoU bins); smooth L1 box losses",
        _use_iou_balanced_sampling,
    )
)
register_arm(
    Arm(
        "bfp",
        "Balanced Feature Pyramid (balanced at the middle FPN level, non-local refinement); smooth L1 box losses",
        _use_balanced_feature_pyramid,
    )
)
register_arm(
    Arm(
        "libra",
        "Libra R-CNN as use_libra: the bfp, iou_sampling and balanced_l1 arms together (Balanced L1 in the RoI head)",
        _use_libra,
        box_loss_parameters("balanced_l1"),
        box_loss_check("balanced_l1"),
    )
)


def _use_libra_mmdet(model: nn.Module) -> None:
    from balanced_l1.detection.libra import use_libra_mmdet

    use_libra_mmdet(model)


register_arm(
    Arm(
        "libra_mmdet",
        "Libra R-CNN as mmdetection 3.3 configures it: BFP over every level incl. pool (mmcv's non-local block), "
        "instance-balanced positives + mmdetection's IoU-balanced negatives, RPN neg_pos_ub=5, Balanced L1 in the "
        "RoI head",
        _use_libra_mmdet,
    )
)
