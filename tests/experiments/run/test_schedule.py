"""The learning-rate factor: warm-up times a cosine or step schedule, a pure function of the iteration."""

from __future__ import annotations

import math

import pytest

from balanced_l1.experiments.run.schedule import lr_factor


def test_warmup_rises_linearly_from_the_warmup_factor() -> None:
    factors = [lr_factor(i, iters=100, warmup_iters=10, warmup_factor=0.1, schedule="step") for i in (0, 5, 10)]
    assert factors == pytest.approx([0.1, 0.55, 1.0])


def test_step_schedule_drops_tenfold_at_each_step_and_multiplies_the_warmup() -> None:
    kwargs = {"iters": 120, "warmup_iters": 0, "schedule": "step", "steps": (80, 110)}
    assert [lr_factor(i, **kwargs) for i in (79, 80, 109, 110)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    inside = lr_factor(5, iters=120, warmup_iters=10, warmup_factor=0.001, schedule="step", steps=(2,))
    assert inside == pytest.approx(0.1 * (0.001 + 0.999 * 0.5))


def test_cosine_goes_from_one_after_warmup_to_five_percent() -> None:
    assert lr_factor(10, iters=110, warmup_iters=10) == pytest.approx(1.0)
    assert lr_factor(60, iters=110, warmup_iters=10) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(110, iters=110, warmup_iters=10) == pytest.approx(0.05)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule must be 'cosine' or 'step', got 'linear'"):
        lr_factor(0, iters=10, warmup_iters=0, schedule="linear")
