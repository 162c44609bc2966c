"""The loss defaults are one fact: every public signature's alpha, gamma, beta, formulation and loss_weight
defaults equal those of ``BalancedL1Params`` (and ``BoxLossConfig``), in every framework and adapter."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from balanced_l1.detection.box_loss import BoxLossConfig
from balanced_l1.params import BalancedL1Params

DEFAULTS: dict[str, Any] = {
    "alpha": BalancedL1Params().alpha,
    "gamma": BalancedL1Params().gamma,
    "beta": BalancedL1Params().beta,
    "formulation": BalancedL1Params().formulation,
    "loss_weight": BoxLossConfig().loss_weight,
}


def _signatures() -> list[tuple[str, Callable[..., Any]]]:
    from balanced_l1 import BalancedL1Loss, balanced_l1_loss
    from balanced_l1.detection import use_balanced_l1, use_libra

    found: list[tuple[str, Callable[..., Any]]] = [
        ("balanced_l1_loss", balanced_l1_loss),
        ("BalancedL1Loss", BalancedL1Loss.__init__),
        ("use_balanced_l1", use_balanced_l1),
        ("use_libra", use_libra),
    ]
    for module, names in (("balanced_l1.jax", ("balanced_l1_loss",)), ("balanced_l1.keras", ("balanced_l1_loss",))):
        imported = pytest.importorskip(module)
        found += [(f"{module}.{n}", getattr(imported, n)) for n in names]
    keras_module = pytest.importorskip("balanced_l1.keras")
    found.append(("balanced_l1.keras.BalancedL1Loss", keras_module.BalancedL1Loss.__init__))
    mmdet_module = pytest.importorskip("balanced_l1.mmdet")
    found.append(("balanced_l1.mmdet.BalancedL1Loss", mmdet_module.BalancedL1Loss.__init__))
    return found


def test_every_public_signature_takes_the_defaults_from_the_one_place() -> None:
    checked = 0
    for name, function in _signatures():
        parameters = inspect.signature(function).parameters
        for key, expected in DEFAULTS.items():
            if key in parameters and parameters[key].default is not inspect.Parameter.empty:
                assert parameters[key].default == expected, f"{name}: {key} default {parameters[key].default!r}"
                checked += 1
    assert checked >= 25  # alpha, gamma, beta in every one of the 8 signatures at least


def test_the_arms_take_their_defaults_from_the_same_place() -> None:
    from balanced_l1.experiments.arms import get_arm

    for arm in ("balanced_l1", "libra"):
        defaults = get_arm(arm).defaults()
        for key, expected in DEFAULTS.items():
            assert defaults[key] == expected, (arm, key)
