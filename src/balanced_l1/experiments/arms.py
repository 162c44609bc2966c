"""The arms of a comparison: each names one way to configure the same freshly built detector.

An arm is a name, a one-line description and a ``configure(model)`` function that changes a
torchvision Faster R-CNN in place (its losses, samplers or feature pyramid). ``balanced-l1 compare``
builds the model with the same seed for every arm and then calls the arm's ``configure``, so arms
differ only by what ``configure`` does. To add an arm, write its ``configure`` and call
:func:`register_arm` next to the built-in ones below; the command line picks it up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison.

    Attributes:
        name: the name used on the command line (``--arms``) and in reports.
        description: one line for the report.
        configure: changes a freshly built torchvision Faster R-CNN in place. It runs right after the model is
            built under the run's seed, so parameters it creates are reproducible too.
    """

    name: str
    description: str
    configure: Callable[[nn.Module], None]


_REGISTRY: dict[str, Arm] = {}


def register_arm(arm: Arm) -> Arm:
    """Add ``arm`` to the registry.

    Args:
        arm: the arm to add; its name must be new and non-empty, without commas (``--arms`` is comma-separated).

    Returns:
        The arm, so the call can be used as an expression.

    Raises:
        ValueError: if the name is empty, holds a comma or whitespace, or is already registered.
    """
    if not arm.name or any(ch == "," or ch.isspace() for ch in arm.name):
        raise ValueError(f"arm name must be non-empty without commas or spaces, got {arm.name!r}")
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


def _keep_torchvision_losses(model: nn.Module) -> None:
    """Leave the model as torchvision builds it: smooth L1 (beta 1/9) box losses in the RPN and the RoI heads."""


def _use_balanced_l1(model: nn.Module) -> None:
    from balanced_l1.detection.losses import use_balanced_l1

    use_balanced_l1(model, rpn=True, roi_heads=True, alpha=0.5, gamma=1.5, beta=1.0)


BASELINE_ARM = "smooth_l1"

register_arm(
    Arm(
        BASELINE_ARM,
        "torchvision's default box losses (smooth L1 in the RPN and the RoI heads)",
        _keep_torchvision_losses,
    )
)


def _use_smooth_l1_beta1(model: nn.Module) -> None:
    from balanced_l1.detection.losses import use_box_loss

    use_box_loss(model, "smooth_l1", beta=1.0)


def _use_l1(model: nn.Module) -> None:
    from balanced_l1.detection.losses import use_box_loss

    use_box_loss(model, "l1")


register_arm(
    Arm(
        "balanced_l1",
        "Balanced L1 box losses in the RPN and the RoI heads (alpha 0.5, gamma 1.5, beta 1)",
        _use_balanced_l1,
    )
)


register_arm(
    Arm(
        "smooth_l1_beta1",
        "smooth L1 with beta 1 in the RPN and the RoI heads (the paper's baseline; torchvision's uses beta 1/9)",
        _use_smooth_l1_beta1,
    )
)
register_arm(Arm("l1", "L1 box losses in the RPN and the RoI heads (mmdetection's Faster R-CNN baseline)", _use_l1))


def _use_iou_balanced_sampling(model: nn.Module) -> None:
    from balanced_l1.detection.sampling import use_iou_balanced_sampling

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


def _use_libra(model: nn.Module) -> None:
    """All three components exactly as their own arms configure them, so the ablation adds up."""
    _use_balanced_feature_pyramid(model)
    _use_iou_balanced_sampling(model)
    _use_balanced_l1(model)


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
        "Libra R-CNN: the bfp, iou_sampling and balanced_l1 arms together (Balanced L1 in the RPN and RoI heads)",
        _use_libra,
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
