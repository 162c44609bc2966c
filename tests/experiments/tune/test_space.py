"""The search space of ``balanced-l1 tune``: ``--space`` read into ranges, drawn by Optuna into arm specs."""

from __future__ import annotations

import pytest

from balanced_l1.experiments import arms
from balanced_l1.experiments.arm_specs import ArmSpecError
from balanced_l1.experiments.tune.space import MAX_SPACE_CHARS, ParameterSpace, default_space, parse_space

optuna = pytest.importorskip("optuna")
pytest.importorskip("tests.experiments.tune.tune_arms")  # registers weighted_smooth_l1, blind


def test_ranges_choices_and_bare_arms_are_read_in_the_arms_declared_order() -> None:
    space = parse_space(" weighted_smooth_l1( loss_weight = 0.5..2:log ) , blind")
    assert space.arms[0].parameters == (ParameterSpace("loss_weight", 0.5, 2.0, log=True),)
    assert space.arms[1].arm == "blind" and space.arms[1].parameters == ()
    assert space.describe() == "weighted_smooth_l1(loss_weight=0.5..2.0:log),blind"
    assert parse_space(space.describe()) == space


def test_a_bare_arm_takes_the_ranges_its_parameters_declare() -> None:
    assert parse_space("weighted_smooth_l1").arms[0].parameters == (ParameterSpace("loss_weight", 0.5, 2.0, True),)


def test_a_choice_and_a_fixed_value_are_kept_as_choices() -> None:
    space = parse_space("weighted_smooth_l1(loss_weight=0.5|1|2)")
    assert space.arms[0].parameters[0].choices == (0.5, 1.0, 2.0)
    assert parse_space("weighted_smooth_l1(loss_weight=1.5)").arms[0].parameters[0].choices == (1.5,)


def test_every_draw_is_an_arm_spec_within_the_space() -> None:
    space = parse_space("weighted_smooth_l1(loss_weight=0.5..2:log),blind")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    drawn = []
    for _ in range(12):
        trial = study.ask()
        spec = space.suggest(trial)
        drawn.append(spec)
        study.tell(trial, 0.0)
    weights = [s.values["loss_weight"] for s in drawn if s.arm.name == "weighted_smooth_l1"]
    assert weights and all(0.5 <= w <= 2.0 for w in weights)
    assert {s.arm.name for s in drawn} == {"weighted_smooth_l1", "blind"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weighted_smooth_l1(loss_weight=0.5..2),weighted_smooth_l1", "arm 'weighted_smooth_l1' is named twice"),
        ("weighted_smooth_l1(loss_weight=0.5..2", "a '(' without its ')'"),
        ("weighted_smooth_l1(loss_weight=0.5..2)x", "with nothing after ')'"),
        ("weighted_smooth_l1(loss_weight=a..2)", "loss_weight must be numbers, got 'a'"),
        ("weighted_smooth_l1(loss_weight=0.5..inf)", "loss_weight must be finite"),
        (
            "weighted_smooth_l1(loss_weight=0.5..500)",
            "loss_weight=500.0 is not accepted (loss_weight must be in (0, 100]",
        ),
        ("weighted_smooth_l1(loss_weight=0.5..500)", "its declared search range is loss_weight=0.5..2.0:log"),
        ("weighted_smooth_l1(loss_weight=-1..2:log)", "a log range must be above 0"),
        ("weighted_smooth_l1(loss_weight=1|1)", "repeats a value"),
        ("weighted_smooth_l1(loss_weight)", "expected key=low..high"),
        ("blind(x=1..2)", "unknown key 'x' for arm 'blind'; it takes no parameters"),
        ("smooth l1", "expected NAME or NAME(key=low..high, ...)"),
        ("blind,,blind", "an empty arm"),
    ],
)
def test_a_bad_space_is_refused_naming_the_arm_and_the_key(text: str, message: str) -> None:
    with pytest.raises(ArmSpecError) as refused:
        parse_space(text)
    assert message in str(refused.value)


def test_a_space_longer_than_the_bound_is_refused_before_it_is_read() -> None:
    with pytest.raises(ArmSpecError, match=f"at most {MAX_SPACE_CHARS}"):
        parse_space("(" * (MAX_SPACE_CHARS + 1))


@pytest.mark.skipif(not hasattr(arms, "box_loss_arm_names"), reason="the box-loss registry lands with branch registry")
def test_the_default_space_is_every_box_loss_arm_within_its_declared_ranges() -> None:
    space = default_space()
    assert [a.arm for a in space.arms] == list(arms.box_loss_arm_names())
    for arm_space in space.arms:
        declared = {p.name: p.search for p in arms.get_arm(arm_space.arm).parameters if p.search is not None}
        assert {p.name for p in arm_space.parameters} == set(declared)
