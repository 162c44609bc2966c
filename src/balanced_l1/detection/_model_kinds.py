"""What kind of torchvision detector a model is: the one check every adapter and the monitor share."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork


def is_two_stage(model: object) -> bool:
    """Whether ``model`` is a torchvision two-stage detector: a ``GeneralizedRCNN`` (Faster, Mask or Keypoint
    R-CNN) whose ``rpn`` is a ``RegionProposalNetwork`` and whose ``roi_heads`` is a ``RoIHeads``."""
    return (
        isinstance(model, GeneralizedRCNN)
        and isinstance(model.rpn, RegionProposalNetwork)
        and isinstance(model.roi_heads, RoIHeads)
    )


def two_stage_parts(model: object) -> tuple[RegionProposalNetwork, RoIHeads] | None:
    """``(model.rpn, model.roi_heads)`` of a two-stage detector (see :func:`is_two_stage`), else ``None``."""
    if not is_two_stage(model):
        return None
    return model.rpn, model.roi_heads  # type: ignore[attr-defined]  # checked by is_two_stage


def wrapper_hint(model: object) -> str:
    """A hint for an error message when ``model`` looks like a wrapper (DDP) around a bare model."""
    return (
        " (pass the bare model, e.g. ddp_model.module)" if isinstance(getattr(model, "module", None), nn.Module) else ""
    )
