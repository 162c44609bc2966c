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


def test_compare_figures_leave_the_backend_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from balanced_l1.experiments.report import METRICS, save_figures, summarize

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
