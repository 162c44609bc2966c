"""The loss figure is drawn without touching matplotlib's global backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from balanced_l1.params import BalancedL1Params
from balanced_l1.plots import plot_loss

matplotlib = pytest.importorskip("matplotlib")


def test_plot_loss_leaves_the_backend_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("plot_loss switched matplotlib's backend")

    monkeypatch.setattr(matplotlib, "use", refuse)
    path = plot_loss(BalancedL1Params(), tmp_path / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG")
