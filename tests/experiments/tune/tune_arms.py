"""Arms for the tune tests, registered with ``--arm-modules tests.experiments.tune.tune_arms``.

- ``weighted_smooth_l1(loss_weight=...)``: smooth L1 in the RoI head with a searchable weight (0.5 to 2);
- ``nan_boxes``: a box regressor of NaN weights, whose loss is NaN from the first iteration (a diverging run);
- ``blind``: a detector whose classifier rejects every box, so its AP is 0 at every validation: a pruner that
  compares it with a baseline above 0 must prune it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from balanced_l1.experiments.arms import Arm, arm_names, get_arm, register_arm


@dataclass(frozen=True)
class _Range:
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Parameter:
    name: str
    default: float
    help: str
    search: _Range | None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> float:
        number = float(value)
        if not (math.isfinite(number) and 0 < number <= 100):
            raise ValueError(f"{self.name} must be in (0, 100], got {value!r}")
        return number


def _weighted(model: nn.Module, *, loss_weight: float) -> None:
    get_arm("smooth_l1_beta1").apply(model, {"loss_weight": loss_weight})


def _blind(model: nn.Module) -> None:
    predictor = model.roi_heads.box_predictor  # type: ignore[union-attr]
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.fill_(-50.0)
        predictor.cls_score.bias[0] = 50.0
    predictor.cls_score.weight.requires_grad_(False)
    predictor.cls_score.bias.requires_grad_(False)


def _nan_boxes(model: nn.Module) -> None:
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.weight.fill_(float("nan"))  # type: ignore[union-attr]


if "blind" not in arm_names():
    register_arm(
        Arm(
            "weighted_smooth_l1",
            "smooth L1 (beta 1) in the RoI head with a loss weight",
            _weighted,
            (_Parameter("loss_weight", 1.0, "factor", _Range(0.5, 2.0, log=True)),),  # type: ignore[arg-type]
            lambda **p: _Parameter("loss_weight", 1.0, "", None).check(p["loss_weight"]) and None,
        )
    )
    register_arm(Arm("blind", "a classifier that rejects every box", _blind))
    register_arm(Arm("nan_boxes", "a box regressor of NaN weights", _nan_boxes))
