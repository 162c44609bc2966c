"""Whether training had stopped improving when a comparison ended, read from AP where the runs measured it.

- With validation points (``--eval-every``) it compares each arm's last validation AP on the held-out split with
  the one before (mean over seeds). A rise of more than :data:`AP_CHANGE` means the detectors were still
  improving; a smaller change means AP had stopped rising by the end of this schedule (a longer schedule, which
  spends more iterations at a high learning rate, may still end higher).
- Without them it reads the training loss: the mean of the last tenth of the iterations against the tenth before
  it. A drop of more than :data:`STILL_LEARNING_DROP` means the detectors were still learning. A flat loss is not
  taken for convergence: under a schedule that lowers the learning rate (cosine, or step with steps) the loss
  flattens as the steps shrink whether or not AP has stopped rising, and under any schedule the loss is not AP;
  it says so and names ``--eval-every``. A loss that rose is said to have risen, never to have flattened.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from balanced_l1.experiments.run.train import validation_curve

#: A drop of the mean loss by more than this fraction from one tenth of training to the last one: still learning.
STILL_LEARNING_DROP = 0.02

#: A change of the held-out AP (a fraction, 0.005 = half an AP point) between the last two validations that is
#: more than this: AP had not stopped changing.
AP_CHANGE = 0.005


def _tenths(history: list[dict[str, float]]) -> tuple[float, float] | None:
    losses = [step["loss"] for step in history]
    tenth = len(losses) // 10
    if tenth < 1:
        return None
    return float(np.mean(losses[-2 * tenth : -tenth])), float(np.mean(losses[-tenth:]))


def _names(arms: list[str]) -> str:
    return ", ".join(arms)


def _from_validation(curves: dict[str, list[list[dict[str, float]]]], iters: int) -> list[str]:
    lines: list[str] = []
    rising: list[str] = []
    falling: list[str] = []
    flat: list[str] = []
    single: list[str] = []
    for arm, by_seed in curves.items():
        pairs = [(curve[-2], curve[-1]) for curve in by_seed if len(curve) >= 2]
        if not pairs:
            single.append(arm)
            continue
        before = float(np.mean([p[0]["AP"] for p in pairs]))
        last = float(np.mean([p[1]["AP"] for p in pairs]))
        change = last - before
        lines.append(
            f"{arm}: held-out AP {100 * before:.1f} at iteration {pairs[0][0]['iteration']}, {100 * last:.1f} at "
            f"iteration {pairs[0][1]['iteration']} ({100 * change:+.1f} AP, mean over {len(pairs)} seed(s))"
        )
        (rising if change > AP_CHANGE else falling if change < -AP_CHANGE else flat).append(arm)
    limit = f"{100 * AP_CHANGE:g} AP"
    if rising:
        lines.append(
            f"AP was still rising by more than {limit} between the last two validations for {_names(rising)}: "
            f"this compares detectors that are still improving. Train longer to compare them nearer their plateau, "
            f"e.g. --iters {2 * iters} (or --epochs)."
        )
    if falling:
        lines.append(
            f"AP fell by more than {limit} between the last two validations for {_names(falling)}: it had not settled."
        )
    if flat:
        lines.append(
            f"AP changed by less than {limit} between the last two validations for {_names(flat)}: it had stopped "
            "rising by the end of this schedule. A longer schedule may still end higher: it spends more iterations "
            "at a high learning rate."
        )
    if single:
        lines.append(
            f"{_names(single)}: one validation point per run, nothing to compare it with; an --eval-every of at "
            "most half the run gives two."
        )
    return lines


def _from_loss(histories: dict[str, dict[int, list[dict[str, float]]]], iters: int, lr_decays: str | None) -> list[str]:
    lines: list[str] = []
    learning: list[str] = []
    rose: list[str] = []
    flat: list[str] = []
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
        (learning if drop > STILL_LEARNING_DROP else rose if last > before else flat).append(arm)
    if not lines:
        return []
    tells = (
        f"--eval-every N (e.g. --eval-every {max(1, iters // 10)}) measures AP on the held-out split during "
        "training, and this check then compares the last two validations"
    )
    if learning:
        lines.append(
            f"The loss was still falling by more than {STILL_LEARNING_DROP:.0%} per tenth for {_names(learning)}: "
            f"this compares detectors that are still learning. Train longer to compare them nearer their plateau, "
            f"e.g. --iters {2 * iters} (or --epochs)."
        )
    if rose:
        lines.append(
            f"The loss rose in the last tenth for {_names(rose)}: it had not flattened, and the loss cannot tell "
            f"what AP was doing. {tells}."
        )
    if flat:
        why = (
            f"the {lr_decays} schedule lowers the learning rate over the run, so the loss flattens as the steps "
            "shrink whether or not the detector has converged"
            if lr_decays is not None
            else "a training loss is not the held-out AP"
        )
        lines.append(
            f"The loss fell by less than {STILL_LEARNING_DROP:.0%} in the last tenth for {_names(flat)}, but {why}: "
            f"the loss cannot tell whether AP had stopped rising. {tells}."
        )
    return lines


def explain_plateau(
    histories: dict[str, dict[int, list[dict[str, float]]]],
    iters: int,
    lr_schedule: str = "cosine",
    lr_steps: Sequence[int] = (),
) -> list[str]:
    """Whether each arm had stopped improving, from held-out AP if the runs validated, else what the loss can tell.

    Args:
        histories: ``{arm: {seed: loss history}}``; a history's validations are its ``val_*`` entries
            (:func:`~balanced_l1.experiments.run.train.validation_curve`).
        iters: the runs' length in iterations (for the suggested longer length and ``--eval-every``).
        lr_schedule: the learning-rate schedule, ``"cosine"`` or ``"step"``.
        lr_steps: the step schedule's steps (none: a constant learning rate after the warm-up).

    Returns:
        One line per arm, then one sentence per kind of finding; none for runs too short to tell.
    """
    curves = {arm: [validation_curve(h) for h in by_seed.values()] for arm, by_seed in histories.items()}
    if any(curve for by_seed in curves.values() for curve in by_seed):
        return _from_validation(curves, iters)
    decays = lr_schedule == "cosine" or (lr_schedule == "step" and len(lr_steps) > 0)
    return _from_loss(histories, iters, lr_schedule if decays else None)
