"""The box-loss registry: each loss declared once, everything else derived from it, a new loss added in one place."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn.functional import l1_loss

from balanced_l1.cli import build_parser, main
from balanced_l1.detection import box_loss as registry
from balanced_l1.detection import build_small_faster_rcnn, predict_box_gradient_balance, use_box_loss
from balanced_l1.detection.box_loss import (
    FLOAT32,
    BoxLossConfig,
    LossParameter,
    SearchRange,
    box_loss_names,
    get_box_loss,
    number_check,
    register_box_loss,
)
from balanced_l1.experiments import arms
from balanced_l1.experiments.arm_specs import parse_arm
from balanced_l1.experiments.report.predicted_balance import ArmRuns, loss_grid, predict_table

predict = importlib.import_module("balanced_l1.experiments.report.predicted_balance")


def _balance_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["balance"]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_every_search_range_lies_inside_what_its_check_accepts() -> None:
    for name in box_loss_names():
        loss = get_box_loss(name)
        for parameter in (*loss.parameters, loss.loss_weight):
            assert parameter.check(parameter.default) == parameter.default, (name, parameter.name)
            search = parameter.search
            if search is None:
                assert parameter.choices, (name, parameter.name)  # only the string parameters are not searched
                continue
            assert search.low is not None and search.high is not None and 0 < search.low < search.high
            assert search.low <= parameter.default <= search.high, (name, parameter.name)  # type: ignore[operator]
            for end in (search.low, search.high):
                BoxLossConfig(name, {} if parameter.name == "loss_weight" else {parameter.name: end},
                              end if parameter.name == "loss_weight" else None).check_fits(FLOAT32)  # fmt: skip


def test_the_defaults_are_the_papers_torchvisions_and_mmdetections() -> None:
    assert get_box_loss("balanced_l1").defaults() == {"alpha": 0.5, "gamma": 1.5, "beta": 1.0, "formulation": "scaled"}
    assert get_box_loss("smooth_l1").defaults() == {"beta": 1.0 / 9.0}
    weights = {name: get_box_loss(name).loss_weight.default for name in box_loss_names()}
    assert weights == {"balanced_l1": 1.0, "smooth_l1": 1.0, "l1": 1.0, "giou": 10.0, "diou": 10.0, "ciou": 12.0}


def test_every_box_loss_arm_parameter_is_the_registrys_own_object() -> None:
    """An arm's parameters are the registry's LossParameter objects (not copies that could drift), plus placement."""
    for arm_name in (*arms.box_loss_arm_names(), "libra"):
        arm = arms.get_arm(arm_name)
        loss = get_box_loss(arm.box_loss or "balanced_l1")
        *own, placement = arm.parameters
        assert all(any(p is q for q in (*loss.parameters, loss.loss_weight)) for p in own), arm_name
        assert placement.name == "placement" and placement.default == "roi"
        assert placement.choices == loss.placements
    assert arms.box_loss_arm_names() == ("smooth_l1", "balanced_l1", "smooth_l1_beta1", "l1", "giou", "diou", "ciou")
    assert [p.name for p in arms.get_arm("smooth_l1_beta1").parameters] == ["loss_weight", "placement"]


def test_the_balance_flags_and_loss_choices_are_the_registrys() -> None:
    parser = _balance_parser()
    assert tuple(_option(parser, "--loss").choices or ()) == box_loss_names()
    assert _option(parser, "--loss").default == "balanced_l1"
    names = {p.name for n in box_loss_names() for p in get_box_loss(n).parameters} | {"loss_weight"}
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest not in
             ("help", "arm", "loss", "target_ratio", "target_arm")}  # fmt: skip
    assert flags == names
    assert all(_option(parser, "--" + n.replace("_", "-")).default is None for n in names)  # no default written there


def test_balance_solves_with_the_registrys_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Change the registry's Balanced L1 defaults: what ``balance --target-ratio`` solves for changes with them."""
    balanced = get_box_loss("balanced_l1")
    moved = tuple(replace(p, default=2.0) if p.name == "gamma" else p for p in balanced.parameters)
    monkeypatch.setitem(registry._REGISTRY, "balanced_l1", replace(balanced, parameters=moved))
    solved: list[tuple[list[float], list[float], str]] = []
    monkeypatch.setattr(predict, "load_arm_runs", lambda out, arm: _runs())
    monkeypatch.setattr(predict, "solve_alpha_table", lambda runs, ratio, *grid: solved.append(grid) or "table")
    assert main(["balance", str(tmp_path), "--target-ratio", "0.5"]) == 0
    assert solved == [([2.0], [1.0], "scaled")]


# --- a new loss, added through the registry alone -------------------------------------------------------------


def _scaled_l1(pred: Tensor, target: Tensor, *, reduction: str, scale: float) -> Tensor:
    return scale * l1_loss(pred, target, reduction=reduction)


@pytest.fixture
def scaled_l1() -> Iterator[str]:
    """A delta loss with one parameter, registered as a user would: one ``register_box_loss`` call."""
    register_box_loss(
        "scaled_l1",
        _scaled_l1,
        description="L1 times a scale",
        parameters=(
            LossParameter(
                "scale",
                1.0,
                "the factor",
                number_check("scale", strictly_positive=True),
                SearchRange(0.5, 2.0, log=True),
            ),
        ),
    )
    yield "scaled_l1"
    del registry._REGISTRY["scaled_l1"]
    arms._REGISTRY.pop("scaled_l1", None)


def _runs() -> ArmRuns:
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 30.0]], dtype=torch.float64).expand(64, 4)
    sample = torch.cat([pred, torch.zeros(64, 4, dtype=torch.float64), boxes], dim=1)
    return ArmRuns("smooth_l1", (0,), sample, {})


def test_a_registered_loss_is_an_arm_with_its_parameters(scaled_l1: str) -> None:
    assert "scaled_l1" in arms.box_loss_arm_names()
    names = [spec.name for spec in parse_arm("scaled_l1(scale=0.5|2.0, placement=both)")]
    assert names == ["scaled_l1(scale=0.5,placement=both)", "scaled_l1(scale=2.0,placement=both)"]
    with pytest.raises(ValueError, match=r"scale must be finite and > 0, got -1\.0"):
        parse_arm("scaled_l1(scale=-1)")
    model = build_small_faster_rcnn(3)
    parse_arm("scaled_l1(scale=2.0)")[0].configure(model)
    assert model.roi_heads.balanced_l1_config == BoxLossConfig("scaled_l1", {"scale": 2.0})


def test_a_registered_loss_is_predicted_by_balance(
    scaled_l1: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = _runs()
    grid = loss_grid("scaled_l1", {"scale": [2.0]})
    pred, target = runs.sample[:, :4], runs.sample[:, 4:8]
    gradient = predict_box_gradient_balance(pred, target, grid[0][1])["mean_box_gradient"]
    assert gradient == pytest.approx(8.0)  # |d(2 |x|)/dx| = 2 on each of 4 deltas
    assert "scaled_l1(scale=2.0)" in predict_table(runs, grid)
    monkeypatch.setattr(predict, "load_arm_runs", lambda out, arm: runs)
    assert main(["balance", str(tmp_path), "--loss", "scaled_l1", "--scale", "2|3"]) == 0
    printed = capsys.readouterr().out
    assert "scaled_l1(scale=2.0)" in printed and "scaled_l1(scale=3.0)" in printed


def test_a_registered_loss_is_placed_by_use_box_loss(scaled_l1: str) -> None:
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])}]
    losses = {}
    for loss, params in (("l1", {}), ("scaled_l1", {"scale": 3.0})):
        torch.manual_seed(0)
        model = use_box_loss(build_small_faster_rcnn(3), loss, placement="roi", **params).train()
        torch.manual_seed(1)
        losses[loss] = model(images, targets)["loss_box_reg"]
    torch.testing.assert_close(losses["scaled_l1"], 3.0 * losses["l1"])


@pytest.mark.parametrize(
    ("name", "parameters", "message"),
    [
        ("l1", (), "box loss 'l1' is already registered"),
        ("my__loss", (), "single inner underscores"),
        ("_loss", (), "single inner underscores"),
        ("my loss", (), "single inner underscores"),
        ("weighted", (LossParameter("loss_weight", 1.0, "", float),), "cannot be named 'loss_weight'"),
        ("placed", (LossParameter("placement", "roi", "", str),), "cannot be named 'placement'"),
        ("off", (LossParameter("scale", -1.0, "", number_check("scale", strictly_positive=True)),), "scale must be"),
    ],
)
def test_a_bad_registration_is_refused(name: str, parameters: tuple[LossParameter, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_box_loss(name, l1_loss, description="", parameters=parameters)
    assert name == "l1" or name not in box_loss_names()


def test_a_config_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="loss must be one of balanced_l1, smooth_l1, l1, giou, diou, ciou, got 'x'"):
        BoxLossConfig("x")
    with pytest.raises(ValueError, match="the l1 loss takes no parameter but loss_weight; got beta"):
        BoxLossConfig("l1", {"beta": 1.0})
    with pytest.raises(ValueError, match="gamma / alpha must be at most 80"):
        BoxLossConfig("balanced_l1", {"alpha": 0.01})
    assert BoxLossConfig("l1", loss_weight=-0.0) == BoxLossConfig("l1", loss_weight=0.0)
    assert str(BoxLossConfig("l1", loss_weight=-0.0).loss_weight) == "0.0"


@pytest.mark.parametrize(
    ("loss", "values", "weight", "message"),
    [
        ("balanced_l1", {"beta": 5e-324}, None, "beta = 4.94066e-324 cannot be represented in float32"),
        ("balanced_l1", {"gamma": 1e-300}, None, "gamma = 1e-300 cannot be represented in float32"),
        ("balanced_l1", {"beta": 1e-44}, None, "alpha \\* beta / b = .* cannot be represented in float32"),
        ("smooth_l1", {"beta": 1e-46}, None, "beta = 1e-46 cannot be represented in float32"),
        ("l1", {}, 1e-46, "loss_weight = 1e-46 cannot be represented in float32"),
    ],
)
def test_a_loss_that_float32_cannot_compute_is_refused_naming_the_value_and_the_range(
    loss: str, values: dict[str, float], weight: float | None, message: str
) -> None:
    config = BoxLossConfig(loss, values, weight)
    with pytest.raises(ValueError, match=message):
        config.check_fits(FLOAT32)
