"""The loss normaliser lives in a module named for what it holds; outside a process group it is 1 / max(count, 1)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from balanced_l1.detection import losses, ssd
from balanced_l1.detection._loss_normaliser import normaliser


def test_the_module_is_named_for_the_loss_normaliser_and_the_old_name_is_gone() -> None:
    assert importlib.util.find_spec("balanced_l1.detection._distributed") is None
    assert losses.normaliser is normaliser and ssd.normaliser is normaliser


@pytest.mark.parametrize(("count", "expected"), [(0, 1.0), (1, 1.0), (4, 0.25)])
def test_outside_a_process_group_the_factor_is_one_over_the_count(count: int, expected: float) -> None:
    assert normaliser(count, torch.tensor(0.0)) == expected
