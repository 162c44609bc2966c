"""Every detector the package builds: the small Faster R-CNN, and torchvision's by name (:func:`build_detector`).

:func:`build_small_faster_rcnn`: a small Faster R-CNN with a multi-level FPN, built from scratch so it trains
on a CPU in minutes. The model is torchvision's :class:`~torchvision.models.detection.FasterRCNN` with a tiny
convolutional backbone (GroupNorm, so its statistics do not depend on the batch split across processes) wrapped in
torchvision's :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`. The backbone
returns an ``OrderedDict`` of pyramid levels ``"0"``, ``"1"``, ``"2"`` (strides 4, 8, 16) and
``"pool"`` (stride 32), so a Balanced Feature Pyramid can wrap ``model.backbone`` later. Nothing is
downloaded; the initial weights depend only on torch's global RNG at construction time.

:func:`build_detector`: a detector by name, the small CPU model or one of torchvision's standard Faster R-CNNs.
``build_detector("fasterrcnn_resnet50_fpn", num_classes, weights_backbone=...)`` calls torchvision's own
builder, so the architecture is torchvision's. The backbone starts from:

- ``"none"``: random weights, every layer trainable, ordinary BatchNorm (torchvision's from-scratch setting);
- ``"DEFAULT"``: torchvision's ImageNet weights, which torchvision downloads (or finds in its cache);
- a path: weights from a local file (the classification network's ``state_dict``), for machines without
  internet: ``resnet50-11ad3fa6.pth`` is the file ``"DEFAULT"`` downloads for ResNet-50 (ImageNet V2),
  ``resnet50-0676ba61.pth`` the V1 weights mmdetection starts from. The model is then set up as torchvision sets
  up a pretrained backbone: BatchNorm frozen (``FrozenBatchNorm2d``) where torchvision freezes it, and only
  the last 3 stages trainable.

The file is read with ``torch.load(weights_only=True)``: it cannot run code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from balanced_l1._files import load_error_reason
from balanced_l1.params import check_number

_STAGE_CHANNELS = (16, 32, 64, 96)
FPN_LEVELS = ("0", "1", "2")


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


def _tiny_backbone() -> nn.Sequential:
    c0, c1, c2, c3 = _STAGE_CHANNELS
    return nn.Sequential(
        OrderedDict(
            stem=_conv_block(3, c0, stride=2),
            layer1=_conv_block(c0, c1, stride=2),
            layer2=_conv_block(c1, c2, stride=2),
            layer3=_conv_block(c2, c3, stride=2),
        )
    )


def build_small_faster_rcnn(
    num_classes: int,
    *,
    image_size: int = 128,
    fpn_channels: int = 32,
    anchor_sizes: tuple[int, ...] = (12, 24, 48, 96),
    representation_size: int = 256,
    min_size: int | None = None,
    max_size: int | None = None,
) -> FasterRCNN:
    """Build a CPU-sized Faster R-CNN with a from-scratch backbone and a 3-level FPN (plus a pooled level).

    Call ``torch.manual_seed(seed)`` first for reproducible initial weights.

    Args:
        num_classes: number of object classes, background excluded (the model predicts ``num_classes + 1``).
        image_size: side of the square input images; by default the model's transform keeps this size.
        fpn_channels: channels of every pyramid level.
        anchor_sizes: one anchor size in pixels per level ``"0"``, ``"1"``, ``"2"``, ``"pool"``
            (strides 4, 8, 16, 32), each with aspect ratios 0.5, 1 and 2.
        representation_size: width of the two fully connected layers of the RoI box head.
        min_size: torchvision's resize, shorter side (default ``image_size``).
        max_size: torchvision's resize, cap on the longer side (default ``image_size``).

    Returns:
        A torchvision ``FasterRCNN`` in training mode.

    Raises:
        ValueError: if ``num_classes`` or ``image_size`` is not positive, or ``anchor_sizes`` does not have
            one size per level.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = build_small_faster_rcnn(3).eval()
        >>> list(model.backbone(torch.zeros(1, 3, 128, 128)).keys())
        ['0', '1', '2', 'pool']
    """
    num_classes = check_number("num_classes", num_classes, minimum=1, integer=True)
    image_size = check_number("image_size (pixels)", image_size, minimum=32, integer=True)
    if len(anchor_sizes) != len(FPN_LEVELS) + 1:
        raise ValueError(
            f"anchor_sizes needs one size per level {[*FPN_LEVELS, 'pool']}, got {len(anchor_sizes)}: {anchor_sizes}"
        )
    backbone = BackboneWithFPN(
        _tiny_backbone(),
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2"},
        in_channels_list=list(_STAGE_CHANNELS[1:]),
        out_channels=fpn_channels,
    )
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    roi_pool = MultiScaleRoIAlign(featmap_names=list(FPN_LEVELS), output_size=7, sampling_ratio=1)
    return FasterRCNN(
        backbone,
        min_size=image_size if min_size is None else min_size,
        max_size=image_size if max_size is None else max_size,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=150,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        box_batch_size_per_image=64,
        box_detections_per_img=100,
    )


_TORCHVISION: dict[str, Callable[..., FasterRCNN]] = {
    "fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn,
    "fasterrcnn_resnet50_fpn_v2": fasterrcnn_resnet50_fpn_v2,
    "fasterrcnn_mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn,
}
DETECTORS = ("small", *_TORCHVISION)
_FROZEN_BN = ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn")  # v2 keeps trainable BatchNorm
_TRAINABLE_STAGES = 3  # torchvision's default for a pretrained backbone


class BackboneWeightsError(ValueError):
    """The backbone weights cannot be had: a download failed, or a file does not fit the backbone."""


def build_detector(
    name: str,
    num_classes: int,
    *,
    weights_backbone: str = "none",
    min_size: int = 800,
    max_size: int = 1333,
) -> FasterRCNN:
    """Build a Faster R-CNN by name; call ``torch.manual_seed`` first for reproducible initial weights.

    Args:
        name: one of :data:`DETECTORS`.
        num_classes: object classes, background excluded.
        weights_backbone: ``"none"``, ``"DEFAULT"`` or the path of a local ``state_dict`` file.
        min_size: torchvision's resize: the shorter side.
        max_size: torchvision's resize: the cap on the longer side.

    Returns:
        The detector, in training mode.

    Raises:
        ValueError: for an unknown name, or ``weights_backbone`` with the small model.
        BackboneWeightsError: if the DEFAULT weights cannot be downloaded or a file does not fit the backbone.

    Example:
        >>> build_detector("small", 3, min_size=128, max_size=128).transform.min_size
        (128,)
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(DETECTORS)}")
    if name == "small":
        if weights_backbone != "none":
            raise ValueError(
                f"the small model is built from scratch; weights_backbone must be 'none', got {weights_backbone!r}"
            )
        return build_small_faster_rcnn(num_classes, min_size=min_size, max_size=max_size)
    builder = _TORCHVISION[name]
    kwargs: dict[str, Any] = {
        "weights": None,
        "num_classes": num_classes + 1,
        "min_size": min_size,
        "max_size": max_size,
    }
    if weights_backbone == "none":
        return builder(weights_backbone=None, **kwargs)
    if weights_backbone == "DEFAULT":
        try:
            return builder(weights_backbone="DEFAULT", **kwargs)
        except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
            raise BackboneWeightsError(
                f"{name}: torchvision could not download its DEFAULT ImageNet backbone weights ({err}); on a machine "
                "without internet, pass the downloaded file with --weights-backbone PATH"
            ) from None
    model = builder(weights_backbone=None, **kwargs)
    _load_backbone_file(model, name, Path(weights_backbone))
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(
            f"{path}: backbone weights file not found (weights_backbone is none, DEFAULT or a file)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; each becomes one clear error
        raise BackboneWeightsError(f"{path}: not a readable plain-data state_dict ({load_error_reason(err)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: expected a state_dict (names to tensors), got {type(state).__name__}")
    return state


def _load_backbone_file(model: FasterRCNN, name: str, path: Path) -> None:
    body: nn.Module = model.backbone.body
    state = _read_state_dict(path)
    mobilenet = "mobilenet" in name
    mapped = {}
    for key, value in state.items():
        if mobilenet:
            if key.startswith("features."):
                mapped[key[len("features.") :]] = value
        elif not key.startswith("fc."):
            mapped[key] = value
    if name in _FROZEN_BN:
        _freeze_batch_norm(body)
    expected = body.state_dict()
    mapped = {k: v for k, v in mapped.items() if not (k.endswith("num_batches_tracked") and k not in expected)}
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{path}: does not fit the backbone of {name}: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}; give the classification network's state_dict "
            f"({'mobilenet_v3_large' if mobilenet else 'resnet50'})"
        )
    shapes = [k for k, v in mapped.items() if v.shape != expected[k].shape]
    if shapes:
        raise BackboneWeightsError(f"{path}: tensor shapes differ from {name}'s backbone for {shapes[:3]}")
    body.load_state_dict(mapped)
    _freeze_early_stages(body, mobilenet)


def _freeze_batch_norm(module: nn.Module) -> None:
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, child_name, FrozenBatchNorm2d(child.num_features))  # torchvision's eps, 1e-5
        else:
            _freeze_batch_norm(child)


def _freeze_early_stages(body: nn.Module, mobilenet: bool) -> None:
    """Leave only the last stages trainable, as torchvision does for a pretrained backbone."""
    if mobilenet:
        blocks = list(body.children())
        stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
        freeze_before = stages[len(stages) - _TRAINABLE_STAGES]
        for block in blocks[:freeze_before]:
            block.requires_grad_(False)
        return
    trainable = ("layer4", "layer3", "layer2", "layer1", "conv1")[:_TRAINABLE_STAGES]
    for param_name, param in body.named_parameters():
        if not param_name.startswith(trainable):
            param.requires_grad_(False)
