"""What a finished study leaves in ``--out``: ``tune.json``, the verdict, ``tune_history.png``, ``tune_importance.png``.

tune.json            every trial: number, role, arm and parameters, seed, state, AP, intermediate APs,
                     gradient balance, the reason of a failure; the verdict
tune_history.png     AP by trial (pruned trials marked at their last AP), the baseline's AP as a line
tune_importance.png  the parameters' importances and slices (Optuna's matplotlib visualisation)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from balanced_l1._files import write_json_atomically
from balanced_l1.experiments.config import CompareConfig
from balanced_l1.experiments.output_folder.layout import TUNE_HISTORY_FIGURE, TUNE_IMPORTANCE_FIGURE, TUNE_NAME
from balanced_l1.experiments.tune.settings import TuneSettings
from balanced_l1.experiments.tune.study import BASELINE, CONFIRM, GRID, SEARCH, masked_url, trials_of

__all__ = ["trial_record", "verdict_inputs", "write_outputs"]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as ``tune.json`` holds it."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "role": attrs.get("role"),
        "arm": attrs.get("arm"),
        "params": dict(trial.params),
        "seed": attrs.get("seed"),
        "state": trial.state.name.lower(),
        "AP": _finite(trial.value),
        "intermediate_AP": {str(step): _finite(v) for step, v in sorted(trial.intermediate_values.items())},
        "gradient_balance": attrs.get("gradient_balance"),
        "reason": attrs.get("reason"),
        "retry_of": trial.system_attrs.get("failed_trial"),
    }


def verdict_inputs(study: optuna.Study) -> dict[str, dict[int, float]]:
    """``ap[arm][seed]`` of the baseline and every confirmed setting, from the complete trials, in AP points (percent,
    as the verdict reads them)."""
    trials = [t for t in trials_of(study) if t.state == TrialState.COMPLETE and t.value is not None]
    confirmed = {t.user_attrs.get("arm") for t in trials if t.user_attrs.get("role") in (BASELINE, CONFIRM)}
    ap: dict[str, dict[int, float]] = {}
    for trial in trials:
        arm = trial.user_attrs.get("arm")
        if arm in confirmed and trial.user_attrs.get("role") in (BASELINE, CONFIRM, SEARCH, GRID):
            ap.setdefault(arm, {})[int(trial.user_attrs["seed"])] = 100.0 * float(trial.value)  # type: ignore[arg-type]
    return ap


def write_outputs(
    study: optuna.Study, config: CompareConfig, settings: TuneSettings, baseline: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """Write ``tune.json`` and the figures to ``config.out``, print the verdict; return ``tune.json``'s content."""
    out = Path(config.out)
    trials = trials_of(study)
    verdicts: list[Any] = []
    if settings.confirm:
        from balanced_l1.experiments.report.verdict import compare_to_baseline, verdict_lines

        ap = verdict_inputs(study)
        if baseline in ap and len(ap) > 1:
            verdicts = compare_to_baseline(ap, baseline)
            for line in verdict_lines(verdicts):
                log(line)
    results = {
        "study": settings.study,
        "storage": masked_url(settings.storage_url(config)),
        "baseline": baseline,
        "trials": [trial_record(t) for t in trials],
        "verdict": [v.as_dict() for v in verdicts],
    }
    path = write_json_atomically(results, out / TUNE_NAME)
    figures = [_history_figure(trials, baseline, out / TUNE_HISTORY_FIGURE)]
    importance = _importance_figure(trials, out / TUNE_IMPORTANCE_FIGURE)
    if isinstance(importance, str):
        log(f"tune_importance.png not drawn: {importance}")
    else:
        figures.append(importance)
    log(f"wrote {path}, {', '.join(str(f) for f in figures)}")
    return results


def _history_figure(trials: list[FrozenTrial], baseline: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for state, marker, label in ((TrialState.COMPLETE, "o", "complete"), (TrialState.PRUNED, "x", "pruned (last AP)")):
        chosen = [t for t in trials if t.state == state and _finite(t.value) is not None]
        ax.scatter([t.number for t in chosen], [float(t.value or 0.0) for t in chosen], marker=marker, label=label)
    base = [_finite(t.value) for t in trials if t.user_attrs.get("role") == BASELINE and t.state == TrialState.COMPLETE]
    if base and base[0] is not None:
        ax.axhline(base[0], color="grey", linestyle="--", label=f"baseline {baseline}")
    ax.set_xlabel("trial")
    ax.set_ylabel("AP (held-out)")
    ax.set_title("AP by trial")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _importance_figure(trials: list[FrozenTrial], path: Path) -> Path | str:
    """Importances (Optuna's evaluator) and slices (AP against each parameter) of the complete search trials, or
    why they cannot be drawn. Drawn on a :class:`~matplotlib.figure.Figure`: no pyplot state, no backend set."""
    from matplotlib.figure import Figure

    searched = [t for t in trials if t.user_attrs.get("role") in (SEARCH, GRID) and t.state == TrialState.COMPLETE]
    if len(searched) < 2 or not any(t.params for t in searched):
        return "fewer than two complete search trials with parameters"
    study = optuna.create_study(direction="maximize")
    study.add_trials(searched)
    try:
        with warnings.catch_warnings():  # experimental-API notes
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return str(err)
    names = sorted({name for t in searched for name in t.params})
    columns = min(4, len(names))
    rows = 1 + math.ceil(len(names) / columns)
    fig = Figure(figsize=(3.2 * columns, 2.8 * rows))
    grid = fig.add_gridspec(rows, columns)
    bars = fig.add_subplot(grid[0, :])
    shown = list(importances.items())[::-1]
    bars.barh([name for name, _ in shown], [value for _, value in shown])
    bars.set_xlabel("importance (Optuna's evaluator)")
    bars.set_title("parameter importances")
    for index, name in enumerate(names):
        ax = fig.add_subplot(grid[1 + index // columns, index % columns])
        having = [t for t in searched if name in t.params]
        xs = [t.params[name] for t in having]
        ax.scatter([str(x) if isinstance(x, str) else x for x in xs], [float(t.value or 0.0) for t in having], s=12)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        if any(isinstance(x, str) for x in xs):
            ax.tick_params(axis="x", labelrotation=45)
        if index % columns == 0:
            ax.set_ylabel("AP", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
