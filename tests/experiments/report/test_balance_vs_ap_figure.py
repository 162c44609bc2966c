"""balance_vs_ap.png names each arm once, in a legend outside the axes, so no two names can cover each other."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

balance = importlib.import_module("balanced_l1.experiments.report.balance")


def _arms(count: int) -> dict[str, Any]:
    """``count`` arms of 3 seeds each whose points crowd together, as the arms of a grid do."""
    return {
        f"balanced_l1(alpha=0.{index})": {
            "per_seed": {
                str(seed): {
                    "AP": 0.69 + 0.001 * seed,
                    "gradient_balance": {
                        "inlier_outlier_gradient_ratio": 0.80 + 0.001 * index,
                        "box_cls_gradient_ratio": 1.20 + 0.001 * index,
                    },
                }
                for seed in range(3)
            }
        }
        for index in range(count)
    }


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    figures: list[Any] = []
    real_save = balance.save_figure_atomically

    def keep(fig: Any, out: Path) -> Path:
        figures.append(fig)
        return real_save(fig, out)

    monkeypatch.setattr(balance, "save_figure_atomically", keep)
    return figures


def test_the_arms_are_named_in_one_legend_below_the_axes_not_beside_their_points(
    drawn: list[Any], tmp_path: Path
) -> None:
    arms = _arms(14)
    balance.save_balance_vs_ap_figure(arms, tmp_path)
    (figure,) = drawn
    assert all(not ax.texts for ax in figure.axes)
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == list(arms)
    renderer = figure._get_renderer()  # the figure was saved, so it has been drawn
    legend_top = legend.get_window_extent(renderer).y1
    assert all(legend_top < ax.get_tightbbox(renderer).y0 for ax in figure.axes)


def test_arms_past_the_tenth_colour_get_another_marker(drawn: list[Any], tmp_path: Path) -> None:
    balance.save_balance_vs_ap_figure(_arms(11), tmp_path)
    (figure,) = drawn
    means = [container.lines[0] for container in figure.axes[0].containers]  # each arm's mean point
    first, eleventh = means[0], means[10]
    assert first.get_color() == eleventh.get_color()
    assert first.get_marker() != eleventh.get_marker()
