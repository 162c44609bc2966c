"""Paired t-tests recomputed from a table's summary statistics, with Holm's correction across the arms.

A comparison over paired seeds is reported as the mean ± sample standard deviation (``ddof=1``) of each
arm's per-seed difference from a baseline. When the per-seed results are gone, those two numbers still
give the paired t-test: ``t = mean / (sd / sqrt(n))`` with ``n - 1`` degrees of freedom, the two-sided
p-value and the confidence interval ``mean ± t_crit * sd / sqrt(n)`` from ``scipy.stats.t``, and the
smallest difference a two-sided test at the 5% level would detect with 80% power over ``n`` seeds of that
``sd`` (from the noncentral t distribution, ``scipy.stats.nct``). Holm's step-down correction is applied
across all the arms given (the arms compared with that baseline).

The table's numbers are rounded (to 0.1 AP), so the results are approximate: a t from rounded inputs can
be off in its second digit.

Usage::

    python tools/paired_from_summary.py --seeds 3 'balanced_l1=2.4,1.6' 'giou=1.8,1.4' ...

Each argument is ``ARM=MEAN,SD`` of the paired differences. The output is one Markdown row per arm.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from scipy import optimize, stats


@dataclass(frozen=True)
class PairedSummaryTest:
    """The paired t-test of one arm's mean difference, from its summary statistics.

    Attributes:
        arm: The arm's name.
        mean: The mean paired difference.
        sd: The sample standard deviation of the paired differences.
        t: The t statistic.
        ci_low: The lower end of the confidence interval of the mean difference.
        ci_high: The upper end.
        p_value: The two-sided p-value, uncorrected.
        p_holm: The p-value after Holm's correction across all the arms tested together.
        detectable: The smallest true difference these seeds detect with 80% power (uncorrected test).
    """

    arm: str
    mean: float
    sd: float
    t: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    detectable: float


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    Args:
        p_values: The uncorrected p-values of the tests made together.

    Returns:
        The adjusted p-values: the k-th smallest (k from 0) is multiplied by ``m - k`` and made
        non-decreasing in that order, capped at 1.
    """
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def detectable_difference(sd: float, seeds: int, *, level: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a paired two-sided t-test detects with the given power.

    Args:
        sd: The standard deviation of the paired differences.
        seeds: The number of paired seeds (at least 2).
        level: The test's significance level.
        power: The probability of a significant result that is wanted.

    Returns:
        The difference ``d * sd`` where the test on ``seeds`` pairs reaches ``power`` for the effect size ``d``.
    """
    df = seeds - 1
    critical = float(stats.t.ppf(1 - level / 2, df))

    def shortfall(effect: float) -> float:  # P(T > c) + P(T < -c), the second as P(-T > c) for stability
        shift = effect * math.sqrt(seeds)
        return float(stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift)) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high)) * sd


def paired_tests(
    summaries: dict[str, tuple[float, float]], seeds: int, confidence: float = 0.95
) -> list[PairedSummaryTest]:
    """Paired t-tests of each arm's mean difference, Holm-corrected across the arms.

    Args:
        summaries: ``arm -> (mean, sd)`` of the paired differences from the baseline.
        seeds: The number of paired seeds (at least 2).
        confidence: The confidence level of the interval.

    Returns:
        One test per arm, in the order of ``summaries``.

    Raises:
        ValueError: If ``seeds`` is below 2, or an sd is not positive.
    """
    if seeds < 2:
        raise ValueError(f"seeds must be at least 2 for a paired t-test, got {seeds}")
    raw = []
    for arm, (mean, sd) in summaries.items():
        if not sd > 0:
            raise ValueError(f"{arm}: the standard deviation must be > 0, got {sd}")
        standard_error = sd / math.sqrt(seeds)
        t = mean / standard_error
        half_width = float(stats.t.ppf(0.5 + confidence / 2, seeds - 1)) * standard_error
        p_value = float(2 * stats.t.sf(abs(t), seeds - 1))
        raw.append((arm, mean, sd, t, mean - half_width, mean + half_width, p_value))
    adjusted = holm([row[-1] for row in raw])
    return [
        PairedSummaryTest(*row, p_holm, detectable_difference(row[2], seeds))
        for row, p_holm in zip(raw, adjusted, strict=True)
    ]


def _summary(text: str) -> tuple[str, tuple[float, float]]:
    arm, separator, numbers = text.rpartition("=")
    parts = numbers.split(",")
    if not separator or not arm or len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected ARM=MEAN,SD, got {text!r}")
    try:
        return arm, (float(parts[0]), float(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"MEAN and SD must be numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """Print the paired tests of the arms given on the command line as a Markdown table.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, required=True, help="the number of paired seeds")
    parser.add_argument("summaries", nargs="+", type=_summary, metavar="ARM=MEAN,SD")
    args = parser.parse_args(argv)
    try:
        tests = paired_tests(dict(args.summaries), args.seeds)
    except ValueError as error:
        parser.error(str(error))
    print("| arm | mean ± sd | t | 95% CI | p | p (Holm) | detectable at 80% power |")
    print("|---|---|---|---|---|---|---|")
    for test in tests:
        print(
            f"| `{test.arm}` | {test.mean:+.1f} ± {test.sd:.1f} | {test.t:.2f} | "
            f"[{test.ci_low:+.1f}, {test.ci_high:+.1f}] | {test.p_value:.2f} | {test.p_holm:.2f} | "
            f"{test.detectable:.1f} |"
        )


if __name__ == "__main__":
    main()
