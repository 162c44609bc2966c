"""The verdict of a comparison: is an arm better or worse than the baseline, or can its seeds not tell?

Each arm is paired with the baseline on the seeds both have (the same seed means the same initial weights,
images and order, so the per-seed difference removes what the seed does to both). With ``n >= 2`` paired
seeds it gets:

- the mean paired difference and its confidence interval (Student's t with ``n - 1`` degrees of freedom);
- the two-sided p-value of the paired t-test (:func:`scipy.stats.ttest_rel`) and the same p after Holm's
  step-down correction across the arms compared (each arm is one test against the same baseline);
- the smallest difference these seeds could detect with the given power at the spread they show (the paired
  t-test's power from the noncentral t distribution, :class:`scipy.stats.nct`, solved with
  :func:`scipy.optimize.brentq`), and the number of seeds that would resolve ``resolve`` AP at that spread;
- a word: ``"better"`` or ``"worse"`` when the Holm-corrected p is below ``1 - confidence``, else
  ``"not resolved with N seeds"``.

With one paired seed there is no spread to compare the difference with: the word says so and names the flag
that gives a verdict (``--seeds 0,1,2``); the interval, the p-values, the detectable difference and the seeds
needed are ``None``.

Identical differences on every seed (zero spread, e.g. two arms that train the same model) are the t-test's
limit, never NaN: the interval is the difference itself, p is 0 for a non-zero difference and 1 for none, any
difference is detectable (0.0) and 2 seeds resolve ``resolve``. The printed sentence says the spread was zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: The flag that gives a verdict when a comparison has one seed.
SEEDS_FLAG = "--seeds 0,1,2"

ONE_SEED = f"one seed cannot tell a difference from seed-to-seed noise; {SEEDS_FLAG} gives a verdict"


@dataclass(frozen=True)
class ArmVerdict:
    """One arm against the baseline, paired per seed; AP differences in the unit of the AP given (points).

    Attributes:
        arm: the arm compared.
        baseline: the arm it is compared with.
        seeds: the seeds both have, in increasing order.
        mean_difference: mean over ``seeds`` of ``AP(arm) - AP(baseline)`` (``None`` without a common seed).
        ci_low: lower end of its confidence interval (``None`` with fewer than 2 seeds).
        ci_high: upper end of its confidence interval (``None`` with fewer than 2 seeds).
        p_value: two-sided p of the paired t-test (``None`` with fewer than 2 seeds).
        p_holm: ``p_value`` after Holm's correction across the arms compared (``None`` with fewer than 2 seeds).
        detectable_difference: the smallest difference these seeds detect with probability ``power`` at the
            spread they show (``None`` with fewer than 2 seeds).
        seeds_to_resolve: the seeds a paired t-test needs to detect ``resolve`` with probability ``power`` at
            that spread (``None`` with fewer than 2 seeds).
        word: ``"better"``, ``"worse"``, ``"not resolved with N seeds"``, or why there is no verdict.
        confidence: the interval's confidence; ``1 - confidence`` is the test's level (alpha).
        power: the power ``detectable_difference`` and ``seeds_to_resolve`` are computed for.
        resolve: the difference ``seeds_to_resolve`` is computed for.
    """

    arm: str
    baseline: str
    seeds: tuple[int, ...]
    mean_difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    detectable_difference: float | None
    seeds_to_resolve: int | None
    word: str
    confidence: float = 0.95
    power: float = 0.8
    resolve: float = 0.5

    @property
    def zero_spread(self) -> bool:
        """Whether every seed gave the same difference (the degenerate t-test; see the module's notes)."""
        return self.p_value is not None and self.ci_low == self.ci_high

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON-safe values: numbers are finite floats or ints, ``None`` where there is none.

        Returns:
            One key per attribute; ``seeds`` as a list.

        Raises:
            ValueError: if a number is not finite (never for a verdict made by :func:`compare_to_baseline`).
        """
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        for key, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"verdict of {self.arm!r}: {key} is {value}, not a finite number")
        return data


def _check_settings(resolve: float, confidence: float, power: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    alpha = 1.0 - confidence
    if not alpha < power < 1.0:
        raise ValueError(f"power must be above alpha = 1 - confidence = {alpha:g} and below 1, got {power}")
    if not (math.isfinite(resolve) and resolve > 0):
        raise ValueError(f"resolve must be a finite difference > 0, got {resolve}")
    return alpha


def _check_ap(ap: Mapping[str, Mapping[int, float]], baseline: str) -> None:
    if baseline not in ap:
        raise ValueError(f"baseline {baseline!r} is not among the arms given: {', '.join(map(repr, ap)) or 'none'}")
    for arm, by_seed in ap.items():
        for seed, value in by_seed.items():
            if not math.isfinite(value):
                raise ValueError(f"AP of arm {arm!r} at seed {seed} is {value}; every AP must be a finite number")


_LARGEST_NONCENTRALITY = 1e6


def _power(noncentrality: float, df: int, t_critical: float) -> float:
    """The probability that a two-sided t-test at ``t_critical`` rejects, for a noncentral t statistic.

    The lower tail is taken as the upper tail of the mirrored statistic (``P(T < -c; nc) = P(T > c; -nc)``):
    scipy's ``nct.cdf`` far in a tail can return NaN (df 1 or 2 at a large noncentrality), its ``sf`` does not.
    The noncentrality is capped at :data:`_LARGEST_NONCENTRALITY`, where the power is already 1.0 in float64 for
    every df (scipy returns NaN near 1e12, e.g. for a spread of 1e-13 left by rounding).
    """
    from scipy.stats import nct

    capped = min(noncentrality, _LARGEST_NONCENTRALITY)
    return float(nct.sf(t_critical, df, capped) + nct.sf(t_critical, df, -capped))


def detectable_difference(n: int, spread: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference that a two-sided paired t-test over ``n`` seeds detects with ``power``.

    Args:
        n: the number of paired seeds, at least 2.
        spread: the standard deviation of the per-seed differences (``ddof=1``), ``>= 0``.
        alpha: the test's level.
        power: the probability of detecting it, above ``alpha``.

    Returns:
        The difference, in the unit of ``spread`` (``0.0`` for zero spread).
    """
    from scipy.optimize import brentq
    from scipy.stats import t

    if spread == 0.0:
        return 0.0
    df = n - 1
    t_critical = float(t.ppf(1.0 - alpha / 2.0, df))
    high = t_critical + 4.0
    while _power(high, df, t_critical) < power:
        high *= 2.0
    noncentrality = brentq(lambda nc: _power(nc, df, t_critical) - power, 0.0, high, xtol=1e-10)
    return float(noncentrality) * spread / math.sqrt(n)


def seeds_to_resolve(difference: float, spread: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """The fewest paired seeds (at least 2) whose two-sided t-test detects ``difference`` with ``power``.

    Args:
        difference: the true difference to detect, ``> 0``.
        spread: the standard deviation of the per-seed differences, ``>= 0``.
        alpha: the test's level.
        power: the probability of detecting it, above ``alpha``.

    Returns:
        The number of seeds (``2`` for zero spread).
    """
    from scipy.stats import t

    def enough(n: int) -> bool:
        t_critical = float(t.ppf(1.0 - alpha / 2.0, n - 1))
        return _power(difference * math.sqrt(n) / spread, n - 1, t_critical) >= power

    if spread == 0.0 or enough(2):
        return 2
    low, high = 2, 4  # enough(low) is False; find a high that is enough, then the first n in (low, high] that is
    while not enough(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down correction: each p multiplied by the number of hypotheses not yet rejected, kept monotone.

    Args:
        p_values: one p per test, in any order.

    Returns:
        The corrected p-values in the same order, each at most 1.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    corrected = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        corrected[index] = running
    return corrected


def _paired(arm_ap: Mapping[int, float], base_ap: Mapping[int, float]) -> tuple[tuple[int, ...], np.ndarray]:
    seeds = tuple(sorted(set(arm_ap) & set(base_ap)))
    return seeds, np.asarray([arm_ap[s] - base_ap[s] for s in seeds], dtype=np.float64)


def compare_to_baseline(
    ap: Mapping[str, Mapping[int, float]],
    baseline: str,
    *,
    resolve: float = 0.5,
    confidence: float = 0.95,
    power: float = 0.8,
) -> list[ArmVerdict]:
    """Every other arm against ``baseline``, paired on the seeds both have, with Holm's correction across arms.

    Args:
        ap: ``ap[arm][seed]`` = the arm's AP at that seed, in AP points (percent, as printed: ``resolve=0.5`` is
            half a point).
        baseline: the arm the others are compared with; a key of ``ap``.
        resolve: the difference whose required number of seeds is reported, in the unit of ``ap``.
        confidence: the confidence of the interval; ``alpha = 1 - confidence`` is the level of the test.
        power: the power of the detectable difference and of the seeds needed.

    Returns:
        One verdict per arm other than ``baseline``, in the order of ``ap``. The correction counts the
            arms with at least 2 paired seeds.

    Raises:
        ValueError: for a baseline not in ``ap``, an AP that is not finite, ``confidence`` outside (0, 1),
            ``power`` outside (alpha, 1) or ``resolve`` not a finite number > 0.

    Example:
        >>> ap = {"smooth_l1": {0: 30.0, 1: 31.0, 2: 29.5}, "balanced_l1": {0: 32.0, 1: 32.5, 2: 31.0}}
        >>> [v.word for v in compare_to_baseline(ap, "smooth_l1")]
        ['better']
    """
    from scipy.stats import ttest_rel

    alpha = _check_settings(resolve, confidence, power)
    _check_ap(ap, baseline)
    settings = {"confidence": confidence, "power": power, "resolve": resolve}
    rows: list[dict[str, Any]] = []
    for arm in ap:
        if arm == baseline:
            continue
        seeds, differences = _paired(ap[arm], ap[baseline])
        row: dict[str, Any] = {"arm": arm, "baseline": baseline, "seeds": seeds, **settings}
        row.update(dict.fromkeys(("ci_low", "ci_high", "p_value", "detectable_difference", "seeds_to_resolve")))
        row["mean_difference"] = float(differences.mean()) if seeds else None
        rows.append(row)
        if len(seeds) < 2:
            continue
        mean = row["mean_difference"]
        spread = float(differences.std(ddof=1)) if np.ptp(differences) > 0 else 0.0
        if spread == 0.0:  # the t-test's limit: no NaN from 0 / 0
            row.update(ci_low=mean, ci_high=mean, p_value=0.0 if mean != 0.0 else 1.0)
        else:
            result = ttest_rel([ap[arm][s] for s in seeds], [ap[baseline][s] for s in seeds])
            interval = result.confidence_interval(confidence_level=confidence)
            row.update(ci_low=float(interval.low), ci_high=float(interval.high), p_value=float(result.pvalue))
        row["detectable_difference"] = detectable_difference(len(seeds), spread, alpha=alpha, power=power)
        row["seeds_to_resolve"] = seeds_to_resolve(resolve, spread, alpha=alpha, power=power)
    tested = [row for row in rows if row["p_value"] is not None]
    for row, p_holm in zip(tested, holm([row["p_value"] for row in tested]), strict=True):
        row["p_holm"] = p_holm
    verdicts = []
    for row in rows:
        row.setdefault("p_holm", None)
        verdicts.append(ArmVerdict(**row, word=_word(row, alpha)))
    return verdicts


def _word(row: dict[str, Any], alpha: float) -> str:
    n = len(row["seeds"])
    if n == 0:
        return f"no seed in common with {row['baseline']}"
    if n == 1:
        return ONE_SEED
    if row["p_holm"] < alpha:
        return "better" if row["mean_difference"] > 0 else "worse"
    return f"not resolved with {n} seeds"


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _p_is(value: float | None) -> str:
    text = _p(value)
    return text if text.startswith("<") else f"= {text}"


def verdict_lines(verdicts: list[ArmVerdict]) -> list[str]:
    """The verdict as printed: a Markdown table of the numbers, then one sentence per arm and what they mean.

    Args:
        verdicts: the result of :func:`compare_to_baseline`.

    Returns:
        The lines; none for no verdict.
    """
    from balanced_l1.experiments.report._markdown import markdown_table

    if not verdicts:
        return []
    first = verdicts[0]
    level = f"{first.confidence:.0%}"
    tested = sum(v.p_value is not None for v in verdicts)
    lines = [f"Verdict on AP against {first.baseline}, paired per seed (AP points):"]
    if tested:
        rows = [
            ["arm", "seeds", "difference", f"{level} CI", "p", f"p Holm ({tested})",
             f"detectable ({first.power:.0%} power)", f"seeds for {first.resolve:g} AP", "verdict"]
        ]  # fmt: skip
        for v in verdicts:
            interval = "n/a" if v.ci_low is None else f"{v.ci_low:+.2f} to {v.ci_high:+.2f}"
            rows.append(
                [v.arm, str(len(v.seeds)), _number(v.mean_difference, "+.2f"), interval, _p(v.p_value),
                 _p(v.p_holm), _number(v.detectable_difference, ".2f"), _number(v.seeds_to_resolve, "d"),
                 v.word if v.p_value is not None else "no verdict"]
            )  # fmt: skip
        lines += markdown_table(rows)
    for v in verdicts:
        lines.append(_sentence(v, tested))
    if tested:
        lines.append(
            f"An arm is called better or worse only when its Holm-corrected p (over the {tested} arms tested) is "
            f"below {1 - first.confidence:.2g}; 'not resolved' means these seeds cannot tell the difference from "
            "seed-to-seed noise, not that the arms are equal."
        )
    return lines


def _sentence(v: ArmVerdict, tested: int) -> str:
    n = len(v.seeds)
    if v.mean_difference is None:
        return f"{v.arm}: {v.word}; no verdict."
    if v.p_value is None:
        return f"{v.arm}: {v.mean_difference:+.2f} AP against {v.baseline} on seed {v.seeds[0]}, but {v.word}."
    text = (
        f"{v.arm}: {v.mean_difference:+.2f} AP against {v.baseline} over {n} seeds ({v.confidence:.0%} CI "
        f"{v.ci_low:+.2f} to {v.ci_high:+.2f}, p {_p_is(v.p_value)}, Holm-corrected over {tested} arms "
        f"p {_p_is(v.p_holm)}): {v.word}."
    )
    if v.zero_spread:
        return text + (
            " Every seed gave the same difference, so there is no spread to measure the noise with; more seeds "
            "would show whether it holds."
        )
    return text + (
        f" These {n} seeds detect a difference of {v.detectable_difference:.2f} AP with {v.power:.0%} power; "
        f"{v.resolve:g} AP needs about {v.seeds_to_resolve} seeds at this spread."
    )
