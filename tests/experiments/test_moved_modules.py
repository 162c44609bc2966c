"""The modules that moved when ``experiments/`` was split into data/, run/ and report/ still import, with a warning."""

from __future__ import annotations

import importlib
import sys

import pytest

from balanced_l1.experiments import MOVED_MODULES


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_MODULES.items()))
def test_an_old_module_path_gives_the_moved_module_with_a_deprecation_warning(old: str, new: str) -> None:
    sys.modules.pop(f"balanced_l1.experiments.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"moved to balanced_l1.experiments.{new}"):
        module = importlib.import_module(f"balanced_l1.experiments.{old}")
    assert module is importlib.import_module(f"balanced_l1.experiments.{new}")


def test_the_old_report_module_names_are_found_on_the_report_package() -> None:
    from balanced_l1.experiments import report
    from balanced_l1.experiments.report.summary import summarize

    with pytest.warns(DeprecationWarning, match="moved to balanced_l1.experiments.report.summary.summarize"):
        assert report.summarize is summarize
    with pytest.raises(AttributeError):
        report.no_such_name  # noqa: B018


@pytest.mark.parametrize(("old", "new"), [("zoo", "models"), ("sampling", "iou_balanced_sampling")])
def test_the_moved_detection_modules_import_at_their_old_paths_with_a_warning(old: str, new: str) -> None:
    sys.modules.pop(f"balanced_l1.detection.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"moved to balanced_l1.detection.{new}"):
        module = importlib.import_module(f"balanced_l1.detection.{old}")
    assert module is importlib.import_module(f"balanced_l1.detection.{new}")
