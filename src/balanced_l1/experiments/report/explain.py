"""What a comparison's numbers say, in words: the gradient balance against the baseline, and the plateau.

After its tables, ``balanced-l1 compare`` prints, computed from its own numbers:

- how each arm's RoI-head gradient balance compares with the baseline's (:func:`explain_balance`);
- what the baseline's regression errors predict for each arm's balance, beside what the arm measured
  (:func:`predict_from_baseline`, :func:`format_prediction_table`);
- whether the training losses had flattened: the mean loss of the last tenth of the iterations against the
  tenth before it (:func:`explain_plateau`). If they had not, the comparison is one of detectors still
  learning, and it says which flag trains longer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from balanced_l1.detection.balance_prediction import predict_box_gradient_balance, split_roi_sample
from balanced_l1.detection.box_loss import BoxLossConfig
from balanced_l1.experiments.report._markdown import markdown_table, statistic_cell
from balanced_l1.experiments.report.balance import roi_statistic

#: A drop of the mean loss by more than this fraction from one tenth of training to the last one: still learning.
STILL_LEARNING_DROP = 0.02


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


def _tenths(history: list[dict[str, float]]) -> tuple[float, float] | None:
    losses = [step["loss"] for step in history]
    tenth = len(losses) // 10
    if tenth < 1:
        return None
    return float(np.mean(losses[-2 * tenth : -tenth])), float(np.mean(losses[-tenth:]))


def explain_plateau(histories: dict[str, dict[int, list[dict[str, float]]]], iters: int) -> list[str]:
    """Whether each arm's training loss had flattened, and what to do if it had not.

    Args:
        histories: ``{arm: {seed: loss history}}``.
        iters: the runs' length in iterations (for the suggested longer length).
    """
    lines, learning = [], []
    for arm, by_seed in histories.items():
        pairs = [p for p in (_tenths(h) for h in by_seed.values()) if p is not None]
        if not pairs:
            continue
        before, last = float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))
        drop = (before - last) / before if before > 0 else 0.0
        lines.append(
            f"{arm}: mean loss {before:.4f} in the next-to-last tenth of training, "
            f"{last:.4f} in the last ({-drop:+.1%})"
        )
        if drop > STILL_LEARNING_DROP:
            learning.append(arm)
    if not lines:
        return []
    if learning:
        lines.append(
            f"The loss was still falling by more than {STILL_LEARNING_DROP:.0%} per tenth for {', '.join(learning)}: "
            f"this compares detectors that are still learning. Train longer to compare them nearer their plateau, "
            f"e.g. --iters {2 * iters} (or --epochs)."
        )
    else:
        lines.append(f"Every arm's loss had flattened (less than {STILL_LEARNING_DROP:.0%} lower in the last tenth).")
    return lines


def predict_from_baseline(
    samples: list[np.ndarray], box_losses: dict[str, BoxLossConfig | None]
) -> dict[str, dict[str, float | None]]:
    """Each arm's RoI-head gradient balance as predicted from the baseline's sample of regression errors.

    Args:
        samples: the baseline runs' RoI samples, ``(K, 12)`` each (see :func:`split_roi_sample`).
        box_losses: each arm's RoI-head box loss (``None``: the arm has no RoI head, nothing is predicted).

    Returns:
        ``{arm: prediction}`` (see :func:`~balanced_l1.detection.predict_box_gradient_balance`); empty when the
            baseline kept no sample.
    """
    rows = [s for s in samples if s.size]
    if not rows:
        return {}
    pred, target, proposals = split_roi_sample(torch.from_numpy(np.concatenate(rows)))
    return {
        arm: predict_box_gradient_balance(pred, target, loss, proposals=proposals)
        for arm, loss in box_losses.items()
        if loss is not None
    }


def format_prediction_table(predicted: dict[str, dict[str, float | None]], arms: dict[str, Any]) -> str:
    """A Markdown table: per arm, the predicted and the measured RoI inlier/outlier ratio and inlier share."""
    rows = [["arm", "in/out predicted", "in/out measured", "inlier share predicted", "inlier share measured"]]
    for arm, prediction in predicted.items():
        rows.append(
            [
                arm,
                statistic_cell(prediction.get("inlier_outlier_gradient_ratio")),
                statistic_cell(roi_statistic(arms.get(arm, {}), "inlier_outlier_gradient_ratio")),
                statistic_cell(prediction.get("inlier_gradient_share")),
                statistic_cell(roi_statistic(arms.get(arm, {}), "inlier_gradient_share")),
            ]
        )
    return "\n".join(markdown_table(rows)) if len(rows) > 1 else ""
