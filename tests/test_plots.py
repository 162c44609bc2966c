"""The loss figure is drawn without touching matplotlib's global backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_compare_figures_leave_the_backend_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from balanced_l1.experiments.metric_names import METRICS
    from balanced_l1.experiments.report.summary import save_figures, summarize

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("save_figures switched matplotlib's backend")

    monkeypatch.setattr(matplotlib, "use", refuse)
    metrics = dict.fromkeys(METRICS, 0.3) | {"ap_per_iou": [0.3] * 10}
    summary = summarize({"smooth_l1": {0: metrics}, "balanced_l1": {0: metrics}}, "smooth_l1", {})
    history = [{"loss": 1.0 / (i + 1)} for i in range(30)]
    paths = save_figures({"smooth_l1": {0: history}, "balanced_l1": {0: history}}, summary, tmp_path)
    assert [p.name for p in paths] == ["loss_curves.png", "ap_vs_iou.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_no_library_module_sets_the_backend_or_uses_pyplot() -> None:
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "balanced_l1"
    pattern = re.compile(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot|\bplt\.")
    offending = [
        f"{path.relative_to(src)}:{number}"
        for path in sorted(src.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offending, offending


# every accepted parameter is drawn, without a warning (issue 22)

EXTREME_PARAMETERS = [
    {},
    {"beta": 0.11, "formulation": "mmdet"},
    {"beta": 1e300},
    {"beta": 1e300, "formulation": "mmdet"},
    {"beta": 1.7e308},
    {"beta": 1e-300},
    {"beta": 1e-300, "formulation": "mmdet"},
    {"alpha": 1e-300, "gamma": 1e-300},
    {"alpha": 1e300, "gamma": 1e300},
    {"alpha": 1e300, "gamma": 1e300, "beta": 1e-300},
    {"alpha": 1.0, "gamma": 80.0, "beta": 1e300, "formulation": "mmdet"},
    {"alpha": 1.0, "gamma": 1e-300},
    {"alpha": 1.0, "gamma": 1e-300, "beta": 1e-6, "formulation": "mmdet"},
]


def _drawn_figure(params: BalancedL1Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs):
    import balanced_l1.plots as plots

    figures = []
    real_save = plots.save_figure_atomically

    def keep(fig, out):
        figures.append(fig)
        return real_save(fig, out)

    monkeypatch.setattr(plots, "save_figure_atomically", keep)
    path = plot_loss(params, tmp_path / "loss.png", **kwargs)
    assert path.read_bytes().startswith(b"\x89PNG")
    (figure,) = figures
    return figure


@pytest.mark.parametrize("kwargs", EXTREME_PARAMETERS, ids=str)
def test_every_accepted_parameter_draws_every_curve_finite_over_the_range_without_warnings(
    kwargs, tmp_path, monkeypatch
):
    import warnings

    params = BalancedL1Params(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = _drawn_figure(params, tmp_path, monkeypatch)
    curves = 0
    for ax in figure.axes:
        for line in ax.get_lines():
            data = line.get_xydata()
            assert data.size > 0 and np.isfinite(data).all(), (ax.get_title(), line.get_label())
            if not line.get_label().startswith("_"):  # the curves (the axhline is labelled too: x in axes units)
                if line.get_label().startswith("γ"):
                    continue
                curves += 1
                assert data[0, 0] <= 0.002 and data[-1, 0] == pytest.approx(3.0), line.get_label()
                assert np.ptp(data[:, 1]) > 0, f"{line.get_label()} is flat"
    assert curves == 4  # Balanced L1 and smooth L1, loss and gradient


def test_the_plotted_curves_are_the_reference_in_units_of_beta():
    from balanced_l1.plots import balanced_l1_curves, smooth_l1_curves
    from balanced_l1.reference import balanced_l1, balanced_l1_grad, smooth_l1, smooth_l1_grad

    t = np.linspace(0.0, 3.0, 601)[1:]
    for beta, formulation in ((0.11, "scaled"), (0.11, "mmdet"), (2.5, "mmdet"), (1.0, "scaled")):
        params = BalancedL1Params(beta=beta, formulation=formulation)
        loss, grad = balanced_l1_curves(t, params)
        np.testing.assert_allclose(loss * beta, balanced_l1(t * beta, params), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(grad, balanced_l1_grad(t * beta, params), rtol=1e-12, atol=1e-15)
        smooth_loss, smooth_grad = smooth_l1_curves(t, 2.0)
        np.testing.assert_allclose(smooth_loss * beta, smooth_l1(t * beta, 2.0 * beta), rtol=1e-12)
        np.testing.assert_allclose(smooth_grad, smooth_l1_grad(t * beta, 2.0 * beta), rtol=1e-12)


def test_a_wider_smooth_l1_beta_widens_the_range(tmp_path, monkeypatch):
    figure = _drawn_figure(BalancedL1Params(beta=0.5), tmp_path, monkeypatch, smooth_l1_beta=1.0)
    assert figure.axes[0].get_lines()[0].get_xydata()[-1, 0] == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("kwargs", "smooth_l1_beta", "message"),
    [
        ({"alpha": 1e300, "gamma": 1e300, "beta": 1e-300, "formulation": "mmdet"}, None,
         r"alpha \* \|1 / beta - 1\| = inf cannot be represented in float64"),
        ({"alpha": 1e308, "gamma": 1e308}, None,
         r"the largest gradient 1e\+308 must be at most 4\.49423e\+307 .* so that the curves over \|x\| <= 3 beta"),
        ({"beta": 1e-300}, 1e300, r"smooth_l1_beta / beta must be a finite nonzero float64"),
        ({}, -1.0, r"smooth_l1_beta must be finite and > 0, got -1.0"),
    ],
)  # fmt: skip
def test_parameters_the_figure_cannot_hold_raise_value_error(kwargs, smooth_l1_beta, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        plot_loss(BalancedL1Params(**kwargs), tmp_path / "loss.png", smooth_l1_beta=smooth_l1_beta)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "title"),
    [
        ({}, "Balanced L1 raises the inliers' gradient above smooth L1's and caps the outliers' at γ = 1.5"),
        (
            {"beta": 0.11, "formulation": "mmdet"},
            "Balanced L1 (mmdet, β=0.11): the inliers' gradient reaches 4.045, above the outliers' γ = 1.5",
        ),
        (
            {"beta": 2.5, "formulation": "mmdet"},
            "Balanced L1 (mmdet, β=2.5): the inliers' gradient starts at -0.3, below 0, so the loss goes below 0",
        ),
        (
            {"alpha": 0.5, "gamma": 0.5},
            "Balanced L1 (scaled, β=1) caps the outliers' gradient at γ = 0.5, below smooth L1's for some inliers",
        ),
    ],
    ids=["paper", "mmdet-0.11", "mmdet-2.5", "low-gamma"],
)
def test_the_title_says_what_the_drawn_gradient_does(kwargs, title, tmp_path, monkeypatch):
    figure = _drawn_figure(BalancedL1Params(**kwargs), tmp_path, monkeypatch)
    assert figure.get_suptitle() == title
