"""Arms with parameters: the spec syntax, grids, canonical names, and every bad spec refused with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from balanced_l1.cli import main
from balanced_l1.detection.box_loss import LossParameter
from balanced_l1.experiments import arms
from balanced_l1.experiments.arm_specs import ArmSpecError, expand_arms, parse_arm, split_arm_list
from balanced_l1.experiments.arms import Arm, get_arm, register_arm
from balanced_l1.experiments.config import CompareConfig
from balanced_l1.experiments.config.checks import ConfigError


def test_a_list_splits_at_the_commas_outside_parentheses() -> None:
    text = "smooth_l1,balanced_l1(alpha=0.3,gamma=1.0), l1(loss_weight=1.5)"
    assert split_arm_list(text) == ("smooth_l1", "balanced_l1(alpha=0.3,gamma=1.0)", "l1(loss_weight=1.5)")


def test_the_canonical_name_spells_out_the_values_that_differ_from_the_defaults_in_declared_order() -> None:
    (arm,) = parse_arm("balanced_l1( gamma = 1.0 , alpha=0.3, beta=1)")
    assert arm.name == "balanced_l1(alpha=0.3,gamma=1.0)"
    assert arm.values == {"alpha": 0.3, "gamma": 1.0, "beta": 1.0, "formulation": "scaled", "loss_weight": 1.0,
                          "placement": "roi"}  # fmt: skip
    assert arm.file_stem == "balanced_l1__alpha-0.3__gamma-1.0"
    assert parse_arm("balanced_l1(alpha=0.5)")[0].name == "balanced_l1"


def test_a_grid_expands_into_its_product_the_first_key_slowest() -> None:
    names = [a.name for a in parse_arm("balanced_l1(alpha=0.2|0.3|0.5, gamma=1.0|1.5)")]
    assert names == [
        "balanced_l1(alpha=0.2,gamma=1.0)",
        "balanced_l1(alpha=0.2)",
        "balanced_l1(alpha=0.3,gamma=1.0)",
        "balanced_l1(alpha=0.3)",
        "balanced_l1(gamma=1.0)",
        "balanced_l1",
    ]


def test_two_spellings_of_one_arm_are_refused_as_a_repeat() -> None:
    with pytest.raises(ArmSpecError, match="already names"):
        expand_arms(["smooth_l1", "smooth_l1(beta=0.1111111111111111)"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown arm 'nope'"),
        ("balanced_l1(foo=1)", "unknown key 'foo' for arm 'balanced_l1'"),
        ("balanced_l1(alpha=-1)", "alpha must be finite and > 0, got -1.0"),
        ("balanced_l1(alpha=abc)", "alpha must be a number, got 'abc'"),
        ("balanced_l1(alpha=nan)", "alpha must be finite"),
        ("balanced_l1(alpha=0.3,alpha=0.2)", "key 'alpha' is given twice"),
        ("balanced_l1(alpha=)", "key 'alpha' has an empty value"),
        ("balanced_l1(alpha=0.2|)", "key 'alpha' has an empty value"),
        ("balanced_l1(alpha)", "expected key=value"),
        ("balanced_l1(alpha=0.01,gamma=1.5)", "gamma / alpha must be at most 80"),
        ("balanced_l1(formulation=other)", "formulation must be one of scaled, mmdet"),
        ("balanced_l1(placement=head)", "placement must be one of roi, rpn, both"),
        ("l1(loss_weight=-1)", "loss_weight must be finite and >= 0"),
        ("giou(placement=rpn)", "placement must be one of roi, got 'rpn'"),
        ("bfp(refine_level=2)", "it takes no parameters"),
        ("balanced_l1(alpha=0.3", "a '(' without its ')'"),
        ("balanced_l1 alpha=0.3)", "a ')' without its '('"),
        ("balanced_l1(alpha=" + "|".join(["0.1"] * 1001) + ")", "at most 1000"),
        ("smooth_l1,smooth_l1", "already names"),
        ("", "expected NAME or NAME(key=value"),
        # everything the loss derives from the values is checked as training will compute it, in float32
        (
            "balanced_l1(beta=5e-324)",
            "beta = 4.94066e-324 cannot be represented in float32 (magnitudes from 1.4e-45",
        ),
        ("balanced_l1(gamma=1e-300)", "gamma = 1e-300 cannot be represented in float32"),
        ("balanced_l1(beta=1e-44)", "alpha * beta / b = 2.61978e-46 cannot be represented in float32"),
        ("smooth_l1(beta=5e-324)", "beta = 4.94066e-324 cannot be represented in float32 (magnitudes from 1.4e-45"),
        (
            "balanced_l1(loss_weight=1e300)",
            "arm 'balanced_l1(loss_weight=1e300)': loss_weight must be <= 10000, got 1e+300",
        ),
        ("l1(loss_weight=1e300)", "loss_weight must be <= 10000"),
        ("giou(loss_weight=1e300)", "loss_weight must be <= 10000"),
        ("libra(loss_weight=1e300)", "loss_weight must be <= 10000"),
        ("balanced_l1(loss_weight=1e-46)", "loss_weight = 1e-46 cannot be represented in float32"),
        # the parser reads one character at a time: a long spec fails at once, naming its length and the limit
        ("smooth_l1" + " " * 120_000 + "x", "the spec is 120010 characters long; at most 10000"),
        ("smooth_l1" + " " * 5_000 + "x", "expected NAME or NAME(key=value"),
        ("balanced_l1(alpha=0.3)x", "expected NAME or NAME(key=value"),
    ],
)
def test_every_bad_arm_spec_exits_2_naming_the_arm_and_the_key_and_writes_nothing(
    spec: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--arms", spec, "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "usage: balanced-l1 compare" in err
    assert not out.exists()


def test_the_same_strings_are_read_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "arms.toml"
    config.write_text('arms = ["smooth_l1", "balanced_l1(alpha=0.2|0.3, gamma=1.0)", "giou"]\n')
    assert main(["compare", "--config", str(config), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'arms = ["smooth_l1", "balanced_l1(alpha=0.2|0.3, gamma=1.0)", "giou"]' in printed
    specs = CompareConfig(arms=("smooth_l1", "balanced_l1(alpha=0.2|0.3, gamma=1.0)", "giou")).arm_specs()
    assert [s.name for s in specs] == [
        "smooth_l1", "balanced_l1(alpha=0.2,gamma=1.0)", "balanced_l1(alpha=0.3,gamma=1.0)", "giou"
    ]  # fmt: skip


def test_an_arm_module_is_imported_by_the_config_and_its_arms_are_found(tmp_path: Path) -> None:
    (tmp_path / "my_test_arms_module.py").write_text(
        "from balanced_l1.experiments.arms import Arm, register_arm\n"
        "register_arm(Arm('my_test_arm', 'does nothing', lambda model: None))\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        specs = CompareConfig(arms=("smooth_l1", "my_test_arm"), arm_modules=("my_test_arms_module",)).arm_specs()
        assert [s.name for s in specs] == ["smooth_l1", "my_test_arm"]
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize(
    ("module", "message"), [("not a module", "is not a Python module name"), ("no_such_module_xyz", "cannot import")]
)
def test_a_bad_arm_module_is_a_config_error(module: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CompareConfig(arm_modules=(module,)).arm_specs()


def test_an_arm_registered_in_a_script_is_refused_with_jobs_before_anything_runs() -> None:
    arm = Arm("script_arm_for_test", "defined in __main__", lambda model: None)
    object.__setattr__(arm, "configure", _in_main(arm.configure))
    register_arm(arm)
    try:
        with pytest.raises(ConfigError, match="worker processes cannot import"):
            CompareConfig(arms=("smooth_l1", "script_arm_for_test"), jobs=2).validate()
        CompareConfig(arms=("smooth_l1", "script_arm_for_test"), jobs=1).validate()
    finally:
        from balanced_l1.experiments import arms

        del arms._REGISTRY["script_arm_for_test"]


def _in_main(function: object) -> object:
    def configure(model: object) -> None:
        pass

    configure.__module__ = "__main__"
    return configure


@pytest.mark.parametrize(
    "name", ["a(b", "a,b", "a b", "a=b", "a|b", "", "a/b", "balanced_l1__alpha-0.3", "_a", "a_", "a__b"]
)
def test_an_arm_name_that_cannot_be_part_of_a_spec_or_a_file_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"arm name must be made of .*no '__', no '_' at either end"):
        register_arm(Arm(name, "", lambda model: None))


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        (LossParameter("a-b", 1.0, "", float), "a parameter's name must be made of letters and digits"),
        (LossParameter("a__b", 1.0, "", float), "a parameter's name must be made of"),
        (LossParameter("mode", "x__y", "", str, None, ("x__y",)), "a choice of mode must be made of"),
    ],
)
def test_a_parameter_name_or_choice_that_would_make_file_names_ambiguous_is_refused(
    parameter: LossParameter, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        register_arm(Arm("ambiguous_arm", "", lambda model, **p: None, (parameter,)))
    assert "ambiguous_arm" not in arms.arm_names()


def test_negative_zero_and_zero_are_one_arm_with_one_name() -> None:
    (arm,) = parse_arm("l1(loss_weight=-0.0)")
    assert arm.name == "l1(loss_weight=0.0)" and arm.file_stem == "l1__loss_weight-0.0"
    with pytest.raises(ArmSpecError, match="already names"):
        expand_arms(["l1(loss_weight=0.0)", "l1(loss_weight=-0.0)"])


def test_two_arms_whose_names_differ_only_in_case_are_refused_together() -> None:
    register_arm(Arm("L1", "an arm whose files would collide with l1's on a case-insensitive file system", print))
    try:
        assert [a.name for a in expand_arms(["L1"])] == ["L1"]
        with pytest.raises(ArmSpecError, match="arms 'l1' and 'L1' differ only in upper and lower case"):
            expand_arms(["l1", "L1"])
    finally:
        del arms._REGISTRY["L1"]


def test_every_arms_file_stem_splits_back_into_its_name_and_values() -> None:
    specs = expand_arms(
        ["smooth_l1(beta=0.5|1e-05, placement=both)", "balanced_l1(alpha=0.3|2, formulation=mmdet)", "l1", "libra"]
    )
    stems = {spec.file_stem for spec in specs}
    assert len(stems) == len(specs)
    for spec in specs:
        name, *pairs = spec.file_stem.split("__")
        assert name == spec.arm.name
        assert [tuple(pair.split("-", 1)) for pair in pairs] == [(k, str(v)) for k, v in spec.given]


def test_every_box_loss_arm_takes_loss_weight_and_placement() -> None:
    for name in ("smooth_l1", "smooth_l1_beta1", "l1", "balanced_l1", "giou", "diou", "ciou", "libra"):
        keys = {p.name for p in get_arm(name).parameters}
        assert {"loss_weight", "placement"} <= keys, name
