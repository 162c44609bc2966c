"""The verdict: each arm against the baseline, paired per seed, with Holm's correction and the power of its seeds."""

from __future__ import annotations

import json
import math

import pytest
from scipy import integrate, stats

from balanced_l1.experiments.report.verdict import (
    ONE_SEED,
    ArmVerdict,
    compare_to_baseline,
    detectable_difference,
    holm,
    seeds_to_resolve,
    verdict_lines,
)

AP = {
    "smooth_l1": {0: 56.5, 1: 58.0, 2: 57.0},
    "balanced_l1": {0: 60.5, 1: 59.0, 2: 58.2},
    "giou": {0: 57.0, 1: 59.5, 2: 58.0},
    "l1": {0: 55.0, 1: 56.1, 2: 56.6},
}


def _by_arm(verdicts: list[ArmVerdict]) -> dict[str, ArmVerdict]:
    return {v.arm: v for v in verdicts}


def _power_by_integration(difference: float, spread: float, n: int, alpha: float = 0.05) -> float:
    """The paired t-test's power from its definition, without the noncentral t: integrate over the sample variance."""
    df = n - 1
    t_critical = stats.t.ppf(1 - alpha / 2, df)
    shift = difference * math.sqrt(n) / spread

    def rejects(v: float) -> float:  # v = df * s^2 / sigma^2 ~ chi2(df); reject when |Z + shift| > t_crit * sqrt(v/df)
        bound = t_critical * math.sqrt(v / df)
        return (stats.norm.sf(bound - shift) + stats.norm.cdf(-bound - shift)) * stats.chi2.pdf(v, df)

    return integrate.quad(rejects, 0, math.inf, limit=200)[0]


def test_mean_difference_interval_and_p_are_scipys_paired_t_test() -> None:
    verdicts = _by_arm(compare_to_baseline(AP, "smooth_l1"))
    for arm in ("balanced_l1", "giou", "l1"):
        seeds = sorted(AP[arm])
        result = stats.ttest_rel([AP[arm][s] for s in seeds], [AP["smooth_l1"][s] for s in seeds])
        interval = result.confidence_interval(0.95)
        v = verdicts[arm]
        assert v.seeds == (0, 1, 2)
        assert v.mean_difference == pytest.approx(sum(AP[arm][s] - AP["smooth_l1"][s] for s in seeds) / 3)
        assert v.p_value == pytest.approx(result.pvalue, rel=1e-12)
        assert (v.ci_low, v.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-12)


def test_interval_is_student_t_around_the_mean_difference() -> None:
    v = _by_arm(compare_to_baseline(AP, "smooth_l1"))["balanced_l1"]
    differences = [4.0, 1.0, 1.2]
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    half = 4.302652729749464 * sd / math.sqrt(3)  # t(0.975, 2 df), from a printed table
    assert (v.ci_low, v.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-9)


def test_holm_by_hand() -> None:
    # sorted: 0.01 * 4 = 0.04; 0.02 * 3 = 0.06; 0.03 * 2 = 0.06; 0.5 * 1 = 0.5
    assert holm([0.5, 0.02, 0.01, 0.03]) == pytest.approx([0.5, 0.06, 0.04, 0.06])
    # a later product smaller than an earlier one is raised to it (step-down stays monotone): 0.04*3, 0.045*2 -> 0.12
    assert holm([0.045, 0.04, 0.9]) == pytest.approx([0.12, 0.12, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_compare_applies_holm_across_the_arms_tested() -> None:
    verdicts = compare_to_baseline(AP, "smooth_l1")
    p = [v.p_value for v in verdicts]
    order = sorted(range(3), key=lambda i: p[i])
    expected = [0.0] * 3
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * p[i]))
        expected[i] = running
    assert [v.p_holm for v in verdicts] == pytest.approx(expected)


def test_word_is_better_or_worse_only_below_the_corrected_level() -> None:
    ap = {
        "base": {0: 30.0, 1: 31.0, 2: 29.0, 3: 30.5},
        "up": {0: 33.0, 1: 34.1, 2: 31.9, 3: 33.6},
        "down": {0: 27.0, 1: 27.9, 2: 26.1, 3: 27.4},
        "noise": {0: 31.0, 1: 30.0, 2: 29.5, 3: 30.0},
    }
    verdicts = _by_arm(compare_to_baseline(ap, "base"))
    assert verdicts["up"].word == "better" and verdicts["up"].p_holm < 0.05
    assert verdicts["down"].word == "worse" and verdicts["down"].p_holm < 0.05
    assert verdicts["noise"].word == "not resolved with 4 seeds" and verdicts["noise"].p_holm >= 0.05


def test_a_p_below_the_level_that_holm_raises_above_it_is_not_resolved() -> None:
    verdicts = _by_arm(compare_to_baseline(AP | {"giou": {0: 57.5, 1: 59.6, 2: 58.2}}, "smooth_l1"))
    giou = verdicts["giou"]
    assert giou.p_value < 0.05 <= giou.p_holm and giou.word == "not resolved with 3 seeds"


def test_detectable_difference_has_the_power_asked_for() -> None:
    for n, spread in [(2, 1.0), (3, 1.6), (5, 0.7)]:
        difference = detectable_difference(n, spread)
        assert _power_by_integration(difference, spread, n) == pytest.approx(0.8, abs=1e-6)
        assert _power_by_integration(0.9 * difference, spread, n) < 0.8


def test_compare_reports_the_detectable_difference_at_the_observed_spread() -> None:
    v = _by_arm(compare_to_baseline(AP, "smooth_l1"))["giou"]
    spread = stats.tstd([0.5, 1.5, 1.0])
    assert v.detectable_difference == pytest.approx(detectable_difference(3, spread))
    assert _power_by_integration(v.detectable_difference, spread, 3) == pytest.approx(0.8, abs=1e-6)


def test_seeds_to_resolve_matches_the_published_sample_sizes() -> None:
    # G*Power, paired t-test, two-tailed, alpha 0.05, power 0.8: effect size 0.5 needs 34 pairs, 0.8 needs 15
    assert seeds_to_resolve(0.5, 1.0) == 34 and seeds_to_resolve(0.8, 1.0) == 15


def test_seeds_to_resolve_is_the_fewest_with_the_power() -> None:
    n = seeds_to_resolve(0.5, 1.6)
    assert _power_by_integration(0.5, 1.6, n) >= 0.8 > _power_by_integration(0.5, 1.6, n - 1)
    v = _by_arm(compare_to_baseline(AP, "smooth_l1"))["balanced_l1"]
    assert v.seeds_to_resolve == seeds_to_resolve(0.5, stats.tstd([4.0, 1.0, 1.2]))


def test_one_seed_says_it_cannot_tell_and_names_the_flag() -> None:
    [v] = compare_to_baseline({"smooth_l1": {0: 57.0}, "balanced_l1": {0: 57.8}}, "smooth_l1")
    assert v.mean_difference == pytest.approx(0.8) and v.seeds == (0,)
    assert v.word == ONE_SEED
    assert "one seed cannot tell a difference from seed-to-seed noise" in v.word and "--seeds 0,1,2" in v.word
    assert (v.ci_low, v.ci_high, v.p_value, v.p_holm, v.detectable_difference, v.seeds_to_resolve) == (None,) * 6
    [line] = verdict_lines([v])[1:]
    assert line == (
        "balanced_l1: +0.80 AP against smooth_l1 on seed 0, but one seed cannot tell a difference from "
        "seed-to-seed noise; --seeds 0,1,2 gives a verdict."
    )


def test_only_the_seeds_both_arms_have_are_paired() -> None:
    ap = {"base": {0: 30.0, 1: 31.0, 2: 29.0}, "arm": {1: 32.0, 2: 30.5, 7: 99.0}}
    [v] = compare_to_baseline(ap, "base")
    assert v.seeds == (1, 2) and v.mean_difference == pytest.approx(1.25)


def test_an_arm_without_a_common_seed_has_no_verdict_and_is_not_counted_by_holm() -> None:
    ap = AP | {"other": {9: 50.0}}
    verdicts = _by_arm(compare_to_baseline(ap, "smooth_l1"))
    assert verdicts["other"].seeds == () and verdicts["other"].mean_difference is None
    assert verdicts["other"].word == "no seed in common with smooth_l1"
    assert verdicts["giou"].p_holm == pytest.approx(_by_arm(compare_to_baseline(AP, "smooth_l1"))["giou"].p_holm)


def test_identical_differences_give_the_t_tests_limit_not_nan() -> None:
    ap = {
        "base": {0: 30.0, 1: 31.0, 2: 29.0},
        "shifted": {0: 31.0, 1: 32.0, 2: 30.0},
        "same": {0: 30.0, 1: 31.0, 2: 29.0},
    }
    verdicts = _by_arm(compare_to_baseline(ap, "base"))
    shifted, same = verdicts["shifted"], verdicts["same"]
    assert (shifted.ci_low, shifted.ci_high, shifted.p_value) == (1.0, 1.0, 0.0) and shifted.word == "better"
    assert (same.mean_difference, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert same.word == "not resolved with 3 seeds"
    for v in (shifted, same):
        assert v.detectable_difference == 0.0 and v.seeds_to_resolve == 2 and v.zero_spread
    assert any("Every seed gave the same difference" in line for line in verdict_lines([shifted, same]))


@pytest.mark.parametrize(
    "ap",
    [
        {"base": {0: 30.0, 1: 31.0}, "same": {0: 30.0, 1: 31.0}},
        {"base": {0: 30.0}, "one": {0: 31.0}, "none": {5: 1.0}},
        {"base": {0: 0.0, 1: 0.0}, "zero": {0: 0.0, 1: 0.0}, "far": {0: 100.0, 1: 100.0}},
        {"base": {0: 30.0, 1: 31.0}, "tiny": {0: 30.0, 1: 31.0 + 1e-13}},
    ],
)
def test_every_verdict_is_json_without_nan_or_infinity(ap: dict[str, dict[int, float]]) -> None:
    verdicts = compare_to_baseline(ap, "base")
    text = json.dumps([v.as_dict() for v in verdicts], allow_nan=False)
    assert json.loads(text) == [v.as_dict() for v in verdicts]
    assert not any("nan" in line.lower() or "inf" in line.lower() for line in verdict_lines(verdicts))


def test_as_dict_holds_every_number_of_the_verdict() -> None:
    v = _by_arm(compare_to_baseline(AP, "smooth_l1"))["giou"]
    data = v.as_dict()
    assert data["seeds"] == [0, 1, 2] and data["arm"] == "giou" and data["baseline"] == "smooth_l1"
    assert data["p_holm"] == v.p_holm and data["seeds_to_resolve"] == v.seeds_to_resolve
    assert (data["confidence"], data["power"], data["resolve"]) == (0.95, 0.8, 0.5)


def test_printed_table_and_sentences_carry_the_same_numbers() -> None:
    verdicts = compare_to_baseline(AP, "smooth_l1")
    lines = verdict_lines(verdicts)
    assert lines[0] == "Verdict on AP against smooth_l1, paired per seed (AP points):"
    assert lines[1].startswith("| arm ") and "95% CI" in lines[1] and "p Holm (3)" in lines[1]
    assert "detectable (80% power)" in lines[1] and "seeds for 0.5 AP" in lines[1]
    v = _by_arm(verdicts)["balanced_l1"]
    row = next(line for line in lines if line.startswith("| balanced_l1 "))
    assert f"{v.mean_difference:+.2f}" in row and f"{v.ci_low:+.2f} to {v.ci_high:+.2f}" in row
    assert f"{v.p_value:.3f}" in row and str(v.seeds_to_resolve) in row and v.word in row
    sentence = next(line for line in lines if line.startswith("balanced_l1: "))
    assert f"{v.detectable_difference:.2f} AP with 80% power" in sentence
    assert f"0.5 AP needs about {v.seeds_to_resolve} seeds" in sentence
    assert lines[-1].startswith("An arm is called better or worse only when its Holm-corrected p")


def test_no_other_arm_gives_no_lines() -> None:
    assert compare_to_baseline({"base": {0: 1.0}}, "base") == [] and verdict_lines([]) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 1.0}, "confidence must be between 0 and 1 (exclusive), got 1.0"),
        ({"power": 0.04}, "power must be above alpha = 1 - confidence = 0.05 and below 1, got 0.04"),
        ({"power": 1.0}, "power must be above alpha"),
        ({"resolve": 0.0}, "resolve must be a finite difference > 0, got 0.0"),
        ({"resolve": math.nan}, "resolve must be a finite difference > 0, got nan"),
    ],
)
def test_bad_settings_are_refused_with_what_is_allowed(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare_to_baseline(AP, "smooth_l1", **kwargs)


def test_unknown_baseline_and_non_finite_ap_are_refused() -> None:
    with pytest.raises(ValueError, match="baseline 'giuo' is not among the arms given: 'smooth_l1', 'balanced_l1'"):
        compare_to_baseline({"smooth_l1": {0: 1.0}, "balanced_l1": {0: 2.0}}, "giuo")
    with pytest.raises(ValueError, match="AP of arm 'l1' at seed 1 is nan; every AP must be a finite number"):
        compare_to_baseline({"smooth_l1": {0: 1.0, 1: 2.0}, "l1": {0: 1.0, 1: math.nan}}, "smooth_l1")
