"""The box loss a switched detector module uses: which loss, its parameters and weight, and where it goes.

:class:`BoxLossConfig` is the one description of a box loss that the torchvision adapters
(:mod:`.losses`, :mod:`.ssd`), the comparison's arms and the gradient-balance prediction
(:mod:`.balance_prediction`) share: a loss on encoded deltas (Balanced L1, smooth L1, L1) or an IoU loss
on decoded boxes (:mod:`.iou_losses`), validated once. :data:`PLACEMENTS` names where a two-stage
detector's box loss goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor
from torch.nn.functional import l1_loss, smooth_l1_loss

from balanced_l1.detection.iou_losses import IOU_LOSSES, decoded_box_loss
from balanced_l1.functional import balanced_l1_loss
from balanced_l1.params import BalancedL1Params, check_choice, check_loss_weight

__all__ = ["BOX_LOSSES", "CONFIG_ATTRIBUTE", "DELTA_LOSSES", "PLACEMENTS", "BoxLossConfig", "placement_stages"]

#: The losses on encoded deltas: Balanced L1 and the baselines it is compared with.
DELTA_LOSSES = ("balanced_l1", "smooth_l1", "l1")
#: The box losses a switched module can use: those on deltas, and the IoU losses on decoded boxes (RoI head only).
BOX_LOSSES = (*DELTA_LOSSES, *IOU_LOSSES)
#: Where a two-stage detector's box loss goes: the RoI head (the paper's and mmdetection's place), the RPN, or both.
PLACEMENTS = ("roi", "rpn", "both")


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


#: The instance attribute that holds a switched module's :class:`BoxLossConfig`.
CONFIG_ATTRIBUTE = "balanced_l1_config"


@dataclass(frozen=True)
class BoxLossConfig:
    """The box loss a switched module uses: validated parameters, a loss weight and which loss.

    Args:
        params: alpha, gamma, beta and formulation, validated by :class:`BalancedL1Params`.
        loss_weight: factor applied to the box loss; finite and >= 0.
        loss: ``"balanced_l1"`` (the default), or a baseline with the same normalisation:
            ``"smooth_l1"`` (with ``params.beta`` as its beta), ``"l1"`` (``params`` unused), or an IoU
            loss on decoded boxes, ``"giou"``, ``"diou"`` or ``"ciou"`` (RoI head only; ``params`` unused).
    """

    params: BalancedL1Params = field(default_factory=BalancedL1Params)
    loss_weight: float = 1.0
    loss: str = "balanced_l1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss_weight", check_loss_weight(self.loss_weight))
        check_choice("loss", self.loss, BOX_LOSSES)

    @property
    def decoded(self) -> bool:
        """Whether the loss compares decoded boxes (an IoU loss) rather than encoded deltas."""
        return self.loss in IOU_LOSSES

    def summed_decoded(self, deltas: Tensor, proposals: Tensor, gt_boxes: Tensor, box_coder: object) -> Tensor:
        """Return ``loss_weight * sum(IoU loss)`` of ``deltas`` decoded against ``proposals`` (:mod:`.iou_losses`)."""
        total = decoded_box_loss(self.loss, deltas, proposals, gt_boxes, box_coder)
        return total * self.loss_weight if self.loss_weight != 1.0 else total

    def summed(self, pred: Tensor, target: Tensor) -> Tensor:
        """Return ``loss_weight * sum(loss(pred - target))`` (0 with a gradient if empty)."""
        p = self.params
        if self.loss == "smooth_l1":
            total = smooth_l1_loss(pred, target, beta=p.beta, reduction="sum")
        elif self.loss == "l1":
            total = l1_loss(pred, target, reduction="sum")
        else:
            total = balanced_l1_loss(
                pred, target, alpha=p.alpha, gamma=p.gamma, beta=p.beta, reduction="sum", formulation=p.formulation
            )
        return total * self.loss_weight if self.loss_weight != 1.0 else total
