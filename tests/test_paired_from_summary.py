"""tools/paired_from_summary.py: paired t-tests from mean ± sd equal scipy's on data with that mean and sd."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("_paired_from_summary", ROOT / "tools" / "paired_from_summary.py")
assert _SPEC is not None and _SPEC.loader is not None
tool = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = tool  # dataclasses look their module up there
_SPEC.loader.exec_module(tool)


def _differences(mean: float, sd: float) -> np.ndarray:
    """Three paired differences whose mean is ``mean`` and whose sample sd (ddof=1) is ``sd``."""
    return mean + sd * np.array([-1.0, 0.0, 1.0])


@pytest.mark.parametrize(("mean", "sd"), [(2.4, 1.6), (-1.9, 0.6), (0.1, 3.0)])
def test_t_p_and_interval_equal_scipys_paired_test(mean: float, sd: float) -> None:
    baseline = np.array([67.0, 68.0, 66.5])
    arm = baseline + _differences(mean, sd)
    expected = stats.ttest_rel(arm, baseline)
    low, high = expected.confidence_interval(0.95)
    (result,) = tool.paired_tests({"arm": (mean, sd)}, seeds=3)
    assert result.t == pytest.approx(expected.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert result.p_holm == pytest.approx(result.p_value)  # one test: nothing to correct


def test_holm_multiplies_the_kth_smallest_by_m_minus_k_and_keeps_the_order() -> None:
    # by hand: sorted 0.01, 0.02, 0.04, 0.30 -> 0.04, 0.06, 0.08, 0.30
    assert tool.holm([0.04, 0.30, 0.01, 0.02]) == pytest.approx([0.08, 0.30, 0.04, 0.06])
    # a step that would decrease is raised to the one before; nothing exceeds 1
    assert tool.holm([0.01, 0.011, 0.9]) == pytest.approx([0.03, 0.03, 0.9])
    assert tool.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_the_detectable_difference_is_found_significant_in_80_percent_of_simulated_experiments() -> None:
    sd, seeds = 1.0, 3
    difference = tool.detectable_difference(sd, seeds)
    rng = np.random.default_rng(0)
    samples = rng.normal(difference, sd, size=(40_000, seeds))
    significant = stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05
    assert significant.mean() == pytest.approx(0.8, abs=0.01)


def test_fewer_than_two_seeds_or_a_zero_sd_is_refused() -> None:
    with pytest.raises(ValueError, match="seeds must be at least 2"):
        tool.paired_tests({"arm": (1.0, 1.0)}, seeds=1)
    with pytest.raises(ValueError, match=r"arm: the standard deviation must be > 0, got 0\.0"):
        tool.paired_tests({"arm": (1.0, 0.0)}, seeds=3)


def test_the_command_prints_one_markdown_row_per_arm(capsys: pytest.CaptureFixture[str]) -> None:
    tool.main(["--seeds", "3", "balanced_l1=2.4,1.6", "l1=1.3,1.3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| arm | mean ± sd | t | 95% CI | p | p (Holm)")
    assert lines[2].startswith("| `balanced_l1` | +2.4 ± 1.6 | 2.60 | [-1.6, +6.4] | 0.12 |")
    assert len(lines) == 4


def test_a_malformed_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--seeds", "3", "balanced_l1=2.4"])
    assert exit_info.value.code == 2
    assert "expected ARM=MEAN,SD, got 'balanced_l1=2.4'" in capsys.readouterr().err
