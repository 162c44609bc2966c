"""The arms of a comparison: each names one way to configure the same freshly built detector.

An arm is a name, a one-line description, a ``configure(model, **parameters)`` function that changes a
torchvision Faster R-CNN in place (its losses, samplers or feature pyramid) and the parameters it takes.
``balanced-l1 compare`` builds the model with the same seed for every arm and then calls the arm's
``configure``, so arms differ only by what ``configure`` does. An arm is named on the command line with
its parameters in parentheses, ``balanced_l1(alpha=0.3,gamma=1.0)``, and a grid of values with ``|``,
``balanced_l1(alpha=0.2|0.3|0.5,gamma=1.0|1.5)`` (see :mod:`balanced_l1.experiments.arm_specs`).

The box-loss arms put their loss where the paper and mmdetection's Libra R-CNN config put Balanced L1:
in the RoI head (``placement=roi``); the RPN keeps torchvision's smooth L1 (beta 1/9). ``placement=rpn``
or ``placement=both`` move or add it.

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

from balanced_l1.params import BalancedL1Params

#: The shape of an arm's name (it is also part of file names in the output folder).
ARM_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ArmParameter:
    """One parameter an arm takes.

    Attributes:
        name: the key in ``arm(key=value)``.
        default: the value when not given; its type (``float`` or ``str``) is the parameter's type.
        help: one line for the documentation.
        choices: the allowed values of a string parameter.
    """

    name: str
    default: float | str
    help: str
    choices: tuple[str, ...] = ()


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
        parameters: the parameters the arm takes.
        check: checks a full set of parameter values without a model (raises ``ValueError`` or ``TypeError``);
            called before anything runs.
    """

    name: str
    description: str
    configure: Callable[..., None]
    parameters: tuple[ArmParameter, ...] = ()
    check: Callable[..., None] | None = None

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


def register_arm(arm: Arm) -> Arm:
    """Add ``arm`` to the registry.

    Args:
        arm: the arm to add; its name must be new and made of letters, digits, ``_``, ``.`` and ``-``.

    Returns:
        The arm, so the call can be used as an expression.

    Raises:
        ValueError: if the name has another character, or is already registered.
    """
    if not isinstance(arm.name, str) or not ARM_NAME_PATTERN.fullmatch(arm.name):
        raise ValueError(f"arm name must be made of letters, digits, '_', '.' and '-', got {arm.name!r}")
    if arm.name in _REGISTRY:
        raise ValueError(f"arm {arm.name!r} is already registered")
    _REGISTRY[arm.name] = arm
    return arm


def arm_names() -> tuple[str, ...]:
    """The registered arm names, in registration order.

    Returns:
        The names, ``smooth_l1`` (the baseline) first.
    """
    return tuple(_REGISTRY)


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
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown arm {name!r}; valid arms: {', '.join(_REGISTRY)}") from None


# --- the box-loss arms ---------------------------------------------------------------------------------------

_LOSS_WEIGHT = ArmParameter("loss_weight", 1.0, "factor applied to the box loss")
_PLACEMENT = ArmParameter(
    "placement", "roi", "where the loss goes: the RoI head (the paper's), the RPN, or both", ("roi", "rpn", "both")
)
_BALANCED_L1_DEFAULTS = BalancedL1Params()
_BALANCED_L1_PARAMETERS = (
    ArmParameter("alpha", _BALANCED_L1_DEFAULTS.alpha, "inlier gradient scale"),
    ArmParameter("gamma", _BALANCED_L1_DEFAULTS.gamma, "outlier gradient (the cap)"),
    ArmParameter("beta", _BALANCED_L1_DEFAULTS.beta, "inflection point"),
    ArmParameter("formulation", _BALANCED_L1_DEFAULTS.formulation, "how beta scales", ("scaled", "mmdet")),
    _LOSS_WEIGHT,
    _PLACEMENT,
)
#: torchvision's smooth L1 beta in both stages of its Faster R-CNN.
TORCHVISION_SMOOTH_L1_BETA = 1.0 / 9.0


def _check_box_loss(loss: str, *, beta: float = 1.0, loss_weight: float, placement: str, **balanced: Any) -> None:
    from balanced_l1.detection.box_loss import BoxLossConfig, placement_stages

    placement_stages(placement)
    BoxLossConfig(BalancedL1Params(beta=beta, **balanced), loss_weight, loss)


def _use_box_loss(model: nn.Module, loss: str, *, loss_weight: float, placement: str, beta: float = 1.0) -> None:
    from balanced_l1.detection.box_loss import placement_stages
    from balanced_l1.detection.losses import use_box_loss

    rpn, roi_heads = placement_stages(placement)
    use_box_loss(model, loss, rpn=rpn, roi_heads=roi_heads, beta=beta, loss_weight=loss_weight)


def _smooth_l1(model: nn.Module, *, beta: float, loss_weight: float, placement: str) -> None:
    """torchvision's own loss when beta and the weight are torchvision's; else smooth L1 where ``placement`` says."""
    if beta != TORCHVISION_SMOOTH_L1_BETA or loss_weight != 1.0:
        _use_box_loss(model, "smooth_l1", beta=beta, loss_weight=loss_weight, placement=placement)


def _use_balanced_l1(model: nn.Module, *, loss_weight: float, placement: str, **params: Any) -> None:
    from balanced_l1.detection.box_loss import BoxLossConfig
    from balanced_l1.detection.losses import use_box_loss_config

    use_box_loss_config(model, BoxLossConfig(BalancedL1Params(**params), loss_weight), placement=placement)


BASELINE_ARM = "smooth_l1"

register_arm(
    Arm(
        BASELINE_ARM,
        "torchvision's box losses: smooth L1, beta 1/9, in the RPN and the RoI head (with parameters: smooth L1 "
        "of that beta and weight where placement says)",
        _smooth_l1,
        (ArmParameter("beta", TORCHVISION_SMOOTH_L1_BETA, "smooth L1's beta"), _LOSS_WEIGHT, _PLACEMENT),
        lambda **p: _check_box_loss("smooth_l1", **p),
    )
)
register_arm(
    Arm(
        "balanced_l1",
        "Balanced L1 in the RoI head as the paper places it (alpha 0.5, gamma 1.5, beta 1); the RPN keeps smooth L1",
        _use_balanced_l1,
        _BALANCED_L1_PARAMETERS,
        lambda **p: _check_box_loss("balanced_l1", **p),
    )
)
register_arm(
    Arm(
        "smooth_l1_beta1",
        "smooth L1 with beta 1 in the RoI head (the paper's baseline, whose RPN keeps beta 1/9)",
        lambda model, **p: _use_box_loss(model, "smooth_l1", beta=1.0, **p),
        (_LOSS_WEIGHT, _PLACEMENT),
        lambda **p: _check_box_loss("smooth_l1", **p),
    )
)
register_arm(
    Arm(
        "l1",
        "L1 in the RoI head (placement=both: mmdetection's Faster R-CNN baseline)",
        lambda model, **p: _use_box_loss(model, "l1", **p),
        (_LOSS_WEIGHT, _PLACEMENT),
        lambda **p: _check_box_loss("l1", **p),
    )
)


def _register_iou_arms() -> None:
    from balanced_l1.detection.iou_losses import IOU_LOSS_WEIGHTS, IOU_LOSSES

    for loss in IOU_LOSSES:
        register_arm(
            Arm(
                loss,
                f"{loss.upper()} loss on decoded boxes in the RoI head, loss weight {IOU_LOSS_WEIGHTS[loss]:g} as "
                "mmdetection's Faster R-CNN config; the RPN keeps smooth L1",
                lambda model, _loss=loss, **p: _use_box_loss(model, _loss, **p),
                (
                    ArmParameter("loss_weight", IOU_LOSS_WEIGHTS[loss], "factor applied to the box loss"),
                    ArmParameter("placement", "roi", "the RoI head only: the loss needs its proposals", ("roi",)),
                ),
                lambda _loss=loss, **p: _check_box_loss(_loss, **p),
            )
        )


_register_iou_arms()


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
        _BALANCED_L1_PARAMETERS,
        lambda **p: _check_box_loss("balanced_l1", **p),
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
