"""The plateau check: held-out AP where the runs validated; without it, only what the training loss can tell."""

from __future__ import annotations

from balanced_l1.experiments.report.plateau import explain_plateau


def _history(losses: list[float]) -> list[dict[str, float]]:
    return [{"loss": v} for v in losses]


def _validated(losses: list[float], ap: dict[int, float]) -> list[dict[str, float]]:
    """A loss history with a held-out AP (a fraction) recorded at the given 1-based iterations."""
    history = _history(losses)
    for iteration, value in ap.items():
        history[iteration - 1]["val_AP"] = value
    return history


def test_a_falling_loss_means_detectors_still_learning_and_suggests_a_longer_run() -> None:
    falling = {"a": {0: _history([2.0 - 0.01 * i for i in range(100)])}}
    lines = explain_plateau(falling, 100)
    assert "still learning" in lines[-1] and "--iters 200" in lines[-1] and lines[0].startswith("a: mean loss")


def test_a_rising_loss_is_said_to_have_risen_never_to_have_flattened() -> None:
    rising = {"a": {0: _history([1.0] * 90 + [1.22] * 10)}, "b": {0: _history([1.0] * 90 + [1.001] * 10)}}
    lines = explain_plateau(rising, 100)
    assert lines[0] == "a: mean loss 1.0000 in the next-to-last tenth of training, 1.2200 in the last (+22.0%)"
    assert lines[-1].startswith("The loss rose in the last tenth for a, b: it had not flattened")
    assert "--eval-every" in lines[-1]
    assert not any("had flattened" in line or "converged" in line.replace("not the detector has converged", "")
                   for line in lines)  # fmt: skip


def test_a_flat_loss_under_a_decaying_schedule_claims_no_convergence_and_names_the_flag() -> None:
    flat = {"a": {0: _history([1.0] * 90 + [0.995] * 10)}, "b": {0: _history([1.0] * 100)}}
    lines = explain_plateau(flat, 100, "cosine")
    assert lines[-1] == (
        "The loss fell by less than 2% in the last tenth for a, b, but the cosine schedule lowers the learning rate "
        "over the run, so the loss flattens as the steps shrink whether or not the detector has converged: the "
        "loss cannot tell whether AP had stopped rising. --eval-every N (e.g. --eval-every 10) measures AP on the "
        "held-out split during training, and this check then compares the last two validations."
    )
    assert "the step schedule lowers the learning rate" in explain_plateau(flat, 100, "step", (50, 80))[-1]


def test_a_flat_loss_at_a_constant_learning_rate_is_still_not_ap() -> None:
    flat = {"a": {0: _history([1.0] * 100)}}
    line = explain_plateau(flat, 100, "step", ())[-1]
    assert "but a training loss is not the held-out AP: the loss cannot tell whether AP had stopped rising" in line
    assert "--eval-every" in line and "had flattened" not in line


def test_arms_that_differ_get_one_sentence_each_kind() -> None:
    mixed = {"down": {0: _history([2.0 - 0.01 * i for i in range(100)])}, "up": {0: _history([1.0] * 90 + [1.1] * 10)}}
    lines = explain_plateau(mixed, 100)
    assert lines[2].startswith("The loss was still falling") and "for down:" in lines[2]
    assert lines[3].startswith("The loss rose in the last tenth for up:")


def test_rising_validation_ap_means_still_improving_whatever_the_loss_did() -> None:
    losses = [1.0] * 100  # a flat loss: the AP decides
    runs = {"a": {0: _validated(losses, {50: 0.40, 100: 0.43}), 1: _validated(losses, {50: 0.42, 100: 0.45})}}
    lines = explain_plateau(runs, 100)
    assert lines[0] == "a: held-out AP 41.0 at iteration 50, 44.0 at iteration 100 (+3.0 AP, mean over 2 seed(s))"
    assert lines[1].startswith("AP was still rising by more than 0.5 AP between the last two validations for a")
    assert "still improving" in lines[1] and "--iters 200" in lines[1]


def test_flat_validation_ap_has_stopped_rising_by_the_end_of_this_schedule_only() -> None:
    losses = [2.0 - 0.01 * i for i in range(100)]  # a falling loss: the AP decides
    lines = explain_plateau({"a": {0: _validated(losses, {25: 0.2, 50: 0.401, 100: 0.403})}}, 100)
    assert lines[0] == "a: held-out AP 40.1 at iteration 50, 40.3 at iteration 100 (+0.2 AP, mean over 1 seed(s))"
    assert lines[1] == (
        "AP changed by less than 0.5 AP between the last two validations for a: it had stopped rising by the end "
        "of this schedule. A longer schedule may still end higher: it spends more iterations at a high learning "
        "rate."
    )


def test_falling_validation_ap_has_not_settled() -> None:
    lines = explain_plateau({"a": {0: _validated([1.0] * 10, {5: 0.40, 10: 0.38})}}, 10)
    assert lines[1] == "AP fell by more than 0.5 AP between the last two validations for a: it had not settled."


def test_one_validation_point_has_nothing_to_compare_with() -> None:
    lines = explain_plateau({"a": {0: _validated([1.0] * 10, {10: 0.4})}}, 10)
    assert lines == [
        "a: one validation point per run, nothing to compare it with; an --eval-every of at most half the run "
        "gives two."
    ]


def test_runs_too_short_for_tenths_say_nothing() -> None:
    assert explain_plateau({"a": {0: _history([1.0] * 9)}}, 9) == []
