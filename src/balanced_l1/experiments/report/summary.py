"""Statistics over seeds, the printed table, and the figures of a comparison.

With several seeds each arm gets the mean and the sample standard deviation (``ddof=1``; ``None``
for a single seed) of every metric, and every other arm gets the paired difference to the baseline
(``arm - smooth_l1`` per seed, then mean and standard deviation over seeds); :func:`ap_points` gives the AP per
seed to :func:`~balanced_l1.experiments.report.verdict.compare_to_baseline`. A metric that
pycocotools reports as ``-1`` (no ground truth in that size range) stays ``-1`` in means, and its
differences are ``None``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from balanced_l1._files import save_figure_atomically
from balanced_l1.experiments.metric_names import IOU_THRESHOLDS, METRICS
from balanced_l1.experiments.output_folder.layout import AP_VS_IOU_FIGURE, LOSS_CURVES_FIGURE
from balanced_l1.experiments.report._markdown import markdown_table
from balanced_l1.experiments.report.balance import inlier_outlier_cell, mean_over_seeds


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation of per-seed values.

    Args:
        values: one value per seed, at least one.

    Returns:
        ``(mean, std)`` with ``std`` computed with ``ddof=1``, or ``None`` for a single value.

    Raises:
        ValueError: if ``values`` is empty.

    Example:
        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    if not values:
        raise ValueError("mean_std needs at least one value, got none")
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return float(array.mean()), std


def _summarize_metrics(per_seed: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, float | None]]:
    means: dict[str, float] = {}
    stds: dict[str, float | None] = {}
    for name in METRICS:
        values = [m[name] for m in per_seed.values()]
        if any(v < 0 for v in values):
            means[name], stds[name] = -1.0, None
        else:
            means[name], stds[name] = mean_std(values)
    return means, stds


def summarize(
    runs: dict[str, dict[int, dict[str, Any]]], baseline: str, descriptions: dict[str, str]
) -> dict[str, Any]:
    """Aggregate per-seed metrics into the ``arms`` and ``paired_difference`` sections of ``results.json``.

    Args:
        runs: ``{arm: {seed: metrics}}`` with the keys of :data:`METRICS` and ``ap_per_iou`` in each metrics dict.
        baseline: the arm others are compared with; without it there are no paired differences.
        descriptions: one line per arm.

    Returns:
        ``{"arms": {arm: {"description", "per_seed", "mean", "std", "ap_per_iou_mean"}},
            "paired_difference": {"<arm> - <baseline>": {"per_seed", "mean", "std"}}}``. Whether a difference
            is more than seed-to-seed noise is the verdict's question
            (:mod:`~balanced_l1.experiments.report.verdict`).
    """
    arms: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        per_seed = {str(seed): dict(m) for seed, m in sorted(by_seed.items())}
        mean, std = _summarize_metrics(per_seed)
        curves = np.asarray([m["ap_per_iou"] for m in per_seed.values()], dtype=np.float64)
        arms[arm] = {
            "description": descriptions.get(arm, ""),
            "per_seed": per_seed,
            "mean": mean,
            "std": std,
            "ap_per_iou_mean": curves.mean(axis=0).tolist(),
            "gradient_balance_mean": mean_over_seeds(per_seed),
        }
    differences: dict[str, Any] = {}
    for arm in runs:
        if arm == baseline or baseline not in runs:
            continue
        seeds = sorted(set(runs[arm]) & set(runs[baseline]))
        diff_per_seed = {
            str(s): {n: _difference(runs[arm][s][n], runs[baseline][s][n]) for n in METRICS} for s in seeds
        }
        diff_mean: dict[str, float | None] = {}
        diff_std: dict[str, float | None] = {}
        for name in METRICS:
            values = [d[name] for d in diff_per_seed.values()]
            if not values or any(v is None for v in values):
                diff_mean[name], diff_std[name] = None, None
            else:
                diff_mean[name], diff_std[name] = mean_std([float(v) for v in values])  # type: ignore[arg-type]
        differences[f"{arm} - {baseline}"] = {
            "per_seed": diff_per_seed,
            "mean": diff_mean,
            "std": diff_std,
        }
    return {"arms": arms, "paired_difference": differences}


def ap_points(arms: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Each arm's AP per seed in AP points (percent), the input of the verdict.

    Args:
        arms: the ``arms`` section of :func:`summarize`.

    Returns:
        ``{arm: {seed: 100 * AP}}``, leaving out a seed whose AP pycocotools could not compute (``-1``).
    """
    return {
        arm: {int(seed): 100 * m["AP"] for seed, m in data["per_seed"].items() if m["AP"] >= 0}
        for arm, data in arms.items()
    }


def _difference(value: float, reference: float) -> float | None:
    return None if value < 0 or reference < 0 else value - reference


def _cell(mean: float | None, std: float | None, *, signed: bool = False) -> str:
    if mean is None or (mean < 0 and not signed):
        return "n/a"
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text if std is None else f"{text} ± {100 * std:.1f}"


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table of the metrics (in percent): one row per arm, one per paired difference.

    The last column is the RoI head's inlier/outlier gradient ratio per sample (mean over seeds of its
    second-half mean; the paper's smooth L1 figure is 0.3), ``n/a`` where it was not measured.

    Args:
        summary: the result of :func:`summarize`.

    Returns:
        The table; cells read ``mean ± std`` when there are several seeds, ``n/a`` for pycocotools' ``-1``.
    """
    rows = [["arm", "seeds", *METRICS, "in/out grad"]]
    for arm, data in summary["arms"].items():
        cells = [_cell(data["mean"][n], data["std"][n]) for n in METRICS]
        rows.append([arm, str(len(data["per_seed"])), *cells, inlier_outlier_cell(data)])
    for name, data in summary["paired_difference"].items():
        cells = [_cell(data["mean"][n], data["std"][n], signed=True) for n in METRICS]
        rows.append([name, str(len(data["per_seed"])), *cells, ""])
    return "\n".join(markdown_table(rows))


def _smooth(values: list[float], window: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size < window or window < 2:
        return array
    kernel = np.ones(window) / window
    head = np.cumsum(array[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(array, kernel, mode="valid")])


def _loss_figure(histories: dict[str, dict[int, list[dict[str, float]]]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    ax_total, ax_box = fig.subplots(1, 2)
    for index, (arm, by_seed) in enumerate(histories.items()):
        for k, history in enumerate(h for _, h in sorted(by_seed.items())):
            window = max(1, len(history) // 25)
            label = arm if k == 0 else None
            box = [h.get("loss_box_reg", math.nan) + h.get("loss_rpn_box_reg", math.nan) for h in history]
            ax_total.plot(_smooth([h["loss"] for h in history], window), color=f"C{index}", alpha=0.8, label=label)
            ax_box.plot(_smooth(box, window), color=f"C{index}", alpha=0.8, label=label)
    ax_total.set_title("total training loss (running mean)")
    ax_box.set_title("box losses: RPN + RoI head (running mean)")
    for ax in (ax_total, ax_box):
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training loss per arm (each line one seed); box losses differ in scale by definition")
    return fig


def _ap_figure(summary: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for index, (arm, data) in enumerate(summary["arms"].items()):
        curves = np.asarray([m["ap_per_iou"] for m in data["per_seed"].values()], dtype=np.float64)
        std = curves.std(axis=0, ddof=1) if len(curves) > 1 else None
        ax.errorbar(
            IOU_THRESHOLDS,
            100 * curves.mean(axis=0),
            yerr=None if std is None else 100 * std,
            marker="o",
            capsize=3,
            color=f"C{index}",
            label=f"{arm} (AP {100 * data['mean']['AP']:.1f})",
        )
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP against IoU threshold (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def save_figures(
    histories: dict[str, dict[int, list[dict[str, float]]]], summary: dict[str, Any], out: str | os.PathLike[str]
) -> list[Path]:
    """Draw ``loss_curves.png`` (training loss per arm) and ``ap_vs_iou.png`` (AP against IoU threshold per arm).

    The figures are ``matplotlib.figure.Figure`` objects drawn without pyplot, so matplotlib's global backend
    (a notebook's, for instance) is left alone.

    Args:
        histories: ``{arm: {seed: loss history}}`` as returned by the training loop.
        summary: the result of :func:`summarize`.
        out: the output folder.

    Returns:
        The paths of the two figures (each written atomically).
    """
    root = Path(out)
    return [
        save_figure_atomically(_loss_figure(histories), root / LOSS_CURVES_FIGURE),
        save_figure_atomically(_ap_figure(summary), root / AP_VS_IOU_FIGURE),
    ]
