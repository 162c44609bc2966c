"""The gradient balance of a comparison: per-run summaries, means over seeds, the sentences, and the figures.

Each run's :class:`~balanced_l1.detection.GradientBalanceMonitor` series (one record per iteration) is
summarised by each statistic's mean over the second half of training. In ``results.json`` a run's
``per_seed`` entry gets ``"gradient_balance"`` (the RoI head, or a one-stage model's head) and
``"rpn_gradient_balance"`` (the RPN; ``None`` for one-stage models); each arm gets
``"gradient_balance_mean"``, the mean of those over seeds. :func:`explain_balance` says, for each arm, how
its RoI-head balance compares with the baseline's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from balanced_l1._files import save_figure_atomically
from balanced_l1.detection.gradient_balance import PAPER_INLIER_OUTLIER_RATIO, STATISTICS, second_half_means
from balanced_l1.experiments.output_folder.layout import BALANCE_VS_AP_FIGURE, GRADIENT_BALANCE_FIGURE
from balanced_l1.experiments.report._markdown import markdown_table, statistic_cell

Series = list[dict[str, dict[str, float | None]]]
#: results.json key -> the monitor's stage names it is read from (first present wins).
SUMMARY_KEYS = {"gradient_balance": ("roi_heads", "head"), "rpn_gradient_balance": ("rpn",)}
_TITLES = {
    "inlier_fraction": "inlier fraction",
    "inlier_outlier_gradient_ratio": "inlier / outlier gradient per sample",
    "inlier_gradient_share": "inliers' share of the box gradient",
    "box_cls_gradient_ratio": "box / classification gradient (shared features)",
}


def run_summary(series: Series) -> dict[str, dict[str, float | None] | None]:
    """A run's ``gradient_balance`` and ``rpn_gradient_balance`` entries: second-half means per statistic.

    Args:
        series: the run's monitor records, one per iteration.

    Returns:
        ``{"gradient_balance": {statistic: mean or None} or None, "rpn_gradient_balance": ... or None}``.
    """
    means = second_half_means(series)
    summary: dict[str, dict[str, float | None] | None] = {}
    for key, stages in SUMMARY_KEYS.items():
        stage = next((s for s in stages if s in means), None)
        summary[key] = None if stage is None else {name: means[stage].get(name) for name in STATISTICS}
    return summary


def mean_over_seeds(per_seed: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None] | None]:
    """Each summary statistic's mean over the seeds of one arm (seeds where it is ``None`` left out).

    Args:
        per_seed: ``{seed: entry}`` whose entries hold the keys of :data:`SUMMARY_KEYS`.

    Returns:
        ``{key: {statistic: mean or None} or None}``, the same shape as :func:`run_summary`.
    """
    result: dict[str, dict[str, float | None] | None] = {}
    for key in SUMMARY_KEYS:
        entries = [e[key] for e in per_seed.values() if e.get(key) is not None]
        if not entries:
            result[key] = None
            continue
        result[key] = {}
        for name in STATISTICS:
            values = [e[name] for e in entries if e.get(name) is not None]
            result[key][name] = float(np.mean(values)) if values else None  # type: ignore[index]
    return result


def roi_statistic(arm_summary: dict[str, Any], name: str) -> float | None:
    """An arm's RoI-head (or one-stage head's) statistic, mean over seeds, from its ``results.json`` entry."""
    value = ((arm_summary.get("gradient_balance_mean") or {}).get("gradient_balance") or {}).get(name)
    return None if value is None or not math.isfinite(value) else float(value)


def inlier_outlier_cell(arm_summary: dict[str, Any]) -> str:
    """The printed table's cell: the RoI head's mean inlier/outlier gradient ratio over seeds, or ``n/a``."""
    value = roi_statistic(arm_summary, "inlier_outlier_gradient_ratio")
    return "n/a" if value is None else f"{value:.2f}"


def explain_balance(arms: dict[str, Any], baseline: str) -> list[str]:
    """One sentence per arm: its RoI-head inlier/outlier gradient ratio and box/cls ratio against the baseline's.

    Args:
        arms: the ``arms`` section of ``results.json``.
        baseline: the arm the others are compared with.
    """
    base_ratio = roi_statistic(arms.get(baseline, {}), "inlier_outlier_gradient_ratio")
    base_task = roi_statistic(arms.get(baseline, {}), "box_cls_gradient_ratio")
    if base_ratio is None:
        return []
    lines = []
    for arm, data in arms.items():
        if arm == baseline:
            continue
        ratio = roi_statistic(data, "inlier_outlier_gradient_ratio")
        if ratio is None:
            continue
        change = (ratio - base_ratio) / base_ratio
        if abs(change) < 0.05:
            direction = "about the same balance as"
        elif change > 0:
            direction = "more of the gradient to inliers than"
        else:
            direction = "less of the gradient to inliers than"
        line = (
            f"{arm}: an inlier gets {ratio:.2f} of an outlier's box gradient in the RoI head against "
            f"{base_ratio:.2f} under {baseline} ({change:+.0%}): {direction} the baseline"
        )
        task = roi_statistic(data, "box_cls_gradient_ratio")
        if task is not None and base_task is not None:
            line += f"; box/cls gradient {task:.2f} against {base_task:.2f}"
        lines.append(line + ".")
    return lines


def _running_mean(values: list[float | None], window: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.asarray([i for i, v in enumerate(values) if v is not None], dtype=np.int64)
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if array.size < window or window < 2:
        return steps, array
    cumulative = np.cumsum(np.insert(array, 0, 0.0))
    counts = np.minimum(np.arange(1, array.size + 1), window)
    starts = np.arange(array.size) + 1 - counts
    return steps, (cumulative[np.arange(1, array.size + 1)] - cumulative[starts]) / counts


def _figure(series: dict[str, dict[int, Series]]) -> Any:
    from matplotlib.figure import Figure

    present = {stage for runs in series.values() for history in runs.values() for r in history for stage in r}
    stages = [s for s in ("roi_heads", "head", "rpn") if s in present]
    fig = Figure(figsize=(4.0 * len(STATISTICS), 3.3 * max(1, len(stages))))
    axes = np.atleast_2d(fig.subplots(max(1, len(stages)), len(STATISTICS), squeeze=False))
    for row, stage in enumerate(stages):
        for col, name in enumerate(STATISTICS):
            ax = axes[row, col]
            drawn = False
            for index, (arm, by_seed) in enumerate(series.items()):
                for k, (_, history) in enumerate(sorted(by_seed.items())):
                    values = [r.get(stage, {}).get(name) for r in history]
                    if all(v is None for v in values):
                        continue
                    window = max(1, sum(v is not None for v in values) // 20)
                    steps, smooth = _running_mean(values, window)
                    ax.plot(steps, smooth, color=f"C{index}", alpha=0.8, label=arm if k == 0 else None)
                    drawn = True
            if not drawn:
                ax.set_axis_off()
                continue
            ax.ticklabel_format(axis="y", useOffset=False)
            if name in ("inlier_fraction", "inlier_gradient_share"):
                ax.set_ylim(0.0, 1.02)
            else:
                ax.set_ylim(bottom=0.0)
            if name == "inlier_outlier_gradient_ratio":
                ax.axhline(PAPER_INLIER_OUTLIER_RATIO, color="k", ls="--", lw=1, label="paper: 0.3 (smooth L1)")
            ax.set_title(f"{stage}: {_TITLES[name]}", fontsize=9)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Gradient balance over training, per arm (running mean; each line one seed)")
    fig.tight_layout()
    return fig


def save_balance_figure(series: dict[str, dict[int, Series]], out: str | Path) -> Path:
    """Draw ``gradient_balance.png``: each statistic over training, per stage and arm, with the paper's 0.3.

    Args:
        series: ``{arm: {seed: monitor records}}``.
        out: the output folder.

    Returns:
        The figure's path (written atomically).
    """
    return save_figure_atomically(_figure(series), Path(out) / GRADIENT_BALANCE_FIGURE)


def format_balance_table(summary: dict[str, Any]) -> str:
    """A Markdown table of each arm's second-half gradient balance (mean over seeds), RoI head and RPN.

    Args:
        summary: the ``arms`` section of ``results.json`` (each with ``gradient_balance_mean``).

    Returns:
        The table, or an empty string when no arm has a measurement.
    """
    header = ["arm", "stage", "inlier fraction", "in/out gradient", "inlier share", "box/cls gradient"]
    rows = [header]
    for arm, data in summary.items():
        for key, label in (("gradient_balance", "RoI head"), ("rpn_gradient_balance", "RPN")):
            stats = (data.get("gradient_balance_mean") or {}).get(key)
            if stats is None:
                continue
            cells = [statistic_cell(stats.get(n)) for n in STATISTICS]
            rows.append([arm, label, *cells])
    if len(rows) == 1:
        return ""
    return "\n".join(markdown_table(rows))


def _per_seed_points(arm_summary: dict[str, Any], statistic: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for entry in arm_summary.get("per_seed", {}).values():
        value = (entry.get("gradient_balance") or {}).get(statistic)
        if value is not None and math.isfinite(value):
            xs.append(float(value))
            ys.append(100.0 * float(entry["AP"]))
    return xs, ys


#: Markers of the arms in ``balance_vs_ap.png``, combined with the 10 default colours: 40 arms look distinct.
_MARKERS = ("o", "s", "^", "D")
_LEGEND_COLUMNS = 3


def save_balance_vs_ap_figure(arms: dict[str, Any], out: str | Path) -> Path:
    """Draw ``balance_vs_ap.png``: each arm's AP (mean, and the spread over seeds) against its RoI-head
    inlier/outlier gradient ratio and its box/cls gradient ratio (means over seeds).

    The arms are named once, in a legend of three columns below both panels (the figure grows with it),
    not beside their points, where the names of arms with close values would cover each other.

    Args:
        arms: the ``arms`` section of ``results.json``.
        out: the output folder.

    Returns:
        The figure's path (written atomically).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.2))
    axes = fig.subplots(1, 2)
    labels = {"inlier_outlier_gradient_ratio": "RoI head: inlier / outlier gradient per sample",
              "box_cls_gradient_ratio": "RoI head: box / classification gradient"}  # fmt: skip
    for ax, (statistic, label) in zip(axes, labels.items(), strict=True):
        for index, (arm, data) in enumerate(arms.items()):
            xs, ys = _per_seed_points(data, statistic)
            if not xs:
                continue
            x, y = float(np.mean(xs)), float(np.mean(ys))
            colour, marker = f"C{index % 10}", _MARKERS[(index // 10) % len(_MARKERS)]
            ax.scatter(xs, ys, color=colour, marker=marker, alpha=0.35, s=12)
            spread = (max(ys) - min(ys)) / 2 if len(ys) > 1 else 0.0
            ax.errorbar([x], [y], yerr=[spread], fmt=marker, color=colour, capsize=3, label=arm)
        if statistic == "inlier_outlier_gradient_ratio":
            ax.axvline(PAPER_INLIER_OUTLIER_RATIO, color="k", ls="--", lw=1)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("COCO AP (%)")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    legend_inches = 0.2 * -(-len(names) // _LEGEND_COLUMNS) + 0.1 if handles else 0.0
    fig.set_size_inches(10.0, 4.2 + legend_inches)
    if handles:
        fig.legend(handles, names, fontsize=8, loc="lower center", ncol=min(_LEGEND_COLUMNS, len(names)), frameon=False)
    fig.suptitle("AP against the gradient balance (dot and bar: mean and half-range over seeds; faint: each seed)")
    fig.tight_layout(rect=(0, legend_inches / (4.2 + legend_inches), 1, 1))
    return save_figure_atomically(fig, Path(out) / BALANCE_VS_AP_FIGURE)
