"""The gradient balance predicted from recorded regression errors, beside what the runs measured.

Two users: ``balanced-l1 compare`` prints each arm's RoI-head balance as predicted from the baseline's sample of
errors (:func:`predict_from_baseline`, :func:`format_prediction_table`), and ``balanced-l1 balance`` predicts it
for any box loss and parameters from the errors a finished run recorded.

Each finished run of ``balanced-l1 compare`` keeps a bounded sample of its RoI head's positives from the second
half of its training (``runs/<arm>_seed<s>_roi_sample.npy``). :func:`predict_table` computes, on the samples of
one arm's runs (every seed pooled), the gradient balance that other losses and parameters would give, and
:func:`solve_alpha_table` the Balanced L1 alpha that reaches a target inlier/outlier ratio.
Nothing in the output folder is executed: run records are JSON, samples are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balanced_l1.detection.balance_prediction import (
    PREDICTED_STATISTICS,
    alpha_search_range,
    predict_box_gradient_balance,
    solve_alpha,
    split_roi_sample,
)
from balanced_l1.detection.box_loss import FLOAT64, BoxLossConfig, get_box_loss
from balanced_l1.experiments.output_folder.errors import RunsNotFoundError
from balanced_l1.experiments.output_folder.files import finished_runs, read_sample
from balanced_l1.experiments.output_folder.layout import RunFiles
from balanced_l1.experiments.report._markdown import markdown_table, statistic_cell
from balanced_l1.experiments.report.balance import mean_over_seeds, roi_statistic, run_summary


@dataclass(frozen=True)
class ArmRuns:
    """The finished runs of one arm in an output folder.

    Attributes:
        arm: the arm's canonical name.
        seeds: the seeds of its finished runs.
        sample: ``(K, 12)`` their RoI samples, concatenated in seed order.
        measured: the RoI head's second-half gradient balance, mean over the seeds (``None`` where undefined).
    """

    arm: str
    seeds: tuple[int, ...]
    sample: torch.Tensor
    measured: dict[str, float | None]


def load_arm_runs(out: str | Path, arm: str) -> ArmRuns:
    """The finished runs of ``arm`` (its canonical name) in the output folder ``out``.

    Raises:
        RunsNotFoundError: when ``out`` has no finished run of ``arm`` (the arms it has are listed).
        UnreadableRunFileError: when a run's sample is missing, cannot be read or is not a finite ``(K, 12)``
            float64 array (see :func:`~balanced_l1.experiments.output_folder.files.read_sample`).
    """
    folder = Path(out)
    records = finished_runs(folder, skip_unreadable=True)  # what is no run record is no run of any arm
    mine = [(p, r) for p, r in records if r["arm"] == arm]
    if not mine:
        arms = sorted({r["arm"] for _, r in records})
        have = f"it has runs of: {', '.join(arms)}" if arms else "it has no finished run"
        raise RunsNotFoundError(f"{folder}: no finished run of arm {arm!r}; {have}")
    mine.sort(key=lambda pair: pair[1]["seed"])
    samples = [read_sample(RunFiles.of_record(path).roi_sample) for path, _ in mine]
    measured = mean_over_seeds({str(r["seed"]): run_summary(r["gradient_balance"]) for _, r in mine})
    seeds = tuple(int(r["seed"]) for _, r in mine)
    return ArmRuns(arm, seeds, torch.from_numpy(np.concatenate(samples)), measured["gradient_balance"] or {})


#: The most losses one ``balance`` table predicts: each is a pass over every recorded positive (up to 4096 per seed).
MAX_PREDICTIONS = 1000
#: The most alphas one ``balance --target-ratio`` table solves for: each solve is about 100 predictions.
MAX_SOLVES = 100


def loss_grid(loss: str, values: dict[str, list[Any]]) -> list[tuple[str, BoxLossConfig]]:
    """Every combination of ``values`` (parameter -> list) as a labelled box loss, the first key varying slowest.

    The parameters are the registered loss's own and ``loss_weight``; each combination is checked as the loss
    will be computed, in float64 (:meth:`~balanced_l1.detection.box_loss.BoxLossConfig.check_fits`).

    Raises:
        ValueError: for an unknown loss, a parameter the loss does not take, a grid of more than
            :data:`MAX_PREDICTIONS` losses, or a value the loss refuses.
    """
    box_loss = get_box_loss(loss)
    takes = [*(p.name for p in box_loss.parameters), "loss_weight"]
    extra = sorted(k for k, v in values.items() if v and k not in takes)
    if extra:
        raise ValueError(f"the {loss} loss takes {', '.join(takes)}; got {', '.join(extra)}")
    keys = [k for k in takes if values.get(k)]
    size = math.prod(len(values[k]) for k in keys)
    if size > MAX_PREDICTIONS:
        raise ValueError(
            f"the grid has {size} losses; at most {MAX_PREDICTIONS} (each is a pass over every recorded positive)"
        )
    grid = []
    for combination in itertools.product(*(values[k] for k in keys)):
        chosen = dict(zip(keys, combination, strict=True))
        weight = chosen.pop("loss_weight", None)
        config = BoxLossConfig(loss, chosen, weight)
        config.check_fits(FLOAT64)
        label = f"{loss}({', '.join(f'{k}={v}' for k, v in zip(keys, combination, strict=True))})" if keys else loss
        grid.append((label, config))
    return grid


def check_solve_grid(gammas: list[float], betas: list[float], formulation: str) -> None:
    """Check the gammas and betas ``balance`` solves alpha for, as the solver will use them.

    Raises:
        ValueError: for more than :data:`MAX_SOLVES` pairs, a gamma, beta or formulation Balanced L1 refuses, or a
            pair whose loss cannot be computed in float64 at either end of the alphas searched
            (:func:`~balanced_l1.detection.balance_prediction.alpha_search_range`).
    """
    if len(gammas) * len(betas) > MAX_SOLVES:
        raise ValueError(
            f"{len(gammas)} gammas x {len(betas)} betas are {len(gammas) * len(betas)} solves for alpha; at most "
            f"{MAX_SOLVES} (each solve is about 100 predictions)"
        )
    for gamma, beta in itertools.product(gammas, betas):
        fixed = {"gamma": gamma, "beta": beta, "formulation": formulation}
        BoxLossConfig("balanced_l1", {**fixed, "alpha": gamma})  # each value on its own
        low, high = alpha_search_range(gamma)
        for alpha in (low, high):
            try:
                BoxLossConfig("balanced_l1", {**fixed, "alpha": alpha}).check_fits(FLOAT64)
            except ValueError as err:
                raise ValueError(
                    f"gamma={gamma!r}, beta={beta!r}: the search for alpha from {low:.6g} to {high:.6g} reaches "
                    f"alpha={alpha:.6g}, where {err}"
                ) from None


def predict_table(runs: ArmRuns, grid: list[tuple[str, BoxLossConfig]]) -> str:
    """A Markdown table: the arm's measured balance, then the prediction for each loss of ``grid``."""
    pred, target, proposals = split_roi_sample(runs.sample)
    header = ["loss", "inlier fraction", "in/out gradient", "inlier share", "mean box gradient"]
    rows = [header, [f"{runs.arm} (measured)", *(statistic_cell(runs.measured.get(n)) for n in PREDICTED_STATISTICS)]]
    for label, config in grid:
        stats = predict_box_gradient_balance(pred, target, config, proposals=proposals)
        rows.append([label, *(statistic_cell(stats[n]) for n in PREDICTED_STATISTICS)])
    return "\n".join(markdown_table(rows))


def solve_alpha_table(
    runs: ArmRuns, target_ratio: float, gammas: list[float], betas: list[float], formulation: str
) -> str:
    """A Markdown table: for each gamma and beta, the alpha whose predicted ratio is ``target_ratio``."""
    pred, target, _ = split_roi_sample(runs.sample)
    rows = [["gamma", "beta", "alpha", "predicted in/out gradient", "inlier share"]]
    for gamma, beta in itertools.product(gammas, betas):
        alpha = solve_alpha(pred, target, target_ratio, gamma=gamma, beta=beta, formulation=formulation)
        if alpha is None:
            rows.append([f"{gamma:g}", f"{beta:g}", "none reaches it", "", ""])
            continue
        config = BoxLossConfig(
            "balanced_l1", {"alpha": alpha, "gamma": gamma, "beta": beta, "formulation": formulation}
        )
        stats = predict_box_gradient_balance(pred, target, config)
        rows.append(
            [f"{gamma:g}", f"{beta:g}", f"{alpha:.4f}", statistic_cell(stats["inlier_outlier_gradient_ratio"]),
             statistic_cell(stats["inlier_gradient_share"])]
        )  # fmt: skip
    return "\n".join(markdown_table(rows))


def predict_from_baseline(
    samples: list[np.ndarray], box_losses: dict[str, BoxLossConfig | None]
) -> dict[str, dict[str, float | None]]:
    """Each arm's RoI-head gradient balance as predicted from the baseline's sample of regression errors.

    Args:
        samples: the baseline runs' RoI samples, ``(K, 12)`` each (see :func:`split_roi_sample`).
        box_losses: each arm's RoI-head box loss (``None``: the arm has no RoI head, nothing is predicted).

    Returns:
        ``{arm: prediction}`` (see :func:`~balanced_l1.detection.predict_box_gradient_balance`); empty when
            the baseline kept no sample.
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
